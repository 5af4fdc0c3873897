//! Results of a run: one JSON document, JUnit XML (one testcase per check), the call
//! history as JSON lines, and the summary a person reads on the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use serde::Serialize;

use super::checks::Verdict;
use super::history::{Call, Counters, Latency, Window};
use super::timeline::StepRecord;
use crate::vm::Snapshot;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// It ran, and a check did not hold.
    Fail,
    /// It could not run as written: the target did not start, a step failed.
    Error,
}

impl Outcome {
    /// The process exit code: 0, 1 for a missed threshold, 2 for a run that could not be
    /// carried out.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Pass => 0,
            Outcome::Fail => 1,
            Outcome::Error => 2,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Resources {
    /// What brownout and its guests held on the host before the run and after it.
    pub before: Snapshot,
    pub after: Snapshot,
    /// brownout's resident memory over the workload.
    pub rss_kib: Option<Rss>,
    /// The peak of the second half of the run over that of the first, in MiB.
    pub rss_growth_mib: Option<f64>,
}

/// Resident memory, in KiB, sampled while the workload ran.
#[derive(Clone, Debug, Serialize)]
pub struct Rss {
    pub first: u64,
    pub peak: u64,
    pub last: u64,
}

impl Rss {
    pub fn of(samples: &[(f64, u64)]) -> Option<Rss> {
        Some(Rss {
            first: samples.first()?.1,
            peak: samples.iter().map(|s| s.1).max()?,
            last: samples.last()?.1,
        })
    }
}

/// What became of the steady-state hypothesis.
#[derive(Clone, Debug, Serialize)]
pub struct SteadyStateResult {
    /// Calls in each probe.
    pub calls: u64,
    pub before: bool,
    /// `None` when the run did not start because it did not hold before.
    pub after: Option<bool>,
    /// It held before the run and not after it.
    pub deviated: bool,
}

/// The JSON document a run writes.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub scenario: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub source: String,
    pub seed: u64,
    pub brownout: &'static str,
    pub target: String,
    /// When it started, in seconds since the Unix epoch, and how long it took.
    pub started: f64,
    pub duration_s: f64,
    pub verdict: Outcome,
    /// Why it could not run, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The check that stopped the run early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_step: Option<StepRecord>,
    /// The scenario's checks, and the steady-state hypothesis's (named
    /// `steady_state.before: ...` and `steady_state.after: ...`) around them.
    pub checks: Vec<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady_state: Option<SteadyStateResult>,
    pub counters: Counters,
    pub per_proxy: BTreeMap<String, Counters>,
    pub latency_ms: Latency,
    /// From each lifted fault to the next verified ok call (null: never recovered).
    pub recovery_s: Vec<Option<f64>>,
    pub faults: Vec<Window>,
    pub steps: Vec<StepRecord>,
    pub resources: Resources,
    /// The files next to this one.
    pub history: String,
    pub events: String,
}

impl Results {
    /// Write `results.json`, `junit.xml`, `report.html` and `history.jsonl` (the calls)
    /// into `dir`.
    pub fn write(&self, dir: &Path, calls: &[Call]) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        std::fs::write(dir.join("results.json"), json)?;
        std::fs::write(dir.join("junit.xml"), self.junit())?;
        let page = super::html::render(self, calls).map_err(io::Error::other)?;
        std::fs::write(dir.join("report.html"), page)?;
        let mut lines = Vec::with_capacity(calls.len() * 96);
        for c in calls {
            serde_json::to_writer(&mut lines, c).map_err(io::Error::other)?;
            lines.push(b'\n');
        }
        std::fs::write(dir.join("history.jsonl"), lines)
    }

    /// JUnit XML: the scenario is the suite, each check a testcase; a run that could not be
    /// carried out is one errored testcase.
    pub fn junit(&self) -> String {
        use quick_xml::escape::escape;
        let failures = self.checks.iter().filter(|c| !c.passed).count();
        let errors = usize::from(self.verdict == Outcome::Error);
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{:.3}\">",
            self.checks.len() + errors,
            self.duration_s
        );
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{:.3}\">",
            escape(&self.scenario),
            self.checks.len() + errors,
            self.duration_s
        );
        if let Some(e) = &self.error {
            let _ = writeln!(
                x,
                "    <testcase classname=\"{}\" name=\"run\">\n      <error message=\"{}\"/>\n    </testcase>",
                escape(&self.scenario),
                escape(e)
            );
        }
        for c in &self.checks {
            let _ = write!(
                x,
                "    <testcase classname=\"{}\" name=\"{}\"",
                escape(&self.scenario),
                escape(&c.name)
            );
            if c.passed {
                x.push_str("/>\n");
            } else {
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    escape(&c.reason),
                    escape(&c.expect)
                );
            }
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }

    /// What a person reads at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let c = &self.counters;
        let _ = writeln!(
            s,
            "\n{} (seed {}) against {}: {:.1} s",
            self.scenario, self.seed, self.target, self.duration_s
        );
        let _ = writeln!(
            s,
            "  calls {}  ok {}  fail {}  info {}  hung {}  mismatched {}  retried {}",
            c.calls, c.ok, c.fail, c.info, c.hung, c.mismatched, c.retried
        );
        if let (Some(p50), Some(p99)) = (self.latency_ms.p50, self.latency_ms.p99) {
            let _ = writeln!(s, "  latency of ok calls: p50 {p50:.1} ms, p99 {p99:.1} ms");
        }
        if !self.recovery_s.is_empty() {
            let never = self.recovery_s.iter().filter(|r| r.is_none()).count();
            let worst = self
                .recovery_s
                .iter()
                .flatten()
                .copied()
                .fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "  {} {} lifted: recovered from {} (slowest {worst:.3} s){}",
                self.recovery_s.len(),
                if self.recovery_s.len() == 1 {
                    "fault"
                } else {
                    "faults"
                },
                self.recovery_s.len() - never,
                if never > 0 {
                    format!(", never from {never}")
                } else {
                    String::new()
                }
            );
        }
        if let Some(step) = &self.failing_step {
            let _ = writeln!(
                s,
                "  {} failed: {}: {}",
                step.step,
                step.action,
                step.error.as_deref().unwrap_or("")
            );
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "  could not run: {e}");
        }
        if let Some(a) = &self.aborted_by {
            let _ = writeln!(s, "  stopped early: check {a:?} failed while it ran");
        }
        match &self.steady_state {
            Some(st) if !st.before => {
                let _ = writeln!(
                    s,
                    "  the steady state did not hold before the run: nothing else was run"
                );
            }
            Some(st) if st.deviated => {
                let _ = writeln!(
                    s,
                    "  deviated: the steady state held before the run, not after"
                );
            }
            _ => {}
        }
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let mark = if c.passed { "pass" } else { "FAIL" };
            let _ = writeln!(s, "  {mark}  {:width$}  {}", c.name, c.reason);
        }
        let verdict = match self.verdict {
            Outcome::Pass => "passed",
            Outcome::Fail => "FAILED",
            Outcome::Error => "could not run",
        };
        let passed = self.checks.iter().filter(|c| c.passed).count();
        let _ = writeln!(
            s,
            "{verdict}: {passed} of {} checks held",
            self.checks.len()
        );
        s
    }
}
