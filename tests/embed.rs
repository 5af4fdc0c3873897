//! The embedding API: in-process proxies (TCP, HTTP mode, stdio) started from a test, verbs
//! that return guards, counters and history; and the same verbs on the rmcp wrapper.

#![cfg(feature = "rmcp")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::service::ServiceError;
use rmcp::transport::IntoTransport;
use rmcp::{RoleClient, ServiceExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use brownout::embed::{EmbedError, Proxy};
use brownout::faults::PartitionMode;
use common::rmcp::{Client, bounded_client, call, sum, wrapped_client};
use common::{Dir, echo_server, round_trip};

const LONG: Duration = Duration::from_secs(20);
const SERVER: &str = env!("CARGO_BIN_EXE_brownout-mcp-server");

/// An rmcp server over Streamable HTTP, an embedded HTTP-mode proxy in front of it, and a
/// client through the proxy.
async fn http_setup(seed: u64) -> (brownout::embed::Handle, Client, common::Task) {
    let (server, task) = common::rmcp::http_server().await;
    let proxy = Proxy::http(server.to_string())
        .seed(seed)
        .start()
        .await
        .unwrap();
    let client = bounded_client(format!("http://{}/mcp", proxy.addr()), LONG).await;
    (proxy, client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_is_undone_when_the_test_holding_it_panics() {
    let (echo, _echo) = echo_server().await;
    let proxy = Arc::new(Proxy::tcp(echo.to_string()).start().await.unwrap());
    let p = proxy.clone();
    let failed = tokio::spawn(async move {
        let _slow = p.latency(Duration::from_secs(3600));
        assert_eq!(p.toxics().len(), 1);
        panic!("a failing test");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    assert!(proxy.toxics().is_empty(), "{:?}", proxy.toxics());
    // And the link no longer delays anything.
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let (back, took) = round_trip(&mut s, b"ping").await;
    assert_eq!(back, b"ping");
    assert!(took < Duration::from_secs(3600));
}

#[tokio::test]
async fn keep_leaves_a_fault_on_until_reset_and_verbs_name_their_toxics() {
    let (echo, _echo) = echo_server().await;
    let proxy = Proxy::tcp(echo.to_string()).start().await.unwrap();
    let cut = proxy.partition(PartitionMode::Drop);
    let lossy = proxy.loss(0.25);
    assert_ne!(cut.name(), lossy.name());
    cut.keep();
    drop(lossy);
    let on: Vec<_> = proxy.toxics().into_iter().map(|t| t.name).collect();
    assert_eq!(on.len(), 1, "{on:?}");
    assert!(on[0].starts_with("partition"), "{on:?}");
    assert_eq!(proxy.heal(), 1);
    let _held = proxy.hold();
    let _slow = proxy.latency(Duration::from_millis(5));
    assert_eq!(proxy.release(), 1);
    assert_eq!(proxy.reset(), 1);
    assert!(proxy.toxics().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_latency_delays_each_call_and_counters_count_what_passed() {
    let (proxy, client, _server) = http_setup(1).await;
    assert_eq!(sum(&client, 1, 2, LONG).await.unwrap(), "3");
    {
        let _slow = proxy.latency(Duration::from_millis(300));
        let t = Instant::now();
        assert_eq!(sum(&client, 2, 3, LONG).await.unwrap(), "5");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }
    let c = proxy.counters();
    // initialize and two calls, each answered; the `initialized` notification is no request.
    assert_eq!(
        (c.requests, c.forwarded, c.answers, c.errors),
        (3, 3, 3, 0),
        "{c:?}"
    );
    assert!(c.upstream.sent > 0 && c.downstream.sent > 0, "{c:?}");
    // An injected error answer is counted as an answer and an error.
    let err = proxy
        .toxic(
            r#"{"type": "mcp", "stream": "upstream",
                "attributes": {"method": "tools/call", "action": "error", "code": -32000}}"#,
        )
        .unwrap();
    let refused = sum(&client, 1, 1, LONG).await;
    assert!(
        matches!(&refused, Err(ServiceError::McpError(e)) if e.code.0 == -32000),
        "{refused:?}"
    );
    let history = proxy.history();
    assert!(
        history
            .events
            .iter()
            .any(|e| e.faults.iter().any(|f| &**f == err.name())),
        "no event names {}: {history:#?}",
        err.name()
    );
    let c = proxy.counters();
    assert_eq!(
        (c.requests, c.forwarded, c.answers, c.errors),
        (4, 3, 4, 1),
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_total_loss_drops_calls_and_dropping_its_guard_heals() {
    let (proxy, client, _server) = http_setup(1).await;
    let before = proxy.counters();
    {
        let _lossy = proxy.loss(1.0);
        let lost = sum(&client, 1, 1, Duration::from_millis(500)).await;
        assert!(
            matches!(lost, Err(ServiceError::Timeout { .. })),
            "{lost:?}"
        );
    }
    let after = proxy.counters();
    assert_eq!(after.requests, before.requests + 1, "{after:?}");
    assert_eq!(after.forwarded, before.forwarded, "{after:?}");
    assert!(after.withheld > before.withheld, "{after:?}");
    assert_eq!(sum(&client, 2, 2, LONG).await.unwrap(), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_relay_holds_calls_until_release() {
    let dir = Dir::new("embed-stdio");
    let proxy = Proxy::stdio([SERVER, "--root", dir.0.to_str().unwrap()])
        .seed(3)
        .start()
        .await
        .unwrap();
    let pipes = proxy.take_client().expect("the agent side");
    assert!(proxy.take_client().is_none(), "handed out twice");
    let transport = IntoTransport::<RoleClient, _, _>::into_transport((pipes.reader, pipes.writer));
    let client = tokio::time::timeout(LONG, ().serve(transport))
        .await
        .expect("initialized in time")
        .expect("initialize");
    let echo = |text: &'static str| call(&client, "echo", serde_json::json!({"text": text}), LONG);
    assert_eq!(echo("first").await.unwrap(), "first");

    let held = proxy.hold();
    let waiting = echo("held");
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(400), &mut waiting)
            .await
            .is_err(),
        "answered through a hold"
    );
    assert_eq!(proxy.release(), 1);
    assert_eq!(waiting.await.unwrap(), "held");
    // Released already: dropping the guard does nothing more.
    drop(held);
    let c = proxy.counters();
    assert_eq!((c.requests, c.forwarded, c.answers), (3, 3, 3), "{c:?}");
}

#[tokio::test]
async fn a_toxic_the_protocol_cannot_carry_out_is_refused_naming_type_and_protocol() {
    let (server, _task) = echo_server().await;
    let proxy = Proxy::http(server.to_string()).start().await.unwrap();
    let e = proxy
        .toxic(r#"{"type": "slow_open", "attributes": {"delay": 10}}"#)
        .err()
        .expect("refused");
    assert_eq!(e.field, "type");
    assert!(
        e.message.contains("slow_open") && e.message.contains("http"),
        "{e}"
    );
    let e = proxy.toxic(r#"{"type": "latency", "attributes": {"latency": -1}}"#);
    assert_eq!(e.err().expect("refused").field, "attributes.latency");
}

#[tokio::test]
async fn start_errors_name_what_was_wrong() {
    let missing = "/nonexistent/brownout-no-such-server";
    match Proxy::stdio([missing]).start().await {
        Err(EmbedError::Spawn { command, source }) => {
            assert_eq!(command, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let empty: [&str; 0] = [];
    assert!(matches!(
        Proxy::stdio(empty).start().await.map(|_| ()),
        Err(EmbedError::NoCommand)
    ));
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    match Proxy::tcp("127.0.0.1:9").listen(&listen).start().await {
        Err(EmbedError::Listen { listen: l, source }) => {
            assert_eq!(l, listen);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_has_the_same_verbs_and_counters() {
    let faults = brownout::mcp::Faults::new(5);
    let client = wrapped_client(&faults).await;
    assert_eq!(sum(&client, 1, 1, LONG).await.unwrap(), "2");
    {
        let _cut = faults.partition(PartitionMode::Drop);
        let lost = sum(&client, 2, 2, Duration::from_millis(300)).await;
        assert!(
            matches!(lost, Err(ServiceError::Timeout { .. })),
            "{lost:?}"
        );
    }
    assert_eq!(sum(&client, 3, 3, LONG).await.unwrap(), "6");
    let c = faults.counters();
    // initialize and three calls; the one sent into the partition never reached the server
    // (the cancellation rmcp sends after its timeout is a notification, not a request).
    assert_eq!((c.requests, c.forwarded, c.answers), (4, 3, 3), "{c:?}");
    assert_eq!(c.connections, 1);
    assert!(c.upstream.received > c.upstream.sent, "{c:?}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn counters_on_a_tcp_proxy_count_bytes_and_connections_only() {
    let (echo, _echo) = echo_server().await;
    let proxy = Proxy::tcp(echo.to_string()).start().await.unwrap();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"12345").await.0, b"12345");
        s.shutdown().await.unwrap();
    }
    let c = proxy.counters();
    assert_eq!(c.connections, 2);
    assert_eq!((c.upstream.received, c.upstream.sent), (10, 10), "{c:?}");
    assert_eq!((c.requests, c.answers), (0, 0), "{c:?}");
}
