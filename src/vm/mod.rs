//! Guests: an MCP server in a QEMU microVM or in namespaces of its own, reached only
//! through a brownout proxy, so that killing, freezing or restarting the machine goes
//! through the same interception point as network faults.
//!
//! A [`Guest`] owns everything it creates on the host (processes, veth, netns, cgroups, a
//! run dir) and removes it when it is killed, stopped or dropped; a [`LeakReport`] says
//! what was there before and after. Backends implement [`Machine`]:
//! - [`namespace`]: the server as a process in its own network, PID and mount namespaces,
//!   behind a veth pair, in cgroups that limit memory, CPU and processes. Starts in
//!   about 0.1 s.
//! - [`process`]: the server as a plain process on the host (no root, no isolation), for
//!   what signals, crashes and restarts do to the process itself. Starts in milliseconds.
//! - [`qemu`]: the server in a QEMU microVM (KVM where the CPU really has it, else TCG),
//!   booted from the image `scripts/guest-image.sh` builds. Starts in seconds.

pub mod namespace;
pub mod process;
pub mod qemu;
pub mod resources;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

use resources::Lease;
pub use resources::{LeakReport, Snapshot};

/// The file [`Guest::fill_disk`] fills the guest's disk with.
const FILLER: &str = ".brownout-fill";

/// The port the guest's server listens on inside the guest, unless the spec says.
pub const GUEST_PORT: u16 = 8000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A spec field is wrong; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error("guest not found")]
    NotFound,
    #[error("guest already exists")]
    Exists,
    /// Setting up the host side failed; the message says which step.
    #[error("{0}")]
    Setup(String),
    #[error(
        "guest {name} was not ready after {secs:.1} s and was stopped; its last output:\n{log}"
    )]
    NotReady {
        name: String,
        secs: f64,
        log: String,
    },
    #[error("guest {name} exited before it was ready ({exit}); its last output:\n{log}")]
    ExitedEarly {
        name: String,
        exit: Exit,
        log: String,
    },
    #[error("guest {0} is not running")]
    NotRunning(String),
}

fn setup_err(what: impl fmt::Display, e: impl fmt::Display) -> VmError {
    VmError::Setup(format!("{what}: {e}"))
}

/// Which kind of machine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A process in namespaces of its own (the fast default).
    #[default]
    Namespace,
    /// A QEMU microVM.
    Qemu,
    /// A plain process on the host, in a process group of its own.
    Process,
}

impl FromStr for Backend {
    type Err = VmError;
    fn from_str(s: &str) -> Result<Backend, VmError> {
        match s {
            "namespace" | "ns" => Ok(Backend::Namespace),
            "qemu" => Ok(Backend::Qemu),
            "process" => Ok(Backend::Process),
            other => Err(VmError::Invalid(format!(
                "backend: unknown backend {other:?}: expected \"namespace\", \"qemu\" or \"process\""
            ))),
        }
    }
}

/// A guest as asked for. Fields left out take the backend's defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    pub name: String,
    #[serde(default, deserialize_with = "backend_from_str")]
    pub backend: Backend,
    /// Memory limit (namespace: cgroup limit, none when left out; qemu: guest RAM, 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// CPU (namespace: share of one core's time as a cgroup quota; qemu: vCPUs, rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Most processes at once (namespace only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// A directory with `vmlinux` and `initramfs.cpio` (qemu only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// The host directory the server keeps its files in; a fresh temp dir, removed with
    /// the guest, when left out. Kept across restarts either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The server to run (namespace only): `{data}` and `{port}` are replaced. Default:
    /// `brownout-mcp-server --root {data} --http 0.0.0.0:{port}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The port the server listens on inside the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A disk of its own for the data dir: a tmpfs of this size (root), kept across
    /// restarts, which [`Guest::fill_disk`] can fill without filling the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Most files the server may have open (RLIMIT_NOFILE; process and namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<u64>,
    /// How long to wait for the server to answer (namespace 10 s, qemu 180 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout_ms: Option<u64>,
    /// A proxy whose upstream becomes this guest's server (control plane only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

fn backend_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Backend, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl GuestSpec {
    pub fn new(name: &str, backend: Backend) -> GuestSpec {
        GuestSpec {
            name: name.to_owned(),
            backend,
            ..GuestSpec::default()
        }
    }

    /// Parse an API body; errors name the field.
    pub fn from_json(body: &[u8]) -> Result<GuestSpec, VmError> {
        let spec: GuestSpec =
            serde_json::from_slice(body).map_err(|e| VmError::Invalid(format!("guest: {e}")))?;
        spec.check()?;
        Ok(spec)
    }

    pub fn check(&self) -> Result<(), VmError> {
        let bad = |m: String| Err(VmError::Invalid(m));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad(format!(
                "name: {:?} must be non-empty letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.memory_mib == Some(0) {
            return bad("memory_mib: must be at least 1".into());
        }
        if let Some(c) = self.cpus
            && !(c > 0.0 && c <= 64.0)
        {
            return bad(format!("cpus: {c} is not between 0 and 64"));
        }
        if self.pids == Some(0) {
            return bad("pids: must be at least 1".into());
        }
        if self.port == Some(0) {
            return bad("port: must be a port number, not 0".into());
        }
        if self.disk_mib == Some(0) {
            return bad("disk_mib: must be at least 1".into());
        }
        if self.disk_mib.is_some() && self.data_dir.is_some() {
            return bad(
                "disk_mib: the disk holds brownout's own data dir; leave data_dir out".into(),
            );
        }
        if let Some(n) = self.fds
            && n < 16
        {
            return bad(format!(
                "fds: {n} is too few for a server to start; at least 16"
            ));
        }
        if self.ready_timeout_ms == Some(0) {
            return bad("ready_timeout_ms: must be more than 0".into());
        }
        if let Some(cmd) = &self.command
            && cmd.is_empty()
        {
            return bad("command: must name a program".into());
        }
        match self.backend {
            Backend::Qemu if self.pids.is_some() => {
                bad("pids: the qemu backend does not limit processes; use namespace".into())
            }
            Backend::Qemu if self.disk_mib.is_some() || self.fds.is_some() => bad(
                "disk_mib, fds: the qemu backend's server lives in its image; use namespace".into(),
            ),
            Backend::Qemu if self.command.is_some() => bad(
                "command: the qemu backend runs the server built into its image; use namespace"
                    .into(),
            ),
            Backend::Namespace | Backend::Process if self.image.is_some() => {
                bad("image: only the qemu backend boots an image".into())
            }
            Backend::Process if self.memory_mib.is_some() || self.cpus.is_some() => {
                bad("memory_mib, cpus: the process backend limits nothing; use namespace".into())
            }
            Backend::Process if self.pids.is_some() => {
                bad("pids: the process backend limits nothing; use namespace".into())
            }
            _ => Ok(()),
        }
    }

    fn port(&self) -> u16 {
        self.port.unwrap_or(GUEST_PORT)
    }

    fn ready_timeout(&self) -> Duration {
        Duration::from_millis(self.ready_timeout_ms.unwrap_or(match self.backend {
            Backend::Namespace | Backend::Process => 10_000,
            Backend::Qemu => 180_000,
        }))
    }
}

/// How a guest's main process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The kernel killed something in the guest for lack of memory.
    pub out_of_memory: bool,
    /// brownout ended it (kill, stop, restart), as opposed to the guest on its own.
    pub by_brownout: bool,
    /// It did not end on a stop or a signal within the grace time, and was killed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}")?,
            (_, Some(s)) => write!(f, "killed by signal {s}")?,
            _ => write!(f, "ended")?,
        }
        if self.out_of_memory {
            write!(f, ", out of memory")?;
        }
        if self.forced {
            write!(f, ", after it did not end when asked")?;
        }
        Ok(())
    }
}

/// A signal brownout sends to a guest's server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Term,
    Kill,
    Int,
    Hup,
    Quit,
    Usr1,
    Usr2,
}

impl Signal {
    pub const ALL: [Signal; 7] = [
        Signal::Term,
        Signal::Kill,
        Signal::Int,
        Signal::Hup,
        Signal::Quit,
        Signal::Usr1,
        Signal::Usr2,
    ];

    /// Its name without `SIG`: `TERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Quit => "QUIT",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
        }
    }

    pub fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Quit => libc::SIGQUIT,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
        }
    }
}

impl FromStr for Signal {
    type Err = VmError;
    /// `TERM`, `SIGTERM` or `term`.
    fn from_str(s: &str) -> Result<Signal, VmError> {
        let up = s.to_ascii_uppercase();
        let bare = up.strip_prefix("SIG").unwrap_or(&up);
        Signal::ALL
            .into_iter()
            .find(|sig| sig.name() == bare)
            .ok_or_else(|| {
                VmError::Invalid(format!(
                    "signal: unknown signal {s:?}: expected one of TERM, KILL, INT, HUP, QUIT, USR1, USR2"
                ))
            })
    }
}

/// Where a guest is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Paused,
    /// It ended (on its own or killed); `restart` brings it back.
    Exited,
}

/// Times of a guest's last start and stop, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// From asking to the machine's process running.
    pub spawn_ms: f64,
    /// From asking to the server's first answer.
    pub ready_ms: f64,
    /// From the kill to everything reaped and removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_ms: Option<f64>,
}

/// A running machine: what a backend gives the guest to drive it.
pub trait Machine: Send + Sync {
    /// Where the host reaches the guest's server.
    fn upstream(&self) -> SocketAddr;
    /// The machine's main process (QEMU, or the namespaces' first process).
    fn child(&mut self) -> &mut Child;
    /// SIGKILL, now, everything the machine runs.
    fn kill(&mut self);
    /// Ask the machine to shut down.
    fn terminate(&mut self);
    /// Send `signal` to the server process.
    fn signal(&mut self, signal: i32) -> Result<(), VmError> {
        let _ = signal;
        Err(VmError::Invalid(
            "signal: this backend's server cannot be signalled; kill or stop the guest".into(),
        ))
    }
    fn pause(&mut self) -> Result<(), VmError>;
    fn resume(&mut self) -> Result<(), VmError>;
    /// Take the guest's network link down (a cable pulled: packets vanish, connections
    /// hang) or bring it back.
    fn set_link(&mut self, up: bool) -> Result<(), VmError>;
    /// Whether memory ran out in the guest (read before cleanup).
    fn out_of_memory(&self) -> bool;
    /// The guest's memory cgroup, where a memory hog presses on its limit.
    fn memory_cgroup(&self) -> Option<PathBuf> {
        None
    }
    /// The last lines the guest printed (console, or the server's output).
    fn log_tail(&self) -> String;
    /// After the machine stopped before it was ready: whether that boot failed for the
    /// host's reasons and is worth trying again.
    fn boot_failed_transiently(&self) -> bool {
        false
    }
    /// After the main process has exited: remove what the machine created on the host.
    fn cleanup(&mut self);
    /// The machine's own pids, to look for after cleanup.
    fn pids(&self) -> Vec<i32>;
    /// What cleanup found left behind and removed (processes the server started that
    /// outlived it): leaks all the same.
    fn left_behind(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What a backend needs to start a machine.
pub struct Setup<'a> {
    pub spec: &'a GuestSpec,
    pub lease: &'a Lease,
    pub run_dir: &'a Path,
    pub data_dir: &'a Path,
    /// The host port of a previous run to keep (qemu), so a restart keeps its address.
    pub host_port: Option<u16>,
}

fn start_machine(setup: &Setup) -> Result<Box<dyn Machine>, VmError> {
    match setup.spec.backend {
        Backend::Namespace => Ok(Box::new(namespace::Namespace::start(setup)?)),
        Backend::Qemu => Ok(Box::new(qemu::Qemu::start(setup)?)),
        Backend::Process => Ok(Box::new(process::Process::start(setup)?)),
    }
}

/// A guest and everything it holds on the host.
pub struct Guest {
    spec: GuestSpec,
    lease: Lease,
    run_dir: PathBuf,
    data_dir: PathBuf,
    owns_data: bool,
    /// The data dir is a disk of its own (`disk_mib`), mounted by the guest.
    disk: bool,
    machine: Option<Box<dyn Machine>>,
    state: State,
    exit: Option<Exit>,
    restarts: u32,
    timings: Timings,
    before: Snapshot,
    report: Option<LeakReport>,
    upstream: Option<SocketAddr>,
    /// When the machine was last asked to start.
    started: Instant,
    /// The network cable is pulled.
    link_down: bool,
    /// What [`Guest::press_memory`] runs in the guest's memory cgroup, and how much it holds.
    hog: Option<(tokio::process::Child, u64)>,
}

/// A guest as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GuestView {
    pub name: String,
    pub backend: Backend,
    pub state: State,
    pub upstream: Option<String>,
    pub data_dir: PathBuf,
    pub spec: GuestSpec,
    pub restarts: u32,
    /// Its network cable is pulled.
    pub link_down: bool,
    pub timings: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// What the last kill or stop left behind; none while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<LeakReport>,
}

impl Guest {
    /// Start a guest and wait until its server answers. On any failure everything it
    /// created is removed before the error returns.
    pub async fn spawn(spec: GuestSpec) -> Result<Guest, VmError> {
        let mut guest = Guest::start(spec)?;
        // On error `guest` drops here, which removes all of it.
        guest.wait_ready().await?;
        Ok(guest)
    }

    /// Start a guest without waiting for its server; [`Guest::wait_ready`] waits.
    pub fn start(spec: GuestSpec) -> Result<Guest, VmError> {
        spec.check()?;
        if let Some(d) = spec.data_dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(VmError::Invalid(format!(
                "data_dir: {} is not a directory",
                d.display()
            )));
        }
        let before = Snapshot::take();
        let lease = Lease::take().map_err(|e| setup_err("taking a guest lease", e))?;
        let run_dir = lease.run_dir();
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| setup_err(format_args!("creating {}", run_dir.display()), e))?;
        let (data_dir, owns_data) = match &spec.data_dir {
            Some(d) => (d.canonicalize().unwrap_or_else(|_| d.clone()), false),
            None => {
                let d = run_dir.join("data");
                std::fs::create_dir_all(&d)
                    .map_err(|e| setup_err(format_args!("creating {}", d.display()), e))?;
                (d, true)
            }
        };
        let mut guest = Guest {
            spec,
            lease,
            run_dir,
            data_dir,
            owns_data,
            disk: false,
            machine: None,
            state: State::Exited,
            exit: None,
            restarts: 0,
            timings: Timings::default(),
            before,
            report: None,
            upstream: None,
            started: Instant::now(),
            link_down: false,
            hog: None,
        };
        if let Some(mib) = guest.spec.disk_mib {
            resources::mount_disk(&guest.data_dir, mib)
                .map_err(|e| VmError::Setup(format!("disk_mib: {e}")))?;
            guest.disk = true;
        }
        // On error `guest` drops here, which removes all of it.
        guest.launch()?;
        Ok(guest)
    }

    /// Fill the guest's own disk (`disk_mib`) with one file, as far as it goes: the
    /// server's writes then fail for want of space. The bytes written.
    pub fn fill_disk(&mut self) -> Result<u64, VmError> {
        use std::io::Write;
        if !self.disk {
            return Err(VmError::Invalid(
                "fill_disk: the guest has no disk of its own to fill; give it disk_mib".into(),
            ));
        }
        let path = self.data_dir.join(FILLER);
        let mut f = std::fs::File::create(&path)
            .map_err(|e| setup_err(format_args!("creating {}", path.display()), e))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        // Bounded: the disk holds disk_mib MiB at most.
        for _ in 0..=self.spec.disk_mib.unwrap_or(0) {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(setup_err(format_args!("filling {}", path.display()), e)),
            }
        }
        // What is left is smaller than a chunk: take it too.
        loop {
            match f.write(&chunk[..4096]) {
                Ok(n) if n > 0 => written += n as u64,
                _ => break,
            }
        }
        Ok(written)
    }

    /// Press on the guest's memory limit: a process in its memory cgroup takes `mib` MiB
    /// and holds it until [`Guest::release_memory`] (or the guest ends). The guest's
    /// processes are made the out-of-memory killer's first choice (`oom_score_adj` 1000,
    /// for the rest of their lives), so a server that needs more than is left is what
    /// runs out and is killed, as in a container at its limit. If even the hog does not
    /// fit once the server is gone, it is killed too; that is the limit hit, not an error.
    pub async fn press_memory(&mut self, mib: u64) -> Result<(), VmError> {
        use tokio::io::AsyncBufReadExt;
        let Some(machine) = &self.machine else {
            return Err(VmError::NotRunning(self.spec.name.clone()));
        };
        let limit = self.spec.memory_mib;
        let cgroup = machine.memory_cgroup();
        let (Some(limit), Some(cgroup)) = (limit, cgroup) else {
            return Err(VmError::Invalid(
                "memory_pressure: presses on a namespace guest's memory limit; give it memory_mib"
                    .into(),
            ));
        };
        if mib == 0 || mib >= limit {
            return Err(VmError::Invalid(format!(
                "memory_pressure: {mib} MiB is not between 1 and the guest's {limit} MiB, less one"
            )));
        }
        self.release_memory().await;
        // The out-of-memory killer must take the guest's processes, not the hog: lowering
        // the hog's score needs CAP_SYS_RESOURCE, raising theirs needs nothing.
        for pid in resources::cgroup_pids(&cgroup) {
            let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "1000");
        }
        let procs =
            std::ffi::CString::new(cgroup.join("cgroup.procs").to_string_lossy().as_bytes())
                .expect("no NUL in a path");
        let mut cmd = tokio::process::Command::new(sibling_program("brownout-mcp-server"));
        cmd.args(["--hold-memory", &mib.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls (prctl, open/write/close) between fork and
        // exec, on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        let mut hog = cmd.spawn().map_err(|e| {
            setup_err(
                "memory_pressure: starting brownout-mcp-server --hold-memory",
                e,
            )
        })?;
        let out = hog.stdout.take().expect("piped");
        let mut line = String::new();
        let said = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::BufReader::new(out).read_line(&mut line),
        )
        .await;
        let holding = matches!(said, Ok(Ok(n)) if n > 0 && line.starts_with("holding"));
        // Taking it all may not fit beside what the guest cannot give back (tmpfs pages,
        // kernel memory): the server is killed first, then the hog. The limit was hit all
        // the same.
        let ran_out = self.machine.as_ref().is_some_and(|m| m.out_of_memory());
        if !holding && !ran_out {
            let _ = hog.kill().await;
            return Err(VmError::Setup(format!(
                "memory_pressure: the process that takes {mib} MiB did not (said {:?})",
                line.trim()
            )));
        }
        self.hog = Some((hog, mib));
        Ok(())
    }

    /// Give back what [`Guest::press_memory`] took.
    pub async fn release_memory(&mut self) {
        if let Some((mut hog, _)) = self.hog.take() {
            let _ = hog.kill().await;
        }
    }

    /// Give back what [`Guest::fill_disk`] took.
    pub fn free_disk(&mut self) -> Result<(), VmError> {
        match std::fs::remove_file(self.data_dir.join(FILLER)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(setup_err("freeing the guest's disk", e)),
        }
    }

    fn launch(&mut self) -> Result<(), VmError> {
        let t0 = Instant::now();
        let setup = Setup {
            spec: &self.spec,
            lease: &self.lease,
            run_dir: &self.run_dir,
            data_dir: &self.data_dir,
            host_port: self.upstream.map(|a| a.port()),
        };
        let machine = start_machine(&setup)?;
        self.timings = Timings {
            spawn_ms: ms(t0.elapsed()),
            ..Timings::default()
        };
        let upstream = machine.upstream();
        self.machine = Some(machine);
        self.upstream = Some(upstream);
        self.state = State::Running;
        self.exit = None;
        self.report = None;
        self.started = t0;
        self.link_down = false;
        Ok(())
    }

    /// Wait until the server answers a real request. If it exits first or does not answer
    /// in the spec's time, the machine is killed and cleaned up and the error carries its
    /// last output.
    pub async fn wait_ready(&mut self) -> Result<(), VmError> {
        let Some(upstream) = self.upstream.filter(|_| self.machine.is_some()) else {
            return Err(VmError::NotRunning(self.spec.name.clone()));
        };
        let t0 = self.started;
        let timeout = self.spec.ready_timeout();
        let deadline = t0 + timeout;
        let mut retries = 0;
        for polls in 1u64.. {
            // A boot that failed on the host's account does not always stop by itself (a
            // guest that finds no ACPI cannot power off: it halts), so stop it here and let
            // the exit below try again.
            if polls % 10 == 0
                && let Some(m) = self.machine.as_mut()
                && m.boot_failed_transiently()
            {
                m.kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), m.child().wait()).await;
            }
            if let Some(exit) = self.poll_exit() {
                let log = self.log_tail();
                let transient = self
                    .machine
                    .as_ref()
                    .is_some_and(|m| m.boot_failed_transiently());
                self.finish_at(exit.clone(), Instant::now());
                if transient && retries < 2 {
                    retries += 1;
                    note(
                        &self.run_dir,
                        "that boot failed on the host's account; booting again",
                    );
                    self.launch()?;
                    continue;
                }
                let log = if log.trim().is_empty() {
                    "(nothing: the machine stopped before its firmware printed; is memory_mib too small for the image?)".to_owned()
                } else {
                    log
                };
                return Err(VmError::ExitedEarly {
                    name: self.spec.name.clone(),
                    exit,
                    log,
                });
            }
            if probe(upstream).await {
                break;
            }
            if Instant::now() >= deadline {
                let log = self.log_tail();
                self.kill().await;
                return Err(VmError::NotReady {
                    name: self.spec.name.clone(),
                    secs: timeout.as_secs_f64(),
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.timings.ready_ms = ms(t0.elapsed());
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &GuestSpec {
        &self.spec
    }

    /// Where the host reaches the guest's server (kept across restarts where it can be).
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.upstream
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn state(&mut self) -> State {
        if let Some(exit) = self.poll_exit() {
            // Reaped on its own: clean up now so nothing lingers until the next command.
            self.finish_at(exit, Instant::now());
        }
        self.state
    }

    pub fn exit(&self) -> Option<&Exit> {
        self.exit.as_ref()
    }

    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    pub fn report(&self) -> Option<&LeakReport> {
        self.report.as_ref()
    }

    pub fn view(&mut self) -> GuestView {
        let state = self.state();
        GuestView {
            name: self.spec.name.clone(),
            backend: self.spec.backend,
            state,
            upstream: self.upstream.map(|a| a.to_string()),
            data_dir: self.data_dir.clone(),
            spec: self.spec.clone(),
            restarts: self.restarts,
            link_down: self.link_down,
            timings: self.timings.clone(),
            exit: self.exit.clone(),
            report: self.report.clone(),
        }
    }

    /// The machine's output so far (last lines).
    pub fn log_tail(&self) -> String {
        match &self.machine {
            Some(m) => m.log_tail(),
            None => tail(&self.run_dir.join("console.log")),
        }
    }

    fn poll_exit(&mut self) -> Option<Exit> {
        let m = self.machine.as_mut()?;
        let status = m.child().try_wait().ok()??;
        Some(exit_of(status, m.out_of_memory(), false))
    }

    /// SIGKILL the machine, wait until it is reaped, remove what it created.
    pub async fn kill(&mut self) -> Option<&LeakReport> {
        let m = self.machine.as_mut()?;
        let t0 = Instant::now();
        m.kill();
        let status = tokio::time::timeout(Duration::from_secs(10), m.child().wait())
            .await
            .ok()
            .and_then(Result::ok);
        let exit = match status {
            Some(s) => exit_of(s, m.out_of_memory(), true),
            None => Exit {
                code: None,
                signal: Some(libc::SIGKILL),
                out_of_memory: false,
                by_brownout: true,
                forced: false,
            },
        };
        self.finish_at(exit, t0);
        self.report.as_ref()
    }

    /// Ask the machine to shut down; SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Option<&LeakReport> {
        let m = self.machine.as_mut()?;
        let t0 = Instant::now();
        m.terminate();
        self.end_within(grace, t0).await
    }

    /// Send `signals` to the server, a millisecond apart, and wait up to `grace` for the
    /// machine to end; SIGKILL after that (the exit says `forced`). SIGKILL alone is a
    /// [`Guest::kill`].
    pub async fn signal(&mut self, signals: &[Signal], grace: Duration) -> Result<(), VmError> {
        if signals == [Signal::Kill] {
            self.kill().await;
            return Ok(());
        }
        let t0 = Instant::now();
        for (i, s) in signals.iter().enumerate() {
            let Some(m) = self.machine.as_mut() else {
                return Err(VmError::NotRunning(self.spec.name.clone()));
            };
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            m.signal(s.number())?;
        }
        self.end_within(grace, t0).await;
        Ok(())
    }

    /// Wait up to `grace` for the machine to end after it was asked to; kill it after.
    async fn end_within(&mut self, grace: Duration, t0: Instant) -> Option<&LeakReport> {
        let m = self.machine.as_mut()?;
        match tokio::time::timeout(grace, m.child().wait()).await {
            Ok(Ok(status)) => {
                let exit = exit_of(status, m.out_of_memory(), true);
                self.finish_at(exit, t0);
            }
            _ => {
                self.kill().await;
                if let Some(e) = self.exit.as_mut() {
                    e.forced = true;
                }
            }
        }
        self.report.as_ref()
    }

    pub fn pause(&mut self) -> Result<(), VmError> {
        if self.state() != State::Running {
            return Err(VmError::NotRunning(self.spec.name.clone()));
        }
        self.machine.as_mut().expect("running").pause()?;
        self.state = State::Paused;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), VmError> {
        if self.state() != State::Paused {
            return Err(VmError::NotRunning(self.spec.name.clone()));
        }
        self.machine.as_mut().expect("paused").resume()?;
        self.state = State::Running;
        Ok(())
    }

    /// Pull the guest's network cable (`false`) or plug it back in (`true`): unlike a proxy
    /// toxic this happens below the guest's TCP, so its connections see silence, not a close.
    pub fn set_link(&mut self, up: bool) -> Result<(), VmError> {
        if !matches!(self.state(), State::Running | State::Paused) {
            return Err(VmError::NotRunning(self.spec.name.clone()));
        }
        self.machine.as_mut().expect("running").set_link(up)?;
        self.link_down = !up;
        Ok(())
    }

    /// Kill the machine if it runs, then start it again with the same spec, data and
    /// (where it can) address.
    pub async fn restart(&mut self) -> Result<(), VmError> {
        self.start_again().await?;
        self.wait_ready().await
    }

    /// Kill the machine if it runs and start it again, without waiting for its server:
    /// it returns while the server is starting.
    pub async fn start_again(&mut self) -> Result<(), VmError> {
        self.kill().await;
        self.restarts += 1;
        self.before = Snapshot::take();
        self.launch()
    }

    /// The main process has exited: clean up and account.
    fn finish_at(&mut self, exit: Exit, t0: Instant) {
        let Some(mut m) = self.machine.take() else {
            return;
        };
        // A memory hog goes with the guest, reaped (no zombie) before its cgroups go.
        if let Some((mut hog, _)) = self.hog.take() {
            let _ = hog.start_kill();
            for _ in 0..200 {
                if !matches!(hog.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        m.cleanup();
        let pids = m.pids();
        self.timings.cleanup_ms = Some(ms(t0.elapsed()));
        self.exit = Some(exit);
        self.state = State::Exited;
        let mut leftovers = m.left_behind();
        leftovers.extend(resources::leftovers(self.lease.index, &pids));
        self.report = Some(LeakReport::new(self.before.clone(), leftovers));
    }

    /// Kill, clean up, and remove the run dir (and the data dir if brownout made it).
    pub async fn delete(mut self) -> LeakReport {
        self.kill().await;
        self.remove_dirs();
        let leftovers = self.final_leftovers();
        LeakReport::new(self.before.clone(), leftovers)
    }

    fn remove_dirs(&mut self) {
        if self.disk {
            resources::unmount(&self.data_dir);
            self.disk = false;
        }
        if self.owns_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }

    fn final_leftovers(&self) -> Vec<String> {
        let mut left = resources::leftovers(self.lease.index, &[]);
        if self.run_dir.exists() {
            left.push(format!("dir {}", self.run_dir.display()));
        }
        left
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut m) = self.machine.take() {
            m.kill();
            // Reaped by tokio's orphan reaper; the cgroups and devices go now.
            let _ = m.child().start_kill();
            m.cleanup();
        }
        self.remove_dirs();
    }
}

fn exit_of(status: std::process::ExitStatus, out_of_memory: bool, by_brownout: bool) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    Exit {
        code: status.code(),
        signal: status.signal(),
        out_of_memory,
        by_brownout,
        forced: false,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Add a line of brownout's own to a guest's console log.
fn note(run_dir: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir.join("console.log"))
    {
        let _ = writeln!(f, "brownout: {line}");
    }
}

/// The last lines of a log file (at most 4 KiB).
pub(crate) fn tail(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(4096);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A real round trip to the server: an HTTP request that gets an HTTP answer. (A connect
/// alone proves nothing: QEMU accepts on a forwarded port before the guest is up.)
async fn probe(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: brownout\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"HTTP/").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(()))
    )
}

/// The server a process or namespace guest runs: the spec's command with `{data}` and
/// `{port}` replaced, else brownout's own server on `host:port`; checked to exist. And the
/// log its output goes to (console.log in the run dir), as stdout and stderr.
pub(crate) fn server_command(
    setup: &Setup,
    host: &str,
    port: u16,
) -> Result<(Vec<String>, PathBuf, std::fs::File, std::fs::File), VmError> {
    let data = setup.data_dir.to_string_lossy().into_owned();
    let command: Vec<String> = match &setup.spec.command {
        Some(c) => c
            .iter()
            .map(|a| {
                a.replace("{data}", &data)
                    .replace("{port}", &port.to_string())
            })
            .collect(),
        None => vec![
            sibling_program("brownout-mcp-server")
                .to_string_lossy()
                .into_owned(),
            "--root".into(),
            data,
            "--http".into(),
            format!("{host}:{port}"),
        ],
    };
    if !program_exists(&command[0]) {
        return Err(VmError::Invalid(format!(
            "command: {:?} not found",
            command[0]
        )));
    }
    let log = setup.run_dir.join("console.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| setup_err(format_args!("opening {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| setup_err("duplicating the log file", e))?;
    Ok((command, log, out, err))
}

/// Between fork and exec: at most `fds` open files (RLIMIT_NOFILE), when given.
/// Async-signal-safe.
pub(crate) fn limit_files(fds: Option<u64>) -> std::io::Result<()> {
    if let Some(n) = fds {
        let limit = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: a plain struct on the stack.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether `program` is a file, or a program on PATH.
pub(crate) fn program_exists(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// A program next to the running executable (or one directory up, for test binaries in
/// `target/*/deps`), else on PATH.
pub(crate) fn sibling_program(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [dir, dir.parent().unwrap_or(dir)] {
            let p = d.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_and_errors_name_the_field() {
        let ok = GuestSpec::from_json(br#"{"name": "g-1", "backend": "qemu", "memory_mib": 256}"#)
            .unwrap();
        assert_eq!((ok.backend, ok.memory_mib), (Backend::Qemu, Some(256)));
        assert_eq!(
            GuestSpec::from_json(br#"{"name": "g"}"#).unwrap().backend,
            Backend::Namespace
        );
        for (body, starts) in [
            (r#"{"name": "a b"}"#, "name:"),
            (r#"{"name": "g", "memory_mib": 0}"#, "memory_mib:"),
            (r#"{"name": "g", "cpus": 0}"#, "cpus:"),
            (r#"{"name": "g", "pids": 0}"#, "pids:"),
            (r#"{"name": "g", "port": 0}"#, "port:"),
            (r#"{"name": "g", "command": []}"#, "command:"),
            (r#"{"name": "g", "backend": "qemu", "pids": 5}"#, "pids:"),
            (
                r#"{"name": "g", "backend": "qemu", "command": ["x"]}"#,
                "command:",
            ),
            (r#"{"name": "g", "image": "/x"}"#, "image:"),
            (
                r#"{"name": "g", "ready_timeout_ms": 0}"#,
                "ready_timeout_ms:",
            ),
            (
                r#"{"name": "g", "backend": "lxc"}"#,
                "guest: backend: unknown backend \"lxc\"",
            ),
            (r#"{"name": "g", "mem": 1}"#, "guest: unknown field `mem`"),
        ] {
            let err = GuestSpec::from_json(body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(starts), "{body}: {err}");
        }
    }

    #[test]
    fn exits_read_as_people_say_them() {
        let e = |code, signal, oom| Exit {
            code,
            signal,
            out_of_memory: oom,
            by_brownout: false,
            forced: false,
        };
        assert_eq!(e(Some(3), None, false).to_string(), "exit code 3");
        assert_eq!(
            e(None, Some(9), true).to_string(),
            "killed by signal 9, out of memory"
        );
    }

    #[test]
    fn log_tails_keep_the_last_lines() {
        let path = std::env::temp_dir().join(format!("brownout-tail-{}", std::process::id()));
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let t = tail(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(t.lines().count(), 20);
        assert_eq!(t.lines().last(), Some("line 99"));
        assert_eq!(tail(Path::new("/nonexistent/log")), "");
    }
}
