//! The files in examples/ do what they say: the MCP client configuration starts brownout
//! in front of a server, and the Python script toggles faults on `brownout serve`.

#![cfg(feature = "rmcp")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::bin::{BIN, Server};
use common::{Dir, echo_server, python, root};

const SERVER: &str = env!("CARGO_BIN_EXE_brownout-mcp-server");
const LONG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_client_config_puts_brownout_stdio_in_front_of_the_server() {
    let path = root().join("examples/mcp-client/claude_desktop_config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entry = &config["mcpServers"]["files-behind-brownout"];
    assert_eq!(entry["command"], "brownout");
    let dir = Dir::new("client-config");
    // As an MCP client would start it, with the installed names resolved to this build.
    let args: Vec<String> = entry["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| match a.as_str().unwrap() {
            "brownout-mcp-server" => SERVER.to_owned(),
            "/tmp/brownout-files" => dir.0.to_str().unwrap().to_owned(),
            other => other.to_owned(),
        })
        .collect();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(&args);
    let (mut child, client) =
        common::rmcp::stdio_client(cmd, rmcp::ClientLifecycleMode::Initialize).await;
    let t = Instant::now();
    let text = common::rmcp::call(
        &client,
        "echo",
        serde_json::json!({"text": "through brownout"}),
        LONG,
    )
    .await
    .unwrap();
    assert_eq!(text, "through brownout");
    // The configuration's latency toxic is on the answer.
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    drop(client);
    let status = tokio::time::timeout(LONG, child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_toxiproxy_python_example_toggles_faults_on_brownout_serve() {
    let (echo, _echo) = echo_server().await;
    let srv = Server::start(&[]);
    let api = srv.url.trim_start_matches("http://").to_owned();
    let script = root().join("examples/toxiproxy/flaky_network.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(echo.to_string())
            .args(["--api", &api, "--hold", "0.2"])
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(
        lines,
        [
            "on: slow",
            "off: slow",
            "on: cut",
            "off: cut",
            "on: flaky",
            "off: flaky",
            "done"
        ],
        "{stdout}"
    );
    // It cleaned up: the proxy is gone from brownout.
    let list = srv.cli(&["list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed}");
    assert!(!listed.contains("mcp"), "{listed}");
}
