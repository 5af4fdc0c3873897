//! Third-party Toxiproxy client libraries, installed from their registries by the test
//! script, drive brownout unchanged and see the effects.

mod common;

use std::process::Command;

use common::bin::Server;
use common::{clients, echo_server, python};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_python_client() {
    let (echo, _e) = echo_server().await;
    let srv = Server::start(&[]);
    let api = srv.url.trim_start_matches("http://").to_owned();
    let (host, port) = api
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .unwrap();
    let script = clients().join("toxiproxy_python.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .args([host, port, echo.to_string()])
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
