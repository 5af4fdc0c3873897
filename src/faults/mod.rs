//! Fault specs and fault logic.
//!
//! A fault is a pure decision over one item (here: a chunk of bytes with the time it may be
//! delivered). It never sleeps or does I/O: it returns a [`Verdict`], and the link in
//! [`crate::proxy`] carries it out. Direction, toxicity and ordering belong to the [`Chain`],
//! not to each fault.

mod bandwidth;
mod chain;
mod corrupt;
mod latency;
mod limit_data;
mod limit_time;
mod loss;
pub mod message;
mod partition;
mod rate_limit;
mod reset_peer;
mod set;
mod slicer;
mod slow_close;
mod slow_open;
pub mod spec;
mod timeout;

pub use chain::Chain;
pub use spec::{FaultKind, SpecError, Stream, ToxicInput, ToxicSpec, Transport};

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

pub use bandwidth::Bandwidth;
pub use corrupt::Corrupt;
pub use latency::Latency;
pub use limit_data::LimitData;
pub use limit_time::LimitTime;
pub use loss::Loss;
pub use message::{Correlator, Kind, Message};
pub use partition::{Partition, PartitionMode};
pub use rate_limit::{RateLimit, Reply as RateLimitReply};
pub use reset_peer::ResetPeer;
pub use set::ToxicSet;
pub use slicer::Slicer;
pub use slow_close::SlowClose;
pub use slow_open::{SlowOpen, open_delay};
pub use timeout::Timeout;

/// The two directions data flows in. `Upstream` is client → server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Upstream,
    Downstream,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        }
    }

    /// 0 for upstream, 1 for downstream: where a per-direction pair keeps this one.
    pub fn index(self) -> usize {
        match self {
            Direction::Upstream => 0,
            Direction::Downstream => 1,
        }
    }

    /// The way replies travel.
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Upstream => Direction::Downstream,
            Direction::Downstream => Direction::Upstream,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes on their way through a link, and the earliest time they may be delivered.
///
/// `at` starts as the arrival time; faults move it later. Measuring from arrival is what
/// keeps back-to-back chunks from adding their delays up.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub data: Bytes,
    pub at: Instant,
    /// On links that frame JSON-RPC messages (stdio, HTTP), what this chunk's message is.
    /// `None` on raw byte streams.
    pub msg: Option<Arc<Message>>,
    /// The next chunk goes on with this one's bytes: slices of one message, which a link
    /// that frames messages (HTTP mode) delivers as one body, written slice by slice.
    pub more: bool,
}

impl Chunk {
    /// Bytes that are not a framed message.
    pub fn bytes(data: Bytes, at: Instant) -> Chunk {
        Chunk {
            data,
            at,
            msg: None,
            more: false,
        }
    }

    /// This chunk with other bytes and time: same message (if any), same place in it.
    pub fn part(&self, data: Bytes, at: Instant) -> Chunk {
        Chunk {
            data,
            at,
            msg: self.msg.clone(),
            more: self.more,
        }
    }

    /// This chunk cut into `slices`, each delivered at its time, in order.
    pub fn slices(&self, slices: impl IntoIterator<Item = (Bytes, Instant)>) -> Vec<Chunk> {
        let mut out: Vec<Chunk> = slices
            .into_iter()
            .map(|(data, at)| Chunk {
                more: true,
                ..self.part(data, at)
            })
            .collect();
        if let Some(last) = out.last_mut() {
            last.more = self.more;
        }
        out
    }
}

/// How a link ends when a fault ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Close both sides normally once everything before it is delivered.
    Close(Instant),
    /// Abort with a TCP RST towards the peer this direction writes to.
    Reset(Instant),
    /// Kill the peer this direction writes to with a signal, where it is a process (stdio);
    /// elsewhere a reset.
    Kill(Instant, i32),
}

impl End {
    pub fn at(self) -> Instant {
        match self {
            End::Close(at) | End::Reset(at) | End::Kill(at, _) => at,
        }
    }
}

/// What a fault decided for one chunk.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Deliver it (possibly at a later time than it came in with).
    Pass(Chunk),
    /// Deliver nothing.
    Drop,
    /// Deliver these instead, in order.
    Replace(Vec<Chunk>),
    /// Deliver `last` if any, then end the link.
    End { last: Option<Chunk>, end: End },
    /// Deliver nothing onward; send this back to the sender instead (an error reply to a
    /// request).
    Answer(Chunk),
    /// Deliver nothing onward; refuse it at the transport level with this status (HTTP:
    /// the response status; where there is none, it is dropped), and when to try again in
    /// seconds (`Retry-After`), if the fault says.
    Reject(u16, Option<u64>),
}

/// What a fault sends back to the sender of a message instead of passing it on.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A message (a JSON-RPC error response).
    Message(Chunk),
    /// A transport status (an HTTP status code), and `Retry-After` in seconds, if any.
    Status(u16, Option<u64>),
}

/// One fault's logic and per-link state.
pub trait Fault: Send {
    fn on_chunk(&mut self, chunk: Chunk, rng: &mut fastrand::Rng) -> Verdict;

    /// A time at which this fault ends the link whether or not data flows.
    fn deadline(&self) -> Option<End> {
        None
    }

    /// When the end of the stream, which arrived at `at`, may be passed on.
    fn on_eof(&mut self, at: Instant) -> Instant {
        at
    }

    /// Take new attributes of the same fault type without losing per-link state (a byte
    /// count, a rate schedule). Faults that return false are started afresh instead.
    fn reconfigure(&mut self, _kind: &FaultKind) -> bool {
        false
    }

    /// The fault is being removed from a link it was active on: how the link ends because
    /// of that, if it does (Toxiproxy's `timeout` closes what it was holding).
    fn on_removed(&mut self, _now: Instant) -> Option<End> {
        None
    }

    /// What the fault holds back, let go because the fault is removed or changed.
    fn release(&mut self) -> Vec<Chunk> {
        Vec::new()
    }

    /// Whether the fault holds back the message with this ticket ([`Message::ticket`]).
    fn holds(&self, _ticket: u64) -> bool {
        false
    }
}

/// Deterministic per-link RNG: the same seed, connection index and direction always give
/// the same stream of decisions.
pub fn link_rng(seed: u64, connection: u64, direction: Direction) -> fastrand::Rng {
    let d = match direction {
        Direction::Upstream => 0x9e37_79b9_7f4a_7c15,
        Direction::Downstream => 0xc2b2_ae3d_27d4_eb4f,
    };
    fastrand::Rng::with_seed(splitmix(seed ^ splitmix(connection ^ d)))
}

/// Derive a seed for a named thing (a proxy) from the run's seed.
pub fn derive_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a: stable across runs and builds, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(seed ^ h)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
