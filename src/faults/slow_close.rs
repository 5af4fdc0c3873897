use std::time::Duration;

use tokio::time::Instant;

use super::spec::{Attrs, DAY_MS, SpecError};
use super::{Chunk, Fault, Verdict};

/// Holds back the end of the stream for `delay` milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowClose {
    pub delay: u64,
}

impl SlowClose {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        Ok(SlowClose {
            delay: a.uint("delay", "milliseconds", DAY_MS)?,
        })
    }
}

impl Fault for SlowClose {
    fn on_chunk(&mut self, chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        Verdict::Pass(chunk)
    }

    fn on_eof(&mut self, at: Instant) -> Instant {
        at + Duration::from_millis(self.delay)
    }
}
