//! Process guests: brownout-mcp-server as a plain child process in a process group of its
//! own, on a loopback port. No root needed. Signals, forced kills, orphans, restarts.

#![cfg(feature = "rmcp")]

use std::time::Duration;

mod common;

use brownout::vm::{Backend, Guest, GuestSpec, Signal, State, VmError};
use common::{kill_running, running};

const SERVER: &str = env!("CARGO_BIN_EXE_brownout-mcp-server");
const GRACE: Duration = Duration::from_millis(500);

/// The server started through `sh -c SCRIPT`, where the script ends by exec'ing it.
fn through_shell(name: &str, script: &str) -> GuestSpec {
    let mut spec = GuestSpec::new(name, Backend::Process);
    spec.command = Some(vec![
        "sh".into(),
        "-c".into(),
        format!("{script}\nexec {SERVER} --root {{data}} --http 127.0.0.1:{{port}}"),
    ]);
    spec
}

#[tokio::test]
async fn each_signal_ends_the_server_as_its_disposition_says_and_a_restart_keeps_the_port() {
    let mut guest = Guest::spawn(GuestSpec::new("signals", Backend::Process))
        .await
        .expect("spawn");
    let upstream = guest.upstream().unwrap();
    assert!(upstream.ip().is_loopback(), "{upstream}");
    // brownout-mcp-server handles SIGTERM (exit 0); the others end it by their default.
    for (signal, code, by) in [
        (Signal::Term, Some(0), None),
        (Signal::Int, None, Some(libc::SIGINT)),
        (Signal::Hup, None, Some(libc::SIGHUP)),
        (Signal::Kill, None, Some(libc::SIGKILL)),
    ] {
        guest.signal(&[signal], GRACE).await.expect("signal");
        assert_eq!(guest.state(), State::Exited, "{signal:?}");
        let exit = guest.exit().unwrap().clone();
        assert_eq!((exit.code, exit.signal), (code, by), "{signal:?}: {exit:?}");
        assert!(!exit.forced, "{signal:?}");
        assert!(guest.report().unwrap().clean, "{:?}", guest.report());
        // Back on the same address, and serving (restart waits for a real HTTP answer).
        guest.restart().await.expect("restart");
        assert_eq!(guest.upstream(), Some(upstream));
    }
    let report = guest.delete().await;
    assert!(report.clean, "{report:?}");
}

#[tokio::test]
async fn a_server_that_ignores_a_signal_is_killed_after_the_grace_time_and_the_exit_says_forced() {
    let mut guest = Guest::spawn(through_shell("deaf", "trap '' HUP"))
        .await
        .expect("spawn");
    let t0 = std::time::Instant::now();
    guest.signal(&[Signal::Hup], GRACE).await.expect("signal");
    assert!(t0.elapsed() >= GRACE, "{:?}", t0.elapsed());
    let exit = guest.exit().unwrap();
    assert!(exit.forced, "{exit:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(
        exit.to_string().contains("did not end when asked"),
        "{exit}"
    );
    guest.delete().await;
}

#[tokio::test]
async fn children_the_server_leaves_running_are_reported_and_killed() {
    // A number no other test sleeps for, to find this child by.
    let secs = format!("{}", 100_000 + std::process::id());
    let mut guest = Guest::spawn(through_shell("parent", &format!("sleep {secs} &")))
        .await
        .expect("spawn");
    assert_eq!(running(&["sleep", &secs]).len(), 1);
    guest.kill().await.expect("running");
    // Whatever the checks below say, the child ends here.
    let alive = kill_running(&["sleep", &secs]);
    let report = guest.report().unwrap();
    assert!(!report.clean, "{report:?}");
    assert_eq!(report.leftovers.len(), 1, "{report:?}");
    assert!(
        report.leftovers[0].contains("left running by the server"),
        "{report:?}"
    );
    assert!(alive.is_empty(), "the orphan lived on: {alive:?}");
    guest.delete().await;
}

#[tokio::test]
async fn term_then_a_second_signal_lands_while_the_server_shuts_down() {
    let mut guest = Guest::spawn(GuestSpec::new("twice", Backend::Process))
        .await
        .expect("spawn");
    guest
        .signal(&[Signal::Term, Signal::Kill], GRACE)
        .await
        .expect("signal");
    let exit = guest.exit().unwrap();
    // Whichever ended it, it ended without being forced and left nothing.
    assert!(!exit.forced, "{exit:?}");
    assert!(guest.report().unwrap().clean);
    guest.delete().await;
}

#[tokio::test]
async fn pause_stops_the_process_group_and_unplug_is_refused_by_name() {
    let mut guest = Guest::spawn(GuestSpec::new("frozen", Backend::Process))
        .await
        .expect("spawn");
    guest.pause().unwrap();
    assert_eq!(guest.state(), State::Paused);
    let (data, http) = (
        guest.data_dir().display().to_string(),
        format!("{}", guest.upstream().unwrap()),
    );
    let pid = running(&[SERVER, "--root", &data, "--http", &http])[0];
    let stat = |_: &mut Guest| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        s[s.rfind(')').unwrap() + 2..].chars().next().unwrap()
    };
    assert_eq!(stat(&mut guest), 'T');
    guest.resume().unwrap();
    assert_ne!(stat(&mut guest), 'T');
    match guest.set_link(false) {
        Err(VmError::Invalid(m)) => assert!(m.starts_with("unplug:"), "{m}"),
        other => panic!("{other:?}"),
    }
    guest.delete().await;
}

#[tokio::test]
async fn fds_limits_the_servers_open_files() {
    let mut spec = GuestSpec::new("fds", Backend::Process);
    spec.fds = Some(32);
    let guest = Guest::spawn(spec).await.expect("spawn");
    let (data, http) = (
        guest.data_dir().display().to_string(),
        format!("{}", guest.upstream().unwrap()),
    );
    let pid = running(&[SERVER, "--root", &data, "--http", &http])[0];
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>()[3..5],
        ["32", "32"],
        "{line}"
    );
    guest.delete().await;
}

#[test]
fn process_specs_refuse_limits_they_cannot_apply() {
    for (body, field) in [
        (
            r#"{"name":"p","backend":"process","memory_mib":64}"#,
            "memory_mib",
        ),
        (r#"{"name":"p","backend":"process","pids":5}"#, "pids"),
        (r#"{"name":"p","backend":"process","image":"/x"}"#, "image"),
        (r#"{"name":"p","backend":"process","fds":3}"#, "fds"),
        (r#"{"name":"p","backend":"qemu","disk_mib":8}"#, "disk_mib"),
        (r#"{"name":"p","disk_mib":8,"data_dir":"/tmp"}"#, "disk_mib"),
    ] {
        match GuestSpec::from_json(body.as_bytes()) {
            Err(VmError::Invalid(m)) => assert!(m.starts_with(field), "{m}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    let mut spec = GuestSpec::new("p", Backend::Process);
    spec.command = Some(vec!["/no/such/server".into()]);
    match Guest::start(spec) {
        Err(VmError::Invalid(m)) => assert!(m.contains("/no/such/server"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started a missing program"),
    }
}
