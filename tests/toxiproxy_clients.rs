//! Third-party Toxiproxy client libraries, installed from their registries by the test
//! script, drive brownout unchanged and see the effects.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};

use common::bin::Server;
use common::{Dir, clients, echo_server, python, root};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_python_client() {
    let (echo, _e) = echo_server().await;
    let srv = Server::start(&[]);
    let api = srv.url.trim_start_matches("http://").to_owned();
    let (host, port) = api
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .unwrap();
    let script = clients().join("toxiproxy_python.py");
    let mut cmd = Command::new(python());
    cmd.arg(script).args([host, port, echo.to_string()]);
    passed(run(cmd).await, "python client");
}

/// Run a client script to its end, off the runtime's threads (the echo server runs there).
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run the client"))
        .await
        .unwrap()
}

/// A client script ran every one of its checks, and they passed.
fn passed(out: Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_node_client() {
    let (echo, _e) = echo_server().await;
    let srv = Server::start(&[]);
    let client = root().join(".node/node_modules/toxiproxy-node-client");
    assert!(
        client.exists(),
        "{} is missing: run scripts/test.sh, which installs the peers the tests use",
        client.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(clients().join("toxiproxy_node.cjs"))
        .args([srv.url.as_str(), &echo.to_string()]);
    passed(run(cmd).await, "node client");
}

/// A Chaos Toolkit experiment (tests/clients/chaostoolkit) run with chaostoolkit-toxiproxy
/// against brownout: its steady state holds before and after, every activity succeeds,
/// each probe saw what it looks for, and the rollbacks leave brownout as they found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_toolkit_experiment_with_chaostoolkit_toxiproxy() {
    let (echo, _e) = echo_server().await;
    let srv = Server::start(&[]);
    let api: SocketAddr = srv.url.trim_start_matches("http://").parse().unwrap();
    let created = common::http(
        api,
        "POST",
        "/proxies",
        Some(&format!(
            r#"{{"name": "ctk_echo", "listen": "127.0.0.1:0", "upstream": "{echo}"}}"#
        )),
        &[],
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let listen = created.json()["listen"].as_str().unwrap().to_owned();

    let dir = Dir::new("chaostoolkit");
    let here = clients().join("chaostoolkit");
    let chaos = python().with_file_name("chaos");
    let mut cmd = Command::new(&chaos);
    cmd.current_dir(&dir.0)
        .args([
            "--no-version-check",
            "--no-log-file",
            "run",
            "--journal-path",
        ])
        .arg(dir.0.join("journal.json"))
        .arg(here.join("experiment.json"))
        .env("TOXIPROXY_URL", &srv.url)
        .env("PROXY_ADDR", &listen)
        .env("ECHO_HOST", echo.ip().to_string())
        .env("ECHO_PORT", echo.port().to_string())
        .env("PROBE", here.join("round_trip.py"));
    let out = run(cmd).await;
    let log = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "chaos run failed\n{log}");
    let journal: Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("journal.json")).unwrap()).unwrap();
    assert_eq!(journal["status"], "completed", "{log}");
    assert_eq!(journal["deviated"], false, "{log}");
    for when in ["before", "after"] {
        assert_eq!(
            journal["steady_states"][when]["steady_state_met"], true,
            "steady state {when}: {log}"
        );
    }
    let activities = |key: &str| -> Vec<(String, Value)> {
        let list = journal[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key}"));
        for a in list {
            assert_eq!(a["status"], "succeeded", "{a:#}");
        }
        list.iter()
            .map(|a| {
                (
                    a["activity"]["name"].as_str().unwrap().to_owned(),
                    a["output"].clone(),
                )
            })
            .collect()
    };
    let run = activities("run");
    let names: Vec<&str> = run.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "add-latency",
            "answers-slowly",
            "latency-attribute",
            "remove-latency",
            "disable-proxy",
            "refused-while-disabled",
            "enable-proxy",
            "create-side-proxy",
            "side-proxy-answers"
        ]
    );
    let output = |name: &str| &run.iter().find(|(n, _)| n == name).unwrap().1;
    // A process probe's exit status says whether it saw what it looks for.
    for probe in [
        "answers-slowly",
        "refused-while-disabled",
        "side-proxy-answers",
    ] {
        assert_eq!(output(probe)["status"], 0, "{probe}: {:#}", output(probe));
    }
    let toxics = output("latency-attribute");
    assert_eq!(toxics[0]["type"], "latency", "{toxics:#}");
    assert_eq!(toxics[0]["attributes"]["latency"], 300, "{toxics:#}");
    let rollbacks = activities("rollbacks");
    assert_eq!(rollbacks.len(), 2, "{rollbacks:?}");

    let left = common::http(api, "GET", "/proxies", None, &[]).await.json();
    let names: Vec<&String> = left.as_object().unwrap().keys().collect();
    assert_eq!(
        names,
        ["ctk_echo"],
        "the side proxy was rolled back: {left:#}"
    );
    assert_eq!(left["ctk_echo"]["toxics"], serde_json::json!([]));
    assert_eq!(left["ctk_echo"]["enabled"], true);
}
