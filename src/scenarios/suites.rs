//! The scenarios brownout ships, runnable by name (`brownout run partition`).

/// (name, what it tests, the file).
const SUITES: &[(&str, &str, &str)] = &[
    (
        "partition",
        "full loss, 30 % and 50 % loss, recovery, an untouched neighbour, rapid partition/heal",
        include_str!("suites/partition.toml"),
    ),
    (
        "vm-crash",
        "the server's guest killed mid-write and restarted, 5 times, then 10 rapid cycles (root)",
        include_str!("suites/vm-crash.toml"),
    ),
    (
        "timeouts",
        "slow, missing and stalled answers: every call ends in time, cancellations reach the server",
        include_str!("suites/timeouts.toml"),
    ),
    (
        "process",
        "the server process sent TERM, KILL, INT and HUP starting, idle, mid-call and shutting down",
        include_str!("suites/process.toml"),
    ),
    (
        "exhaustion",
        "the guest's disk filled and its file descriptors used up during writes (root)",
        include_str!("suites/exhaustion.toml"),
    ),
    (
        "chaos",
        "a seeded random mix of partitions, loss, latency, kills, signals and freezes; retrying clients",
        include_str!("suites/chaos.toml"),
    ),
    (
        "stress",
        "1,000 calls from 20 clients with mixed outcomes (--full: 10,000 from 100): no leaks, flat",
        include_str!("suites/stress.toml"),
    ),
];

/// The file of the suite called `name`.
pub fn get(name: &str) -> Option<&'static str> {
    SUITES.iter().find(|s| s.0 == name).map(|s| s.2)
}

pub fn names() -> Vec<&'static str> {
    SUITES.iter().map(|s| s.0).collect()
}

/// Each suite's name and what it tests.
pub fn list() -> impl Iterator<Item = (&'static str, &'static str)> {
    SUITES.iter().map(|s| (s.0, s.1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_suite_parses() {
        for (name, _, text) in super::SUITES {
            for full in [false, true] {
                if let Err(e) = super::super::parse(&format!("builtin:{name}"), text, full) {
                    panic!("{e}");
                }
            }
        }
    }

    #[test]
    fn a_random_step_picks_the_same_from_one_seed_and_another_from_another() {
        let chaos =
            super::super::parse("builtin:chaos", super::get("chaos").unwrap(), false).unwrap();
        let step = &chaos.steps[0];
        let picks = |seed: u64| -> Vec<String> {
            (0..step.repeat)
                .map(|i| step.action.nth(i, seed, &step.label).to_string())
                .collect()
        };
        assert_eq!(picks(1), picks(1));
        assert_ne!(picks(1), picks(2));
        let super::super::file::Action::Random { choices } = &step.action else {
            panic!("{:?}", step.action)
        };
        let names: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
        for seed in 0..20 {
            for p in picks(seed) {
                assert!(names.contains(&p), "{p} is not one of {names:?}");
            }
        }
    }
}
