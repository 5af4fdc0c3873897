//! What the benchmarks share.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line; 2 fields precede `rest`.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// How many CPUs this process may run on.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM, ...).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// The number of connections open on `proxy`, from brownout's `/metrics`.
pub async fn open_connections(b: &Brownout, proxy: &str) -> u64 {
    let metrics = b.call("GET", "/metrics", "").await;
    let label = format!("brownout_proxy_active_connections{{proxy=\"{proxy}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Keep every thread of this process on `cpu` (all CPUs when `None`): threads started later
/// inherit it.
pub fn pin_self(cpu: Option<usize>) {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let tid: libc::pid_t = task.file_name().to_string_lossy().parse().unwrap();
        set_affinity(tid, cpu).unwrap();
    }
}

fn set_affinity(pid: libc::pid_t, cpu: Option<usize>) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpu.map_or(0..cpus_online(), |c| c..c + 1) {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let r = unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn cpus_online() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

/// `cmd`, run on `cpu` only when one is given.
fn on_cpu(mut cmd: Command, cpu: Option<usize>) -> Command {
    if let Some(c) = cpu {
        // SAFETY: sched_setaffinity is async-signal-safe.
        unsafe { cmd.pre_exec(move || set_affinity(0, Some(c))) };
    }
    cmd
}

/// A loopback port free now, for a peer started by the benchmark to listen on.
fn free_port() -> Option<u16> {
    Some(
        std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port(),
    )
}

/// Whether a peer the benchmark started accepts connections on `addr` within 2 s.
async fn accepting(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// socat in front of `upstream`, if it is installed: a minimal proxy, to show what this
/// machine allows any user-space proxy. Killed when dropped.
pub struct Socat(Child, pub SocketAddr);

impl Socat {
    pub async fn start(upstream: SocketAddr) -> Option<Socat> {
        Socat::start_on(upstream, None).await
    }

    /// As `start`, on one CPU only (as `taskset -c CPU` would) when `cpu` is given.
    pub async fn start_on(upstream: SocketAddr, cpu: Option<usize>) -> Option<Socat> {
        let port = free_port()?;
        let child = on_cpu(Command::new("socat"), cpu)
            .args([
                "-b",
                "262144",
                &format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay"),
                &format!("TCP:{upstream},nodelay"),
            ])
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let s = Socat(child, SocketAddr::from(([127, 0, 0, 1], port)));
        accepting(s.1).await.then_some(s)
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        // socat forks a child per connection; they exit when their connections close.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// haproxy in front of `upstream` (`mode` tcp or http, keep-alive), if it is installed
/// (Debian's `haproxy`): the proxy a user would otherwise put there. Killed when dropped.
pub struct Haproxy(Child, pub SocketAddr, std::path::PathBuf);

impl Haproxy {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub async fn start(mode: &str, upstream: SocketAddr) -> Option<Haproxy> {
        let port = free_port()?;
        let config = std::env::temp_dir().join(format!(
            "brownout-bench-haproxy-{}-{port}.cfg",
            std::process::id()
        ));
        // maxconn within the descriptors this process may give it (two per connection).
        std::fs::write(
            &config,
            format!(
                "global\n    maxconn 9000\ndefaults\n    mode {mode}\n    option http-keep-alive\n    \
                 timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
                 frontend f\n    bind 127.0.0.1:{port} backlog 65535\n    default_backend b\n\
                 backend b\n    server s {upstream}\n"
            ),
        )
        .ok()?;
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let h = Haproxy(child, SocketAddr::from(([127, 0, 0, 1], port)), config);
        accepting(h.1).await.then_some(h)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.2);
    }
}

/// `brownout serve` (the release binary) as its own process, on a free port; killed when
/// dropped.
pub struct Brownout {
    child: Child,
    api: String,
}

impl Brownout {
    pub fn start() -> Brownout {
        Brownout::start_on(None)
    }

    /// As `start`, on one CPU only (as `taskset -c CPU` would) when `cpu` is given; its
    /// runtime then starts one worker thread.
    pub fn start_on(cpu: Option<usize>) -> Brownout {
        let mut child = on_cpu(Command::new(env!("CARGO_BIN_EXE_brownout")), cpu)
            .args(["serve", "--port", "0", "--seed", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn brownout");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let api = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("ready line")
            .trim_start_matches("http://")
            .to_owned();
        Brownout { child, api }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One API call with a JSON body; returns the reply body.
    pub async fn call(&self, method: &str, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(&self.api).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.api,
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 2"), "{method} {path}: {out}");
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
    }

    /// A TCP proxy in front of `upstream`; its address.
    pub async fn proxy(&self, name: &str, upstream: SocketAddr) -> SocketAddr {
        self.proxy_of("tcp", name, upstream).await
    }

    /// A proxy of `protocol` (tcp, http) in front of `upstream`; its address.
    pub async fn proxy_of(&self, protocol: &str, name: &str, upstream: SocketAddr) -> SocketAddr {
        let body = format!(
            r#"{{"name":"{name}","listen":"127.0.0.1:0","upstream":"{upstream}","protocol":"{protocol}"}}"#
        );
        let reply = self.call("POST", "/proxies", &body).await;
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        v["listen"].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for Brownout {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
