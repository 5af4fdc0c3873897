//! The timeline: each step waits for its trigger (a time, or the n-th matching message),
//! carries out its action through the control plane or on the guest, and undoes it after
//! `for`. Rollback undoes whatever is still on, whatever happened.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::file::{Action, EventFilter, Phase, Step, Trigger};
use super::history::{History, Window};
use crate::control::{ControlHandle, GuestAction, ProxyPatch};
use crate::proxy::events::Event;
use crate::vm::{GuestView, Signal};

/// How often a step waiting for a condition looks at the running figures.
const CONDITION_POLL: Duration = Duration::from_millis(100);

/// How long a signal step waits for its phase before it fails.
const PHASE_WAIT: Duration = Duration::from_secs(5);

/// What became of one step (and of its undo, which is a record of its own).
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub step: String,
    pub action: String,
    /// When it was carried out, from the start of the workload.
    pub at_ms: f64,
    pub took_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Undone at the end of its `for`, or by rollback.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub undo: bool,
}

/// What the steps act on, and what they leave for the report.
pub struct Stage {
    pub control: ControlHandle,
    /// Proxies on other brownout servers, by name: their steps go through those APIs.
    pub remotes: std::collections::BTreeMap<String, super::remote::Remote>,
    /// The target's guest, by its name in the control plane.
    pub guest: Option<String>,
    pub start: Instant,
    /// The workload's calls: a signal step waits for an idle moment on it.
    pub history: Arc<History>,
    /// The run's seed: what random steps pick from.
    pub seed: u64,
    /// The workload's proxies, in [`super::history::Call::proxy`]'s order: what a
    /// condition's per-proxy figures need.
    pub proxies: Vec<String>,
    /// Where the target's server listens, when it is not a guest (a guest's address is
    /// asked for when needed).
    pub upstream: Option<String>,
    /// The server's files, when they are on this host and it is not a guest (a guest's
    /// are asked for when needed).
    pub files: Option<std::path::PathBuf>,
    /// Where command steps' output goes.
    pub log: std::path::PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    records: Vec<StepRecord>,
    windows: Vec<Window>,
    /// Faults in force: (proxy, toxic) added and not yet removed.
    toxics: Vec<(String, String)>,
    disabled: Vec<String>,
    paused: bool,
    unplugged: bool,
    /// Whether each guest kill, stop or signal ended it in time and left nothing behind.
    terminations: Vec<bool>,
    /// Processes the guest's server left running when it ended.
    orphans: usize,
    /// Guest exits for want of memory, seen when its memory was given back.
    oom_kills: usize,
    disk_full: bool,
    memory_pressed: bool,
    /// Connections held open to the server.
    hogs: Vec<tokio::net::TcpStream>,
    /// Undo commands of command steps done and not yet undone.
    undo_commands: Vec<(Vec<String>, Duration)>,
}

impl Stage {
    pub fn new(
        control: ControlHandle,
        remotes: std::collections::BTreeMap<String, super::remote::Remote>,
        guest: Option<String>,
        start: Instant,
        history: Arc<History>,
        seed: u64,
        proxies: Vec<String>,
    ) -> Stage {
        Stage {
            control,
            remotes,
            guest,
            start,
            history,
            seed,
            proxies,
            upstream: None,
            files: None,
            log: std::env::temp_dir().join("brownout-steps.log"),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn records(&self) -> Vec<StepRecord> {
        self.state().records.clone()
    }

    /// The fault periods; those still open end at `end`.
    pub fn windows(&self, end: Duration) -> Vec<Window> {
        self.state()
            .windows
            .iter()
            .cloned()
            .map(|mut w| {
                if w.until.is_none_or(|u| u > end) {
                    w.until = Some(end);
                    w.to_the_end = true;
                }
                w
            })
            .collect()
    }

    /// The windows as they are: open ones have no end yet.
    pub fn open_windows(&self) -> Vec<Window> {
        self.state().windows.clone()
    }

    pub fn terminations(&self) -> Vec<bool> {
        self.state().terminations.clone()
    }

    pub fn orphans(&self) -> usize {
        self.state().orphans
    }

    pub fn oom_kills(&self) -> usize {
        self.state().oom_kills
    }

    /// The first step that failed, if any.
    pub fn failed(&self) -> Option<StepRecord> {
        self.state()
            .records
            .iter()
            .find(|r| r.error.is_some())
            .cloned()
    }

    /// Run one step: wait for its trigger, act, and undo after `for`. Returns once done,
    /// or right away if `events` ran dry (the run is over).
    pub async fn run_step(
        self: &Arc<Self>,
        step: &Step,
        mut events: tokio::sync::broadcast::Receiver<Arc<Event>>,
    ) {
        match &step.trigger {
            Trigger::At(at) => tokio::time::sleep_until(self.start + *at).await,
            Trigger::OnEvent { nth, filter } => {
                if !nth_event(&mut events, *nth, |e| matches(filter, e)).await {
                    return;
                }
            }
            Trigger::When(condition) => {
                let mut tick = tokio::time::interval(CONDITION_POLL);
                loop {
                    tick.tick().await;
                    let calls = self.history.calls();
                    let windows = self.windows(self.start.elapsed());
                    let figures =
                        super::history::figures(&calls, &self.proxies, &windows, None, None);
                    let v = condition.judge(&figures);
                    if v.passed && v.figure.is_some() {
                        break;
                    }
                }
            }
        }
        drop(events);
        let first = Instant::now();
        for i in 0..step.repeat {
            tokio::time::sleep_until(first + step.every * i).await;
            let action = step.action.nth(i, self.seed, &step.label);
            if let Action::Group { .. } = action {
                if !self.run_group(step, &action).await {
                    return;
                }
                continue;
            }
            if !self.act(step, &action, false).await {
                return;
            }
            if let Some(hold) = step.hold {
                tokio::time::sleep(hold).await;
                if !self.act(step, &action, true).await {
                    return;
                }
            }
        }
    }

    /// Run a group's parts, one after another or all at once; whether every one worked.
    fn run_group<'a>(
        self: &'a Arc<Self>,
        step: &'a Step,
        group: &'a Action,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let Action::Group { parallel, steps } = group else {
                return false;
            };
            if !parallel {
                for (part, hold) in steps {
                    if !self.run_part(step, part, *hold).await {
                        return false;
                    }
                }
                return true;
            }
            // Dropped with the step (the run ended): the parts end with it.
            let mut parts = tokio::task::JoinSet::new();
            for (part, hold) in steps.clone() {
                let (me, step) = (self.clone(), step.clone());
                parts.spawn(async move { me.run_part(&step, &part, hold).await });
            }
            let mut all = true;
            while let Some(done) = parts.join_next().await {
                all &= done.unwrap_or(false);
            }
            all
        })
    }

    /// One part of a group: a wait, a group, or an action undone after its `for`.
    async fn run_part(
        self: &Arc<Self>,
        step: &Step,
        part: &Action,
        hold: Option<Duration>,
    ) -> bool {
        match part {
            Action::Wait(d) => {
                tokio::time::sleep(*d).await;
                true
            }
            Action::Group { .. } => self.run_group(step, part).await,
            _ => {
                if !self.act(step, part, false).await {
                    return false;
                }
                match hold {
                    Some(h) => {
                        tokio::time::sleep(h).await;
                        self.act(step, part, true).await
                    }
                    None => true,
                }
            }
        }
    }

    /// Carry out `action` (or its opposite); record it. Returns whether it worked.
    async fn act(&self, step: &Step, action: &Action, undo: bool) -> bool {
        let t0 = Instant::now();
        let result = self.apply(action, undo).await;
        let at = t0 - self.start;
        let mut st = self.state();
        if result.is_ok() {
            let (opens, key, proxies) = effect(action, undo);
            if opens {
                st.windows.push(Window {
                    what: action.to_string(),
                    key,
                    from: at,
                    until: None,
                    proxies,
                    step: step.name.clone(),
                    to_the_end: false,
                });
            } else if let Some(w) = st
                .windows
                .iter_mut()
                .rev()
                .find(|w| w.until.is_none() && w.key == key)
            {
                w.until = Some(at);
            }
        }
        st.records.push(StepRecord {
            step: step.label.clone(),
            action: if undo {
                format!("undo: {action}")
            } else {
                action.to_string()
            },
            at_ms: at.as_secs_f64() * 1e3,
            took_ms: t0.elapsed().as_secs_f64() * 1e3,
            error: result.err(),
            undo,
        });
        st.records.last().is_some_and(|r| r.error.is_none())
    }

    async fn apply(&self, action: &Action, undo: bool) -> Result<(), String> {
        let c = &self.control;
        match (action, undo) {
            (Action::AddToxic { proxy, toxic }, false) => {
                match self.remotes.get(proxy) {
                    Some(r) => r.add_toxic(proxy, toxic).await?,
                    None => {
                        c.add_toxic(proxy, toxic.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                self.state()
                    .toxics
                    .push((proxy.clone(), toxic.name.clone()));
                Ok(())
            }
            (Action::AddToxic { proxy, toxic }, true) => self.remove(proxy, &toxic.name).await,
            (Action::RemoveToxic { proxy, name }, _) => self.remove(proxy, name).await,
            (Action::Disable { proxy }, false) => self.enabled(proxy, false).await,
            (Action::Disable { proxy }, true) | (Action::Enable { proxy }, _) => {
                self.enabled(proxy, true).await
            }
            (Action::Guest(g), undo) => self.guest(guest_step(*g, undo)).await,
            (Action::Signal { .. }, true) => self.guest(GuestAction::Restart).await,
            (Action::Signal { signals, phase }, false) => self.signal(signals[0], *phase).await,
            (Action::Random { .. }, _) => {
                Err("a random step picks its action before it runs".into())
            }
            (Action::Group { .. } | Action::Wait(_), _) => {
                Err("a group runs its parts one by one".into())
            }
            (Action::HogConnections { count }, false) => self.hog(*count).await,
            (Action::HogConnections { .. }, true) => {
                // Closing them gives the server its descriptors back.
                self.state().hogs.clear();
                Ok(())
            }
            (Action::Command { run, undo, timeout }, false) => {
                let argv = self.placeholders(run).await?;
                if let Some(u) = undo {
                    // Undone in rollback even if it failed half way.
                    self.state().undo_commands.push((u.clone(), *timeout));
                }
                super::command::step(&argv, *timeout, &self.log).await
            }
            (Action::Command { undo, timeout, .. }, true) => {
                let Some(u) = undo else {
                    return Err("this command has no undo".into());
                };
                {
                    let mut st = self.state();
                    if let Some(i) = st.undo_commands.iter().position(|(c, _)| c == u) {
                        st.undo_commands.remove(i);
                    }
                }
                let argv = self.placeholders(u).await?;
                super::command::step(&argv, *timeout, &self.log).await
            }
        }
    }

    /// `argv` with `{upstream}` and `{data_dir}` replaced by the server's address and the
    /// directory its files are in, where known.
    async fn placeholders(&self, argv: &[String]) -> Result<Vec<String>, String> {
        let wants = |p: &str| argv.iter().any(|a| a.contains(p));
        let upstream = match wants("{upstream}") {
            true => self.server_addr().await?,
            false => String::new(),
        };
        let files = match (wants("{data_dir}"), &self.guest) {
            (false, _) => String::new(),
            (true, Some(g)) => {
                let view = self.control.guest(g).await.map_err(|e| e.to_string())?;
                view.data_dir.display().to_string()
            }
            (true, None) => self
                .files
                .as_ref()
                .ok_or("{data_dir}: the target's files are not on this host")?
                .display()
                .to_string(),
        };
        Ok(argv
            .iter()
            .map(|a| {
                a.replace("{upstream}", &upstream)
                    .replace("{data_dir}", &files)
            })
            .collect())
    }

    /// Bring the server into `phase`, then signal it and wait for it to end.
    async fn signal(&self, signal: Signal, phase: Phase) -> Result<(), String> {
        match phase {
            Phase::Any => {}
            Phase::Starting => self.guest(GuestAction::Start).await?,
            Phase::Idle => {
                let deadline = Instant::now() + PHASE_WAIT;
                while self.history.in_flight() > 0 {
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "no moment without a call in flight came within {PHASE_WAIT:?}"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Phase::MidCall => {
                let mut events = self.control.events();
                let reached = tokio::time::timeout(
                    PHASE_WAIT,
                    nth_event(&mut events, 1, |e| {
                        e.direction == "upstream"
                            && e.method.as_deref() == Some("tools/call")
                            && e.delivered > 0
                    }),
                )
                .await;
                if reached != Ok(true) {
                    return Err(format!(
                        "no tools/call reached the server within {PHASE_WAIT:?}"
                    ));
                }
            }
            Phase::ShuttingDown => {
                return self.guest(GuestAction::SignalInShutdown(signal)).await;
            }
        }
        self.guest(GuestAction::Signal(signal)).await
    }

    async fn remove(&self, proxy: &str, name: &str) -> Result<(), String> {
        match self.remotes.get(proxy) {
            Some(r) => r.remove_toxic(proxy, name).await?,
            None => self
                .control
                .remove_toxic(proxy, name)
                .await
                .map_err(|e| e.to_string())?,
        }
        self.state()
            .toxics
            .retain(|(p, t)| !(p == proxy && t == name));
        Ok(())
    }

    async fn enabled(&self, proxy: &str, enabled: bool) -> Result<(), String> {
        match self.remotes.get(proxy) {
            Some(r) => r.set_enabled(proxy, enabled).await?,
            None => {
                let patch = ProxyPatch {
                    listen: None,
                    upstream: None,
                    enabled: Some(enabled),
                };
                self.control
                    .update(proxy, patch)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let mut st = self.state();
        st.disabled.retain(|p| p != proxy);
        if !enabled {
            st.disabled.push(proxy.to_owned());
        }
        Ok(())
    }

    async fn guest(&self, action: GuestAction) -> Result<(), String> {
        let Some(guest) = &self.guest else {
            return Err("the target is not a guest".into());
        };
        let view = self
            .control
            .guest_action(guest, action)
            .await
            .map_err(|e| e.to_string())?;
        {
            let mut st = self.state();
            match action {
                GuestAction::Kill
                | GuestAction::Stop
                | GuestAction::Signal(_)
                | GuestAction::SignalInShutdown(_) => {
                    st.terminations.push(ended_cleanly(&view));
                    st.orphans += view.report.as_ref().map_or(0, |r| {
                        r.leftovers
                            .iter()
                            .filter(|l| l.contains(crate::vm::process::LEFT_RUNNING))
                            .count()
                    });
                }
                GuestAction::Pause => st.paused = true,
                GuestAction::Resume => st.paused = false,
                GuestAction::Unplug => st.unplugged = true,
                GuestAction::Plug => st.unplugged = false,
                GuestAction::FillDisk => st.disk_full = true,
                GuestAction::FreeDisk => st.disk_full = false,
                GuestAction::PressMemory(_) => st.memory_pressed = true,
                GuestAction::ReleaseMemory => {
                    st.memory_pressed = false;
                    st.oom_kills += usize::from(
                        view.state == crate::vm::State::Exited
                            && view.exit.as_ref().is_some_and(|e| e.out_of_memory),
                    );
                }
                GuestAction::Restart | GuestAction::Start => {}
            }
        }
        // A server the pressure ran out of memory serves again once it is back, as a
        // supervisor would restart it.
        if action == GuestAction::ReleaseMemory && view.state == crate::vm::State::Exited {
            Box::pin(self.guest(GuestAction::Restart)).await?;
        }
        Ok(())
    }

    /// Where the target's server is: the guest's address now, else the one it started on.
    async fn server_addr(&self) -> Result<String, String> {
        match &self.guest {
            Some(g) => self
                .control
                .guest(g)
                .await
                .map_err(|e| e.to_string())?
                .upstream
                .ok_or_else(|| "the guest has no address".to_owned()),
            None => self
                .upstream
                .clone()
                .ok_or_else(|| "the target's address is not known".to_owned()),
        }
    }

    /// Open `count` connections straight to the server (no proxy in between) and keep
    /// them, idle, until the undo: the server's connections and descriptors run out.
    async fn hog(&self, count: u32) -> Result<(), String> {
        let addr = self.server_addr().await?;
        let mut held = Vec::new();
        for _ in 0..count {
            // A server out of descriptors leaves connections in its listen backlog; once
            // that is full too, connecting stalls: enough is held then.
            match tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(&addr),
            )
            .await
            {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) if held.is_empty() => return Err(format!("connecting to {addr}: {e}")),
                _ => break,
            }
        }
        self.state().hogs.extend(held);
        Ok(())
    }

    /// Undo every fault still on: remove toxics, enable proxies, resume and plug the guest.
    /// Runs whatever happened before; records what it did.
    pub async fn rollback(&self) {
        let (toxics, disabled, paused, unplugged, disk_full, memory_pressed, hogging) = {
            let st = self.state();
            (
                st.toxics.clone(),
                st.disabled.clone(),
                st.paused,
                st.unplugged,
                st.disk_full,
                st.memory_pressed,
                !st.hogs.is_empty(),
            )
        };
        let mut undo = Vec::new();
        let mut undo_cmd = Vec::new();
        for (proxy, name) in toxics {
            undo.push(Action::RemoveToxic { proxy, name });
        }
        for proxy in disabled {
            undo.push(Action::Enable { proxy });
        }
        if paused {
            undo.push(Action::Guest(GuestAction::Resume));
        }
        if unplugged {
            undo.push(Action::Guest(GuestAction::Plug));
        }
        if disk_full {
            undo.push(Action::Guest(GuestAction::FreeDisk));
        }
        if memory_pressed {
            undo.push(Action::Guest(GuestAction::ReleaseMemory));
        }
        let hogs = hogging.then_some(Action::HogConnections { count: 0 });
        let commands = std::mem::take(&mut self.state().undo_commands);
        for (undo, timeout) in commands.into_iter().rev() {
            undo_cmd.push(Action::Command {
                run: undo.clone(),
                undo: Some(undo),
                timeout,
            });
        }
        let rollback = Step {
            label: "rollback".into(),
            name: None,
            trigger: Trigger::At(Duration::ZERO),
            action: Action::Enable {
                proxy: String::new(),
            },
            hold: None,
            repeat: 1,
            every: Duration::ZERO,
        };
        for action in undo {
            self.act(&rollback, &action, false).await;
        }
        for action in undo_cmd {
            self.act(&rollback, &action, true).await;
        }
        if let Some(h) = hogs {
            self.act(&rollback, &h, true).await;
        }
    }
}

/// Whether the guest ended when asked (not killed after its grace time) and left nothing.
fn ended_cleanly(view: &GuestView) -> bool {
    view.report.as_ref().is_some_and(|r| r.clean) && view.exit.as_ref().is_some_and(|e| !e.forced)
}

/// The guest step that carries out `step`, or undoes it: a kill or stop is undone by a
/// restart, a pause by a resume, an unplug by a plug.
fn guest_step(step: GuestAction, undo: bool) -> GuestAction {
    match (step, undo) {
        (GuestAction::Kill | GuestAction::Stop, true) => GuestAction::Restart,
        (GuestAction::Pause, true) => GuestAction::Resume,
        (GuestAction::Unplug, true) => GuestAction::Plug,
        (GuestAction::FillDisk, true) => GuestAction::FreeDisk,
        (GuestAction::PressMemory(_), true) => GuestAction::ReleaseMemory,
        (s, _) => s,
    }
}

/// What an action (or its undo) does to the fault periods: whether it opens one (else it
/// closes the open one with the same key), the key, and the proxies it acts on.
fn effect(action: &Action, undo: bool) -> (bool, String, Vec<String>) {
    match action {
        Action::AddToxic { proxy, toxic } => (
            !undo,
            format!("toxic {proxy}/{}", toxic.name),
            vec![proxy.clone()],
        ),
        Action::RemoveToxic { proxy, name } => (false, format!("toxic {proxy}/{name}"), vec![]),
        Action::Disable { proxy } => (!undo, format!("disabled {proxy}"), vec![proxy.clone()]),
        Action::Enable { proxy } => (false, format!("disabled {proxy}"), vec![]),
        Action::Signal { .. } => (!undo, "guest down".into(), vec![]),
        Action::Random { .. } => (false, String::new(), vec![]),
        Action::HogConnections { .. } => (!undo, "connections held".into(), vec![]),
        Action::Group { .. } | Action::Wait(_) => (false, String::new(), vec![]),
        Action::Command { run, undo: u, .. } => (
            u.is_some() && !undo,
            format!("command {}", u.as_ref().unwrap_or(run).join(" ")),
            vec![],
        ),
        Action::Guest(g) => {
            let step = guest_step(*g, undo);
            let key = match step {
                GuestAction::Kill
                | GuestAction::Stop
                | GuestAction::Restart
                | GuestAction::Start
                | GuestAction::Signal(_)
                | GuestAction::SignalInShutdown(_) => "guest down",
                GuestAction::Pause | GuestAction::Resume => "guest paused",
                GuestAction::Unplug | GuestAction::Plug => "guest unplugged",
                GuestAction::FillDisk | GuestAction::FreeDisk => "guest disk full",
                GuestAction::PressMemory(_) | GuestAction::ReleaseMemory => "guest memory pressed",
            };
            let opens = matches!(
                step,
                GuestAction::Kill
                    | GuestAction::Stop
                    | GuestAction::Pause
                    | GuestAction::Unplug
                    | GuestAction::FillDisk
                    | GuestAction::PressMemory(_)
                    | GuestAction::Signal(_)
                    | GuestAction::SignalInShutdown(_)
            );
            (opens, key.into(), vec![])
        }
    }
}

/// Wait for the `nth` event that passes `want`; false if the history ended first.
async fn nth_event(
    events: &mut tokio::sync::broadcast::Receiver<Arc<Event>>,
    nth: u64,
    want: impl Fn(&Event) -> bool,
) -> bool {
    let mut seen = 0;
    loop {
        match events.recv().await {
            Ok(e) if want(&e) => {
                seen += 1;
                if seen >= nth {
                    return true;
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return false,
        }
    }
}

fn matches(f: &EventFilter, e: &Event) -> bool {
    let eq =
        |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == got);
    eq(&f.proxy, Some(&e.proxy))
        && eq(&f.method, e.method.as_deref())
        && eq(&f.tool, e.tool.as_deref())
        && eq(&f.direction, Some(e.direction))
        && eq(&f.kind, Some(e.kind))
}
