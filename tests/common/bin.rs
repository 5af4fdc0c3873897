//! The `brownout` binary as a child process, stopped by PID when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_brownout");

pub struct Server {
    pub child: Child,
    pub url: String,
    pub seed: u64,
}

impl Server {
    /// `brownout serve --port 0` plus `args`; waits for its ready line.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--port", "0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn brownout");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if !l.is_empty() => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("brownout serve printed no ready line: {other:?}");
            }
        };
        // "brownout X API on http://127.0.0.1:P seed S"
        let words: Vec<&str> = line.split_whitespace().collect();
        let url = words
            .iter()
            .find(|w| w.starts_with("http://"))
            .expect("url in ready line")
            .to_string();
        let seed = words.last().unwrap().parse().expect("seed in ready line");
        Server { child, url, seed }
    }

    /// Run a client command against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("BROWNOUT_URL", &self.url)
            .env_remove("TOXIPROXY_URL")
            .output()
            .expect("run brownout")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The high-water mark of a process's resident memory, in KiB (none once it has exited).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
