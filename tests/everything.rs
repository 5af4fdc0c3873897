//! A real third-party MCP server, @modelcontextprotocol/server-everything from npm
//! (installed by scripts/test.sh), behind brownout in stdio mode and in HTTP mode, driven
//! by the MCP Python SDK's client. It is kept on loopback by tests/clients/loopback.cjs.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::json;

use brownout::proxy::Protocol;
use common::bin::BIN;
use common::{Brownout, Peer, clients, free_port, python, root};

/// server-everything's entry point, installed by scripts/test.sh.
fn entry() -> PathBuf {
    let p = root().join(".node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh, which installs the npm MCP server the tests use",
        p.display()
    );
    p
}

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
        .arg(entry())
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

/// server-everything on Streamable HTTP, on a free loopback port.
async fn start_server() -> Peer {
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg("--require")
        .arg(clients().join("loopback.cjs"))
        .arg(entry())
        .arg("streamableHttp")
        .env("PORT", port.to_string());
    Peer::start(cmd, port, "server-everything").await
}

async fn http_scenario(name: &'static str, toxics: &[serde_json::Value]) {
    let server = start_server().await;
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

/// server-everything on the legacy HTTP+SSE transport, on a free loopback port.
async fn start_sse_server() -> Peer {
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg("--require")
        .arg(clients().join("loopback.cjs"))
        .arg(entry())
        .arg("sse")
        .env("PORT", port.to_string());
    Peer::start(cmd, port, "server-everything (sse)").await
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
    let server = start_sse_server().await;
    let b = Brownout::start(1).await;
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
