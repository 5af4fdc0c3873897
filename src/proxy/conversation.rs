//! The fault state of one MCP conversation seen whole, message by message: what HTTP mode
//! keeps per proxy and the rmcp wrapper per transport. (A stdio or TCP link keeps the same
//! state split between its two pumps.)

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::events::{Event, EventSink, Fate, Place};
use crate::faults::{
    self, Chain, Chunk, Correlator, Direction, End, FaultKind, Message, Reply, ToxicSpec,
};

pub struct Conversation {
    toxics: watch::Receiver<Arc<[ToxicSpec]>>,
    /// Indexed by [`Direction::index`].
    chains: [Chain; 2],
    rngs: [fastrand::Rng; 2],
    correlator: Correlator,
    /// The ticket of the last message applied.
    tickets: u64,
    /// Faults that act on a connection rather than on messages (`limit_time`) are left to
    /// each connection: a conversation kept for a whole proxy does not run them.
    proxy_wide: bool,
}

/// What the chain made of one message.
pub struct Applied {
    /// The message as it arrived, with what is known about it.
    pub arrived: Chunk,
    /// What goes on, in order, each with the time it may.
    pub out: Vec<Chunk>,
    /// What goes back to the sender instead.
    pub answers: Vec<Reply>,
    pub end: Option<End>,
}

impl Applied {
    /// Tell `sink` what became of the message (travelling in `dir`, hit by `faults`), and of
    /// each reply a fault sent back for it.
    pub fn record(
        &self,
        sink: &EventSink,
        proxy: &Arc<str>,
        connection: u64,
        dir: Direction,
        faults: &[Arc<str>],
    ) {
        let place = |direction| Place {
            proxy,
            connection,
            direction,
        };
        let fate = Fate {
            out: self.out.iter(),
            answered: !self.answers.is_empty(),
            injected: false,
            end: self.end,
            faults,
        };
        sink.emit(Event::new(place(dir), &self.arrived, fate));
        for reply in &self.answers {
            let Reply::Message(reply) = reply else {
                continue;
            };
            let reply = Chunk {
                msg: Some(Arc::new(Message::parse(&reply.data))),
                ..reply.clone()
            };
            let fate = Fate {
                out: std::iter::once(&reply),
                answered: false,
                injected: true,
                end: None,
                faults: &[],
            };
            sink.emit(Event::new(place(dir.opposite()), &reply, fate));
        }
    }
}

impl Conversation {
    /// Fault state following `toxics`, with randomness from `seed` and `index`.
    pub fn new(
        mut toxics: watch::Receiver<Arc<[ToxicSpec]>>,
        seed: u64,
        index: u64,
    ) -> Conversation {
        toxics.mark_changed();
        let rng = |d| faults::link_rng(seed, index, d);
        Conversation {
            toxics,
            chains: [
                Chain::new(Direction::Upstream),
                Chain::new(Direction::Downstream),
            ],
            rngs: [rng(Direction::Upstream), rng(Direction::Downstream)],
            correlator: Correlator::default(),
            tickets: 0,
            proxy_wide: false,
        }
    }

    /// The conversation of a whole HTTP-mode proxy: its clients' connections each run the
    /// faults that act on a connection.
    pub fn proxy_wide(toxics: watch::Receiver<Arc<[ToxicSpec]>>, seed: u64) -> Conversation {
        Conversation {
            proxy_wide: true,
            ..Conversation::new(toxics, seed, 0)
        }
    }

    /// Take the current specs if new ones were published; `counter` gives each toxic's
    /// metric.
    pub fn refresh(
        &mut self,
        now: Instant,
        counter: &mut dyn FnMut(&ToxicSpec, Direction) -> Arc<AtomicU64>,
    ) {
        if !self.toxics.has_changed().unwrap_or(false) {
            return;
        }
        let mut specs = self.toxics.borrow_and_update().clone();
        if self.proxy_wide {
            specs = specs
                .iter()
                .filter(|s| !s.kind.per_connection())
                .cloned()
                .collect();
        }
        for d in [Direction::Upstream, Direction::Downstream] {
            let i = d.index();
            self.chains[i].update(&specs, now, &mut self.rngs[i], &mut |s| counter(s, d));
        }
    }

    /// Messages a removed or changed `hold` let go of, in `dir`: to be delivered now.
    pub fn take_released(&mut self, dir: Direction) -> Vec<Chunk> {
        self.chains[dir.index()].take_released()
    }

    /// Whether a fault in `dir` holds back the message with this ticket.
    pub fn holds(&self, dir: Direction, ticket: u64) -> bool {
        self.chains[dir.index()].holds(ticket)
    }

    /// The earliest time an active fault ends the link on its own (a `limit_time`'s).
    #[cfg(feature = "rmcp")]
    pub fn deadline(&self) -> Option<End> {
        self.chains
            .iter()
            .filter_map(Chain::deadline)
            .min_by_key(|e| e.at())
    }

    /// True when no fault acts in either direction.
    pub fn is_idle(&self) -> bool {
        self.chains.iter().all(Chain::is_idle)
    }

    /// Run one message travelling in `dir` through that direction's faults.
    #[cfg(feature = "rmcp")]
    pub fn apply(
        &mut self,
        dir: Direction,
        data: Bytes,
        session: Option<&str>,
        resumed: bool,
        now: Instant,
    ) -> Applied {
        let msg = Message::parse(&data);
        self.apply_parsed(dir, data, msg, session, resumed, now)
    }

    /// [`Conversation::apply`] for a message already read from `data`: the parsing, the
    /// costly part for a long body, can be done without holding the conversation.
    pub fn apply_parsed(
        &mut self,
        dir: Direction,
        data: Bytes,
        mut msg: Message,
        session: Option<&str>,
        resumed: bool,
        now: Instant,
    ) -> Applied {
        msg.session = session.map(str::to_owned);
        msg.resumed = resumed;
        self.tickets += 1;
        msg.ticket = self.tickets;
        self.correlator.observe(dir, &mut msg);
        let arrived = Chunk {
            data,
            at: now,
            msg: Some(Arc::new(msg)),
            more: false,
        };
        let i = dir.index();
        let mut out = Vec::new();
        let mut answers = Vec::new();
        let end = if self.chains[i].is_idle() {
            out.push(arrived.clone());
            None
        } else {
            self.chains[i].on_chunk(arrived.clone(), &mut self.rngs[i], &mut out, &mut answers)
        };
        Applied {
            arrived,
            out,
            answers,
            end,
        }
    }

    /// The `timeout` toxic that swallowed the last message applied in `dir`, if one did:
    /// its name, and its time in ms (0: until it is removed).
    pub fn timed_out(&self, dir: Direction) -> Option<(Arc<str>, u64)> {
        let specs = self.toxics.borrow();
        self.hits(dir).iter().find_map(|name| {
            specs.iter().find_map(|s| match &s.kind {
                FaultKind::Timeout(t) if *s.name == **name => Some((name.clone(), t.timeout)),
                _ => None,
            })
        })
    }

    /// The faults that acted on the last message applied in `dir`.
    pub fn hits(&self, dir: Direction) -> &[Arc<str>] {
        let chain = &self.chains[dir.index()];
        // An idle chain ran nothing: whatever it recorded before is stale.
        if chain.is_idle() { &[] } else { chain.hits() }
    }
}
