//! `brownout run`: scenario files and built-in suites run for real against brownout's own
//! MCP server, through HTTP-mode proxies, with their results read back.

#![cfg(feature = "rmcp")]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

use common::Dir;
use common::bin::BIN;

/// The built-in suites measure time and memory: one at a time, so they do not skew
/// each other's figures.
static SUITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_suite() -> std::sync::MutexGuard<'static, ()> {
    SUITE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `brownout run WHAT --out DIR/out [args]`.
fn run(what: &str, dir: &Dir, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["run", what, "--out"])
        .arg(dir.0.join("out"))
        .args(args)
        .env("CI", "true")
        .output()
        .expect("run brownout")
}

fn results(dir: &Dir) -> Value {
    let path = dir.0.join("out/results.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn said(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scenario file with `text` in `dir`.
fn file(dir: &Dir, text: &str) -> String {
    let p = dir.0.join("scenario.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn check<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {r:#}"))
}

#[test]
fn the_partition_suite_runs_and_every_check_holds() {
    let _one = one_suite();
    let dir = Dir::new("suite");
    let out = run("partition", &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert_eq!(r["scenario"], "partition");
    // Nine checks, and the steady state's two before and two after.
    assert_eq!(r["checks"].as_array().unwrap().len(), 13);
    // The files were read back after the run: nothing acknowledged lost, nothing failed
    // applied anyway.
    assert_eq!(
        check(&r, "no acknowledged write lost")["figure"],
        0.0,
        "{r:#}"
    );
    assert_eq!(
        check(&r, "failed writes had no effect")["figure"],
        0.0,
        "{r:#}"
    );
    let st = &r["steady_state"];
    assert_eq!(
        (&st["before"], &st["after"], &st["deviated"]),
        (&Value::from(true), &Value::from(true), &Value::from(false)),
        "{st}"
    );
    // Calls went through both proxies; the one never faulted stayed perfect.
    let side = &r["per_proxy"]["side"];
    assert!(side["calls"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(side["ok"], side["calls"], "{r:#}");
    // The cut proxy really was cut: some of its calls did not succeed.
    let mcp = &r["per_proxy"]["mcp"];
    assert!(mcp["ok"].as_u64() < mcp["calls"].as_u64(), "{r:#}");
    // Every step ran and was undone: 3 faults, and 10 flaps, each on and off.
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 26, "{steps:#?}");
    assert!(steps.iter().all(|s| s.get("error").is_none()), "{steps:#?}");
    assert_eq!(r["recovery_s"].as_array().unwrap().len(), 13);
    // One JUnit testcase per check; the calls and the proxies' messages are on disk.
    let junit = std::fs::read_to_string(dir.0.join("out/junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 13, "{junit}");
    assert!(junit.contains("failures=\"0\""), "{junit}");
    let calls = std::fs::read_to_string(dir.0.join("out/history.jsonl")).unwrap();
    assert_eq!(
        calls.lines().count() as u64,
        r["counters"]["calls"].as_u64().unwrap()
    );
    let events = std::fs::read_to_string(dir.0.join("out/events.jsonl")).unwrap();
    assert!(
        events.contains("\"faults\":[\"full-loss\"]"),
        "no message hit by the partition"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("passed: 13 of 13 checks held"));
    // The README shows this run's report: keep a screenshot of it with the build.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("partition-report.png");
    let page = format!("file://{}", dir.0.join("out/report.html").display());
    let out = chromium(
        &dir.0.join("profile"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,1000",
            &page,
        ],
    );
    assert!(out.status.success() && shot.exists(), "{}", said(&out));
}

#[test]
fn the_vm_crash_suite_kills_and_restarts_a_real_guest_and_every_check_holds() {
    let _one = one_suite();
    let dir = Dir::new("vm-crash");
    let out = run("vm-crash", &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert_eq!(r["target"], "guest (namespace)");
    // 15 kills, each restarted, and the memory pressure, lifted: 32 steps, none failed,
    // 16 recoveries.
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 32, "{steps:#?}");
    assert!(steps.iter().all(|s| s.get("error").is_none()), "{steps:#?}");
    assert_eq!(r["recovery_s"].as_array().unwrap().len(), 16);
    assert_eq!(
        check(&r, "the server lived through the memory pressure")["figure"],
        0.0
    );
    // The kills really cut calls off; what was answered read back intact.
    assert!(r["counters"]["fail"].as_u64().unwrap() + r["counters"]["info"].as_u64().unwrap() > 0);
    assert_eq!(r["counters"]["mismatched"], 0);
    // The guest's steps are in the same history as the messages.
    let events = std::fs::read_to_string(dir.0.join("out/events.jsonl")).unwrap();
    assert_eq!(events.matches("\"action\":\"kill\"").count(), 15);
    assert!(events.contains("\"action\":\"delete\""));
}

#[test]
fn the_process_suite_signals_the_server_in_every_phase_and_every_check_holds() {
    let _one = one_suite();
    let dir = Dir::new("process");
    let out = run("process", &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert_eq!(r["target"], "guest (process)");
    // 4 signals in 4 phases, each undone by a restart: 32 steps, 16 recoveries.
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 32, "{steps:#?}");
    assert!(steps.iter().all(|s| s.get("error").is_none()), "{steps:#?}");
    assert_eq!(r["recovery_s"].as_array().unwrap().len(), 16);
    for phase in ["starting", "idle", "mid-call", "shutting-down"] {
        for sig in ["TERM", "KILL", "INT", "HUP"] {
            let what = format!("send SIG{sig} to the server ({phase})");
            assert!(
                steps.iter().any(|s| s["action"] == what.as_str()),
                "no {what:?} in {steps:#?}"
            );
        }
    }
    // The history has each signal as the server got it: alone (starting, idle, mid-call)
    // or after a SIGTERM (shutting down), and the restarts before the starting ones.
    let events = std::fs::read_to_string(dir.0.join("out/events.jsonl")).unwrap();
    for sig in ["term", "kill", "int", "hup"] {
        assert_eq!(
            events.matches(&format!("\"action\":\"sig{sig}\"")).count(),
            3,
            "{sig}"
        );
        assert_eq!(
            events
                .matches(&format!("\"action\":\"term-then-sig{sig}\""))
                .count(),
            1,
            "{sig}"
        );
    }
    assert_eq!(events.matches("\"action\":\"start\"").count(), 4);
    // Mid-call signals cut calls off: some ended indeterminate.
    assert!(r["counters"]["info"].as_u64().unwrap() > 0, "{r:#}");
}

#[test]
fn a_server_that_leaves_a_child_running_fails_the_orphan_check_and_the_child_is_killed() {
    let dir = Dir::new("orphans");
    let secs = format!("{}", 200_000 + std::process::id());
    let server = env!("CARGO_BIN_EXE_brownout-mcp-server");
    let path = file(
        &dir,
        &format!(
            r#"name = "leaves a child"
[target]
kind = "guest"
backend = "process"
command = ["sh", "-c", "sleep {secs} & exec {server} --root {{data}} --http 127.0.0.1:{{port}}"]
[workload]
duration = "2s"
[[step]]
at = "500ms"
action = "signal"
signal = "TERM"
for = "300ms"
[[check]]
name = "no orphans"
expect = "orphans == 0"
[[check]]
name = "clean cleanup"
expect = "clean_termination >= 0.9"
"#
        ),
    );
    let out = run(&path, &dir, &[]);
    // Whatever the checks below say, no child of this test outlives it.
    let alive = common::kill_running(&["sleep", &secs]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(r["verdict"], "fail", "{r:#}");
    // Two servers ran (the first and its restart); only the first one was signalled.
    assert_eq!(check(&r, "no orphans")["figure"], 1.0, "{r:#}");
    assert_eq!(check(&r, "clean cleanup")["figure"], 0.0, "{r:#}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("FAIL  no orphans     orphans = 1, needed == 0"),
        "{}",
        said(&out)
    );
    assert!(alive.is_empty(), "left running after the run: {alive:?}");
}

#[test]
fn a_server_that_loses_acknowledged_writes_fails_the_read_back_after_the_run() {
    let dir = Dir::new("forgetful");
    let server = env!("CARGO_BIN_EXE_brownout-mcp-server");
    // The server answers each write, and something beside it throws the files away.
    let path = file(
        &dir,
        &format!(
            r#"name = "forgetful"
seed = 4
[target]
kind = "guest"
backend = "process"
command = ["sh", "-c", "{server} --root {{data}} --http 127.0.0.1:{{port}} & while sleep 0.1; do rm -rf {{data}}/workload; done"]
[workload]
calls = 30
rate = 20
call = "write_read"
[[check]]
name = "no acknowledged write lost"
expect = "lost_writes == 0"
"#
        ),
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    let lost = check(&r, "no acknowledged write lost")["figure"]
        .as_f64()
        .unwrap();
    let ok = r["counters"]["ok"].as_f64().unwrap();
    // Everything acknowledged before the last sweep is gone: nearly every ok write.
    assert!(
        lost >= 1.0 && lost <= ok,
        "lost {lost} of {ok} acknowledged: {r:#}"
    );
}

#[test]
fn the_exhaustion_suite_fills_the_disk_and_uses_up_descriptors_and_every_check_holds() {
    let _one = one_suite();
    let dir = Dir::new("exhaustion");
    let out = run("exhaustion", &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(r["verdict"], "pass", "{r:#}");
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 6, "{steps:#?}");
    assert!(steps.iter().all(|s| s.get("error").is_none()), "{steps:#?}");
    // The memory limit was hit: the kernel killed the server, and it was started again.
    assert!(check(&r, "the memory limit was hit")["figure"].as_f64() >= Some(1.0));
    let events = std::fs::read_to_string(dir.0.join("out/events.jsonl")).unwrap();
    let exits: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["guest"]["action"] == "exit")
        .collect();
    assert!(
        exits
            .iter()
            .any(|e| e["guest"]["detail"]["exit"]["out_of_memory"] == true),
        "{exits:#?}"
    );
    let restarted = events.find("\"action\":\"restart\"");
    assert!(restarted > events.find("\"action\":\"release-memory\""));
    // Each resource ran out for real: the server said so in its answers.
    let history = std::fs::read_to_string(dir.0.join("out/history.jsonl")).unwrap();
    assert!(
        history.contains("No space left on device"),
        "no full disk seen"
    );
    // While the connections were held, calls failed (an error saying so, or no way in).
    let held = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["what"].as_str().unwrap().contains("idle connections"))
        .unwrap_or_else(|| panic!("no hog window in {r:#}"));
    let (from, until) = (
        held["from"].as_f64().unwrap(),
        held["until"].as_f64().unwrap(),
    );
    let failed_meanwhile = history
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|c| {
            let at = c["invoke"].as_f64().unwrap();
            c["outcome"] != "ok" && at >= from && at <= until
        })
        .count();
    assert!(
        failed_meanwhile > 0,
        "no call failed while the descriptors were used up"
    );
    assert!(events.contains("\"action\":\"fill-disk\""));
    assert!(events.contains("\"action\":\"free-disk\""));
    // The disk's check judged only the calls made while its step acted, and some failed.
    let disk = check(&r, "failures say why while the disk is full");
    assert_eq!(disk["during"], "disk full", "{disk:#}");
    let fills = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["step"] == "disk full")
        .count();
    assert!(
        fills >= 1,
        "no fault period of the step named \"disk full\" in {r:#}"
    );
}

#[test]
fn the_timeouts_suite_ends_every_call_in_time_and_the_server_hears_of_each() {
    let _one = one_suite();
    let dir = Dir::new("timeouts");
    let out = run("timeouts", &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    let timed_out = check(&r, "the faults made calls time out")["figure"]
        .as_f64()
        .unwrap();
    assert!(timed_out >= 10.0, "{r:#}");
    assert!(
        check(&r, "cancellations reach the server")["figure"]
            .as_f64()
            .unwrap()
            >= 0.95,
        "{r:#}"
    );
    // The server's side of it, in the proxy's history: one cancellation per call given up.
    let events = std::fs::read_to_string(dir.0.join("out/events.jsonl")).unwrap();
    let cancels = events
        .lines()
        .filter(|l| l.contains("\"method\":\"notifications/cancelled\""))
        .count();
    assert!(
        cancels as f64 >= 0.95 * timed_out,
        "{cancels} of {timed_out}"
    );
    assert_eq!(r["counters"]["hung"], 0, "{r:#}");
}

#[test]
fn the_stress_suite_keeps_memory_flat_and_leaks_nothing() {
    let _one = one_suite();
    let dir = Dir::new("stress");
    let out = run("stress", &dir, &[]);
    let r = results(&dir);
    // "no degradation" compares latencies early and late in the run: on a shared machine
    // whose load changes meanwhile it measures the machine, so here only its figure is
    // checked; every other check must hold.
    let failed: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        failed.is_empty() || failed == ["no degradation"],
        "{}",
        said(&out)
    );
    assert_eq!(
        out.status.code(),
        Some(if failed.is_empty() { 0 } else { 1 }),
        "{}",
        said(&out)
    );
    assert!(
        check(&r, "no degradation")["figure"].as_f64().unwrap() > 0.0,
        "{r:#}"
    );
    assert_eq!(r["counters"]["calls"], 1000, "{r:#}");
    // Mixed outcomes, as the suite means them to be.
    assert!(r["counters"]["ok"].as_u64() < Some(1000), "{r:#}");
    let rss = &r["resources"]["rss_kib"];
    assert!(
        rss["peak"].as_u64().unwrap() >= rss["first"].as_u64().unwrap(),
        "{rss}"
    );
    assert!(r["resources"]["rss_growth_mib"].is_number(), "{r:#}");
    for name in ["nothing leaked", "memory flat"] {
        assert_eq!(check(&r, name)["passed"], true, "{r:#}");
    }
}

#[test]
fn full_takes_the_long_run_the_file_names() {
    let dir = Dir::new("full");
    let path = file(
        &dir,
        "name = \"x\"\n[workload]\ncalls = 3\ncall = \"echo\"\n[full.workload]\ncalls = 7\n",
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(results(&dir)["counters"]["calls"], 3);
    let out = run(&path, &dir, &["--full"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(results(&dir)["counters"]["calls"], 7);
}

#[test]
fn an_event_triggered_cut_lands_after_the_fifth_call() {
    let dir = Dir::new("event");
    let example = common::root().join("examples/scenarios/cut-after-fifth-call.toml");
    let out = run(example.to_str().unwrap(), &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    let ok = r["counters"]["ok"].as_u64().unwrap();
    // The toxic goes on as the 5th request passes: that call may or may not get its answer.
    assert!((4..=5).contains(&ok), "{r:#}");
    assert_eq!(r["counters"]["calls"], 20);
    let step = &r["steps"][0];
    assert!(
        step["action"].as_str().unwrap().contains("partition"),
        "{step}"
    );
    // Still on when the calls ran out: no recovery to measure.
    assert_eq!(r["faults"][0]["to_the_end"], true, "{r:#}");
    assert_eq!(r["recovery_s"], serde_json::json!([]));
}

#[test]
fn a_condition_triggered_step_waits_until_the_figure_holds() {
    let dir = Dir::new("when");
    let path = file(
        &dir,
        r#"name = "cut-once-thirty-succeeded"
seed = 5
[workload]
calls = 40
# 4 calls per 100 ms, the time between looks at the figures.
rate = 40
timeout = "300ms"
grace = "500ms"
call = "echo"
[[step]]
when = "ok >= 30"
action = "toxic"
proxy = "mcp"
toxic = { name = "cut", type = "partition", stream = "both", attributes = { mode = "drop" } }
"#,
    );
    let out = run(&path, &dir, &[]);
    assert!(out.status.code().is_some(), "{}", said(&out));
    let r = results(&dir);
    let step = &r["steps"][0];
    assert!(step.get("error").is_none(), "{step}");
    let at = step["at_ms"].as_f64().unwrap();
    // When the cut went on, at least 30 calls had ended ok; after it, none did.
    let history = std::fs::read_to_string(dir.0.join("out/history.jsonl")).unwrap();
    let calls: Vec<Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ended = |c: &Value| c["invoke"].as_f64().unwrap() + c["took"].as_f64().unwrap();
    let ok_before = calls
        .iter()
        .filter(|c| c["outcome"] == "ok" && ended(c) <= at)
        .count();
    assert!(ok_before >= 30, "{ok_before} ok before the step at {at} ms");
    let ok = r["counters"]["ok"].as_u64().unwrap();
    // The step comes within a look (100 ms, 4 calls) of the 30th success.
    assert!((30..=35).contains(&ok), "{r:#}");
    assert_eq!(r["counters"]["calls"], 40);
}

/// 30 echo calls, paced to last about a second and a half.
const BRIEF: &str = "name = \"brief\"\n[workload]\ncalls = 30\nrate = 20\ncall = \"echo\"\n";

#[test]
fn progress_is_a_bar_on_a_terminal_and_plain_lines_in_ci() {
    let dir = Dir::new("progress");
    let path = file(&dir, BRIEF);
    // On a terminal (script(1) gives it one): a bar redrawn in place, cleared at the end.
    let cmd = format!("{BIN} run {path} --out {}", dir.0.join("out").display());
    let tty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("CI")
        .output()
        .expect("script (util-linux)");
    assert_eq!(tty.status.code(), Some(0), "{}", said(&tty));
    let shown = String::from_utf8_lossy(&tty.stdout);
    // Position and counters agree (both are the calls ended so far).
    assert!(
        (5..30).any(|n| shown.contains(&format!("] {n}/30 calls {n} ok {n} "))),
        "{shown}"
    );
    assert!(
        shown.contains("\r\x1b[2K"),
        "not redrawn in place: {shown:?}"
    );
    assert!(!shown.contains("[   0.0s]"), "{shown}");
    let summary = shown.lines().find(|l| l.contains("brief (seed")).unwrap();
    assert!(
        !summary.contains("/30"),
        "the bar was not cleared: {summary:?}"
    );
    // In CI (and whenever stderr is not a terminal): plain lines, no control codes.
    let ci = run(&path, &dir, &[]);
    assert_eq!(ci.status.code(), Some(0), "{}", said(&ci));
    let log = String::from_utf8_lossy(&ci.stderr);
    assert!(log.contains("[   0.0s] calls 0 ok 0"), "{log}");
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");
}

#[test]
fn an_external_agent_is_judged_from_the_proxy_history_and_its_exit_code() {
    let dir = Dir::new("command");
    let agent = common::root().join("tests/clients/echo_agent.py");
    let path = file(
        &dir,
        &format!(
            r#"name = "my-agent"
[workload]
command = ["python3", "{}", "10"]
timeout = "1s"
grace = "1s"
# The 4th call gets an error the server never sent; a later answer is lost.
[[step]]
at = "0s"
action = "toxic"
proxy = "mcp"
toxic = {{ name = "err", type = "mcp", stream = "upstream", attributes = {{ method = "tools/call", nth = 4, action = "error", message = "overloaded" }} }}
[[step]]
at = "0s"
action = "toxic"
proxy = "mcp"
toxic = {{ name = "lost", type = "mcp", stream = "downstream", attributes = {{ method = "tools/call", nth = 7, action = "drop" }} }}
[[check]]
name = "the agent succeeded"
expect = "exit_code == 0"
[[check]]
name = "most calls answered"
expect = "ok >= 8"
"#,
            agent.display()
        ),
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(check(&r, "the agent succeeded")["figure"], 1.0, "{r:#}");
    assert_eq!(check(&r, "the agent succeeded")["passed"], false, "{r:#}");
    assert_eq!(check(&r, "most calls answered")["passed"], true, "{r:#}");
    // Every tools/call the proxy saw is a call: 8 answered, 1 error, 1 never answered.
    let c = &r["counters"];
    assert_eq!(
        (
            c["calls"].as_u64(),
            c["ok"].as_u64(),
            c["fail"].as_u64(),
            c["info"].as_u64()
        ),
        (Some(10), Some(8), Some(1), Some(1)),
        "{r:#}"
    );
    let log = std::fs::read_to_string(dir.0.join("out/command.log")).unwrap();
    assert!(log.contains("8 of 10 calls came back"), "{log}");
}

#[test]
fn a_command_still_running_when_the_duration_ends_is_stopped_with_sigterm() {
    let dir = Dir::new("long-command");
    let secs = format!("{}", 300_000 + std::process::id());
    let path = file(
        &dir,
        &format!(
            "name = \"too-long\"\n[workload]\ncommand = [\"sleep\", \"{secs}\"]\nduration = \"1s\"\n[[check]]\nexpect = \"exit_code == 0\"\n"
        ),
    );
    let out = run(&path, &dir, &[]);
    let alive = common::kill_running(&["sleep", &secs]);
    assert!(alive.is_empty(), "left running: {alive:?}");
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    // 128 + SIGTERM: it was asked to stop, and did.
    assert_eq!(r["checks"][0]["figure"], 143.0, "{r:#}");
}

#[test]
fn serial_groups_run_in_order_with_waits_and_parallel_ones_at_once() {
    let dir = Dir::new("groups");
    let path = file(
        &dir,
        r#"name = "groups"
seed = 2
[workload]
duration = "2500ms"
rate = 20
call = "echo"
[[step]]
at = "200ms"
action = "serial"
steps = [
  { action = "disable", proxy = "mcp", for = "300ms" },
  { action = "wait", for = "200ms" },
  { action = "parallel", steps = [
    { action = "toxic", proxy = "mcp", toxic = { name = "slow", type = "latency", attributes = { latency = 50 } }, for = "400ms" },
    { action = "toxic", proxy = "mcp", toxic = { name = "lossy", type = "loss", attributes = { probability = 0.2 } }, for = "400ms" },
  ] },
]
"#,
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    let steps = r["steps"].as_array().unwrap();
    let at = |what: &str| -> f64 {
        steps
            .iter()
            .find(|s| s["action"] == what)
            .unwrap_or_else(|| panic!("no {what:?} in {steps:#?}"))["at_ms"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(steps.len(), 6, "{steps:#?}");
    assert!(steps.iter().all(|s| s.get("error").is_none()), "{steps:#?}");
    // Serial: the disable is undone after its for, then the wait, then the parallel part.
    assert!(
        at("undo: disable mcp") - at("disable mcp") >= 300.0,
        "{steps:#?}"
    );
    let added = [
        at("add latency `slow` on mcp"),
        at("add loss `lossy` on mcp"),
    ];
    let undone = [
        at("undo: add latency `slow` on mcp"),
        at("undo: add loss `lossy` on mcp"),
    ];
    assert!(
        added[0].min(added[1]) - at("undo: disable mcp") >= 200.0,
        "{steps:#?}"
    );
    // Parallel: both are on before either is undone.
    assert!(
        added[0].max(added[1]) < undone[0].min(undone[1]),
        "{steps:#?}"
    );
}

#[test]
fn the_lossy_link_example_passes() {
    let dir = Dir::new("lossy");
    let example = common::root().join("examples/scenarios/lossy-link.toml");
    let out = run(example.to_str().unwrap(), &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(r["seed"], 42);
    assert!(
        r["counters"]["ok"].as_u64() < r["counters"]["calls"].as_u64(),
        "{r:#}"
    );
}

const CORRUPTING: &str = r#"
name = "corrupting-network"

[workload]
clients = 1
calls = 30
timeout = "500ms"
call = "echo"

[[step]]
at = "0s"
action = "toxic"
proxy = "mcp"
toxic = { name = "flip", type = "corrupt", stream = "downstream", attributes = { probability = 0.3, bits = 1 } }

[[check]]
name = "answers are intact"
expect = "mismatched == 0"

[[check]]
name = "no call hangs"
expect = "hung == 0"
"#;

#[test]
fn a_corrupting_network_fails_the_integrity_check_saying_what_was_seen() {
    let dir = Dir::new("corrupt");
    let path = file(&dir, CORRUPTING);
    let out = run(&path, &dir, &["--seed", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(r["verdict"], "fail");
    let intact = check(&r, "answers are intact");
    assert_eq!(intact["passed"], false);
    let seen = r["counters"]["mismatched"].as_u64().unwrap();
    assert!(seen > 0);
    assert_eq!(
        intact["reason"],
        format!("mismatched = {seen}, needed == 0"),
        "{intact}"
    );
    assert_eq!(check(&r, "no call hangs")["passed"], true);
    let junit = std::fs::read_to_string(dir.0.join("out/junit.xml")).unwrap();
    assert!(
        junit.contains(&format!(
            "<failure message=\"mismatched = {seen}, needed == 0\">"
        )),
        "{junit}"
    );
}

#[test]
fn the_same_seed_gives_the_same_outcomes() {
    let dir = Dir::new("seeded");
    let path = file(&dir, CORRUPTING);
    let counters = |seed: &str| {
        let out = run(&path, &dir, &["--seed", seed]);
        assert!(out.status.code().is_some(), "{}", said(&out));
        let r = results(&dir);
        assert_eq!(r["seed"].to_string(), seed);
        r["counters"].clone()
    };
    let first = counters("11");
    assert_eq!(counters("11"), first);
    assert_ne!(counters("12"), first, "another seed, other decisions");
}

#[test]
fn the_chaos_suite_picks_a_mix_of_faults_and_retrying_clients_still_succeed() {
    let _one = one_suite();
    let dir = Dir::new("chaos");
    let out = run("chaos", &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(r["verdict"], "pass", "{r:#}");
    let steps = r["steps"].as_array().unwrap();
    // A pick every 2 s from 1 s into the 15 s run, each undone (by its for, or by the
    // rollback at the end): what was picked is recorded as itself.
    let picks = steps
        .iter()
        .filter(|s| s.get("undo").is_none() && s["step"] != "rollback");
    assert!(picks.count() >= 6, "{steps:#?}");
    assert!(steps.iter().all(|s| s.get("error").is_none()), "{steps:#?}");
    let picked: std::collections::BTreeSet<&str> = steps
        .iter()
        .filter(|s| s.get("undo").is_none() && s["step"] != "rollback")
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert!(picked.len() >= 3, "not much of a mix: {picked:?}");
    assert!(
        picked.iter().all(|p| !p.starts_with("one of")),
        "{picked:?}"
    );
    // Some calls only succeeded because they were sent again.
    assert!(r["counters"]["retried"].as_u64().unwrap() > 0, "{r:#}");
}

/// The proxy disabled for 600 ms under calls that run back to back.
const BRIEF_OUTAGE: &str = r#"
name = "brief-outage"
seed = 3

[workload]
clients = 2
duration = "2s"
timeout = "500ms"
call = "echo"
RETRY

[[step]]
at = "500ms"
action = "disable"
proxy = "mcp"
for = "600ms"

[[check]]
expect = "fail == 0"
"#;

#[test]
fn a_retry_policy_outlasts_a_brief_outage_that_fails_calls_without_it() {
    let dir = Dir::new("retry");
    let counters = |retry: &str| {
        let path = file(&dir, &BRIEF_OUTAGE.replace("RETRY", retry));
        let out = run(&path, &dir, &[]);
        assert!(out.status.code().is_some(), "{}", said(&out));
        let r = results(&dir);
        (r["verdict"].clone(), r["counters"].clone())
    };
    let (verdict, without) = counters("");
    assert_eq!(verdict, "fail", "{without:#}");
    assert!(without["fail"].as_u64().unwrap() > 0, "{without:#}");
    assert_eq!(without["retried"], 0, "{without:#}");
    // 100, 200, 400 and 800 ms apart: the fifth send comes 1.5 s after the first.
    let (verdict, with) = counters("retry = { attempts = 5, backoff = \"100ms\" }");
    assert_eq!(verdict, "pass", "{with:#}");
    assert!(with["retried"].as_u64().unwrap() > 0, "{with:#}");
    // Each retried call is recorded once, with its attempts.
    let history = std::fs::read_to_string(dir.0.join("out/history.jsonl")).unwrap();
    let retried = history
        .lines()
        .filter(|l| l.contains("\"attempts\":"))
        .count() as u64;
    assert_eq!(retried, with["retried"].as_u64().unwrap());
}

const NEVER_ANSWERS: &str = r#"
name = "server-never-answers"

[workload]
clients = 2
calls = 6
timeout = "300ms"
grace = "500ms"

[[step]]
at = "0s"
action = "toxic"
proxy = "mcp"
toxic = { name = "hole", type = "partition", stream = "downstream", attributes = { mode = "blackhole" } }

[[check]]
expect = "ok_rate >= 0.9"

[[check]]
expect = "hung == 0"
"#;

#[test]
fn a_server_that_never_answers_fails_the_success_check_but_nothing_hangs() {
    let dir = Dir::new("silent");
    let path = file(&dir, NEVER_ANSWERS);
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    let rate = check(&r, "ok_rate >= 0.9");
    assert_eq!(rate["passed"], false, "{rate}");
    assert_eq!(rate["figure"], 0.0, "{rate}");
    assert_eq!(
        check(&r, "hung == 0")["passed"],
        true,
        "the client's timeouts held"
    );
    let history = std::fs::read_to_string(dir.0.join("out/history.jsonl")).unwrap();
    let first: Value = serde_json::from_str(history.lines().next().unwrap()).unwrap();
    assert_ne!(first["outcome"], "ok", "{first}");
    assert!(first["error"].as_str().is_some(), "{first}");
}

#[test]
fn a_steady_state_that_does_not_hold_before_stops_the_run_before_it_starts() {
    let dir = Dir::new("steady-before");
    // Nothing listens there: no probe call can succeed.
    let port = common::free_port();
    let path = file(
        &dir,
        &format!(
            r#"
name = "nothing-there"

[target]
kind = "http"
url = "http://127.0.0.1:{port}/mcp"

[workload]
calls = 50
timeout = "300ms"

[steady_state]
calls = 3
checks = ["ok_rate == 1"]

[[step]]
at = "0s"
action = "toxic"
proxy = "mcp"
toxic = {{ type = "latency", attributes = {{ latency = 10 }} }}

[[check]]
expect = "calls >= 50"
"#
        ),
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    let st = &r["steady_state"];
    assert_eq!(st["before"], false, "{st}");
    assert_eq!(st["after"], Value::Null, "{st}");
    let probe = check(&r, "steady_state.before: ok_rate == 1");
    assert_eq!(probe["figure"], 0.0, "{probe}");
    // Neither the workload nor the timeline ran.
    assert_eq!(r["counters"]["calls"], 0, "{r:#}");
    assert_eq!(r["steps"].as_array().unwrap().len(), 0, "{r:#}");
    assert!(
        said(&out).contains("did not hold before the run"),
        "{}",
        said(&out)
    );
}

#[test]
fn a_guest_left_dead_after_the_run_is_a_deviation_from_the_steady_state() {
    let _one = one_suite();
    let dir = Dir::new("steady-deviated");
    // The kill has no `for`: nothing restarts the guest, and rollback does not either.
    let path = file(
        &dir,
        r#"
name = "left-dead"

[target]
kind = "guest"
backend = "namespace"

[workload]
duration = "1500ms"
timeout = "500ms"

[steady_state]
calls = 3
checks = ["ok_rate == 1"]

[[step]]
at = "500ms"
action = "kill"

[[check]]
expect = "ok >= 1"
"#,
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    let st = &r["steady_state"];
    assert_eq!(
        (&st["before"], &st["after"], &st["deviated"]),
        (&Value::from(true), &Value::from(false), &Value::from(true)),
        "{st}"
    );
    assert_eq!(check(&r, "ok >= 1")["passed"], true, "{r:#}");
    assert_eq!(
        check(&r, "steady_state.after: ok_rate == 1")["figure"],
        0.0,
        "{r:#}"
    );
    assert!(said(&out).contains("deviated"), "{}", said(&out));
}

#[test]
fn one_scenario_drives_proxies_on_two_brownout_servers_and_merges_their_histories() {
    let (east, west) = (
        common::bin::Server::start(&[]),
        common::bin::Server::start(&[]),
    );
    let dir = Dir::new("fleet");
    let path = file(
        &dir,
        &format!(
            r#"
name = "fleet"

[[proxy]]
name = "east"
api = "{}"

[[proxy]]
name = "west"
api = "{}"

[workload]
clients = 2
proxies = ["east", "west"]
duration = "3s"
timeout = "500ms"

[[step]]
at = "1s"
action = "toxic"
proxy = "east"
toxic = {{ name = "cut", type = "partition", stream = "both", attributes = {{ mode = "drop" }} }}
for = "1s"

[[check]]
expect = "west.ok_rate == 1"

[[check]]
expect = "east.ok_rate < 1"

[[check]]
expect = "recovered == 1"
"#,
            east.url, west.url
        ),
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    assert!(
        r["per_proxy"]["east"]["calls"].as_u64().unwrap() > 0,
        "{r:#}"
    );
    assert!(
        r["per_proxy"]["west"]["calls"].as_u64().unwrap() > 0,
        "{r:#}"
    );
    // One history: both servers' messages, the cut on east's.
    let events: Vec<Value> = std::fs::read_to_string(dir.0.join("out/events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for name in ["east", "west"] {
        assert!(
            events
                .iter()
                .any(|e| e["proxy"] == name && e["method"] == "tools/call"),
            "no tools/call through {name} in the history"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["proxy"] == "east" && e["faults"] == serde_json::json!(["cut"])),
        "the cut is not in the history"
    );
    // Each sidecar is left as it was.
    for srv in [&east, &west] {
        let list = srv.cli(&["list"]);
        assert_eq!(
            String::from_utf8_lossy(&list.stdout).trim(),
            "no proxies",
            "{}",
            srv.url
        );
    }
}

/// A bad file: `brownout run` exits 2 before anything starts, saying where.
fn refused(text: &str, wants: &[&str]) {
    let dir = Dir::new("bad");
    let path = file(&dir, text);
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for w in wants {
        assert!(err.contains(w), "{w:?} not in {err}");
    }
    assert!(!dir.0.join("out").exists(), "a bad file started a run");
}

#[test]
fn bad_files_are_refused_naming_file_line_and_key() {
    let head = "name = \"x\"\n[workload]\ncalls = 1\n";
    refused(
        &format!("{head}colour = \"red\"\n"),
        &["scenario.toml:4:", "unknown field `colour`"],
    );
    refused(
        "name = \"x\"\n[workload]\ncalls = \"many\"\n",
        &["scenario.toml:3:", "invalid type"],
    );
    refused(
        &format!("{head}[[step]]\nat = \"1s\"\naction = \"disable\"\nproxy = \"nope\"\n"),
        &[
            "scenario.toml:7:",
            "step.proxy",
            "no proxy named \"nope\" (proxies: mcp)",
        ],
    );
    refused(
        &format!("{head}[[check]]\nexpect = \"succes_rate > 0.9\"\n"),
        &[
            "scenario.toml:5:",
            "check.expect",
            "unknown figure \"succes_rate\"",
        ],
    );
    refused(
        &format!("{head}[steady_state]\nchecks = [\"ok_rate == 1\", \"okay > 1\"]\n"),
        &[
            "scenario.toml:5:",
            "steady_state.checks",
            "unknown figure \"okay\"",
        ],
    );
    refused(
        &format!("{head}[steady_state]\ncalls = 3\nchecks = []\n"),
        &[
            "scenario.toml:4:",
            "steady_state.checks: give at least one check",
        ],
    );
    refused(
        &format!("{head}[[step]]\nat = \"soon\"\naction = \"disable\"\nproxy = \"mcp\"\n"),
        &["scenario.toml:5:", "step.at", "\"soon\" is not a duration"],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"toxic\"\nproxy = \"mcp\"\ntoxic = {{ type = \"partition\", attributes = {{ mode = \"sideways\" }} }}\n"
        ),
        &["scenario.toml:8:", "step.toxic.attributes.mode"],
    );
    refused(
        &format!("{head}[[step]]\nat = \"1s\"\naction = \"kill\"\n"),
        &[
            "scenario.toml:6:",
            "acts on a guest, and the target is embedded",
        ],
    );
    refused("name = \"x\"\n", &["missing field `workload`"]);
    let process =
        "name = \"x\"\n[target]\nkind = \"guest\"\nbackend = \"process\"\n[workload]\ncalls = 1\n";
    refused(
        &format!(
            "{process}[[step]]\nat = \"1s\"\naction = \"signal\"\nsignal = [\"TERM\", \"STOP\"]\n"
        ),
        &["scenario.toml:10:", "step.signal: unknown signal \"STOP\""],
    );
    refused(
        &format!(
            "{process}[[step]]\nat = \"1s\"\naction = \"signal\"\nsignal = \"INT\"\nphase = \"asleep\"\n"
        ),
        &[
            "scenario.toml:11:",
            "step.phase: expected any, starting, idle, mid_call or shutting_down, got \"asleep\"",
        ],
    );
    refused(
        &format!("{process}[[step]]\nat = \"1s\"\naction = \"kill\"\nsignal = \"INT\"\n"),
        &[
            "scenario.toml:10:",
            "step.signal: only for action \"signal\"",
        ],
    );
    refused(
        &format!("{head}[[step]]\nat = \"1s\"\naction = \"signal\"\nsignal = \"INT\"\n"),
        &[
            "scenario.toml:6:",
            "\"signal\" acts on a guest, and the target is embedded",
        ],
    );
    refused(
        &format!("{head}[[proxy]]\nname = \"far\"\napi = \"somewhere\"\n"),
        &["scenario.toml:6:", "proxy.api", "\"somewhere\""],
    );
    refused(
        &format!("{head}[[step]]\nwhen = \"leaks == 0\"\naction = \"disable\"\nproxy = \"mcp\"\n"),
        &[
            "scenario.toml:5:",
            "step.when: leaks is only known after the run",
        ],
    );
    refused(
        &format!(
            "{head}[[step]]\nwhen = \"fail >= 3\"\nat = \"1s\"\naction = \"disable\"\nproxy = \"mcp\"\n"
        ),
        &["scenario.toml:4:", "step: give one of at, on and when"],
    );
    refused(
        &format!("{head}[[step]]\nwhen = \"failz >= 3\"\naction = \"disable\"\nproxy = \"mcp\"\n"),
        &["scenario.toml:5:", "step.when: unknown figure \"failz\""],
    );
    refused(
        "name = \"x\"\n[workload]\ncommand = [\"no-such-agent-program\"]\n",
        &[
            "scenario.toml:3:",
            "workload.command: \"no-such-agent-program\" not found",
        ],
    );
    refused(
        "name = \"x\"\n[workload]\nclients = 3\ncommand = [\"true\"]\n",
        &[
            "scenario.toml:4:",
            "workload.clients: describes brownout's own clients",
        ],
    );
    refused(
        &format!("{process}[[step]]\nat = \"1s\"\naction = \"fill_disk\"\n"),
        &[
            "scenario.toml:9:",
            "fill_disk fills the guest's own disk: give the target disk_mib",
        ],
    );
    refused(
        &format!("{head}[[step]]\nat = \"1s\"\naction = \"hog_connections\"\n"),
        &[
            "scenario.toml:6:",
            "step.count: hog_connections needs how many",
        ],
    );
    refused(
        &format!("{head}[[step]]\nat = \"1s\"\naction = \"disable\"\nproxy = \"mcp\"\ncount = 3\n"),
        &[
            "scenario.toml:8:",
            "step.count: only for action \"hog_connections\"",
        ],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"serial\"\nfor = \"1s\"\nsteps = [{{ action = \"disable\", proxy = \"mcp\" }}]\n"
        ),
        &[
            "scenario.toml:7:",
            "step.for: a group's steps each have their own for",
        ],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"serial\"\nsteps = [{{ action = \"wait\" }}]\n"
        ),
        &["scenario.toml:7:", "step.steps: a wait needs for"],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"parallel\"\nsteps = [{{ action = \"disable\", proxy = \"nope\" }}]\n"
        ),
        &["scenario.toml:7:", "step.proxy: no proxy named \"nope\""],
    );
    refused(
        &format!("{head}[[step]]\nat = \"1s\"\naction = \"random\"\n"),
        &[
            "scenario.toml:6:",
            "step.choices: action random needs a list",
        ],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"random\"\nchoices = [{{ action = \"disable\", proxy = \"mcp\", at = \"2s\" }}]\n"
        ),
        &["scenario.toml:7:", "step.choices: at belongs to the step"],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"random\"\nfor = \"1s\"\nchoices = [{{ action = \"enable\", proxy = \"mcp\" }}]\n"
        ),
        &[
            "scenario.toml:8:",
            "step.choices: enable mcp cannot be undone",
        ],
    );
    refused(
        "name = \"x\"\n[workload]\ncalls = 1\nretry = { attempts = 0 }\n",
        &[
            "scenario.toml:4:",
            "workload.retry.attempts: 0 is not between 1 and 100",
        ],
    );
    refused(
        &format!("{head}[[step]]\nat = \"1s\"\naction = \"command\"\n"),
        &[
            "scenario.toml:6:",
            "step.command: action command needs the command to run",
        ],
    );
    refused(
        &format!("{head}[[step]]\nat = \"1s\"\naction = \"command\"\ncommand = []\n"),
        &[
            "scenario.toml:7:",
            "step.command: give the program and its arguments",
        ],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"command\"\ncommand = [\"true\"]\nfor = \"1s\"\n"
        ),
        &["scenario.toml:8:", "step.for: run `true` cannot be undone"],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"disable\"\nproxy = \"mcp\"\nundo = [\"true\"]\n"
        ),
        &["scenario.toml:8:", "step.undo: only for action \"command\""],
    );
    refused(
        "name = \"x\"\n[[proxy]]\nname = \"pipe\"\nprotocol = \"stdio\"\n[workload]\ncalls = 1\n",
        &[
            "scenario.toml:4:",
            "proxy.protocol: a stdio proxy needs a stdio target",
        ],
    );
    refused(
        "name = \"x\"\n[target]\nkind = \"stdio\"\n[[proxy]]\nname = \"web\"\nprotocol = \"http\"\n[workload]\ncalls = 1\n",
        &[
            "scenario.toml:6:",
            "proxy.protocol: a stdio target is reached through stdio proxies",
        ],
    );
    refused(
        "name = \"x\"\n[target]\nkind = \"stdio\"\n[workload]\ncalls = 1\n[[step]]\nat = \"1s\"\naction = \"disable\"\nproxy = \"mcp\"\n",
        &[
            "scenario.toml:8:",
            "step.action: a stdio proxy is the server's pipes and cannot be disabled",
        ],
    );
    refused(
        "name = \"x\"\n[target]\nkind = \"stdio\"\ncommand = [\"no-such-server-program\"]\n[workload]\ncalls = 1\n",
        &[
            "scenario.toml:4:",
            "target.command: \"no-such-server-program\" not found",
        ],
    );
    refused(
        &format!("{head}[[step]]\nat = \"1s\"\naction = \"memory_pressure\"\nmib = 10\n"),
        &[
            "scenario.toml:6:",
            "step.action: memory_pressure presses on a namespace guest's memory limit",
        ],
    );
    let guest =
        "name = \"x\"\n[target]\nkind = \"guest\"\nmemory_mib = 128\n[workload]\ncalls = 1\n";
    refused(
        &format!("{guest}[[step]]\nat = \"1s\"\naction = \"memory_pressure\"\n"),
        &[
            "scenario.toml:9:",
            "step.mib: memory_pressure needs how many MiB",
        ],
    );
    refused(
        &format!("{guest}[[step]]\nat = \"1s\"\naction = \"memory_pressure\"\nmib = 128\n"),
        &[
            "scenario.toml:10:",
            "step.mib: 128 is not between 1 and the guest's memory_mib (128), less one",
        ],
    );
    refused(
        &format!("{guest}[[step]]\nat = \"1s\"\naction = \"kill\"\nmib = 10\n"),
        &[
            "scenario.toml:10:",
            "step.mib: only for action \"memory_pressure\"",
        ],
    );
    let cut = "[[step]]\nname = \"cut\"\nat = \"1s\"\naction = \"disable\"\nproxy = \"mcp\"\nfor = \"1s\"\n";
    refused(
        &format!("{head}{cut}[[check]]\nexpect = \"ok_rate > 0\"\nduring = \"cat\"\n"),
        &[
            "scenario.toml:12:",
            "check.during: no step named \"cat\" (named steps: \"cut\")",
        ],
    );
    refused(
        &format!("{head}{cut}[[check]]\nexpect = \"mttr_s < 1\"\nduring = \"cut\"\n"),
        &[
            "scenario.toml:11:",
            "check.expect: mttr_s cannot be judged during a step; these can: calls, ok,",
        ],
    );
    refused(
        &format!("{head}{cut}[[check]]\nexpect = \"mcp.ok_rate > 0\"\nduring = \"cut\"\n"),
        &[
            "scenario.toml:11:",
            "judges the calls through every proxy, not those of \"mcp\" alone",
        ],
    );
    refused(
        &format!("{head}{cut}{cut}"),
        &["scenario.toml:11:", "step.name: \"cut\" names two steps"],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"remove_toxic\"\nproxy = \"mcp\"\nname = \"cut\"\n"
        ),
        &[
            "scenario.toml:6:",
            "step.toxic: remove_toxic needs the toxic's name: toxic = \"cut\"",
        ],
    );
    refused(
        &format!(
            "{head}[[step]]\nat = \"1s\"\naction = \"serial\"\nsteps = [{{ action = \"disable\", proxy = \"mcp\", name = \"x\" }}]\n"
        ),
        &[
            "scenario.toml:7:",
            "step.steps: name belongs to a step of its own",
        ],
    );
    let dir = Dir::new("missing");
    let out = run("no-such-suite", &dir, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "no built-in suite of that name (suites: partition, vm-crash, timeouts, process, exhaustion, chaos, stress)"
    ));
}

/// Debian's Chromium, headless, as root, with nothing fetched from the network; `args`
/// end with the page to open.
fn chromium(profile: &std::path::Path, args: &[&str]) -> Output {
    let bin =
        std::env::var("BROWNOUT_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} is missing: run scripts/test.sh, which installs Debian's chromium"
    );
    Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium")
}

#[test]
fn the_html_report_renders_in_a_browser_with_fault_windows_and_verdicts() {
    let dir = Dir::new("html");
    let path = file(&dir, NEVER_ANSWERS);
    let out = run(&path, &dir, &["--seed", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    let page = dir.0.join("out/report.html");
    let url = format!("file://{}", page.display());
    let profile = dir.0.join("profile");

    // What the browser made of the page: the DOM after parsing.
    let dom = chromium(&profile, &["--dump-dom", &url]);
    assert!(dom.status.success(), "{}", said(&dom));
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(r#"<span class="badge fail" id="verdict">failed</span>"#),
        "{dom}"
    );
    // One shaded window per fault period, on each of the two charts.
    let faults = r["faults"].as_array().unwrap().len();
    assert_eq!(faults, 1);
    assert_eq!(
        dom.matches(r#"<rect class="fault""#).count(),
        2 * faults,
        "{dom}"
    );
    // Each check in the table with its verdict; calls drawn by outcome.
    assert!(
        dom.contains(r#"<tr class="verdict-fail"><td>ok_rate &gt;= 0.9</td>"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<tr class="verdict-pass"><td>hung == 0</td>"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<td class="v">FAIL</td>"#) && dom.contains(r#"<td class="v">pass</td>"#)
    );
    assert!(
        dom.contains(r#"<rect class="o-fail""#),
        "no failed calls drawn: {dom}"
    );

    // And it renders: a screenshot of the page.
    let shot = dir.0.join("report.png");
    let out = chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,1400",
            &url,
        ],
    );
    assert!(out.status.success(), "{}", said(&out));
    let png = std::fs::read(&shot).expect("a screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "an empty page? {} bytes", png.len());
}

#[test]
fn suites_are_listed() {
    let out = Command::new(BIN).arg("suites").output().unwrap();
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.starts_with("partition "), "{listed}");
    assert!(listed.contains("\nvm-crash "), "{listed}");
    assert!(listed.contains("\ntimeouts "), "{listed}");
    assert!(listed.contains("\nstress "), "{listed}");
}

#[test]
fn a_command_step_runs_with_the_servers_address_and_files_and_its_undo_runs_after_for() {
    let dir = Dir::new("command-step");
    let d = dir.0.display();
    let path = file(
        &dir,
        &format!(
            r#"name = "command-step"
[workload]
duration = "1500ms"
rate = 20
call = "write_read"
[[step]]
at = "500ms"
action = "command"
command = ["sh", "-c", "echo {{upstream}} > {d}/up; ls {{data_dir}} > {d}/ls; echo said-by-the-step"]
undo = ["sh", "-c", "echo undone > {d}/undone"]
for = "300ms"
"#
        ),
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let read = |name: &str| std::fs::read_to_string(dir.0.join(name)).unwrap_or_default();
    assert!(
        read("up").trim().starts_with("127.0.0.1:"),
        "{:?}",
        read("up")
    );
    // The run's writes are under the server's files by then.
    assert_eq!(read("ls").trim(), "workload");
    assert_eq!(read("undone").trim(), "undone");
    let r = results(&dir);
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{steps:#?}");
    assert!(steps.iter().all(|s| s.get("error").is_none()), "{steps:#?}");
    let gap = steps[1]["at_ms"].as_f64().unwrap() - steps[0]["at_ms"].as_f64().unwrap();
    assert!(gap >= 300.0, "{steps:#?}");
    assert!(
        read("out/steps.log").contains("said-by-the-step"),
        "{}",
        read("out/steps.log")
    );
}

#[test]
fn a_command_step_that_fails_fails_the_run_naming_its_exit_code_and_rollback_runs_its_undo() {
    let dir = Dir::new("command-step-fails");
    let d = dir.0.display();
    let path = file(
        &dir,
        &format!(
            r#"name = "command-step-fails"
[workload]
duration = "1500ms"
rate = 20
call = "echo"
[[step]]
at = "300ms"
action = "command"
command = ["sh", "-c", "echo broken-on-purpose >&2; exit 3"]
undo = ["sh", "-c", "echo undone > {d}/undone"]
for = "5s"
"#
        ),
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    let r = results(&dir);
    let err = r["failing_step"]["error"].as_str().unwrap_or_default();
    assert!(err.contains("exited with 3"), "{r:#}");
    let log = std::fs::read_to_string(dir.0.join("out/steps.log")).unwrap();
    assert!(log.contains("broken-on-purpose"), "{log}");
    // The run stopped; rollback undid what the step began.
    let undone = std::fs::read_to_string(dir.0.join("undone")).unwrap_or_default();
    assert_eq!(undone.trim(), "undone");
}

#[test]
fn the_stdio_example_gives_each_client_its_own_server_through_the_stdio_proxys_faults() {
    let dir = Dir::new("stdio-target");
    let example = common::root().join("examples/scenarios/stdio-server.toml");
    let path = example.display().to_string();
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let r = results(&dir);
    assert!(r["counters"]["ok"].as_f64().unwrap() >= 20.0, "{r:#}");
    // Every message went through the stdio proxy; each client started a server of its
    // own, and started another after its session was cut.
    let events = std::fs::read_to_string(dir.0.join("out/events.jsonl")).unwrap();
    let mut connections = std::collections::BTreeSet::new();
    for line in events.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        if e.get("connection").is_some() {
            assert_eq!(e["proxy"], "mcp", "{e}");
            connections.insert(e["connection"].as_u64().unwrap());
        }
    }
    assert!(
        connections.contains(&1) && connections.contains(&1_000_001),
        "{connections:?}"
    );
    assert!(
        connections.len() >= 3,
        "no session started again: {connections:?}"
    );
}

#[test]
fn a_stdio_target_runs_another_mcp_servers_command_and_message_faults_act_on_its_answers() {
    let dir = Dir::new("stdio-python");
    let server = common::clients().join("mcp_server.py");
    let path = file(
        &dir,
        &format!(
            r#"name = "stdio-python"
seed = 3
[target]
kind = "stdio"
command = ["{}", "{}"]
[workload]
calls = 40
timeout = "5s"
call = "echo"
[[step]]
on = {{ nth = 10, method = "tools/call" }}
action = "toxic"
proxy = "mcp"
toxic = {{ name = "refuse", type = "mcp", stream = "downstream", attributes = {{ method = "tools/call", action = "error", code = -32000, message = "injected by the scenario" }} }}
for = "300ms"
[[check]]
name = "every call succeeds"
expect = "ok_rate == 1"
"#,
            common::python().display(),
            server.display()
        ),
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    let (ok, fail) = (
        r["counters"]["ok"].as_f64().unwrap(),
        r["counters"]["fail"].as_f64().unwrap(),
    );
    assert!(ok >= 9.0 && fail >= 1.0 && ok + fail == 40.0, "{r:#}");
    let history = std::fs::read_to_string(dir.0.join("out/history.jsonl")).unwrap();
    let failed: Vec<&str> = history.lines().filter(|l| l.contains("\"fail\"")).collect();
    assert_eq!(failed.len() as f64, fail, "{history}");
    assert!(
        failed
            .iter()
            .all(|l| l.contains("injected by the scenario")),
        "{failed:#?}"
    );
}

#[test]
fn a_request_delivered_twice_shows_as_a_duplicated_write_when_the_log_is_read_back() {
    let dir = Dir::new("duplicated");
    let path = file(
        &dir,
        r#"name = "duplicated"
seed = 6
[workload]
calls = 30
rate = 30
call = "append"
[[step]]
on = { nth = 10, method = "tools/call" }
action = "toxic"
proxy = "mcp"
toxic = { name = "twice", type = "mcp", stream = "upstream", attributes = { method = "tools/call", action = "duplicate" } }
for = "200ms"
[[check]]
name = "no write applied twice"
expect = "duplicated_writes == 0"
[[check]]
name = "no acknowledged write lost"
expect = "lost_writes == 0"
"#,
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    // Calls are answered once: only the server's log shows the copies.
    assert!(r["counters"]["ok"].as_u64() >= Some(25), "{r:#}");
    assert_eq!(r["counters"]["mismatched"], 0, "{r:#}");
    let twice = check(&r, "no write applied twice");
    let figure = twice["figure"].as_f64().unwrap();
    assert!((1.0..=7.0).contains(&figure), "{twice:#}");
    assert!(
        twice["reason"]
            .as_str()
            .unwrap()
            .starts_with("duplicated_writes = "),
        "{twice:#}"
    );
    assert_eq!(check(&r, "no acknowledged write lost")["passed"], true);
}

#[test]
fn a_retrying_client_whose_answers_were_lost_applies_its_writes_twice() {
    let dir = Dir::new("retry-twice");
    let path = file(
        &dir,
        r#"name = "retry-twice"
seed = 7
[workload]
calls = 20
rate = 20
timeout = "300ms"
call = "append"
retry = { attempts = 3, backoff = "50ms" }
[[step]]
on = { nth = 5, method = "tools/call" }
action = "toxic"
proxy = "mcp"
toxic = { name = "lost-answers", type = "mcp", stream = "downstream", attributes = { method = "tools/call", action = "drop" } }
for = "250ms"
[[check]]
name = "every call succeeds in the end"
expect = "ok_rate == 1"
[[check]]
name = "no write applied twice"
expect = "duplicated_writes == 0"
"#,
    );
    let out = run(&path, &dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let r = results(&dir);
    assert_eq!(
        check(&r, "every call succeeds in the end")["passed"],
        true,
        "{r:#}"
    );
    // The write landed; its answer did not; the retry wrote it again.
    assert!(r["counters"]["retried"].as_f64().unwrap() >= 1.0, "{r:#}");
    let twice = check(&r, "no write applied twice")["figure"]
        .as_f64()
        .unwrap();
    assert!(twice >= 1.0, "{r:#}");
}
