//! An rmcp client and an rmcp server (brownout-mcp-server) with `brownout stdio` between
//! them: what the client sees under each fault, and what the server's files hold after.

#![cfg(feature = "rmcp")]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rmcp::service::ServiceError;
use serde_json::json;
use tokio::process::{Child, Command};

use common::Dir;
use common::bin::BIN;
use common::rmcp::{Client, call, stdio_client};
const SERVER: &str = env!("CARGO_BIN_EXE_brownout-mcp-server");
const LONG: Duration = Duration::from_secs(20);

/// `brownout stdio [args] -- brownout-mcp-server --root DIR`, and an rmcp client on its
/// pipes.
async fn relay(root: &Path, args: &[&str]) -> (Child, Client) {
    relay_in(root, args, rmcp::ClientLifecycleMode::Initialize).await
}

/// As `relay`, with the client starting its lifecycle as `mode` says.
async fn relay_in(root: &Path, args: &[&str], mode: rmcp::ClientLifecycleMode) -> (Child, Client) {
    let mut cmd = Command::new(BIN);
    cmd.arg("stdio")
        .args(args)
        .arg("--")
        .arg(SERVER)
        .arg("--root")
        .arg(root);
    stdio_client(cmd, mode).await
}

/// mcp-server-time (PyPI), directly or, with `relay_args`, through `brownout stdio`.
async fn time_server(
    relay_args: Option<&[&str]>,
    mode: rmcp::ClientLifecycleMode,
) -> (Child, Client) {
    let server = [common::python().into_os_string()]
        .into_iter()
        .chain(["-m", "mcp_server_time", "--local-timezone", "UTC"].map(Into::into));
    let cmd = match relay_args {
        None => {
            let mut all = server;
            let mut cmd = Command::new(all.next().unwrap());
            cmd.args(all);
            cmd
        }
        Some(args) => {
            let mut cmd = Command::new(BIN);
            cmd.arg("stdio").args(args).arg("--").args(server);
            cmd
        }
    };
    stdio_client(cmd, mode).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_time_in_both_eras_with_and_without_faults() {
    let convert = json!({"source_timezone": "Europe/Paris", "time": "12:00",
                         "target_timezone": "Asia/Tokyo"});
    let error = toxic(
        "upstream",
        json!({"tool": "convert_time", "nth": 2, "action": "error", "code": -32050, "message": "injected"}),
    );
    let modes = [
        (rmcp::ClientLifecycleMode::Initialize, "2025-11-25"),
        (
            rmcp::ClientLifecycleMode::Discover {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
            },
            "2026-07-28",
        ),
    ];
    for (mode, era) in modes {
        let (_direct_child, direct) = time_server(None, mode.clone()).await;
        let (_child, through) = time_server(Some(&["--toxic", &error]), mode).await;
        let version = |c: &Client| c.peer().peer_info().map(|i| i.protocol_version.to_string());
        assert_eq!(version(&through), version(&direct));
        assert!(
            version(&through).is_some_and(|v| v.as_str() >= era),
            "{era}"
        );
        let expected = call(&direct, "convert_time", convert.clone(), LONG)
            .await
            .unwrap();
        assert!(expected.contains("Asia/Tokyo"), "{expected}");
        let first = call(&through, "convert_time", convert.clone(), LONG).await;
        assert_eq!(first.unwrap(), expected, "{era}");
        match call(&through, "convert_time", convert.clone(), LONG).await {
            Err(ServiceError::McpError(e)) => assert_eq!(e.code.0, -32050, "{era}"),
            other => panic!("{era}: expected the injected error, got {other:?}"),
        }
        let third = call(&through, "convert_time", convert.clone(), LONG).await;
        assert_eq!(third.unwrap(), expected, "{era}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stateless_era_passes_and_takes_faults() {
    let dir = Dir::new("stateless");
    let mode = rmcp::ClientLifecycleMode::Discover {
        preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
    };
    let error = toxic(
        "upstream",
        json!({"tool": "echo", "nth": 2, "action": "error", "code": -32050, "message": "injected"}),
    );
    let (_child, client) = relay_in(&dir.0, &["--toxic", &error], mode).await;
    assert_eq!(
        client
            .peer()
            .peer_info()
            .map(|i| i.protocol_version.to_string()),
        Some("2026-07-28".to_owned())
    );
    let echo = |text: &'static str| call(&client, "echo", json!({"text": text}), LONG);
    assert_eq!(echo("first").await.unwrap(), "first");
    match echo("second").await {
        Err(ServiceError::McpError(e)) => assert_eq!(e.code.0, -32050),
        other => panic!("expected the injected error, got {other:?}"),
    }
    assert_eq!(echo("third").await.unwrap(), "third");
}

fn toxic(stream: &str, attributes: serde_json::Value) -> String {
    toxic_of("mcp", stream, attributes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_through_brownout_read_back_intact() {
    let dir = Dir::new("intact");
    let (_child, client) = relay(&dir.0, &[]).await;
    let content = "line one\nligne deux é\n".repeat(100);
    call(
        &client,
        "write_file",
        json!({"path": "a/b.txt", "content": content}),
        LONG,
    )
    .await
    .unwrap();
    assert_eq!(
        call(&client, "read_file", json!({"path": "a/b.txt"}), LONG)
            .await
            .unwrap(),
        content
    );
    assert_eq!(
        std::fs::read_to_string(dir.0.join("a/b.txt")).unwrap(),
        content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_on_a_write_fails_the_call_and_writes_nothing() {
    let dir = Dir::new("kill");
    let kill = toxic("upstream", json!({"tool": "write_file", "action": "kill"}));
    let (mut child, client) = relay(&dir.0, &["--toxic", &kill]).await;
    call(&client, "echo", json!({"text": "alive"}), LONG)
        .await
        .unwrap();
    let t = Instant::now();
    let r = call(
        &client,
        "write_file",
        json!({"path": "lost.txt", "content": "x"}),
        LONG,
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a dead server must not look like a slow one: {:?}",
        t.elapsed()
    );
    assert!(
        !dir.0.join("lost.txt").exists(),
        "the write never reached the server"
    );
    let status = tokio::time::timeout(LONG, child.wait())
        .await
        .expect("brownout exits")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(137),
        "brownout passes on the server's death by SIGKILL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_response_times_out_and_the_history_shows_the_cancel() {
    let dir = Dir::new("drop");
    let events = dir.0.join("events.jsonl");
    let drop_it = toxic(
        "downstream",
        json!({"method": "tools/call", "tool": "echo", "nth": 1, "action": "drop"}),
    );
    let (mut child, client) = relay(
        &dir.0,
        &["--events", events.to_str().unwrap(), "--toxic", &drop_it],
    )
    .await;
    let r = call(
        &client,
        "echo",
        json!({"text": "lost"}),
        Duration::from_millis(300),
    )
    .await;
    assert!(matches!(r, Err(ServiceError::Timeout { .. })), "{r:?}");
    assert_eq!(
        call(&client, "echo", json!({"text": "kept"}), LONG)
            .await
            .unwrap(),
        "kept"
    );
    // Let brownout finish and write everything: the client goes away, then the server.
    drop(client);
    let _ = tokio::time::timeout(LONG, child.wait()).await;
    let history = common::read_history(&events);
    let dropped = history
        .iter()
        .position(|e| e["direction"] == "downstream" && e["tool"] == "echo" && e["delivered"] == 0)
        .unwrap_or_else(|| panic!("no dropped response in {history:#?}"));
    let cancel = history
        .iter()
        .position(|e| e["direction"] == "upstream" && e["method"] == "notifications/cancelled")
        .unwrap_or_else(|| panic!("rmcp sent no notifications/cancelled: {history:#?}"));
    assert!(cancel > dropped, "the cancel follows the lost response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_on_stdio_delays_each_message() {
    let dir = Dir::new("latency");
    let latency =
        json!({"type": "latency", "stream": "downstream", "attributes": {"latency": 250}})
            .to_string();
    let (_child, client) = relay(&dir.0, &["--toxic", &latency]).await;
    let t = Instant::now();
    assert_eq!(
        call(&client, "echo", json!({"text": "slow"}), LONG)
            .await
            .unwrap(),
        "slow"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

/// `brownout stdio` with `toxics` and an event file; the history once both sides are done.
async fn history_of(
    name: &str,
    toxics: &[String],
    work: impl AsyncFnOnce(&Client),
) -> Vec<serde_json::Value> {
    let dir = Dir::new(name);
    let events = dir.0.join("events.jsonl");
    let mut args = vec!["--events".to_owned(), events.to_str().unwrap().to_owned()];
    for t in toxics {
        args.extend(["--toxic".to_owned(), t.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, client) = relay(&dir.0, &args).await;
    work(&client).await;
    drop(client);
    let _ = tokio::time::timeout(LONG, child.wait()).await;
    common::read_history(&events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_lets_requests_go_together_in_reverse_order() {
    let hold = toxic(
        "upstream",
        json!({"method": "tools/call", "action": "hold", "count": 3, "order": "reversed"}),
    );
    let history = history_of("hold", &[hold], async |client: &Client| {
        let calls = ["a", "b", "c"].map(|t| call(client, "echo", json!({"text": t}), LONG));
        let [a, b, c] = calls;
        let (a, b, c) = tokio::join!(a, b, c);
        // Each call still gets its own answer.
        assert_eq!(
            (a.unwrap(), b.unwrap(), c.unwrap()),
            ("a".into(), "b".into(), "c".into())
        );
    })
    .await;
    let order = |direction: &str, kind: &str| -> Vec<serde_json::Value> {
        history
            .iter()
            .filter(|e| e["direction"] == direction && e["kind"] == kind && e["tool"] == "echo")
            .map(|e| e["id"].clone())
            .collect()
    };
    let sent = order("upstream", "request");
    let answered = order("downstream", "response");
    assert_eq!(sent.len(), 3, "{history:#?}");
    // The server got them last first, and (one at a time, in order) answered so.
    let reversed: Vec<_> = sent.iter().rev().cloned().collect();
    assert_eq!(answered, reversed, "{history:#?}");
    let held: Vec<_> = history
        .iter()
        .filter(|e| e["direction"] == "upstream" && e["tool"] == "echo")
        .map(|e| e["delivered"].as_u64().unwrap())
        .collect();
    assert_eq!(held, [0, 0, 3], "two held, then all three let go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_holds_back_everything_behind_the_matching_message() {
    let stall = toxic(
        "downstream",
        json!({"method": "tools/call", "nth": 1, "action": "stall", "delay": 3000}),
    );
    let history = history_of("stall", &[stall], async |client: &Client| {
        let (a, b) = tokio::join!(
            call(client, "echo", json!({"text": "first"}), LONG),
            call(client, "sleep", json!({"ms": 200}), LONG),
        );
        assert_eq!(a.unwrap(), "first");
        assert_eq!(b.unwrap(), "slept 200 ms");
    })
    .await;
    let responses: Vec<&serde_json::Value> = history
        .iter()
        .filter(|e| {
            e["direction"] == "downstream" && e["kind"] == "response" && e["method"] == "tools/call"
        })
        .collect();
    assert_eq!(responses.len(), 2, "{history:#?}");
    // The second response did not match (nth 1) and still waited behind the stall.
    for r in &responses {
        assert_eq!(r["faults"], json!(["mcp_downstream"]), "{r}");
        assert!(r["delay_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
}

/// The address `brownout stdio --api` prints on its stderr (which must be piped).
async fn api_of(child: &mut Child) -> std::net::SocketAddr {
    use tokio::io::AsyncBufReadExt;
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(LONG, stderr.next_line())
            .await
            .expect("the API's address in time")
            .unwrap()
            .expect("brownout stdio prints its API's address");
        if let Some(rest) = line.split("API on http://").nth(1) {
            return rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_hold_through_the_api_lets_the_call_go_and_records_it() {
    let dir = Dir::new("let-go");
    let events = dir.0.join("events.jsonl");
    let hold = toxic(
        "upstream",
        json!({"tool": "echo", "action": "hold", "count": 5}),
    );
    let (mut child, client, api) = relay_with_api(&dir, &[hold]).await;
    {
        let held = call(&client, "echo", json!({"text": "kept"}), LONG);
        tokio::pin!(held);
        let early = tokio::time::timeout(Duration::from_millis(500), &mut held).await;
        assert!(early.is_err(), "answered while held: {early:?}");
        let path = "/proxies/stdio/toxics/mcp_upstream";
        let r = common::http(api, "DELETE", path, None, &[]).await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(held.await.unwrap(), "kept");
    }
    drop(client);
    let _ = tokio::time::timeout(LONG, child.wait()).await;
    let history = common::read_history(&events);
    let of_call: Vec<_> = history
        .iter()
        .filter(|e| e["tool"] == "echo" && e["direction"] == "upstream")
        .collect();
    // It arrived and was kept (nothing delivered), then went when the hold was removed.
    assert_eq!(of_call.len(), 2, "{history:#?}");
    assert_eq!(of_call[0]["delivered"], 0);
    assert_eq!(
        (&of_call[1]["released"], &of_call[1]["delivered"]),
        (&json!(true), &json!(1))
    );
}

/// Add a toxic to the relay through its API.
async fn add_toxic(api: std::net::SocketAddr, body: &str) {
    let r = common::http(api, "POST", "/proxies/stdio/toxics", Some(body), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `brownout stdio --api --events` with `toxics`, in front of brownout-mcp-server in `dir`:
/// the relay, a client on it, and its API's address.
async fn relay_with_api(dir: &Dir, toxics: &[String]) -> (Child, Client, std::net::SocketAddr) {
    let mut cmd = Command::new(BIN);
    cmd.args(["stdio", "--seed", "1", "--api", "127.0.0.1:0", "--events"])
        .arg(dir.0.join("events.jsonl"));
    for t in toxics {
        cmd.args(["--toxic", t]);
    }
    cmd.args(["--", SERVER, "--root"])
        .arg(&dir.0)
        .stderr(Stdio::piped());
    let (mut child, client) = stdio_client(cmd, rmcp::ClientLifecycleMode::Initialize).await;
    let api = api_of(&mut child).await;
    (child, client, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_on_stdio_keeps_the_call_until_it_heals() {
    let dir = Dir::new("blackhole");
    let (mut child, client, api) = relay_with_api(&dir, &[]).await;
    let cut = json!({"name": "cut", "type": "partition", "stream": "both",
                     "attributes": {"mode": "blackhole"}});
    add_toxic(api, &cut.to_string()).await;
    {
        let held = call(
            &client,
            "write_file",
            json!({"path": "f", "content": "across"}),
            LONG,
        );
        tokio::pin!(held);
        let early = tokio::time::timeout(Duration::from_millis(500), &mut held).await;
        assert!(early.is_err(), "answered across a partition: {early:?}");
        assert!(!dir.0.join("f").exists(), "the write crossed the partition");
        let r = common::http(api, "DELETE", "/proxies/stdio/toxics/cut", None, &[]).await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(held.await.unwrap(), "wrote 6 bytes to f");
    }
    assert_eq!(std::fs::read_to_string(dir.0.join("f")).unwrap(), "across");
    drop(client);
    let _ = tokio::time::timeout(LONG, child.wait()).await;
    let history = common::read_history(&dir.0.join("events.jsonl"));
    let writes: Vec<_> = history
        .iter()
        .filter(|e| e["tool"] == "write_file" && e["direction"] == "upstream")
        .map(|e| (e["delivered"].clone(), e["released"].clone()))
        .collect();
    // Kept while partitioned, delivered once when healed.
    assert_eq!(
        writes,
        [(json!(0), json!(null)), (json!(1), json!(true))],
        "{history:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_a_dropping_partition_lose_messages_on_stdio() {
    let dir = Dir::new("loss");
    let (mut child, client, api) = relay_with_api(&dir, &[]).await;
    // After the handshake, which a loss of everything would not let through.
    let lossy = toxic_of("loss", "upstream", json!({"probability": 1.0}));
    add_toxic(api, &lossy).await;
    let r = call(
        &client,
        "write_file",
        json!({"path": "lost", "content": "x"}),
        Duration::from_millis(500),
    )
    .await;
    assert!(matches!(r, Err(ServiceError::Timeout { .. })), "{r:?}");
    assert!(
        !dir.0.join("lost").exists(),
        "a lost write reached the server"
    );
    let r = common::http(
        api,
        "DELETE",
        "/proxies/stdio/toxics/loss_upstream",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        call(&client, "echo", json!({"text": "through"}), LONG)
            .await
            .unwrap(),
        "through"
    );
    // A dropping partition on answers: the call times out though the server ran it.
    let cut = json!({"name": "cut", "type": "partition", "attributes": {"mode": "drop"}});
    add_toxic(api, &cut.to_string()).await;
    let r = call(
        &client,
        "write_file",
        json!({"path": "ran", "content": "y"}),
        Duration::from_millis(500),
    )
    .await;
    assert!(matches!(r, Err(ServiceError::Timeout { .. })), "{r:?}");
    assert_eq!(std::fs::read_to_string(dir.0.join("ran")).unwrap(), "y");
    drop(client);
    let _ = tokio::time::timeout(LONG, child.wait()).await;
}

#[test]
fn a_fault_that_needs_a_dial_is_refused_on_stdio() {
    let out = std::process::Command::new(BIN)
        .args(["stdio", "--toxic"])
        .arg(toxic_of("slow_open", "downstream", json!({"delay": 100})))
        .args(["--", SERVER])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("slow_open is not supported on stdio proxies"),
        "{err}"
    );
}

fn toxic_of(kind: &str, stream: &str, attributes: serde_json::Value) -> String {
    json!({"type": kind, "stream": stream, "attributes": attributes}).to_string()
}
