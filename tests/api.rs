//! The HTTP API, endpoint by endpoint, as a Toxiproxy client sees it.

mod common;

use serde_json::{Value, json};

use common::*;

fn proxy_body(name: &str, upstream: &str) -> String {
    json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream}).to_string()
}

#[tokio::test]
async fn proxies_crud() {
    let b = Brownout::start(1).await;
    let r = b.http("GET", "/proxies", None).await;
    assert_eq!((r.status, r.json()), (200, json!({})));

    let r = b
        .http(
            "POST",
            "/proxies",
            Some(&proxy_body("db", "127.0.0.1:5432")),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let p = r.json();
    assert_eq!(p["name"], "db");
    assert_eq!(p["upstream"], "127.0.0.1:5432");
    assert_eq!(p["enabled"], true);
    assert_eq!(p["toxics"], json!([]));
    let listen = p["listen"].as_str().unwrap().to_owned();
    assert!(
        listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"),
        "real port shown: {listen}"
    );
    assert!(r.headers.contains_key("x-toxiproxy-request-id"));
    assert_eq!(r.headers["content-type"], "application/json");

    let r = b
        .http(
            "POST",
            "/proxies",
            Some(&proxy_body("db", "127.0.0.1:5432")),
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (409, json!({"error": "proxy already exists", "status": 409}))
    );

    let r = b.http("GET", "/proxies", None).await;
    assert_eq!(r.json()["db"]["listen"], listen.as_str());
    assert_eq!(b.http("GET", "/proxies/db", None).await.json(), p);

    let r = b
        .http("PATCH", "/proxies/db", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["enabled"], false);
    assert_eq!(r.json()["listen"], listen.as_str(), "unchanged fields stay");
    // POST works as PATCH, as in Toxiproxy.
    let r = b
        .http(
            "POST",
            "/proxies/db",
            Some(r#"{"enabled": true, "upstream": "127.0.0.1:5433"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["enabled"], true);
    assert_eq!(r.json()["upstream"], "127.0.0.1:5433");

    let r = b.http("DELETE", "/proxies/db", None).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = b.http("GET", "/proxies/db", None).await;
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"error": "proxy not found", "status": 404}))
    );
    assert_eq!(b.http("DELETE", "/proxies/db", None).await.status, 404);
    assert_eq!(b.http("PATCH", "/proxies/db", Some("{}")).await.status, 404);
}

#[tokio::test]
async fn toxics_crud_with_toxiproxy_defaults_and_merging_updates() {
    let b = Brownout::start(1).await;
    b.http("POST", "/proxies", Some(&proxy_body("p", "127.0.0.1:1")))
        .await;
    let r = b.http("GET", "/proxies/p/toxics", None).await;
    assert_eq!((r.status, r.json()), (200, json!([])));

    // Defaults: stream downstream, toxicity 1, name <type>_<stream>; 200, not 201.
    let r = b
        .http(
            "POST",
            "/proxies/p/toxics",
            Some(r#"{"type": "latency", "attributes": {"latency": 100}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let expected = json!({"attributes": {"latency": 100, "jitter": 0}, "name": "latency_downstream",
                          "type": "latency", "stream": "downstream", "toxicity": 1.0});
    assert_eq!(r.json(), expected);

    let r = b
        .http(
            "POST",
            "/proxies/p/toxics",
            Some(r#"{"type": "latency", "attributes": {"latency": 5}}"#),
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (409, json!({"error": "toxic already exists", "status": 409}))
    );

    let r = b
        .http("POST", "/proxies/p/toxics", Some(r#"{"name": "cut", "type": "limit_data", "stream": "both", "toxicity": 0.5, "attributes": {"bytes": 10}}"#))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["stream"], "both");

    let r = b
        .http("GET", "/proxies/p/toxics/latency_downstream", None)
        .await;
    assert_eq!(r.json(), expected);
    let list = b.http("GET", "/proxies/p/toxics", None).await.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(
        b.http("GET", "/proxies/p", None).await.json()["toxics"],
        list
    );

    // PATCH merges attributes and keeps what is not given.
    let r = b
        .http(
            "PATCH",
            "/proxies/p/toxics/latency_downstream",
            Some(r#"{"attributes": {"jitter": 10}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["attributes"],
        json!({"latency": 100, "jitter": 10})
    );
    assert_eq!(r.json()["toxicity"], 1.0);
    let r = b
        .http(
            "POST",
            "/proxies/p/toxics/latency_downstream",
            Some(r#"{"toxicity": 0.25}"#),
        )
        .await;
    assert_eq!(r.json()["toxicity"], 0.25);
    assert_eq!(
        r.json()["attributes"],
        json!({"latency": 100, "jitter": 10})
    );

    let r = b
        .http("DELETE", "/proxies/p/toxics/latency_downstream", None)
        .await;
    assert_eq!(r.status, 204);
    let r = b
        .http("GET", "/proxies/p/toxics/latency_downstream", None)
        .await;
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"error": "toxic not found", "status": 404}))
    );
    assert_eq!(
        b.http("DELETE", "/proxies/p/toxics/latency_downstream", None)
            .await
            .status,
        404
    );
    assert_eq!(
        b.http("PATCH", "/proxies/p/toxics/nope", Some("{}"))
            .await
            .status,
        404
    );
    assert_eq!(
        b.http("GET", "/proxies/nope/toxics", None).await.status,
        404
    );
    assert_eq!(
        b.http("POST", "/proxies/nope/toxics", Some(r#"{"type": "noop"}"#))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn populate_creates_keeps_and_replaces() {
    let b = Brownout::start(1).await;
    let body = json!([
        {"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"},
        {"name": "b", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:2", "enabled": false},
    ]);
    let r = b.http("POST", "/populate", Some(&body.to_string())).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let proxies = r.json()["proxies"].as_array().unwrap().clone();
    assert_eq!(proxies.len(), 2);
    assert_eq!(proxies[1]["enabled"], false);
    let a_listen = proxies[0]["listen"].as_str().unwrap().to_owned();

    // Same listen and upstream: kept as it is. Different upstream: replaced.
    let body = json!([
        {"name": "a", "listen": a_listen, "upstream": "127.0.0.1:1"},
        {"name": "b", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:3"},
    ]);
    b.http("POST", "/proxies/a/toxics", Some(r#"{"type": "noop"}"#))
        .await;
    let r = b.http("POST", "/populate", Some(&body.to_string())).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let proxies = r.json()["proxies"].as_array().unwrap().clone();
    assert_eq!(
        proxies[0]["toxics"].as_array().unwrap().len(),
        1,
        "kept proxy keeps its toxics"
    );
    assert_eq!(proxies[1]["upstream"], "127.0.0.1:3");
    assert_eq!(proxies[1]["enabled"], true);

    // Invalid entries: nothing is applied.
    let body = json!([
        {"name": "c", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"},
        {"name": "d", "listen": "127.0.0.1:0"},
    ]);
    let r = b.http("POST", "/populate", Some(&body.to_string())).await;
    assert_eq!(r.status, 400);
    // Toxiproxy's shape: error, status, and the proxies made (none: populate is atomic).
    assert_eq!(
        r.json(),
        json!({"error": "missing required field: upstream at proxy 2", "status": 400,
               "proxies": []})
    );
    assert_eq!(
        b.http("GET", "/proxies/c", None).await.status,
        404,
        "nothing half-applied"
    );
}

#[tokio::test]
async fn reset_enables_every_proxy_and_removes_every_toxic() {
    let b = Brownout::start(1).await;
    b.http("POST", "/proxies", Some(&proxy_body("x", "127.0.0.1:1")))
        .await;
    b.http(
        "POST",
        "/proxies/x/toxics",
        Some(r#"{"type": "latency", "attributes": {"latency": 1}}"#),
    )
    .await;
    b.http("PATCH", "/proxies/x", Some(r#"{"enabled": false}"#))
        .await;
    let r = b.http("POST", "/reset", None).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let p = b.http("GET", "/proxies/x", None).await.json();
    assert_eq!(p["enabled"], true);
    assert_eq!(p["toxics"], json!([]));
}

#[tokio::test]
async fn version_metrics_and_browser_guard() {
    let b = Brownout::start(1).await;
    let r = b.http("GET", "/version", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));

    let r = b.http("GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        r.body
            .contains("# TYPE brownout_proxy_received_bytes_total counter"),
        "{}",
        r.body
    );

    let r = http(
        b.api,
        "GET",
        "/proxies",
        None,
        &[("user-agent", "Mozilla/5.0 (X11)")],
    )
    .await;
    assert_eq!(r.status, 403);

    let r = b.http("GET", "/nothing/here", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["status"], 404);
    let r = b.http("PUT", "/proxies", None).await;
    assert_eq!(r.status, 405);
}

/// Every bad input gets a 4xx whose message names what was wrong, and changes nothing.
#[tokio::test]
async fn invalid_input_table() {
    let b = Brownout::start(1).await;
    b.http("POST", "/proxies", Some(&proxy_body("p", "127.0.0.1:1")))
        .await;
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/proxies", "", 400, "bad request body"),
        ("POST", "/proxies", "{", 400, "bad request body"),
        ("POST", "/proxies", "[]", 400, "bad request body"),
        (
            "POST",
            "/proxies",
            r#"{"listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"}"#,
            400,
            "missing required field: name",
        ),
        (
            "POST",
            "/proxies",
            r#"{"name": "q", "listen": "127.0.0.1:0"}"#,
            400,
            "missing required field: upstream",
        ),
        (
            "POST",
            "/proxies",
            r#"{"name": "q", "upstream": "nowhere"}"#,
            400,
            "upstream",
        ),
        (
            "POST",
            "/proxies",
            r#"{"name": "q", "upstream": "h:99999"}"#,
            400,
            "upstream",
        ),
        (
            "POST",
            "/proxies",
            r#"{"name": "q", "listen": "x", "upstream": "h:1"}"#,
            400,
            "listen",
        ),
        (
            "POST",
            "/proxies",
            r#"{"name": "a/b", "upstream": "h:1"}"#,
            400,
            "name",
        ),
        (
            "POST",
            "/proxies",
            r#"{"name": "q", "upstream": "h:1", "enabled": "yes"}"#,
            400,
            "bad request body",
        ),
        (
            "PATCH",
            "/proxies/p",
            r#"{"upstream": "nope"}"#,
            400,
            "upstream",
        ),
        (
            "POST",
            "/proxies",
            r#"{"name": "q", "upstream": "h:1", "protocol": "gopher"}"#,
            400,
            "protocol: expected tcp or http",
        ),
        (
            "POST",
            "/populate",
            r#"{"name": "x"}"#,
            400,
            "bad request body",
        ),
        (
            "POST",
            "/populate",
            r#"[{"name": "x", "upstream": "h:1"}, {"name": "x", "upstream": "h:2"}]"#,
            400,
            "duplicate proxy name",
        ),
        ("POST", "/proxies/p/toxics", "", 400, "bad request body"),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"attributes": {}}"#,
            400,
            "invalid toxic type: type: missing required field",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "lag"}"#,
            400,
            "unknown toxic type \"lag\"",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "stream": "sideways"}"#,
            400,
            "stream: expected upstream, downstream or both",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "toxicity": 1.5}"#,
            400,
            "toxicity: must be between 0 and 1",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "toxicity": -0.1}"#,
            400,
            "toxicity",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "attributes": {"latency": -1}}"#,
            400,
            "attributes.latency: expected a non-negative whole number",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "attributes": {"latency": 1.5}}"#,
            400,
            "attributes.latency",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "attributes": {"latency": "100"}}"#,
            400,
            "attributes.latency",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "attributes": {"latency": 1e15}}"#,
            400,
            "attributes.latency: 1000000000000000 milliseconds is more than the maximum",
        ),
        // Toxiproxy's own words come first.
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "jitterbug"}"#,
            400,
            "invalid toxic type: type: unknown toxic type \"jitterbug\"",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "stream": "sideways"}"#,
            400,
            "stream was invalid, can be either upstream or downstream: stream:",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "toxicity": 2}"#,
            400,
            "bad request body: toxicity: must be between 0 and 1",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "latency", "attributes": {"latncy": 5}}"#,
            400,
            "attributes.latncy: unknown attribute for latency",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "noop", "attributes": {"x": 1}}"#,
            400,
            "attributes.x: noop takes no attributes",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "bandwidth", "attributes": {"rate": 99999999999999}}"#,
            400,
            "attributes.rate",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "slicer", "attributes": {"average_size": 10, "size_variation": 10}}"#,
            400,
            "attributes.size_variation: must be less than average_size",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"type": "timeout", "attributes": {"timeout": -5}}"#,
            400,
            "attributes.timeout",
        ),
        (
            "POST",
            "/proxies/p/toxics",
            r#"{"name": "bad name", "type": "noop"}"#,
            400,
            "name",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let r = b.http(method, path, Some(body)).await;
        assert_eq!(r.status, *status, "{method} {path} {body}: {}", r.body);
        let v: Value = r.json();
        assert_eq!(v["status"], *status);
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{method} {path} {body}: {msg:?} should mention {needle:?}"
        );
    }
    // A bad update changes nothing.
    b.http(
        "POST",
        "/proxies/p/toxics",
        Some(r#"{"name": "l", "type": "latency", "attributes": {"latency": 10}}"#),
    )
    .await;
    let r = b
        .http(
            "PATCH",
            "/proxies/p/toxics/l",
            Some(r#"{"attributes": {"jitter": -1}}"#),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = b.http("GET", "/proxies/p/toxics/l", None).await;
    assert_eq!(r.json()["attributes"], json!({"latency": 10, "jitter": 0}));
    // Only the valid proxy and toxic exist.
    let all = b.http("GET", "/proxies", None).await.json();
    assert_eq!(
        all.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["p"]
    );
    assert_eq!(
        b.http("GET", "/proxies/p/toxics", None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxys_toxics_can_be_created_without_attributes() {
    let b = Brownout::start(1).await;
    let (addr, _echo) = b.echo_proxy("p").await;
    // Each of Toxiproxy's types, as a script that leaves attributes out creates it.
    for kind in [
        "latency",
        "bandwidth",
        "slow_close",
        "slicer",
        "limit_data",
        "noop",
    ] {
        let r = b
            .http(
                "POST",
                "/proxies/p/toxics",
                Some(&json!({"type": kind, "stream": "upstream"}).to_string()),
            )
            .await;
        assert_eq!(r.status, 200, "{kind}: {}", r.body);
        // Zeros do what they do in Toxiproxy: no delay, no limit, a slicer that does not
        // cut (Toxiproxy's own cannot split by zero).
        if kind != "limit_data" {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            assert_eq!(round_trip(&mut s, b"through").await.0, b"through", "{kind}");
        }
        let name = format!("{kind}_upstream");
        let r = b
            .http("DELETE", &format!("/proxies/p/toxics/{name}"), None)
            .await;
        assert_eq!(r.status, 204, "{kind}: {}", r.body);
    }
    for kind in ["timeout", "reset_peer"] {
        let r = b
            .http(
                "POST",
                "/proxies/p/toxics",
                Some(&json!({"type": kind}).to_string()),
            )
            .await;
        assert_eq!(r.status, 200, "{kind}: {}", r.body);
        b.http("POST", "/reset", None).await;
    }
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_error() {
    let b = Brownout::start(1).await;
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let body =
        json!({"name": "clash", "listen": addr.to_string(), "upstream": "127.0.0.1:1"}).to_string();
    let r = b.http("POST", "/proxies", Some(&body)).await;
    assert_eq!(r.status, 500);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains(&addr.to_string()),
        "{}",
        r.body
    );
    assert_eq!(b.http("GET", "/proxies/clash", None).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_one_toxic_lose_no_update() {
    let b = Brownout::start(1).await;
    b.http("POST", "/proxies", Some(&proxy_body("p", "127.0.0.1:9")))
        .await;
    let path = "/proxies/p/toxics/slow";
    for round in 0..40u64 {
        let body =
            json!({"name": "slow", "type": "latency", "attributes": {"latency": 1, "jitter": 1}});
        let r = b
            .http("POST", "/proxies/p/toxics", Some(&body.to_string()))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        // Each PATCH names one attribute; both must be in the result.
        let latency = json!({"attributes": {"latency": 100 + round}}).to_string();
        let jitter = json!({"attributes": {"jitter": 10 + round}}).to_string();
        let (a, c) = tokio::join!(
            b.http("PATCH", path, Some(&latency)),
            b.http("PATCH", path, Some(&jitter))
        );
        assert_eq!((a.status, c.status), (200, 200), "{} {}", a.body, c.body);
        let now = b.http("GET", path, None).await.json();
        assert_eq!(
            (&now["attributes"]["latency"], &now["attributes"]["jitter"]),
            (&json!(100 + round), &json!(10 + round)),
            "round {round}: {now}"
        );
        assert_eq!(b.http("DELETE", path, None).await.status, 204);
    }
}

/// A proxy listens with the deepest accept queue the system allows, so a burst of
/// connects (an agent fanning out) is not dropped at the door: the kernel reports the
/// queue's size as a listening socket's Send-Q.
#[tokio::test]
async fn a_proxy_listens_with_the_deepest_queue_the_system_allows() {
    let (upstream, _echo) = echo_server().await;
    let b = Brownout::start(1).await;
    let listen = b
        .proxy_of(brownout::proxy::Protocol::Tcp, "burst", upstream)
        .await;
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", listen.port())])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // State, Recv-Q, Send-Q (the backlog), local address, peer.
    let backlog: u64 = text
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listening socket on {listen} in {text:?}"));
    assert_eq!(backlog, somaxconn.min(65_535), "{text}");
}
