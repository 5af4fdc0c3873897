use std::time::Duration;

use super::spec::{Attrs, DAY_MS, SpecError};
use super::{Chunk, Fault, FaultKind, Verdict};

/// Delivers each chunk `latency ± jitter` milliseconds after it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latency {
    pub latency: u64,
    pub jitter: u64,
}

impl Latency {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        Ok(Latency {
            latency: a.uint("latency", "milliseconds", DAY_MS)?,
            jitter: a.uint("jitter", "milliseconds", DAY_MS)?,
        })
    }

    /// The delay for one chunk, drawn evenly from `latency - jitter ..= latency + jitter`.
    /// Jitter larger than the latency is clamped at zero delay.
    fn delay(&self, rng: &mut fastrand::Rng) -> Duration {
        let ms = if self.jitter == 0 {
            self.latency
        } else {
            let j = self.jitter as i64;
            (self.latency as i64 + rng.i64(-j..=j)).max(0) as u64
        };
        Duration::from_millis(ms)
    }
}

impl Fault for Latency {
    fn on_chunk(&mut self, mut chunk: Chunk, rng: &mut fastrand::Rng) -> Verdict {
        chunk.at += self.delay(rng);
        Verdict::Pass(chunk)
    }

    fn reconfigure(&mut self, kind: &FaultKind) -> bool {
        match kind {
            FaultKind::Latency(l) => {
                *self = l.clone();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::time::Instant;

    #[test]
    fn delay_is_measured_from_arrival_and_stays_within_jitter() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut f = Latency {
            latency: 100,
            jitter: 20,
        };
        let t0 = Instant::now();
        for _ in 0..1000 {
            let Verdict::Pass(c) = f.on_chunk(Chunk::bytes(Bytes::from_static(b"x"), t0), &mut rng)
            else {
                panic!("latency must pass chunks");
            };
            let d = c.at - t0;
            assert!(
                d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
                "{d:?}"
            );
        }
    }

    #[test]
    fn jitter_reaches_both_ends_of_its_range() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut f = Latency {
            latency: 10,
            jitter: 2,
        };
        let t0 = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let Verdict::Pass(c) = f.on_chunk(Chunk::bytes(Bytes::new(), t0), &mut rng) else {
                panic!()
            };
            seen.insert((c.at - t0).as_millis());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [8, 9, 10, 11, 12]);
    }

    #[test]
    fn jitter_larger_than_latency_never_goes_below_zero() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut f = Latency {
            latency: 1,
            jitter: 1000,
        };
        let t0 = Instant::now();
        for _ in 0..1000 {
            let Verdict::Pass(c) = f.on_chunk(Chunk::bytes(Bytes::new(), t0), &mut rng) else {
                panic!()
            };
            assert!(c.at >= t0);
        }
    }
}
