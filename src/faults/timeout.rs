use std::time::Duration;

use tokio::time::Instant;

use super::spec::{Attrs, DAY_MS, SpecError};
use super::{Chunk, End, Fault, Verdict};

/// Drops all data and closes the connection `timeout` ms after the fault took effect.
/// With a timeout of 0 it never closes by itself. Removing it closes the connections it
/// was holding, as Toxiproxy's cleanup does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeout {
    pub timeout: u64,
}

impl Timeout {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        Ok(Timeout {
            timeout: a.uint("timeout", "milliseconds", DAY_MS)?,
        })
    }

    pub(super) fn start(&self, now: Instant) -> TimeoutState {
        TimeoutState {
            close_at: (self.timeout > 0).then(|| now + Duration::from_millis(self.timeout)),
        }
    }
}

pub(super) struct TimeoutState {
    close_at: Option<Instant>,
}

impl Fault for TimeoutState {
    fn on_chunk(&mut self, _chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        Verdict::Drop
    }

    fn deadline(&self) -> Option<End> {
        self.close_at.map(End::Close)
    }

    fn on_removed(&mut self, now: Instant) -> Option<End> {
        Some(End::Close(now))
    }
}
