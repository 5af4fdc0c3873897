//! Faults inside a Rust test: a wrapper around any rmcp [`Transport`] that applies the same
//! message faults (`mcp` toxics, and delays) as the proxy, from the same specs, with no
//! process or port in between.
//!
//! ```no_run
//! # async fn demo(inner: impl rmcp::transport::Transport<rmcp::RoleClient>) {
//! use brownout::mcp::Faults;
//! let faults = Faults::new(7);
//! let transport = faults.wrap(inner);
//! // Hand `transport` to rmcp (`handler.serve(transport)`), then, at any time:
//! faults.add(r#"{"name": "lose", "type": "mcp", "stream": "downstream",
//!               "attributes": {"method": "tools/call", "action": "drop"}}"#).unwrap();
//! faults.remove("lose");
//! # }
//! ```
//!
//! Directions are those of the proxy: `upstream` is client → server. A client-side wrapper
//! sends upstream and receives downstream; a server-side one the other way round.
//!
//! Typed messages cannot carry broken JSON: what `malformed` or `truncate` would turn into
//! something that no longer parses is dropped, as a peer's decoder would drop it. A fault
//! that ends the link (`close`, `kill`, `reset`) ends the wrapped transport: it receives
//! nothing more. When one message this side sends becomes several (`duplicate`, or a `hold`
//! letting go), they go out in order from the wrapper's `receive`, which rmcp keeps polling
//! (the inner transport lends out one send at a time); removing a `hold` lets go of what it
//! kept at once. `status` drops the message (there is
//! no HTTP status in-process).
//!
//! [`Injector::events`] (and [`Injector::history`]) follow what every wrapped transport sees, as the proxy's event history
//! does: one [`Event`] per message, with what became of it and which faults acted.

pub mod server;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rmcp::service::{RxJsonRpcMessage, ServiceRole, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::embed::Injector;
use crate::faults::{Chunk, Direction, Reply, SpecError, ToxicSpec};
use crate::proxy::conversation::Conversation;
use crate::proxy::events::{EventSink, Place};
use crate::proxy::timer;

pub use crate::proxy::events::Event;

/// The faults that wrapped transports apply, changeable at any time. Every transport
/// wrapped by one `Faults` sees the same specs; each keeps its own counts and randomness,
/// derived from the seed and the order it was wrapped in. The verbs, counters and history
/// of an embedded proxy are here too, through [`Injector`], which it dereferences to.
pub struct Faults {
    seed: u64,
    injector: Injector,
    wrapped: Mutex<u64>,
}

/// The name wrapped transports' events carry where the proxy's carry the proxy's name; the
/// event's `connection` is the transport's place in the order they were wrapped.
const EVENT_SOURCE: &str = "wrapper";

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults {
            seed,
            injector: Injector::new(crate::faults::Transport::Wrapper, false),
            wrapped: Mutex::new(0),
        }
    }

    /// Wrap a transport; the result is a transport of the same role.
    pub fn wrap<T>(&self, inner: T) -> Faulty<T> {
        let index = {
            let mut n = self.wrapped.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n - 1
        };
        let set = self.injector.set();
        Faulty {
            inner,
            conv: Conversation::new(set.subscribe(), self.seed, index),
            changes: Some(set.subscribe()),
            events: self.injector.sink().clone(),
            source: Arc::from(EVENT_SOURCE),
            index,
            incoming: VecDeque::new(),
            outgoing: VecDeque::new(),
            sending: None,
            ended: false,
        }
    }

    /// Add a toxic given as JSON, as `POST /proxies/{p}/toxics` takes it, until removed
    /// (see [`Injector::toxic`] for one that a guard removes).
    pub fn add(&self, json: &str) -> Result<ToxicSpec, SpecError> {
        self.injector.set().add_json(json)
    }

    /// Remove a toxic by name; true if there was one.
    pub fn remove(&self, name: &str) -> bool {
        self.injector.set().remove(name)
    }

    /// Remove every toxic.
    pub fn clear(&self) {
        self.injector.reset();
    }
}

impl std::ops::Deref for Faults {
    type Target = Injector;

    fn deref(&self) -> &Injector {
        &self.injector
    }
}

/// A transport with faults: see [`Faults::wrap`].
pub struct Faulty<T> {
    inner: T,
    conv: Conversation,
    /// Wakes `receive` when the specs change, so that what a removed `hold` kept goes at
    /// once rather than with the next message; `None` once the `Faults` is gone.
    changes: Option<watch::Receiver<Arc<[ToxicSpec]>>>,
    events: EventSink,
    /// What its events name as their proxy: [`EVENT_SOURCE`].
    source: Arc<str>,
    /// This transport's place in the order its `Faults` wrapped them.
    index: u64,
    /// Received messages (and replies to our own sends), each with the time it may be
    /// handed on. A message leaves only after its wait, so a dropped `receive` loses nothing.
    incoming: VecDeque<(Instant, Bytes)>,
    /// Messages this side sends that one send cannot carry (duplicates, what a hold lets
    /// go of), sent in order by `receive`, which rmcp keeps polling.
    outgoing: VecDeque<(Instant, Bytes)>,
    sending: Option<tokio::task::JoinHandle<()>>,
    ended: bool,
}

/// What the chain made of one message.
struct Outcome {
    out: Vec<Chunk>,
    replies: Vec<Chunk>,
    ended: bool,
}

impl<T> Faulty<T> {
    fn apply(&mut self, dir: Direction, data: Bytes) -> Outcome {
        let now = Instant::now();
        self.conv.refresh(now, &mut |_, _| Arc::default());
        // What a removed `hold` let go of in this direction goes ahead of this message.
        let released = self.take_released(dir);
        let mut applied = self.conv.apply(dir, data, None, false, now);
        if self.events.is_recording() {
            applied.record(
                &self.events,
                &self.source,
                self.index,
                dir,
                self.conv.hits(dir),
            );
        }
        if !released.is_empty() {
            applied.out.splice(0..0, released);
        }
        let replies = applied
            .answers
            .into_iter()
            .filter_map(|r| match r {
                Reply::Message(c) => Some(c),
                // No transport status to refuse with in-process: the message is dropped.
                Reply::Status(..) => None,
            })
            .collect();
        Outcome {
            out: applied.out,
            replies,
            ended: applied.end.is_some(),
        }
    }

    /// Take new specs, and queue what a removed or changed `hold` let go of.
    fn let_go(&mut self, (out_dir, in_dir): (Direction, Direction)) {
        self.conv
            .refresh(Instant::now(), &mut |_, _| Arc::default());
        let out = self.take_released(out_dir);
        self.outgoing
            .extend(out.into_iter().map(|c| (c.at, c.data)));
        let incoming = self.take_released(in_dir);
        self.queue_incoming(incoming);
    }

    /// What a removed or changed `hold` let go of in `dir`, each recorded.
    fn take_released(&mut self, dir: Direction) -> Vec<Chunk> {
        let released = self.conv.take_released(dir);
        if !released.is_empty() && self.events.is_recording() {
            for c in &released {
                let place = Place {
                    proxy: &self.source,
                    connection: self.index,
                    direction: dir,
                };
                self.events.emit(Event::released(place, c));
            }
        }
        released
    }

    fn queue_incoming(&mut self, chunks: Vec<Chunk>) {
        for c in chunks {
            // Order is kept: nothing is handed on before what arrived ahead of it.
            let at = self
                .incoming
                .back()
                .map_or(c.at, |(last, _)| c.at.max(*last));
            self.incoming.push_back((at, c.data));
        }
    }
}

fn directions<R: ServiceRole>() -> (Direction, Direction) {
    if R::IS_CLIENT {
        (Direction::Upstream, Direction::Downstream)
    } else {
        (Direction::Downstream, Direction::Upstream)
    }
}

fn decode<M: DeserializeOwned>(data: &[u8]) -> Option<M> {
    serde_json::from_slice(data).ok()
}

fn encode<M: Serialize>(msg: &M) -> Bytes {
    Bytes::from(serde_json::to_vec(msg).expect("rmcp messages serialize"))
}

impl<R, T> Transport<R> for Faulty<T>
where
    R: ServiceRole,
    T: Transport<R>,
{
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<R>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let (out_dir, _) = directions::<R>();
        let outcome = if self.ended {
            Outcome {
                out: Vec::new(),
                replies: Vec::new(),
                ended: true,
            }
        } else {
            self.apply(out_dir, encode(&item))
        };
        self.ended |= outcome.ended;
        self.queue_incoming(outcome.replies);
        // The inner transport lends out one send at a time: a single message goes out through
        // it; several (duplicates, what a hold lets go of) are queued in order for `receive`.
        let mut out = outcome.out;
        let single = if out.len() == 1 && self.outgoing.is_empty() {
            out.pop()
                .and_then(|c| Some((c.at, decode::<TxJsonRpcMessage<R>>(&c.data)?)))
                .map(|(at, msg)| (at, self.inner.send(msg)))
        } else {
            self.outgoing
                .extend(out.into_iter().map(|c| (c.at, c.data)));
            None
        };
        async move {
            if let Some((at, send)) = single {
                timer::sleep_until(at).await;
                send.await?;
            }
            Ok(())
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<R>> {
        let (_, in_dir) = directions::<R>();
        // rmcp drops this future whenever another event comes first: every await here is
        // cancel-safe (a send runs as its own task; the next call waits for it first).
        loop {
            if let Some(sending) = &mut self.sending {
                let _ = sending.await;
                self.sending = None;
            }
            if let Some((at, _)) = self.outgoing.front() {
                timer::sleep_until(*at).await;
                let (_, data) = self.outgoing.pop_front().expect("just looked");
                if let Some(m) = decode::<TxJsonRpcMessage<R>>(&data) {
                    let send = self.inner.send(m);
                    self.sending = Some(tokio::spawn(async move {
                        let _ = send.await;
                    }));
                }
                continue;
            }
            if let Some((at, _)) = self.incoming.front() {
                timer::sleep_until(*at).await;
                let (_, data) = self.incoming.pop_front().expect("just looked");
                match decode(&data) {
                    Some(msg) => return Some(msg),
                    None => continue,
                }
            }
            if self.ended {
                return None;
            }
            let changed = async {
                match self.changes.as_mut() {
                    Some(c) => c.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            // A fault that ends the link by itself in time (`limit_time`) ends the transport.
            let deadline = self.conv.deadline();
            let due = async {
                match deadline {
                    Some(end) => timer::sleep_until(end.at()).await,
                    None => std::future::pending().await,
                }
            };
            let msg = tokio::select! {
                () = due => {
                    self.ended = true;
                    continue;
                }
                msg = self.inner.receive() => msg?,
                live = changed => {
                    if live {
                        self.let_go(directions::<R>());
                    } else {
                        self.changes = None;
                    }
                    continue;
                }
            };
            let outcome = self.apply(in_dir, encode(&msg));
            self.ended |= outcome.ended;
            // Replies to what we received go back out, to the peer.
            for reply in outcome.replies {
                if let Some(m) = decode::<TxJsonRpcMessage<R>>(&reply.data) {
                    let _ = self.inner.send(m).await;
                }
            }
            self.queue_incoming(outcome.out);
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}
