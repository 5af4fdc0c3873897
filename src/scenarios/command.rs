//! An external command as the workload: the user's own agent or test suite, pointed at the
//! scenario's proxies, judged from its exit code and from what the proxies saw of its tool
//! calls. Each `tools/call` request the proxies read from it is a call in the history; the
//! answer they pass back ends it (`ok`, or `fail` for an error answer), and one never
//! answered by the end is `info` (`hung` past the workload's timeout plus grace). Its
//! answers cannot be checked, so nothing is `mismatched`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::history::{Call, History, Outcome};
use crate::proxy::events::{Event, Tap};

/// How long the command has to end after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Pairs the command's tool calls with their answers as the proxies see them.
pub struct Tracker {
    /// The workload's proxies: a call's index is its proxy's place here.
    proxies: Vec<String>,
    history: Arc<History>,
    /// After this long unanswered, a call is hung.
    hung_after: Duration,
    state: Mutex<Tracking>,
}

#[derive(Default)]
struct Tracking {
    /// When the command started (wall clock, seconds); calls count only from then until
    /// it ended, so the steady-state probes around it are not its calls.
    since: Option<f64>,
    /// Requests not answered yet, by (proxy, id).
    open: HashMap<(u16, String), Vec<Open>>,
}

/// A request not answered yet.
struct Open {
    connection: u64,
    session: Option<String>,
    /// When it came (wall clock, seconds).
    at: f64,
}

impl Tracking {
    /// The open request `e` answers: the one with its id on its connection, else in its
    /// session (an answer on another stream), else the only one with its id.
    fn answered(&mut self, key: &(u16, String), e: &Event) -> Option<f64> {
        let list = self.open.get_mut(key)?;
        let i = list
            .iter()
            .position(|o| o.connection == e.connection)
            .or_else(|| {
                e.session
                    .as_ref()
                    .and_then(|s| list.iter().position(|o| o.session.as_ref() == Some(s)))
            })
            .or_else(|| (list.len() == 1).then_some(0))?;
        let at = list.swap_remove(i).at;
        if list.is_empty() {
            self.open.remove(key);
        }
        Some(at)
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Tracker {
    pub fn new(proxies: Vec<String>, history: Arc<History>, hung_after: Duration) -> Arc<Self> {
        Arc::new(Tracker {
            proxies,
            history,
            hung_after,
            state: Mutex::default(),
        })
    }

    /// What the event sink calls with each event, before anyone else sees it.
    pub fn tap(self: &Arc<Self>) -> Tap {
        let me = self.clone();
        Arc::new(move |e: &Arc<Event>| me.see(e))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Tracking> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The command starts now.
    pub fn begin(&self) {
        self.state().since = Some(now());
    }

    /// The command ended: what is still unanswered ends as `info` (or `hung`).
    pub fn end(&self) {
        let end = now();
        let (since, open) = {
            let mut st = self.state();
            (st.since.take(), std::mem::take(&mut st.open))
        };
        let Some(since) = since else { return };
        let mut open: Vec<(u16, f64)> = open
            .into_iter()
            .flat_map(|((proxy, _), list)| list.into_iter().map(move |o| (proxy, o.at)))
            .collect();
        open.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (proxy, at) in open {
            let took = secs(end - at);
            let hung = took > self.hung_after;
            self.history.record(Call {
                client: 0,
                seq: 0,
                proxy,
                invoke: secs(at - since),
                took,
                outcome: if hung { Outcome::Hung } else { Outcome::Info },
                attempts: 1,
                explained: false,
                error: Some(
                    if hung {
                        "never answered"
                    } else {
                        "not answered when the command ended"
                    }
                    .into(),
                ),
            });
        }
    }

    fn see(&self, e: &Event) {
        let Some(proxy) = self.proxies.iter().position(|p| **p == *e.proxy) else {
            return;
        };
        let Some(id) = &e.id else { return };
        let key = (proxy as u16, id.to_string());
        let mut st = self.state();
        let Some(since) = st.since else { return };
        match (e.direction, e.kind) {
            ("upstream", "request") if e.method.as_deref() == Some("tools/call") => {
                st.open.entry(key).or_default().push(Open {
                    connection: e.connection,
                    session: e.session.clone(),
                    at: e.time,
                });
                drop(st);
                self.history.invoked();
            }
            ("downstream", "response" | "error") if e.delivered > 0 => {
                let Some(at) = st.answered(&key, e) else {
                    return;
                };
                drop(st);
                let ok = e.kind == "response";
                self.history.record(Call {
                    client: 0,
                    seq: 0,
                    proxy: proxy as u16,
                    invoke: secs(at - since),
                    took: secs(e.time - at),
                    outcome: if ok { Outcome::Ok } else { Outcome::Fail },
                    attempts: 1,
                    explained: !ok,
                    error: (!ok).then(|| "an error answer".into()),
                });
            }
            _ => {}
        }
    }
}

/// Run `command` (`{url}` replaced by the first proxy's URL, `{urls}` by all of them,
/// comma-separated; the same in `BROWNOUT_URL` and `BROWNOUT_URLS`), its output into `log`,
/// until it exits, `duration` is up or `stop` fires (then SIGTERM, and SIGKILL 5 s later).
/// Its exit code (128 + the signal when a signal ended it), or why it could not run.
pub async fn run(
    command: &[String],
    urls: &[String],
    duration: Option<Duration>,
    stop: &CancellationToken,
    log: &Path,
) -> Result<i32, String> {
    let first = urls.first().cloned().unwrap_or_default();
    let all = urls.join(",");
    let args: Vec<String> = command
        .iter()
        .map(|a| a.replace("{urls}", &all).replace("{url}", &first))
        .collect();
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(&args[0]);
    cmd.args(&args[1..])
        .env("BROWNOUT_URL", &first)
        .env("BROWNOUT_URLS", &all)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("workload.command: starting {:?}: {e}", args[0]))?;
    let pid = child.id().map_or(0, |p| p as i32);
    let until = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let exited = tokio::select! {
        s = child.wait() => Some(s),
        _ = until => None,
        _ = stop.cancelled() => None,
    };
    let status = match exited {
        Some(s) => s,
        None => end(&mut child, pid).await,
    }
    .map_err(|e| format!("waiting for the command: {e}"))?;
    // Whatever it started in its group goes with it.
    if pid > 0 {
        // SAFETY: the command's own process group, made for it at spawn.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// SIGTERM to the command's group, SIGKILL after the grace.
async fn end(
    child: &mut tokio::process::Child,
    pid: i32,
) -> std::io::Result<std::process::ExitStatus> {
    if pid > 0 {
        // SAFETY: the command's own process group, made for it at spawn.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

/// Run a timeline step's command to its end, its output appended to `log` under a line
/// that names it. An error says what went wrong: it could not start, it exited non-zero,
/// or it outlived `timeout` (then its whole process group is killed).
pub async fn step(argv: &[String], timeout: Duration, log: &Path) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let _ = writeln!(out, "== {}", argv.join(" "));
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", argv[0]))?;
    let pid = child.id().map_or(0, |p| p as i32);
    let status = tokio::time::timeout(timeout, child.wait()).await;
    if pid > 0 {
        // Whatever it left in its group goes too. SAFETY: its own group, made at spawn.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let name = log.file_name().unwrap_or_default().to_string_lossy();
    match status {
        Err(_) => {
            let _ = child.wait().await;
            Err(format!(
                "`{}` did not end within {timeout:?} and was killed (output in {name})",
                argv.join(" ")
            ))
        }
        Ok(Err(e)) => Err(format!("waiting for `{}`: {e}", argv.join(" "))),
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => {
            use std::os::unix::process::ExitStatusExt;
            let how = match (s.code(), s.signal()) {
                (Some(c), _) => format!("exited with {c}"),
                (None, Some(sig)) => format!("was ended by signal {sig}"),
                _ => "failed".into(),
            };
            Err(format!("`{}` {how} (output in {name})", argv.join(" ")))
        }
    }
}
