//! Checks: a threshold on one figure of the run, written as an expression
//! (`graceful >= 0.85`, `p99(latency_ms) < 500`, `side.ok_rate == 1`), parsed when the
//! file is read, so a typo in a figure's name fails before anything starts.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// The figures a check can name, and what each one is.
pub const FIGURES: &[(&str, &str)] = &[
    ("calls", "calls the workload made"),
    ("ok", "calls answered with a result that verified"),
    (
        "fail",
        "calls that certainly had no effect: an error answer, or no connection",
    ),
    (
        "info",
        "calls whose effect is unknown: timed out or cut off (hung ones included)",
    ),
    (
        "hung",
        "calls that had not ended by their timeout plus the grace period",
    ),
    (
        "mismatched",
        "calls answered with a result that did not verify",
    ),
    ("ok_rate", "ok / calls"),
    (
        "graceful",
        "(calls - hung - mismatched) / calls: every other call ended in time, cleanly",
    ),
    (
        "mttr_s",
        "the longest time from a fault lifted to the next verified ok, in seconds",
    ),
    (
        "recovered",
        "the share of lifted faults after which a call succeeded",
    ),
    (
        "degradation",
        "mean latency of the last tenth of ok calls over that of the first tenth",
    ),
    (
        "clean_termination",
        "the share of guest kills, stops and signals that ended it in time and left nothing behind",
    ),
    (
        "clear_errors",
        "of the calls that did not succeed, the share told why by an error answer (not a timeout or a cut)",
    ),
    (
        "lost_writes",
        "acknowledged writes whose file was gone or different when read back after the run",
    ),
    (
        "phantom_writes",
        "writes that failed (so had no effect) whose text was there after the run",
    ),
    (
        "duplicated_writes",
        "append calls whose line was in the log more than once after the run (applied twice)",
    ),
    (
        "retried",
        "calls the workload's retry policy sent more than once",
    ),
    (
        "exit_code",
        "the workload command's exit code (128 + the signal that ended it)",
    ),
    (
        "orphans",
        "processes a guest's server left running when it ended (found, reported and killed)",
    ),
    (
        "oom_kills",
        "times memory pressure left the guest's server too little and the kernel killed it",
    ),
    (
        "leaks",
        "processes, zombies, devices, namespaces, mounts, cgroups and temp dirs left over",
    ),
    (
        "timed_out",
        "calls that ran out of time: their client gave up waiting (hung ones included)",
    ),
    (
        "cancelled",
        "notifications/cancelled that reached the server, over the calls that timed out",
    ),
    (
        "rss_growth_mib",
        "brownout's peak memory in the second half of the run over the first's, in MiB",
    ),
];

/// The figures of calls alone: a check can judge them over the calls made while a named
/// step acted (`during = "disk full"`), as well as over the whole run.
pub const CALL_FIGURES: &[&str] = &[
    "calls",
    "ok",
    "fail",
    "info",
    "hung",
    "mismatched",
    "retried",
    "clear_errors",
    "ok_rate",
    "graceful",
];

/// The key of a call figure over the calls made while the step named `step` acted.
pub fn during_key(figure: &str, step: &str) -> String {
    format!("{figure} during {step:?}")
}

/// Statistics over `latency_ms` of the ok calls: `p50(latency_ms)` and the like.
pub const STATS: &[&str] = &["p50", "p90", "p95", "p99", "max", "mean"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => (a - b).abs() < 1e-9,
            Op::Ne => (a - b).abs() >= 1e-9,
        }
    }
}

/// A check, as parsed.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    /// As written.
    pub expect: String,
    /// The figure's key in [`Figures`]: `ok_rate`, `p99(latency_ms)`, `side.ok_rate`.
    pub figure: String,
    pub op: Op,
    pub threshold: f64,
    /// Stop the run as soon as this check fails while it runs.
    pub abort: bool,
    /// The named step over whose calls it judges, if not the whole run.
    pub during: Option<String>,
}

/// The figures of a run (or of the run so far), by key; `None` where a figure has no
/// value (no calls yet, a fault never recovered from).
pub type Figures = BTreeMap<String, Option<f64>>;

/// What one check made of the figures.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub name: String,
    pub expect: String,
    pub figure: Option<f64>,
    pub op: Op,
    pub threshold: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub during: Option<String>,
    pub passed: bool,
    /// Figure against threshold, in words.
    pub reason: String,
}

#[derive(Debug)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Check {
    /// Parse `figure op number`; `proxies` are the names a figure may be scoped to.
    pub fn parse(
        name: Option<String>,
        expect: &str,
        abort: bool,
        proxies: &[&str],
    ) -> Result<Check, ParseError> {
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (at, len, op) = ops
            .iter()
            .filter_map(|(s, op)| expect.find(s).map(|i| (i, s.len(), *op)))
            .min_by_key(|(i, len, _)| (*i, usize::MAX - len))
            .ok_or_else(|| {
                ParseError(format!(
                    "{expect:?} is not `figure op number` (op one of < <= > >= == !=)"
                ))
            })?;
        let figure = expect[..at].trim();
        let number = expect[at + len..].trim();
        let threshold: f64 = number
            .parse()
            .map_err(|_| ParseError(format!("in {expect:?}, {number:?} is not a number")))?;
        let figure = canonical_figure(figure, proxies)?;
        Ok(Check {
            name: name.unwrap_or_else(|| expect.trim().to_owned()),
            expect: expect.trim().to_owned(),
            figure,
            op,
            threshold,
            abort,
            during: None,
        })
    }

    /// Judge only the calls made while the step named `step` acted: a call figure of
    /// all proxies.
    pub fn during(&mut self, step: &str) -> Result<(), ParseError> {
        if let Some((proxy, _)) = self.figure.split_once('.') {
            return Err(ParseError(format!(
                "{}: a check during a step judges the calls through every proxy, not those of {proxy:?} alone",
                self.figure
            )));
        }
        if !CALL_FIGURES.contains(&self.figure.as_str()) && !self.figure.ends_with("(latency_ms)") {
            let latency: Vec<String> = STATS.iter().map(|s| format!("{s}(latency_ms)")).collect();
            return Err(ParseError(format!(
                "{} cannot be judged during a step; these can: {}, {}",
                self.figure,
                CALL_FIGURES.join(", "),
                latency.join(", ")
            )));
        }
        self.figure = during_key(&self.figure, step);
        self.during = Some(step.to_owned());
        Ok(())
    }

    pub fn judge(&self, figures: &Figures) -> Verdict {
        let figure = figures.get(&self.figure).copied().flatten();
        let (passed, reason) = match figure {
            Some(v) if self.op.holds(v, self.threshold) => (
                true,
                format!(
                    "{} = {} {} {}",
                    self.figure,
                    show(v),
                    self.op.as_str(),
                    show(self.threshold)
                ),
            ),
            Some(v) => (
                false,
                format!(
                    "{} = {}, needed {} {}",
                    self.figure,
                    show(v),
                    self.op.as_str(),
                    show(self.threshold)
                ),
            ),
            None => (false, format!("{} has no value in this run", self.figure)),
        };
        Verdict {
            name: self.name.clone(),
            expect: self.expect.clone(),
            figure,
            op: self.op,
            threshold: self.threshold,
            during: self.during.clone(),
            passed,
            reason,
        }
    }
}

/// A number as a person reads it: no float noise.
pub fn show(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{:.4}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// The key of a figure as written (`ok_rate`, `p99(latency_ms)`, `side.ok_rate`), checked.
fn canonical_figure(written: &str, proxies: &[&str]) -> Result<String, ParseError> {
    let compact: String = written.chars().filter(|c| !c.is_whitespace()).collect();
    // A scope, if any, is a proxy's name before the first dot.
    let (scope, bare) = match compact.split_once('.') {
        Some((p, rest)) => {
            if !proxies.contains(&p) {
                return Err(ParseError(format!(
                    "{written:?}: no proxy named {p:?} (proxies: {})",
                    proxies.join(", ")
                )));
            }
            (Some(p), rest)
        }
        None => (None, compact.as_str()),
    };
    let known = if let Some(stat) = bare.strip_suffix("(latency_ms)") {
        STATS.contains(&stat)
    } else {
        FIGURES.iter().any(|(f, _)| *f == bare)
    };
    if !known {
        let names: Vec<String> = FIGURES
            .iter()
            .map(|(f, _)| f.to_string())
            .chain(STATS.iter().map(|s| format!("{s}(latency_ms)")))
            .collect();
        return Err(ParseError(format!(
            "unknown figure {written:?} (known: {})",
            names.join(", ")
        )));
    }
    Ok(match scope {
        Some(p) => format!("{p}.{bare}"),
        None => bare.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_parse_into_figure_op_and_threshold() {
        let c = Check::parse(None, "graceful >= 0.85", false, &[]).unwrap();
        assert_eq!(
            (c.figure.as_str(), c.op, c.threshold),
            ("graceful", Op::Ge, 0.85)
        );
        assert_eq!(c.name, "graceful >= 0.85");
        let c = Check::parse(None, "p99( latency_ms ) < 500", false, &[]).unwrap();
        assert_eq!((c.figure.as_str(), c.op), ("p99(latency_ms)", Op::Lt));
        let c = Check::parse(Some("side".into()), "side.ok_rate == 1", true, &["side"]).unwrap();
        assert_eq!(
            (c.figure.as_str(), c.op, c.abort),
            ("side.ok_rate", Op::Eq, true)
        );
    }

    #[test]
    fn unknown_figures_and_bad_numbers_are_named() {
        let e = Check::parse(None, "okrate > 0.5", false, &[]).unwrap_err();
        assert!(e.0.contains("unknown figure \"okrate\""), "{e}");
        let e = Check::parse(None, "ok_rate > lots", false, &[]).unwrap_err();
        assert!(e.0.contains("\"lots\" is not a number"), "{e}");
        let e = Check::parse(None, "other.ok_rate > 0", false, &["mcp"]).unwrap_err();
        assert!(e.0.contains("no proxy named \"other\""), "{e}");
        let e = Check::parse(None, "ok_rate", false, &[]).unwrap_err();
        assert!(e.0.contains("not `figure op number`"), "{e}");
    }

    #[test]
    fn a_figure_without_a_value_fails_its_check() {
        let c = Check::parse(None, "mttr_s < 5", false, &[]).unwrap();
        let mut f = Figures::new();
        assert!(!c.judge(&f).passed);
        f.insert("mttr_s".into(), None);
        let v = c.judge(&f);
        assert!(!v.passed && v.reason.contains("no value"), "{v:?}");
        f.insert("mttr_s".into(), Some(1.25));
        let v = c.judge(&f);
        assert!(v.passed, "{v:?}");
        assert_eq!(v.reason, "mttr_s = 1.25 < 5");
    }
}
