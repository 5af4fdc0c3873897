//! partition, loss, limit_time, slow_open and corrupt on TCP proxies, on real sockets in
//! front of an echo server: what arrives, when, and what is lost. The proxies are embedded
//! (`brownout::embed`), each fault a guard that heals when it drops.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use brownout::embed::{Guard, Handle, Proxy};
use brownout::faults::{Direction, PartitionMode, link_rng};
use common::*;

const LONG: Duration = Duration::from_secs(20);

/// Whatever arrives on `s` within `within`: empty if nothing does.
async fn arrives(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Err(_) => Vec::new(),
        Ok(Ok(n)) => buf[..n].to_vec(),
        Ok(Err(e)) => panic!("the connection failed: {e}"),
    }
}

/// An embedded TCP proxy with `seed` in front of `upstream`.
async fn embedded(seed: u64, upstream: std::net::SocketAddr) -> Handle {
    Proxy::tcp(upstream.to_string())
        .seed(seed)
        .start()
        .await
        .unwrap()
}

/// An embedded TCP proxy in front of a fresh echo server.
async fn echo_proxy(seed: u64) -> (Handle, Task) {
    let (echo, task) = echo_server().await;
    (embedded(seed, echo).await, task)
}

fn toxic(p: &Handle, spec: serde_json::Value) -> Guard {
    p.toxic(&spec.to_string()).unwrap()
}

fn partition(p: &Handle, mode: &str, stream: &str) -> Guard {
    toxic(
        p,
        json!({"type": "partition", "stream": stream, "attributes": {"mode": mode}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_keeps_what_is_sent_and_heals_it_once_and_in_order() {
    let (p, _echo) = echo_proxy(1).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"before").await.0, b"before");

    // Both ways, on the live connection.
    let cut = p.partition(PartitionMode::Blackhole);
    for piece in [&b"one "[..], b"two ", b"three"] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        arrives(&mut s, Duration::from_millis(400)).await.is_empty(),
        "something crossed the partition"
    );

    drop(cut);
    let mut back = vec![0u8; b"one two three".len()];
    tokio::time::timeout(LONG, s.read_exact(&mut back))
        .await
        .expect("healed in time")
        .unwrap();
    assert_eq!(back, b"one two three");
    assert!(
        arrives(&mut s, Duration::from_millis(300)).await.is_empty(),
        "something was delivered twice"
    );
    assert_eq!(round_trip(&mut s, b"after").await.0, b"after");
    // Every byte once each way, as the proxy counted them.
    let sent = (b"before".len() + b"one two three".len() + b"after".len()) as u64;
    let c = p.counters();
    assert_eq!((c.upstream.sent, c.downstream.sent), (sent, sent), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_one_way_lets_the_other_way_through() {
    // A server that greets each client every 50 ms, whatever it is sent.
    let (server, _task) = serve_each(|mut s| async move {
        for i in 0..100u8 {
            if s.write_all(&[b'a' + i % 26]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let p = embedded(1, server).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    assert!(!arrives(&mut s, LONG).await.is_empty());
    // Cut client to server only: what the server sends still arrives.
    let cut = partition(&p, "blackhole", "upstream");
    s.write_all(b"into the void").await.unwrap();
    assert!(!arrives(&mut s, Duration::from_secs(2)).await.is_empty());
    // Cut the other way instead: nothing arrives.
    drop(cut);
    let _cut = partition(&p, "blackhole", "downstream");
    // Anything already on its way is let through first.
    let _ = arrives(&mut s, Duration::from_millis(100)).await;
    assert!(arrives(&mut s, Duration::from_millis(400)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_loses_exactly_what_was_sent_while_partitioned() {
    let (p, _echo) = echo_proxy(1).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"kept-1").await.0, b"kept-1");

    let cut = partition(&p, "drop", "upstream");
    s.write_all(b"lost").await.unwrap();
    assert!(arrives(&mut s, Duration::from_millis(400)).await.is_empty());

    drop(cut);
    assert_eq!(round_trip(&mut s, b"kept-2").await.0, b"kept-2");
    assert!(arrives(&mut s, Duration::from_millis(300)).await.is_empty());
    // The connection stayed open throughout.
    assert_eq!(round_trip(&mut s, b"kept-3").await.0, b"kept-3");
    let c = p.counters();
    assert_eq!(
        c.upstream.received - c.upstream.sent,
        b"lost".len() as u64,
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_resets_live_and_new_connections_until_removed() {
    let (p, _echo) = echo_proxy(1).await;
    let addr = p.addr();
    let mut live = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut live, b"hi").await.0, b"hi");

    let cut = partition(&p, "refuse", "downstream");
    let (_, r) = read_to_end(&mut live, LONG).await;
    let err = r.expect_err("a live connection is reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    for _ in 0..3 {
        // The listener still accepts (the kernel completes the handshake), then resets.
        let refused = TcpStream::connect(addr).await;
        if let Ok(mut s) = refused {
            let _ = s.write_all(b"anyone?").await;
            let (got, r) = read_to_end(&mut s, LONG).await;
            assert!(got.is_empty());
            let err = r.expect_err("a new connection is reset");
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
                ),
                "{err}"
            );
        }
    }

    drop(cut);
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut s, b"back").await.0, b"back");
}

/// Round trips of one byte each through a proxy with `loss` upstream, seeded with `seed`:
/// which of them stalled (took at least half the rto).
async fn lossy_round_trips(seed: u64, p: f64, rto: u64, n: usize) -> Vec<usize> {
    let (proxy, _echo) = echo_proxy(seed).await;
    let _loss = toxic(
        &proxy,
        json!({"type": "loss", "stream": "upstream", "attributes": {"probability": p, "rto": rto}}),
    );
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut stalled = Vec::new();
    for i in 0..n {
        let byte = [b'a' + (i % 26) as u8];
        let (back, took) = round_trip(&mut s, &byte).await;
        assert_eq!(
            back, byte,
            "round trip {i}: nothing is lost for good on TCP"
        );
        if took >= Duration::from_millis(rto / 2) {
            stalled.push(i);
        }
    }
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_stalls_the_chunks_its_seed_picks_and_loses_nothing() {
    let (p, rto, n) = (0.3, 200, 30);
    // Each round trip is one chunk upstream, so the link's RNG draws once per round trip:
    // the stalls are exactly the draws under p.
    let mut rng = link_rng(7, 0, Direction::Upstream);
    let expected: Vec<usize> = (0..n).filter(|_| rng.f64() < p).collect();
    assert!(!expected.is_empty() && expected.len() < n, "{expected:?}");
    let stalled = lossy_round_trips(7, p, rto, n).await;
    assert_eq!(stalled, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_time_closes_the_connection_once_its_time_is_up() {
    let (p, _echo) = echo_proxy(1).await;
    let _limit = toxic(
        &p,
        json!({"type": "limit_time", "attributes": {"time": 400}}),
    );
    let t = Instant::now();
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"in time").await.0, b"in time");
    let (rest, r) = read_to_end(&mut s, LONG).await;
    let took = t.elapsed();
    assert!(rest.is_empty() && r.is_ok(), "{rest:?} {r:?}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    // Generous for a loaded machine; the point is that it closed on its own.
    assert!(took < Duration::from_millis(2400), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_open_dials_the_upstream_late() {
    // A server that says hello as soon as it is dialled.
    let (server, _task) = serve_each(|mut s| async move {
        let _ = s.write_all(b"hello").await;
        let mut buf = [0u8; 1];
        let _ = s.read(&mut buf).await;
    })
    .await;
    let p = embedded(1, server).await;
    let addr = p.addr();
    let slow_open = toxic(
        &p,
        json!({"type": "slow_open", "attributes": {"delay": 500}}),
    );
    let greeting = async |addr| {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 5];
        tokio::time::timeout(LONG, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"hello");
        t.elapsed()
    };
    let slow = greeting(addr).await;
    assert!(slow >= Duration::from_millis(500), "{slow:?}");
    drop(slow_open);
    let fast = greeting(addr).await;
    assert!(fast < Duration::from_millis(500), "{fast:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_flips_bits_and_keeps_the_length() {
    let (p, _echo) = echo_proxy(1).await;
    let flip = toxic(
        &p,
        json!({"type": "corrupt", "stream": "upstream",
               "attributes": {"probability": 1.0, "bits": 3}}),
    );
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let data = vec![0u8; 64];
    let (back, _) = round_trip(&mut s, &data).await;
    let flipped: u32 = back.iter().map(|b| b.count_ones()).sum();
    // Three flips per chunk; two flips may land on one bit and cancel out.
    assert!(
        (1..=3).contains(&flipped) && flipped % 2 == 1,
        "{flipped} bits flipped"
    );
    drop(flip);
    assert_eq!(round_trip(&mut s, &data).await.0, data);
}

#[tokio::test]
async fn attributes_are_checked_and_shown() {
    let b = Brownout::start(1).await;
    let (_addr, _echo) = b.echo_proxy("p").await;
    let add = async |body: serde_json::Value| {
        b.http("POST", "/proxies/p/toxics", Some(&body.to_string()))
            .await
    };
    let r = add(json!({"type": "partition", "attributes": {"mode": "sideways"}})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("attributes.mode"), "{}", r.body);
    let r = add(json!({"type": "loss", "attributes": {"probability": 1.5}})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("attributes.probability"), "{}", r.body);

    // Attributes left out take their defaults, shown as they apply.
    let r = add(json!({"type": "partition"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["attributes"], json!({"mode": "blackhole"}));
    let r = add(json!({"type": "loss", "stream": "upstream"})).await;
    assert_eq!(
        r.json()["attributes"],
        json!({"probability": 0.0, "rto": 200})
    );
    let r = add(json!({"type": "corrupt", "stream": "upstream"})).await;
    assert_eq!(
        r.json()["attributes"],
        json!({"probability": 0.0, "bits": 1})
    );
}
