//! brownout inside a Rust test: start a proxy in-process (no API port, no other process),
//! point the code under test at it, and switch faults with verbs.
//!
//! ```
//! use std::time::Duration;
//! use brownout::embed::Proxy;
//! use brownout::faults::PartitionMode;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any server will do; here one that echoes a line.
//! let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let upstream = server.local_addr().unwrap();
//! tokio::spawn(async move {
//!     while let Ok((mut s, _)) = server.accept().await {
//!         tokio::spawn(async move {
//!             let mut buf = [0u8; 64];
//!             while let Ok(n @ 1..) = s.read(&mut buf).await {
//!                 let _ = s.write_all(&buf[..n]).await;
//!             }
//!         });
//!     }
//! });
//!
//! let proxy = Proxy::tcp(upstream.to_string()).seed(7).start().await.unwrap();
//! let mut conn = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
//! let mut buf = [0u8; 5];
//! {
//!     // Nothing passes while the guard lives; what was sent meanwhile is kept.
//!     let _cut = proxy.partition(PartitionMode::Blackhole);
//!     conn.write_all(b"hello").await.unwrap();
//!     let read = tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await;
//!     assert!(read.is_err(), "nothing arrives through a partition");
//! }
//! // The guard dropped: healed, and the kept bytes arrive.
//! conn.read_exact(&mut buf).await.unwrap();
//! assert_eq!(&buf, b"hello");
//! assert_eq!(proxy.counters().upstream.sent, 5);
//! # }
//! ```
//!
//! Every verb returns a [`Guard`] that undoes it when dropped (also while a failing test
//! unwinds); [`Guard::keep`] leaves the fault on. The undo is synchronous: the next item
//! each link handles after the drop no longer sees the fault. The same verbs work on the
//! rmcp wrapper (`brownout::mcp::Faults`), which has an [`Injector`] too.
//!
//! An embedded proxy runs the proxy module directly rather than through the control plane:
//! a test owns its proxy, and a guard's undo must take effect before the test's next line.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::unix::pipe;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::faults::{
    Direction, FaultKind, PartitionMode, SpecError, Stream, ToxicInput, ToxicSet, ToxicSpec,
    Transport,
};
use crate::proxy::ProxyStats;
use crate::proxy::events::{Event, EventSink};
use crate::proxy::{self, Protocol, ProxyContext, RunningProxy};

/// Events an [`Injector`] keeps for [`Injector::history`] at most; older ones are counted
/// in [`History::missed`] instead, so a long test costs a fixed amount of memory.
pub const HISTORY: usize = 65_536;

/// What can go wrong starting an embedded proxy.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: String,
        source: std::io::Error,
    },
    #[error("cannot start server {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("no server command given")]
    NoCommand,
}

enum Upstream {
    Listen {
        protocol: Protocol,
        upstream: String,
    },
    Stdio(Vec<OsString>),
}

/// How to start an embedded proxy; see the [module docs](self).
pub struct Proxy {
    upstream: Upstream,
    seed: u64,
    name: String,
    listen: String,
}

impl Proxy {
    /// A TCP proxy: bytes, in front of `upstream` (`host:port`).
    pub fn tcp(upstream: impl Into<String>) -> Proxy {
        Proxy::listening(Protocol::Tcp, upstream.into())
    }

    /// An HTTP-mode proxy: MCP over Streamable HTTP, in front of `upstream` (`host:port`).
    pub fn http(upstream: impl Into<String>) -> Proxy {
        Proxy::listening(Protocol::Http, upstream.into())
    }

    /// A stdio relay: brownout starts the server command and sits on its pipes; the test
    /// talks to it through [`Handle::take_client`].
    pub fn stdio<I, S>(command: I) -> Proxy
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Proxy {
            upstream: Upstream::Stdio(command.into_iter().map(Into::into).collect()),
            ..Proxy::listening(Protocol::Stdio, String::new())
        }
    }

    fn listening(protocol: Protocol, upstream: String) -> Proxy {
        Proxy {
            upstream: Upstream::Listen { protocol, upstream },
            seed: 0,
            name: "embedded".into(),
            listen: "127.0.0.1:0".into(),
        }
    }

    /// The seed every fault decision derives from (each connection's RNG is
    /// `faults::link_rng(seed, index, direction)`): the same seed, the same run.
    pub fn seed(mut self, seed: u64) -> Proxy {
        self.seed = seed;
        self
    }

    /// The name its events carry as their proxy (default `embedded`).
    pub fn name(mut self, name: &str) -> Proxy {
        self.name = name.into();
        self
    }

    /// Where to listen (default `127.0.0.1:0`, a free port).
    pub fn listen(mut self, listen: &str) -> Proxy {
        self.listen = listen.into();
        self
    }

    pub async fn start(self) -> Result<Handle, EmbedError> {
        let name: Arc<str> = Arc::from(self.name.as_str());
        match self.upstream {
            Upstream::Listen { protocol, upstream } => {
                let injector = Injector::new(protocol.transport(), true);
                let listener =
                    proxy::bind(&self.listen)
                        .await
                        .map_err(|source| EmbedError::Listen {
                            listen: self.listen.clone(),
                            source,
                        })?;
                let ctx = ProxyContext {
                    name,
                    protocol,
                    upstream,
                    seed: self.seed,
                    toxics: injector.set.subscribe(),
                    stats: injector.stats.clone(),
                    events: Some(injector.sink.clone()),
                    header_timeout: proxy::HEADER_TIMEOUT,
                };
                let running =
                    RunningProxy::start(listener, ctx).map_err(|source| EmbedError::Listen {
                        listen: self.listen,
                        source,
                    })?;
                Ok(Handle {
                    injector,
                    addr: Some(running.local_addr()),
                    _running: Running::Listener { _proxy: running },
                    client: Mutex::new(None),
                })
            }
            Upstream::Stdio(command) => Handle::stdio(command, self.seed, name).await,
        }
    }
}

/// A running embedded proxy: its address, the verbs (through [`Injector`], which it
/// dereferences to), counters and events. Dropping it stops the proxy, closes every
/// connection, and ends a stdio server.
pub struct Handle {
    injector: Injector,
    addr: Option<SocketAddr>,
    _running: Running,
    client: Mutex<Option<StdioClient>>,
}

/// Held for what dropping it does.
enum Running {
    Listener { _proxy: RunningProxy },
    Stdio { _relay: AbortOnDrop },
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        // The relay owns the child with kill_on_drop: aborting it kills the server.
        self.0.abort();
    }
}

/// The agent's side of a stdio relay: read the server's messages from `reader`, write
/// yours to `writer`, one JSON-RPC message per line. `(reader, writer)` is an rmcp
/// transport as it is.
pub struct StdioClient {
    pub reader: pipe::Receiver,
    pub writer: pipe::Sender,
}

impl Handle {
    async fn stdio(
        command: Vec<OsString>,
        seed: u64,
        name: Arc<str>,
    ) -> Result<Handle, EmbedError> {
        let injector = Injector::new(Transport::Stdio, true);
        let spawn_error = |source| EmbedError::Spawn {
            command: proxy::stdio::command_line(&command),
            source,
        };
        let server = proxy::stdio::Server::spawn(&command).map_err(|e| match e {
            proxy::stdio::StdioError::Spawn { source, .. }
            | proxy::stdio::StdioError::Io(source) => spawn_error(source),
            proxy::stdio::StdioError::NoCommand => EmbedError::NoCommand,
        })?;
        let opts = proxy::stdio::StdioOptions {
            seed,
            index: 0,
            toxics: injector.set.subscribe(),
            stats: injector.stats.clone(),
            events: Some(injector.sink.clone()),
            name,
        };
        let agent = proxy::stdio::in_process(server, opts).map_err(spawn_error)?;
        let client = StdioClient {
            reader: agent.reader,
            writer: agent.writer,
        };
        let running = AbortOnDrop(agent.relay);
        Ok(Handle {
            injector,
            addr: None,
            _running: Running::Stdio { _relay: running },
            client: Mutex::new(Some(client)),
        })
    }

    /// Where clients connect.
    ///
    /// # Panics
    /// On a stdio relay, which has no address: use [`Handle::take_client`].
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .expect("a stdio relay has no address; use take_client() for its pipes")
    }

    /// A stdio relay's agent side, once; `None` for other proxies or the second time.
    pub fn take_client(&self) -> Option<StdioClient> {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::ops::Deref for Handle {
    type Target = Injector;

    fn deref(&self) -> &Injector {
        &self.injector
    }
}

/// The verbs, counters and events of one proxy or wrapper. Each verb adds a toxic and
/// returns the [`Guard`] that removes it.
pub struct Injector {
    set: Arc<ToxicSet>,
    next: AtomicU64,
    recorder: Arc<Recorder>,
    sink: EventSink,
    stats: Arc<ProxyStats>,
    /// Bytes are counted by the links (proxies), or from the events (the wrapper, which
    /// has no bytes of its own).
    link_bytes: bool,
}

impl Injector {
    /// `link_bytes`: whether links count bytes into [`Injector::stats`] (proxies do).
    pub(crate) fn new(transport: Transport, link_bytes: bool) -> Injector {
        let recorder = Arc::new(Recorder::default());
        let tap = recorder.clone();
        Injector {
            set: Arc::new(ToxicSet::new(transport)),
            next: AtomicU64::new(1),
            sink: EventSink::default().with_tap(Arc::new(move |e| tap.record(e))),
            recorder,
            stats: Arc::default(),
            link_bytes,
        }
    }

    #[cfg_attr(not(feature = "rmcp"), allow(dead_code))]
    pub(crate) fn set(&self) -> &ToxicSet {
        &self.set
    }

    #[cfg_attr(not(feature = "rmcp"), allow(dead_code))]
    pub(crate) fn sink(&self) -> &EventSink {
        &self.sink
    }

    /// A network partition in both directions (see the `partition` toxic for each mode).
    pub fn partition(&self, mode: PartitionMode) -> Guard {
        self.verb(
            "",
            "partition",
            Stream::Both,
            json!({ "mode": mode.as_str() }),
        )
    }

    /// Remove every partition now, whoever holds its guard; returns how many there were.
    pub fn heal(&self) -> usize {
        self.set
            .retain(|s| !matches!(s.kind, FaultKind::Partition(_)))
    }

    /// Every answer (server → client) delayed by `delay`, as Toxiproxy's `latency` on its
    /// default stream.
    pub fn latency(&self, delay: Duration) -> Guard {
        let ms = delay.as_millis().min(u128::from(u64::MAX)) as u64;
        self.verb("", "latency", Stream::Downstream, json!({ "latency": ms }))
    }

    /// Intermittent loss on the way to the server with probability `p` (0 to 1): a lost
    /// message is dropped (stdio, HTTP mode, the wrapper), a lost chunk of a byte stream
    /// stalls for TCP's retransmission timeout.
    ///
    /// # Panics
    /// If `p` is not between 0 and 1.
    pub fn loss(&self, p: f64) -> Guard {
        self.verb("", "loss", Stream::Upstream, json!({ "probability": p }))
    }

    /// Keep every message on its way to the server until [`Injector::release`] or the
    /// guard's drop lets them go, in order. On a TCP proxy, which carries no messages, it
    /// holds the bytes instead (a one-way blackhole).
    pub fn hold(&self) -> Guard {
        if self.set.transport() == Transport::Tcp {
            let attributes = json!({ "mode": PartitionMode::Blackhole.as_str() });
            return self.verb(HOLD_PREFIX, "partition", Stream::Upstream, attributes);
        }
        let attributes = json!({ "action": "hold", "count": 1_000_000 });
        self.verb(HOLD_PREFIX, "mcp", Stream::Upstream, attributes)
    }

    /// Let go of everything every hold keeps, now; returns how many holds there were.
    pub fn release(&self) -> usize {
        self.set.retain(|s| !s.name.starts_with(HOLD_PREFIX))
    }

    /// Any toxic, as JSON in the form `POST /proxies/{p}/toxics` takes; refused with the
    /// field that was wrong, or if this transport cannot carry it out.
    pub fn toxic(&self, json: &str) -> Result<Guard, SpecError> {
        let spec = self.set.add_json(json)?;
        Ok(Guard::new(self.set.clone(), spec.name))
    }

    /// Remove every toxic; outstanding guards then do nothing.
    pub fn reset(&self) -> usize {
        self.set.clear()
    }

    /// The toxics on now, in order.
    pub fn toxics(&self) -> Vec<ToxicSpec> {
        self.set.list().to_vec()
    }

    /// What passed so far. Exact: a message is counted before it is delivered.
    pub fn counters(&self) -> Counters {
        let mut c = self.recorder.counters();
        if self.link_bytes {
            let bytes = |d| {
                let s = self.stats.direction(d);
                ByteCounts {
                    received: s.received(),
                    sent: s.sent(),
                }
            };
            c.upstream = bytes(Direction::Upstream);
            c.downstream = bytes(Direction::Downstream);
            c.connections = self.stats.connections();
        }
        c
    }

    /// Every message from now on, as it happens (a reader more than 4,096 behind misses the
    /// oldest; [`Injector::history`] keeps them).
    pub fn events(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sink.subscribe()
    }

    /// The events so far: the last [`HISTORY`], and how many came before those.
    pub fn history(&self) -> History {
        self.recorder.history()
    }

    /// Add a toxic of `kind` named `{prefix}{kind}-{n}`; the guard that removes it.
    fn verb(&self, prefix: &str, kind: &str, stream: Stream, attributes: Value) -> Guard {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let input = ToxicInput {
            name: Some(format!("{prefix}{kind}-{n}")),
            kind: Some(kind.into()),
            stream: Some(stream.as_str().into()),
            toxicity: None,
            attributes: attributes.as_object().cloned(),
        };
        let spec = ToxicSpec::from_input(input)
            .and_then(|s| self.set.add(s))
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        Guard::new(self.set.clone(), spec.name)
    }
}

/// What names the toxics [`Injector::hold`] adds, so [`Injector::release`] finds them.
const HOLD_PREFIX: &str = "held-";

/// Undoes one verb when dropped.
#[must_use = "the fault is undone as soon as the guard is dropped; bind it (`let _cut = ...`)"]
pub struct Guard {
    set: Arc<ToxicSet>,
    name: String,
    armed: bool,
}

impl Guard {
    fn new(set: Arc<ToxicSet>, name: String) -> Guard {
        Guard {
            set,
            name,
            armed: true,
        }
    }

    /// The toxic's name, as the history's `faults` list names it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Undo now.
    pub fn undo(self) {}

    /// Leave the fault on after the guard is gone (until `reset`, `heal` or `release`).
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed {
            self.set.remove(&self.name);
        }
    }
}

/// Bytes one direction read from its source and wrote to its destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ByteCounts {
    pub received: u64,
    pub sent: u64,
}

/// What passed through, as the partition simulators of reliability plans count it.
/// Message counts are zero on a TCP proxy, which sees bytes only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Connections accepted (proxies); transports wrapped, up to the last that carried a
    /// message (the wrapper).
    pub connections: u64,
    /// JSON-RPC requests clients sent.
    pub requests: u64,
    /// Requests passed on to the server (a dropped one is not; a held one once let go).
    pub forwarded: u64,
    /// Answers (results and errors) delivered to clients, injected ones included.
    pub answers: u64,
    /// Of those answers, JSON-RPC errors.
    pub errors: u64,
    /// Messages in either direction a fault kept from passing when they arrived (dropped,
    /// lost, partitioned or held).
    pub withheld: u64,
    /// Client → server.
    pub upstream: ByteCounts,
    /// Server → client.
    pub downstream: ByteCounts,
}

impl Counters {
    /// What passed since `earlier` was taken.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let bytes = |a: ByteCounts, b: ByteCounts| ByteCounts {
            received: a.received - b.received,
            sent: a.sent - b.sent,
        };
        Counters {
            connections: self.connections - earlier.connections,
            requests: self.requests - earlier.requests,
            forwarded: self.forwarded - earlier.forwarded,
            answers: self.answers - earlier.answers,
            errors: self.errors - earlier.errors,
            withheld: self.withheld - earlier.withheld,
            upstream: bytes(self.upstream, earlier.upstream),
            downstream: bytes(self.downstream, earlier.downstream),
        }
    }
}

/// The recorded events, oldest first.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub events: Vec<Arc<Event>>,
    /// Events that came before these and were not kept.
    pub missed: u64,
}

/// Counts every event as it is made, and keeps the last [`HISTORY`].
#[derive(Default)]
struct Recorder {
    state: Mutex<RecorderState>,
}

#[derive(Default)]
struct RecorderState {
    counters: Counters,
    events: std::collections::VecDeque<Arc<Event>>,
    missed: u64,
}

impl Recorder {
    fn record(&self, e: &Arc<Event>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let upstream = e.direction == Direction::Upstream.as_str();
        let c = &mut s.counters;
        if e.guest.is_none() {
            if e.kind == "request" && upstream {
                c.requests += u64::from(!e.released);
                c.forwarded += u64::from(e.delivered > 0);
            }
            if matches!(e.kind, "response" | "error") && !upstream && e.delivered > 0 {
                c.answers += 1;
                c.errors += u64::from(e.kind == "error");
            }
            c.withheld += u64::from(e.delivered == 0 && !e.released);
            let bytes = if upstream {
                &mut c.upstream
            } else {
                &mut c.downstream
            };
            // A released message arrived earlier, with an event of its own.
            if !e.released {
                bytes.received += e.bytes as u64;
            }
            bytes.sent += (e.bytes * e.delivered) as u64;
            // Connections are numbered from 0 in the order they came.
            c.connections = c.connections.max(e.connection + 1);
        }
        if s.events.len() == HISTORY {
            s.events.pop_front();
            s.missed += 1;
        }
        s.events.push_back(e.clone());
    }

    fn counters(&self) -> Counters {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counters
    }

    fn history(&self) -> History {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        History {
            events: s.events.iter().cloned().collect(),
            missed: s.missed,
        }
    }
}
