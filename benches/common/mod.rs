//! What the benchmarks share.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
