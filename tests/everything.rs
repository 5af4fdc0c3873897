//! A real third-party MCP server, @modelcontextprotocol/server-everything from npm
//! (installed by scripts/test.sh), behind brownout in stdio mode and in HTTP mode, driven
//! by the MCP Python SDK's client. It is kept on loopback by tests/clients/loopback.cjs.

mod common;

use std::process::{Command, Output};

use serde_json::json;

use brownout::proxy::Protocol;
use common::bin::BIN;
use common::{Brownout, clients, everything_entry, python, root, server_everything};

fn check(out: Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stdio_scenario(name: &str) {
    let out = Command::new(python())
        .arg(root().join("tests/clients/everything.py"))
        .arg("stdio")
        .arg(BIN)
        .arg(everything_entry())
        .arg(name)
        .output()
        .unwrap();
    check(out);
}

#[test]
fn stdio_mode_is_transparent() {
    stdio_scenario("transparent");
}

#[test]
fn stdio_mode_injects_an_error() {
    stdio_scenario("error_reply");
}

async fn http_scenario(name: &'static str, toxics: &[serde_json::Value]) {
    let server = server_everything("streamableHttp").await;
    let b = Brownout::start(1).await;
    let listen = b.proxy_of(Protocol::Http, "everything", server.addr).await;
    for t in toxics {
        b.toxic("everything", t.clone()).await;
    }
    let (proxy, direct) = (
        format!("http://{listen}/mcp"),
        format!("http://{}/mcp", server.addr),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(root().join("tests/clients/everything.py"))
            .args(["http", &proxy, &direct, name])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    check(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_is_transparent() {
    http_scenario("transparent", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_injects_an_error() {
    let t = json!({"type": "mcp", "stream": "upstream",
                   "attributes": {"tool": "get-sum", "action": "error", "code": -32050, "message": "injected by test"}});
    http_scenario("error_reply", &[t]).await;
}

async fn legacy(url: String, scenario: &'static str) -> String {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(clients().join("legacy_sse.py"))
            .args([&url, scenario])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{scenario}: stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_transport_through_http_mode_with_faults() {
    let server = server_everything("sse").await;
    let (b, mut events) = Brownout::start_with_events(1).await;
    let listen = b.proxy_of(Protocol::Http, "legacy", server.addr).await;
    let (proxy, direct) = (
        format!("http://{listen}/sse"),
        format!("http://{}/sse", server.addr),
    );
    // Transparent: the same tools and answers.
    let first_line = |s: String| s.lines().find(|l| l.starts_with('{')).unwrap().to_owned();
    assert_eq!(
        first_line(legacy(proxy.clone(), "calls").await),
        first_line(legacy(direct, "calls").await)
    );
    // The answers on the event stream belong to the session the POSTs name.
    let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let session_of = |direction: &str| {
        seen.iter()
            .find(|e| e.direction == direction && e.method.as_deref() == Some("tools/call"))
            .unwrap_or_else(|| panic!("no {direction} tools/call in {seen:#?}"))
            .session
            .clone()
    };
    assert!(session_of("upstream").is_some(), "{seen:#?}");
    assert_eq!(session_of("downstream"), session_of("upstream"));
    // An injected error goes where a legacy client reads answers: the event stream.
    b.toxic(
        "legacy",
        json!({"name": "e", "type": "mcp", "stream": "upstream",
               "attributes": {"tool": "echo", "action": "error", "code": -32050, "message": "injected"}}),
    )
    .await;
    legacy(proxy.clone(), "error").await;
    b.http("DELETE", "/proxies/legacy/toxics/e", None).await;
    // A dropped request is accepted (as the server would) and never answered.
    b.toxic(
        "legacy",
        json!({"type": "mcp", "stream": "upstream",
               "attributes": {"tool": "echo", "nth": 1, "action": "drop"}}),
    )
    .await;
    legacy(proxy, "drop").await;
}
