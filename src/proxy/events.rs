//! The history of what passed: one event per message on links that frame messages, with
//! what happened to it and which faults acted. Later checks (and people) read it.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::faults::{Chunk, Direction, End};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// One message, as it arrived and as brownout passed it on.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When it arrived: seconds since the Unix epoch.
    pub time: f64,
    pub proxy: Arc<str>,
    pub connection: u64,
    pub direction: &'static str,
    /// request, notification, response, error or other; `oversized` for a line or event too
    /// long to read as a message, which passed through unparsed.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The MCP session (HTTP: `Mcp-Session-Id`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// It came on a resumed SSE stream (a replay).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    pub bytes: usize,
    /// Copies passed on: 0 when dropped, more than 1 when duplicated.
    pub delivered: usize,
    /// How long after arriving the last copy is due to go out, in milliseconds.
    pub delay_ms: f64,
    /// A fault answered the sender instead (an injected error reply).
    pub answered: bool,
    /// Not from either peer: a reply a fault sent in this direction.
    pub injected: bool,
    /// What was passed on differs from what arrived (malformed, truncated, replaced).
    pub modified: bool,
    /// The link ended here: close, reset or kill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<&'static str>,
    /// The faults that acted on it, in order.
    pub faults: Vec<Arc<str>>,
    /// Not an arrival: a message a `hold` kept passes now, because the hold was removed or
    /// changed (its arrival has an event of its own, with nothing delivered).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// Not a message: something brownout did to a guest (kind `guest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestEvent>,
}

/// A guest lifecycle step, in the same history as the messages it affected.
#[derive(Debug, Clone, Serialize)]
pub struct GuestEvent {
    pub name: String,
    /// spawn, kill, stop, pause, resume, restart, unplug, plug or delete; `exit` when it
    /// ended on its own.
    pub action: &'static str,
    /// How it ended, how long it took, or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// Where a message was seen, for its event.
pub struct Place<'a> {
    pub proxy: &'a Arc<str>,
    pub connection: u64,
    pub direction: Direction,
}

/// What became of one message that arrived as `arrived`.
pub struct Fate<'a, I> {
    /// What was passed on for it, in order.
    pub out: I,
    pub answered: bool,
    pub injected: bool,
    pub end: Option<End>,
    pub faults: &'a [Arc<str>],
}

impl Event {
    /// The event for one framed message (`arrived.msg` must be set).
    pub fn new<'a, I>(place: Place<'_>, arrived: &Chunk, fate: Fate<'_, I>) -> Event
    where
        I: Iterator<Item = &'a Chunk> + Clone,
    {
        let msg = arrived.msg.as_deref().cloned().unwrap_or_default();
        let delay = fate
            .out
            .clone()
            .map(|c| c.at - arrived.at)
            .max()
            .unwrap_or_default();
        Event {
            time: now(),
            proxy: place.proxy.clone(),
            connection: place.connection,
            direction: place.direction.as_str(),
            kind: msg.kind.as_str(),
            method: msg.method,
            tool: msg.tool,
            id: msg.id,
            session: msg.session,
            resumed: msg.resumed,
            bytes: arrived.data.len(),
            delivered: fate.out.clone().count(),
            delay_ms: delay.as_secs_f64() * 1000.0,
            answered: fate.answered,
            injected: fate.injected,
            modified: fate.out.clone().any(|c| c.data != arrived.data),
            end: fate.end.map(|e| match e {
                End::Close(_) => "close",
                End::Reset(_) => "reset",
                End::Kill(..) => "kill",
            }),
            faults: fate.faults.to_vec(),
            released: false,
            guest: None,
        }
    }

    /// The event for a message a removed or changed `hold` lets go of.
    pub fn released(place: Place<'_>, chunk: &Chunk) -> Event {
        let fate = Fate {
            out: std::iter::once(chunk),
            answered: false,
            injected: false,
            end: None,
            faults: &[],
        };
        Event {
            released: true,
            ..Event::new(place, chunk, fate)
        }
    }

    /// A line (or SSE event) too long to read whole as a message: `bytes` of it were held
    /// when that was clear, and it passes on as it comes, unparsed, with no message fault.
    pub fn oversized(place: Place<'_>, bytes: usize) -> Event {
        Event {
            connection: place.connection,
            direction: place.direction.as_str(),
            bytes,
            delivered: 1,
            ..Event::bare(place.proxy.clone(), "oversized")
        }
    }

    /// A guest lifecycle event; `proxy` is the proxy the guest serves, if any.
    pub fn guest(
        proxy: Option<&str>,
        name: &str,
        action: &'static str,
        detail: Option<Value>,
    ) -> Event {
        Event {
            guest: Some(GuestEvent {
                name: name.to_owned(),
                action,
                detail,
            }),
            ..Event::bare(proxy.unwrap_or_default().into(), "guest")
        }
    }

    /// An event as another brownout's history wrote it (`GET /events`), to merge into this
    /// one's. `None` for what is not a message event (a `lagged` line, a guest step).
    pub fn from_json(v: &Value) -> Option<Event> {
        const DIRECTIONS: [&str; 2] = ["upstream", "downstream"];
        const KINDS: [&str; 6] = [
            "request",
            "notification",
            "response",
            "error",
            "other",
            "oversized",
        ];
        const ENDS: [&str; 3] = ["close", "reset", "kill"];
        let pick = |list: &[&'static str], key: &str| -> Option<&'static str> {
            let s = v.get(key)?.as_str()?;
            list.iter().copied().find(|k| *k == s)
        };
        let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let num = |key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
        let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(false);
        Some(Event {
            time: v.get("time")?.as_f64()?,
            connection: num("connection"),
            direction: pick(&DIRECTIONS, "direction")?,
            method: text("method"),
            tool: text("tool"),
            id: v.get("id").cloned(),
            session: text("session"),
            resumed: flag("resumed"),
            bytes: num("bytes") as usize,
            delivered: num("delivered") as usize,
            delay_ms: v.get("delay_ms").and_then(Value::as_f64).unwrap_or(0.0),
            answered: flag("answered"),
            injected: flag("injected"),
            modified: flag("modified"),
            end: pick(&ENDS, "end"),
            faults: v
                .get("faults")
                .and_then(Value::as_array)
                .map(|f| f.iter().filter_map(Value::as_str).map(Arc::from).collect())
                .unwrap_or_default(),
            released: flag("released"),
            ..Event::bare(Arc::from(text("proxy")?.as_str()), pick(&KINDS, "kind")?)
        })
    }

    /// An event of `kind` that is about no message: every message field empty.
    fn bare(proxy: Arc<str>, kind: &'static str) -> Event {
        Event {
            time: now(),
            proxy,
            connection: 0,
            direction: "none",
            kind,
            method: None,
            tool: None,
            id: None,
            session: None,
            resumed: false,
            bytes: 0,
            delivered: 0,
            delay_ms: 0.0,
            answered: false,
            injected: false,
            modified: false,
            end: None,
            faults: Vec::new(),
            released: false,
            guest: None,
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Events waiting for the file writer at most. Past that a flood costs no memory: events
/// are counted instead, and the file says how many it missed.
pub const FILE_BACKLOG: usize = 65_536;

/// Where events go: a live stream any number of readers can follow (slow readers miss
/// events rather than slow the proxy down), and optionally a file that gets every one the
/// disk keeps up with, and a `lagged` record for those it did not.
#[derive(Clone)]
pub struct EventSink {
    live: broadcast::Sender<Arc<Event>>,
    file: Option<FileQueue>,
    tap: Option<Tap>,
}

/// Sees every event as it is made, before anyone else: counters that must be exact when the
/// message they count is delivered.
pub type Tap = Arc<dyn Fn(&Arc<Event>) + Send + Sync>;

#[derive(Clone)]
struct FileQueue {
    tx: mpsc::Sender<Arc<Event>>,
    /// Events dropped because the queue was full, not yet reported in the file.
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// What the file says when it missed events: `{"time": ..., "lagged": N}`.
#[derive(Serialize)]
struct Lagged {
    time: f64,
    lagged: u64,
}

impl Default for EventSink {
    fn default() -> Self {
        EventSink {
            live: broadcast::channel(4096).0,
            file: None,
            tap: None,
        }
    }
}

impl EventSink {
    /// Also write every event to `path` as JSON lines. The returned task finishes, with
    /// everything written, once every clone of the sink is dropped.
    pub fn with_file(mut self, path: &Path) -> io::Result<(EventSink, JoinHandle<io::Result<()>>)> {
        let file = std::fs::File::create(path)?;
        let (tx, mut rx) = mpsc::channel::<Arc<Event>>(FILE_BACKLOG);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.file = Some(FileQueue {
            tx,
            dropped: dropped.clone(),
        });
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = io::BufWriter::new(file);
            let say_lagged = |out: &mut io::BufWriter<std::fs::File>| -> io::Result<()> {
                let lagged = dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
                if lagged > 0 {
                    serde_json::to_writer(
                        &mut *out,
                        &Lagged {
                            time: now(),
                            lagged,
                        },
                    )?;
                    out.write_all(b"\n")?;
                }
                Ok(())
            };
            while let Some(e) = rx.blocking_recv() {
                say_lagged(&mut out)?;
                serde_json::to_writer(&mut out, &*e)?;
                out.write_all(b"\n")?;
                // Flush whenever we catch up, so a reader sees events as they happen.
                if rx.is_empty() {
                    out.flush()?;
                }
            }
            say_lagged(&mut out)?;
            out.flush()
        });
        Ok((self, writer))
    }

    /// Also hand every event to `tap`, synchronously, as it is made.
    pub fn with_tap(mut self, tap: Tap) -> EventSink {
        self.tap = Some(tap);
        self
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// Whether anyone would see an event now: a file, a tap, or a live reader.
    pub fn is_recording(&self) -> bool {
        self.file.is_some() || self.tap.is_some() || self.live.receiver_count() > 0
    }

    pub fn emit(&self, event: Event) {
        let event = Arc::new(event);
        if let Some(tap) = &self.tap {
            tap(&event);
        }
        if let Some(file) = &self.file
            && let Err(mpsc::error::TrySendError::Full(_)) = file.tx.try_send(event.clone())
        {
            file.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // No live readers is not an error.
        let _ = self.live.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    fn event(n: usize) -> Event {
        Event {
            bytes: n,
            ..Event::bare("p".into(), "other")
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_the_file_cannot_take_is_counted_in_a_lagged_record_not_queued() {
        // A FIFO nobody reads yet: the writer stalls as a full disk would.
        let path = std::env::temp_dir().join(format!("brownout-lag-{}.fifo", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid path string; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let (sink, writer) = EventSink::default().with_file(&path).unwrap();
        let total = 4 * FILE_BACKLOG;
        for n in 0..total {
            sink.emit(event(n));
        }
        drop(sink);
        // Now read it all: the writer drains what it kept, then says what it missed.
        let mut text = Vec::new();
        let drain = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break text,
                    Ok(n) => text.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        });
        writer.await.unwrap().unwrap();
        let text = drain.await.unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<Value> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let written = lines.iter().filter(|l| l.get("kind").is_some()).count();
        let lagged: u64 = lines.iter().filter_map(|l| l["lagged"].as_u64()).sum();
        assert!(lagged > 0, "nothing was dropped: {written} written");
        // The queue, plus the few hundred the writer took before the pipe (64 KiB) filled.
        assert!(
            written < FILE_BACKLOG + 1024,
            "{written} events were kept for the file"
        );
        assert_eq!(
            written as u64 + lagged,
            total as u64,
            "every event is written or counted"
        );
        // Those written are in order, the first ones.
        let sizes: Vec<u64> = lines.iter().filter_map(|l| l["bytes"].as_u64()).collect();
        assert!(sizes.windows(2).all(|w| w[0] < w[1]));
    }
}
