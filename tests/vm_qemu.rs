//! QEMU microVM guests (TCG on machines without real KVM), one at a time: crash during a
//! call, crash/restart cycles, rapid spawn/kill, pause/resume, too little memory, bad
//! images. Needs the image from scripts/guest-image.sh (the test command builds it).

#![cfg(feature = "rmcp")]

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use brownout::vm::{Backend, Guest, GuestSpec, Snapshot, State, VmError};
use common::rmcp::{Client, bounded_client, call, through_brownout};

/// Boots under TCG on a loaded 2-core machine take 5–15 s; leave room.
const BOOT: Duration = Duration::from_secs(180);
const LONG: Duration = Duration::from_secs(60);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spec(name: &str) -> GuestSpec {
    let mut s = GuestSpec::new(name, Backend::Qemu);
    s.ready_timeout_ms = Some(BOOT.as_millis() as u64);
    s
}

async fn client(url: String) -> Client {
    bounded_client(url, LONG).await
}

fn assert_nothing_left(before: &Snapshot) {
    let after = Snapshot::take();
    assert_eq!(after.processes, before.processes, "{after:?}");
    assert_eq!(after.zombies, 0, "{after:?}");
    assert_eq!(after.temp_dirs, before.temp_dirs, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_call_then_five_crashes_and_restarts_keep_synced_data() {
    let _one = SERIAL.lock().await;
    let mut guest = Guest::spawn(spec("crashy")).await.expect("boot");
    let upstream = guest.upstream().unwrap();
    assert!(upstream.ip().is_loopback(), "{upstream}");
    let (_b, proxy, c) = through_brownout("crashy", upstream, LONG).await;
    let url = format!("http://{proxy}/mcp");
    call(
        &c,
        "write_file",
        json!({"path": "kept", "content": "synced"}),
        LONG,
    )
    .await
    .expect("write_file");
    assert_eq!(
        std::fs::read_to_string(guest.data_dir().join("kept")).unwrap(),
        "synced"
    );
    let slow = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = call(&c, "sleep", json!({"ms": 60_000}), LONG).await;
        (r, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = guest.kill().await.expect("report").clone();
    assert!(report.clean, "{report:?}");
    let (result, took) = slow.await.unwrap();
    assert!(result.is_err(), "the call survived a kill: {result:?}");
    assert!(
        took < Duration::from_secs(30),
        "the client hung for {took:?}"
    );

    for round in 0..5 {
        guest.restart().await.expect("restart");
        assert_eq!(guest.upstream(), Some(upstream), "round {round}");
        let c = client(url.clone()).await;
        let read = call(&c, "read_file", json!({"path": "kept"}), LONG)
            .await
            .expect("read_file");
        assert_eq!(read, "synced", "round {round}");
        drop(c);
        let report = guest.kill().await.expect("report");
        assert!(report.clean, "round {round}: {report:?}");
    }
    let report = guest.delete().await;
    assert!(report.clean, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_rapid_spawn_kill_cycles_leave_nothing() {
    let _one = SERIAL.lock().await;
    let before = Snapshot::take();
    for i in 0..10 {
        let guest = Guest::start(spec(&format!("rapid{i}"))).expect("start");
        tokio::time::sleep(Duration::from_millis(50 * i)).await;
        let report = guest.delete().await;
        assert!(report.clean, "cycle {i}: {report:?}");
    }
    assert_nothing_left(&before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_unplug_plug_then_stop() {
    let _one = SERIAL.lock().await;
    let mut guest = Guest::spawn(spec("paused")).await.expect("boot");
    let (_b, proxy, c) = through_brownout("paused", guest.upstream().unwrap(), LONG).await;
    guest.pause().expect("pause");
    assert_eq!(guest.state(), State::Paused);
    let frozen = call(&c, "echo", json!({"text": "hi"}), Duration::from_secs(1)).await;
    assert!(
        matches!(frozen, Err(rmcp::service::ServiceError::Timeout { .. })),
        "a paused VM should not answer: {frozen:?}"
    );
    guest.resume().expect("resume");
    let thawed = call(&c, "echo", json!({"text": "back"}), LONG)
        .await
        .unwrap();
    assert_eq!(thawed, "back");

    // Unplugged (QMP set_link off): the guest is up but nothing reaches it.
    guest.set_link(false).expect("unplug");
    assert!(guest.view().link_down);
    let silent = call(&c, "echo", json!({"text": "off"}), Duration::from_secs(2)).await;
    assert!(
        matches!(silent, Err(rmcp::service::ServiceError::Timeout { .. })),
        "an unplugged VM should time out, not answer or fail fast: {silent:?}"
    );
    guest.set_link(true).expect("plug");
    assert!(!guest.view().link_down);
    let back = client(format!("http://{proxy}/mcp")).await;
    assert_eq!(
        call(&back, "echo", json!({"text": "plugged"}), LONG)
            .await
            .unwrap(),
        "plugged"
    );
    drop((back, c));

    // A graceful stop (QMP quit) ends QEMU on its own terms, not by a signal.
    let report = guest.stop(LONG).await.expect("a report").clone();
    assert!(report.clean, "{report:?}");
    assert_eq!(guest.state(), State::Exited);
    let exit = guest.exit().expect("an exit").clone();
    assert_eq!((exit.code, exit.signal), (Some(0), None), "{exit:?}");
    assert!(exit.by_brownout, "{exit:?}");
    assert!(guest.delete().await.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_inside_the_vm_is_reported() {
    let _one = SERIAL.lock().await;
    let mut guest = Guest::spawn(spec("hungry")).await.expect("boot");
    let (_b, _proxy, c) = through_brownout("hungry", guest.upstream().unwrap(), LONG).await;
    // 24 MiB at a time until the VM's 128 MiB run out: the guest kernel's OOM killer
    // ends the server (one large allocation would just be refused), /init powers off.
    let mut failed = false;
    for _ in 0..10 {
        if call(&c, "allocate", json!({"mib": 24}), LONG)
            .await
            .is_err()
        {
            failed = true;
            break;
        }
    }
    assert!(failed, "240 MiB held in a 128 MiB VM");
    let deadline = Instant::now() + LONG;
    while guest.state() != State::Exited && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(guest.state(), State::Exited, "{}", guest.log_tail());
    let exit = guest.exit().unwrap().clone();
    assert!(exit.out_of_memory, "{exit:?}: {}", guest.log_tail());
    assert!(!exit.by_brownout, "{exit:?}");
    let report = guest.delete().await;
    assert!(report.clean, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_memory_and_bad_images_fail_clearly() {
    let _one = SERIAL.lock().await;
    let before = Snapshot::take();

    let mut tiny = spec("tiny");
    tiny.memory_mib = Some(24);
    // It either stops at once or never prints a thing; either way it is not coming up.
    tiny.ready_timeout_ms = Some(30_000);
    let err = Guest::spawn(tiny)
        .await
        .err()
        .expect("a 24 MiB guest cannot boot");
    assert!(
        matches!(err, VmError::ExitedEarly { .. } | VmError::NotReady { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("guest tiny"), "{err}");

    let mut missing = spec("missing");
    missing.image = Some("/nonexistent/image".into());
    let err = Guest::spawn(missing).await.err().expect("no image");
    assert!(
        err.to_string().contains("no guest image")
            && err.to_string().contains("/nonexistent/image"),
        "{err}"
    );

    let broken = tempdir("broken-image");
    std::fs::write(broken.join("vmlinux"), b"not a kernel").unwrap();
    std::fs::write(broken.join("initramfs.cpio"), b"").unwrap();
    let mut bad = spec("broken");
    bad.image = Some(broken.clone());
    bad.ready_timeout_ms = Some(20_000);
    let err = Guest::spawn(bad).await.err().expect("a broken kernel");
    assert!(
        matches!(err, VmError::ExitedEarly { .. } | VmError::NotReady { .. }),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&broken);
    assert_nothing_left(&before);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("brownout-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A boot that fails on the host's account but does not stop (the guest says it found no
/// network device, then halts instead of powering off) is stopped and tried again, and then
/// reported as the early exit it is, with the guest's words, instead of waiting out the
/// ready timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_boot_that_halts_is_retried_then_reported() {
    let _one = SERIAL.lock().await;
    let before = Snapshot::take();
    let dir = tempdir("halting-image");
    let real = brownout::vm::qemu::image_dir(None).expect("the guest image");
    std::fs::copy(real.join("vmlinux"), dir.join("vmlinux")).unwrap();
    // An initramfs whose /init says what the real one says without a network device, and
    // then never powers off.
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let init = "#!/bin/busybox sh\n\
                /bin/busybox echo 'brownout-guest: no network device; powering off'\n\
                exec /bin/busybox sleep 1000000\n";
    std::fs::write(root.join("init"), init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cpio = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . | /bin/busybox cpio -o -H newc > ../initramfs.cpio 2>/dev/null")
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(cpio.success());

    let mut halting = spec("halting");
    halting.image = Some(dir.clone());
    let err = Guest::spawn(halting)
        .await
        .err()
        .expect("a guest with no network cannot come up");
    assert!(matches!(err, VmError::ExitedEarly { .. }), "{err}");
    assert!(err.to_string().contains("no network device"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    assert_nothing_left(&before);
}
