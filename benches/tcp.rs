//! Direct versus through brownout, side by side in one run on loopback.
//!
//! brownout runs as its own process (the release binary), so its CPU time and RSS can be
//! read from /proc. Servers and clients run in this process.
//!
//! Run: `cargo bench --bench tcp` (add `-- --quick` for a shorter run, `-- --only PHASE` for
//! one of throughput, pingpong, exchanges, bandwidth, latency, heal, unacted, idle, burst; `BROWNOUT_BENCH_PID_FILE=F` writes
//! brownout's PID to F, to attach a profiler).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{Brownout, Haproxy, Socat, cpu_seconds, rss_kib, status_kib};

async fn sink_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Reads an 8-byte length, sends that many bytes, closes.
async fn send_n_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 8];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let data = vec![0x42u8; u64::from_be_bytes(len) as usize];
                let _ = s.write_all(&data).await;
            });
        }
    });
    addr
}

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Bytes per second written by `streams` clients in `secs`.
async fn throughput(addr: SocketAddr, streams: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (stop, total) = (stop.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let buf = vec![0x5au8; 256 << 10];
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&buf).await.unwrap();
                total.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let bytes = total.load(Ordering::Relaxed);
    let took = t.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    bytes as f64 / took
}

/// Round trips of 64 bytes on one connection: sorted durations.
async fn ping_pong(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 500 {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        if i >= 500 {
            out.push(t.elapsed());
        }
    }
    out.sort();
    out
}

/// Small request/response exchanges per second over `conns` concurrent connections.
async fn exchanges(addr: SocketAddr, conns: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (stop, total) = (stop.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut back = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&[1u8; 64]).await.unwrap();
                s.read_exact(&mut back).await.unwrap();
                total.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = total.load(Ordering::Relaxed);
    let took = t.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / took
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Measure `f` against the proxy process: returns its result and the proxy's CPU use as a
/// fraction of one core.
async fn with_cpu<T>(pid: u32, f: impl std::future::Future<Output = T>) -> (T, f64) {
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    let r = f.await;
    (r, (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64())
}

/// Open `n` connections one after another without waiting for data, as an agent fanning
/// out does, and keep them open: the time for all, and how many connects took over half a
/// second (a SYN dropped from a full listen queue is retried after a second).
async fn burst(to: SocketAddr, n: usize) -> (Duration, usize) {
    let mut open = Vec::with_capacity(n);
    let mut slow = 0;
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        open.push(TcpStream::connect(to).await.unwrap());
        slow += usize::from(t.elapsed() > Duration::from_millis(500));
    }
    (t0.elapsed(), slow)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 1.0 } else { 3.0 };
    let pings = if quick { 2_000 } else { 20_000 };
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args[i + 1].clone());
    let run = |phase: &str| only.as_deref().is_none_or(|o| o == phase);
    let b = Brownout::start();
    let pid = b.pid();
    if let Ok(f) = std::env::var("BROWNOUT_BENCH_PID_FILE") {
        std::fs::write(f, pid.to_string()).unwrap();
    }
    let sink = sink_server().await;
    let echo = echo_server().await;
    let p_sink = b.proxy("sink", sink).await;
    let p_echo = b.proxy("echo", echo).await;
    let row = |name: &str, direct: String, proxied: String, ratio: String, cpu: String| {
        println!("| {name} | {direct} | {proxied} | {ratio} | {cpu} |");
    };
    println!("| measure | direct | through brownout | ratio / added | brownout CPU |");
    println!("|---|---|---|---|---|");

    let socat_sink = Socat::start(sink).await;
    let socat_echo = Socat::start(echo).await;
    if socat_sink.is_none() {
        println!("(socat not installed: no reference rows)");
    }
    for streams in [1, 8].into_iter().filter(|_| run("throughput")) {
        let d = throughput(sink, streams, secs).await;
        let (p, cpu) = with_cpu(pid, throughput(p_sink, streams, secs)).await;
        row(
            &format!("bulk throughput, {streams} stream(s)"),
            format!("{:.2} GB/s", d / 1e9),
            format!("{:.2} GB/s", p / 1e9),
            format!("{:.2}×", p / d),
            format!("{:.0} %", cpu * 100.0),
        );
        if let Some(sc) = &socat_sink {
            let d = throughput(sink, streams, secs).await;
            let p = throughput(sc.1, streams, secs).await;
            row(
                &format!("  reference: socat, {streams} stream(s)"),
                format!("{:.2} GB/s", d / 1e9),
                format!("{:.2} GB/s", p / 1e9),
                format!("{:.2}×", p / d),
                String::new(),
            );
        }
    }

    if run("pingpong") {
        let d = ping_pong(echo, pings).await;
        let (p, cpu) = with_cpu(pid, ping_pong(p_echo, pings)).await;
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            row(
                &format!("64 B round trip {label}"),
                format!("{:.1} µs", us(pct(&d, q))),
                format!("{:.1} µs", us(pct(&p, q))),
                format!("+{:.1} µs", us(pct(&p, q)) - us(pct(&d, q))),
                if q == 0.5 {
                    format!("{:.0} %", cpu * 100.0)
                } else {
                    String::new()
                },
            );
        }
        if let Some(sc) = &socat_echo {
            let p = ping_pong(sc.1, pings).await;
            for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
                row(
                    &format!("  reference: socat, round trip {label}"),
                    format!("{:.1} µs", us(pct(&d, q))),
                    format!("{:.1} µs", us(pct(&p, q))),
                    format!("+{:.1} µs", us(pct(&p, q)) - us(pct(&d, q))),
                    String::new(),
                );
            }
        }
    }
    if run("exchanges") {
        let d = exchanges(echo, 32, secs).await;
        let (p, cpu) = with_cpu(pid, exchanges(p_echo, 32, secs)).await;
        row(
            "64 B exchanges/s, 32 connections",
            format!("{d:.0}"),
            format!("{p:.0}"),
            format!("{:.2}×", p / d),
            format!("{:.0} %", cpu * 100.0),
        );
        if let Some(sc) = &socat_echo {
            let p = exchanges(sc.1, 32, secs).await;
            row(
                "  reference: socat, exchanges/s",
                format!("{d:.0}"),
                format!("{p:.0}"),
                format!("{:.2}×", p / d),
                String::new(),
            );
        }
    }
    if run("burst") {
        // Against haproxy in the same run, when it is installed: 5,000 connects in a row.
        let n = if quick { 2_000 } else { 5_000 };
        let hap = Haproxy::start("tcp", sink).await;
        let (p, slow) = burst(p_sink, n).await;
        match &hap {
            Some(h) => {
                let (r, r_slow) = burst(h.1, n).await;
                row(
                    &format!("{n} connects in a row, total (connects over 0.5 s)"),
                    format!("haproxy {:.3} s ({r_slow})", r.as_secs_f64()),
                    format!("{:.3} s ({slow})", p.as_secs_f64()),
                    format!("{:.2}× haproxy", p.as_secs_f64() / r.as_secs_f64()),
                    String::new(),
                );
            }
            None => row(
                &format!("{n} connects in a row, total (connects over 0.5 s)"),
                "(haproxy not installed)".into(),
                format!("{:.3} s ({slow})", p.as_secs_f64()),
                String::new(),
                String::new(),
            ),
        }
    }
    if run("bandwidth") {
        // The bandwidth fault's measured rate against its setting: one second of data each.
        let up = send_n_server().await;
        let p = b.proxy("bw", up).await;
        for rate in [10u64, 100, 1_000, 10_000] {
            let body =
                format!(r#"{{"name":"bw","type":"bandwidth","attributes":{{"rate":{rate}}}}}"#);
            b.call("POST", "/proxies/bw/toxics", &body).await;
            let n = rate * 1000 * if quick { 1 } else { 2 };
            let t = Instant::now();
            let mut s = TcpStream::connect(p).await.unwrap();
            s.write_all(&n.to_be_bytes()).await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            let measured = got.len() as f64 / t.elapsed().as_secs_f64() / 1000.0;
            assert_eq!(got.len() as u64, n);
            row(
                &format!("bandwidth fault at {rate} KB/s"),
                String::new(),
                format!("{measured:.1} KB/s"),
                format!("{:+.2} %", (measured / rate as f64 - 1.0) * 100.0),
                String::new(),
            );
            b.call("DELETE", "/proxies/bw/toxics/bw", "").await;
        }
    }
    if run("latency") {
        // 100 ms of latency: how close to 100 ms each delivery is. Many connections at once so
        // the run stays short; each sample is one round trip minus the direct p50.
        b.call(
            "POST",
            "/proxies/echo/toxics",
            r#"{"type":"latency","attributes":{"latency":100}}"#,
        )
        .await;
        let base = pct(&d_rtt(echo).await, 0.5);
        let mut samples = Vec::new();
        let mut tasks = Vec::new();
        let conns: usize = std::env::var("BROWNOUT_BENCH_LATENCY_CONNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        for _ in 0..conns {
            tasks.push(tokio::spawn(ping_pong_n(
                p_echo,
                if quick { 10 } else { 40 },
            )));
        }
        for t in tasks {
            samples.extend(t.await.unwrap());
        }
        samples.sort();
        let over = |q: f64| us(pct(&samples, q)) - us(base) - 100_000.0;
        row(
            "100 ms latency fault, delivery vs 100 ms",
            format!("{} samples", samples.len()),
            format!("p50 +{:.0} µs, p99 +{:.0} µs", over(0.5), over(0.99)),
            String::new(),
            String::new(),
        );
        b.call("DELETE", "/proxies/echo/toxics/latency_downstream", "")
            .await;
    }
    if run("heal") {
        // A blackhole partition holding a round trip's request, removed: how long from the
        // DELETE being sent (the API's own round trip included) until the echo is back, and
        // that API round trip alone.
        let cycles = if quick { 50 } else { 200 };
        let mut healed = Vec::with_capacity(cycles);
        let mut api = Vec::with_capacity(cycles);
        let mut s = TcpStream::connect(p_echo).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut back = [0u8; 64];
        for _ in 0..cycles {
            b.call(
                "POST",
                "/proxies/echo/toxics",
                r#"{"name":"cut","type":"partition","stream":"both","attributes":{"mode":"blackhole"}}"#,
            )
            .await;
            s.write_all(&[9u8; 64]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t = Instant::now();
            let (_, read) = tokio::join!(
                async {
                    b.call("DELETE", "/proxies/echo/toxics/cut", "").await;
                    api.push(t.elapsed());
                },
                s.read_exact(&mut back),
            );
            read.unwrap();
            healed.push(t.elapsed());
        }
        healed.sort();
        api.sort();
        row(
            &format!("partition healed: DELETE sent to echo back ({cycles} heals)"),
            format!("API alone p50 {:.0} µs", us(pct(&api, 0.5))),
            format!(
                "p50 {:.0} µs, p99 {:.0} µs",
                us(pct(&healed, 0.5)),
                us(pct(&healed, 0.99))
            ),
            format!("+{:.0} µs p50", us(pct(&healed, 0.5)) - us(pct(&api, 0.5))),
            String::new(),
        );
    }
    if run("unacted") {
        // Faults a connection's toxicity roll left off it cost it nothing: the same proxy with
        // and without partition, loss and corrupt at toxicity 0, in turns.
        let faults = [
            (
                "p0",
                r#"{"name":"p0","type":"partition","toxicity":0,"attributes":{"mode":"drop"}}"#,
            ),
            (
                "l0",
                r#"{"name":"l0","type":"loss","toxicity":0,"attributes":{"probability":0.5}}"#,
            ),
            (
                "c0",
                r#"{"name":"c0","type":"corrupt","toxicity":0,"attributes":{"probability":0.5}}"#,
            ),
        ];
        let (mut gbs, mut rtt) = ([0.0f64; 2], [Vec::new(), Vec::new()]);
        // Off, on, off, on: drift over the run falls on both alike.
        for round in 0..4 {
            let on = round % 2;
            if on == 1 {
                for proxy in ["sink", "echo"] {
                    for (_, body) in faults {
                        b.call("POST", &format!("/proxies/{proxy}/toxics"), body)
                            .await;
                    }
                }
            }
            gbs[on] += throughput(p_sink, 1, secs).await / 2.0;
            rtt[on].extend(ping_pong(p_echo, pings / 2).await);
            if on == 1 {
                for proxy in ["sink", "echo"] {
                    for (name, _) in faults {
                        b.call("DELETE", &format!("/proxies/{proxy}/toxics/{name}"), "")
                            .await;
                    }
                }
            }
        }
        for r in &mut rtt {
            r.sort();
        }
        row(
            "bulk throughput, 1 stream: no faults / 3 faults at toxicity 0",
            format!("{:.2} GB/s", gbs[0] / 1e9),
            format!("{:.2} GB/s", gbs[1] / 1e9),
            format!("{:.2}×", gbs[1] / gbs[0]),
            String::new(),
        );
        row(
            "64 B round trip p50: no faults / 3 faults at toxicity 0",
            format!("{:.1} µs", us(pct(&rtt[0], 0.5))),
            format!("{:.1} µs", us(pct(&rtt[1], 0.5))),
            format!("{:+.1} µs", us(pct(&rtt[1], 0.5)) - us(pct(&rtt[0], 0.5))),
            String::new(),
        );
    }
    if !run("idle") {
        print_rss(pid);
        return;
    }
    // Idle connections: RSS per connection while open, and after they close.
    let n = 5000;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(p_echo).await.unwrap();
        // A round trip proves the upstream side is connected too.
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = rss_kib(pid);
    drop(conns);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = b.call("GET", "/metrics", "").await;
        if m.lines().any(|l| {
            l.starts_with("brownout_proxy_active_connections{proxy=\"echo\"") && l.ends_with(" 0")
        }) {
            break;
        }
    }
    let after = rss_kib(pid);
    row(
        &format!("RSS with {n} idle connections"),
        format!("{before} KiB before"),
        format!("{open} KiB open, {after} KiB after close"),
        format!("{:.2} KiB/conn", (open as f64 - before as f64) / n as f64),
        String::new(),
    );
    print_rss(pid);
}

async fn d_rtt(addr: SocketAddr) -> Vec<Duration> {
    ping_pong(addr, 200).await
}

/// `n` round trips after one warm-up, unsorted.
async fn ping_pong_n(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut back = [0u8; 64];
    let mut out = Vec::new();
    for i in 0..=n {
        let t = Instant::now();
        s.write_all(&[3u8; 64]).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        if i > 0 {
            out.push(t.elapsed());
        }
    }
    out
}

fn print_rss(pid: u32) {
    println!(
        "\nbrownout RSS: peak {} KiB, now {} KiB",
        status_kib(pid, "VmHWM:"),
        rss_kib(pid)
    );
}
