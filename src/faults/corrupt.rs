use bytes::Bytes;
use serde_json::{Map, Value};

use super::spec::{Attrs, SpecError};
use super::{Chunk, Fault, FaultKind, Verdict};

/// Flips `bits` randomly chosen bits in a chunk, with `probability` per chunk: on a byte
/// stream anywhere in it; in a framed message, in its JSON text (which may then not parse),
/// never making or breaking the line that frames it.
#[derive(Clone, Debug, PartialEq)]
pub struct Corrupt {
    pub probability: f64,
    pub bits: u64,
}

/// Flips per chunk at most: enough to garble any message, small enough to bound the work.
const MAX_BITS: u64 = 1 << 20;

impl Corrupt {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        let probability = a.probability("probability", 0.0)?;
        // One bit unless told: a corrupt toxic that flips nothing would be a no-op.
        let bits = a.opt_uint("bits", "bits", MAX_BITS)?.unwrap_or(1).max(1);
        Ok(Corrupt { probability, bits })
    }

    pub(super) fn attributes(&self) -> Map<String, Value> {
        Map::from_iter([
            ("probability".to_owned(), Value::from(self.probability)),
            ("bits".to_owned(), Value::from(self.bits)),
        ])
    }
}

impl Fault for Corrupt {
    fn on_chunk(&mut self, chunk: Chunk, rng: &mut fastrand::Rng) -> Verdict {
        // Draw for every chunk, so one seed gives one sequence of decisions.
        let hit = self.probability >= 1.0 || rng.f64() < self.probability;
        let framed = chunk.msg.is_some();
        // A message's trailing newline frames it: leave it be.
        let body = if framed {
            chunk.data.trim_ascii_end().len()
        } else {
            chunk.data.len()
        };
        if !hit || body == 0 {
            return Verdict::Pass(chunk);
        }
        let mut data = chunk.data.to_vec();
        for _ in 0..self.bits {
            let i = rng.usize(..body);
            data[i] ^= 1 << rng.u8(..8);
            if framed && data[i] == b'\n' {
                // Still corrupt, but not a new line: one message stays one message.
                data[i] |= 0x80;
            }
        }
        Verdict::Pass(chunk.part(Bytes::from(data), chunk.at))
    }

    fn reconfigure(&mut self, kind: &FaultKind) -> bool {
        match kind {
            FaultKind::Corrupt(c) => {
                *self = c.clone();
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
    use std::sync::Arc;
    use tokio::time::Instant;

    fn flipped(a: &[u8], b: &[u8]) -> u32 {
        a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
    }

    #[test]
    fn flips_the_bits_it_is_told_to_and_repeats_for_a_seed() {
        let data = Bytes::from(vec![0u8; 4096]);
        let corrupt = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut f = Corrupt {
                probability: 1.0,
                bits: 1,
            };
            match f.on_chunk(Chunk::bytes(data.clone(), Instant::now()), &mut rng) {
                Verdict::Pass(c) => c.data,
                other => panic!("{other:?}"),
            }
        };
        let once = corrupt(5);
        assert_eq!(once.len(), data.len());
        assert_eq!(flipped(&once, &data), 1);
        assert_eq!(once, corrupt(5));
        assert_ne!(once, corrupt(6));
    }

    #[test]
    fn a_message_stays_one_line() {
        let line = Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n");
        let msg = Some(Arc::new(Message::parse(&line)));
        let mut f = Corrupt {
            probability: 1.0,
            bits: 64,
        };
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let c = Chunk {
                data: line.clone(),
                at: Instant::now(),
                msg: msg.clone(),
                more: false,
            };
            let Verdict::Pass(out) = f.on_chunk(c, &mut rng) else {
                panic!()
            };
            assert_eq!(out.data.len(), line.len());
            assert_eq!(
                out.data.iter().filter(|b| **b == b'\n').count(),
                1,
                "seed {seed}"
            );
            assert_eq!(out.data.last(), Some(&b'\n'));
            assert_ne!(out.data, line);
        }
    }

    #[test]
    fn probability_zero_passes_everything_untouched() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut f = Corrupt {
            probability: 0.0,
            bits: 8,
        };
        let c = Chunk::bytes(Bytes::from_static(b"intact"), Instant::now());
        assert_eq!(f.on_chunk(c.clone(), &mut rng), Verdict::Pass(c));
    }
}
