//! Every byte fault through a real proxy on real sockets: what arrives, when, and how the
//! connection ends.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const LONG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_faults_is_transparent_and_half_close_propagates() {
    let b = Brownout::start(1).await;
    let (addr, _e) = b.echo_proxy("echo").await;

    let mut s = TcpStream::connect(addr).await.unwrap();
    let data = payload(3 << 20);
    let (mut r, mut w) = s.split();
    let reader = async {
        let mut got = Vec::new();
        tokio::time::timeout(LONG, r.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    };
    let writer = async {
        w.write_all(&data).await.unwrap();
        // Half-close: the server sees EOF but keeps sending what it has.
        w.shutdown().await.unwrap();
    };
    let (got, ()) = tokio::join!(reader, writer);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes must arrive intact and in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_each_direction_from_arrival() {
    let b = Brownout::start(1).await;
    let (addr, _e) = b.echo_proxy("p").await;
    b.toxic(
        "p",
        json!({"type": "latency", "attributes": {"latency": 100}}),
    )
    .await;

    let mut s = TcpStream::connect(addr).await.unwrap();
    let (back, rtt) = round_trip(&mut s, b"ping").await;
    assert_eq!(back, b"ping");
    assert!(rtt >= Duration::from_millis(100), "{rtt:?}");
    assert!(rtt < Duration::from_millis(400), "{rtt:?}");

    b.toxic(
        "p",
        json!({"type": "latency", "stream": "upstream", "attributes": {"latency": 50}}),
    )
    .await;
    let (_, rtt) = round_trip(&mut s, b"ping").await;
    assert!(
        rtt >= Duration::from_millis(150),
        "both directions delay: {rtt:?}"
    );
    assert!(rtt < Duration::from_millis(450), "{rtt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_pipelines_a_bulk_transfer() {
    // 2 MB through 100 ms of latency takes about 100 ms more, not 100 ms per chunk.
    let data = payload(2 << 20);
    let (up, _u) = blast_server(data.clone()).await;
    let b = Brownout::start(1).await;
    let addr = b.proxy("bulk", up).await;
    b.toxic(
        "bulk",
        json!({"type": "latency", "attributes": {"latency": 100}}),
    )
    .await;

    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (got, r) = read_to_end(&mut s, LONG).await;
    let took = t.elapsed();
    r.unwrap();
    assert!(got == data, "got {} of {} bytes", got.len(), data.len());
    assert!(took >= Duration::from_millis(100), "{took:?}");
    // 32 chunks of 64 KiB at 100 ms each would be 3.2 s.
    assert!(
        took < Duration::from_millis(1500),
        "delays piled up: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_stays_within_its_bounds() {
    let b = Brownout::start(7).await;
    let (addr, _e) = b.echo_proxy("j").await;
    b.toxic(
        "j",
        json!({"type": "latency", "attributes": {"latency": 60, "jitter": 40}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut seen = Vec::new();
    for i in 0..15u8 {
        let (back, rtt) = round_trip(&mut s, &[i]).await;
        assert_eq!(back, [i]);
        assert!(rtt >= Duration::from_millis(20), "{rtt:?}");
        assert!(rtt < Duration::from_millis(350), "{rtt:?}");
        seen.push(rtt);
    }
    let spread = seen
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*seen.iter().min().unwrap());
    assert!(
        spread > Duration::from_millis(5),
        "jitter must vary the delay: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_the_rate() {
    // 60 KB at 20 KB/s: 3 s, never faster.
    let data = payload(60_000);
    let (up, _u) = blast_server(data.clone()).await;
    let b = Brownout::start(1).await;
    let addr = b.proxy("bw", up).await;
    b.toxic(
        "bw",
        json!({"type": "bandwidth", "attributes": {"rate": 20}}),
    )
    .await;

    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (got, r) = read_to_end(&mut s, LONG).await;
    let took = t.elapsed();
    r.unwrap();
    assert!(got == data);
    assert!(
        took >= Duration::from_millis(2940),
        "faster than the rate: {took:?}"
    );
    assert!(took < Duration::from_millis(3600), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_lost_when_upstream_closes_right_after_writing() {
    let data = payload(1 << 20);
    let (up, _u) = blast_server(data.clone()).await;
    let b = Brownout::start(1).await;
    let addr = b.proxy("loss", up).await;

    for (kind, attrs) in [
        ("latency", json!({"latency": 50, "jitter": 10})),
        ("bandwidth", json!({"rate": 4000})),
        (
            "slicer",
            json!({"average_size": 1000, "size_variation": 500, "delay": 10}),
        ),
    ] {
        let t = b
            .toxic("loss", json!({"type": kind, "attributes": attrs}))
            .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let (got, r) = read_to_end(&mut s, LONG).await;
        r.unwrap();
        assert_eq!(got.len(), data.len(), "{kind}: bytes lost");
        assert!(got == data, "{kind}: bytes corrupted or reordered");
        b.control.remove_toxic("loss", &t.name).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_close_delays_the_end_of_stream() {
    let (up, _u) = blast_server(bytes::Bytes::from_static(b"bye")).await;
    let b = Brownout::start(1).await;
    let addr = b.proxy("sc", up).await;
    b.toxic(
        "sc",
        json!({"type": "slow_close", "attributes": {"delay": 300}}),
    )
    .await;

    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "data itself is not delayed"
    );
    let (rest, r) = read_to_end(&mut s, LONG).await;
    r.unwrap();
    assert!(rest.is_empty());
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(800), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_drops_data_then_closes() {
    let b = Brownout::start(1).await;
    let (addr, _e) = b.echo_proxy("to").await;
    b.toxic(
        "to",
        json!({"type": "timeout", "attributes": {"timeout": 300}}),
    )
    .await;

    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"lost").await.unwrap();
    let (got, r) = read_to_end(&mut s, LONG).await;
    let took = t.elapsed();
    assert!(got.is_empty(), "data must be dropped, got {got:?}");
    assert!(r.is_ok(), "closed, not reset: {r:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(900), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_zero_holds_until_removed_and_removal_closes_the_connection() {
    let b = Brownout::start(1).await;
    let (addr, _e) = b.echo_proxy("t0").await;
    let t = b
        .toxic(
            "t0",
            json!({"type": "timeout", "attributes": {"timeout": 0}}),
        )
        .await;

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"dropped").await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_millis(400), s.read(&mut buf)).await;
    assert!(
        r.is_err(),
        "nothing may arrive and the connection stays open: {r:?}"
    );

    // As Toxiproxy's cleanup does: the connection it held is closed, nothing delivered.
    b.control.remove_toxic("t0", &t.name).await.unwrap();
    let (rest, r) = read_to_end(&mut s, LONG).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(r.is_ok(), "closed, not reset: {r:?}");
    // New connections flow again.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut fresh, b"flows").await.0, b"flows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peer_resets_the_connection() {
    let b = Brownout::start(1).await;
    let (addr, _e) = b.echo_proxy("rp").await;
    b.toxic(
        "rp",
        json!({"type": "reset_peer", "attributes": {"timeout": 200}}),
    )
    .await;

    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let (got, r) = read_to_end(&mut s, LONG).await;
    let took = t.elapsed();
    assert!(got.is_empty());
    let err = r.expect_err("a reset must surface as an error");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(800), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slicer_keeps_bytes_intact_and_spaces_slices() {
    let data = payload(2000);
    let (up, _u) = blast_server(data.clone()).await;
    let b = Brownout::start(1).await;
    let addr = b.proxy("sl", up).await;
    b.toxic("sl", json!({"type": "slicer", "attributes": {"average_size": 100, "size_variation": 50, "delay": 10000}})).await;

    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut reads = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(LONG, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        reads += 1;
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data);
    // At least 2000 / 150 slices, each 10 ms after the one before.
    assert!(reads >= 10, "{reads} reads");
    assert!(
        t.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_data_passes_exactly_n_bytes() {
    let data = payload(100_000);
    let (up, _u) = blast_server(data.clone()).await;
    let b = Brownout::start(1).await;
    let addr = b.proxy("ld", up).await;
    b.toxic(
        "ld",
        json!({"type": "limit_data", "attributes": {"bytes": 12345}}),
    )
    .await;

    let mut s = TcpStream::connect(addr).await.unwrap();
    let (got, r) = read_to_end(&mut s, LONG).await;
    r.unwrap();
    assert_eq!(got.len(), 12345);
    assert!(got[..] == data[..12345]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_and_toxicity_zero_change_nothing() {
    let b = Brownout::start(1).await;
    let (addr, _e) = b.echo_proxy("n").await;
    b.toxic("n", json!({"type": "noop"})).await;
    b.toxic(
        "n",
        json!({"type": "timeout", "toxicity": 0.0, "attributes": {"timeout": 1}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (back, rtt) = round_trip(&mut s, b"unchanged").await;
    assert_eq!(back, b"unchanged");
    assert!(rtt < Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_fault_changes_neither_lose_nor_duplicate_bytes() {
    let b = Brownout::start(3).await;
    let (addr, _e) = b.echo_proxy("live").await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let data = payload(4 << 20);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(16 << 10) {
            w.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        w.shutdown().await.unwrap();
    });
    let toggler = async {
        for i in 0..20u64 {
            let stream = ["upstream", "downstream", "both"][i as usize % 3];
            let t = b
                .toxic("live", json!({"name": format!("t{i}"), "type": "latency", "stream": stream, "attributes": {"latency": 5 + i % 7, "jitter": 3}}))
                .await;
            tokio::time::sleep(Duration::from_millis(15)).await;
            let bw = b.toxic("live", json!({"name": format!("b{i}"), "type": "bandwidth", "stream": stream, "attributes": {"rate": 20_000}})).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
            b.control.remove_toxic("live", &t.name).await.unwrap();
            b.control.remove_toxic("live", &bw.name).await.unwrap();
        }
    };
    let reader = async {
        let mut got = Vec::new();
        tokio::time::timeout(LONG, r.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    };
    let (got, ()) = tokio::join!(reader, toggler);
    writer.await.unwrap();
    assert_eq!(got.len(), data.len(), "bytes lost or duplicated");
    assert!(got == data, "bytes reordered or corrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_closes_listener_and_connections_and_enabling_listens_again() {
    let b = Brownout::start(1).await;
    let (addr, _e) = b.echo_proxy("d").await;
    let mut live = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut live, b"up").await;

    let patch = brownout::control::ProxyPatch {
        enabled: Some(false),
        ..Default::default()
    };
    let v = b.control.update("d", patch).await.unwrap();
    assert!(!v.enabled);
    let err = TcpStream::connect(addr)
        .await
        .expect_err("a disabled proxy refuses connections");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let (_, r) = read_to_end(&mut live, LONG).await;
    // Closed by FIN or RST: either way the read ended instead of waiting.
    assert!(
        !matches!(&r, Err(e) if e.kind() == ErrorKind::TimedOut),
        "live connection left open"
    );

    let patch = brownout::control::ProxyPatch {
        enabled: Some(true),
        ..Default::default()
    };
    let v = b.control.update("d", patch).await.unwrap();
    assert_eq!(v.listen, addr.to_string(), "same address after re-enabling");
    let mut again = TcpStream::connect(addr).await.unwrap();
    let (back, _) = round_trip(&mut again, b"again").await;
    assert_eq!(back, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_connection_does_not_disturb_another() {
    let b = Brownout::start(1).await;
    let (addr, _e) = b.echo_proxy("iso").await;
    // A proxy whose upstream is dead: its clients are closed, nothing else happens.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead_proxy = b.proxy("dead", dead).await;

    let mut good = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut good, b"before").await;
    for _ in 0..20 {
        let mut bad = TcpStream::connect(dead_proxy).await.unwrap();
        let (got, _) = read_to_end(&mut bad, LONG).await;
        assert!(got.is_empty());
        // A client that aborts mid-stream.
        let mut abort = TcpStream::connect(addr).await.unwrap();
        socket2::SockRef::from(&abort)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        abort.write_all(&payload(100_000)).await.unwrap();
        drop(abort);
    }
    let (back, _) = round_trip(&mut good, b"after").await;
    assert_eq!(back, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_repeats_toxicity_decisions() {
    async fn pattern(seed: u64) -> Vec<bool> {
        let b = Brownout::start(seed).await;
        let (echo, _e) = echo_server().await;
        let addr = b.proxy("seeded", echo).await;
        b.toxic(
            "seeded",
            json!({"type": "latency", "toxicity": 0.5, "attributes": {"latency": 150}}),
        )
        .await;
        let mut slow = Vec::new();
        for _ in 0..16 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let (_, rtt) = round_trip(&mut s, b"?").await;
            slow.push(rtt >= Duration::from_millis(150));
        }
        slow
    }
    let a = pattern(99).await;
    assert_eq!(a, pattern(99).await, "same seed, same decisions");
    assert!(
        a.iter().any(|s| *s) && a.iter().any(|s| !*s),
        "toxicity 0.5 must hit some: {a:?}"
    );
    assert_ne!(a, pattern(100).await, "another seed decides otherwise");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_track_bytes_connections_and_toxics() {
    let b = Brownout::start(1).await;
    let (echo, _e) = echo_server().await;
    let addr = b.proxy("m", echo).await;
    b.toxic(
        "m",
        json!({"name": "lat", "type": "latency", "attributes": {"latency": 1}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut s, &[7u8; 1000]).await;
    drop(s);
    let labels = format!("{{proxy=\"m\",listener=\"{addr}\",upstream=\"{echo}\"");
    // (metric, value, whether more is fine): the echo may come back in more than one read.
    let expected = [
        (
            format!("brownout_proxy_received_bytes_total{labels},direction=\"upstream\"}}"),
            1000,
            false,
        ),
        (
            format!("brownout_proxy_sent_bytes_total{labels},direction=\"downstream\"}}"),
            1000,
            false,
        ),
        (
            format!("brownout_proxy_connections_total{labels}}}"),
            1,
            false,
        ),
        (
            format!(
                "brownout_toxic_applied_total{labels},toxic=\"lat\",direction=\"downstream\"}}"
            ),
            1,
            true,
        ),
    ];
    // Counters are bumped right after each write, so the client can see its bytes a moment
    // before the counter does: look again until they agree, for a bounded time.
    let t = Instant::now();
    loop {
        let text = b.http("GET", "/metrics", None).await.body;
        let value = |prefix: &str| -> Option<u64> {
            text.lines()
                .find(|l| l.starts_with(prefix))?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        };
        let got: Vec<Option<u64>> = expected.iter().map(|(p, ..)| value(p)).collect();
        let ok = |(want, more): (u64, bool), got: Option<u64>| {
            got.is_some_and(|g| g == want || (more && g > want))
        };
        if expected
            .iter()
            .zip(&got)
            .all(|((_, want, more), got)| ok((*want, *more), *got))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "metrics {got:?}, expected {expected:?} in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
