use std::time::Duration;

use tokio::time::Instant;

use super::spec::{Attrs, SpecError};
use super::{Chunk, Fault, FaultKind, Verdict};

/// Passes data at `rate` KB/s (1 KB = 1000 bytes, as in Toxiproxy). A rate of 0 means no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bandwidth {
    pub rate: u64,
}

impl Bandwidth {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        Ok(Bandwidth {
            rate: a.uint("rate", "KB/s", 1_000_000_000)?,
        })
    }

    pub(super) fn start(&self) -> BandwidthState {
        BandwidthState {
            spec: self.clone(),
            busy_until: None,
        }
    }
}

pub(super) struct BandwidthState {
    spec: Bandwidth,
    /// When the data scheduled so far has finished going out at the limited rate.
    busy_until: Option<Instant>,
}

impl Fault for BandwidthState {
    fn on_chunk(&mut self, chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        let rate = self.spec.rate;
        if rate == 0 || chunk.data.is_empty() {
            return Verdict::Pass(chunk);
        }
        // Send in pieces worth about 10 ms each so a slow rate is smooth, not bursty.
        let piece = (rate.saturating_mul(10)).clamp(1, 1 << 20) as usize;
        let mut t = match self.busy_until {
            Some(b) if b > chunk.at => b,
            _ => chunk.at,
        };
        let mut data = chunk.data.clone();
        let mut slices = Vec::with_capacity(data.len().div_ceil(piece));
        while !data.is_empty() {
            let part = data.split_to(piece.min(data.len()));
            // len bytes at rate*1000 bytes/s take len*1e6/rate ns.
            t += Duration::from_nanos(part.len() as u64 * 1_000_000 / rate);
            slices.push((part, t));
        }
        let mut out = chunk.slices(slices);
        self.busy_until = Some(t);
        if out.len() == 1 {
            Verdict::Pass(out.pop().expect("one piece"))
        } else {
            Verdict::Replace(out)
        }
    }

    fn reconfigure(&mut self, kind: &FaultKind) -> bool {
        match kind {
            FaultKind::Bandwidth(b) => {
                self.spec = b.clone();
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

    fn pieces(v: Verdict) -> Vec<Chunk> {
        match v {
            Verdict::Pass(c) => vec![c],
            Verdict::Replace(v) => v,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn schedule_matches_rate_exactly() {
        let mut rng = fastrand::Rng::with_seed(0);
        let mut f = Bandwidth { rate: 10 }.start();
        let t0 = Instant::now();
        let mut last = t0;
        let mut total = 0;
        for _ in 0..10 {
            let out = pieces(f.on_chunk(Chunk::bytes(Bytes::from(vec![0u8; 5000]), t0), &mut rng));
            for c in out {
                assert!(c.data.len() <= 100);
                total += c.data.len();
                last = c.at;
            }
        }
        assert_eq!(total, 50_000);
        // 50 KB at 10 KB/s is 5 s.
        assert_eq!(last - t0, Duration::from_secs(5));
    }

    #[test]
    fn tiny_rate_and_huge_chunk_do_not_panic() {
        let mut rng = fastrand::Rng::with_seed(0);
        let mut f = Bandwidth { rate: 1 }.start();
        let out = pieces(f.on_chunk(
            Chunk::bytes(Bytes::from(vec![0u8; 1 << 16]), Instant::now()),
            &mut rng,
        ));
        assert_eq!(out.iter().map(|c| c.data.len()).sum::<usize>(), 1 << 16);
        let mut f = Bandwidth {
            rate: 1_000_000_000,
        }
        .start();
        let out = pieces(f.on_chunk(
            Chunk::bytes(Bytes::from(vec![0u8; 1 << 20]), Instant::now()),
            &mut rng,
        ));
        assert_eq!(out.len(), 1);
    }
}
