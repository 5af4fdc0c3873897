use std::time::Duration;

use super::spec::{Attrs, SpecError};
use super::{Chunk, Fault, Verdict};

/// Splits data into slices of `average_size ± size_variation` bytes, each delivered `delay`
/// microseconds after the one before. With `average_size` 0 (attributes left out, as
/// Toxiproxy allows) chunks pass whole: Toxiproxy's own slicer cannot split by zero and
/// stops on the first data instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slicer {
    pub average_size: u64,
    pub size_variation: u64,
    pub delay: u64,
}

impl Slicer {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        let s = Slicer {
            average_size: a.uint("average_size", "bytes", 1 << 30)?,
            size_variation: a.uint("size_variation", "bytes", 1 << 30)?,
            delay: a.uint("delay", "microseconds", 86_400_000_000)?,
        };
        if s.size_variation >= s.average_size && s.size_variation > 0 {
            return Err(SpecError::field(
                "attributes.size_variation",
                format!(
                    "must be less than average_size ({}), got {}",
                    s.average_size, s.size_variation
                ),
            ));
        }
        Ok(s)
    }
}

impl Fault for Slicer {
    fn on_chunk(&mut self, chunk: Chunk, rng: &mut fastrand::Rng) -> Verdict {
        if self.average_size == 0 {
            return Verdict::Pass(chunk);
        }
        let mut data = chunk.data.clone();
        let mut at = chunk.at;
        let mut slices = Vec::new();
        while !data.is_empty() {
            let v = self.size_variation;
            let size = if v == 0 {
                self.average_size
            } else {
                self.average_size - v + rng.u64(0..=2 * v)
            };
            let part = data.split_to((size as usize).clamp(1, data.len()));
            slices.push((part, at));
            at += Duration::from_micros(self.delay);
        }
        Verdict::Replace(chunk.slices(slices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::time::Instant;

    #[test]
    fn slices_cover_the_chunk_in_order_with_sizes_in_range() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut f = Slicer {
            average_size: 10,
            size_variation: 4,
            delay: 50,
        };
        let data: Vec<u8> = (0..=255).collect();
        let t0 = Instant::now();
        let Verdict::Replace(out) =
            f.on_chunk(Chunk::bytes(Bytes::from(data.clone()), t0), &mut rng)
        else {
            panic!()
        };
        let joined: Vec<u8> = out.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(joined, data);
        for (i, c) in out.iter().enumerate() {
            assert_eq!(c.at - t0, Duration::from_micros(50 * i as u64));
            if i + 1 < out.len() {
                assert!((6..=14).contains(&c.data.len()), "{}", c.data.len());
            }
        }
    }
}
