use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::spec::{Attrs, SpecError};
use super::{Chunk, End, Fault, Verdict};

/// A network partition on the fault's direction, on live connections at once; removing the
/// fault heals it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub mode: PartitionMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionMode {
    /// Nothing gets through, and what is sent meanwhile is kept and delivered in order when
    /// the partition heals, as TCP's retransmissions would deliver it. On a byte stream the
    /// link's queue bound keeps it (then the sender waits, as on a full TCP window); on a
    /// link of messages the fault keeps up to [`MAX_HELD`] bytes of them, and loses what
    /// comes beyond that.
    Blackhole,
    /// What is sent meanwhile is lost; the connection stays open.
    Drop,
    /// Connections are reset: live ones at once, new ones as soon as they are accepted.
    Refuse,
}

impl PartitionMode {
    /// The `mode` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionMode::Blackhole => "blackhole",
            PartitionMode::Drop => "drop",
            PartitionMode::Refuse => "refuse",
        }
    }
}

/// When blackholed data is due: far enough away to mean "not until healed", near enough for
/// the timer to take. Healing brings every queued item's time forward to the moment of
/// healing.
const UNTIL_HEALED: Duration = Duration::from_secs(365 * 86_400);

/// The most a blackhole keeps of messages sent into it: what HTTP mode reads of one body.
pub const MAX_HELD: usize = 16 << 20;

impl Partition {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        let mode = match a.string("mode")?.as_deref() {
            // The default, as a missing attribute is 0 elsewhere: the partition a network
            // gives, where nothing is lost but nothing arrives.
            None | Some("blackhole") => PartitionMode::Blackhole,
            Some("drop") => PartitionMode::Drop,
            Some("refuse") => PartitionMode::Refuse,
            Some(other) => {
                return Err(SpecError::field(
                    "attributes.mode",
                    format!("expected blackhole, drop or refuse, got {other:?}"),
                ));
            }
        };
        Ok(Partition { mode })
    }

    pub(super) fn attributes(&self) -> Map<String, Value> {
        Map::from_iter([("mode".to_owned(), Value::from(self.mode.as_str()))])
    }

    pub(super) fn start(&self, now: Instant) -> PartitionState {
        PartitionState {
            mode: self.mode,
            started: now,
            held: Vec::new(),
            held_bytes: 0,
        }
    }
}

pub(super) struct PartitionState {
    mode: PartitionMode,
    started: Instant,
    /// Messages a blackhole keeps until it heals, and their size.
    held: Vec<Chunk>,
    held_bytes: usize,
}

impl Fault for PartitionState {
    fn on_chunk(&mut self, mut chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        match self.mode {
            // Messages may travel on transports that send each one when it is due (HTTP
            // mode, the wrapper), so the fault keeps them and lets go when removed.
            PartitionMode::Blackhole if chunk.msg.is_some() => {
                if self.held_bytes + chunk.data.len() <= MAX_HELD {
                    self.held_bytes += chunk.data.len();
                    self.held.push(chunk);
                }
                Verdict::Drop
            }
            PartitionMode::Blackhole => {
                chunk.at += UNTIL_HEALED;
                Verdict::Pass(chunk)
            }
            PartitionMode::Drop => Verdict::Drop,
            PartitionMode::Refuse => Verdict::End {
                last: None,
                end: End::Reset(chunk.at),
            },
        }
    }

    fn deadline(&self) -> Option<End> {
        (self.mode == PartitionMode::Refuse).then_some(End::Reset(self.started))
    }

    fn on_eof(&mut self, at: Instant) -> Instant {
        // A FIN is a segment too: it crosses when the partition heals.
        match self.mode {
            PartitionMode::Blackhole => at + UNTIL_HEALED,
            PartitionMode::Drop | PartitionMode::Refuse => at,
        }
    }

    fn release(&mut self) -> Vec<Chunk> {
        self.held_bytes = 0;
        std::mem::take(&mut self.held)
    }

    fn holds(&self, ticket: u64) -> bool {
        self.held
            .iter()
            .any(|c| c.msg.as_ref().is_some_and(|m| m.ticket == ticket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunk(at: Instant) -> Chunk {
        Chunk::bytes(Bytes::from_static(b"data"), at)
    }

    #[test]
    fn each_mode_decides_as_documented() {
        let mut rng = fastrand::Rng::with_seed(1);
        let t0 = Instant::now();
        let mut hole = Partition {
            mode: PartitionMode::Blackhole,
        }
        .start(t0);
        match hole.on_chunk(chunk(t0), &mut rng) {
            Verdict::Pass(c) => assert!(c.at - t0 >= UNTIL_HEALED, "{:?}", c.at - t0),
            other => panic!("{other:?}"),
        }
        assert_eq!(hole.deadline(), None);
        assert!(hole.on_eof(t0) - t0 >= UNTIL_HEALED);

        let mut drop = Partition {
            mode: PartitionMode::Drop,
        }
        .start(t0);
        assert_eq!(drop.on_chunk(chunk(t0), &mut rng), Verdict::Drop);
        assert_eq!((drop.deadline(), drop.on_eof(t0)), (None, t0));

        let refuse = Partition {
            mode: PartitionMode::Refuse,
        }
        .start(t0);
        assert_eq!(refuse.deadline(), Some(End::Reset(t0)));
    }

    #[test]
    fn a_blackhole_keeps_messages_until_healed_up_to_its_bound() {
        use crate::faults::Message;
        use std::sync::Arc;
        let mut rng = fastrand::Rng::with_seed(1);
        let t0 = Instant::now();
        let mut hole = Partition {
            mode: PartitionMode::Blackhole,
        }
        .start(t0);
        let message = |n: usize| {
            let line = Bytes::from(format!("{{\"jsonrpc\":\"2.0\",\"id\":{n},\"result\":1}}\n"));
            let mut msg = Message::parse(&line);
            msg.ticket = n as u64;
            Chunk {
                data: line,
                at: t0,
                msg: Some(Arc::new(msg)),
                more: false,
            }
        };
        for n in 1..=3 {
            assert_eq!(hole.on_chunk(message(n), &mut rng), Verdict::Drop);
        }
        assert!(hole.holds(2) && !hole.holds(4));
        let healed: Vec<_> = hole.release().into_iter().map(|c| c.data).collect();
        assert_eq!(healed, [message(1).data, message(2).data, message(3).data]);
        assert!(hole.release().is_empty());

        // Past the bound, messages are lost rather than kept.
        let big = Chunk {
            data: Bytes::from(vec![b'x'; MAX_HELD]),
            ..message(5)
        };
        assert_eq!(hole.on_chunk(big, &mut rng), Verdict::Drop);
        assert_eq!(hole.on_chunk(message(6), &mut rng), Verdict::Drop);
        assert_eq!(hole.release().len(), 1);
    }

    #[test]
    fn a_mode_that_does_not_exist_is_refused_by_name() {
        let map = Map::from_iter([("mode".to_owned(), Value::from("sever"))]);
        let e = super::super::FaultKind::parse("partition", &map).unwrap_err();
        assert_eq!(e.field, "attributes.mode");
        assert!(e.message.contains("\"sever\""), "{e}");
    }
}
