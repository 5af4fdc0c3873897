use std::time::Duration;

use tokio::time::Instant;

use super::spec::{Attrs, DAY_MS, SpecError};
use super::{Chunk, End, Fault, Verdict};

/// Passes data for `time` ms from when the fault took effect on the connection (its start,
/// or when the fault was added to a live one), then closes the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitTime {
    pub time: u64,
}

impl LimitTime {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        Ok(LimitTime {
            time: a.uint("time", "milliseconds", DAY_MS)?,
        })
    }

    pub(super) fn start(&self, now: Instant) -> LimitTimeState {
        LimitTimeState {
            close_at: now + Duration::from_millis(self.time),
        }
    }
}

pub(super) struct LimitTimeState {
    close_at: Instant,
}

impl Fault for LimitTimeState {
    fn on_chunk(&mut self, chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        if chunk.at < self.close_at {
            return Verdict::Pass(chunk);
        }
        // Came after the time was up: nothing more passes.
        Verdict::End {
            last: None,
            end: End::Close(self.close_at),
        }
    }

    fn deadline(&self) -> Option<End> {
        Some(End::Close(self.close_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn passes_until_the_time_then_ends_the_link_at_that_time() {
        let mut rng = fastrand::Rng::with_seed(1);
        let t0 = Instant::now();
        let mut f = LimitTime { time: 500 }.start(t0);
        let at = |ms| Chunk::bytes(Bytes::from_static(b"x"), t0 + Duration::from_millis(ms));
        assert!(matches!(f.on_chunk(at(499), &mut rng), Verdict::Pass(_)));
        let close = End::Close(t0 + Duration::from_millis(500));
        assert_eq!(f.deadline(), Some(close));
        assert_eq!(
            f.on_chunk(at(500), &mut rng),
            Verdict::End {
                last: None,
                end: close
            }
        );
    }
}
