//! Guests through `brownout serve`'s API and the `brownout guest` CLI (namespace and process
//! backends): a guest behind a proxy, crash and restart, signals, bad input, and a brownout
//! killed with its guests running whose leftovers the next brownout removes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::bin::{BIN, Server};

/// One test at a time: they count host-wide guest resources.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "brownout failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// One MCP tools/call over HTTP (after initialize), on plain sockets.
fn mcp_call(addr: &str, tool: &str, args: Value) -> Result<String, String> {
    use std::io::{Read, Write};
    let post = |body: &Value, session: Option<&str>| -> Result<(String, String), String> {
        let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = body.to_string();
        let session = session
            .map(|id| format!("mcp-session-id: {id}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "POST /mcp HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\n{session}content-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
        let id = reply
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("mcp-session-id:")
                    .then(|| l[15..].trim().to_owned())
            })
            .unwrap_or_default();
        Ok((reply, id))
    };
    let (_, session) = post(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        None,
    )?;
    post(
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        Some(&session),
    )?;
    let (reply, _) = post(
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": tool, "arguments": args}}),
        Some(&session),
    )?;
    let data = reply
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .find(|d| d.contains("\"id\":2"))
        .ok_or_else(|| format!("no answer in {reply:?}"))?;
    let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
    Ok(v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[test]
fn cli_spawns_a_guest_behind_a_proxy_crashes_and_restarts_it() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let history = std::env::temp_dir().join(format!(
        "brownout-guest-events-{}.jsonl",
        std::process::id()
    ));
    let server = Server::start(&["--events", history.to_str().unwrap()]);
    // An HTTP-mode proxy, through the API (the CLI's create makes TCP ones).
    let http = Command::new("python3")
        .args([
            "-c",
            "import json,sys,urllib.request as u; r=u.urlopen(u.Request(sys.argv[1]+'/proxies', \
             data=json.dumps({'name':'files','listen':'127.0.0.1:0','upstream':'127.0.0.1:9',\
             'protocol':'http'}).encode(), method='POST')); print(json.load(r)['listen'])",
            &server.url,
        ])
        .output()
        .unwrap();
    assert!(http.status.success(), "{http:?}");
    let listen = String::from_utf8(http.stdout).unwrap().trim().to_owned();

    let api = server.url.trim_start_matches("http://").to_owned();
    let resources = || -> Value {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&api).unwrap();
        write!(
            s,
            "GET /resources HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let body = reply.split_once("\r\n\r\n").expect("an HTTP reply").1;
        serde_json::from_str(body).expect("GET /resources")
    };
    let before = resources();
    let g = json_of(&server.cli(&["guest", "spawn", "g1", "--proxy", "files", "--json"]));
    assert_eq!(g["state"], "running", "{g}");
    let upstream = g["upstream"].as_str().unwrap().to_owned();
    let proxy = json_of(&server.cli(&["inspect", "files", "--json"]));
    assert_eq!(
        proxy["upstream"],
        upstream.as_str(),
        "the proxy points at the guest"
    );

    assert_eq!(
        mcp_call(&listen, "write_file", json!({"path": "x", "content": "y"})).unwrap(),
        "wrote 1 bytes to x"
    );
    let killed = json_of(&server.cli(&["guest", "do", "kill", "g1", "--json"]));
    assert_eq!(killed["state"], "exited");
    assert_eq!(killed["exit"]["signal"], libc::SIGKILL);
    assert_eq!(killed["report"]["clean"], true, "{killed}");
    assert!(mcp_call(&listen, "read_file", json!({"path": "x"})).is_err());

    let restarted = json_of(&server.cli(&["guest", "do", "restart", "g1", "--json"]));
    assert_eq!(restarted["state"], "running");
    assert_eq!(restarted["restarts"], 1);
    assert_eq!(
        mcp_call(&listen, "read_file", json!({"path": "x"})).unwrap(),
        "y"
    );
    let listed = json_of(&server.cli(&["guest", "list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let text = server.cli(&["guest", "rm", "g1"]);
    assert!(text.status.success());
    assert_eq!(
        String::from_utf8_lossy(&text.stdout).trim(),
        "deleted guest g1: nothing left behind"
    );
    let gone = server.cli(&["guest", "inspect", "g1"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("guest not found"));
    // brownout itself holds what it held before the guest: fds, sockets, devices, dirs.
    let after = resources();
    for key in [
        "processes",
        "zombies",
        "fds",
        "sockets",
        "net_devices",
        "namespaces",
        "cgroups",
        "temp_dirs",
        "mounts",
    ] {
        assert_eq!(after[key], before[key], "{key}: {before} -> {after}");
    }

    // One history: the guest's steps among the messages they affected.
    drop(server);
    let lines = std::fs::read_to_string(&history).unwrap();
    let _ = std::fs::remove_file(&history);
    let steps: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|e| match e["kind"].as_str() {
            Some("guest") => Some(format!("guest {}", e["guest"]["action"].as_str().unwrap())),
            Some("request") if e["method"] == "tools/call" => {
                Some(format!("call {}", e["tool"].as_str().unwrap()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            "guest spawn",
            "call write_file",
            "guest kill",
            "call read_file",
            "guest restart",
            "call read_file",
            "guest delete"
        ],
        "{lines}"
    );
}

#[test]
fn bad_guest_input_is_refused_with_the_reason() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&[]);
    let before = json_of(&server.cli(&["guest", "list", "--json"]));
    let cases: [(&[&str], &str); 5] = [
        (
            &["guest", "spawn", "a", "--backend", "xen"],
            "unknown backend \"xen\"",
        ),
        (
            &["guest", "spawn", "a", "--cpus", "0"],
            "cpus: 0 is not between 0 and 64",
        ),
        (
            &[
                "guest",
                "spawn",
                "a",
                "--backend",
                "qemu",
                "--image",
                "/nonexistent",
            ],
            "no guest image",
        ),
        (
            &["guest", "spawn", "a", "--proxy", "nope"],
            "proxy not found",
        ),
        (
            &["guest", "do", "explode", "a"],
            "unknown guest action \"explode\"",
        ),
    ];
    for (args, message) in cases {
        let out = server.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    let dies = server.cli(&["guest", "spawn", "d", "--", "sh", "-c", "exit 7"]);
    assert!(!dies.status.success());
    assert!(
        String::from_utf8_lossy(&dies.stderr).contains("exit code 7"),
        "{dies:?}"
    );
    assert_eq!(json_of(&server.cli(&["guest", "list", "--json"])), before);
}

#[test]
fn a_killed_brownout_leaves_guests_that_the_next_one_removes() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&[]);
    let g = json_of(&server.cli(&["guest", "spawn", "orphan", "--json"]));
    let upstream = g["upstream"].as_str().unwrap().to_owned();
    let data_dir = g["data_dir"].as_str().unwrap().to_owned();
    let pid = server.pid();
    drop(server); // SIGKILL: no cleanup runs

    // The server process died with brownout (parent-death signal); its devices did not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(
        &upstream.parse().unwrap(),
        Duration::from_millis(200),
    )
    .is_ok()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::net::TcpStream::connect_timeout(
            &upstream.parse().unwrap(),
            Duration::from_millis(200)
        )
        .is_err(),
        "the guest's server outlived brownout"
    );
    assert!(
        std::path::Path::new(&data_dir).exists(),
        "left behind, to be swept"
    );

    let log = std::env::temp_dir().join(format!("brownout-sweep-{}.log", std::process::id()));
    let mut next = Command::new(BIN)
        .args(["serve", "--port", "0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("seed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = next.kill();
    let _ = next.wait();
    let _ = std::fs::remove_file(&log);
    assert!(
        text.contains("removed leftovers of an earlier run")
            && text.contains(&format!("brownout pid {pid}")),
        "{text}"
    );
    assert!(!std::path::Path::new(&data_dir).exists());
}

#[test]
fn a_guest_that_dies_on_its_own_shows_in_the_history() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let history =
        std::env::temp_dir().join(format!("brownout-guest-exit-{}.jsonl", std::process::id()));
    let server = Server::start(&["--events", history.to_str().unwrap()]);
    let script = "import http.server, threading, time, os\n\
                  s = http.server.HTTPServer(('0.0.0.0', {port}), http.server.BaseHTTPRequestHandler)\n\
                  threading.Thread(target=s.serve_forever, daemon=True).start()\n\
                  time.sleep(1)\n\
                  os._exit(5)\n";
    let g = json_of(&server.cli(&[
        "guest", "spawn", "brief", "--json", "--", "python3", "-c", script,
    ]));
    assert_eq!(g["state"], "running");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        let lines = std::fs::read_to_string(&history).unwrap_or_default();
        let found = lines
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|e| e["kind"] == "guest" && e["guest"]["action"] == "exit");
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no exit event in {lines}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit["guest"]["name"], "brief");
    assert_eq!(exit["guest"]["detail"]["exit"]["code"], 5);
    assert_eq!(exit["guest"]["detail"]["exit"]["by_brownout"], false);
    let seen = json_of(&server.cli(&["guest", "inspect", "brief", "--json"]));
    assert_eq!(seen["state"], "exited");
    assert_eq!(seen["report"]["clean"], true, "{seen}");
    drop(server);
    let _ = std::fs::remove_file(&history);
}

#[test]
fn cli_signals_a_process_guest_and_refuses_unknown_signals_by_name() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&[]);
    let g = json_of(&server.cli(&["guest", "spawn", "p1", "--backend", "process", "--json"]));
    assert_eq!(g["state"], "running", "{g}");
    assert_eq!(g["backend"], "process");
    let upstream = g["upstream"].as_str().unwrap().to_owned();
    assert!(upstream.starts_with("127.0.0.1:"), "{upstream}");
    assert_eq!(
        mcp_call(&upstream, "echo", json!({"text": "hi"})).unwrap(),
        "hi"
    );

    let int = json_of(&server.cli(&["guest", "do", "sigint", "p1", "--json"]));
    assert_eq!(int["state"], "exited", "{int}");
    assert_eq!(int["exit"]["signal"], libc::SIGINT, "{int}");
    assert!(int["exit"].get("forced").is_none(), "{int}");
    assert_eq!(int["report"]["clean"], true, "{int}");

    // Started again, returning before it serves; then SIGHUP while it shuts down.
    let started = json_of(&server.cli(&["guest", "do", "start", "p1", "--json"]));
    assert_eq!(started["state"], "running", "{started}");
    assert_eq!(started["upstream"], upstream.as_str(), "the port is kept");
    let hup = json_of(&server.cli(&["guest", "do", "term-then-sighup", "p1", "--json"]));
    assert_eq!(hup["state"], "exited", "{hup}");
    assert_eq!(hup["report"]["clean"], true, "{hup}");

    let bad = server.cli(&["guest", "do", "sigstop", "p1"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("signal: unknown signal \"sigstop\": expected one of TERM, KILL, INT, HUP"),
        "{err}"
    );
    let unplug = server.cli(&["guest", "do", "unplug", "p1"]);
    assert!(!unplug.status.success());
    let restarted = json_of(&server.cli(&["guest", "do", "restart", "p1", "--json"]));
    assert_eq!(restarted["state"], "running", "{restarted}");
    let unplug = server.cli(&["guest", "do", "unplug", "p1"]);
    assert!(
        String::from_utf8_lossy(&unplug.stderr)
            .contains("unplug: a process guest has no network link"),
        "{}",
        String::from_utf8_lossy(&unplug.stderr)
    );
    let deleted = server.cli(&["guest", "rm", "p1"]);
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(
        String::from_utf8_lossy(&deleted.stdout).contains("nothing left behind"),
        "{deleted:?}"
    );
}
