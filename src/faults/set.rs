//! The toxics one link, proxy or wrapper follows, changeable at any time: what the control
//! plane keeps per proxy, and what in-process users (the rmcp wrapper, embedded proxies)
//! keep themselves.

use std::sync::Arc;

use tokio::sync::watch;

use super::spec::{SpecError, ToxicInput, ToxicSpec, Transport};

/// An ordered set of toxics, unique by name, for one transport. Readers follow it through
/// a watch channel, so a change is seen by the next item each link handles.
pub struct ToxicSet {
    transport: Transport,
    specs: watch::Sender<Arc<[ToxicSpec]>>,
}

impl ToxicSet {
    pub fn new(transport: Transport) -> ToxicSet {
        ToxicSet {
            transport,
            specs: watch::channel(Arc::from(Vec::new())).0,
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Follow the set: what links take.
    pub fn subscribe(&self) -> watch::Receiver<Arc<[ToxicSpec]>> {
        self.specs.subscribe()
    }

    /// The toxics now, in order.
    pub fn list(&self) -> Arc<[ToxicSpec]> {
        self.specs.borrow().clone()
    }

    /// Add a toxic given as JSON, as `POST /proxies/{p}/toxics` takes it.
    pub fn add_json(&self, json: &str) -> Result<ToxicSpec, SpecError> {
        let input: ToxicInput =
            serde_json::from_str(json).map_err(|e| SpecError::field("body", e.to_string()))?;
        self.add(ToxicSpec::from_input(input)?)
    }

    /// Add a toxic after the others; refused if the transport cannot carry it out or the
    /// name is taken.
    pub fn add(&self, spec: ToxicSpec) -> Result<ToxicSpec, SpecError> {
        spec.kind.check_transport(self.transport)?;
        let mut result = Ok(spec.clone());
        self.specs.send_if_modified(|specs| {
            if specs.iter().any(|s| s.name == spec.name) {
                result = Err(SpecError::field(
                    "name",
                    format!("a toxic named {:?} exists", spec.name),
                ));
                return false;
            }
            let mut v = specs.to_vec();
            v.push(spec.clone());
            *specs = v.into();
            true
        });
        result
    }

    /// Remove a toxic by name; true if there was one.
    pub fn remove(&self, name: &str) -> bool {
        self.retain(|s| s.name != name) > 0
    }

    /// Keep only the toxics `keep` says yes to; returns how many were removed.
    pub fn retain(&self, mut keep: impl FnMut(&ToxicSpec) -> bool) -> usize {
        let mut removed = 0;
        self.specs.send_if_modified(|specs| {
            let kept: Vec<ToxicSpec> = specs.iter().filter(|s| keep(s)).cloned().collect();
            removed = specs.len() - kept.len();
            if removed > 0 {
                *specs = kept.into();
            }
            removed > 0
        });
        removed
    }

    /// Remove every toxic; returns how many there were.
    pub fn clear(&self) -> usize {
        self.retain(|_| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_removal_reaches_followers() {
        let set = ToxicSet::new(Transport::Tcp);
        let mut follower = set.subscribe();
        set.add_json(r#"{"name": "slow", "type": "latency", "attributes": {"latency": 5}}"#)
            .unwrap();
        assert!(follower.has_changed().unwrap());
        follower.borrow_and_update();
        let again = set
            .add_json(r#"{"name": "slow", "type": "latency", "attributes": {"latency": 9}}"#)
            .unwrap_err();
        assert_eq!(again.field, "name");
        assert!(
            !follower.has_changed().unwrap(),
            "a refused add changed the set"
        );
        assert!(set.remove("slow"));
        assert!(follower.has_changed().unwrap());
        assert!(!set.remove("slow"));
        assert!(set.list().is_empty());
    }

    #[test]
    fn a_toxic_the_transport_cannot_carry_out_is_refused() {
        let set = ToxicSet::new(Transport::Http);
        let e = set
            .add_json(r#"{"type": "slow_open", "attributes": {"delay": 5}}"#)
            .unwrap_err();
        assert_eq!(e.field, "type");
        assert!(e.message.contains("http"), "{e}");
    }
}
