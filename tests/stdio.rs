//! `brownout stdio` with real MCP peers: the Python SDK's client and server, installed by
//! scripts/test.sh. Also what happens to the server process when either side goes away.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin::BIN;
use common::{clients, python, scenario_toxics};

fn scenario(name: &str) {
    scenario_with(name, None);
}

/// Run a client scenario through `brownout stdio` with the scenario's toxics, recording
/// events in `events` if given.
fn scenario_with(name: &str, events: Option<&Path>) {
    let toxics = serde_json::to_string(&scenario_toxics(name)).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(clients().join("mcp_client.py"))
        .args(["stdio", BIN, name])
        .env("BROWNOUT_TEST_TOXICS", toxics);
    if let Some(path) = events {
        cmd.env("BROWNOUT_TEST_EVENTS", path);
    }
    let out = cmd.output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "scenario {name} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn transparent_without_faults() {
    scenario("transparent");
}

#[test]
fn injected_error_arrives_as_that_error() {
    scenario("error_reply");
}

#[test]
fn dropped_response_times_out_on_the_client() {
    scenario("dropped_response");
}

/// A scenario run with `--events`; returns the history.
fn history(name: &str) -> Vec<serde_json::Value> {
    let path = std::env::temp_dir().join(format!(
        "brownout-events-{name}-{}.jsonl",
        std::process::id()
    ));
    scenario_with(name, Some(&path));
    let history = common::read_history(&path);
    let _ = std::fs::remove_file(&path);
    history
}

#[test]
fn the_history_shows_the_dropped_response_and_the_clients_cancel() {
    let events = history("dropped_response");
    let dropped = events
        .iter()
        .position(|e| {
            e["direction"] == "downstream" && e["method"] == "tools/call" && e["delivered"] == 0
        })
        .unwrap_or_else(|| panic!("no dropped tools/call response in {events:#?}"));
    assert_eq!(events[dropped]["kind"], "response");
    assert_eq!(
        events[dropped]["faults"],
        serde_json::json!(["mcp_downstream"])
    );
    let id = &events[dropped]["id"];
    let request = events
        .iter()
        .position(|e| e["direction"] == "upstream" && e["kind"] == "request" && e["id"] == *id)
        .expect("the request of the dropped response");
    assert!(request < dropped);
    let cancel = events
        .iter()
        .position(|e| e["direction"] == "upstream" && e["method"] == "notifications/cancelled")
        .unwrap_or_else(|| {
            panic!("the client's timeout sent no notifications/cancelled: {events:#?}")
        });
    assert!(cancel > dropped);
    for e in &events {
        assert!(
            e["time"].as_f64().unwrap() > 1.7e9,
            "wall-clock seconds: {e}"
        );
        assert_eq!(e["proxy"], "stdio");
    }
}

#[test]
fn the_history_shows_an_injected_error_as_injected() {
    let events = history("error_reply");
    let answered = events
        .iter()
        .find(|e| e["direction"] == "upstream" && e["tool"] == "add" && e["answered"] == true)
        .unwrap_or_else(|| panic!("no answered request in {events:#?}"));
    assert_eq!(answered["delivered"], 0);
    let reply = events
        .iter()
        .find(|e| e["direction"] == "downstream" && e["injected"] == true)
        .expect("the injected reply");
    assert_eq!(reply["kind"], "error");
    assert_eq!(reply["id"], answered["id"]);
}

#[test]
fn delayed_response_arrives_late_and_intact() {
    scenario("delayed_response");
}

#[test]
fn duplicated_responses_reach_the_client_twice_and_do_not_confuse_it() {
    let events = history("duplicated_response");
    let answers: Vec<_> = events
        .iter()
        .filter(|e| e["direction"] == "downstream" && e["tool"] == "add")
        .map(|e| &e["delivered"])
        .collect();
    assert_eq!(answers, [2, 2, 2], "{events:#?}");
}

#[test]
fn killing_the_server_fails_the_call_without_a_hang() {
    scenario("ended_connection");
}

#[test]
fn malformed_response_fails_the_call() {
    scenario("malformed_response");
}

/// Wait for brownout to exit, at most `bound`; kill it (by PID) and fail if it does not.
fn wait_exit(
    relay: &mut std::process::Child,
    bound: Duration,
    after: &str,
) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = relay.try_wait().unwrap() {
            return status;
        }
        if t.elapsed() > bound {
            let _ = relay.kill();
            let _ = relay.wait();
            panic!("brownout still running {bound:?} after {after}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process is still running (a zombie is not: it has exited).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_gone(pid: i32, bound: Duration) {
    let t = Instant::now();
    while running(pid) {
        assert!(
            t.elapsed() < bound,
            "server {pid} still running {bound:?} later"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start `brownout stdio -- python mcp_server.py` with a pipe for stdin; returns the child
/// and the server's PID once it has started.
fn start_relay(pidfile: &Path) -> (std::process::Child, i32) {
    let _ = std::fs::remove_file(pidfile);
    let child = Command::new(BIN)
        .args(["stdio", "--"])
        .arg(python())
        .arg(clients().join("mcp_server.py"))
        .env("BROWNOUT_TEST_PIDFILE", pidfile)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "server never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (child, pid)
}

fn pidfile(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("brownout-{name}-{}.pid", std::process::id()))
}

#[test]
fn agent_closing_stdin_stops_the_server_and_brownout() {
    let pf = pidfile("eof");
    let (mut relay, server) = start_relay(&pf);
    drop(relay.stdin.take());
    let status = wait_exit(&mut relay, Duration::from_secs(20), "its stdin closed");
    // The SDK's server exits cleanly at EOF; brownout passes its code on.
    assert!(status.success(), "{status:?}");
    wait_gone(server, Duration::from_secs(5));
    let mut rest = String::new();
    relay
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    let _ = std::fs::remove_file(pf);
}

#[test]
fn killing_brownout_takes_the_server_with_it() {
    let pf = pidfile("kill");
    let (mut relay, server) = start_relay(&pf);
    relay.kill().unwrap();
    relay.wait().unwrap();
    wait_gone(server, Duration::from_secs(5));
    let _ = std::fs::remove_file(pf);
}

#[test]
fn bad_commands_and_dying_servers_are_reported() {
    let out = Command::new(BIN)
        .args(["stdio", "--", "/nonexistent/mcp-server"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot start server") && err.contains("/nonexistent/mcp-server"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["stdio", "--", "sh", "-c", "echo starting >&2; exit 3"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "the server's exit code is passed on"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("starting"),
        "stderr is forwarded"
    );

    let out = Command::new(BIN)
        .args([
            "stdio",
            "--toxic",
            r#"{"type":"mcp","attributes":{"action":"explode"}}"#,
            "--",
            "cat",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--toxic #1: attributes.action: unknown action"),
        "{err}"
    );
}

#[test]
fn messages_are_relayed_line_by_line_with_faults_applied() {
    use std::io::Write;
    let mut relay = Command::new(BIN)
        .args([
            "stdio",
            "--toxic",
            r#"{"name":"e","type":"mcp","stream":"upstream","attributes":{"method":"tools/call","action":"error","code":-1,"message":"no"}}"#,
            "--toxic",
            r#"{"name":"d","type":"mcp","stream":"downstream","attributes":{"method":"ping","action":"duplicate"}}"#,
            "--",
            "cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = relay.stdin.take().unwrap();
    // `cat` answers every message with itself: a "ping" request comes back as a request,
    // which the downstream toxic duplicates; the tools/call never reaches cat.
    stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"t\"}}\n").unwrap();
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n")
        .unwrap();
    drop(stdin);
    let out = relay.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let errors: Vec<_> = lines.iter().filter(|v| v.get("error").is_some()).collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["id"], 1);
    assert_eq!(errors[0]["error"]["message"], "no");
    assert_eq!(
        lines.iter().filter(|v| v["method"] == "ping").count(),
        2,
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3);
}

#[test]
fn close_ends_the_relay_after_what_came_before() {
    use std::io::{BufRead, BufReader, Write};
    let mut relay = Command::new(BIN)
        .args([
            "stdio",
            "--toxic",
            r#"{"type":"mcp","stream":"upstream","attributes":{"method":"ping","action":"close"}}"#,
            "--",
            "cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = relay.stdin.take().unwrap();
    let mut stdout = BufReader::new(relay.stdout.take().unwrap());
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n")
        .unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("tools/list"), "{line}");
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n")
        .unwrap();
    // The agent's stdout ends, though its stdin is still open.
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing after the close");
    let status = wait_exit(&mut relay, Duration::from_secs(10), "a close");
    assert!(
        status.success(),
        "cat saw EOF and exited cleanly: {status:?}"
    );
    drop(stdin);
}

#[test]
fn with_api_the_relays_toxics_change_while_it_runs() {
    use std::io::{BufRead, BufReader, Write};
    let mut relay = Command::new(BIN)
        .args(["stdio", "--api", "127.0.0.1:0", "--", "cat"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = relay.stdin.take().unwrap();
    let mut stdout = BufReader::new(relay.stdout.take().unwrap());
    let mut stderr = BufReader::new(relay.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no API address on stderr: {line:?}"))
        .to_owned();
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("BROWNOUT_URL", &url)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let mut ask = |msg: &str| {
        stdin.write_all(msg.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        let mut back = String::new();
        stdout.read_line(&mut back).unwrap();
        back
    };
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    assert_eq!(ask(ping).trim(), ping, "no toxics: cat echoes");

    let (ok, out) = cli(&["inspect", "stdio", "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["protocol"].as_str(), v["upstream"].as_str()),
        (Some("stdio"), Some("cat"))
    );

    let (ok, out) = cli(&[
        "toxic",
        "add",
        "stdio",
        "-t",
        "mcp",
        "-n",
        "err",
        "-s",
        "upstream",
        "-a",
        "method=ping",
        "-a",
        "action=error",
        "-a",
        "message=not now",
    ]);
    assert!(ok, "{out}");
    let back: serde_json::Value = serde_json::from_str(&ask(ping)).unwrap();
    assert_eq!(
        back["error"]["message"], "not now",
        "the new toxic applies at once"
    );

    let (ok, out) = cli(&["delete", "stdio"]);
    assert!(!ok && out.contains("stdio relay"), "{out}");
    let (ok, out) = cli(&["toggle", "stdio"]);
    assert!(!ok && out.contains("cannot be moved or disabled"), "{out}");

    let (ok, out) = cli(&["toxic", "remove", "stdio", "-n", "err"]);
    assert!(ok, "{out}");
    assert_eq!(ask(ping).trim(), ping, "removed: cat echoes again");

    drop(stdin);
    let status = wait_exit(&mut relay, Duration::from_secs(10), "its stdin closed");
    assert!(status.success(), "{status:?}");
}

/// A process's peak resident memory so far, in KiB, while /proc shows it.

#[test]
fn a_line_that_never_ends_passes_through_in_bounded_memory() {
    use std::io::Write;
    let events =
        std::env::temp_dir().join(format!("brownout-long-line-{}.jsonl", std::process::id()));
    // `cat` as the server: whatever goes in comes back.
    let mut relay = Command::new(BIN)
        .args(["stdio", "--events"])
        .arg(&events)
        .args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = relay.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut back = Vec::new();
        stdout.read_to_end(&mut back).unwrap();
        back
    });
    // 128 MiB with no newline, eight times what brownout reads whole, then a message.
    let block = vec![b'x'; 1 << 20];
    let mut stdin = relay.stdin.take().unwrap();
    for _ in 0..128 {
        stdin.write_all(&block).unwrap();
    }
    let message = b"\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n";
    stdin.write_all(message).unwrap();
    drop(stdin);
    // The high-water mark, read until brownout exits (a zombie has none to read).
    let (mut peak, t) = (0, Instant::now());
    let status = loop {
        if let Some(status) = relay.try_wait().unwrap() {
            break status;
        }
        if let Some(kib) = common::bin::peak_rss_kib(relay.id()) {
            peak = kib;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "brownout did not finish"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "{status:?}");
    let back = reader.join().unwrap();
    assert_eq!(back.len(), (128 << 20) + message.len());
    assert!(
        back[..128 << 20].iter().all(|b| *b == b'x'),
        "the long line changed"
    );
    assert_eq!(&back[128 << 20..], message);
    // Up to 16 MiB of a line held each way while it may still be a message, what a
    // direction may queue, and the rest: a fraction of the 128 MiB (once each way) that
    // went through, which brownout held whole before it bounded lines.
    assert!(peak > 0, "no reading of brownout's memory");
    assert!(peak < 64 << 10, "brownout peaked at {} MiB", peak >> 10);
    eprintln!("brownout peaked at {} MiB", peak >> 10);
    let (history, oversized) = common::take_history(&events);
    assert_eq!(oversized.len(), 2, "one each way: {history:#?}");
    assert!(
        oversized
            .iter()
            .all(|e| e["bytes"].as_u64().unwrap() > 16 << 20)
    );
    // After the long line, framing goes on: the ping is a message again, both ways.
    let pings = history.iter().filter(|e| e["method"] == "ping").count();
    assert_eq!(pings, 2, "{history:#?}");
}
