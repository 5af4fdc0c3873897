//! The in-process wrapper: a real rmcp client and a real rmcp server, joined by an in-memory
//! stream, with brownout's faults wrapped around one side's transport.

#![cfg(feature = "rmcp")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use rmcp::service::ServiceError;
use rmcp::transport::IntoTransport;
use rmcp::{RoleClient, RoleServer, ServiceExt};

use brownout::mcp::{Event, Faults};
use common::rmcp::{Calculator, Client, sum};

/// A client and a server over an in-memory stream, with `client_faults` around the client's
/// transport and `server_faults` around the server's.
async fn pair(client_faults: &Faults, server_faults: &Faults) -> Client {
    pair_counting(client_faults, server_faults).await.0
}

/// [`pair`], and the count of `sum` calls the server has run.
async fn pair_counting(
    client_faults: &Faults,
    server_faults: &Faults,
) -> (Client, Arc<AtomicUsize>) {
    let (c, s) = tokio::io::duplex(64 << 10);
    let server_transport = server_faults.wrap(IntoTransport::<RoleServer, _, _>::into_transport(s));
    let calculator = Calculator::new();
    let calls = calculator.calls.clone();
    tokio::spawn(async move {
        if let Ok(server) = calculator.serve(server_transport).await {
            let _ = server.waiting().await;
        }
    });
    let client_transport = client_faults.wrap(IntoTransport::<RoleClient, _, _>::into_transport(c));
    let client = ().serve(client_transport).await.expect("initialize through the wrapper");
    (client, calls)
}

/// Everything `events` has received so far.
fn drain(events: &mut broadcast::Receiver<Arc<Event>>) -> Vec<Arc<Event>> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

/// The ids of the `sum` requests in `seen` that went `direction`, in the order they came.
fn sum_request_ids(seen: &[Arc<Event>]) -> Vec<serde_json::Value> {
    seen.iter()
        .filter(|e| e.kind == "request" && e.tool.as_deref() == Some("sum"))
        .map(|e| e.id.clone().expect("a request has an id"))
        .collect()
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
async fn duplicated_responses_reach_the_client_twice_and_are_ignored() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let mut events = cf.events();
    let client = pair(&cf, &sf).await;
    cf.add(r#"{"type": "mcp", "stream": "downstream", "attributes": {"method": "tools/call", "action": "duplicate"}}"#)
        .unwrap();
    for i in 0..3 {
        assert_eq!(sum(&client, i, 1, LONG).await.unwrap(), (i + 1).to_string());
    }
    // Each answer was handed to the client twice; the client took the first of each.
    let seen = drain(&mut events);
    let answers = common::fates(&seen, "downstream", "sum");
    assert_eq!(answers, [(2, false); 3], "{seen:#?}");
}

#[tokio::test]
async fn a_duplicated_request_runs_twice_on_the_server_and_answers_once() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let (client, calls) = pair_counting(&cf, &sf).await;
    cf.add(r#"{"type": "mcp", "stream": "upstream", "attributes": {"tool": "sum", "action": "duplicate"}}"#)
        .unwrap();
    assert_eq!(sum(&client, 2, 3, LONG).await.unwrap(), "5");
    // The copy's answer may still be on its way when the first one arrives.
    let deadline = Instant::now() + LONG;
    while calls.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the server ran the call twice"
    );
    // The stray second answer did not break the session.
    assert_eq!(sum(&client, 1, 1, LONG).await.unwrap(), "2");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn close_ends_the_transport() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    cf.add(r#"{"type": "mcp", "stream": "downstream", "attributes": {"method": "tools/call", "action": "close"}}"#)
        .unwrap();
    let t = Instant::now();
    let r = sum(&client, 1, 1, LONG).await;
    assert!(
        matches!(r, Err(ServiceError::TransportClosed)),
        "a closed transport fails the call as closed: {r:?}"
    );
    assert!(t.elapsed() < LONG / 2, "it took {:?}", t.elapsed());
}

/// `limit_time` in the wrapper: calls pass while its time runs, then the transport ends by
/// itself, with no message to carry the news.
#[tokio::test]
async fn limit_time_ends_the_transport_once_its_time_is_up() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    let added = Instant::now();
    cf.add(r#"{"type": "limit_time", "attributes": {"time": 400}}"#)
        .unwrap();
    assert_eq!(sum(&client, 1, 2, LONG).await.unwrap(), "3");
    let quit = tokio::time::timeout(LONG, client.waiting())
        .await
        .expect("the client's service ends");
    assert!(
        matches!(quit, Ok(rmcp::service::QuitReason::Closed)),
        "{quit:?}"
    );
    let took = added.elapsed();
    assert!(took >= Duration::from_millis(400), "ended after {took:?}");
    assert!(took < LONG / 2, "ended after {took:?}");
}

/// A `timeout` in the wrapper swallows the call and ends the transport its time later.
#[tokio::test]
async fn a_timeout_ends_the_transport_its_time_after_it_swallowed_a_call() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    cf.add(r#"{"type": "timeout", "stream": "upstream", "attributes": {"timeout": 300}}"#)
        .unwrap();
    let t = Instant::now();
    let r = sum(&client, 1, 2, LONG).await;
    assert!(matches!(r, Err(ServiceError::TransportClosed)), "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < LONG / 2, "{:?}", t.elapsed());
}

/// A `refuse` partition in the wrapper ends the transport at once.
#[tokio::test]
async fn a_refusing_partition_ends_the_transport_at_once() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    cf.add(r#"{"type": "partition", "attributes": {"mode": "refuse"}}"#)
        .unwrap();
    let quit = tokio::time::timeout(LONG / 2, client.waiting())
        .await
        .expect("the client's service ends");
    assert!(
        matches!(quit, Ok(rmcp::service::QuitReason::Closed)),
        "{quit:?}"
    );
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

/// Three `sum` calls sent at once through a client-side `hold` of three with `order`
/// shuffled, under `seed`: the ids in the order the client sent them and in the order the
/// server got them. Also checks that the first two were kept until the third came, and
/// that each call got its own answer.
async fn three_held_and_shuffled(seed: u64) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let (cf, sf) = (Faults::new(seed), Faults::new(2));
    let (mut sent, mut got) = (cf.events(), sf.events());
    let client = pair(&cf, &sf).await;
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
    let sent = drain(&mut sent);
    // Nothing went out for the first two; all three went out with the third.
    assert_eq!(
        common::fates(&sent, "upstream", "sum"),
        [(0, false), (0, false), (3, false)],
        "{sent:#?}"
    );
    (sum_request_ids(&sent), sum_request_ids(&drain(&mut got)))
}

#[tokio::test]
async fn held_sends_go_out_together_in_a_seeded_shuffle() {
    let mut reordered = 0;
    for seed in 1..=8 {
        let (sent, got) = three_held_and_shuffled(seed).await;
        let mut same = got.clone();
        same.sort_by_key(|id| sent.iter().position(|s| s == id));
        assert_eq!(
            same, sent,
            "seed {seed}: the server got other calls than were sent"
        );
        reordered += usize::from(got != sent);
        // The same seed shuffles the same way.
        assert_eq!(three_held_and_shuffled(seed).await.1, got, "seed {seed}");
    }
    // Six orders of three: eight seeds that all keep the sent order would be no shuffle.
    assert!(reordered > 0, "no seed changed the order");
}

#[tokio::test]
async fn removing_a_hold_on_what_is_sent_lets_it_go() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    cf.add(
        r#"{"name": "h", "type": "mcp", "stream": "upstream",
               "attributes": {"tool": "sum", "action": "hold", "count": 3, "order": "shuffled"}}"#,
    )
    .unwrap();
    // One call is held (one of three); removing the toxic lets it go.
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
    let seen = drain(&mut events);
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
    let seen = drain(&mut events);
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

#[tokio::test]
async fn a_partition_in_the_wrapper_holds_until_healed_and_loss_drops() {
    let (cf, sf) = (Faults::new(1), Faults::new(2));
    let client = pair(&cf, &sf).await;
    cf.add(r#"{"name": "cut", "type": "partition", "stream": "upstream", "attributes": {"mode": "blackhole"}}"#)
        .unwrap();
    held_until_removed(&cf, "cut", spawn_sum(&client, 20, 22)).await;

    sf.add(r#"{"name": "lossy", "type": "loss", "stream": "downstream", "attributes": {"probability": 1.0}}"#)
        .unwrap();
    let r = sum(&client, 1, 2, Duration::from_millis(300)).await;
    assert!(matches!(r, Err(ServiceError::Timeout { .. })), "{r:?}");
    assert!(sf.remove("lossy"));
    assert_eq!(sum(&client, 1, 2, LONG).await.unwrap(), "3");

    let e = cf
        .add(r#"{"type": "slow_open", "attributes": {"delay": 10}}"#)
        .unwrap_err();
    assert_eq!(e.field, "type");
    assert!(e.message.contains("not supported on wrapper"), "{e}");
}
