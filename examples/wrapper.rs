//! brownout's message faults inside a Rust test, with no process or port: an rmcp client
//! and server over an in-memory pipe, the client's transport wrapped by `brownout::mcp`.
//!
//! `cargo test --example wrapper` runs it as a test (`cargo run --example wrapper` prints
//! the counters); copy it into your own crate's tests and put your server (or your agent's
//! client) where `Adder` is.

use std::time::Duration;

use brownout::faults::PartitionMode;
use brownout::mcp::Faults;
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{CallToolRequestParams, ServerCapabilities, ServerConfig};
use rmcp::service::{PeerRequestOptions, ServiceError};
use rmcp::transport::IntoTransport;
use rmcp::{RoleClient, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};

/// The server under test: one tool.
#[derive(Clone)]
struct Adder {
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

#[tool_router]
impl Adder {
    #[tool(description = "Add two numbers")]
    fn add(&self, Parameters(Add { a, b }): Parameters<Add>) -> String {
        (a + b).to_string()
    }
}

#[tool_handler]
impl ServerHandler for Adder {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

type Client = rmcp::service::RunningService<RoleClient, ()>;

async fn add(client: &Client, a: i64, b: i64, timeout: Duration) -> Result<String, ServiceError> {
    let params = CallToolRequestParams::new("add").with_arguments(
        serde_json::json!({"a": a, "b": b})
            .as_object()
            .unwrap()
            .clone(),
    );
    let reply = client
        .send_request_with_option(
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(params)),
            PeerRequestOptions::with_timeout(timeout),
        )
        .await?
        .await_response()
        .await?;
    match reply {
        rmcp::model::ServerResult::CallToolResult(r) => {
            Ok(r.content[0].as_text().expect("text").text.clone())
        }
        other => panic!("not a tool result: {other:?}"),
    }
}

/// The test's body: a call, a partition during which a call is lost, the heal, a call.
async fn partition_then_heal() -> brownout::embed::Counters {
    let faults = Faults::new(7);
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    let server = tokio::spawn(async move {
        let adder = Adder {
            tool_router: Adder::tool_router(),
        };
        if let Ok(running) = adder.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let transport = faults.wrap(IntoTransport::<RoleClient, _, _>::into_transport(client_io));
    let client = ().serve(transport).await.expect("initialize");

    assert_eq!(
        add(&client, 1, 2, Duration::from_secs(5)).await.unwrap(),
        "3"
    );
    {
        let _cut = faults.partition(PartitionMode::Drop);
        let lost = add(&client, 2, 2, Duration::from_millis(200)).await;
        assert!(
            matches!(lost, Err(ServiceError::Timeout { .. })),
            "{lost:?}"
        );
    } // healed here
    assert_eq!(
        add(&client, 3, 3, Duration::from_secs(5)).await.unwrap(),
        "6"
    );

    let counters = faults.counters();
    client.cancel().await.unwrap();
    server.await.unwrap();
    counters
}

#[tokio::main(flavor = "current_thread")]
#[cfg_attr(test, allow(dead_code))]
async fn main() {
    println!("{:?}", partition_then_heal().await);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn calls_fail_during_a_partition_and_work_once_it_heals() {
        let c = super::partition_then_heal().await;
        // initialize and three calls sent; the one into the partition never arrived.
        assert_eq!((c.requests, c.forwarded, c.answers), (4, 3, 3), "{c:?}");
    }
}
