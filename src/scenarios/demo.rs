//! `brownout demo`: brownout's main job with nothing to set up. First a tour: `brownout
//! stdio` runs between a real rmcp client and brownout's own MCP server (both started here,
//! from this very program), with four message faults on; each call shows what the client
//! saw, then the files on disk and the history brownout recorded are checked. Then short
//! runs of the built-in suites against brownout's own server (and, as root, a namespaced
//! guest), each leaving its report.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, ClientRequest, Request, ServerResult};
use rmcp::service::{PeerRequestOptions, RunningService, ServiceError};
use rmcp::transport::IntoTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::process::Command;

/// The faults, as `brownout stdio --toxic` takes them.
fn toxics() -> [Value; 4] {
    let mcp = |name: &str, stream: &str, attributes: Value| json!({"name": name, "type": "mcp", "stream": stream, "attributes": attributes});
    [
        mcp(
            "error",
            "upstream",
            json!({"tool": "echo", "nth": 1, "action": "error", "code": -32050,
                   "message": "injected by brownout demo"}),
        ),
        mcp(
            "lose",
            "downstream",
            json!({"tool": "read_file", "nth": 1, "action": "drop"}),
        ),
        mcp(
            "slow",
            "downstream",
            json!({"tool": "echo", "action": "delay", "delay": 300}),
        ),
        mcp(
            "crash",
            "upstream",
            json!({"tool": "write_file", "nth": 2, "action": "kill", "signal": "KILL"}),
        ),
    ]
}

/// What a call should come to.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Answer,
    /// An answer no sooner than this.
    LateAnswer(Duration),
    ErrorCode(i32),
    /// No answer before the client's timeout.
    NoAnswer,
    /// The call fails: the server is gone.
    Failure,
}

struct Step {
    what: &'static str,
    tool: &'static str,
    args: Value,
    timeout: Duration,
    expect: Expect,
}

const NOTE: &str = "written through brownout\n";

fn steps() -> [Step; 5] {
    let write = |path: &str| json!({"path": path, "content": NOTE});
    [
        Step {
            what: "write notes.txt",
            tool: "write_file",
            args: write("notes.txt"),
            timeout: Duration::from_secs(10),
            expect: Expect::Answer,
        },
        Step {
            what: "echo: answered by a fault, with an error",
            tool: "echo",
            args: json!({"text": "hello"}),
            timeout: Duration::from_secs(10),
            expect: Expect::ErrorCode(-32050),
        },
        Step {
            what: "read notes.txt: its answer is lost",
            tool: "read_file",
            args: json!({"path": "notes.txt"}),
            timeout: Duration::from_secs(1),
            expect: Expect::NoAnswer,
        },
        Step {
            what: "echo: its answer comes 300 ms late",
            tool: "echo",
            args: json!({"text": "hello again"}),
            timeout: Duration::from_secs(10),
            expect: Expect::LateAnswer(Duration::from_millis(300)),
        },
        Step {
            what: "write lost.txt: the server is killed as it arrives",
            tool: "write_file",
            args: write("lost.txt"),
            timeout: Duration::from_secs(10),
            expect: Expect::Failure,
        },
    ]
}

/// Run the demo with `exe` (this program) as both brownout and the server, the suites'
/// results going under `out`; false if anything did not happen as it should.
pub async fn run(exe: &Path, out: &Path) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("brownout-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(exe, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let toured = result?;
    let suites = run_suites(out).await?;
    Ok(toured && suites)
}

/// The suites the demo runs: those against brownout's own server (in-process, or as a
/// process of its own) always, the namespaced guest one where this process may make
/// guests (root).
fn demo_suites() -> Vec<&'static str> {
    let mut names = vec!["partition", "timeouts", "process"];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        names.push("vm-crash");
    }
    names
}

async fn run_suites(out: &Path) -> anyhow::Result<bool> {
    let names = demo_suites();
    println!();
    println!(
        "Now reliability runs, each a built-in suite ({}):",
        names.join(", ")
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("  (vm-crash is left out: namespaced guests need root)");
    }
    let mut good = true;
    let mut reports = Vec::new();
    for name in names {
        let scenario = super::resolve(name, false).map_err(|e| anyhow::anyhow!("{e}"))?;
        let dir = out.join(name);
        let opts = super::RunOptions {
            seed: None,
            out: dir.clone(),
            progress: super::Progress::Quiet,
        };
        let results = super::run(&scenario, &opts)
            .await
            .map_err(|e| anyhow::anyhow!("writing results to {}: {e}", dir.display()))?;
        let held = results.checks.iter().filter(|c| c.passed).count();
        let verdict = results.verdict == super::report::Outcome::Pass;
        good &= verdict;
        println!(
            "{} {name:<10} {held} of {} checks held, {} calls, {:.1} s",
            if verdict { "ok  " } else { "FAIL" },
            results.checks.len(),
            results.counters.calls,
            results.duration_s
        );
        for c in results.checks.iter().filter(|c| !c.passed) {
            println!("       {}: {}", c.name, c.reason);
        }
        reports.push(dir.join("report.html"));
    }
    println!();
    println!("Reports (open in a browser):");
    for r in reports {
        println!("  {}", r.display());
    }
    println!();
    println!("Next: put brownout in front of your own server with `brownout stdio [--toxic JSON]");
    println!("-- <server command>`, or run `brownout serve` and create an HTTP-mode proxy");
    println!("(`\"protocol\": \"http\"`) for a Streamable HTTP server; write a scenario file");
    println!("and `brownout run` it (`brownout suites` lists the built-in ones); see the README.");
    Ok(good)
}

async fn run_in(exe: &Path, dir: &Path) -> anyhow::Result<bool> {
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    let events = dir.join("events.jsonl");
    let mut cmd = Command::new(exe);
    cmd.args(["stdio", "--seed", "1", "--events"]).arg(&events);
    println!("brownout demo: brownout stdio between an rmcp client and brownout's own MCP");
    println!("server, with these faults on whole messages:");
    for t in toxics() {
        println!("  {t}");
        cmd.arg("--toxic").arg(t.to_string());
    }
    cmd.arg("--")
        .arg(exe)
        .args(["mcp-server", "--root"])
        .arg(&files);
    let mut relay = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let io = (
        relay.stdout.take().expect("piped"),
        relay.stdin.take().expect("piped"),
    );
    let transport = IntoTransport::<RoleClient, _, _>::into_transport(io);
    let client = tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .map_err(|_| anyhow::anyhow!("the server did not start within 30 s"))??;
    println!();
    let mut good = true;
    for (i, step) in steps().iter().enumerate() {
        let t = Instant::now();
        let outcome = call(&client, step).await;
        let took = t.elapsed();
        let (seen, ok) = judge(step.expect, &outcome, took);
        good &= ok;
        let mark = if ok { "ok  " } else { "FAIL" };
        println!("{mark} {}. {:<52} {seen}", i + 1, step.what);
    }
    drop(client);
    let status = tokio::time::timeout(Duration::from_secs(10), relay.wait()).await;
    let status = match status {
        Ok(s) => s?,
        Err(_) => {
            relay.kill().await?;
            anyhow::bail!("brownout stdio did not exit within 10 s of its server being killed");
        }
    };
    let code = status.code().map_or("none".to_owned(), |c| c.to_string());
    println!("     brownout stdio exited as its server did: code {code} (128 + SIGKILL)");

    println!();
    let kept = std::fs::read_to_string(files.join("notes.txt")).unwrap_or_default();
    let on_disk = kept == NOTE && !files.join("lost.txt").exists();
    good &= on_disk;
    println!(
        "{} on disk: notes.txt intact, lost.txt never written",
        if on_disk { "ok  " } else { "FAIL" }
    );
    let history = std::fs::read_to_string(&events)?;
    let (table, cancelled) = summarize(&history);
    good &= cancelled;
    println!(
        "{} history: the client cancelled the call whose answer was lost",
        if cancelled { "ok  " } else { "FAIL" }
    );
    println!();
    println!("What brownout recorded (`brownout stdio --events FILE` writes it as JSON lines):");
    print!("{table}");
    Ok(good)
}

/// One call as the step says; the first text of the answer.
async fn call(
    client: &RunningService<RoleClient, ()>,
    step: &Step,
) -> Result<String, ServiceError> {
    let args = step.args.as_object().cloned().unwrap_or_default();
    let params = CallToolRequestParams::new(step.tool).with_arguments(args);
    let reply = client
        .send_request_with_option(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::with_timeout(step.timeout),
        )
        .await?
        .await_response()
        .await?;
    let ServerResult::CallToolResult(result) = reply else {
        return Ok(format!("{reply:?}"));
    };
    Ok(result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default())
}

/// What the client saw, said for people, and whether it is what the step expects.
fn judge(expect: Expect, outcome: &Result<String, ServiceError>, took: Duration) -> (String, bool) {
    let ms = took.as_millis();
    match outcome {
        Ok(text) => {
            let text = text.trim_end();
            let ok = match expect {
                Expect::Answer => true,
                Expect::LateAnswer(at_least) => took >= at_least,
                _ => false,
            };
            (format!("answered in {ms} ms: {text:?}"), ok)
        }
        Err(ServiceError::McpError(e)) => (
            format!("error {} {:?}", e.code.0, e.message),
            expect == Expect::ErrorCode(e.code.0),
        ),
        Err(ServiceError::Timeout { .. }) => (
            format!("no answer; the client gave up after {ms} ms"),
            expect == Expect::NoAnswer,
        ),
        Err(e) => (format!("failed: {e}"), expect == Expect::Failure),
    }
}

/// The history as a table, and whether it shows the client's cancel.
fn summarize(jsonl: &str) -> (String, bool) {
    let mut table = String::new();
    let mut cancelled = false;
    let _ = writeln!(
        table,
        "  {:<10} {:<12} {:<26} {:>3} {:>9}  faults",
        "direction", "kind", "method / tool", "id", "delivered"
    );
    for line in jsonl.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
        let method = s("method");
        cancelled |= method == "notifications/cancelled";
        let name = match e["tool"].as_str() {
            Some(tool) => format!("{method} {tool}"),
            None => method,
        };
        let faults: Vec<&str> = e["faults"]
            .as_array()
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut notes = faults.join(", ");
        if e["injected"] == true {
            notes.push_str("(made up by a fault)");
        }
        if let Some(end) = e["end"].as_str() {
            let _ = write!(notes, " → {end}");
        }
        let _ = writeln!(
            table,
            "  {:<10} {:<12} {:<26} {:>3} {:>9}  {notes}",
            s("direction"),
            s("kind"),
            name,
            e.get("id").map_or(String::new(), Value::to_string),
            e["delivered"].to_string()
        );
    }
    (table, cancelled)
}
