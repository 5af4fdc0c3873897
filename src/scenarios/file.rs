//! The scenario file: TOML, parsed once into typed values. Unknown keys are refused, and
//! every error names the file, the line, the key and the bad value.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::checks::Check;
use crate::control::GuestAction;
use crate::faults::{ToxicInput, ToxicSpec};
use crate::proxy::Protocol;
use crate::vm::{Backend, GuestSpec, Signal};

/// A scenario file that could not be used, and where.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct FileError {
    pub file: String,
    /// 1-based; 0 when the error is about the file as a whole.
    pub line: usize,
    pub message: String,
}

/// A scenario, validated: what the runner carries out.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: Option<String>,
    /// Where it came from: a path, or `builtin:NAME`.
    pub source: String,
    pub seed: Option<u64>,
    pub target: Target,
    pub proxies: Vec<ProxyDef>,
    pub workload: Workload,
    pub steps: Vec<Step>,
    pub checks: Vec<Check>,
    pub steady_state: Option<SteadyState>,
}

/// The steady-state hypothesis: a few calls before the run and after its rollback, with
/// checks over just those calls. If it does not hold before, the run does not start; if it
/// does not hold after, the target deviated.
#[derive(Debug, Clone)]
pub struct SteadyState {
    /// Calls in each probe, spread over the workload's proxies.
    pub calls: u64,
    pub timeout: Duration,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// brownout's own MCP server (tools on files in a fresh directory), in-process.
    Embedded,
    /// An MCP server over Streamable HTTP that is already running.
    Http { addr: String, path: String },
    /// An MCP server over stdio: each workload client starts the command (`{data}` in it
    /// is a fresh directory for the run) through a stdio proxy, as an agent starts its
    /// stdio servers; brownout's own server when no command is given.
    Stdio { command: Option<Vec<String>> },
    /// brownout's MCP server in a guest of the VM module, which the timeline can crash.
    Guest(Box<GuestSpec>),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::Embedded => "embedded".into(),
            Target::Http { addr, path } => format!("http://{addr}{path}"),
            Target::Stdio { command: None } => "stdio (brownout's MCP server)".into(),
            Target::Stdio { command: Some(c) } => format!("stdio: {}", c.join(" ")),
            Target::Guest(g) => match g.backend {
                Backend::Namespace => "guest (namespace)".into(),
                Backend::Qemu => "guest (qemu)".into(),
                Backend::Process => "guest (process)".into(),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProxyDef {
    pub name: String,
    pub protocol: Protocol,
    /// On another brownout server, driven through its API; on this one when `None`.
    pub remote: Option<super::remote::Remote>,
}

/// The calls each workload client makes, each one checkable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `echo` with a random text that must come back equal.
    Echo,
    /// `write_file` of a random text, then `read_file` that must give it back.
    WriteRead,
    /// `append_file` of a random line to the client's own log: not idempotent, so a write
    /// applied twice shows as its line twice when the log is read back after the run.
    Append,
    /// `sleep` for this long, then the answer that says so: a call that is still running
    /// when a fault hits.
    Sleep(Duration),
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Echo => "echo",
            CallKind::WriteRead => "write_read",
            CallKind::Append => "append",
            CallKind::Sleep(_) => "sleep",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Workload {
    /// Concurrent MCP clients, each with a session of its own.
    pub clients: usize,
    /// Calls in all; the run ends when they are done (or `duration` is up).
    pub calls: Option<u64>,
    pub duration: Option<Duration>,
    /// Calls per second across all clients; as fast as they can when absent.
    pub rate: Option<u32>,
    pub timeout: Duration,
    /// How long past its timeout a call may take before it counts as hung.
    pub grace: Duration,
    pub call: CallKind,
    /// What a client does after a call that did not succeed.
    pub retry: Retry,
    /// An external command as the workload instead of brownout's clients: the user's own
    /// agent, judged from the proxies' history and its exit code.
    pub command: Option<Vec<String>>,
    /// The proxies the clients go through, client `i` through `proxies[i % len]`.
    pub proxies: Vec<String>,
}

/// A retry policy: after a call that failed or whose effect is unknown, send it again,
/// `backoff` later, doubling each time, up to `attempts` sends in all (1: never retry).
/// A call that answered wrongly or hung is not retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub backoff: Duration,
}

impl Retry {
    pub const NEVER: Retry = Retry {
        attempts: 1,
        backoff: Duration::ZERO,
    };
}

impl Workload {
    /// The proxies the workload goes through, each once, in the order first named: what
    /// [`super::history::Call::proxy`] indexes.
    pub fn proxy_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for p in &self.proxies {
            if !names.contains(p) {
                names.push(p.clone());
            }
        }
        names
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    /// Its place in the file, for reports: `step 2 (line 14)`.
    pub label: String,
    /// Its name, if it has one: a check can judge the calls made while it acted.
    pub name: Option<String>,
    pub trigger: Trigger,
    pub action: Action,
    /// Undo the action this long after it was done.
    pub hold: Option<Duration>,
    /// Carry it out this many times (at least 1), `every` apart from the trigger.
    pub repeat: u32,
    pub every: Duration,
}

#[derive(Debug, Clone)]
pub enum Trigger {
    /// This long after the workload started.
    At(Duration),
    /// When the n-th message matching the filter has been seen.
    OnEvent { nth: u64, filter: EventFilter },
    /// When a condition over the running figures first holds: `fail >= 3`.
    When(Check),
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub proxy: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub direction: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Action {
    AddToxic {
        proxy: String,
        toxic: ToxicSpec,
    },
    RemoveToxic {
        proxy: String,
        name: String,
    },
    Enable {
        proxy: String,
    },
    Disable {
        proxy: String,
    },
    Guest(GuestAction),
    /// Signal the guest's server once it is in `phase`; a list of signals is sent one per
    /// repeat, in turn.
    Signal {
        signals: Vec<Signal>,
        phase: Phase,
    },
    /// One of these, picked anew on each repeat from the run's seed.
    Random {
        choices: Vec<Action>,
    },
    /// Open this many idle connections straight to the target's server and hold them:
    /// its connections (and file descriptors) run out.
    HogConnections {
        count: u32,
    },
    /// Steps one after another (`serial`) or all at once (`parallel`), each undone after
    /// its own `for`.
    Group {
        parallel: bool,
        steps: Vec<(Action, Option<Duration>)>,
    },
    /// In a group: nothing, for this long.
    Wait(Duration),
    /// Run a command on this host (`{upstream}` and `{data_dir}` in its arguments are the
    /// server's address and files); the step fails if it exits non-zero or outlives
    /// `timeout`. With `undo`, that command is the undo (after `for`, or in rollback).
    Command {
        run: Vec<String>,
        undo: Option<Vec<String>>,
        timeout: Duration,
    },
}

/// How long a command step may run when the file does not say.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server is in its life when a signal reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Whenever the step comes.
    Any,
    /// Just started again, before it serves.
    Starting,
    /// No workload call in flight.
    Idle,
    /// A `tools/call` just reached it.
    MidCall,
    /// Right after SIGTERM, while it shuts down.
    ShuttingDown,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Any => "any",
            Phase::Starting => "starting",
            Phase::Idle => "idle",
            Phase::MidCall => "mid_call",
            Phase::ShuttingDown => "shutting_down",
        }
    }
}

impl Action {
    /// The action of the `i`-th repeat of the step labelled `label`: a list of signals is
    /// sent in turn; a random step picks from `seed`, so one seed picks the same.
    pub fn nth(&self, i: u32, seed: u64, label: &str) -> Action {
        match self {
            Action::Signal { signals, phase } => Action::Signal {
                signals: vec![signals[i as usize % signals.len()]],
                phase: *phase,
            },
            Action::Random { choices } => {
                let mut rng = fastrand::Rng::with_seed(crate::faults::derive_seed(
                    seed,
                    &format!("{label}#{i}"),
                ));
                choices[rng.usize(..choices.len())].nth(i, seed, label)
            }
            other => other.clone(),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::AddToxic { proxy, toxic } => {
                write!(
                    f,
                    "add {} `{}` on {proxy}",
                    toxic.kind.type_name(),
                    toxic.name
                )
            }
            Action::RemoveToxic { proxy, name } => write!(f, "remove `{name}` from {proxy}"),
            Action::Enable { proxy } => write!(f, "enable {proxy}"),
            Action::Disable { proxy } => write!(f, "disable {proxy}"),
            Action::Guest(GuestAction::PressMemory(mib)) => {
                write!(f, "take {mib} MiB of the guest's memory")
            }
            Action::Guest(g) => write!(f, "{} the guest", g.as_str()),
            Action::HogConnections { count } => {
                write!(f, "hold {count} idle connections to the server")
            }
            Action::Group { parallel, steps } => {
                let each: Vec<String> = steps.iter().map(|(a, _)| a.to_string()).collect();
                let how = if *parallel { "parallel" } else { "serial" };
                write!(f, "{how}: {}", each.join("; "))
            }
            Action::Wait(d) => write!(f, "wait {d:?}"),
            Action::Command { run, .. } => write!(f, "run `{}`", run.join(" ")),
            Action::Random { choices } => {
                let each: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
                write!(f, "one of: {}", each.join("; "))
            }
            Action::Signal { signals, phase } => {
                let names: Vec<String> =
                    signals.iter().map(|s| format!("SIG{}", s.name())).collect();
                write!(f, "send {} to the server", names.join(", "))?;
                match phase {
                    Phase::Any => Ok(()),
                    p => write!(f, " ({})", p.as_str().replace('_', "-")),
                }
            }
        }
    }
}

// What the file says, as serde reads it. Spanned where a later check must point at a line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    description: Option<String>,
    seed: Option<u64>,
    target: Option<RawTarget>,
    #[serde(default, rename = "proxy")]
    proxies: Vec<Spanned<RawProxy>>,
    workload: RawWorkload,
    #[serde(default, rename = "step")]
    steps: Vec<Spanned<RawStep>>,
    #[serde(default, rename = "check")]
    checks: Vec<Spanned<RawCheck>>,
    steady_state: Option<Spanned<RawSteady>>,
    /// What `--full` changes: the long run the plan asks for, where the file itself is a
    /// short one.
    full: Option<RawFull>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSteady {
    calls: Option<u64>,
    timeout: Option<Spanned<String>>,
    checks: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFull {
    workload: Option<RawWorkload>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    backend: Option<Spanned<String>>,
    memory_mib: Option<u64>,
    cpus: Option<f64>,
    pids: Option<u64>,
    disk_mib: Option<u64>,
    fds: Option<u64>,
    ready_timeout: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    name: Spanned<String>,
    protocol: Option<Spanned<String>>,
    api: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    clients: Option<usize>,
    calls: Option<u64>,
    duration: Option<Spanned<String>>,
    rate: Option<u32>,
    timeout: Option<Spanned<String>>,
    grace: Option<Spanned<String>>,
    call: Option<Spanned<String>>,
    /// How long each `sleep` call sleeps.
    sleep: Option<Spanned<String>>,
    retry: Option<Spanned<RawRetry>>,
    command: Option<Spanned<Vec<String>>>,
    proxies: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: u32,
    backoff: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    at: Option<Spanned<String>>,
    on: Option<RawOn>,
    when: Option<Spanned<String>>,
    action: Spanned<String>,
    proxy: Option<Spanned<String>>,
    /// The toxic to add (a table), or the name of the one to remove.
    toxic: Option<Spanned<toml::Value>>,
    name: Option<Spanned<String>>,
    #[serde(rename = "for")]
    hold: Option<Spanned<String>>,
    repeat: Option<u32>,
    every: Option<Spanned<String>>,
    signal: Option<Spanned<OneOrMore>>,
    phase: Option<Spanned<String>>,
    /// How many connections hog_connections holds.
    count: Option<Spanned<u32>>,
    /// How much of the guest's memory memory_pressure takes.
    mib: Option<Spanned<u64>>,
    /// What a random step picks from, one per repeat.
    choices: Option<Spanned<Vec<Spanned<RawStep>>>>,
    /// What a serial or parallel group runs.
    steps: Option<Spanned<Vec<Spanned<RawStep>>>>,
    /// What a command step runs, what undoes it, and how long it may take.
    command: Option<Spanned<Vec<String>>>,
    undo: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<String>>,
}

/// A value that may be one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMore {
    One(String),
    More(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOn {
    nth: Option<u64>,
    proxy: Option<String>,
    method: Option<String>,
    tool: Option<String>,
    direction: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: Option<String>,
    expect: Spanned<String>,
    /// Judge only the calls made while the step of this name acted.
    during: Option<Spanned<String>>,
    /// Stop the run as soon as the check fails while it runs.
    #[serde(default)]
    abort: bool,
}

impl RawWorkload {
    /// Take every value `other` sets.
    fn overlay(&mut self, other: RawWorkload) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            clients, calls, duration, rate, timeout, grace, call, sleep, retry, command, proxies
        );
    }
}

/// Reads one file: where errors point.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: &Range<usize>, message: impl Into<String>) -> FileError {
        FileError {
            file: self.file.to_owned(),
            line: self.line_of(span),
            message: message.into(),
        }
    }

    fn duration(&self, key: &str, v: &Spanned<String>) -> Result<Duration, FileError> {
        humantime::parse_duration(v.get_ref()).map_err(|e| {
            self.err(
                &v.span(),
                format!(
                    "{key}: {:?} is not a duration like \"500ms\" or \"2s\": {e}",
                    v.get_ref()
                ),
            )
        })
    }
}

/// Read and check the scenario file at `path`.
pub fn load(path: &Path, full: bool) -> Result<Scenario, FileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| FileError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read it: {e}"),
    })?;
    parse(&file, &text, full)
}

/// Check the scenario in `text`, which came from `file` (a path, or `builtin:NAME`); with
/// `full`, what its `[full]` table says replaces what the rest of the file says.
pub fn parse(file: &str, text: &str, full: bool) -> Result<Scenario, FileError> {
    let src = Source { file, text };
    let mut raw: RawScenario = toml::from_str(text).map_err(|e| FileError {
        file: file.to_owned(),
        line: e.span().map_or(0, |s| src.line_of(&s)),
        message: e.message().to_owned(),
    })?;
    if full && let Some(w) = raw.full.take().and_then(|f| f.workload) {
        raw.workload.overlay(w);
    }

    let target = target(&src, raw.target)?;

    let mut proxies: Vec<ProxyDef> = Vec::new();
    for p in &raw.proxies {
        let span = p.span();
        let p = p.get_ref();
        let name = p.name.get_ref().clone();
        crate::faults::spec::check_name(&name)
            .map_err(|e| src.err(&p.name.span(), format!("proxy.name: {}", e.message)))?;
        if proxies.iter().any(|q| q.name == name) {
            return Err(src.err(&span, format!("proxy.name: {name:?} is defined twice")));
        }
        let stdio_target = matches!(target, Target::Stdio { .. });
        let protocol = match &p.protocol {
            None if stdio_target => Protocol::Stdio,
            None => Protocol::Http,
            Some(s) if s.get_ref() == "stdio" => Protocol::Stdio,
            Some(s) => match Protocol::parse(s.get_ref()) {
                Some(p) => p,
                None => {
                    return Err(src.err(
                        &s.span(),
                        format!(
                            "proxy.protocol: expected http, tcp or stdio, got {:?}",
                            s.get_ref()
                        ),
                    ));
                }
            },
        };
        if stdio_target != (protocol == Protocol::Stdio) {
            let why = if stdio_target {
                "proxy.protocol: a stdio target is reached through stdio proxies"
            } else {
                "proxy.protocol: a stdio proxy needs a stdio target (target.kind = \"stdio\")"
            };
            let at = p.protocol.as_ref().map_or(span.clone(), |s| s.span());
            return Err(src.err(&at, why));
        }
        let remote = match &p.api {
            None => None,
            Some(api) => {
                let text = api.get_ref();
                let addr = text
                    .strip_prefix("http://")
                    .unwrap_or(text)
                    .trim_end_matches('/');
                let valid = addr
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !valid {
                    return Err(src.err(
                        &api.span(),
                        format!(
                            "proxy.api: expected a brownout API URL like \"http://127.0.0.1:8474\", got {text:?}"
                        ),
                    ));
                }
                if protocol != Protocol::Http {
                    return Err(src.err(
                        &api.span(),
                        "proxy.api: proxies on other brownout servers are http proxies",
                    ));
                }
                Some(super::remote::Remote {
                    api: addr.to_owned(),
                })
            }
        };
        proxies.push(ProxyDef {
            name,
            protocol,
            remote,
        });
    }
    if proxies.is_empty() {
        proxies.push(ProxyDef {
            name: "mcp".into(),
            protocol: match target {
                Target::Stdio { .. } => Protocol::Stdio,
                _ => Protocol::Http,
            },
            remote: None,
        });
    }
    let known = |name: &str| proxies.iter().any(|p| p.name == name);
    let names = || {
        proxies
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };

    let w = raw.workload;
    let call = match w.call.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("echo") => CallKind::Echo,
        Some("write_read") => CallKind::WriteRead,
        Some("append") => CallKind::Append,
        Some("sleep") => CallKind::Sleep(match &w.sleep {
            Some(d) => src.duration("workload.sleep", d)?,
            None => Duration::from_millis(100),
        }),
        Some(other) => {
            return Err(src.err(
                &w.call.as_ref().unwrap().span(),
                format!("workload.call: expected echo, write_read, append or sleep, got {other:?}"),
            ));
        }
    };
    if let Some(d) = &w.sleep
        && !matches!(call, CallKind::Sleep(_))
    {
        return Err(src.err(&d.span(), "workload.sleep: only for call = \"sleep\""));
    }
    let via = match &w.proxies {
        None => vec![proxies[0].name.clone()],
        Some(list) => {
            for name in list.get_ref() {
                if !known(name) {
                    return Err(src.err(
                        &list.span(),
                        format!(
                            "workload.proxies: no proxy named {name:?} (proxies: {})",
                            names()
                        ),
                    ));
                }
            }
            if list.get_ref().is_empty() {
                return Err(src.err(&list.span(), "workload.proxies: name at least one proxy"));
            }
            list.get_ref().clone()
        }
    };
    for p in &via {
        let def = proxies.iter().find(|d| &d.name == p).expect("checked");
        if !matches!(def.protocol, Protocol::Http | Protocol::Stdio) {
            return Err(FileError {
                file: file.to_owned(),
                line: 0,
                message: format!(
                    "workload.proxies: the workload speaks MCP over HTTP, so {p:?} must be an http proxy"
                ),
            });
        }
    }
    let duration = w
        .duration
        .as_ref()
        .map(|d| src.duration("workload.duration", d))
        .transpose()?;
    if let Some(c) = &w.command {
        if matches!(target, Target::Stdio { .. }) {
            return Err(src.err(
                &c.span(),
                "workload.command: a stdio target is started by brownout's own clients; run your agent against an http or guest target",
            ));
        }
        let Some(program) = c.get_ref().first() else {
            return Err(src.err(&c.span(), "workload.command: name a program"));
        };
        if !crate::vm::program_exists(program) {
            return Err(src.err(
                &c.span(),
                format!("workload.command: {program:?} not found"),
            ));
        }
        // What describes brownout's own clients does not apply to a command.
        for (key, set) in [
            ("clients", w.clients.is_some()),
            ("calls", w.calls.is_some()),
            ("rate", w.rate.is_some()),
            ("call", w.call.is_some()),
            ("sleep", w.sleep.is_some()),
            ("retry", w.retry.is_some()),
        ] {
            if set {
                return Err(src.err(
                    &c.span(),
                    format!(
                        "workload.{key}: describes brownout's own clients; with a command, the command makes the calls"
                    ),
                ));
            }
        }
    } else if w.calls.is_none() && duration.is_none() {
        return Err(FileError {
            file: file.to_owned(),
            line: 0,
            message: "workload: give calls, duration or both".into(),
        });
    }
    let retry = match &w.retry {
        None => Retry::NEVER,
        Some(r) => {
            let raw = r.get_ref();
            if !(1..=100).contains(&raw.attempts) {
                return Err(src.err(
                    &r.span(),
                    format!(
                        "workload.retry.attempts: {} is not between 1 and 100",
                        raw.attempts
                    ),
                ));
            }
            Retry {
                attempts: raw.attempts,
                backoff: match &raw.backoff {
                    Some(b) => src.duration("workload.retry.backoff", b)?,
                    None => Duration::from_millis(100),
                },
            }
        }
    };
    let workload = Workload {
        clients: w.clients.unwrap_or(1).max(1),
        calls: w.calls,
        duration,
        rate: w.rate.filter(|r| *r > 0),
        timeout: match &w.timeout {
            Some(t) => src.duration("workload.timeout", t)?,
            None => Duration::from_secs(5),
        },
        grace: match &w.grace {
            Some(t) => src.duration("workload.grace", t)?,
            None => Duration::from_secs(2),
        },
        call,
        retry,
        command: w.command.as_ref().map(|c| c.get_ref().clone()),
        proxies: via,
    };

    let mut steps = Vec::new();
    for (i, s) in raw.steps.iter().enumerate() {
        let span = s.span();
        let label = format!("step {} (line {})", i + 1, src.line_of(&span));
        let proxy_names: Vec<&str> = proxies.iter().map(|p| p.name.as_str()).collect();
        steps.push(step(
            &src,
            s.get_ref(),
            &span,
            label,
            &known,
            &names,
            &target,
            &proxy_names,
        )?);
    }

    let mut named = std::collections::BTreeSet::new();
    for n in raw.steps.iter().filter_map(|s| s.get_ref().name.as_ref()) {
        if !named.insert(n.get_ref()) {
            return Err(src.err(
                &n.span(),
                format!("step.name: {:?} names two steps", n.get_ref()),
            ));
        }
    }

    let mut checks = Vec::new();
    for c in &raw.checks {
        let raw = c.get_ref();
        let mut check = Check::parse(
            raw.name.clone(),
            raw.expect.get_ref(),
            raw.abort,
            &proxies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        )
        .map_err(|e| src.err(&raw.expect.span(), format!("check.expect: {e}")))?;
        if let Some(during) = &raw.during {
            let step = during.get_ref();
            if !steps.iter().any(|s| s.name.as_ref() == Some(step)) {
                let named: Vec<String> = steps
                    .iter()
                    .filter_map(|s| s.name.as_ref().map(|n| format!("{n:?}")))
                    .collect();
                return Err(src.err(
                    &during.span(),
                    format!(
                        "check.during: no step named {step:?} (named steps: {})",
                        if named.is_empty() {
                            "none; give a step a name".to_owned()
                        } else {
                            named.join(", ")
                        }
                    ),
                ));
            }
            check
                .during(step)
                .map_err(|e| src.err(&raw.expect.span(), format!("check.expect: {e}")))?;
        }
        checks.push(check);
    }

    let proxy_names: Vec<&str> = proxies.iter().map(|p| p.name.as_str()).collect();
    let steady_state = match &raw.steady_state {
        None => None,
        Some(st) => {
            let r = st.get_ref();
            if r.checks.is_empty() {
                return Err(src.err(
                    &st.span(),
                    "steady_state.checks: give at least one check, such as \"ok_rate == 1\"",
                ));
            }
            let mut checks = Vec::new();
            for c in &r.checks {
                let check =
                    Check::parse(Some(c.get_ref().clone()), c.get_ref(), false, &proxy_names)
                        .map_err(|e| src.err(&c.span(), format!("steady_state.checks: {e}")))?;
                checks.push(check);
            }
            Some(SteadyState {
                calls: r.calls.unwrap_or(10).clamp(1, 10_000),
                timeout: match &r.timeout {
                    Some(t) => src.duration("steady_state.timeout", t)?,
                    None => workload.timeout,
                },
                checks,
            })
        }
    };

    Ok(Scenario {
        name: raw.name,
        description: raw.description,
        source: file.to_owned(),
        seed: raw.seed,
        target,
        proxies,
        workload,
        steps,
        checks,
        steady_state,
    })
}

fn target(src: &Source, raw: Option<RawTarget>) -> Result<Target, FileError> {
    let Some(t) = raw else {
        return Ok(Target::Embedded);
    };
    let only = |what: &str, ok: bool, key: &str| -> Result<(), FileError> {
        if ok {
            Ok(())
        } else {
            Err(src.err(
                &t.kind.span(),
                format!("target.{key} does not apply to a target of kind {what}"),
            ))
        }
    };
    // What only a guest has; and a command, which a guest or a stdio server has.
    let machine_keys = t.backend.is_none()
        && t.memory_mib.is_none()
        && t.cpus.is_none()
        && t.pids.is_none()
        && t.ready_timeout.is_none()
        && t.disk_mib.is_none()
        && t.fds.is_none();
    let guest_keys = machine_keys && t.command.is_none();
    if t.kind.get_ref() == "stdio" {
        only("stdio", t.url.is_none(), "url")?;
        only("stdio", machine_keys, "backend")?;
        let command = match &t.command {
            None => None,
            Some(c) => {
                let Some(program) = c.get_ref().first() else {
                    return Err(src.err(&c.span(), "target.command: name a program"));
                };
                if !crate::vm::program_exists(program) {
                    return Err(
                        src.err(&c.span(), format!("target.command: {program:?} not found"))
                    );
                }
                Some(c.get_ref().clone())
            }
        };
        return Ok(Target::Stdio { command });
    }
    match t.kind.get_ref().as_str() {
        "embedded" => {
            only("embedded", t.url.is_none(), "url")?;
            only("embedded", guest_keys, "backend")?;
            Ok(Target::Embedded)
        }
        "http" => {
            only("http", guest_keys, "backend")?;
            let Some(url) = &t.url else {
                return Err(src.err(
                    &t.kind.span(),
                    "target.url: a target of kind http needs one",
                ));
            };
            let bad = || {
                src.err(
                    &url.span(),
                    format!(
                        "target.url: expected http://host:port/path, got {:?}",
                        url.get_ref()
                    ),
                )
            };
            let rest = url.get_ref().strip_prefix("http://").ok_or_else(bad)?;
            let (addr, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/mcp"),
            };
            if !addr.contains(':') {
                return Err(bad());
            }
            Ok(Target::Http {
                addr: addr.to_owned(),
                path: path.to_owned(),
            })
        }
        "guest" => {
            only("guest", t.url.is_none(), "url")?;
            let backend = match &t.backend {
                None => Backend::Namespace,
                Some(b) => b
                    .get_ref()
                    .parse()
                    .map_err(|e| src.err(&b.span(), format!("target.{e}")))?,
            };
            let mut spec = GuestSpec::new("scenario", backend);
            spec.memory_mib = t.memory_mib;
            spec.cpus = t.cpus;
            spec.pids = t.pids;
            spec.disk_mib = t.disk_mib;
            spec.fds = t.fds;
            spec.command = t.command.as_ref().map(|c| c.get_ref().clone());
            if let Some(r) = &t.ready_timeout {
                spec.ready_timeout_ms =
                    Some(src.duration("target.ready_timeout", r)?.as_millis() as u64);
            }
            spec.check()
                .map_err(|e| src.err(&t.kind.span(), format!("target: {e}")))?;
            Ok(Target::Guest(Box::new(spec)))
        }
        other => Err(src.err(
            &t.kind.span(),
            format!("target.kind: expected embedded, http, stdio or guest, got {other:?}"),
        )),
    }
}

/// Figures judged once the run is over, which a `when` condition cannot wait for.
const AFTER_THE_RUN: &[&str] = &[
    "clean_termination",
    "orphans",
    "oom_kills",
    "lost_writes",
    "phantom_writes",
    "duplicated_writes",
    "leaks",
    "cancelled",
    "rss_growth_mib",
];

#[allow(clippy::too_many_arguments)]
fn step(
    src: &Source,
    s: &RawStep,
    span: &Range<usize>,
    label: String,
    known: &dyn Fn(&str) -> bool,
    names: &dyn Fn() -> String,
    target: &Target,
    proxies: &[&str],
) -> Result<Step, FileError> {
    let trigger = match (&s.at, &s.on, &s.when) {
        (Some(at), None, None) => Trigger::At(src.duration("step.at", at)?),
        (None, None, Some(when)) => {
            let check = Check::parse(None, when.get_ref(), false, proxies)
                .map_err(|e| src.err(&when.span(), format!("step.when: {e}")))?;
            if AFTER_THE_RUN.contains(&check.figure.as_str()) {
                return Err(src.err(
                    &when.span(),
                    format!(
                        "step.when: {} is only known after the run; a condition can use the call figures",
                        check.figure
                    ),
                ));
            }
            Trigger::When(check)
        }
        (None, Some(on), None) => Trigger::OnEvent {
            nth: on.nth.unwrap_or(1).max(1),
            filter: EventFilter {
                proxy: on.proxy.clone(),
                method: on.method.clone(),
                tool: on.tool.clone(),
                direction: on.direction.clone(),
                kind: on.kind.clone(),
            },
        },
        (None, None, None) => {
            return Err(src.err(
                span,
                "step: give at (a time), on (an event) or when (a condition)",
            ));
        }
        _ => return Err(src.err(span, "step: give one of at, on and when")),
    };
    if let Trigger::OnEvent { filter, .. } = &trigger
        && let Some(p) = &filter.proxy
        && !known(p)
    {
        return Err(src.err(
            span,
            format!("step.on.proxy: no proxy named {p:?} (proxies: {})", names()),
        ));
    }
    let action = if matches!(s.action.get_ref().as_str(), "serial" | "parallel") {
        if let Some(h) = &s.hold {
            return Err(src.err(
                &h.span(),
                "step.for: a group's steps each have their own for",
            ));
        }
        group(src, s, known, names, target)?
    } else if s.action.get_ref() == "random" {
        let Some(choices) = &s.choices else {
            return Err(src.err(
                &s.action.span(),
                "step.choices: action random needs a list of actions to pick from",
            ));
        };
        if choices.get_ref().is_empty() {
            return Err(src.err(&choices.span(), "step.choices: give at least one action"));
        }
        let mut picks = Vec::new();
        for c in choices.get_ref() {
            let raw = c.get_ref();
            if let Some(key) = step_keys(raw, true) {
                return Err(src.err(
                    &c.span(),
                    format!("step.choices: {key} belongs to the step, not to one of its choices"),
                ));
            }
            let picked = action(src, raw, known, names, target)?;
            if s.hold.is_some() && !action_undoable(&picked) {
                return Err(src.err(
                    &c.span(),
                    format!("step.choices: {picked} cannot be undone after the step's for"),
                ));
            }
            picks.push(picked);
        }
        Action::Random { choices: picks }
    } else {
        if let Some(c) = &s.choices {
            return Err(src.err(&c.span(), "step.choices: only for action \"random\""));
        }
        if let Some(g) = &s.steps {
            return Err(src.err(
                &g.span(),
                "step.steps: only for action \"serial\" or \"parallel\"",
            ));
        }
        action(src, s, known, names, target)?
    };
    let hold = s
        .hold
        .as_ref()
        .map(|h| src.duration("step.for", h))
        .transpose()?;
    if hold.is_some() && !action_undoable(&action) {
        return Err(src.err(
            &s.hold.as_ref().unwrap().span(),
            format!("step.for: {action} cannot be undone after a time"),
        ));
    }
    // A list of signals is sent one per repeat: all of them, unless the file says.
    let repeat = s.repeat.unwrap_or(match &action {
        Action::Signal { signals, .. } => signals.len() as u32,
        _ => 1,
    });
    if repeat == 0 {
        return Err(src.err(span, "step.repeat: at least 1"));
    }
    let every = match &s.every {
        Some(e) => src.duration("step.every", e)?,
        None if repeat > 1 => {
            return Err(src.err(
                span,
                "step.every: a repeated step needs the time between repeats",
            ));
        }
        None => Duration::ZERO,
    };
    if repeat > 1 && hold.is_some_and(|h| h >= every) {
        return Err(src.err(
            span,
            "step.for: must be shorter than every, so one repeat is undone before the next",
        ));
    }
    Ok(Step {
        label,
        name: s.name.as_ref().map(|n| n.get_ref().clone()),
        trigger,
        action,
        hold,
        repeat,
        every,
    })
}

/// The first key set in `raw` that only a step of its own has (its trigger, repeats, and
/// random choices; with `and_for`, also `for` and group steps): what a random step's
/// choice or a group's part may not say.
fn step_keys(raw: &RawStep, and_for: bool) -> Option<&'static str> {
    [
        ("at", raw.at.is_some()),
        ("on", raw.on.is_some()),
        ("when", raw.when.is_some()),
        ("repeat", raw.repeat.is_some()),
        ("every", raw.every.is_some()),
        ("choices", raw.choices.is_some()),
        ("name", raw.name.is_some()),
        ("for", and_for && raw.hold.is_some()),
        ("steps", and_for && raw.steps.is_some()),
    ]
    .into_iter()
    .find_map(|(key, set)| set.then_some(key))
}

/// A serial or parallel group: its parts, each an action with its own `for` (a `wait`
/// is its `for`), groups nested in groups.
fn group(
    src: &Source,
    s: &RawStep,
    known: &dyn Fn(&str) -> bool,
    names: &dyn Fn() -> String,
    target: &Target,
) -> Result<Action, FileError> {
    let kind = s.action.get_ref().as_str();
    let Some(parts) = &s.steps else {
        return Err(src.err(
            &s.action.span(),
            format!("step.steps: a {kind} group needs the steps it runs"),
        ));
    };
    if parts.get_ref().is_empty() {
        return Err(src.err(&parts.span(), "step.steps: give at least one step"));
    }
    let mut steps = Vec::new();
    for p in parts.get_ref() {
        let raw = p.get_ref();
        if let Some(key) = step_keys(raw, false) {
            return Err(src.err(
                &p.span(),
                format!("step.steps: {key} belongs to a step of its own, not to a part of a group"),
            ));
        }
        let hold = raw
            .hold
            .as_ref()
            .map(|h| src.duration("step.steps.for", h))
            .transpose()?;
        let part = match raw.action.get_ref().as_str() {
            "wait" => {
                let Some(d) = hold else {
                    return Err(
                        src.err(&p.span(), "step.steps: a wait needs for, the time to wait")
                    );
                };
                steps.push((Action::Wait(d), None));
                continue;
            }
            "serial" | "parallel" => {
                if hold.is_some() {
                    return Err(src.err(
                        &p.span(),
                        "step.steps.for: a group's steps each have their own for",
                    ));
                }
                group(src, raw, known, names, target)?
            }
            "random" => {
                return Err(src.err(
                    &p.span(),
                    "step.steps: random is a step of its own, not a part of a group",
                ));
            }
            _ => action(src, raw, known, names, target)?,
        };
        if hold.is_some() && !action_undoable(&part) {
            return Err(src.err(
                &p.span(),
                format!("step.steps.for: {part} cannot be undone after a time"),
            ));
        }
        steps.push((part, hold));
    }
    Ok(Action::Group {
        parallel: kind == "parallel",
        steps,
    })
}

/// The action a step (or one of a random step's choices) names.
fn action(
    src: &Source,
    s: &RawStep,
    known: &dyn Fn(&str) -> bool,
    names: &dyn Fn() -> String,
    target: &Target,
) -> Result<Action, FileError> {
    let proxy = || -> Result<String, FileError> {
        let Some(p) = &s.proxy else {
            return Err(src.err(
                &s.action.span(),
                format!("step.proxy: action {:?} needs one", s.action.get_ref()),
            ));
        };
        if !known(p.get_ref()) {
            return Err(src.err(
                &p.span(),
                format!(
                    "step.proxy: no proxy named {:?} (proxies: {})",
                    p.get_ref(),
                    names()
                ),
            ));
        }
        Ok(p.get_ref().clone())
    };
    let guest = |g: GuestAction| -> Result<Action, FileError> {
        if !matches!(target, Target::Guest(_)) {
            return Err(src.err(
                &s.action.span(),
                format!(
                    "step.action: {:?} acts on a guest, and the target is {}",
                    s.action.get_ref(),
                    target.describe()
                ),
            ));
        }
        Ok(Action::Guest(g))
    };
    let action = match s.action.get_ref().as_str() {
        "toxic" | "add_toxic" => {
            let Some(t) = &s.toxic else {
                return Err(src.err(&s.action.span(), "step.toxic: action toxic needs one"));
            };
            if !t.get_ref().is_table() {
                return Err(src.err(
                    &t.span(),
                    "step.toxic: action toxic needs a table: { name, type, stream, attributes }",
                ));
            }
            let json: Value = serde_json::to_value(t.get_ref())
                .map_err(|e| src.err(&t.span(), format!("step.toxic: {e}")))?;
            let input: ToxicInput = serde_json::from_value(json)
                .map_err(|e| src.err(&t.span(), format!("step.toxic: {e}")))?;
            let toxic = ToxicSpec::from_input(input)
                .map_err(|e| src.err(&t.span(), format!("step.toxic.{e}")))?;
            Action::AddToxic {
                proxy: proxy()?,
                toxic,
            }
        }
        "remove_toxic" => {
            let Some(name) = s.toxic.as_ref().and_then(|t| t.get_ref().as_str()) else {
                return Err(src.err(
                    &s.action.span(),
                    "step.toxic: remove_toxic needs the toxic's name: toxic = \"cut\"",
                ));
            };
            Action::RemoveToxic {
                proxy: proxy()?,
                name: name.to_owned(),
            }
        }
        "enable" => Action::Enable { proxy: proxy()? },
        "disable" => Action::Disable { proxy: proxy()? },
        name @ ("kill" | "stop" | "pause" | "resume" | "restart" | "start" | "unplug" | "plug") => {
            guest(name.parse().expect("a guest action"))?
        }
        "fill_disk" => {
            if let Target::Guest(g) = target
                && g.disk_mib.is_none()
            {
                return Err(src.err(
                    &s.action.span(),
                    "step.action: fill_disk fills the guest's own disk: give the target disk_mib",
                ));
            }
            guest(GuestAction::FillDisk)?
        }
        "free_disk" => guest(GuestAction::FreeDisk)?,
        "memory_pressure" => {
            let Some(mib) = &s.mib else {
                return Err(src.err(
                    &s.action.span(),
                    "step.mib: memory_pressure needs how many MiB of the guest's memory to take",
                ));
            };
            let limit = match target {
                Target::Guest(g) if g.backend == Backend::Namespace => g.memory_mib,
                _ => None,
            };
            let Some(limit) = limit else {
                return Err(src.err(
                    &s.action.span(),
                    "step.action: memory_pressure presses on a namespace guest's memory limit: give the target backend = \"namespace\" and memory_mib",
                ));
            };
            if *mib.get_ref() == 0 || *mib.get_ref() >= limit {
                return Err(src.err(
                    &mib.span(),
                    format!(
                        "step.mib: {} is not between 1 and the guest's memory_mib ({limit}), less one",
                        mib.get_ref()
                    ),
                ));
            }
            guest(GuestAction::PressMemory(*mib.get_ref()))?
        }
        "hog_connections" => {
            let Some(count) = &s.count else {
                return Err(src.err(
                    &s.action.span(),
                    "step.count: hog_connections needs how many connections to hold",
                ));
            };
            if !(1..=10_000).contains(count.get_ref()) {
                return Err(src.err(
                    &count.span(),
                    format!("step.count: {} is not between 1 and 10000", count.get_ref()),
                ));
            }
            Action::HogConnections {
                count: *count.get_ref(),
            }
        }
        "signal" => {
            guest(GuestAction::Kill)?;
            if let Target::Guest(g) = target
                && g.backend == Backend::Qemu
            {
                return Err(src.err(
                    &s.action.span(),
                    "step.action: signal reaches the server of a process or namespace guest; a qemu guest is killed or stopped",
                ));
            }
            let Some(list) = &s.signal else {
                return Err(src.err(
                    &s.action.span(),
                    "step.signal: action signal needs one, such as \"TERM\" or [\"TERM\", \"INT\"]",
                ));
            };
            let names = match list.get_ref() {
                OneOrMore::One(n) => vec![n.clone()],
                OneOrMore::More(v) => v.clone(),
            };
            if names.is_empty() {
                return Err(src.err(&list.span(), "step.signal: name at least one signal"));
            }
            let signals = names
                .iter()
                .map(|n| n.parse::<Signal>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| src.err(&list.span(), format!("step.{e}")))?;
            let phase = match s.phase.as_ref().map(|p| (p, p.get_ref().as_str())) {
                None => Phase::Any,
                Some((_, "any")) => Phase::Any,
                Some((_, "starting")) => Phase::Starting,
                Some((_, "idle")) => Phase::Idle,
                Some((_, "mid_call")) => Phase::MidCall,
                Some((_, "shutting_down")) => Phase::ShuttingDown,
                Some((p, other)) => {
                    return Err(src.err(
                        &p.span(),
                        format!(
                            "step.phase: expected any, starting, idle, mid_call or shutting_down, got {other:?}"
                        ),
                    ));
                }
            };
            Action::Signal { signals, phase }
        }
        "command" => {
            let argv = |key: &str, v: &Spanned<Vec<String>>| {
                if v.get_ref().first().is_none_or(|a| a.is_empty()) {
                    return Err(src.err(
                        &v.span(),
                        format!("step.{key}: give the program and its arguments, as a list"),
                    ));
                }
                Ok(v.get_ref().clone())
            };
            let Some(run) = &s.command else {
                return Err(src.err(
                    &s.action.span(),
                    "step.command: action command needs the command to run, as a list",
                ));
            };
            Action::Command {
                run: argv("command", run)?,
                undo: s.undo.as_ref().map(|u| argv("undo", u)).transpose()?,
                timeout: s
                    .timeout
                    .as_ref()
                    .map(|t| src.duration("step.timeout", t))
                    .transpose()?
                    .unwrap_or(COMMAND_TIMEOUT),
            }
        }
        other => {
            return Err(src.err(
                &s.action.span(),
                format!(
                    "step.action: unknown action {other:?} (known: toxic, remove_toxic, enable, disable, kill, stop, pause, resume, restart, start, signal, unplug, plug, fill_disk, free_disk, memory_pressure, hog_connections, command, random, serial, parallel)"
                ),
            ));
        }
    };
    if matches!(target, Target::Stdio { .. }) {
        let why = match &action {
            Action::Enable { .. } | Action::Disable { .. } => Some(
                "a stdio proxy is the server's pipes and cannot be disabled; a partition toxic cuts them",
            ),
            Action::HogConnections { .. } => Some("a stdio server has no connections to hold"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(src.err(&s.action.span(), format!("step.action: {why}")));
        }
    }
    if let Some(c) = &s.count
        && !matches!(action, Action::HogConnections { .. })
    {
        return Err(src.err(&c.span(), "step.count: only for action \"hog_connections\""));
    }
    if let Some(m) = &s.mib
        && !matches!(action, Action::Guest(GuestAction::PressMemory(_)))
    {
        return Err(src.err(&m.span(), "step.mib: only for action \"memory_pressure\""));
    }
    if !matches!(action, Action::Signal { .. }) {
        for (key, span) in [
            ("signal", s.signal.as_ref().map(|v| v.span())),
            ("phase", s.phase.as_ref().map(|v| v.span())),
        ] {
            if let Some(span) = span {
                return Err(src.err(&span, format!("step.{key}: only for action \"signal\"")));
            }
        }
    }
    if !matches!(action, Action::Command { .. }) {
        for (key, span) in [
            ("command", s.command.as_ref().map(|v| v.span())),
            ("undo", s.undo.as_ref().map(|v| v.span())),
            ("timeout", s.timeout.as_ref().map(|v| v.span())),
        ] {
            if let Some(span) = span {
                return Err(src.err(&span, format!("step.{key}: only for action \"command\"")));
            }
        }
    }
    Ok(action)
}

/// Whether an action has an opposite the runner can apply after `for`.
fn action_undoable(a: &Action) -> bool {
    match a {
        Action::AddToxic { .. }
        | Action::Disable { .. }
        | Action::Signal { .. }
        | Action::HogConnections { .. } => true,
        Action::Random { choices } => choices.iter().all(action_undoable),
        Action::Command { undo, .. } => undo.is_some(),
        Action::Guest(g) => matches!(
            g,
            GuestAction::Kill
                | GuestAction::Stop
                | GuestAction::Pause
                | GuestAction::Unplug
                | GuestAction::FillDisk
                | GuestAction::PressMemory(_)
        ),
        _ => false,
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Lines a scenario file is made of, right and wrong, for files that get past TOML.
    const LINES: &[&str] = &[
        "name = \"x\"",
        "seed = 7",
        "[target]",
        "kind = \"guest\"",
        "kind = \"stdio\"",
        "memory_mib = 128",
        "[workload]",
        "calls = 3",
        "duration = \"1s\"",
        "duration = \"soon\"",
        "clients = 0",
        "call = \"append\"",
        "[[proxy]]",
        "name = \"mcp\"",
        "protocol = \"tcp\"",
        "[[step]]",
        "at = \"1s\"",
        "when = \"fail >= 3\"",
        "on = { nth = 2, method = \"tools/call\" }",
        "name = \"cut\"",
        "action = \"disable\"",
        "action = \"memory_pressure\"",
        "action = \"random\"",
        "action = \"serial\"",
        "steps = [{ action = \"wait\", for = \"1s\" }]",
        "choices = [{ action = \"kill\" }]",
        "proxy = \"mcp\"",
        "toxic = \"cut\"",
        "toxic = { type = \"latency\", attributes = { latency = 5 } }",
        "for = \"2s\"",
        "repeat = 3",
        "every = \"1s\"",
        "mib = 100",
        "[[check]]",
        "expect = \"ok_rate >= 0.5\"",
        "expect = \"p99(latency_ms) <\"",
        "during = \"cut\"",
        "[steady_state]",
        "checks = [\"ok_rate == 1\"]",
        "[full]",
        "workload = { calls = 9 }",
    ];

    proptest! {
        /// Any text, and any file made of scenario lines, is read or refused, never a panic.
        #[test]
        fn any_file_is_read_or_refused_without_a_panic(text in "[ -~\n]{0,300}") {
            let _ = parse("any.toml", &text, false);
        }

        #[test]
        fn any_file_of_scenario_lines_is_read_or_refused_without_a_panic(
            lines in proptest::collection::vec(proptest::sample::select(LINES), 0..24),
            full in any::<bool>(),
        ) {
            let _ = parse("lines.toml", &lines.join("\n"), full);
        }
    }
}
