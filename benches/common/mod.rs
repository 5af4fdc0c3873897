//! What the benchmarks share.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// socat in front of `upstream`, if it is installed: a minimal proxy, to show what this
/// machine allows any user-space proxy. Killed when dropped.
pub struct Socat(Child, pub SocketAddr);

impl Socat {
    pub async fn start(upstream: SocketAddr) -> Option<Socat> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("socat")
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
        for _ in 0..100 {
            if TcpStream::connect(s.1).await.is_ok() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        // socat forks a child per connection; they exit when their connections close.
        let _ = self.0.kill();
        let _ = self.0.wait();
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_brownout"))
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
