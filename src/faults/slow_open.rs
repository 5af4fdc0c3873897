use std::time::Duration;

use super::spec::{Attrs, DAY_MS, SpecError};
use super::{Chunk, Fault, FaultKind, ToxicSpec, Verdict};

/// Dials the upstream only `delay` ms after a client connected: a server slow to accept.
/// It acts on the dial, so on new connections only, whichever stream it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowOpen {
    pub delay: u64,
}

impl SlowOpen {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        Ok(SlowOpen {
            delay: a.uint("delay", "milliseconds", DAY_MS)?,
        })
    }
}

impl Fault for SlowOpen {
    fn on_chunk(&mut self, chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        Verdict::Pass(chunk)
    }
}

/// How long a new connection waits before its upstream is dialled: the sum of the
/// `slow_open` delays among `specs`, each applying with its toxicity, rolled with `rng`
/// (which the caller seeds per connection, so one seed gives one set of waits).
pub fn open_delay(specs: &[ToxicSpec], rng: &mut fastrand::Rng) -> Duration {
    specs
        .iter()
        .filter_map(|s| match &s.kind {
            FaultKind::SlowOpen(o) if s.toxicity >= 1.0 || rng.f64() < s.toxicity => {
                Some(Duration::from_millis(o.delay))
            }
            _ => None,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Stream;

    fn spec(delay: u64, toxicity: f64) -> ToxicSpec {
        ToxicSpec {
            name: format!("open{delay}"),
            kind: FaultKind::SlowOpen(SlowOpen { delay }),
            stream: Stream::Downstream,
            toxicity,
        }
    }

    #[test]
    fn delays_add_up_and_toxicity_is_honoured() {
        let mut rng = fastrand::Rng::with_seed(1);
        let specs = [spec(100, 1.0), spec(50, 1.0), spec(1000, 0.0)];
        assert_eq!(open_delay(&specs, &mut rng), Duration::from_millis(150));
        assert_eq!(open_delay(&[], &mut rng), Duration::ZERO);
    }
}
