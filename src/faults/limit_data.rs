use tokio::time::Instant;

use super::spec::{Attrs, SpecError};
use super::{Chunk, End, Fault, FaultKind, Verdict};

/// Closes the connection once `bytes` bytes have passed; the last chunk is cut to fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitData {
    pub bytes: u64,
}

impl LimitData {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        Ok(LimitData {
            bytes: a.uint("bytes", "bytes", u64::MAX)?,
        })
    }

    pub(super) fn start(&self, now: Instant) -> LimitDataState {
        LimitDataState {
            spec: self.clone(),
            passed: 0,
            started: now,
        }
    }
}

pub(super) struct LimitDataState {
    spec: LimitData,
    /// Kept across attribute updates, so raising the limit continues the count.
    passed: u64,
    started: Instant,
}

impl Fault for LimitDataState {
    fn on_chunk(&mut self, mut chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        let left = self.spec.bytes.saturating_sub(self.passed);
        let len = chunk.data.len() as u64;
        if len < left {
            self.passed += len;
            return Verdict::Pass(chunk);
        }
        self.passed += left;
        chunk.data.truncate(left as usize);
        let end = End::Close(chunk.at);
        let last = (!chunk.data.is_empty()).then_some(chunk);
        Verdict::End { last, end }
    }

    fn deadline(&self) -> Option<End> {
        // Already at the limit (a limit of 0, or lowered below what has passed): close now.
        (self.passed >= self.spec.bytes).then_some(End::Close(self.started))
    }

    fn reconfigure(&mut self, kind: &FaultKind) -> bool {
        match kind {
            FaultKind::LimitData(l) => {
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
    use bytes::Bytes;

    #[test]
    fn cuts_exactly_at_the_limit() {
        let mut rng = fastrand::Rng::with_seed(0);
        let t0 = Instant::now();
        let mut f = LimitData { bytes: 10 }.start(t0);
        let c = |n| Chunk::bytes(Bytes::from(vec![1u8; n]), t0);
        assert!(matches!(f.on_chunk(c(4), &mut rng), Verdict::Pass(_)));
        match f.on_chunk(c(8), &mut rng) {
            Verdict::End {
                last: Some(last),
                end: End::Close(_),
            } => assert_eq!(last.data.len(), 6),
            other => panic!("{other:?}"),
        }
        assert!(f.deadline().is_some());
    }
}
