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

/// How one entry of the workload's proxy list is reached.
#[derive(Clone)]
pub struct Route {
    /// The proxy's index in [`Workload::proxy_names`].
    pub proxy: u16,
    /// Its URL (`stdio:NAME` for a stdio proxy).
    pub url: String,
    /// For a stdio proxy: how a client starts its own server behind it.
    pub stdio: Option<Arc<StdioRoute>>,
}

/// A stdio proxy of the control plane: each client's session is a server process of its
/// own, relayed through the proxy's faults, as an agent starts its stdio servers.
pub struct StdioRoute {
    pub command: Vec<std::ffi::OsString>,
    pub name: Arc<str>,
    pub seed: u64,
    pub toxics: tokio::sync::watch::Receiver<Arc<[crate::faults::ToxicSpec]>>,
    pub stats: Arc<crate::proxy::ProxyStats>,
    pub events: crate::proxy::events::EventSink,
    /// Where the servers' stderr goes.
    pub log: std::path::PathBuf,
}

/// A client's connection: its MCP session, and on a stdio route the relay that runs its
/// server (which ends when the session's pipes close).
struct Session {
    client: Client,
    relay: Option<tokio::task::JoinHandle<()>>,
}

/// What one client keeps between calls.
struct Conn {
    session: Option<Session>,
    /// Sessions started so far (a stdio relay's connection number).
    sessions: u64,
    /// Its HTTP client, whose connections outlive a session, as an agent's do.
    http: reqwest::Client,
}

/// An HTTP client that keeps connections alive between calls. rmcp's own makes a
/// connection per request (to dodge a delayed-ACK stall when a stream is dropped before
/// its end), which costs more than the call on loopback.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client with no TLS and no proxy settings builds")
}

/// How long a stdio session's relay may take to end once its pipes are closed: the
/// relay's own bound (the server's exit grace, then SIGTERM, then SIGKILL) and some.
const RELAY_END: Duration = Duration::from_secs(10);

/// Everything the clients share.
pub struct Driver {
    pub workload: Workload,
    /// One per entry of the workload's proxy list.
    pub routes: Vec<Route>,
    pub seed: u64,
    pub history: Arc<History>,
    /// When the workload started: calls are timed from here.
    pub start: Instant,
    /// Ends the workload early (an abort, Ctrl-C).
    pub stop: CancellationToken,
    /// Where `write_read` calls write under the server's root: [`RUN_DIR`] for the run,
    /// another for the steady-state probes, so an audit of the run reads only its own.
    pub dir: &'static str,
    /// Relays of ended stdio sessions, awaited before the workload is done.
    pub ending: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Where the run's writes go under the server's root.
pub const RUN_DIR: &str = "workload";

/// The file the `n`-th call of `client` writes.
pub fn write_path(dir: &str, client: u32, n: u64) -> String {
    format!("{dir}/{client}/{n}")
}

/// The log every `append` call of `client` adds its line to, under `dir`.
pub fn append_path(dir: &str, client: u32) -> String {
    format!("{dir}/{}", append_log(client))
}

pub fn append_log(client: u32) -> String {
    format!("{client}.log")
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
        let ending = std::mem::take(&mut *self.ending.lock().unwrap_or_else(|e| e.into_inner()));
        for relay in ending {
            let abort = relay.abort_handle();
            if tokio::time::timeout(RELAY_END, relay).await.is_err() {
                // Aborting drops the relay, and with it the server (kill on drop).
                abort.abort();
            }
        }
    }

    /// Close a session: its pipes close with it, and its relay then ends its server.
    fn close(&self, session: Session) {
        drop(session.client);
        if let Some(r) = session.relay {
            self.ending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(r);
        }
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
        let route = &self.routes[id as usize % self.routes.len()];
        let proxy = &route.proxy;
        let mut rng = client_rng(self.seed, id);
        let mut conn = Conn {
            session: None,
            sessions: 0,
            http: http_client(),
        };
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
                let (outcome, error) = self.attempt(&mut conn, route, &text, id, n).await;
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
            if outcome == Outcome::Fail && conn.session.is_none() {
                // No connection: do not spin against a refusing proxy.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = self.stop.cancelled() => break,
                }
            }
        }
        if let Some(s) = conn.session {
            if s.relay.is_none() {
                let _ = tokio::time::timeout(Duration::from_secs(1), s.client.cancel()).await;
            } else {
                self.close(s);
            }
        }
    }

    /// Send one call once, connecting first if there is no session; bounded by the
    /// timeout (and the grace, past which it is hung).
    async fn attempt(
        &self,
        conn: &mut Conn,
        route: &Route,
        text: &str,
        id: u32,
        n: u64,
    ) -> (Outcome, Option<String>) {
        let w = &self.workload;
        // One budget for the whole attempt: connecting, and each request it makes.
        let deadline = Instant::now() + w.timeout;
        let Conn {
            session,
            sessions,
            http,
        } = conn;
        let call = async {
            if session.is_none() {
                let started = match &route.stdio {
                    None => connect(http, &route.url, w.timeout)
                        .await
                        .map(|client| Session {
                            client,
                            relay: None,
                        }),
                    Some(s) => {
                        *sessions += 1;
                        // Each of a client's servers its own connection number.
                        let index = u64::from(id) * 1_000_000 + *sessions;
                        connect_stdio(s, index, w.timeout, self).await
                    }
                };
                match started {
                    Ok(s) => *session = Some(s),
                    Err(e) => return (Outcome::Fail, Some(format!("connect: {e}"))),
                }
            }
            let client = &session.as_ref().expect("connected").client;
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
        // with new connections, as an agent that reconnects would.
        if !matches!(outcome, Outcome::Ok | Outcome::Mismatched) {
            *http = http_client();
            if let Some(s) = session.take() {
                self.close(s);
            }
        }
        (outcome, error)
    }
}

/// Start the route's server through its stdio proxy and initialize an rmcp client on the
/// agent's side of the pipes, within `within`.
async fn connect_stdio(
    route: &StdioRoute,
    index: u64,
    within: Duration,
    driver: &Driver,
) -> Result<Session, String> {
    use crate::proxy::stdio;
    use rmcp::transport::IntoTransport;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&route.log)
        .map_err(|e| format!("{}: {e}", route.log.display()))?;
    let server =
        stdio::Server::spawn_with(&route.command, log.into()).map_err(|e| e.to_string())?;
    let opts = stdio::StdioOptions {
        seed: route.seed,
        index,
        toxics: route.toxics.clone(),
        stats: route.stats.clone(),
        events: Some(route.events.clone()),
        name: route.name.clone(),
    };
    let stdio::InProcess {
        reader,
        writer,
        relay,
    } = stdio::in_process(server, opts).map_err(|e| e.to_string())?;
    let transport = IntoTransport::<RoleClient, _, _>::into_transport((reader, writer));
    let client = match tokio::time::timeout(within, ().serve(transport)).await {
        Ok(Ok(c)) => c,
        failed => {
            // The relay ends once the transport's pipes are dropped.
            driver
                .ending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(relay);
            return Err(match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer to initialize within {within:?}"),
            });
        }
    };
    Ok(Session {
        client,
        relay: Some(relay),
    })
}

/// An rmcp client over Streamable HTTP that gives up resuming a cut stream after two
/// tries (rmcp's default retries forever), initialized within `within`.
async fn connect(http: &reqwest::Client, url: &str, within: Duration) -> Result<Client, String> {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::common::client_side_sse::ExponentialBackoff;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let mut backoff = ExponentialBackoff::default();
    backoff.max_times = Some(2);
    backoff.base_duration = Duration::from_millis(100);
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    config.retry_config = Arc::new(backoff);
    let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
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
        CallKind::Append => {
            let path = append_path(dir, id);
            let line = format!("{text}\n");
            let want = format!("appended {} bytes to {path}", line.len());
            let args = serde_json::json!({"path": path, "content": line});
            verify(tool(client, "append_file", args, deadline).await, &want)
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
