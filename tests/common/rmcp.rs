//! rmcp peers for the tests: a calculator server with one tool, and a way to call tools
//! with a timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{
    CallToolRequestParams, ClientRequest, Request, ServerCapabilities, ServerConfig, ServerResult,
};
use rmcp::service::{PeerRequestOptions, RunningService, ServiceError};
use rmcp::{RoleClient, ServerHandler, schemars, tool, tool_handler, tool_router};

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SumRequest {
    a: i64,
    b: i64,
}

#[derive(Debug, Clone)]
pub struct Calculator {
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
    /// How many `sum` calls the server has run, so a test can count what reached it.
    pub calls: Arc<AtomicUsize>,
}

impl Calculator {
    pub fn new() -> Calculator {
        Calculator {
            tool_router: Calculator::tool_router(),
            calls: Arc::default(),
        }
    }
}

#[tool_router]
impl Calculator {
    #[tool(description = "Add two numbers")]
    fn sum(&self, Parameters(SumRequest { a, b }): Parameters<SumRequest>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        (a + b).to_string()
    }
}

#[tool_handler]
impl ServerHandler for Calculator {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

pub type Client = RunningService<RoleClient, ()>;

/// Call `tool` with `args`, waiting at most `timeout`; the first text content of the result.
pub async fn call(
    client: &Client,
    tool: &'static str,
    args: serde_json::Value,
    timeout: Duration,
) -> Result<String, ServiceError> {
    let params =
        CallToolRequestParams::new(tool).with_arguments(args.as_object().expect("object").clone());
    let reply = client
        .send_request_with_option(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::with_timeout(timeout),
        )
        .await?
        .await_response()
        .await?;
    let ServerResult::CallToolResult(result) = reply else {
        panic!("not a tool result: {reply:?}");
    };
    Ok(result.content[0].as_text().expect("text").text.clone())
}

/// `sum(a, b)`.
pub async fn sum(
    client: &Client,
    a: i64,
    b: i64,
    timeout: Duration,
) -> Result<String, ServiceError> {
    call(client, "sum", serde_json::json!({"a": a, "b": b}), timeout).await
}

/// A fresh brownout with an HTTP-mode proxy `name` in front of `upstream`: brownout, the
/// proxy's address, and a [`bounded_client`] through it.
pub async fn through_brownout(
    name: &str,
    upstream: std::net::SocketAddr,
    within: Duration,
) -> (super::Brownout, std::net::SocketAddr, Client) {
    let b = super::Brownout::start(1).await;
    let proxy = b
        .proxy_of(brownout::proxy::Protocol::Http, name, upstream)
        .await;
    let client = bounded_client(format!("http://{proxy}/mcp"), within).await;
    (b, proxy, client)
}

/// An rmcp Streamable HTTP client that gives up resuming a cut stream after two tries, as
/// an agent with a retry budget would (rmcp's default retries forever); it must finish
/// initializing within `within`.
pub async fn bounded_client(url: String, within: Duration) -> Client {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::common::client_side_sse::ExponentialBackoff;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let mut backoff = ExponentialBackoff::default();
    backoff.max_times = Some(2);
    backoff.base_duration = Duration::from_millis(100);
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    config.retry_config = std::sync::Arc::new(backoff);
    let transport = StreamableHttpClientTransport::from_config(config);
    tokio::time::timeout(within, ().serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize")
}

/// A [`Calculator`] on an in-memory stream, and an rmcp client whose transport `faults`
/// wraps.
pub async fn wrapped_client(faults: &brownout::mcp::Faults) -> Client {
    use rmcp::ServiceExt;
    use rmcp::transport::IntoTransport;
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(s) = Calculator::new().serve(server_io).await {
            let _ = s.waiting().await;
        }
    });
    let transport = IntoTransport::<RoleClient, _, _>::into_transport(client_io);
    ().serve(faults.wrap(transport))
        .await
        .expect("initialize through the wrapper")
}

/// rmcp's Streamable HTTP server (sessions on) with a [`Calculator`] on a free loopback
/// port, on plain hyper.
pub async fn http_server() -> (std::net::SocketAddr, super::Task) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let service = StreamableHttpService::new(
        || Ok(Calculator::new()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, super::Task(task))
}

/// `cmd` started with an rmcp client on its pipes, the client starting its lifecycle as
/// `mode` says. The process is killed when the child is dropped.
pub async fn stdio_client(
    mut cmd: tokio::process::Command,
    mode: rmcp::ClientLifecycleMode,
) -> (tokio::process::Child, Client) {
    use rmcp::ClientServiceExt;
    use rmcp::transport::IntoTransport;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let io = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let transport = IntoTransport::<RoleClient, _, _>::into_transport(io);
    let start = ().serve_with_lifecycle(transport, mode);
    let client = tokio::time::timeout(Duration::from_secs(20), start)
        .await
        .expect("started in time")
        .expect("start");
    (child, client)
}
