//! The six network-partition scenarios of a reliability plan, for real: an rmcp client
//! making tool calls to an MCP server (brownout's own, over Streamable HTTP) through an
//! embedded brownout proxy, with partitions, loss and heals switched by guards.
//!
//! `cargo run --example partition_plan` prints the results as JSON and exits non-zero if
//! a scenario failed; `cargo test --example partition_plan` runs it as a test.
//!
//! Every call writes a file and counts as ok only when its answer comes back; after each
//! scenario every acknowledged write is read back (`data_lost` if one is missing or
//! different). A call that fails must fail within its timeout (graceful), never hang.

use std::time::{Duration, Instant};

use brownout::embed::{Counters, Handle, Proxy};
use brownout::faults::PartitionMode;
use rmcp::model::{CallToolRequestParams, ClientRequest, Request, ServerResult};
use rmcp::service::{PeerRequestOptions, RunningService};
use rmcp::{RoleClient, ServiceExt};
use serde::Serialize;
use serde_json::json;

type Client = RunningService<RoleClient, ()>;

/// How long a call that should fail is given; a healthy one gets `HEALTHY`.
const CUT: Duration = Duration::from_millis(250);
const HEALTHY: Duration = Duration::from_secs(10);
/// Past its timeout, how long a call may take to end before it counts as hung.
const GRACE: Duration = Duration::from_secs(2);
/// The plan's pass mark: graceful handling at least this often.
const GRACEFUL: f64 = 0.85;

#[derive(Debug, Default, Serialize)]
struct Scenario {
    name: &'static str,
    calls: u32,
    ok: u32,
    failed: u32,
    hung: u32,
    connection_lost: bool,
    recovery_success: bool,
    data_lost: bool,
    cascading_failure: bool,
    graceful_degradation: bool,
    passed: bool,
    /// What the proxy counted during the scenario.
    counters: Counters,
    #[serde(skip)]
    start: Counters,
}

#[derive(Debug, Serialize)]
struct Results {
    scenarios: Vec<Scenario>,
    graceful_rate: f64,
    passed: bool,
}

/// One client through one proxy, and what its calls did.
struct Lane {
    proxy: Handle,
    client: Client,
    acked: Vec<(String, String)>,
    next: u32,
}

impl Lane {
    async fn new(upstream: std::net::SocketAddr, seed: u64) -> Lane {
        let proxy = Proxy::http(upstream.to_string())
            .seed(seed)
            .start()
            .await
            .expect("start the proxy");
        let client = connect(format!("http://{}/mcp", proxy.addr())).await;
        Lane {
            proxy,
            client,
            acked: Vec::new(),
            next: 0,
        }
    }

    /// One write call; true if it was answered (and so must be on disk).
    async fn write(&mut self, s: &mut Scenario, timeout: Duration) -> bool {
        self.next += 1;
        let path = format!("{}/{}-{}", s.name, self.proxy.addr().port(), self.next);
        let content = format!("{:016x}", fastrand::u64(..));
        s.calls += 1;
        let call = call(
            &self.client,
            "write_file",
            json!({"path": path, "content": content}),
            timeout,
        );
        match tokio::time::timeout(timeout + GRACE, call).await {
            Err(_) => {
                s.hung += 1;
                false
            }
            Ok(Ok(_)) => {
                s.ok += 1;
                self.acked.push((path, content));
                true
            }
            Ok(Err(_)) => {
                s.failed += 1;
                false
            }
        }
    }

    /// Whether every acknowledged write reads back as written.
    async fn intact(&mut self) -> bool {
        for (path, content) in std::mem::take(&mut self.acked) {
            let back = call(&self.client, "read_file", json!({"path": path}), HEALTHY).await;
            if back.ok().as_deref() != Some(content.as_str()) {
                return false;
            }
        }
        true
    }
}

async fn connect(url: String) -> Client {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::common::client_side_sse::ExponentialBackoff;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    // An agent with a retry budget: rmcp's default resumes a cut stream forever.
    let mut backoff = ExponentialBackoff::default();
    backoff.max_times = Some(2);
    backoff.base_duration = Duration::from_millis(100);
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    config.retry_config = std::sync::Arc::new(backoff);
    tokio::time::timeout(
        HEALTHY,
        ().serve(StreamableHttpClientTransport::from_config(config)),
    )
    .await
    .expect("initialize in time")
    .expect("initialize")
}

async fn call(
    client: &Client,
    tool: &'static str,
    args: serde_json::Value,
    timeout: Duration,
) -> Result<String, String> {
    let params = CallToolRequestParams::new(tool)
        .with_arguments(args.as_object().expect("an object").clone());
    let reply = client
        .send_request_with_option(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::with_timeout(timeout),
        )
        .await
        .map_err(|e| e.to_string())?
        .await_response()
        .await
        .map_err(|e| e.to_string())?;
    match reply {
        ServerResult::CallToolResult(r) if r.is_error != Some(true) => r
            .content
            .first()
            .and_then(|c| c.as_text())
            .map(|t| t.text.clone())
            .ok_or_else(|| "no text".to_owned()),
        other => Err(format!("{other:?}")),
    }
}

fn finish(mut s: Scenario, lane: &Lane, graceful_share: f64) -> Scenario {
    s.counters = lane.proxy.counters().since(&s.start);
    s.graceful_degradation = s.hung == 0 && f64::from(s.ok) >= graceful_share * f64::from(s.calls);
    s.passed = s.recovery_success && !s.data_lost && !s.cascading_failure && s.graceful_degradation;
    s
}

async fn full_connection_loss(lane: &mut Lane) -> Scenario {
    let mut s = Scenario {
        name: "full_connection_loss",
        start: lane.proxy.counters(),
        ..Scenario::default()
    };
    for _ in 0..5 {
        lane.write(&mut s, HEALTHY).await;
    }
    let before = s.ok;
    {
        let _cut = lane.proxy.partition(PartitionMode::Drop);
        for _ in 0..10 {
            s.connection_lost |= !lane.write(&mut s, CUT).await;
        }
    }
    let during = s.ok - before;
    let mut after = 0;
    for _ in 0..5 {
        after += u32::from(lane.write(&mut s, HEALTHY).await);
    }
    s.recovery_success = during == 0 && after == 5;
    s.data_lost = !lane.intact().await;
    finish(s, lane, 0.5)
}

async fn intermittent(lane: &mut Lane, name: &'static str, p: f64, n: u32, share: f64) -> Scenario {
    let mut s = Scenario {
        name,
        start: lane.proxy.counters(),
        ..Scenario::default()
    };
    {
        let _flaky = lane.proxy.loss(p);
        for _ in 0..n {
            s.connection_lost |= !lane.write(&mut s, CUT).await;
        }
    }
    s.recovery_success = s.ok > 0 && lane.write(&mut s, HEALTHY).await;
    s.data_lost = !lane.intact().await;
    finish(s, lane, share)
}

async fn recovery(lane: &mut Lane) -> Scenario {
    let mut s = Scenario {
        name: "connection_recovery",
        start: lane.proxy.counters(),
        ..Scenario::default()
    };
    for _ in 0..5 {
        lane.write(&mut s, HEALTHY).await;
    }
    // Connections reset, new ones refused: the client must reconnect afterwards.
    let cut = lane.proxy.partition(PartitionMode::Refuse);
    for _ in 0..5 {
        s.connection_lost |= !lane.write(&mut s, CUT).await;
    }
    // Healed by the verb rather than the guard: the guard then does nothing.
    lane.proxy.heal();
    drop(cut);
    let healed = Instant::now();
    let mut after = 0;
    for _ in 0..5 {
        after += u32::from(lane.write(&mut s, HEALTHY).await);
    }
    s.recovery_success = after == 5 && healed.elapsed() < HEALTHY;
    s.data_lost = !lane.intact().await;
    finish(s, lane, 0.5)
}

async fn no_cascading_failure(cut: &mut Lane, other: &mut Lane) -> Scenario {
    let mut s = Scenario {
        name: "no_cascading_failure",
        start: cut.proxy.counters(),
        ..Scenario::default()
    };
    for _ in 0..3 {
        cut.write(&mut s, HEALTHY).await;
        other.write(&mut s, HEALTHY).await;
    }
    let mut other_ok = 0;
    {
        let _cut = cut.proxy.partition(PartitionMode::Drop);
        for _ in 0..5 {
            s.connection_lost |= !cut.write(&mut s, CUT).await;
            other_ok += u32::from(other.write(&mut s, HEALTHY).await);
        }
    }
    s.cascading_failure = other_ok != 5;
    s.recovery_success = cut.write(&mut s, HEALTHY).await;
    s.data_lost = !(cut.intact().await && other.intact().await);
    finish(s, cut, 0.5)
}

async fn rapid_reconnect(lane: &mut Lane) -> Scenario {
    let mut s = Scenario {
        name: "rapid_reconnect",
        start: lane.proxy.counters(),
        ..Scenario::default()
    };
    for _ in 0..10 {
        for _ in 0..2 {
            lane.write(&mut s, HEALTHY).await;
        }
        let _cut = lane.proxy.partition(PartitionMode::Drop);
        for _ in 0..2 {
            s.connection_lost |= !lane.write(&mut s, CUT).await;
        }
    }
    let mut last = 0;
    for _ in 0..3 {
        last += u32::from(lane.write(&mut s, HEALTHY).await);
    }
    s.recovery_success = last == 3;
    s.data_lost = !lane.intact().await;
    finish(s, lane, 0.5)
}

/// Run the six scenarios against a fresh server; `seed` fixes every fault decision.
async fn run(seed: u64) -> Results {
    fastrand::seed(seed);
    let root = std::env::temp_dir().join(format!("brownout-partition-plan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("a temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("an address");
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(brownout::mcp::server::serve_http_on(
        root.clone(),
        listener,
        stop.clone().cancelled_owned(),
    ));

    let mut lane = Lane::new(upstream, seed).await;
    let mut scenarios = vec![
        full_connection_loss(&mut lane).await,
        intermittent(&mut lane, "intermittent_connectivity", 0.3, 20, 1.0 / 3.0).await,
        intermittent(&mut lane, "partial_failure", 0.5, 10, 0.25).await,
        recovery(&mut lane).await,
    ];
    let mut other = Lane::new(upstream, seed + 1).await;
    scenarios.push(no_cascading_failure(&mut lane, &mut other).await);
    scenarios.push(rapid_reconnect(&mut lane).await);

    for c in [lane.client, other.client] {
        let _ = c.cancel().await;
    }
    stop.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&root);

    let graceful = scenarios.iter().filter(|s| s.graceful_degradation).count();
    let graceful_rate = graceful as f64 / scenarios.len() as f64;
    let passed = graceful_rate >= GRACEFUL && scenarios.iter().all(|s| s.passed);
    Results {
        scenarios,
        graceful_rate,
        passed,
    }
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let results = run(1).await;
    println!(
        "{}",
        serde_json::to_string_pretty(&results).expect("serializable")
    );
    if !results.passed {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_six_partition_scenarios_pass() {
        let results = super::run(1).await;
        assert!(results.passed, "{results:#?}");
        let s = &results.scenarios;
        assert_eq!(s.len(), 6);
        // The partitions really cut: calls failed while they were on, and the proxy
        // withheld the messages sent into them.
        for sc in s {
            assert!(sc.connection_lost, "{sc:#?}");
            assert!(sc.counters.withheld > 0, "{sc:#?}");
        }
    }
}
