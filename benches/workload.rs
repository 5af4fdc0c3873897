//! The scenario runner's workload driver, flat out against brownout's own MCP server
//! directly (no proxy): how many checked tool calls a second it sustains, and what its
//! history costs per call. `cargo bench --bench workload`.
//!
//! The driver, the server and their HTTP stacks share this process and the machine's
//! cores, so the figure is what the runner can drive on this machine, not a server limit.

use std::sync::Arc;
use std::time::Duration;

use brownout::scenarios::file::{CallKind, Retry, Workload};
use brownout::scenarios::history::History;
use brownout::scenarios::workload::{Driver, Route};
use tokio_util::sync::CancellationToken;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn run(url: &str, clients: usize, calls: u64) {
    let history = Arc::new(History::default());
    let start = tokio::time::Instant::now();
    let driver = Arc::new(Driver {
        workload: Workload {
            clients,
            calls: Some(calls),
            duration: None,
            rate: None,
            timeout: Duration::from_secs(10),
            grace: Duration::from_secs(5),
            call: CallKind::Echo,
            retry: Retry::NEVER,
            command: None,
            proxies: vec!["direct".into()],
        },
        routes: vec![Route {
            proxy: 0,
            url: url.to_owned(),
            stdio: None,
        }],
        seed: 1,
        history: history.clone(),
        start,
        stop: CancellationToken::new(),
        dir: brownout::scenarios::workload::RUN_DIR,
        ending: Default::default(),
    });
    let before = rss_kib();
    driver.run().await;
    let took = start.elapsed().as_secs_f64();
    let after = rss_kib();
    let done = history.calls();
    let ok = done
        .iter()
        .filter(|c| c.outcome == brownout::scenarios::history::Outcome::Ok)
        .count();
    let history_bytes = done.len() * std::mem::size_of::<brownout::scenarios::history::Call>();
    println!(
        "{calls:>7} calls, {clients:>3} clients: {:>7.0} calls/s ({ok} ok), history {:.0} B/call \
         in memory, process RSS {:+.2} MiB ({:.0} B/call)",
        done.len() as f64 / took,
        history_bytes as f64 / done.len() as f64,
        (after as f64 - before as f64) / 1024.0,
        (after as f64 - before as f64) * 1024.0 / done.len() as f64,
    );
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let root =
            std::env::temp_dir().join(format!("brownout-bench-workload-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(brownout::mcp::server::serve_http_on(
            root.clone(),
            listener,
            stop.clone().cancelled_owned(),
        ));
        // Warm up: connections, allocator.
        run(&url, 32, 2_000).await;
        for calls in [10_000, 100_000] {
            run(&url, 32, calls).await;
        }
        stop.cancel();
        let _ = server.await;
        let _ = std::fs::remove_dir_all(root);
    });
}
