use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use super::{Chunk, Direction, End, Fault, FaultKind, Reply, ToxicSpec, Verdict};

/// The faults acting on one direction of one connection, in the order they were added.
///
/// The chain owns what is common to all faults: which direction they apply to, whether each
/// one is active on this link (toxicity, rolled once per link), and how verdicts compose.
pub struct Chain {
    direction: Direction,
    slots: Vec<Slot>,
    /// The faults that acted on the last chunk, in order.
    hits: Vec<Arc<str>>,
    /// What removed or changed faults let go of, until taken.
    released: Vec<Chunk>,
    /// How the link ends because a fault was removed from it (a `timeout`).
    removed_end: Option<End>,
}

struct Slot {
    spec: ToxicSpec,
    name: Arc<str>,
    /// Whether the toxicity roll made this fault apply on this link.
    active: bool,
    fault: Box<dyn Fault>,
    applied: Arc<AtomicU64>,
}

impl Chain {
    pub fn new(direction: Direction) -> Chain {
        Chain {
            direction,
            slots: Vec::new(),
            hits: Vec::new(),
            released: Vec::new(),
            removed_end: None,
        }
    }

    /// Bring the chain in line with `specs`. A fault whose spec is unchanged keeps its state
    /// and its toxicity roll; a fault whose attributes changed keeps its state where it can.
    /// Returns whether anything acting on this direction changed.
    pub fn update(
        &mut self,
        specs: &[ToxicSpec],
        now: Instant,
        rng: &mut fastrand::Rng,
        counter: &mut dyn FnMut(&ToxicSpec) -> Arc<AtomicU64>,
    ) -> bool {
        let mut old = std::mem::take(&mut self.slots);
        let mut changed = false;
        for spec in specs.iter().filter(|s| s.stream.applies_to(self.direction)) {
            let prev = old
                .iter()
                .position(|s| s.spec.name == spec.name)
                .map(|i| old.remove(i));
            let slot = match prev {
                Some(slot) if slot.spec == *spec => slot,
                Some(mut slot) if slot.spec.kind.type_name() == spec.kind.type_name() => {
                    changed = true;
                    self.released.extend(slot.fault.release());
                    if !slot.fault.reconfigure(&spec.kind) {
                        slot.fault = instance(&spec.kind, now);
                    }
                    if slot.spec.toxicity != spec.toxicity {
                        slot.active = roll(spec.toxicity, rng);
                    }
                    slot.spec = spec.clone();
                    slot
                }
                _ => {
                    changed = true;
                    Slot {
                        name: spec.name.as_str().into(),
                        active: roll(spec.toxicity, rng),
                        fault: instance(&spec.kind, now),
                        applied: counter(spec),
                        spec: spec.clone(),
                    }
                }
            };
            self.slots.push(slot);
        }
        for mut gone in old.drain(..) {
            self.released.extend(gone.fault.release());
            if gone.active
                && let Some(end) = gone.fault.on_removed(now)
            {
                self.removed_end = Some(
                    self.removed_end
                        .map_or(end, |e| if e.at() <= end.at() { e } else { end }),
                );
            }
            changed = true;
        }
        changed
    }

    /// Messages that faults held back and let go of in the last [`Chain::update`] (their
    /// fault was removed or changed): to be delivered now, in this order.
    pub fn take_released(&mut self) -> Vec<Chunk> {
        std::mem::take(&mut self.released)
    }

    /// Whether a fault holds back the message with this ticket.
    pub fn holds(&self, ticket: u64) -> bool {
        self.slots.iter().any(|s| s.fault.holds(ticket))
    }

    /// True when no fault acts on this link: data can go straight through.
    pub fn is_idle(&self) -> bool {
        !self.slots.iter().any(|s| s.active)
    }

    /// Run one chunk through every active fault. What may be delivered is appended to `out`
    /// in order, and what goes back to the sender to `answers`; an end, if a fault decided
    /// one, is returned.
    pub fn on_chunk(
        &mut self,
        chunk: Chunk,
        rng: &mut fastrand::Rng,
        out: &mut impl Extend<Chunk>,
        answers: &mut Vec<Reply>,
    ) -> Option<End> {
        self.hits.clear();
        self.run(0, chunk, rng, out, answers)
    }

    /// The names of the faults that acted on the last chunk given to [`Chain::on_chunk`]:
    /// anything but passing it on unchanged.
    pub fn hits(&self) -> &[Arc<str>] {
        &self.hits
    }

    fn run(
        &mut self,
        from: usize,
        mut chunk: Chunk,
        rng: &mut fastrand::Rng,
        out: &mut impl Extend<Chunk>,
        answers: &mut Vec<Reply>,
    ) -> Option<End> {
        for i in from..self.slots.len() {
            let slot = &mut self.slots[i];
            if !slot.active {
                continue;
            }
            let before = (chunk.at, chunk.data.as_ptr(), chunk.data.len());
            let verdict = slot.fault.on_chunk(chunk, rng);
            let unchanged = matches!(&verdict, Verdict::Pass(c) if (c.at, c.data.as_ptr(), c.data.len()) == before);
            if !unchanged {
                slot.applied.fetch_add(1, Ordering::Relaxed);
                self.hits.push(slot.name.clone());
            }
            match verdict {
                Verdict::Pass(c) => chunk = c,
                Verdict::Drop => return None,
                Verdict::Answer(c) => {
                    answers.push(Reply::Message(c));
                    return None;
                }
                Verdict::Reject(status, retry_after) => {
                    answers.push(Reply::Status(status, retry_after));
                    return None;
                }
                Verdict::Replace(items) => {
                    for c in items {
                        if let Some(end) = self.run(i + 1, c, rng, out, answers) {
                            return Some(end);
                        }
                    }
                    return None;
                }
                Verdict::End { last, end } => {
                    if let Some(c) = last
                        && let Some(e) = self.run(i + 1, c, rng, out, answers)
                    {
                        return Some(if e.at() < end.at() { e } else { end });
                    }
                    return Some(end);
                }
            }
        }
        out.extend(Some(chunk));
        None
    }

    /// The earliest time an active fault ends the link on its own.
    pub fn deadline(&self) -> Option<End> {
        self.slots
            .iter()
            .filter(|s| s.active)
            .filter_map(|s| s.fault.deadline())
            .chain(self.removed_end)
            .min_by_key(|e| e.at())
    }

    /// Count a deadline that fired against the fault that set it.
    pub fn note_deadline(&self, end: End) {
        if let Some(s) = self
            .slots
            .iter()
            .find(|s| s.active && s.fault.deadline() == Some(end))
        {
            s.applied.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// When the end of the stream that arrived at `at` may be passed on.
    pub fn on_eof(&mut self, at: Instant) -> Instant {
        self.slots
            .iter_mut()
            .filter(|s| s.active)
            .fold(at, |t, s| s.fault.on_eof(t))
    }
}

fn roll(toxicity: f64, rng: &mut fastrand::Rng) -> bool {
    // Toxicity 1 always applies and 0 never does, whatever the RNG says.
    toxicity >= 1.0 || rng.f64() < toxicity
}

fn instance(kind: &FaultKind, now: Instant) -> Box<dyn Fault> {
    match kind {
        FaultKind::Noop => Box::new(Noop),
        FaultKind::Latency(l) => Box::new(l.clone()),
        FaultKind::Bandwidth(b) => Box::new(b.start()),
        FaultKind::SlowClose(s) => Box::new(s.clone()),
        FaultKind::Timeout(t) => Box::new(t.start(now)),
        FaultKind::ResetPeer(r) => Box::new(r.clone()),
        FaultKind::Slicer(s) => Box::new(s.clone()),
        FaultKind::LimitData(l) => Box::new(l.start(now)),
        FaultKind::Partition(p) => Box::new(p.start(now)),
        FaultKind::Loss(l) => Box::new(l.start()),
        FaultKind::LimitTime(l) => Box::new(l.start(now)),
        FaultKind::SlowOpen(o) => Box::new(o.clone()),
        FaultKind::Corrupt(c) => Box::new(c.clone()),
        FaultKind::Mcp(m) => Box::new(m.start()),
        FaultKind::RateLimit(r) => Box::new(r.start()),
    }
}

/// Passes everything: useful to check that a client handles a proxy in between at all.
struct Noop;

impl Fault for Noop {
    fn on_chunk(&mut self, chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        Verdict::Pass(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{Latency, LimitData, Slicer, Stream};
    use bytes::Bytes;
    use std::time::Duration;

    fn spec(name: &str, kind: FaultKind, toxicity: f64) -> ToxicSpec {
        ToxicSpec {
            name: name.into(),
            kind,
            stream: Stream::Downstream,
            toxicity,
        }
    }

    fn counter(_: &ToxicSpec) -> Arc<AtomicU64> {
        Arc::default()
    }

    #[test]
    fn faults_compose_in_order() {
        let mut rng = fastrand::Rng::with_seed(1);
        let t0 = Instant::now();
        let mut chain = Chain::new(Direction::Downstream);
        let specs = [
            spec(
                "slice",
                FaultKind::Slicer(Slicer {
                    average_size: 2,
                    size_variation: 0,
                    delay: 1000,
                }),
                1.0,
            ),
            spec(
                "lat",
                FaultKind::Latency(Latency {
                    latency: 10,
                    jitter: 0,
                }),
                1.0,
            ),
            spec("limit", FaultKind::LimitData(LimitData { bytes: 5 }), 1.0),
        ];
        assert!(chain.update(&specs, t0, &mut rng, &mut counter));
        let mut out = Vec::new();
        let end = chain.on_chunk(
            Chunk::bytes(Bytes::from_static(b"abcdefgh"), t0),
            &mut rng,
            &mut out,
            &mut Vec::new(),
        );
        let got: Vec<(&[u8], Duration)> = out.iter().map(|c| (&c.data[..], c.at - t0)).collect();
        assert_eq!(
            got,
            vec![
                (&b"ab"[..], Duration::from_millis(10)),
                (&b"cd"[..], Duration::from_millis(11)),
                (&b"e"[..], Duration::from_millis(12)),
            ]
        );
        assert_eq!(end, Some(End::Close(t0 + Duration::from_millis(12))));
    }

    #[test]
    fn other_direction_and_zero_toxicity_do_nothing() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut chain = Chain::new(Direction::Upstream);
        let lat = FaultKind::Latency(Latency {
            latency: 10,
            jitter: 0,
        });
        chain.update(
            &[spec("a", lat.clone(), 1.0)],
            Instant::now(),
            &mut rng,
            &mut counter,
        );
        assert!(chain.is_idle(), "a downstream fault must not act upstream");
        let mut chain = Chain::new(Direction::Downstream);
        chain.update(
            &[spec("a", lat, 0.0)],
            Instant::now(),
            &mut rng,
            &mut counter,
        );
        assert!(chain.is_idle(), "toxicity 0 never applies");
    }

    #[test]
    fn toxicity_is_repeatable_for_a_seed() {
        let rolls = |seed| {
            (0..64)
                .map(|conn| {
                    let mut rng = crate::faults::link_rng(seed, conn, Direction::Downstream);
                    let mut chain = Chain::new(Direction::Downstream);
                    let lat = FaultKind::Latency(Latency {
                        latency: 1,
                        jitter: 0,
                    });
                    chain.update(
                        &[spec("a", lat, 0.5)],
                        Instant::now(),
                        &mut rng,
                        &mut counter,
                    );
                    chain.is_idle()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(rolls(42), rolls(42));
        assert_ne!(rolls(42), rolls(43));
        let active = rolls(42).iter().filter(|idle| !**idle).count();
        assert!(
            (16..=48).contains(&active),
            "{active} of 64 active at toxicity 0.5"
        );
    }

    #[test]
    fn updating_attributes_keeps_limit_data_count() {
        let mut rng = fastrand::Rng::with_seed(1);
        let t0 = Instant::now();
        let mut chain = Chain::new(Direction::Downstream);
        let limit = |bytes| spec("l", FaultKind::LimitData(LimitData { bytes }), 1.0);
        chain.update(&[limit(10)], t0, &mut rng, &mut counter);
        let mut out = Vec::new();
        let c = Chunk::bytes(Bytes::from_static(b"123456"), t0);
        assert_eq!(
            chain.on_chunk(c.clone(), &mut rng, &mut out, &mut Vec::new()),
            None
        );
        assert!(chain.update(&[limit(8)], t0, &mut rng, &mut counter));
        assert!(
            chain
                .on_chunk(c, &mut rng, &mut out, &mut Vec::new())
                .is_some()
        );
        assert_eq!(out.iter().map(|c| c.data.len()).sum::<usize>(), 8);
    }
}
