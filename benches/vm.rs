//! Guest lifecycle costs: spawn-to-ready and kill-to-cleanup for the namespace and QEMU
//! backends (median and max of 10), and brownout's own RSS and open fds before and after
//! 100 namespace spawn/kill cycles.
//!
//! `cargo bench --bench vm` (root; the QEMU half needs the image from
//! scripts/guest-image.sh and is skipped with `BROWNOUT_BENCH_QEMU=0`).

use std::time::{Duration, Instant};

use brownout::vm::{Backend, Guest, GuestSpec};

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn cycles(backend: Backend, n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut ready, mut cleanup) = (Vec::new(), Vec::new());
    for i in 0..n {
        let spec = GuestSpec::new(&format!("bench{i}"), backend);
        let t0 = Instant::now();
        let mut guest = Guest::spawn(spec).await.expect("spawn");
        ready.push(t0.elapsed().as_secs_f64() * 1000.0);
        let report = guest.kill().await.expect("report").clone();
        assert!(report.clean, "{report:?}");
        cleanup.push(guest.timings().cleanup_ms.expect("cleanup time"));
        guest.delete().await;
    }
    (ready, cleanup)
}

fn print(name: &str, (ready, cleanup): (Vec<f64>, Vec<f64>)) {
    let n = ready.len();
    let (r50, rmax) = stats(ready);
    let (c50, cmax) = stats(cleanup);
    println!(
        "{name:<10} spawn-to-ready median {r50:8.1} ms  max {rmax:8.1} ms   \
         kill-to-cleanup median {c50:6.1} ms  max {cmax:6.1} ms   (n={n})"
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("guest lifecycle (median and max of 10)");
    print("namespace", cycles(Backend::Namespace, 10).await);
    if std::env::var("BROWNOUT_BENCH_QEMU").as_deref() != Ok("0") {
        println!("qemu accelerator: {}", brownout::vm::qemu::accelerator());
        print("qemu", cycles(Backend::Qemu, 10).await);
    }

    // Warm up once so lazily made things (thread pools, the lease dir) are not counted.
    cycles(Backend::Namespace, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss0, fds0) = (rss_kib(), fds());
    let t0 = Instant::now();
    cycles(Backend::Namespace, 100).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss1, fds1) = (rss_kib(), fds());
    println!(
        "100 namespace spawn/kill cycles in {:.1} s: RSS {rss0} KiB -> {rss1} KiB, open fds {fds0} -> {fds1}",
        t0.elapsed().as_secs_f64()
    );
}
