//! HTTP mode with real MCP peers: the Python SDK's Streamable HTTP server and client
//! (installed by scripts/test.sh), with brownout in between and message faults on.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use std::sync::Arc;

use brownout::proxy::Protocol;
use brownout::proxy::events::Event;
use common::{Brownout, Peer, clients, free_port, mcp_toxic, python, scenario_toxics};

/// The SDK's MCP server on Streamable HTTP, on a free loopback port.
async fn start_server(json_responses: bool) -> Peer {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(clients().join("mcp_server.py"))
        .args(["--http", &port.to_string()]);
    if json_responses {
        cmd.arg("--json");
    }
    Peer::start(cmd, port, "the MCP server").await
}

/// A fresh brownout with an HTTP-mode proxy carrying `toxics`, in front of `server`; runs
/// one client scenario against it and returns the messages brownout saw.
async fn scenario(server: &Peer, name: &str, toxics: &[Value]) -> Vec<Arc<Event>> {
    let (b, mut events) = Brownout::start_with_events(1).await;
    let listen = b.proxy_of(Protocol::Http, "mcp", server.addr).await;
    for t in toxics {
        b.toxic("mcp", t.clone()).await;
    }
    let proxy = format!("http://{listen}/mcp");
    let direct = format!("http://{}/mcp", server.addr);
    let name = name.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(clients().join("mcp_client.py"))
            .args(["http", &proxy, &direct, &name])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_with_sse_and_with_json_responses() {
    for json_responses in [false, true] {
        let server = start_server(json_responses).await;
        scenario(&server, "transparent", &scenario_toxics("transparent")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_error_arrives_as_that_error() {
    let server = start_server(false).await;
    scenario(&server, "error_reply", &scenario_toxics("error_reply")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_response_times_out_on_the_client() {
    for json_responses in [false, true] {
        let server = start_server(json_responses).await;
        scenario(
            &server,
            "dropped_response",
            &scenario_toxics("dropped_response"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_response_arrives_late_and_intact() {
    for json_responses in [false, true] {
        let server = start_server(json_responses).await;
        scenario(
            &server,
            "delayed_response",
            &scenario_toxics("delayed_response"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_events_reach_the_client_twice_and_do_not_confuse_it() {
    let server = start_server(false).await;
    let events = scenario(
        &server,
        "duplicated_response",
        &scenario_toxics("duplicated_response"),
    )
    .await;
    let answers = common::fates(&events, "downstream", "add");
    assert_eq!(answers, [(2, false); 3], "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_response_fails_the_call() {
    let server = start_server(false).await;
    scenario(
        &server,
        "malformed_response",
        &scenario_toxics("malformed_response"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_that_ends_the_connection_fails_the_call_without_a_hang() {
    let server = start_server(false).await;
    scenario(
        &server,
        "ended_connection",
        &scenario_toxics("ended_connection"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_expires_the_session_and_the_client_carries_on() {
    let server = start_server(false).await;
    let events = scenario(
        &server,
        "session_expired",
        &scenario_toxics("session_expired"),
    )
    .await;
    let refused = events
        .iter()
        .find(|e| {
            e.direction == "upstream" && e.method.as_deref() == Some("tools/call") && e.answered
        })
        .unwrap_or_else(|| panic!("no refused tools/call in {events:#?}"));
    assert_eq!(refused.delivered, 0);
    assert_eq!(refused.faults.len(), 1);
    // Every message of a session carries its Mcp-Session-Id, which a matcher can select.
    assert!(
        events
            .iter()
            .filter(|e| e.method.as_deref() == Some("tools/call"))
            .all(|e| e.session.is_some()),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_event_stream_fails_the_call_without_a_hang() {
    let server = start_server(false).await;
    let t = mcp_toxic(
        "downstream",
        json!({"method": "tools/call", "tool": "add", "action": "close"}),
    );
    let events = scenario(&server, "ended_connection", &[t]).await;
    assert!(
        events
            .iter()
            .any(|e| e.end == Some("close") && e.direction == "downstream"),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_streams_the_event_history_live() {
    use http_body_util::BodyExt;
    let server = start_server(false).await;
    let b = Brownout::start(1).await;
    let listen = b.proxy_of(Protocol::Http, "mcp", server.addr).await;

    let stream = tokio::net::TcpStream::connect(b.api).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/events")
        .header("host", b.api.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();

    let (proxy, direct) = (
        format!("http://{listen}/mcp"),
        format!("http://{}/mcp", server.addr),
    );
    let client = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(clients().join("mcp_client.py"))
            .args(["http", &proxy, &direct, "transparent"])
            .output()
            .unwrap()
    });

    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = |text: &str| {
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let call = |dir: &str, kind: &str| {
            events.iter().any(|e| {
                e["direction"] == dir
                    && e["kind"] == kind
                    && e["tool"] == "add"
                    && e["proxy"] == "mcp"
            })
        };
        call("upstream", "request") && call("downstream", "response")
    };
    while !seen(&text) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no tools/call events within 30 s; got:\n{text}"))
            .expect("stream open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    let out = client.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An upstream that closes its connection after every answer (and sends no Date): each call
/// on one client connection still gets its answer, over a new upstream connection each, and
/// the client sees the upstream's headers, not ones brownout made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_after_each_answer_is_reconnected() {
    use tokio::io::AsyncWriteExt;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            let (mut s, _) = upstream.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (_, request) = read_response(&mut s).await.expect("a request");
            let id = serde_json::from_str::<Value>(&request).unwrap()["id"].clone();
            let body = json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
        }
    });
    let b = Brownout::start(1).await;
    let listen = b.proxy_of(Protocol::Http, "mcp", addr).await;
    let mut client = tokio::net::TcpStream::connect(listen).await.unwrap();
    for id in 0..3 {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string();
        let request = format!(
            "POST /mcp HTTP/1.1\r\nhost: {listen}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let (head, answer) =
            tokio::time::timeout(Duration::from_secs(10), read_response(&mut client))
                .await
                .unwrap_or_else(|_| panic!("call {id}: no answer within 10 s"))
                .unwrap_or_else(|| panic!("call {id}: closed before a whole answer"));
        assert!(head.starts_with("HTTP/1.1 200"), "call {id}: {head}");
        assert!(!head.to_ascii_lowercase().contains("\r\ndate:"), "{head}");
        assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["id"], id);
    }
    server.await.unwrap();
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// Bodies longer than brownout reads whole (16 MiB) pass as they come, with their length,
/// unread: a message fault that would drop every call lets this one through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_too_long_to_read_whole_pass_intact() {
    use http_body_util::{BodyExt, Full};
    const LONG_BODY: usize = 17 << 20;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = upstream.accept().await.unwrap();
        let svc =
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let declared = req.headers().get("content-length").cloned();
                let body = req.into_body().collect().await?.to_bytes();
                let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {
                "received": body.len(),
                "declared": declared.map(|v| v.to_str().unwrap().to_owned()),
                "blob": "b".repeat(LONG_BODY)}});
                Ok::<_, hyper::Error>(
                    hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(bytes::Bytes::from(answer.to_string())))
                        .unwrap(),
                )
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    });
    let b = Brownout::start(1).await;
    let listen = b.proxy_of(Protocol::Http, "big", addr).await;
    b.toxic(
        "big",
        mcp_toxic(
            "upstream",
            json!({"method": "tools/call", "action": "drop"}),
        ),
    )
    .await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "upload", "arguments": {"data": "a".repeat(LONG_BODY)}}})
    .to_string();
    let headers = [("content-type", "application/json")];
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        common::http(listen, "POST", "/mcp", Some(&call), &headers),
    )
    .await
    .expect("answered within 60 s");
    assert_eq!(r.status, 200);
    assert!(r.body.len() > LONG_BODY, "{}", r.body.len());
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["result"]["received"], call.len());
    assert_eq!(v["result"]["declared"], call.len().to_string());
    server.abort();
}

/// An SSE event that never ends costs brownout a bounded amount of memory: once it is
/// longer than a message body brownout reads whole, what is held passes on unparsed and
/// the rest as it comes; the history says so once, and the event after it is a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_never_ends_passes_through_in_bounded_memory() {
    use tokio::io::AsyncWriteExt;
    const LONG: usize = 128 << 20;
    const NOTE: &str = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"after"}}"#;
    // One event stream per GET: a 128 MiB data line, then a notification.
    let (upstream, _server) = common::serve_each(|mut s| async move {
        if !read_head(&mut s).await {
            return;
        }
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: ";
        let block = vec![b'x'; 1 << 20];
        let mut out = s.write_all(head.as_bytes()).await;
        for _ in 0..LONG >> 20 {
            out = out.and(s.write_all(&block).await);
        }
        let tail = format!("\n\ndata: {NOTE}\n\n");
        let _ = out.and(s.write_all(tail.as_bytes()).await);
    })
    .await;
    let events =
        std::env::temp_dir().join(format!("brownout-long-event-{}.jsonl", std::process::id()));
    let server = common::bin::Server::start(&["--events", events.to_str().unwrap()]);
    let api: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let made = common::http(
        api,
        "POST",
        "/proxies",
        Some(
            &json!({"name": "sse", "listen": "127.0.0.1:0", "upstream": upstream.to_string(),
                     "protocol": "http"})
            .to_string(),
        ),
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let listen: std::net::SocketAddr = made.json()["listen"].as_str().unwrap().parse().unwrap();

    let r = event_stream(listen, Duration::from_secs(60)).await;
    // The high-water mark of brownout's memory, kept by the kernel.
    let peak = common::bin::peak_rss_kib(server.pid()).unwrap();
    drop(server);
    assert_eq!(r.status, 200);
    let body = r.body.as_bytes();
    let tail = format!("\n\ndata: {NOTE}\n\n");
    assert_eq!(body.len(), 6 + LONG + tail.len(), "bytes lost or added");
    assert!(
        body[6..6 + LONG].iter().all(|b| *b == b'x'),
        "the long event changed"
    );
    assert_eq!(&body[6 + LONG..], tail.as_bytes());
    // A message body brownout may hold (16 MiB), what the stream's channel may queue, and
    // the rest: a fraction of the 128 MiB it held whole before events were bounded.
    eprintln!("brownout peaked at {} MiB", peak >> 10);
    assert!(peak < 64 << 10, "brownout peaked at {} MiB", peak >> 10);
    let (history, oversized) = common::take_history(&events);
    assert_eq!(oversized.len(), 1, "{oversized:#?}");
    assert_eq!(oversized[0]["direction"], "downstream");
    assert!(
        oversized[0]["bytes"].as_u64().unwrap() > 16 << 20,
        "{oversized:#?}"
    );
    // After it, events are messages again.
    assert!(
        history
            .iter()
            .any(|e| e["method"] == "notifications/message"),
        "the event after the long one was not read as a message"
    );
}

/// Connections open on an HTTP-mode proxy, from `/metrics`.
async fn open_connections(b: &Brownout, proxy: &str) -> u64 {
    let metrics = b.http("GET", "/metrics", None).await.body;
    let label = format!("{{proxy=\"{proxy}\",");
    metrics
        .lines()
        .find(|l| l.starts_with("brownout_proxy_active_connections") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no open-connection gauge for {proxy} in {metrics}"))
}

/// A request a fault dropped waits for an answer that never comes for as long as its
/// client waits: once the client hangs up, brownout lets the exchange and its connection go.
#[tokio::test]
async fn a_dropped_request_is_let_go_when_its_client_hangs_up() {
    let (upstream, _task) = common::echo_server().await;
    let b = Brownout::start(1).await;
    let listen = b.proxy_of(Protocol::Http, "lost", upstream).await;
    b.toxic(
        "lost",
        mcp_toxic(
            "upstream",
            json!({"method": "tools/call", "action": "drop"}),
        ),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(call_through(listen).await);
    }
    let b = &b;
    let until = |want: u64| async move {
        let t = Instant::now();
        loop {
            let open = open_connections(b, "lost").await;
            if open == want || t.elapsed() > Duration::from_secs(10) {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(until(50).await, 50, "every dropped request waits");
    drop(clients);
    assert_eq!(
        until(0).await,
        0,
        "exchanges still held 10 s after their clients hung up"
    );
}

/// A `latency` toxic delays each SSE event from when it arrived: events that come back to
/// back arrive back to back, each late by the latency, and their delays do not add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_events_are_each_delayed_from_their_arrival() {
    use tokio::io::AsyncWriteExt;
    const EVENTS: usize = 5;
    // One event stream per GET: five notifications in one write, then the end.
    let (upstream, _server) = common::serve_each(|mut s| async move {
        if !read_head(&mut s).await {
            return;
        }
        let mut out = String::from(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        );
        for i in 0..EVENTS {
            out.push_str(&format!(
                "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progress\":{i}}}}}\n\n"
            ));
        }
        let _ = s.write_all(out.as_bytes()).await;
    })
    .await;
    let b = Brownout::start(1).await;
    let listen = b.proxy_of(Protocol::Http, "late", upstream).await;
    b.toxic(
        "late",
        json!({"type": "latency", "stream": "downstream", "attributes": {"latency": 400}}),
    )
    .await;
    let t = Instant::now();
    let r = event_stream(listen, Duration::from_secs(20)).await;
    let took = t.elapsed();
    assert_eq!(
        r.body.matches("notifications/progress").count(),
        EVENTS,
        "{}",
        r.body
    );
    // Each 400 ms after it arrived, all at about the same time: well under the 2 s that
    // five delays one after another would take.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        took < Duration::from_millis(1200),
        "the delays added up: {took:?}"
    );
}

/// A client that stops reading its event stream holds up no one else: when another
/// client's answer completes a `hold` and lets go of events for that stream, whose channel
/// is full, that answer still comes, the API answers, and the stalled client gets every
/// event once it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_event_stream_reader_holds_up_neither_the_api_nor_other_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HELD: usize = 20;
    const FILL: usize = 8000;
    // GET: HELD events the hold keeps, then 32 MB of others, more than the sockets between
    // brownout and a client that does not read can take; then the stream stays open.
    // POST: a JSON answer.
    let (upstream, _server) = common::serve_each(|mut s| async move {
        let Some((head, request)) = read_response(&mut s).await else {
            return;
        };
        if head.starts_with("GET") {
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n",
            );
            for i in 0..HELD {
                out.push_str(&format!(
                    "data: {{\"jsonrpc\":\"2.0\",\"method\":\"x/held\",\"params\":{{\"n\":{i}}}}}\n\n"
                ));
            }
            let pad = "p".repeat(4000);
            let fill = format!(
                "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"data\":\"{pad}\"}}}}\n\n"
            );
            if s.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..FILL {
                if s.write_all(fill.as_bytes()).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        let id = serde_json::from_str::<Value>(&request).unwrap()["id"].clone();
        let body = json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(answer.as_bytes()).await;
    })
    .await;
    let b = Brownout::start(1).await;
    let proxy = b.proxy_of(Protocol::Http, "mcp", upstream).await;
    b.toxic(
        "mcp",
        json!({"name": "keep", "type": "mcp", "stream": "downstream",
               "attributes": {"method": "x/held", "action": "hold", "count": HELD + 1}}),
    )
    .await;
    let mut stalled = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stalled
        .write_all(b"GET /mcp HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    // Time for the stream to back up behind the client that does not read.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Another client's call whose answer is the last the hold waits for: its handler lets
    // the held events go, onto the stream that takes nothing.
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "x/held"}).to_string();
    let mut other = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{call}",
        call.len()
    );
    other.write_all(request.as_bytes()).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), read_response(&mut other))
        .await
        .expect("the call that let the events go was answered");
    let (head, body) = answered.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], 7);
    let api = tokio::time::timeout(Duration::from_secs(5), b.http("GET", "/proxies", None))
        .await
        .expect("the API answered");
    assert_eq!(api.status, 200);

    // Once it reads, the stalled client gets every event.
    let (mut held, mut fill) = (0, 0);
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let read_all = async {
        while (held, fill) != (HELD, FILL) {
            let n = stalled.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended early: {held} held, {fill} others");
            pending.extend_from_slice(&buf[..n]);
            // Count whole events only: one may be split across reads.
            let mut start = 0;
            while let Some(end) = pending[start..].windows(2).position(|w| w == b"\n\n") {
                let event = String::from_utf8_lossy(&pending[start..start + end]);
                held += usize::from(event.contains("x/held"));
                fill += usize::from(event.contains("notifications/message"));
                start += end + 2;
            }
            pending.drain(..start);
        }
    };
    let read = tokio::time::timeout(Duration::from_secs(30), read_all).await;
    assert!(
        read.is_ok(),
        "not every event came: {held} held, {fill} others"
    );
}

/// Read a request's head, whatever it is; false if the client left first.
async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut req = Vec::new();
    let mut b = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(n) if n > 0 => req.extend_from_slice(&b[..n]),
            _ => return false,
        }
    }
    true
}

/// A GET for an event stream, read to its end within `within`.
async fn event_stream(proxy: std::net::SocketAddr, within: Duration) -> common::Reply {
    let get = common::http(
        proxy,
        "GET",
        "/mcp",
        None,
        &[("accept", "text/event-stream")],
    );
    tokio::time::timeout(within, get)
        .await
        .unwrap_or_else(|_| panic!("the stream did not end within {within:?}"))
}

/// One HTTP/1.1 message with a content-length body: its head and its body; `None` if the
/// connection ended first.
async fn read_response(s: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len = content_length(&head).unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            return Some((head, body));
        }
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse().unwrap())
    })
}

/// A JSON-RPC server over HTTP/1.1 keep-alive: each POST answered with a JSON result
/// carrying `text`; counts the requests that reached it.
async fn json_upstream(
    text: &'static str,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    common::Task,
) {
    use tokio::io::AsyncWriteExt;
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    let (addr, task) = common::serve_each(move |mut s| {
        let count = count.clone();
        async move {
            while let Some((_, request)) = read_response(&mut s).await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let id = serde_json::from_str::<Value>(&request).unwrap()["id"].clone();
                let body = json!({"jsonrpc": "2.0", "id": id, "result": {"text": text}}).to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, seen, task)
}

/// A raw client that has sent one `tools/call` through `proxy`.
async fn call_through(proxy: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": "x"}}})
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{call}",
        call.len()
    );
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s
}

/// An HTTP-mode proxy `mcp` in front of a [`json_upstream`], with `toxic` on it: the
/// proxy's address, and the count of requests that reached the server.
async fn proxied_with(
    toxic: Value,
) -> (
    Brownout,
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    common::Task,
) {
    let (upstream, seen, task) = json_upstream("a long enough answer").await;
    let b = Brownout::start(1).await;
    let proxy = b.proxy_of(Protocol::Http, "mcp", upstream).await;
    b.toxic("mcp", toxic).await;
    (b, proxy, seen, task)
}

/// How a client's connection ended with no answer (`client` has sent its call), and how
/// long after `since`.
async fn unanswered(
    mut client: tokio::net::TcpStream,
    since: Instant,
) -> (std::io::Result<()>, Duration) {
    let (got, end) = common::read_to_end(&mut client, Duration::from_secs(10)).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    (end, since.elapsed())
}

/// `reset_peer` on an HTTP-mode proxy resets the client's connection (RST) its timeout
/// after the request came, and the request never reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peer_resets_the_client_connection_after_its_timeout() {
    let (_b, proxy, seen, _task) = proxied_with(
        json!({"type": "reset_peer", "stream": "upstream", "attributes": {"timeout": 300}}),
    )
    .await;
    let (end, took) = unanswered(call_through(proxy).await, Instant::now()).await;
    let kind = end.expect_err("the connection ends with a reset").kind();
    assert_eq!(kind, std::io::ErrorKind::ConnectionReset);
    assert!(took >= Duration::from_millis(300), "reset after {took:?}");
    assert!(took < Duration::from_secs(5), "reset after {took:?}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// `timeout` on an HTTP-mode proxy swallows what it sees and closes the client's connection
/// its time after the message came; with 0, it holds the exchange until it is removed, and
/// removing it closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_hangs_the_exchange_then_closes_the_connection() {
    use tokio::io::AsyncReadExt;
    let (b, proxy, seen, _task) =
        proxied_with(json!({"name": "t", "type": "timeout", "attributes": {"timeout": 400}})).await;
    let (end, took) = unanswered(call_through(proxy).await, Instant::now()).await;
    end.expect("the connection is closed, not reset or left open");
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the request went on"
    );

    b.http(
        "POST",
        "/proxies/mcp/toxics/t",
        Some(r#"{"attributes": {"timeout": 0}}"#),
    )
    .await;
    let mut client = call_through(proxy).await;
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(800), client.read(&mut byte)).await;
    assert!(waited.is_err(), "timeout 0 held the exchange: {waited:?}");
    let removed = Instant::now();
    assert_eq!(
        b.http("DELETE", "/proxies/mcp/toxics/t", None).await.status,
        204
    );
    let (end, took) = unanswered(client, removed).await;
    end.expect("removing the timeout closes the connection");
    assert!(
        took < Duration::from_secs(2),
        "closed {took:?} after the removal"
    );
    // With the toxic gone, calls are answered again.
    let mut client = call_through(proxy).await;
    let (head, body) = read_response(&mut client).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], 7);
}

/// `limit_time` on an HTTP-mode proxy: a client connection is answered while its time
/// runs, then closed that long after it opened; one already open when the toxic comes gets
/// its time from then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_time_closes_each_client_connection_its_time_after_it_began() {
    let (b, proxy, seen, _task) =
        proxied_with(json!({"name": "lt", "type": "limit_time", "attributes": {"time": 500}}))
            .await;
    let opened = Instant::now();
    let mut client = call_through(proxy).await;
    let (head, _) = read_response(&mut client)
        .await
        .expect("answered within its time");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (end, took) = unanswered(client, opened).await;
    end.expect("the connection is closed, not reset");
    assert!(took >= Duration::from_millis(500), "closed after {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");

    assert_eq!(
        b.http("DELETE", "/proxies/mcp/toxics/lt", None)
            .await
            .status,
        204
    );
    let mut open = call_through(proxy).await;
    assert!(read_response(&mut open).await.is_some(), "answered");
    let added = Instant::now();
    b.toxic(
        "mcp",
        json!({"name": "lt", "type": "limit_time", "attributes": {"time": 300}}),
    )
    .await;
    let (end, took) = unanswered(open, added).await;
    end.expect("the open connection is closed, not reset");
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// `limit_data` on an HTTP-mode proxy cuts the body that crosses its limit: the client
/// sees the whole length declared, that many bytes of the body, then the connection end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_data_cuts_the_body_that_crosses_its_limit() {
    use tokio::io::AsyncReadExt;
    let (_b, proxy, _seen, _task) =
        proxied_with(json!({"type": "limit_data", "attributes": {"bytes": 10}})).await;
    let mut client = call_through(proxy).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await;
    read.expect("the connection ends")
        .expect("closed, not reset");
    let text = String::from_utf8_lossy(&got);
    let end = text.find("\r\n\r\n").expect("a whole head") + 4;
    let whole =
        json!({"jsonrpc": "2.0", "id": 7, "result": {"text": "a long enough answer"}}).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(content_length(&text[..end]), Some(whole.len()), "{text}");
    assert_eq!(&text[end..], &whole[..10], "{text}");
}
