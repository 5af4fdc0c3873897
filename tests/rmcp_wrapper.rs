//! The in-process wrapper: a real rmcp client and a real rmcp server, joined by an in-memory
//! stream, with brownout's faults wrapped around one side's transport.

mod common;

use std::time::{Duration, Instant};

use rmcp::service::ServiceError;
use rmcp::transport::IntoTransport;
use rmcp::{RoleClient, RoleServer, ServiceExt};

use brownout::mcp::Faults;
use common::rmcp::{Calculator, Client, sum};

/// A client and a server over an in-memory stream, with `client_faults` around the client's
/// transport and `server_faults` around the server's.
async fn pair(client_faults: &Faults, server_faults: &Faults) -> Client {
    let (c, s) = tokio::io::duplex(64 << 10);
    let server_transport = server_faults.wrap(IntoTransport::<RoleServer, _, _>::into_transport(s));
    tokio::spawn(async move {
        if let Ok(server) = Calculator::new().serve(server_transport).await {
            let _ = server.waiting().await;
        }
    });
    let client_transport = client_faults.wrap(IntoTransport::<RoleClient, _, _>::into_transport(c));
    ().serve(client_transport)
        .await
        .expect("initialize through the wrapper")
}

const LONG: Duration = Duration::from_secs(10);

/// `call` does not finish while toxic `name` holds it, and does once it is removed (with
/// nothing else sent to set it free).
async fn held_until_removed(
    faults: &Faults,
    name: &str,
    call: tokio::task::JoinHandle<Result<rmcp::model::CallToolResult, ServiceError>>,
) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!call.is_finished(), "a held call was answered");
    assert!(faults.remove(name));
    let r = tokio::time::timeout(LONG, call)
        .await
        .expect("let go when the toxic was removed")
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

/// `sum(a, b)` as a task of its own, with no timeout: for calls a fault holds back.
fn spawn_sum(
    client: &Client,
    a: i64,
    b: i64,
) -> tokio::task::JoinHandle<Result<rmcp::model::CallToolResult, ServiceError>> {
    let peer = client.peer().clone();
    let args = serde_json::json!({"a": a, "b": b});
    let params = rmcp::model::CallToolRequestParams::new("sum")
        .with_arguments(args.as_object().unwrap().clone());
    tokio::spawn(async move { peer.call_tool(params).await })
}

#[tokio::test]
async fn transparent_without_faults() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    assert_eq!(sum(&client, 2, 40, LONG).await.unwrap(), "42");
}

#[tokio::test]
async fn injected_error_arrives_as_that_error_and_can_be_removed() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    cf.add(r#"{"name": "e", "type": "mcp", "stream": "upstream",
               "attributes": {"tool": "sum", "action": "error", "code": -32050, "message": "injected"}}"#)
        .unwrap();
    match sum(&client, 1, 1, LONG).await {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code.0, -32050);
            assert_eq!(e.message, "injected");
        }
        other => panic!("expected the injected error, got {other:?}"),
    }
    assert!(cf.remove("e"));
    assert_eq!(sum(&client, 1, 1, LONG).await.unwrap(), "2");
}

#[tokio::test]
async fn a_dropped_response_times_out_and_the_next_call_works() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    // On the server's side this time: the response it sends is lost.
    sf.add(r#"{"type": "mcp", "stream": "downstream", "attributes": {"method": "tools/call", "nth": 1, "action": "drop"}}"#)
        .unwrap();
    let t = Instant::now();
    let r = sum(&client, 1, 2, Duration::from_millis(300)).await;
    assert!(matches!(r, Err(ServiceError::Timeout { .. })), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(sum(&client, 1, 2, LONG).await.unwrap(), "3");
}

#[tokio::test]
async fn a_delayed_request_arrives_late() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    sf.add(r#"{"type": "mcp", "stream": "upstream", "attributes": {"tool": "sum", "action": "delay", "delay": 300}}"#)
        .unwrap();
    let t = Instant::now();
    assert_eq!(sum(&client, 20, 22, LONG).await.unwrap(), "42");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn duplicated_responses_are_ignored_by_the_client() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    cf.add(r#"{"type": "mcp", "stream": "downstream", "attributes": {"method": "tools/call", "action": "duplicate"}}"#)
        .unwrap();
    for i in 0..3 {
        assert_eq!(sum(&client, i, 1, LONG).await.unwrap(), (i + 1).to_string());
    }
}

#[tokio::test]
async fn close_ends_the_transport() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    cf.add(r#"{"type": "mcp", "stream": "downstream", "attributes": {"method": "tools/call", "action": "close"}}"#)
        .unwrap();
    let r = sum(&client, 1, 1, LONG).await;
    assert!(r.is_err(), "a closed transport answers nothing: {r:?}");
}

#[test]
fn bad_specs_are_refused_with_the_field_named() {
    let f = Faults::new(1);
    let e = f
        .add(r#"{"type": "mcp", "attributes": {"action": "explode"}}"#)
        .unwrap_err();
    assert_eq!(e.field, "attributes.action");
    f.add(r#"{"name": "x", "type": "noop"}"#).unwrap();
    let e = f.add(r#"{"name": "x", "type": "noop"}"#).unwrap_err();
    assert_eq!(e.field, "name");
    assert!(!f.remove("nope"));
}

#[tokio::test]
async fn held_sends_go_out_together_and_removing_the_hold_lets_go() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    // On the client's own sends: three calls are held, then go out shuffled.
    cf.add(
        r#"{"name": "h", "type": "mcp", "stream": "upstream",
               "attributes": {"tool": "sum", "action": "hold", "count": 3, "order": "shuffled"}}"#,
    )
    .unwrap();
    let (a, b, c) = tokio::join!(
        sum(&client, 1, 1, LONG),
        sum(&client, 2, 2, LONG),
        sum(&client, 3, 3, LONG)
    );
    assert_eq!(
        (a.unwrap(), b.unwrap(), c.unwrap()),
        ("2".into(), "4".into(), "6".into())
    );

    // One more is held (one of three); removing the toxic lets it go.
    held_until_removed(&cf, "h", spawn_sum(&client, 5, 5)).await;
}

#[tokio::test]
async fn removing_a_hold_on_what_arrives_lets_it_go() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let mut events = cf.events();
    let client = pair(&cf, &sf).await;
    // On what the client receives: the answer is held (one of two).
    cf.add(
        r#"{"name": "h", "type": "mcp", "stream": "downstream",
               "attributes": {"tool": "sum", "action": "hold", "count": 2}}"#,
    )
    .unwrap();
    held_until_removed(&cf, "h", spawn_sum(&client, 20, 22)).await;
    let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let answer = common::fates(&seen, "downstream", "sum");
    assert_eq!(answer, [(0, false), (1, true)], "{seen:#?}");
}

#[tokio::test]
async fn the_history_shows_what_became_of_each_message() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let mut events = cf.events();
    let client = pair(&cf, &sf).await;
    cf.add(r#"{"name": "e", "type": "mcp", "stream": "upstream",
               "attributes": {"tool": "sum", "action": "error", "code": -32050, "message": "injected"}}"#)
        .unwrap();
    assert!(sum(&client, 1, 1, LONG).await.is_err());
    let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let handshake = seen
        .iter()
        .find(|e| e.method.as_deref() == Some("initialize") && e.kind == "request")
        .unwrap_or_else(|| panic!("no initialize in {seen:#?}"));
    assert_eq!(
        (&*handshake.proxy, handshake.direction, handshake.delivered),
        ("wrapper", "upstream", 1)
    );
    let call = seen
        .iter()
        .find(|e| e.tool.as_deref() == Some("sum") && e.kind == "request")
        .unwrap_or_else(|| panic!("no call in {seen:#?}"));
    assert!(call.answered && call.delivered == 0, "{call:#?}");
    assert_eq!(call.faults.iter().map(|f| &**f).collect::<Vec<_>>(), ["e"]);
    let reply = seen
        .iter()
        .find(|e| e.injected)
        .unwrap_or_else(|| panic!("no injected reply in {seen:#?}"));
    assert_eq!((reply.direction, reply.kind), ("downstream", "error"));
}
