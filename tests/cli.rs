//! The command line, run as a user would: a real `brownout serve` and client commands.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::bin::{BIN, Server};
use common::echo_server;

fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn fails(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_toxics_toggle_delete() {
    let (echo, _e) = echo_server().await;
    let srv = Server::start(&["--seed", "5"]);
    assert_eq!(srv.seed, 5);

    let out = ok(&srv.cli(&[
        "create",
        "svc",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &echo.to_string(),
    ]));
    assert!(out.contains("created proxy svc"), "{out}");
    let v: Value = serde_json::from_str(&ok(&srv.cli(&["inspect", "svc", "--json"]))).unwrap();
    let addr = v["listen"].as_str().unwrap().to_owned();

    let out = ok(&srv.cli(&[
        "toxic",
        "add",
        "svc",
        "--type",
        "latency",
        "--toxicName",
        "slow",
        "--stream",
        "upstream",
        "--attribute",
        "latency=120",
    ]));
    assert!(out.contains("added toxic slow"), "{out}");
    let t = Instant::now();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t.elapsed()
    );

    let out = ok(&srv.cli(&[
        "toxic",
        "update",
        "svc",
        "--toxicName",
        "slow",
        "--attribute",
        "jitter=5",
        "--toxicity",
        "0.5",
    ]));
    assert!(out.contains("toxicity 0.5"), "{out}");
    let v: Value = serde_json::from_str(&ok(&srv.cli(&["inspect", "svc", "--json"]))).unwrap();
    assert_eq!(v["toxics"][0]["attributes"]["latency"], 120);
    assert_eq!(v["toxics"][0]["attributes"]["jitter"], 5);
    let text = ok(&srv.cli(&["inspect", "svc"]));
    assert!(
        text.contains("slow (type latency, stream upstream"),
        "{text}"
    );

    let out = ok(&srv.cli(&["list"]));
    assert!(out.contains("svc") && out.contains(&addr), "{out}");
    let v: Value = serde_json::from_str(&ok(&srv.cli(&["list", "--json"]))).unwrap();
    assert!(v["svc"].is_object());

    ok(&srv.cli(&["toxic", "remove", "svc", "--toxicName", "slow"]));
    // toxiproxy-cli's spellings work too.
    let out = ok(&srv.cli(&[
        "t",
        "a",
        "svc",
        "-t",
        "bandwidth",
        "-n",
        "bw",
        "-u",
        "-a",
        "rate=100",
    ]));
    assert!(out.contains("stream upstream"), "{out}");
    ok(&srv.cli(&["t", "d", "svc", "-n", "bw"]));
    assert!(ok(&srv.cli(&["ls"])).contains("svc"));
    assert!(ok(&srv.cli(&["toggle", "svc"])).contains("disabled"));
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "disabled proxy refuses"
    );
    assert!(ok(&srv.cli(&["toggle", "svc"])).contains("enabled"));
    assert!(TcpStream::connect(&addr).await.is_ok());
    ok(&srv.cli(&["delete", "svc"]));
    let err = fails(&srv.cli(&["inspect", "svc"]));
    assert!(
        err.contains("proxy not found") && err.contains("404"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_what_was_wrong() {
    let srv = Server::start(&[]);
    let err = fails(&srv.cli(&[
        "create",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "nowhere",
    ]));
    assert!(err.contains("upstream") && err.contains("400"), "{err}");
    ok(&srv.cli(&[
        "create",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
    ]));
    let err = fails(&srv.cli(&[
        "toxic",
        "add",
        "p",
        "--type",
        "latency",
        "--attribute",
        "latency=fast",
    ]));
    assert!(err.contains("attributes.latency"), "{err}");
    let err = fails(&srv.cli(&[
        "toxic",
        "add",
        "p",
        "--type",
        "latency",
        "--attribute",
        "latency",
    ]));
    assert!(err.contains("not key=value"), "{err}");
    let err = fails(&srv.cli(&["toxic", "update", "p", "--toxicName", "x"]));
    assert!(err.contains("nothing to update"), "{err}");

    // No server there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["list", "--url", &format!("http://{dead}")])
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(err.contains("cannot reach the API"), "{err}");
    // TOXIPROXY_URL works as BROWNOUT_URL does.
    let out = std::process::Command::new(BIN)
        .args(["list", "--json"])
        .env_remove("BROWNOUT_URL")
        .env("TOXIPROXY_URL", &srv.url)
        .output()
        .unwrap();
    assert!(ok(&out).contains("\"p\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_populates_and_bad_config_is_refused() {
    let (echo, _e) = echo_server().await;
    let dir = std::env::temp_dir().join(format!("brownout-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        format!(r#"[{{"name": "cfg", "listen": "127.0.0.1:0", "upstream": "{echo}"}}]"#),
    )
    .unwrap();
    let srv = Server::start(&["--config", good.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&ok(&srv.cli(&["inspect", "cfg", "--json"]))).unwrap();
    let mut s = TcpStream::connect(v["listen"].as_str().unwrap())
        .await
        .unwrap();
    s.write_all(b"cfg").await.unwrap();
    let mut b = [0u8; 3];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"cfg");
    drop(srv);

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"[{"name": "x"}]"#).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--port", "0", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(
        err.contains("bad.json") && err.contains("upstream at proxy 1"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn sigterm_shuts_down_cleanly() {
    let mut srv = Server::start(&[]);
    let pid = srv.pid();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t = Instant::now();
    loop {
        if let Some(status) = srv.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `brownout demo` shows every fault doing what it says, runs the built-in suites and says
/// where their reports are, and leaves nothing behind: no process, no temporary files.
#[test]
fn the_demo_runs_with_nothing_to_set_up() {
    let results = std::env::temp_dir().join(format!("brownout-demo-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&results);
    let child = std::process::Command::new(BIN)
        .arg("demo")
        .arg("--out")
        .arg(&results)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = ok(&out);
    assert!(!stdout.contains("FAIL"), "{stdout}");
    for step in 1..=5 {
        assert!(stdout.contains(&format!("ok   {step}. ")), "{stdout}");
    }
    assert!(stdout.contains("tools/call read_file"), "{stdout}");
    // The suites: against brownout's own server always; vm-crash needs root, as CI is.
    let mut suites = vec!["partition", "timeouts", "process"];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        suites.push("vm-crash");
    }
    for suite in suites {
        assert!(stdout.contains(&format!("ok   {suite:<10} ")), "{stdout}");
        let report = results.join(suite).join("report.html");
        assert!(stdout.contains(&report.display().to_string()), "{stdout}");
        assert!(report.exists(), "{}", report.display());
    }
    let _ = std::fs::remove_dir_all(&results);
    let dir = std::env::temp_dir().join(format!("brownout-demo-{pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Nothing it started still runs: every process naming its directory is gone.
    let marker = dir.to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
fn the_mcp_server_refuses_a_root_that_is_not_a_directory() {
    let out = std::process::Command::new(BIN)
        .args(["mcp-server", "--root", "/nonexistent/brownout"])
        .output()
        .unwrap();
    let stderr = fails(&out);
    assert!(
        stderr.contains("--root /nonexistent/brownout: not a directory"),
        "{stderr}"
    );
}
