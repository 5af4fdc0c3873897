//! The history of a run: every call the workload made (invoke, then exactly one outcome),
//! and the periods faults were on. Checks and reports read figures off it.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::checks::Figures;

/// How one call ended, in Jepsen's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered, and the answer verified.
    Ok,
    /// Certainly had no effect: an error answer, or no connection to send it on.
    Fail,
    /// Unknown effect: timed out, or the connection was lost mid-call.
    Info,
    /// An `info` that had not ended by its timeout plus the grace period.
    Hung,
    /// Answered, but the answer did not verify (corrupted, or another call's).
    Mismatched,
}

/// One call.
#[derive(Clone, Debug, Serialize)]
pub struct Call {
    pub client: u32,
    /// Which of its client's calls it is, from 1 (0 for a workload command's).
    #[serde(rename = "n")]
    pub seq: u64,
    /// Which proxy it went through: an index into [`Workload::proxy_names`].
    ///
    /// [`Workload::proxy_names`]: super::file::Workload::proxy_names
    pub proxy: u16,
    /// When it was invoked and how long it took, from the start of the workload.
    #[serde(serialize_with = "ms")]
    pub invoke: Duration,
    #[serde(serialize_with = "ms")]
    pub took: Duration,
    pub outcome: Outcome,
    /// How many times the client sent it: more than 1 when a retry policy retried it.
    #[serde(skip_serializing_if = "is_one")]
    pub attempts: u32,
    /// It ended with an error answer that says why (a tool error or a JSON-RPC error):
    /// not a timeout, a cut or a refused connection.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub explained: bool,
    /// What went wrong, for anything but `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Box<str>>,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// A period a fault was on: from the step that started it to the one that lifted it (or
/// the end of the run).
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub what: String,
    /// Which fault it is, so the step that lifts it finds it: `toxic mcp/cut`, `guest down`.
    #[serde(skip)]
    pub key: String,
    #[serde(serialize_with = "ms")]
    pub from: Duration,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_ms")]
    pub until: Option<Duration>,
    /// Which proxies it acted on; empty when it acted on the target (a guest).
    pub proxies: Vec<String>,
    /// The name of the step that opened it, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Still on when the workload ended: `until` is the end, and there is no recovery to
    /// measure.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub to_the_end: bool,
}

fn opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ms(d, s),
        None => s.serialize_none(),
    }
}

/// The calls of a run, as the workload's clients record them, and their counters so far.
#[derive(Default)]
pub struct History {
    inner: Mutex<(Vec<Call>, Counters)>,
    /// Calls invoked and not ended yet.
    in_flight: std::sync::atomic::AtomicU64,
}

impl History {
    /// A call was invoked; [`History::record`] ends it.
    pub fn invoked(&self) {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many calls are invoked and not ended.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A call ended; with [`History::invoked`] before, it is no longer in flight.
    pub fn record(&self, call: Call) {
        let _ = self.in_flight.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.1.add(&call);
        inner.0.push(call);
    }

    /// The calls so far, in the order they ended.
    pub fn calls(&self) -> Vec<Call> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The counters of the calls so far, without copying them.
    pub fn counters(&self) -> Counters {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}

/// The counters of some calls.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    pub calls: u64,
    pub ok: u64,
    pub fail: u64,
    /// Hung calls included, as Jepsen counts them.
    pub info: u64,
    pub hung: u64,
    pub mismatched: u64,
    /// Calls a retry policy sent more than once (their outcome is the last attempt's).
    pub retried: u64,
    /// Calls that did not succeed and were told why by an error answer.
    pub explained: u64,
}

impl Counters {
    pub fn of<'a>(calls: impl Iterator<Item = &'a Call>) -> Counters {
        let mut c = Counters::default();
        for call in calls {
            c.add(call);
        }
        c
    }

    /// Count one more call.
    pub fn add(&mut self, call: &Call) {
        self.calls += 1;
        self.retried += u64::from(call.attempts > 1);
        self.explained += u64::from(call.explained);
        match call.outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Info => self.info += 1,
            Outcome::Hung => {
                self.info += 1;
                self.hung += 1;
            }
            Outcome::Mismatched => self.mismatched += 1,
        }
    }

    /// The figures these counters give, each under `key(figure)`.
    fn figures(&self, key: &dyn Fn(&str) -> String, into: &mut Figures) {
        let n = self.calls as f64;
        let share = |k: u64| (self.calls > 0).then(|| k as f64 / n);
        let mut put = |k: &str, v: Option<f64>| {
            into.insert(key(k), v);
        };
        put("calls", Some(n));
        put("ok", Some(self.ok as f64));
        put("fail", Some(self.fail as f64));
        put("info", Some(self.info as f64));
        put("hung", Some(self.hung as f64));
        put("mismatched", Some(self.mismatched as f64));
        put("retried", Some(self.retried as f64));
        let unsuccessful = self.calls - self.ok - self.mismatched;
        put(
            "clear_errors",
            (unsuccessful > 0).then(|| self.explained as f64 / unsuccessful as f64),
        );
        put("ok_rate", share(self.ok));
        put("graceful", share(self.calls - self.hung - self.mismatched));
    }
}

/// Latency statistics of ok calls, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Latency {
    pub fn of<'a>(calls: impl Iterator<Item = &'a Call>) -> Latency {
        let mut ms: Vec<f64> = calls
            .filter(|c| c.outcome == Outcome::Ok)
            .map(|c| c.took.as_secs_f64() * 1e3)
            .collect();
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(f64::total_cmp);
        // Nearest rank.
        let q = |p: f64| Some(ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1]);
        Latency {
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            max: ms.last().copied(),
            mean: Some(ms.iter().sum::<f64>() / ms.len() as f64),
        }
    }

    fn figures(&self, key: &dyn Fn(&str) -> String, into: &mut Figures) {
        for (k, v) in [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p95", self.p95),
            ("p99", self.p99),
            ("max", self.max),
            ("mean", self.mean),
        ] {
            into.insert(key(&format!("{k}(latency_ms)")), v);
        }
    }
}

/// From each fault lifted during the workload to the first ok call invoked after it, in
/// seconds; `None` for a fault after which no call succeeded. A fault lifted once the
/// workload had stopped starting calls has no recovery to measure, and is left out.
pub fn recoveries(calls: &[Call], windows: &[Window]) -> Vec<Option<f64>> {
    let last_invoke = calls.iter().map(|c| c.invoke).max();
    windows
        .iter()
        .filter(|w| !w.to_the_end)
        .filter_map(|w| w.until)
        .filter(|lifted| last_invoke.is_some_and(|last| last >= *lifted))
        .map(|lifted| {
            calls
                .iter()
                .filter(|c| c.outcome == Outcome::Ok && c.invoke >= lifted)
                .map(|c| (c.invoke + c.took - lifted).as_secs_f64())
                .min_by(f64::total_cmp)
        })
        .collect()
}

/// Every figure of a run: totals, per proxy (`name.figure`), latency, recovery.
pub fn figures(
    calls: &[Call],
    proxies: &[String],
    windows: &[Window],
    clean_termination: Option<f64>,
    leaks: Option<f64>,
) -> Figures {
    let mut f = Figures::new();
    let whole = |k: &str| k.to_owned();
    Counters::of(calls.iter()).figures(&whole, &mut f);
    Latency::of(calls.iter()).figures(&whole, &mut f);
    for (i, name) in proxies.iter().enumerate() {
        let scoped = |k: &str| format!("{name}.{k}");
        let mine = || calls.iter().filter(move |c| c.proxy as usize == i);
        Counters::of(mine()).figures(&scoped, &mut f);
        Latency::of(mine()).figures(&scoped, &mut f);
    }
    for step in step_names(windows) {
        let during = |k: &str| super::checks::during_key(k, step);
        let mine = || during_step(calls, windows, step);
        Counters::of(mine()).figures(&during, &mut f);
        Latency::of(mine()).figures(&during, &mut f);
    }
    let rec = recoveries(calls, windows);
    let mttr = if rec.iter().any(Option::is_none) {
        None
    } else {
        Some(rec.iter().flatten().copied().fold(0.0, f64::max))
    };
    f.insert("mttr_s".into(), mttr);
    f.insert(
        "recovered".into(),
        (!rec.is_empty())
            .then(|| rec.iter().filter(|r| r.is_some()).count() as f64 / rec.len() as f64),
    );
    f.insert("degradation".into(), degradation(calls));
    f.insert("timed_out".into(), Some(timed_out(calls) as f64));
    f.insert("clean_termination".into(), clean_termination);
    f.insert("leaks".into(), leaks);
    f
}

/// The names of the steps that opened fault periods, each once.
pub fn step_names(windows: &[Window]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for w in windows {
        if let Some(n) = w.step.as_deref()
            && !names.contains(&n)
        {
            names.push(n);
        }
    }
    names
}

/// The calls that were in flight at some moment while the step named `step` acted.
pub fn during_step<'a>(
    calls: &'a [Call],
    windows: &'a [Window],
    step: &'a str,
) -> impl Iterator<Item = &'a Call> + 'a {
    let mine: Vec<&Window> = windows
        .iter()
        .filter(|w| w.step.as_deref() == Some(step))
        .collect();
    calls.iter().filter(move |c| {
        mine.iter()
            .any(|w| c.invoke + c.took >= w.from && w.until.is_none_or(|until| c.invoke < until))
    })
}

/// Calls whose client gave up waiting for the answer: those that timed out, and hung ones.
pub fn timed_out(calls: &[Call]) -> u64 {
    calls
        .iter()
        .filter(|c| {
            c.outcome == Outcome::Hung
                || (c.outcome == Outcome::Info
                    && c.error.as_deref().is_some_and(|e| e.starts_with(TIMED_OUT)))
        })
        .count() as u64
}

/// How the workload's error for a call that ran out of time begins.
pub const TIMED_OUT: &str = "timed out";

/// Mean latency of the last tenth of ok calls over the first tenth's (by invoke time);
/// `None` with fewer than 20 ok calls.
fn degradation(calls: &[Call]) -> Option<f64> {
    let mut ok: Vec<&Call> = calls.iter().filter(|c| c.outcome == Outcome::Ok).collect();
    if ok.len() < 20 {
        return None;
    }
    ok.sort_by_key(|c| c.invoke);
    let tenth = ok.len() / 10;
    let mean = |s: &[&Call]| s.iter().map(|c| c.took.as_secs_f64()).sum::<f64>() / s.len() as f64;
    let first = mean(&ok[..tenth]);
    (first > 0.0).then(|| mean(&ok[ok.len() - tenth..]) / first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(invoke_ms: u64, took_ms: u64, outcome: Outcome) -> Call {
        Call {
            client: 0,
            seq: 0,
            proxy: 0,
            invoke: Duration::from_millis(invoke_ms),
            took: Duration::from_millis(took_ms),
            outcome,
            attempts: 1,
            explained: false,
            error: None,
        }
    }

    #[test]
    fn counters_and_shares_follow_the_outcomes() {
        let calls = [
            call(0, 10, Outcome::Ok),
            call(10, 10, Outcome::Fail),
            call(20, 500, Outcome::Info),
            call(30, 900, Outcome::Hung),
            call(40, 10, Outcome::Mismatched),
        ];
        let f = figures(&calls, &["mcp".into()], &[], None, Some(0.0));
        assert_eq!(f["calls"], Some(5.0));
        assert_eq!(f["info"], Some(2.0));
        assert_eq!(f["hung"], Some(1.0));
        assert_eq!(f["ok_rate"], Some(0.2));
        assert_eq!(f["graceful"], Some(0.6));
        assert_eq!(f["mcp.calls"], Some(5.0));
        assert_eq!(f["p50(latency_ms)"], Some(10.0));
        // No fault was lifted: nothing to recover from.
        assert_eq!((f["mttr_s"], f["recovered"]), (Some(0.0), None));
    }

    #[test]
    fn recovery_runs_from_the_lift_to_the_end_of_the_first_ok_call_after_it() {
        let w = |from, until: Option<u64>| Window {
            what: "partition".into(),
            key: "toxic mcp/cut".into(),
            from: Duration::from_millis(from),
            until: until.map(Duration::from_millis),
            proxies: vec![],
            step: None,
            to_the_end: false,
        };
        let calls = [
            call(1000, 100, Outcome::Fail),
            call(2100, 50, Outcome::Info),
            call(2500, 200, Outcome::Ok),
            call(3000, 10, Outcome::Ok),
            call(5100, 10, Outcome::Fail),
        ];
        let rec = recoveries(&calls, &[w(1000, Some(2000))]);
        assert_eq!(rec, [Some(0.7)]);
        let f = figures(
            &calls,
            &[],
            &[w(1000, Some(2000)), w(2800, Some(5000))],
            None,
            None,
        );
        assert_eq!(
            f["mttr_s"], None,
            "the second fault was never recovered from"
        );
        assert_eq!(f["recovered"], Some(0.5));
        // Lifted after the last call started: nothing to measure, not a failure.
        let rec = recoveries(&calls, &[w(1000, Some(2000)), w(5200, Some(6000))]);
        assert_eq!(rec, [Some(0.7)]);
    }

    #[test]
    fn a_named_steps_figures_count_the_calls_in_flight_while_it_acted() {
        let w = |step: &str, from, until: Option<u64>| Window {
            what: step.into(),
            key: step.into(),
            from: Duration::from_millis(from),
            until: until.map(Duration::from_millis),
            proxies: vec![],
            step: Some(step.into()),
            to_the_end: false,
        };
        let mut explained = call(1500, 10, Outcome::Fail);
        explained.explained = true;
        let calls = [
            // Ended as the disk filled: in flight then.
            call(900, 100, Outcome::Ok),
            explained,
            call(1600, 10, Outcome::Fail),
            // Started as it was freed: after it.
            call(2000, 10, Outcome::Ok),
            call(3100, 10, Outcome::Info),
            call(9000, 10, Outcome::Info),
        ];
        let windows = [
            w("disk", 1000, Some(2000)),
            w("disk", 2500, Some(3000)),
            w("cut", 3000, None),
        ];
        let f = figures(&calls, &[], &windows, None, None);
        let disk = |k: &str| f[&crate::scenarios::checks::during_key(k, "disk")];
        assert_eq!(disk("calls"), Some(3.0));
        assert_eq!(disk("clear_errors"), Some(0.5));
        let cut = |k: &str| f[&crate::scenarios::checks::during_key(k, "cut")];
        // Still on at the end: every call from its start on.
        assert_eq!((cut("calls"), cut("info")), (Some(2.0), Some(2.0)));
        assert_eq!(f["calls"], Some(6.0));
    }
}
