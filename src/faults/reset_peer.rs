use std::time::Duration;

use super::spec::{Attrs, DAY_MS, SpecError};
use super::{Chunk, End, Fault, Verdict};

/// Resets the connection (TCP RST) `timeout` ms after the first data arrives, dropping that
/// data, as Toxiproxy does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetPeer {
    pub timeout: u64,
}

impl ResetPeer {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        Ok(ResetPeer {
            timeout: a.uint("timeout", "milliseconds", DAY_MS)?,
        })
    }
}

impl Fault for ResetPeer {
    fn on_chunk(&mut self, chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        Verdict::End {
            last: None,
            end: End::Reset(chunk.at + Duration::from_millis(self.timeout)),
        }
    }
}
