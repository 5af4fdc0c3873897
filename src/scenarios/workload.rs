//! The workload: real MCP clients (rmcp over Streamable HTTP) making tool calls whose
//! results can be checked, through the scenario's proxies. Each call ends as exactly one
//! outcome in the [`History`].

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rmcp::model::{CallToolRequestParams, ClientRequest, Request, ServerResult};
use rmcp::service::{PeerRequestOptions, RunningService, ServiceError};
use rmcp::{RoleClient, ServiceExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::file::{CallKind, Workload};
use super::history::{Call, History, Outcome};

type Client = RunningService<RoleClient, ()>;

/// Everything the clients share.
pub struct Driver {
    pub workload: Workload,
    /// Per entry of the workload's proxy list: the proxy's index in
    /// [`Workload::proxy_names`] and its URL.
    pub routes: Vec<(u16, String)>,
    pub seed: u64,
    pub history: Arc<History>,
    /// When the workload started: calls are timed from here.
    pub start: Instant,
    /// Ends the workload early (an abort, Ctrl-C).
    pub stop: CancellationToken,
    /// Where `write_read` calls write under the server's root: [`RUN_DIR`] for the run,
    /// another for the steady-state probes, so an audit of the run reads only its own.
    pub dir: &'static str,
}

/// Where the run's writes go under the server's root.
pub const RUN_DIR: &str = "workload";

/// The file the `n`-th call of `client` writes.
pub fn write_path(dir: &str, client: u32, n: u64) -> String {
    format!("{dir}/{client}/{n}")
}

/// The texts `client` sends in its calls 1 to `upto` under `seed`, in order: what its
/// writes must have left on the server.
pub fn texts(seed: u64, client: u32, upto: u64) -> Vec<String> {
    let mut rng = client_rng(seed, client);
    (1..=upto).map(|n| token(&mut rng, client, n)).collect()
}

/// A client's own random numbers: the texts of its calls, in order, and nothing else.
fn client_rng(seed: u64, client: u32) -> fastrand::Rng {
    fastrand::Rng::with_seed(crate::faults::derive_seed(seed, &format!("client{client}")))
}

impl Driver {
    /// Run every client until the calls are done, the duration is up, or `stop` fires.
    pub async fn run(self: Arc<Self>) {
        let left = Arc::new(AtomicU64::new(self.workload.calls.unwrap_or(u64::MAX)));
        // Evenly spaced from the start: no burst of a second's calls at once.
        let pace = self.workload.rate.map(|r| {
            let quota = Quota::per_second(NonZeroU32::new(r).expect("rate > 0"))
                .allow_burst(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct(quota))
        });
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..self.workload.clients {
            let me = self.clone();
            let (left, pace) = (left.clone(), pace.clone());
            clients.spawn(async move { me.client(i as u32, &left, pace.as_deref()).await });
        }
        while clients.join_next().await.is_some() {}
    }

    fn over(&self) -> bool {
        self.stop.is_cancelled()
            || self
                .workload
                .duration
                .is_some_and(|d| self.start.elapsed() >= d)
    }

    /// One client: connect, call, and connect again after the connection was lost.
    async fn client(&self, id: u32, left: &AtomicU64, pace: Option<&DefaultDirectRateLimiter>) {
        let w = &self.workload;
        let (proxy, url) = &self.routes[id as usize % self.routes.len()];
        let mut rng = client_rng(self.seed, id);
        let mut session: Option<Client> = None;
        let mut n = 0u64;
        loop {
            if self.over() {
                break;
            }
            // Take one call of the count, if there is a count.
            if left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                .is_err()
            {
                break;
            }
            if let Some(p) = pace {
                tokio::select! {
                    _ = p.until_ready() => {}
                    _ = self.stop.cancelled() => break,
                }
            }
            n += 1;
            self.history.invoked();
            let invoke = Instant::now();
            // The same text on every attempt: a retried write is the same write.
            let text = token(&mut rng, id, n);
            let mut attempts = 0;
            let (outcome, error) = loop {
                attempts += 1;
                let (outcome, error) = self.attempt(&mut session, url, &text, id, n).await;
                let again = matches!(outcome, Outcome::Fail | Outcome::Info)
                    && attempts < w.retry.attempts
                    && !self.over();
                if !again {
                    break (outcome, error);
                }
                let backoff = w.retry.backoff * 2u32.saturating_pow(attempts - 1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = self.stop.cancelled() => break (outcome, error),
                }
            };
            self.history.record(Call {
                client: id,
                seq: n,
                proxy: *proxy,
                invoke: invoke - self.start,
                took: invoke.elapsed(),
                outcome,
                attempts,
                explained: outcome == Outcome::Fail && error.as_deref().is_some_and(explained),
                error: error.map(String::into_boxed_str),
            });
            if outcome == Outcome::Fail && session.is_none() {
                // No connection: do not spin against a refusing proxy.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = self.stop.cancelled() => break,
                }
            }
        }
        if let Some(c) = session {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.cancel()).await;
        }
    }

    /// Send one call once, connecting first if there is no session; bounded by the
    /// timeout (and the grace, past which it is hung).
    async fn attempt(
        &self,
        session: &mut Option<Client>,
        url: &str,
        text: &str,
        id: u32,
        n: u64,
    ) -> (Outcome, Option<String>) {
        let w = &self.workload;
        // One budget for the whole attempt: connecting, and each request it makes.
        let deadline = Instant::now() + w.timeout;
        let call = async {
            if session.is_none() {
                match connect(url, w.timeout).await {
                    Ok(c) => *session = Some(c),
                    Err(e) => return (Outcome::Fail, Some(format!("connect: {e}"))),
                }
            }
            let client = session.as_ref().expect("connected");
            one_call(client, w.call, self.dir, text, id, n, deadline).await
        };
        let (outcome, error) = tokio::select! {
            r = tokio::time::timeout(w.timeout + w.grace, call) => match r {
                Ok(r) => r,
                Err(_) => (Outcome::Hung, Some(format!("no end within {:?}", w.timeout + w.grace))),
            },
            _ = self.stop.cancelled() => (Outcome::Info, Some("the run was stopped".into())),
        };
        // After anything but a clean answer the connection may be gone: start afresh,
        // as an agent that reconnects would.
        if !matches!(outcome, Outcome::Ok | Outcome::Mismatched) {
            *session = None;
        }
        (outcome, error)
    }
}

/// An rmcp client over Streamable HTTP that gives up resuming a cut stream after two
/// tries (rmcp's default retries forever), initialized within `within`.
async fn connect(url: &str, within: Duration) -> Result<Client, String> {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::common::client_side_sse::ExponentialBackoff;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let mut backoff = ExponentialBackoff::default();
    backoff.max_times = Some(2);
    backoff.base_duration = Duration::from_millis(100);
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    config.retry_config = Arc::new(backoff);
    let transport = StreamableHttpClientTransport::from_config(config);
    match tokio::time::timeout(within, ().serve(transport)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer to initialize within {within:?}")),
    }
}

/// A text no other call sends: what comes back must be it.
fn token(rng: &mut fastrand::Rng, client: u32, n: u64) -> String {
    let noise: String = std::iter::repeat_with(|| rng.alphanumeric())
        .take(16)
        .collect();
    format!("c{client}-{n}-{noise}")
}

async fn one_call(
    client: &Client,
    kind: CallKind,
    dir: &str,
    text: &str,
    id: u32,
    n: u64,
    deadline: Instant,
) -> (Outcome, Option<String>) {
    match kind {
        CallKind::Echo => {
            let r = tool(client, "echo", serde_json::json!({"text": text}), deadline).await;
            verify(r, text)
        }
        CallKind::WriteRead => {
            let path = write_path(dir, id, n);
            let args = serde_json::json!({"path": path, "content": text});
            let want = format!("wrote {} bytes to {path}", text.len());
            match verify(tool(client, "write_file", args, deadline).await, &want) {
                (Outcome::Ok, _) => {}
                other => return other,
            }
            let r = tool(
                client,
                "read_file",
                serde_json::json!({"path": path}),
                deadline,
            )
            .await;
            match verify(r, text) {
                // The write happened; only reading it back failed: its effect is known, but
                // not checked.
                (Outcome::Fail, e) => (Outcome::Info, e.map(|e| format!("read back: {e}"))),
                other => other,
            }
        }
        CallKind::Sleep(d) => {
            let ms = d.as_millis() as u64;
            let r = tool(client, "sleep", serde_json::json!({"ms": ms}), deadline).await;
            verify(r, &format!("slept {ms} ms"))
        }
    }
}

/// How a call's error reads when the server answered with an error: a tool's `isError`
/// answer, or a JSON-RPC error.
const TOOL_ERROR: &str = "tool error: ";
const RPC_ERROR: &str = "error ";

/// Whether a failed call's error is an answer from the server that says why.
fn explained(error: &str) -> bool {
    error.starts_with(TOOL_ERROR) || error.starts_with(RPC_ERROR)
}

/// How long past a call's deadline the client waits for rmcp to give up by itself.
const SEND_SLACK: Duration = Duration::from_millis(200);

/// The outcome of an answer that should be `want`.
fn verify(r: Result<ToolAnswer, ServiceError>, want: &str) -> (Outcome, Option<String>) {
    match r {
        Ok(ToolAnswer::Text(t)) if t == want => (Outcome::Ok, None),
        Ok(ToolAnswer::Text(t)) => (
            Outcome::Mismatched,
            Some(format!("answered {:?}, expected {want:?}", clip(&t))),
        ),
        Ok(ToolAnswer::Error(e)) => (Outcome::Fail, Some(format!("{TOOL_ERROR}{}", clip(&e)))),
        Err(ServiceError::McpError(e)) => (
            Outcome::Fail,
            Some(format!("{RPC_ERROR}{}: {}", e.code.0, clip(&e.message))),
        ),
        Err(ServiceError::Timeout { timeout }) => (
            Outcome::Info,
            Some(format!("{} after {timeout:?}", super::history::TIMED_OUT)),
        ),
        Err(e) => (
            Outcome::Info,
            Some(format!("connection: {}", clip(&e.to_string()))),
        ),
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(120) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

enum ToolAnswer {
    Text(String),
    /// The tool answered with `isError`.
    Error(String),
}

async fn tool(
    client: &Client,
    name: &'static str,
    args: serde_json::Value,
    deadline: Instant,
) -> Result<ToolAnswer, ServiceError> {
    let serde_json::Value::Object(args) = args else {
        unreachable!("tool arguments are objects")
    };
    let timeout = deadline.saturating_duration_since(Instant::now());
    if timeout.is_zero() {
        return Err(ServiceError::Timeout { timeout });
    }
    let params = CallToolRequestParams::new(name).with_arguments(args);
    let call = async {
        client
            .send_request_with_option(
                ClientRequest::CallToolRequest(Request::new(params)),
                PeerRequestOptions::with_timeout(timeout),
            )
            .await?
            .await_response()
            .await
    };
    // rmcp's own timeout covers waiting for the answer, not a send the network stalls (a
    // POST to a guest that is gone, or into a blackhole): the call is bounded here too, as
    // an agent with a deadline bounds it. A little later than rmcp's, so that where rmcp
    // can, it times out itself and tells the server it gave up (notifications/cancelled).
    let reply = match tokio::time::timeout_at(deadline + SEND_SLACK, call).await {
        Ok(r) => r?,
        Err(_) => return Err(ServiceError::Timeout { timeout }),
    };
    let ServerResult::CallToolResult(result) = reply else {
        return Err(ServiceError::UnexpectedResponse);
    };
    let text = result
        .content
        .iter()
        .find_map(|c| c.as_text().map(|t| t.text.clone()))
        .unwrap_or_default();
    Ok(if result.is_error == Some(true) {
        ToolAnswer::Error(text)
    } else {
        ToolAnswer::Text(text)
    })
}
