//! One `tools/call` through brownout's HTTP mode and stdio mode, against the same call made
//! directly, side by side in one run.
//!
//! The peers are minimal and fast on purpose (a hyper server that answers every JSON-RPC
//! request, and this binary re-run as a line-by-line stdio server), so that what is measured
//! is brownout's cost, not a server's or a client's. brownout runs as its own process.
//!
//! Run: `cargo bench --bench mcp` (add `-- --quick` for a shorter run).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{Brownout, Haproxy, Socat, cpu_seconds, cpus, open_connections, pin_self, rss_kib};

const SERVER_ENV: &str = "BROWNOUT_BENCH_STDIO_SERVER";

fn call(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello"}}}}}}"#
    )
}

fn answer(request: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(request).unwrap_or_default();
    serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": v["id"],
        "result": {"content": [{"type": "text", "text": "hello"}], "isError": false},
    }))
    .unwrap()
}

/// This binary as a stdio JSON-RPC server: one answer per line.
fn stdio_server() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut a = answer(line.as_bytes());
        a.push(b'\n');
        if out.write_all(&a).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}

async fn http_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(answer(&body))))
                                .expect("valid response"),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn client(addr: SocketAddr) -> Sender {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn post(sender: &mut Sender, addr: SocketAddr, id: u64) {
    sender.ready().await.unwrap();
    let req = hyper::Request::post("/mcp")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::from(call(id))))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"{\"id\""), "{body:?}");
}

/// Sequential calls on one connection: sorted latencies.
async fn http_latency(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut sender = client(addr).await;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        post(&mut sender, addr, i as u64).await;
        if i >= 200 {
            out.push(t.elapsed());
        }
    }
    out.sort();
    out
}

/// `calls` sequential calls on each of `conns` connections at once, after one warm-up call
/// each: every call's time, sorted.
async fn concurrent_latency(addr: SocketAddr, conns: usize, calls: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut sender = client(addr).await;
            let mut out = Vec::with_capacity(calls);
            for i in 0..=calls {
                let t = Instant::now();
                post(&mut sender, addr, (c * 1000 + i) as u64).await;
                if i > 0 {
                    out.push(t.elapsed());
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

/// What `n` calls whose requests a fault dropped cost brownout while their clients wait,
/// and what is left once they hang up.
async fn dropped_calls(b: &Brownout, proxy: SocketAddr, n: usize) {
    use tokio::io::AsyncWriteExt;
    b.call(
        "POST",
        "/proxies/mcp/toxics",
        r#"{"name":"lost","type":"mcp","stream":"upstream","attributes":{"method":"tools/call","action":"drop"}}"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(b.pid());
    let body = call(1);
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: {proxy}\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        clients.push(s);
    }
    let settle = |want: u64| async move {
        for _ in 0..100 {
            if open_connections(b, "mcp").await == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    settle(n as u64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = rss_kib(b.pid());
    drop(clients);
    settle(0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(b.pid());
    println!(
        "| HTTP mode, {n} dropped calls waiting: brownout RSS | {before} KiB before | \
         {waiting} KiB waiting, {after} KiB once their clients hung up | {:.2} KiB per call |",
        (waiting as f64 - before as f64) / n as f64
    );
    b.call("DELETE", "/proxies/mcp/toxics/lost", "").await;
}

/// `calls` sequential calls on one connection, each after `idle` with nothing sent: every
/// call's time (not the idle), sorted.
async fn calls_after_idle(addr: SocketAddr, calls: usize, idle: Duration) -> Vec<Duration> {
    let mut sender = client(addr).await;
    post(&mut sender, addr, 0).await;
    let mut out = Vec::with_capacity(calls);
    for i in 1..=calls {
        tokio::time::sleep(idle).await;
        let t = Instant::now();
        post(&mut sender, addr, i as u64).await;
        out.push(t.elapsed());
    }
    out.sort();
    out
}

/// Calls per second from `clients` concurrent connections, the time of every call that
/// ended in the window (sorted), and `pid`'s RSS at the end of the window, under the load.
async fn http_load(
    addr: SocketAddr,
    clients: usize,
    secs: f64,
    pid: u32,
) -> (f64, Vec<Duration>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = client(addr).await;
            let mut calls = Vec::new();
            let mut i = c as u64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                post(&mut sender, addr, i).await;
                calls.push((Instant::now(), t.elapsed()));
                i += 1;
            }
            calls
        }));
    }
    // Every client connected and calling before the window opens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let closed = Instant::now();
    let rss = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    let mut times = Vec::new();
    for task in tasks {
        let calls = task.await.unwrap();
        times.extend(
            (calls.into_iter())
                .filter(|(end, _)| (opened..closed).contains(end))
                .map(|(_, took)| took),
        );
    }
    times.sort();
    let rate = times.len() as f64 / (closed - opened).as_secs_f64();
    (rate, times, rss)
}

/// How calls/s, p99 and brownout's RSS grow with clients, and calls/s with `mcp` toxics
/// that match nothing; and what an idle keep-alive connection costs brownout.
async fn growth(b: &Brownout, proxy: SocketAddr, haproxy: Option<SocketAddr>, secs: f64) {
    for clients in [1, 32, 256, 1024] {
        let (rate, times, rss) = http_load(proxy, clients, secs, b.pid()).await;
        let against = match haproxy {
            Some(h) => {
                let (r, t, _) = http_load(h, clients, secs, std::process::id()).await;
                format!(
                    "{:.2}× haproxy ({r:.0} calls/s, p99 {:.0} µs)",
                    rate / r,
                    pct(&t, 0.99)
                )
            }
            None => String::new(),
        };
        println!(
            "| HTTP mode, {clients} client(s): calls/s, p99, brownout RSS | {rate:.0} | \
             p99 {:.0} µs, {rss} KiB | {against} |",
            pct(&times, 0.99)
        );
    }
    let mut added = 0;
    for toxics in [0, 1, 10, 100] {
        while added < toxics {
            let body = format!(
                r#"{{"name":"idle{added}","type":"mcp","stream":"both","attributes":{{"method":"no/such/method{added}","action":"drop"}}}}"#
            );
            b.call("POST", "/proxies/mcp/toxics", &body).await;
            added += 1;
        }
        let (rate, times, _) = http_load(proxy, 32, secs, b.pid()).await;
        println!(
            "| HTTP mode, 32 clients, {toxics} mcp toxic(s) matching nothing | {rate:.0} calls/s | \
             p99 {:.0} µs | |",
            pct(&times, 0.99)
        );
    }
    for i in 0..added {
        b.call("DELETE", &format!("/proxies/mcp/toxics/idle{i}"), "")
            .await;
    }
    // Idle keep-alive connections, each after one call.
    let n = 1_000;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(b.pid());
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        let mut sender = client(proxy).await;
        post(&mut sender, proxy, i as u64).await;
        idle.push(sender);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = rss_kib(b.pid());
    drop(idle);
    for _ in 0..50 {
        if open_connections(b, "mcp").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = rss_kib(b.pid());
    println!(
        "| HTTP mode, {n} idle keep-alive connections: brownout RSS | {before} KiB before | \
         {open} KiB open, {after} KiB after close | {:.2} KiB per connection |",
        (open as f64 - before as f64) / n as f64
    );
}

/// Calls per second from `clients` concurrent connections.
async fn http_rate(addr: SocketAddr, clients: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = client(addr).await;
            let mut i = c as u64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                post(&mut sender, addr, i).await;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    n
}

/// Sequential calls through a stdio server started as `cmd`: sorted latencies.
fn stdio_latency(mut cmd: Command, n: usize) -> Vec<Duration> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin: ChildStdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap() as ChildStdout);
    let mut line = String::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        let mut msg = call(i as u64).into_bytes();
        msg.push(b'\n');
        stdin.write_all(&msg).unwrap();
        stdin.flush().unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("{\"id\""), "{line}");
        if i >= 200 {
            out.push(t.elapsed());
        }
    }
    drop(stdin);
    let _ = child.wait();
    out.sort();
    out
}

/// Another proxy measured beside brownout in the same run: its name, address and process
/// (none where its CPU time cannot be read from one: socat forks a child per connection).
struct Peer {
    name: &'static str,
    addr: SocketAddr,
    pid: Option<u32>,
}

/// Calls per second with 32 clients, direct, through `proxy` and through each of `peers`,
/// with the CPU time each call costs the client and server (this process), brownout and
/// each peer. The machine's speed drifts from second to second, so the windows alternate
/// and each ratio compares neighbours; the medians are shown.
async fn rates(
    label: &str,
    b: &Brownout,
    server: SocketAddr,
    proxy: SocketAddr,
    peers: &[Peer],
    rounds: usize,
    secs: f64,
) {
    let me = std::process::id();
    // (calls/s, calls, CPU seconds of this process, of `other`) for one window.
    let window = async |addr, other: u32| {
        let (c0, o0, t0) = (cpu_seconds(me), cpu_seconds(other), Instant::now());
        let rate = http_rate(addr, 32, secs).await;
        let calls = rate * t0.elapsed().as_secs_f64();
        (rate, calls, cpu_seconds(me) - c0, cpu_seconds(other) - o0)
    };
    let (mut direct, mut proxied, mut ratios) = (vec![], vec![], vec![]);
    let mut cpu = [0.0; 5]; // direct calls, direct CPU, proxied calls, peers CPU, brownout CPU
    // For each peer: its calls/s over direct, brownout's over its, its calls and CPU.
    let mut against: Vec<(Vec<f64>, Vec<f64>, f64, f64)> =
        peers.iter().map(|_| (vec![], vec![], 0.0, 0.0)).collect();
    for _ in 0..rounds {
        let d = window(server, me).await;
        let p = window(proxy, b.pid()).await;
        direct.push(d.0);
        proxied.push(p.0);
        ratios.push(p.0 / d.0);
        for (c, v) in cpu.iter_mut().zip([d.1, d.2, p.1, p.2, p.3]) {
            *c += v;
        }
        for (peer, a) in peers.iter().zip(&mut against) {
            let w = window(peer.addr, peer.pid.unwrap_or(me)).await;
            a.0.push(w.0 / d.0);
            a.1.push(p.0 / w.0);
            a.2 += w.1;
            a.3 += w.3;
        }
    }
    let (d, p, r) = (
        median(&mut direct),
        median(&mut proxied),
        median(&mut ratios),
    );
    println!("| HTTP mode, calls/s with 32 clients{label} | {d:.0} | {p:.0} | {r:.2}× |");
    println!(
        "| &nbsp;&nbsp;CPU per call: client and server | {:.1} µs | {:.1} µs | |",
        cpu[1] / cpu[0] * 1e6,
        cpu[3] / cpu[2] * 1e6
    );
    let brownout_cpu = cpu[4] / cpu[2] * 1e6;
    println!("| &nbsp;&nbsp;CPU per call: brownout | | {brownout_cpu:.1} µs | |");
    for (peer, a) in peers.iter().zip(&mut against) {
        let name = peer.name;
        let (over_direct, brownout_over) = (median(&mut a.0), median(&mut a.1));
        println!("| &nbsp;&nbsp;{name}, calls/s | | | {over_direct:.2}× |");
        if peer.pid.is_none() {
            println!("| &nbsp;&nbsp;{name}: brownout's calls/s {brownout_over:.2}× its | | | |");
            continue;
        }
        let peer_cpu = a.3 / a.2 * 1e6;
        println!(
            "| &nbsp;&nbsp;{name}: CPU per call {peer_cpu:.1} µs; brownout's calls/s {brownout_over:.2}× its, CPU per call {:.2}× its | | | |",
            brownout_cpu / peer_cpu
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn row(name: &str, d: &[Duration], p: &[Duration]) {
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        println!(
            "| {name} {label} | {:.1} µs | {:.1} µs | +{:.1} µs |",
            pct(d, q),
            pct(p, q),
            pct(p, q) - pct(d, q)
        );
    }
}

fn main() {
    if std::env::var_os(SERVER_ENV).is_some() {
        return stdio_server();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 2_000 } else { 10_000 };
    let (rounds, secs) = if quick { (3, 0.5) } else { (7, 1.0) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("| tools/call | direct | through brownout | added |");
    println!("|---|---|---|---|");
    rt.block_on(async {
        let b = Brownout::start();
        let server = http_server().await;
        let proxy = b.proxy_of("http", "mcp", server).await;
        let socat = Socat::start(server).await;
        let haproxy = Haproxy::start("http", server).await;
        let d = http_latency(server, n).await;
        let p = http_latency(proxy, n).await;
        row("HTTP mode, latency", &d, &p);
        if let Some(h) = &haproxy {
            row(
                "&nbsp;&nbsp;haproxy (mode http), latency",
                &d,
                &http_latency(h.1, n).await,
            );
        }
        if let Some(sc) = &socat {
            row(
                "&nbsp;&nbsp;reference: socat (TCP, no HTTP), latency",
                &d,
                &http_latency(sc.1, n).await,
            );
        }
        let mut peers = Vec::new();
        if let Some(h) = &haproxy {
            peers.push(Peer {
                name: "haproxy (mode http)",
                addr: h.1,
                pid: Some(h.pid()),
            });
        }
        if let Some(sc) = &socat {
            peers.push(Peer {
                name: "reference: socat (TCP, no HTTP)",
                addr: sc.1,
                pid: None,
            });
        }
        rates("", &b, server, proxy, &peers, rounds, secs).await;
        // Every message parsed and matched, none acted on.
        b.call(
            "POST",
            "/proxies/mcp/toxics",
            r#"{"name":"idle","type":"mcp","stream":"both","attributes":{"method":"no/such/method","action":"drop"}}"#,
        )
        .await;
        let label = ", an mcp toxic matching nothing";
        rates(label, &b, server, proxy, &peers[..peers.len().min(1)], rounds, secs).await;
        b.call("DELETE", "/proxies/mcp/toxics/idle", "").await;
        // A 100 ms latency toxic on the responses: how much later than 100 ms each call comes
        // back, over what a call takes after 100 ms idle without it (so that neither the
        // machine waking from idle nor, with 100 connections, the client's own queueing,
        // which the delay spreads out, counts against the toxic).
        let calls = if quick { 5 } else { 25 };
        let base = pct(&concurrent_latency(proxy, 1, 200).await, 0.5);
        // What a call costs when everything has idled for 100 ms first, with no toxic: the
        // machine's own wake-up cost, which every delayed answer pays too.
        let cold = calls_after_idle(proxy, calls, Duration::from_millis(100)).await;
        println!(
            "| HTTP mode, a call after 100 ms idle, no toxic ({calls} calls) | unloaded call \
             {base:.1} µs | p50 {:.1} µs, p99 {:.1} µs | p50 +{:.0} µs over unloaded |",
            pct(&cold, 0.5),
            pct(&cold, 0.99),
            pct(&cold, 0.5) - base,
        );
        b.call(
            "POST",
            "/proxies/mcp/toxics",
            r#"{"name":"late","type":"latency","attributes":{"latency":100}}"#,
        )
        .await;
        for conns in [1, 4, 100] {
            let late = concurrent_latency(proxy, conns, calls).await;
            // Over 100 ms plus the time of a call after as long an idle without the toxic.
            let over = |q: f64| pct(&late, q) - pct(&cold, 0.5) - 100_000.0;
            println!(
                "| HTTP mode, 100 ms latency toxic, {conns} connection(s): late by, over 100 ms \
                 and a call after idle ({} calls) | | p50 {:+.0} µs, p99 {:+.0} µs | |",
                late.len(),
                over(0.5),
                over(0.99),
            );
        }
        b.call("DELETE", "/proxies/mcp/toxics/late", "").await;
        dropped_calls(&b, proxy, if quick { 2_000 } else { 10_000 }).await;
        growth(&b, proxy, haproxy.as_ref().map(|h| h.1), secs).await;
        drop((b, socat, haproxy));
        if cpus() >= 2 {
            // What brownout costs when it does not take CPU from the client and server, as
            // when it runs on a machine of its own: client and server on CPU 0 (direct and
            // through brownout alike), brownout (and socat) on CPU 1.
            pin_self(Some(0));
            let b = Brownout::start_on(Some(1));
            let proxy = b.proxy_of("http", "mcp", server).await;
            let socat = Socat::start_on(server, Some(1)).await;
            let peers: Vec<Peer> = socat
                .iter()
                .map(|sc| Peer {
                    name: "reference: socat (TCP, no HTTP)",
                    addr: sc.1,
                    pid: None,
                })
                .collect();
            let label = ", brownout on a CPU of its own";
            rates(label, &b, server, proxy, &peers, rounds, secs).await;
            pin_self(None);
        }
    });
    let me = std::env::current_exe().unwrap();
    let mut direct = Command::new(&me);
    direct.env(SERVER_ENV, "1");
    let mut proxied = Command::new(env!("CARGO_BIN_EXE_brownout"));
    proxied
        .args(["stdio", "--"])
        .arg(&me)
        .env(SERVER_ENV, "1")
        .env("RUST_LOG", "error");
    let d = stdio_latency(direct, n);
    let p = stdio_latency(proxied, n);
    row("stdio mode, latency", &d, &p);
}
