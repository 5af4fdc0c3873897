use std::time::Duration;

use serde_json::{Map, Value};

use super::spec::{Attrs, DAY_MS, SpecError};
use super::{Chunk, Fault, FaultKind, Verdict};

/// Packet loss. On a byte stream TCP hides a lost segment behind a retransmission: the
/// data arrives whole and in order, only late, so each lost chunk is delivered `rto` ms
/// after it arrived, the wait doubling for each lost chunk in a row (as TCP backs off). On
/// a link that carries messages (stdio, HTTP mode, the wrapper) a lost message is dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct Loss {
    pub probability: f64,
    pub rto: u64,
}

/// Linux's default initial retransmission timeout.
const DEFAULT_RTO_MS: u64 = 200;
/// Linux's TCP_RTO_MAX: backing off stops growing here.
const MAX_RTO_MS: u64 = 120_000;

impl Loss {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        let probability = a.probability("probability", 0.0)?;
        let rto = a
            .opt_uint("rto", "milliseconds", DAY_MS)?
            .unwrap_or(DEFAULT_RTO_MS);
        Ok(Loss { probability, rto })
    }

    pub(super) fn attributes(&self) -> Map<String, Value> {
        Map::from_iter([
            ("probability".to_owned(), Value::from(self.probability)),
            ("rto".to_owned(), Value::from(self.rto)),
        ])
    }

    pub(super) fn start(&self) -> LossState {
        LossState {
            spec: self.clone(),
            in_a_row: 0,
        }
    }

    /// The wait for a chunk lost after `in_a_row` lost ones before it.
    fn backoff(&self, in_a_row: u32) -> Duration {
        let ms = self
            .rto
            .saturating_mul(1u64 << in_a_row.min(20))
            .min(MAX_RTO_MS.max(self.rto));
        Duration::from_millis(ms)
    }
}

pub(super) struct LossState {
    spec: Loss,
    /// Chunks lost one after another up to now.
    in_a_row: u32,
}

impl Fault for LossState {
    fn on_chunk(&mut self, mut chunk: Chunk, rng: &mut fastrand::Rng) -> Verdict {
        // Draw for every chunk, lost or not, so one seed gives one sequence of decisions.
        let lost = self.spec.probability >= 1.0 || rng.f64() < self.spec.probability;
        if !lost {
            self.in_a_row = 0;
            return Verdict::Pass(chunk);
        }
        if chunk.msg.is_some() {
            return Verdict::Drop;
        }
        chunk.at += self.spec.backoff(self.in_a_row);
        self.in_a_row += 1;
        Verdict::Pass(chunk)
    }

    fn reconfigure(&mut self, kind: &FaultKind) -> bool {
        match kind {
            FaultKind::Loss(l) => {
                self.spec = l.clone();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Message;
    use bytes::Bytes;
    use std::sync::Arc;
    use tokio::time::Instant;

    /// How many of `n` chunks a loss of `p` delays under `seed`, and each one's delay.
    fn run(seed: u64, p: f64, n: usize) -> Vec<Duration> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut f = Loss {
            probability: p,
            rto: 200,
        }
        .start();
        let t0 = Instant::now();
        (0..n)
            .map(
                |_| match f.on_chunk(Chunk::bytes(Bytes::from_static(b"x"), t0), &mut rng) {
                    Verdict::Pass(c) => c.at - t0,
                    other => panic!("a byte stream loses nothing for good: {other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn a_seeded_run_stalls_about_p_of_the_chunks_and_repeats_exactly() {
        let delays = run(9, 0.3, 10_000);
        let stalled = delays.iter().filter(|d| !d.is_zero()).count();
        // Binomial(10000, 0.3): sd ≈ 46; five of them either way.
        assert!(
            (2770..=3230).contains(&stalled),
            "{stalled} of 10000 stalled"
        );
        assert_eq!(
            delays,
            run(9, 0.3, 10_000),
            "the same seed decides the same"
        );
        assert_ne!(delays, run(10, 0.3, 10_000));
    }

    #[test]
    fn losses_in_a_row_double_the_wait_and_a_delivery_resets_it() {
        let delays = run(1, 1.0, 4);
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600]);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut f = Loss {
            probability: 1.0,
            rto: 100,
        }
        .start();
        let t0 = Instant::now();
        let _ = f.on_chunk(Chunk::bytes(Bytes::new(), t0), &mut rng);
        f.spec.probability = 0.0;
        let _ = f.on_chunk(Chunk::bytes(Bytes::new(), t0), &mut rng);
        f.spec.probability = 1.0;
        match f.on_chunk(Chunk::bytes(Bytes::new(), t0), &mut rng) {
            Verdict::Pass(c) => assert_eq!(c.at - t0, Duration::from_millis(100)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            run(1, 1.0, 40).last(),
            Some(&Duration::from_millis(120_000))
        );
    }

    #[test]
    fn a_lost_message_is_dropped() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut f = Loss {
            probability: 1.0,
            rto: 200,
        }
        .start();
        let line = Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1}\n");
        let msg = Arc::new(Message::parse(&line));
        let c = Chunk {
            data: line,
            at: Instant::now(),
            msg: Some(msg),
            more: false,
        };
        assert_eq!(f.on_chunk(c, &mut rng), Verdict::Drop);
    }
}
