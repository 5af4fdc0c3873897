//! rmcp's Streamable HTTP server and client with an HTTP-mode brownout proxy between them.

#![cfg(feature = "rmcp")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::service::ServiceError;
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::json;
use tokio::sync::broadcast;

use brownout::proxy::Protocol;
use brownout::proxy::events::Event;
use common::rmcp::{Client, bounded_client, sum};
use common::{Brownout, Peer, Task, clients, free_port, python};

const LONG: Duration = Duration::from_secs(20);

async fn server() -> (SocketAddr, Task) {
    common::rmcp::http_server().await
}

async fn client(url: String) -> Client {
    ().serve(StreamableHttpClientTransport::from_uri(url))
        .await
        .expect("initialize")
}

/// A brownout with an HTTP-mode proxy in front of a fresh rmcp server; the proxy's URL,
/// the direct URL, and the event history from now on.
async fn setup(
    toxics: &[serde_json::Value],
) -> (
    Brownout,
    String,
    String,
    broadcast::Receiver<Arc<Event>>,
    Task,
) {
    let (addr, task) = server().await;
    let (b, events) = Brownout::start_with_events(1).await;
    let listen = b.proxy_of(Protocol::Http, "rmcp", addr).await;
    for t in toxics {
        b.toxic("rmcp", t.clone()).await;
    }
    (
        b,
        format!("http://{listen}/mcp"),
        format!("http://{addr}/mcp"),
        events,
        task,
    )
}

fn history(events: &mut broadcast::Receiver<Arc<Event>>) -> Vec<Arc<Event>> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_without_faults() {
    let (_b, proxy, direct, _events, _server) = setup(&[]).await;
    let through = client(proxy).await;
    let straight = client(direct).await;
    for (a, b) in [(1, 2), (-5, 5), (1 << 40, 1)] {
        assert_eq!(
            sum(&through, a, b, LONG).await.unwrap(),
            sum(&straight, a, b, LONG).await.unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_error_arrives_as_that_error() {
    let t = json!({"type": "mcp", "stream": "upstream", "attributes": {"tool": "sum", "action": "error", "code": -32050, "message": "injected"}});
    let (_b, proxy, _, _events, _server) = setup(&[t]).await;
    let c = client(proxy).await;
    match sum(&c, 1, 1, LONG).await {
        Err(ServiceError::McpError(e)) => {
            assert_eq!((e.code.0, e.message.as_ref()), (-32050, "injected"))
        }
        other => panic!("expected the injected error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_response_times_out_and_rmcp_cancels() {
    let t = json!({"type": "mcp", "stream": "downstream", "attributes": {"method": "tools/call", "nth": 1, "action": "drop"}});
    let (_b, proxy, _, mut events, _server) = setup(&[t]).await;
    let c = client(proxy).await;
    let r = sum(&c, 1, 2, Duration::from_millis(300)).await;
    assert!(matches!(r, Err(ServiceError::Timeout { .. })), "{r:?}");
    assert_eq!(sum(&c, 1, 2, LONG).await.unwrap(), "3");
    let t = Instant::now();
    loop {
        let seen = history(&mut events);
        let dropped = seen.iter().position(|e| {
            e.direction == "downstream"
                && e.method.as_deref() == Some("tools/call")
                && e.delivered == 0
        });
        let cancel = seen.iter().position(|e| {
            e.direction == "upstream" && e.method.as_deref() == Some("notifications/cancelled")
        });
        if let (Some(d), Some(c)) = (dropped, cancel) {
            assert!(c > d, "the cancel follows the lost response");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no drop and cancel in {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_makes_rmcp_start_a_new_session() {
    let t = json!({"type": "mcp", "stream": "upstream", "attributes": {"method": "tools/call", "nth": 1, "action": "status", "status": 404}});
    let (_b, proxy, _, mut events, _server) = setup(&[t]).await;
    let c = client(proxy).await;
    // rmcp either retries the call on its new session or fails it; the next one works.
    let first = sum(&c, 2, 2, LONG).await;
    assert_eq!(
        sum(&c, 3, 3, LONG).await.unwrap(),
        "6",
        "after a 404 ({first:?}) rmcp carries on"
    );
    let seen = history(&mut events);
    let inits: Vec<_> = seen
        .iter()
        .filter(|e| e.direction == "upstream" && e.method.as_deref() == Some("initialize"))
        .collect();
    assert_eq!(inits.len(), 2, "a new session after the 404: {seen:#?}");
    let sessions: std::collections::HashSet<_> = seen
        .iter()
        .filter(|e| e.method.as_deref() == Some("tools/call"))
        .filter_map(|e| e.session.clone())
        .collect();
    assert!(sessions.len() >= 2, "calls on two sessions: {sessions:?}");
}

/// The Python SDK's server with an event store, so cut streams can be resumed.
async fn resumable_server() -> Peer {
    python_server("--resumable").await
}

/// The Python SDK's server on Streamable HTTP, with `option` (see mcp_server.py).
async fn python_server(option: &str) -> Peer {
    let port = free_port();
    let mut cmd = std::process::Command::new(python());
    cmd.arg(clients().join("mcp_server.py"))
        .args(["--http", &port.to_string(), option]);
    Peer::start(cmd, port, &format!("the MCP server ({option})")).await
}

/// A brownout with an HTTP-mode proxy carrying `toxics` in front of `server`.
async fn resumable_setup(
    server: &Peer,
    toxics: &[serde_json::Value],
) -> (Brownout, String, broadcast::Receiver<Arc<Event>>) {
    let (b, events) = Brownout::start_with_events(1).await;
    let listen = b.proxy_of(Protocol::Http, "py", server.addr).await;
    for t in toxics {
        b.toxic("py", t.clone()).await;
    }
    (b, format!("http://{listen}/mcp"), events)
}

/// Cut the event stream that would carry the first tools/call response.
fn cut() -> serde_json::Value {
    json!({"name": "cut", "type": "mcp", "stream": "downstream", "attributes": {
        "method": "tools/call", "kind": "response", "resumed": false, "nth": 1, "action": "close"}})
}

async fn add(c: &Client, a: i64, b: i64, timeout: Duration) -> Result<String, ServiceError> {
    common::rmcp::call(c, "add", json!({"a": a, "b": b}), timeout).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_resumed_and_the_replayed_answer_arrives() {
    let server = resumable_server().await;
    let (_b, proxy, mut events) = resumable_setup(&server, &[cut()]).await;
    let c = bounded_client(proxy, LONG).await;
    assert_eq!(add(&c, 20, 22, LONG).await.unwrap(), "42");
    let seen = history(&mut events);
    let replayed = seen
        .iter()
        .find(|e| e.resumed && e.method.as_deref() == Some("tools/call"))
        .unwrap_or_else(|| panic!("no replay on a resumed stream in {seen:#?}"));
    assert_eq!(replayed.delivered, 1);
    assert!(
        seen.iter()
            .any(|e| e.end == Some("close") && e.method.as_deref() == Some("tools/call")),
        "{seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_dropped_on_resume_leave_the_call_unanswered() {
    let server = resumable_server().await;
    let lose_replays = json!({"type": "mcp", "stream": "downstream", "attributes": {
        "resumed": true, "method": "tools/call", "action": "drop"}});
    let (_b, proxy, mut events) = resumable_setup(&server, &[cut(), lose_replays]).await;
    let c = bounded_client(proxy, LONG).await;
    let r = add(&c, 1, 1, Duration::from_secs(5)).await;
    assert!(r.is_err(), "answered although every replay was lost: {r:?}");
    let seen = history(&mut events);
    assert!(
        seen.iter().any(|e| e.resumed && e.delivered == 0),
        "no dropped replay in {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_duplicated_on_resume_still_give_one_answer() {
    let server = resumable_server().await;
    let twice = json!({"type": "mcp", "stream": "downstream", "attributes": {
        "resumed": true, "method": "tools/call", "action": "duplicate"}});
    let (_b, proxy, mut events) = resumable_setup(&server, &[cut(), twice]).await;
    let c = bounded_client(proxy, LONG).await;
    assert_eq!(add(&c, 2, 3, LONG).await.unwrap(), "5");
    // The client ignores the second copy of an answer it has; the next call is unaffected.
    assert_eq!(add(&c, 3, 4, LONG).await.unwrap(), "7");
    let seen = history(&mut events);
    assert!(
        seen.iter().any(|e| e.resumed && e.delivered == 2),
        "no duplicated replay in {seen:#?}"
    );
}

/// `call` gets no answer within half a second: something holds it.
async fn not_yet_answered<F>(call: &mut F)
where
    F: std::future::Future + Unpin,
    F::Output: std::fmt::Debug,
{
    let early = tokio::time::timeout(Duration::from_millis(500), call).await;
    assert!(early.is_err(), "answered while held: {early:?}");
}

fn hold(stream: &str, count: u64, order: &str, tool: Option<&str>) -> serde_json::Value {
    let mut attributes = json!({"action": "hold", "count": count, "order": order});
    if let Some(tool) = tool {
        attributes["tool"] = json!(tool);
    }
    json!({"name": "h", "type": "mcp", "stream": stream, "attributes": attributes})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_calls_wait_for_each_other_and_each_gets_its_answer() {
    let t = hold("upstream", 3, "reversed", Some("sum"));
    let (_b, proxy, _, mut events, _server) = setup(&[t]).await;
    let c = client(proxy).await;
    let first_two = async { tokio::join!(sum(&c, 1, 1, LONG), sum(&c, 2, 2, LONG)) };
    tokio::pin!(first_two);
    // Two of three are held: neither reaches the server, so neither is answered.
    not_yet_answered(&mut first_two).await;
    let (third, (a, b)) = tokio::join!(sum(&c, 3, 3, LONG), first_two);
    assert_eq!(
        (a.unwrap(), b.unwrap(), third.unwrap()),
        ("2".into(), "4".into(), "6".into())
    );
    let seen = history(&mut events);
    let delivered: Vec<usize> = seen
        .iter()
        .filter(|e| e.direction == "upstream" && e.tool.as_deref() == Some("sum"))
        .map(|e| e.delivered)
        .collect();
    assert_eq!(delivered, [0, 0, 3], "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_hold_lets_a_held_answer_go() {
    let (b, proxy, _, mut events, _server) = setup(&[]).await;
    let c = client(proxy).await;
    b.toxic("rmcp", hold("downstream", 5, "arrival", Some("sum")))
        .await;
    let call = sum(&c, 20, 22, LONG);
    tokio::pin!(call);
    not_yet_answered(&mut call).await;
    let r = b.http("DELETE", "/proxies/rmcp/toxics/h", None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    // Nothing else is sent: removing the toxic alone lets the answer go.
    assert_eq!(call.await.unwrap(), "42");
    let seen = history(&mut events);
    // It arrived and was kept, then went when the hold was removed.
    let answer = common::fates(&seen, "downstream", "sum");
    assert_eq!(answer, [(0, false), (1, true)], "{seen:#?}");
}

/// On one event stream, a hold reorders what the server sent: the answer to a call comes
/// before the log message the server sent while working on it, each with its event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_reorders_the_messages_of_one_event_stream() {
    let server = resumable_server().await;
    let (b, proxy, _events) = resumable_setup(&server, &[]).await;
    let addr: SocketAddr = proxy
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .parse()
        .unwrap();
    let post = async |body: serde_json::Value, session: Option<&str>| {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        if let Some(s) = session {
            headers.push(("mcp-session-id", s));
        }
        common::http(addr, "POST", "/mcp", Some(&body.to_string()), &headers).await
    };
    let init = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "brownout-test", "version": "0"}}}),
        None,
    )
    .await;
    assert_eq!(init.status, 200, "{}", init.body);
    let session = init.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(initialized, Some(&session)).await.status, 202);

    b.toxic("py", hold("downstream", 2, "reversed", None)).await;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "note", "arguments": {"text": "working"}}});
    let r = tokio::time::timeout(LONG, post(call, Some(&session)))
        .await
        .expect("the call's stream ends");
    assert_eq!(r.status, 200, "{}", r.body);
    let events: Vec<(bool, serde_json::Value)> = r
        .body
        .replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|e| {
            // (A resumable server's first event, with an id and no data, is no message.)
            let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
            let has_id = e.lines().any(|l| l.starts_with("id: "));
            (!data.is_empty()).then(|| (has_id, serde_json::from_str(data).unwrap()))
        })
        .collect();
    assert_eq!(events.len(), 2, "{}", r.body);
    assert_eq!(events[0].1["id"], 2, "{}", r.body);
    assert_eq!(events[1].1["method"], "notifications/message", "{}", r.body);
    assert!(events.iter().all(|(has_id, _)| *has_id), "{}", r.body);
}

/// An rmcp client of the stateless 2026-07-28 era: `server/discover` instead of a session,
/// and the method and tool in `Mcp-Method` and `Mcp-Name` headers on every request.
async fn stateless_client(url: String) -> Client {
    use rmcp::model::ProtocolVersion;
    use rmcp::{ClientLifecycleMode, ClientServiceExt};
    let mode = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let transport = StreamableHttpClientTransport::from_uri(url);
    tokio::time::timeout(LONG, ().serve_with_lifecycle(transport, mode))
        .await
        .expect("discover in time")
        .expect("discover")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stateless_era_passes_and_takes_faults() {
    let t = json!({"type": "mcp", "stream": "upstream", "attributes": {
        "tool": "sum", "nth": 2, "action": "error", "code": -32050, "message": "injected"}});
    let (_b, proxy, direct, mut events, _server) = setup(&[t]).await;
    let through = stateless_client(proxy).await;
    let straight = stateless_client(direct).await;
    assert_eq!(
        through
            .peer()
            .peer_info()
            .map(|i| i.protocol_version.to_string()),
        Some("2026-07-28".to_owned())
    );
    // The server checks the headers against the body (-32020 on a mismatch): the calls
    // that pass are answered as they are directly.
    assert_eq!(
        sum(&through, 1, 2, LONG).await.unwrap(),
        sum(&straight, 1, 2, LONG).await.unwrap()
    );
    match sum(&through, 1, 1, LONG).await {
        Err(ServiceError::McpError(e)) => assert_eq!(e.code.0, -32050),
        other => panic!("expected the injected error, got {other:?}"),
    }
    assert_eq!(sum(&through, 40, 2, LONG).await.unwrap(), "42");
    let seen = history(&mut events);
    let calls: Vec<_> = seen
        .iter()
        .filter(|e| e.direction == "upstream" && e.tool.as_deref() == Some("sum"))
        .collect();
    assert_eq!(calls.len(), 3, "{seen:#?}");
    assert!(
        calls.iter().all(|e| e.session.is_none()),
        "no sessions in this era: {calls:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| e.method.as_deref() == Some("initialize")),
        "{seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_json_answers_go_back_each_to_its_own_call() {
    let server = python_server("--json").await;
    let (b, proxy, mut events) = resumable_setup(&server, &[]).await;
    let c = bounded_client(proxy, LONG).await;
    b.toxic("py", hold("downstream", 2, "reversed", Some("add")))
        .await;
    let first = add(&c, 1, 2, LONG);
    tokio::pin!(first);
    not_yet_answered(&mut first).await;
    let (second, first) = tokio::join!(add(&c, 20, 22, LONG), first);
    assert_eq!((first.unwrap(), second.unwrap()), ("3".into(), "42".into()));
    let seen = history(&mut events);
    let delivered: Vec<usize> = seen
        .iter()
        .filter(|e| e.direction == "downstream" && e.tool.as_deref() == Some("add"))
        .map(|e| e.delivered)
        .collect();
    assert_eq!(delivered, [0, 2], "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_keeps_calls_until_it_heals_and_a_drop_loses_them() {
    let (b, proxy, _, mut events, _server) = setup(&[]).await;
    let c = bounded_client(proxy, LONG).await;
    b.toxic(
        "rmcp",
        json!({"name": "cut", "type": "partition", "stream": "upstream", "attributes": {"mode": "blackhole"}}),
    )
    .await;
    {
        let held = sum(&c, 20, 22, LONG);
        tokio::pin!(held);
        not_yet_answered(&mut held).await;
        b.control.remove_toxic("rmcp", "cut").await.unwrap();
        assert_eq!(held.await.unwrap(), "42");
    }
    let seen = history(&mut events);
    assert_eq!(
        common::fates(&seen, "upstream", "sum"),
        [(0, false), (1, true)],
        "{seen:#?}"
    );

    b.toxic(
        "rmcp",
        json!({"name": "cut", "type": "partition", "stream": "downstream", "attributes": {"mode": "drop"}}),
    )
    .await;
    let lost = sum(&c, 1, 1, Duration::from_millis(500)).await;
    assert!(
        matches!(lost, Err(ServiceError::Timeout { .. })),
        "{lost:?}"
    );
    b.control.remove_toxic("rmcp", "cut").await.unwrap();
    assert_eq!(sum(&c, 2, 2, LONG).await.unwrap(), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_with_no_meaning_over_http_are_refused_by_type_and_protocol() {
    let (b, _proxy, _, _events, _server) = setup(&[]).await;
    for (kind, attributes) in [
        ("slow_open", json!({"delay": 100})),
        ("slow_close", json!({"delay": 100})),
    ] {
        let body = json!({"type": kind, "attributes": attributes}).to_string();
        let r = b.http("POST", "/proxies/rmcp/toxics", Some(&body)).await;
        assert_eq!(r.status, 400, "{kind}: {}", r.body);
        let msg = format!("{kind} is not supported on http proxies");
        assert!(r.body.contains(&msg), "{kind}: {}", r.body);
    }
    // Nothing was kept.
    let r = b.http("GET", "/proxies/rmcp/toxics", None).await;
    assert_eq!(r.json(), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_finish_their_headers_are_closed_and_calls_keep_working() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, _task) = server().await;
    let b = Brownout::start_with_options(brownout::control::Options {
        seed: 1,
        header_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let proxy = b.proxy_of(Protocol::Http, "rmcp", server).await;
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"POST /mcp HT").await.unwrap();
        stalled.push(s);
    }
    // A well-behaved client meanwhile is served as ever.
    let c = bounded_client(format!("http://{proxy}/mcp"), LONG).await;
    assert_eq!(sum(&c, 1, 2, LONG).await.unwrap(), "3");
    for mut s in stalled {
        let (_, r) = common::read_to_end(&mut s, LONG).await;
        assert!(
            !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "a half-sent request was kept open: {r:?}"
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(sum(&c, 2, 3, LONG).await.unwrap(), "5");

    // A head over the bound is refused with 431, not read on.
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let big = format!(
        "GET /mcp HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2 * brownout::proxy::MAX_HEADER_BYTES)
    );
    // The proxy may answer and close before it has read all of it.
    let _ = s.write_all(big.as_bytes()).await;
    let mut head = [0u8; 12];
    tokio::time::timeout(LONG, s.read_exact(&mut head))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 431");
}

/// `slicer` both ways on an HTTP-mode proxy writes each request, JSON body and SSE event in
/// slices, and each stays one request or one event: every call parses and is answered, and
/// takes at least the slices' delays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slicer_writes_bodies_and_events_in_slices_without_breaking_them() {
    let slicer = |stream: &str| {
        json!({"type": "slicer", "stream": stream,
               "attributes": {"average_size": 16, "size_variation": 8, "delay": 2000}})
    };
    let (_b, proxy, _, mut events, _server) =
        setup(&[slicer("upstream"), slicer("downstream")]).await;
    let c = client(proxy).await;
    for (a, b) in [(1, 2), (40, 2), (-7, 7)] {
        let t = Instant::now();
        assert_eq!(sum(&c, a, b, LONG).await.unwrap(), (a + b).to_string());
        // A tools/call request is over 100 bytes: at least six slices 2 ms apart.
        assert!(
            t.elapsed() >= Duration::from_millis(10),
            "{:?}",
            t.elapsed()
        );
    }
    // Each call reached the server as one request that parsed as one.
    let seen = history(&mut events);
    let calls = seen
        .iter()
        .filter(|e| e.direction == "upstream" && e.method.as_deref() == Some("tools/call"))
        .count();
    assert_eq!(calls, 3, "{seen:#?}");
}

/// `bandwidth` downstream paces the answer's bytes, and the answer still parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_paces_answers_without_breaking_them() {
    let slow = json!({"type": "bandwidth", "stream": "downstream", "attributes": {"rate": 1}});
    let (_b, proxy, _, _events, _server) = setup(&[]).await;
    let c = client(proxy).await;
    let t = Instant::now();
    assert_eq!(sum(&c, 2, 3, LONG).await.unwrap(), "5");
    let fast = t.elapsed();
    _b.toxic("rmcp", slow).await;
    let t = Instant::now();
    assert_eq!(sum(&c, 2, 3, LONG).await.unwrap(), "5");
    // The answer's data, about 90 bytes, at 1 KB/s: about 90 ms.
    let paced = t.elapsed();
    assert!(
        paced >= Duration::from_millis(60),
        "{paced:?} (unpaced: {fast:?})"
    );
}
