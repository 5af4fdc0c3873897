//! Scenarios: a reliability plan as a file, run against the real thing.
//!
//! A scenario names a target (brownout's own MCP server in-process, an MCP server over HTTP,
//! a stdio server command, or a guest of the VM module), the proxies in front of it, a workload of real MCP tool
//! calls, a timeline of faults, and checks with thresholds. [`run`] starts it all on an
//! in-process control plane, records every call (invoke, then ok, fail or info) and every
//! step, always rolls back, and judges the checks.
//!
//! - [`file`]: the TOML format, parsed and checked before anything starts.
//! - [`workload`]: the MCP clients and their checkable calls; [`command`], an external
//!   command as the workload instead, judged from what the proxies saw.
//! - [`timeline`]: steps, their triggers and undo, rollback.
//! - [`history`]: the calls, the fault periods, the figures over them.
//! - [`checks`]: threshold expressions over figures.
//! - [`report`]: results as JSON, JUnit XML and a terminal summary; [`html`], the page.
//! - [`suites`]: the scenarios brownout ships, runnable by name; [`demo`], `brownout demo`.

pub mod checks;
pub mod command;
pub mod demo;
pub mod file;
pub mod history;
pub mod html;
pub mod remote;
pub mod report;
pub mod suites;
pub mod timeline;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::control::{Control, ControlHandle, NewProxy};
use crate::proxy::events::EventSink;
use crate::vm::Snapshot;
use file::{Scenario, Target};
use history::{Counters, History, Latency};
use report::{Outcome, Resources, Results};
use timeline::Stage;

pub use file::{FileError, load, parse};

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Overrides the file's seed; a random one is chosen (and reported) when neither is set.
    pub seed: Option<u64>,
    /// Where results, the call history and the event history go.
    pub out: PathBuf,
    /// How to show the run while it goes (on stderr).
    pub progress: Progress,
}

/// Progress while a scenario runs.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    Quiet,
    /// A line of counters this often: for logs (CI, or stderr not a terminal).
    Lines(Duration),
    /// A bar with the counters and the faults on, redrawn in place: for a terminal.
    Bar,
}

/// What a running scenario holds, stopped in [`Running::teardown`].
struct Running {
    control: ControlHandle,
    /// Proxies made on other brownout servers, and the tasks following their histories.
    remotes: Vec<(remote::Remote, String)>,
    followers: Vec<tokio::task::JoinHandle<()>>,
    embedded: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// The server's files, in a directory the run made (the embedded server's, a stdio
    /// server's `{data}`), removed at teardown.
    files: Option<PathBuf>,
    /// The target's guest, by its name in the control plane.
    guest: Option<String>,
    /// Where the target's server listens (the proxies' upstream).
    upstream: Option<String>,
    /// The results directory: where the servers a stdio target starts log.
    out: PathBuf,
}

/// What the workload and the timeline left, for the results.
#[derive(Default)]
struct Ran {
    error: Option<String>,
    aborted_by: Option<String>,
    steps: Vec<timeline::StepRecord>,
    failing_step: Option<timeline::StepRecord>,
    windows: Vec<history::Window>,
    terminations: Vec<bool>,
    orphans: usize,
    oom_kills: usize,
    /// The external command's exit code, when it was the workload.
    exit_code: Option<i32>,
    /// brownout's resident memory over the workload: (seconds in, KiB).
    rss: Vec<(f64, u64)>,
}

/// Run `scenario` and write its results into `opts.out`. The results say whether it
/// passed; an `Err` is only for results that could not be written.
pub async fn run(scenario: &Scenario, opts: &RunOptions) -> std::io::Result<Results> {
    let seed = opts
        .seed
        .or(scenario.seed)
        .unwrap_or_else(|| fastrand::u64(..));
    std::fs::create_dir_all(&opts.out)?;
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let t0 = Instant::now();
    let before = Snapshot::take();

    let (mut sink, events_file) = EventSink::default().with_file(&opts.out.join("events.jsonl"))?;
    let history = Arc::new(History::default());
    // An external command's calls are read off the proxies' events, each one as it passes.
    let tracker = scenario.workload.command.as_ref().map(|_| {
        let w = &scenario.workload;
        command::Tracker::new(w.proxy_names(), history.clone(), w.timeout + w.grace)
    });
    if let Some(t) = &tracker {
        sink = sink.with_tap(t.tap());
    }
    let mut running = Running {
        control: Control::spawn_with_events(seed, Some(sink)),
        remotes: Vec::new(),
        followers: Vec::new(),
        embedded: None,
        files: None,
        guest: None,
        upstream: None,
        out: opts.out.clone(),
    };
    // Cancellations the server received, counted from the proxies' history as they pass.
    let cancels = count_cancels(running.control.events());
    let mut steady: Option<(Vec<checks::Verdict>, Option<Vec<checks::Verdict>>)> = None;
    let mut audit: Option<Audit> = None;
    let ran = match start(scenario, &mut running, seed).await {
        Err(e) => Ran {
            error: Some(e),
            ..Ran::default()
        },
        Ok(routes) => {
            let before = match &scenario.steady_state {
                Some(st) => Some(probe(scenario, st, &routes, seed).await),
                None => None,
            };
            if before.as_ref().is_some_and(|b| b.iter().any(|v| !v.passed)) {
                steady = before.map(|b| (b, None));
                Ran::default()
            } else {
                let ran = drive(
                    scenario,
                    &running,
                    routes.clone(),
                    seed,
                    &history,
                    tracker.as_deref(),
                    opts,
                )
                .await;
                // Before the steady-state probe after: the state the run left.
                audit = audited(scenario, &running, seed, &history).await;
                if let (Some(st), Some(before)) = (&scenario.steady_state, before) {
                    let after = probe(scenario, st, &routes, seed.wrapping_add(1)).await;
                    steady = Some((before, Some(after)));
                }
                ran
            }
        }
    };
    running.teardown().await;
    // The control plane and every proxy are gone, and with them every handle on the event
    // file: once its writer ends, everything recorded is on disk.
    let _ = tokio::time::timeout(Duration::from_secs(10), events_file).await;
    let after = Snapshot::take();

    let calls = history.calls();
    let proxies = scenario.workload.proxy_names();
    let clean_termination = (!ran.terminations.is_empty()).then(|| {
        ran.terminations.iter().filter(|c| **c).count() as f64 / ran.terminations.len() as f64
    });
    let figures = history::figures(
        &calls,
        &proxies,
        &ran.windows,
        clean_termination,
        Some(leaks(&before, &after) as f64),
    );
    let mut figures = figures;
    figures.insert("rss_growth_mib".into(), rss_growth_mib(&ran.rss));
    figures.insert("orphans".into(), Some(ran.orphans as f64));
    figures.insert("oom_kills".into(), Some(ran.oom_kills as f64));
    figures.insert("exit_code".into(), ran.exit_code.map(f64::from));
    figures.insert("lost_writes".into(), audit.map(|a| a.lost as f64));
    figures.insert("phantom_writes".into(), audit.map(|a| a.phantom as f64));
    figures.insert(
        "duplicated_writes".into(),
        audit.and_then(|a| a.duplicated).map(|d| d as f64),
    );
    let timed_out = history::timed_out(&calls);
    let cancelled = cancels.load(std::sync::atomic::Ordering::Relaxed);
    figures.insert(
        "cancelled".into(),
        (timed_out > 0).then(|| (cancelled as f64 / timed_out as f64).min(1.0)),
    );
    let mut checks: Vec<checks::Verdict> = Vec::new();
    let mut steady_state = None;
    if let Some((before, after)) = steady {
        let held = |v: &[checks::Verdict]| v.iter().all(|c| c.passed);
        steady_state = Some(report::SteadyStateResult {
            calls: scenario.steady_state.as_ref().map_or(0, |s| s.calls),
            before: held(&before),
            after: after.as_deref().map(held),
            deviated: held(&before) && after.as_deref().is_some_and(|a| !held(a)),
        });
        fn named(when: &'static str, v: Vec<checks::Verdict>) -> Vec<checks::Verdict> {
            v.into_iter()
                .map(|mut c| {
                    c.name = format!("steady_state.{when}: {}", c.name);
                    c
                })
                .collect()
        }
        checks.extend(named("before", before));
        if let Some(after) = after {
            // The run's own checks between the two probes, as they were judged.
            checks.extend(scenario.checks.iter().map(|c| c.judge(&figures)));
            checks.extend(named("after", after));
        }
    } else {
        checks.extend(scenario.checks.iter().map(|c| c.judge(&figures)));
    }
    let verdict = if ran.error.is_some() {
        Outcome::Error
    } else if checks.iter().all(|c| c.passed) {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    let per_proxy: BTreeMap<String, Counters> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                p.clone(),
                Counters::of(calls.iter().filter(|c| c.proxy as usize == i)),
            )
        })
        .collect();
    let results = Results {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        source: scenario.source.clone(),
        seed,
        brownout: env!("CARGO_PKG_VERSION"),
        target: scenario.target.describe(),
        started,
        duration_s: t0.elapsed().as_secs_f64(),
        verdict,
        error: ran.error,
        aborted_by: ran.aborted_by,
        failing_step: ran.failing_step,
        checks,
        steady_state,
        counters: Counters::of(calls.iter()),
        per_proxy,
        latency_ms: Latency::of(calls.iter()),
        recovery_s: history::recoveries(&calls, &ran.windows),
        faults: ran.windows,
        steps: ran.steps,
        resources: Resources {
            before,
            after,
            rss_kib: report::Rss::of(&ran.rss),
            rss_growth_mib: rss_growth_mib(&ran.rss),
        },
        history: "history.jsonl".into(),
        events: "events.jsonl".into(),
    };
    results.write(&opts.out, &calls)?;
    Ok(results)
}

/// The workload and the timeline together, until the workload is done or the run is
/// stopped; then rollback.
async fn drive(
    scenario: &Scenario,
    running: &Running,
    routes: Vec<workload::Route>,
    seed: u64,
    history: &Arc<History>,
    tracker: Option<&command::Tracker>,
    opts: &RunOptions,
) -> Ran {
    let start = Instant::now();
    let remotes = running
        .remotes
        .iter()
        .map(|(r, name)| (name.clone(), r.clone()))
        .collect();
    let mut stage = Stage::new(
        running.control.clone(),
        remotes,
        running.guest.clone(),
        start,
        history.clone(),
        seed,
        scenario.workload.proxy_names(),
    );
    stage.upstream = running.upstream.clone();
    stage.files = running.files.clone();
    stage.log = opts.out.join("steps.log");
    let stage = Arc::new(stage);
    let stop = CancellationToken::new();
    // The command gets each proxy's URL once, in the workload's order.
    let mut urls: Vec<String> = Vec::new();
    for r in &routes {
        if !urls.contains(&r.url) {
            urls.push(r.url.clone());
        }
    }
    let driver = Arc::new(workload::Driver {
        workload: scenario.workload.clone(),
        routes,
        seed,
        history: history.clone(),
        start,
        stop: stop.clone(),
        dir: workload::RUN_DIR,
        ending: Default::default(),
    });
    let work = async {
        match (&scenario.workload.command, tracker) {
            (Some(cmd), Some(t)) => {
                t.begin();
                let log = opts.out.join("command.log");
                let r = command::run(cmd, &urls, scenario.workload.duration, &stop, &log).await;
                t.end();
                r.map(Some)
            }
            _ => {
                driver.run().await;
                Ok(None)
            }
        }
    };
    tokio::pin!(work);
    let mut steps = tokio::task::JoinSet::new();
    for step in scenario.steps.clone() {
        let (stage, events) = (stage.clone(), running.control.events());
        steps.spawn(async move { stage.run_step(&step, events).await });
    }
    let mut aborted_by = None;
    let mut rss = Vec::new();
    // When the watch stops the run, the workload still ends by itself (the clients give up
    // their calls, the command gets SIGTERM), so what it did is recorded.
    let worked = tokio::select! {
        r = &mut work => r,
        why = watch(scenario, history, &stage, &stop, opts.progress, &mut rss) => {
            stop.cancel();
            aborted_by = why;
            work.await
        }
    };
    rss.extend(rss_kib().map(|k| (start.elapsed().as_secs_f64(), k)));
    let duration = start.elapsed();
    // Steps still waiting for their trigger or their undo end here; rollback undoes
    // whatever they left on.
    steps.abort_all();
    while steps.join_next().await.is_some() {}
    stage.rollback().await;
    let failing_step = stage.failed();
    let (exit_code, work_error) = match worked {
        Ok(code) => (code, None),
        Err(e) => (None, Some(e)),
    };
    let error = work_error.or_else(|| {
        failing_step.as_ref().map(|step| {
            format!(
                "{} failed: {}: {}",
                step.step,
                step.action,
                step.error.clone().unwrap_or_default()
            )
        })
    });
    Ran {
        error,
        aborted_by,
        steps: stage.records(),
        failing_step,
        windows: stage.windows(duration),
        terminations: stage.terminations(),
        orphans: stage.orphans(),
        oom_kills: stage.oom_kills(),
        exit_code,
        rss,
    }
}

/// Probe the steady state: `st.calls` calls, one client per entry of the workload's proxy
/// list, nothing else running; the hypothesis's checks over just those calls.
async fn probe(
    scenario: &Scenario,
    st: &file::SteadyState,
    routes: &[workload::Route],
    seed: u64,
) -> Vec<checks::Verdict> {
    let history = Arc::new(History::default());
    let workload = file::Workload {
        clients: routes.len().max(1),
        calls: Some(st.calls),
        duration: None,
        rate: None,
        timeout: st.timeout,
        ..scenario.workload.clone()
    };
    let driver = Arc::new(workload::Driver {
        workload,
        routes: routes.to_vec(),
        seed,
        history: history.clone(),
        start: Instant::now(),
        stop: CancellationToken::new(),
        dir: "steady-state",
        ending: Default::default(),
    });
    driver.run().await;
    let calls = history.calls();
    let figures = history::figures(&calls, &scenario.workload.proxy_names(), &[], None, None);
    st.checks.iter().map(|c| c.judge(&figures)).collect()
}

/// Start the target and the proxies; the route of each entry of the workload's proxy
/// list (see [`workload::Driver::routes`]).
async fn start(
    scenario: &Scenario,
    running: &mut Running,
    seed: u64,
) -> Result<Vec<workload::Route>, String> {
    let files = || -> Result<PathBuf, String> {
        let root =
            std::env::temp_dir().join(format!("brownout-scenario-{}-{}", std::process::id(), seed));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        Ok(root)
    };
    let (upstream, path) = match &scenario.target {
        Target::Stdio { command } => {
            let root = files()?;
            running.files = Some(root.clone());
            return stdio_routes(scenario, running, command.as_deref(), &root).await;
        }
        Target::Embedded => {
            let root = files()?;
            running.files = Some(root.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("the embedded server cannot listen: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let stop = CancellationToken::new();
            let task = tokio::spawn({
                let (root, stop) = (root.clone(), stop.clone());
                async move {
                    let _ =
                        crate::mcp::server::serve_http_on(root, listener, stop.cancelled_owned())
                            .await;
                }
            });
            running.embedded = Some((stop, task));
            (addr.to_string(), "/mcp".to_owned())
        }
        Target::Http { addr, path } => (addr.clone(), path.clone()),
        Target::Guest(spec) => {
            let view = running
                .control
                .spawn_guest((**spec).clone(), true)
                .await
                .map_err(|e| format!("the guest did not start: {e}"))?;
            running.guest = Some(view.name.clone());
            let addr = view.upstream.ok_or("the guest has no address")?;
            (addr, "/mcp".to_owned())
        }
    };
    running.upstream = Some(upstream.clone());
    let mut listen = BTreeMap::new();
    for p in &scenario.proxies {
        if let Some(r) = &p.remote {
            // Follow its history first, so the merged one misses nothing of this proxy.
            if !running.remotes.iter().any(|(q, _)| q == r) {
                let follower = r
                    .follow(running.control.event_sink())
                    .await
                    .map_err(|e| format!("proxy {}: {e}", p.name))?;
                running.followers.push(follower);
            }
            let at = r
                .create(&p.name, &upstream)
                .await
                .map_err(|e| format!("proxy {}: {e}", p.name))?;
            running.remotes.push((r.clone(), p.name.clone()));
            listen.insert(p.name.clone(), at);
            continue;
        }
        let view = running
            .control
            .create(NewProxy {
                protocol: p.protocol,
                name: p.name.clone(),
                listen: "127.0.0.1:0".into(),
                upstream: upstream.clone(),
                enabled: true,
            })
            .await
            .map_err(|e| format!("proxy {}: {e}", p.name))?;
        listen.insert(p.name.clone(), view.listen);
    }
    Ok(routes(scenario, |p| {
        (format!("http://{}{path}", listen[p]), None)
    }))
}

/// A route per entry of the workload's proxy list: its URL and stdio relay by `reach`.
fn routes(
    scenario: &Scenario,
    reach: impl Fn(&str) -> (String, Option<Arc<workload::StdioRoute>>),
) -> Vec<workload::Route> {
    let names = scenario.workload.proxy_names();
    scenario
        .workload
        .proxies
        .iter()
        .map(|p| {
            let (url, stdio) = reach(p);
            workload::Route {
                proxy: names.iter().position(|n| n == p).expect("named") as u16,
                url,
                stdio,
            }
        })
        .collect()
}

/// A stdio target's routes: each proxy a stdio relay of the control plane, through which
/// every workload client starts a server of its own (`command`, `{data}` in it the run's
/// directory; brownout's own server there when none is given).
async fn stdio_routes(
    scenario: &Scenario,
    running: &Running,
    command: Option<&[String]>,
    root: &Path,
) -> Result<Vec<workload::Route>, String> {
    let data = root.display().to_string();
    let command: Vec<std::ffi::OsString> = match command {
        Some(c) => c
            .iter()
            .map(|a| a.replace("{data}", &data).into())
            .collect(),
        None => vec![
            crate::vm::sibling_program("brownout-mcp-server").into(),
            "--root".into(),
            data.into(),
        ],
    };
    let line = crate::proxy::stdio::command_line(&command);
    let mut relays = BTreeMap::new();
    for p in &scenario.proxies {
        let attached = running
            .control
            .attach(&p.name, &line, Vec::new())
            .await
            .map_err(|e| format!("proxy {}: {e}", p.name))?;
        relays.insert(
            p.name.clone(),
            Arc::new(workload::StdioRoute {
                command: command.clone(),
                name: p.name.as_str().into(),
                seed: crate::faults::derive_seed(running.control.seed(), &p.name),
                toxics: attached.toxics,
                stats: attached.stats,
                events: running.control.event_sink(),
                log: running.out.join("server.log"),
            }),
        );
    }
    Ok(routes(scenario, |p| {
        (format!("stdio:{p}"), Some(relays[p].clone()))
    }))
}

impl Running {
    /// Stop everything the run started: the guest, the proxies, the embedded server.
    async fn teardown(mut self) {
        if let Some(g) = self.guest.take() {
            let _ = self.control.delete_guest(&g).await;
        }
        for (r, name) in std::mem::take(&mut self.remotes) {
            if let Err(e) = r.delete(&name).await {
                tracing::warn!(error = %e, "a proxy on another brownout server was left");
            }
        }
        // Their events are all in; the followers hold the event file open until they end.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for f in std::mem::take(&mut self.followers) {
            f.abort();
            let _ = f.await;
        }
        let _ = self.control.shutdown().await;
        if let Some((stop, task)) = self.embedded.take() {
            stop.cancel();
            let _ = task.await;
        }
        if let Some(root) = self.files.take() {
            let _ = std::fs::remove_dir_all(&root);
        }
    }
}

/// Watch a running scenario: print progress, stop on a failed abort check (its name is
/// returned), a failed step, or Ctrl-C. Never returns while none of those happen.
async fn watch(
    scenario: &Scenario,
    history: &History,
    stage: &Stage,
    stop: &CancellationToken,
    progress: Progress,
    rss: &mut Vec<(f64, u64)>,
) -> Option<String> {
    let aborts: Vec<_> = scenario.checks.iter().filter(|c| c.abort).collect();
    let bar = matches!(progress, Progress::Bar).then(|| progress_bar(&scenario.workload));
    let proxies = scenario.workload.proxy_names();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_print: Option<Instant> = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut interrupted => {
                eprintln!("interrupted: rolling back");
                return None;
            }
            _ = stop.cancelled() => return None,
        }
        if stage.failed().is_some() {
            return None;
        }
        rss.extend(rss_kib().map(|k| (stage.start.elapsed().as_secs_f64(), k)));
        let line = || {
            let c = history.counters();
            let on: Vec<String> = stage
                .open_windows()
                .into_iter()
                .filter(|w| w.until.is_none())
                .map(|w| w.what)
                .collect();
            let counts = format!(
                "calls {} ok {} fail {} info {} hung {}",
                c.calls, c.ok, c.fail, c.info, c.hung
            );
            let on = if on.is_empty() {
                String::new()
            } else {
                format!("  | on: {}", on.join("; "))
            };
            (c.calls, counts + &on)
        };
        match (progress, &bar) {
            (Progress::Lines(every), _) if last_print.is_none_or(|t| t.elapsed() >= every) => {
                last_print = Some(Instant::now());
                eprintln!(
                    "[{:6.1}s] {}",
                    stage.start.elapsed().as_secs_f64(),
                    line().1
                );
            }
            (Progress::Bar, Some(bar)) => {
                let (calls, text) = line();
                // The message first: setting the position draws.
                bar.set_message(text);
                bar.set_position(match scenario.workload.calls {
                    Some(_) => calls,
                    None => stage.start.elapsed().as_millis() as u64,
                });
            }
            _ => {}
        }
        // Only abort checks need the calls themselves.
        if !aborts.is_empty() {
            let calls = history.calls();
            let windows = stage.windows(stage.start.elapsed());
            let f = history::figures(&calls, &proxies, &windows, None, None);
            if let Some(c) = aborts.iter().find(|c| {
                let v = c.judge(&f);
                !v.passed && v.figure.is_some()
            }) {
                return Some(c.name.clone());
            }
        }
    }
}

/// A bar over the workload's calls, or its duration when it has no count; cleared when the
/// run ends, before the summary.
fn progress_bar(w: &file::Workload) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
    let (len, template) = match (w.calls, w.duration) {
        (Some(n), _) => (n, "{elapsed:>4} [{bar:30}] {pos}/{len} {wide_msg}"),
        (None, Some(d)) => (
            d.as_millis() as u64,
            "{elapsed:>4} [{bar:30}] {percent:>3}% {wide_msg}",
        ),
        (None, None) => (0, "{elapsed:>4} {wide_msg}"),
    };
    let style = ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_finish(ProgressFinish::AndClear)
}

/// What reading the target's files back after the run found.
#[derive(Clone, Copy, Debug)]
struct Audit {
    /// Acknowledged writes (ok calls) whose file is gone or holds something else.
    lost: u64,
    /// Writes that failed (certainly no effect, sent once) whose text is there anyway.
    phantom: u64,
    /// Writes whose effect is there more than once; only `append` can show it (a
    /// `write_read` applied twice leaves the same file).
    duplicated: Option<u64>,
}

/// Read back what the run's `write_read` or `append` calls left, where the target's files
/// are on this host (brownout's own server, a stdio server's `{data}`, a guest's data
/// dir); `None` otherwise.
async fn audited(
    scenario: &Scenario,
    running: &Running,
    seed: u64,
    history: &History,
) -> Option<Audit> {
    let kind = scenario.workload.call;
    let writes = matches!(kind, file::CallKind::WriteRead | file::CallKind::Append);
    if !writes || scenario.workload.command.is_some() {
        return None;
    }
    let root = match (&running.files, &running.guest) {
        (Some(root), _) => root.clone(),
        (None, Some(g)) => running.control.guest(g).await.ok()?.data_dir,
        (None, None) => return None,
    };
    let calls = history.calls();
    let root = root.join(workload::RUN_DIR);
    tokio::task::spawn_blocking(move || audit(&root, &calls, seed, kind))
        .await
        .ok()
}

fn audit(root: &Path, calls: &[history::Call], seed: u64, kind: file::CallKind) -> Audit {
    use history::Outcome;
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for c in calls {
        let n = last.entry(c.client).or_default();
        *n = (*n).max(c.seq);
    }
    let texts: BTreeMap<u32, Vec<String>> = last
        .iter()
        .map(|(&client, &upto)| (client, workload::texts(seed, client, upto)))
        .collect();
    let append = kind == file::CallKind::Append;
    // Each client's log, as how many times each line is in it.
    let logs: BTreeMap<u32, std::collections::HashMap<String, u64>> = match append {
        false => BTreeMap::new(),
        true => last
            .keys()
            .map(|&client| {
                let path = root.join(workload::append_log(client));
                let mut seen = std::collections::HashMap::new();
                for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
                    *seen.entry(line.to_owned()).or_default() += 1;
                }
                (client, seen)
            })
            .collect(),
    };
    let mut found = Audit {
        lost: 0,
        phantom: 0,
        duplicated: append.then_some(0),
    };
    for c in calls {
        let Some(want) = texts[&c.client].get(c.seq.wrapping_sub(1) as usize) else {
            continue;
        };
        // How many times its effect is there.
        let times = if append {
            logs[&c.client].get(want).copied().unwrap_or(0)
        } else {
            let path = root.join(format!("{}/{}", c.client, c.seq));
            u64::from(std::fs::read_to_string(&path).is_ok_and(|t| &t == want))
        };
        match c.outcome {
            Outcome::Ok => found.lost += u64::from(times == 0),
            Outcome::Fail if c.attempts == 1 => found.phantom += u64::from(times > 0),
            _ => {}
        }
        if let Some(d) = found.duplicated.as_mut() {
            *d += u64::from(times > 1);
        }
    }
    found
}

/// Count the `notifications/cancelled` the proxies pass on to the server, from now until
/// the event stream ends (with the control plane).
fn count_cancels(
    mut events: tokio::sync::broadcast::Receiver<Arc<crate::proxy::events::Event>>,
) -> Arc<std::sync::atomic::AtomicU64> {
    use tokio::sync::broadcast::error::RecvError;
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if e.direction == "upstream"
                        && e.method.as_deref() == Some("notifications/cancelled")
                        && e.delivered > 0
                    {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    });
    n
}

/// This process's resident memory in KiB, where /proc tells it.
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64 / 1024)
}

/// How much brownout's memory grew over the run: the peak of its second half over the peak
/// of its first, in MiB (a leak grows; a steady run does not). `None` with too few samples.
fn rss_growth_mib(samples: &[(f64, u64)]) -> Option<f64> {
    let end = samples.last()?.0;
    let peak = |keep: &dyn Fn(f64) -> bool| {
        samples
            .iter()
            .filter(|(t, _)| keep(*t))
            .map(|(_, k)| *k)
            .max()
    };
    let first = peak(&|t| t < end / 2.0)?;
    let second = peak(&|t| t >= end / 2.0)?;
    Some((second as f64 - first as f64) / 1024.0)
}

/// How many of the host resources that must not outlive a run did: processes, zombies,
/// devices, namespaces, mounts, cgroups and temp dirs more after than before.
fn leaks(before: &Snapshot, after: &Snapshot) -> usize {
    let more = |a: usize, b: usize| b.saturating_sub(a);
    more(before.processes, after.processes)
        + more(before.zombies, after.zombies)
        + more(before.net_devices, after.net_devices)
        + more(before.namespaces, after.namespaces)
        + more(before.mounts, after.mounts)
        + more(before.cgroups, after.cgroups)
        + more(before.temp_dirs, after.temp_dirs)
}

/// A scenario by built-in suite name or file path; with `full`, as its `[full]` table says.
pub fn resolve(what: &str, full: bool) -> Result<Scenario, FileError> {
    if let Some(text) = suites::get(what) {
        return parse(&format!("builtin:{what}"), text, full);
    }
    let path = Path::new(what);
    if !path.exists() {
        return Err(FileError {
            file: what.to_owned(),
            line: 0,
            message: format!(
                "no such file, and no built-in suite of that name (suites: {})",
                suites::names().join(", ")
            ),
        });
    }
    load(path, full)
}
