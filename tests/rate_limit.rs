//! `rate_limit` with real MCP peers: HTTP mode answers 429 with Retry-After, stdio and the
//! wrapper answer a JSON-RPC error, `queue` throttles; and where it cannot act, it is refused.

#![cfg(feature = "rmcp")]

mod common;

use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::service::ServiceError;
use rmcp::transport::IntoTransport;
use serde_json::json;

use brownout::embed::Proxy;
use common::rmcp::{bounded_client, call, sum, wrapped_client};
use common::{Brownout, Dir, http};

const LONG: Duration = Duration::from_secs(20);
const SERVER: &str = env!("CARGO_BIN_EXE_brownout-mcp-server");

fn limited(attributes: serde_json::Value) -> String {
    json!({"type": "rate_limit", "stream": "upstream", "attributes": attributes}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_answers_requests_over_the_limit_with_429_and_retry_after() {
    let (server, _task) = common::rmcp::http_server().await;
    let proxy = Proxy::http(server.to_string()).start().await.unwrap();
    let client = bounded_client(format!("http://{}/mcp", proxy.addr()), LONG).await;
    let _limit = proxy
        .toxic(&limited(
            json!({"rate": 1, "method": "tools/call", "reply": "status"}),
        ))
        .unwrap();
    assert_eq!(sum(&client, 1, 2, LONG).await.unwrap(), "3");
    // The next call within the second is refused by "the server", as HTTP.
    let refused = sum(&client, 2, 2, LONG).await;
    assert!(
        matches!(&refused, Err(ServiceError::TransportSend(_))),
        "{refused:?}"
    );
    assert!(format!("{refused:?}").contains("429"), "{refused:?}");
    // What the client was told, on the wire.
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "sum", "arguments": {"a": 1, "b": 1}}})
    .to_string();
    let r = http(
        proxy.addr(),
        "POST",
        "/mcp",
        Some(&body),
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "1");
    let c = proxy.counters();
    assert_eq!(c.forwarded + 2, c.requests, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_answers_an_error_over_the_limit_and_queue_throttles() {
    let dir = Dir::new("rate-limit-stdio");
    let proxy = Proxy::stdio([SERVER, "--root", dir.0.to_str().unwrap()])
        .start()
        .await
        .unwrap();
    let pipes = proxy.take_client().unwrap();
    let client = ()
        .serve(IntoTransport::<rmcp::RoleClient, _, _>::into_transport((
            pipes.reader,
            pipes.writer,
        )))
        .await
        .unwrap();
    let echo = async |text: &str| call(&client, "echo", json!({"text": text}), LONG).await;
    {
        let _limit = proxy
            .toxic(&limited(
                json!({"rate": 1, "tool": "echo", "code": -32029, "message": "slow down"}),
            ))
            .unwrap();
        assert_eq!(echo("one").await.unwrap(), "one");
        match echo("two").await {
            Err(ServiceError::McpError(e)) => {
                assert_eq!(e.code.0, -32029);
                assert!(e.message.starts_with("slow down (retry after "), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    let _throttle = proxy
        .toxic(&limited(
            json!({"rate": 5, "tool": "echo", "reply": "queue"}),
        ))
        .unwrap();
    let t = Instant::now();
    for i in 0..4 {
        assert_eq!(echo(&i.to_string()).await.unwrap(), i.to_string());
    }
    // One slot each 200 ms: the first goes at once, the other three wait their turn.
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    let c = proxy.counters();
    assert_eq!(c.errors, 1, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_answers_an_error_over_the_limit() {
    let faults = brownout::mcp::Faults::new(1);
    let client = wrapped_client(&faults).await;
    let _limit = faults
        .toxic(&limited(
            json!({"rate": 1, "burst": 2, "method": "tools/call"}),
        ))
        .unwrap();
    assert_eq!(sum(&client, 1, 1, LONG).await.unwrap(), "2");
    assert_eq!(sum(&client, 1, 2, LONG).await.unwrap(), "3");
    let refused = sum(&client, 1, 3, LONG).await;
    assert!(
        matches!(&refused, Err(ServiceError::McpError(e)) if e.code.0 == -32000),
        "{refused:?}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn rate_limit_is_refused_where_it_cannot_act() {
    let b = Brownout::start(1).await;
    let (_addr, _echo) = b.echo_proxy("tcp").await;
    let r = b
        .http(
            "POST",
            "/proxies/tcp/toxics",
            Some(&limited(json!({"rate": 1}))),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("rate_limit is not supported on tcp proxies"),
        "{}",
        r.body
    );
    let faults = brownout::mcp::Faults::new(1);
    let e = faults
        .toxic(&limited(json!({"rate": 1, "reply": "status"})))
        .err()
        .expect("refused");
    assert_eq!(e.field, "type");
    assert!(e.message.contains("HTTP status"), "{e}");
}
