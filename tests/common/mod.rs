//! Test support: real servers on 127.0.0.1:0, brownout in-process with its API, and a
//! small HTTP client. Everything started here is stopped when its handle drops.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub mod bin;
#[cfg(feature = "rmcp")]
pub mod rmcp;

use brownout::control::{Control, ControlHandle, NewProxy, api};
use brownout::faults::{ToxicInput, ToxicSpec};
use brownout::proxy::Protocol;
use brownout::proxy::events::{Event, EventSink};
use std::sync::Arc;
use tokio::sync::broadcast;

/// A fresh directory under the temp dir, for one test's files; removed when dropped.
pub struct Dir(pub std::path::PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("brownout-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A task that is aborted when dropped.
pub struct Task(pub JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An echo server: writes back what it reads, and half-closes when the client does.
pub async fn echo_server() -> (SocketAddr, Task) {
    serve_each(|mut s| async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown().await;
        // Keep the socket open until the client closes, so its reads end in EOF, not RST.
        let _ = s.read(&mut buf).await;
    })
    .await
}

/// A server that sends `data` as fast as it can and then closes at once.
pub async fn blast_server(data: Bytes) -> (SocketAddr, Task) {
    serve_each(move |mut s| {
        let data = data.clone();
        async move {
            let _ = s.write_all(&data).await;
            // Close right after writing: whatever the proxy still holds must still arrive.
        }
    })
    .await
}

/// Accept connections forever, handling each with `f` in its own task.
pub async fn serve_each<F, Fut>(f: F) -> (SocketAddr, Task)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((s, _)) = l.accept().await {
            conns.spawn(f(s));
        }
    });
    (addr, Task(task))
}

/// brownout in-process: the control owner and the API on a free port.
pub struct Brownout {
    pub control: ControlHandle,
    pub api: SocketAddr,
    _api: Task,
}

impl Brownout {
    pub async fn start(seed: u64) -> Brownout {
        Self::start_with(Control::spawn(seed)).await
    }

    /// brownout recording messages; the receiver sees every event from now on.
    pub async fn start_with_events(seed: u64) -> (Brownout, broadcast::Receiver<Arc<Event>>) {
        let sink = EventSink::default();
        let events = sink.subscribe();
        (
            Self::start_with(Control::spawn_with_events(seed, Some(sink))).await,
            events,
        )
    }

    /// brownout with every control option.
    pub async fn start_with_options(opts: brownout::control::Options) -> Brownout {
        Self::start_with(Control::spawn_with(opts)).await
    }

    async fn start_with(control: ControlHandle) -> Brownout {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = l.local_addr().unwrap();
        let c = control.clone();
        let task = tokio::spawn(api::serve(l, c, std::future::pending()));
        Brownout {
            control,
            api,
            _api: Task(task),
        }
    }

    /// Create an enabled proxy on a free port in front of `upstream`; returns its address.
    pub async fn proxy(&self, name: &str, upstream: SocketAddr) -> SocketAddr {
        self.proxy_of(Protocol::Tcp, name, upstream).await
    }

    /// Create an enabled proxy of the given protocol; returns its address.
    pub async fn proxy_of(
        &self,
        protocol: Protocol,
        name: &str,
        upstream: SocketAddr,
    ) -> SocketAddr {
        let p = self
            .control
            .create(NewProxy {
                protocol,
                name: name.into(),
                listen: "127.0.0.1:0".into(),
                upstream: upstream.to_string(),
                enabled: true,
            })
            .await
            .unwrap();
        p.listen.parse().unwrap()
    }

    /// An echo server with a proxy named `name` in front of it: the proxy's address, and
    /// the echo server's task.
    pub async fn echo_proxy(&self, name: &str) -> (SocketAddr, Task) {
        let (echo, task) = echo_server().await;
        (self.proxy(name, echo).await, task)
    }

    /// Add a toxic from the JSON the API would take.
    pub async fn toxic(&self, proxy: &str, spec: Value) -> ToxicSpec {
        let input: ToxicInput = serde_json::from_value(spec).unwrap();
        let spec = ToxicSpec::from_input(input).unwrap();
        self.control.add_toxic(proxy, spec).await.unwrap()
    }

    pub async fn http(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        http(self.api, method, path, body, &[]).await
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Send `msg` and read the same number of bytes back (within 20 s); returns them and the
/// round trip.
pub async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> (Vec<u8>, Duration) {
    let t = std::time::Instant::now();
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
        .await
        .expect("an answer in time")
        .unwrap();
    (back, t.elapsed())
}

/// Read until EOF or error, with a bound on the whole read.
pub async fn read_to_end(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, std::io::Result<()>) {
    let mut out = Vec::new();
    let r = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    match r {
        Ok(Ok(_)) => (out, Ok(())),
        Ok(Err(e)) => (out, Err(e)),
        Err(_) => (
            out,
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "read timed out",
            )),
        ),
    }
}

/// An event history written as JSON lines (`--events FILE`).
/// The history written to `path`, which is then removed, and its `oversized` records (lines
/// or events too long to read as messages).
pub fn take_history(path: &std::path::Path) -> (Vec<Value>, Vec<Value>) {
    let history = read_history(path);
    let _ = std::fs::remove_file(path);
    let oversized = history
        .iter()
        .filter(|e| e["kind"] == "oversized")
        .cloned()
        .collect();
    (history, oversized)
}

pub fn read_history(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What became of each message of `tool` going in `direction`, in order: (copies
/// delivered, whether a removed hold let it go).
pub fn fates(seen: &[Arc<Event>], direction: &str, tool: &str) -> Vec<(usize, bool)> {
    seen.iter()
        .filter(|e| e.direction == direction && e.tool.as_deref() == Some(tool))
        .map(|e| (e.delivered, e.released))
        .collect()
}

/// Deterministic test payload.
pub fn payload(n: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(n as u64);
    Bytes::from((0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>())
}

/// The repository's root.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the test peers' scripts are.
pub fn clients() -> std::path::PathBuf {
    root().join("tests/clients")
}

/// The Python with the test peers installed: `BROWNOUT_TEST_PYTHON`, else the repository's
/// `.venv` that scripts/test.sh creates.
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("BROWNOUT_TEST_PYTHON") {
        return p.into();
    }
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh, which installs the peers the tests use",
        p.display()
    );
    p
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// server-everything's entry point (npm), installed by scripts/test.sh.
pub fn everything_entry() -> std::path::PathBuf {
    let p = root().join(".node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh, which installs the npm MCP server the tests use",
        p.display()
    );
    p
}

/// server-everything on a free loopback port (kept there by a preload), on `transport`:
/// `streamableHttp`, or `sse` (the legacy HTTP+SSE transport).
pub async fn server_everything(transport: &str) -> Peer {
    let port = free_port();
    let mut cmd = std::process::Command::new("node");
    cmd.arg("--require")
        .arg(clients().join("loopback.cjs"))
        .arg(everything_entry())
        .arg(transport)
        .env("PORT", port.to_string());
    Peer::start(cmd, port, "server-everything").await
}

/// A server process listening on a loopback port; killed by PID when dropped.
pub struct Peer {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl Peer {
    /// Start `cmd`, which will listen on 127.0.0.1:`port`, and wait (at most 30 s) until it
    /// accepts connections.
    pub async fn start(mut cmd: std::process::Command, port: u16, what: &str) -> Peer {
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let peer = Peer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let t = std::time::Instant::now();
        while TcpStream::connect(peer.addr).await.is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{what} did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peer
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `mcp` toxic as the API takes it.
pub fn mcp_toxic(stream: &str, attributes: Value) -> Value {
    serde_json::json!({"type": "mcp", "stream": stream, "attributes": attributes})
}

/// The toxics each scenario of tests/clients/mcp_client.py expects, whatever the transport.
pub fn scenario_toxics(scenario: &str) -> Vec<Value> {
    use serde_json::json;
    let t = match scenario {
        "transparent" => return Vec::new(),
        "error_reply" => mcp_toxic(
            "upstream",
            json!({"method": "tools/call", "tool": "add", "action": "error", "code": -32050, "message": "injected by test"}),
        ),
        "dropped_response" => mcp_toxic(
            "downstream",
            json!({"method": "tools/call", "tool": "echo", "nth": 1, "action": "drop"}),
        ),
        "delayed_response" => mcp_toxic(
            "downstream",
            json!({"method": "tools/call", "tool": "add", "action": "delay", "delay": 600}),
        ),
        "duplicated_response" => mcp_toxic(
            "downstream",
            json!({"method": "tools/call", "action": "duplicate"}),
        ),
        "malformed_response" => mcp_toxic(
            "downstream",
            json!({"method": "tools/call", "tool": "add", "action": "malformed"}),
        ),
        "ended_connection" => mcp_toxic(
            "upstream",
            json!({"method": "tools/call", "tool": "add", "action": "kill"}),
        ),
        "session_expired" => mcp_toxic(
            "upstream",
            json!({"method": "tools/call", "nth": 1, "action": "status", "status": 404}),
        ),
        other => panic!("no toxics defined for scenario {other}"),
    };
    vec![t]
}

/// Live processes (zombies aside) whose command line is exactly `args`.
pub fn running(args: &[&str]) -> Vec<i32> {
    let want = args.join("\0") + "\0";
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rfind(')')
            .is_some_and(|i| state[i + 1..].trim_start().starts_with('Z'));
        if cmd == want.as_bytes() && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// End the live processes running exactly `args`, whatever the test finds after; the pids
/// that were still running.
pub fn kill_running(args: &[&str]) -> Vec<i32> {
    let alive = running(args);
    for pid in &alive {
        // SAFETY: a pid found just now by its command line.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    alive
}
