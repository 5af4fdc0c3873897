//! MCP over stdio: brownout speaks stdio to the agent and runs the real server as its child,
//! relaying one JSON-RPC message per line through the same link and faults as TCP.
//!
//! The agent starts `brownout stdio -- <server command>` where it would have started the
//! server. brownout's stdin and stdout become one endpoint of the link, the child's stdout
//! and stdin the other; the child's stderr is the agent's (inherited). The child runs in its
//! own process group, is killed if brownout dies, and never outlives the relay.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::endpoint::Endpoint;
use super::events::EventSink;
use super::link::{self, Framing, LinkContext};
use super::stats::ProxyStats;
use crate::faults::ToxicSpec;

/// How long a server may take to exit by itself once its stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What a stdio relay needs.
pub struct StdioOptions {
    pub seed: u64,
    /// Which relay of its proxy this is: its connection number in events and fault
    /// decisions (0 for the only one).
    pub index: u64,
    pub toxics: watch::Receiver<Arc<[ToxicSpec]>>,
    pub stats: Arc<ProxyStats>,
    /// Where to record every message, if anywhere.
    pub events: Option<EventSink>,
    /// What its events name as their proxy.
    pub name: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("no server command given (brownout stdio [options] -- <command> [args...])")]
    NoCommand,
    #[error("cannot start server {command:?}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("stdio relay: {0}")]
    Io(#[from] io::Error),
}

/// A started server with its pipes, not yet relayed.
pub struct Server {
    child: Child,
    pid: Option<i32>,
    to_server: OwnedFd,
    from_server: OwnedFd,
}

impl Server {
    /// Start the server command in its own process group, killed if brownout dies or the
    /// `Server` (or the relay running it) is dropped.
    pub fn spawn(command: &[OsString]) -> Result<Server, StdioError> {
        Server::spawn_with(command, std::process::Stdio::inherit())
    }

    /// [`Server::spawn`], its stderr going to `stderr`.
    pub fn spawn_with(
        command: &[OsString],
        stderr: std::process::Stdio,
    ) -> Result<Server, StdioError> {
        let (program, args) = command.split_first().ok_or(StdioError::NoCommand)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; it makes the kernel kill the server if brownout
        // dies without cleaning up.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| StdioError::Spawn {
            command: command_line(command),
            source,
        })?;
        let pid = child.id().map(|p| p as i32);
        info!(pid, ?command, "server started");
        let to_server = child.stdin.take().expect("piped").into_owned_fd()?;
        let from_server = child.stdout.take().expect("piped").into_owned_fd()?;
        Ok(Server {
            child,
            pid,
            to_server,
            from_server,
        })
    }

    /// The server's process ID.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// An agent in this process: the pipe it reads the server's messages from (after the
/// faults) and the one it writes to, and the task relaying between them and `server`.
pub struct InProcess {
    pub reader: tokio::net::unix::pipe::Receiver,
    pub writer: tokio::net::unix::pipe::Sender,
    pub relay: tokio::task::JoinHandle<()>,
}

/// Relay between `server` and an agent in this process, on a task of its own, until both
/// are done (the agent's side ends when its pipes are dropped).
pub fn in_process(server: Server, opts: StdioOptions) -> io::Result<InProcess> {
    use tokio::net::unix::pipe;
    let (from_agent, agent_writes) = pipe_pair()?;
    let (agent_reads, to_agent) = pipe_pair()?;
    let reader = pipe::Receiver::from_owned_fd(agent_reads)?;
    let writer = pipe::Sender::from_owned_fd(agent_writes)?;
    let name = opts.name.clone();
    let relay = tokio::spawn(async move {
        if let Err(e) = relay(server, opts, from_agent, to_agent).await {
            warn!(proxy = %name, error = %e, "stdio relay ended");
        }
    });
    Ok(InProcess {
        reader,
        writer,
        relay,
    })
}

/// A command as one line, for messages.
pub fn command_line(command: &[OsString]) -> String {
    command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Relay between this process's stdin/stdout and a child server until both are done.
/// Returns the server's exit status.
pub async fn run(command: &[OsString], opts: StdioOptions) -> Result<ExitStatus, StdioError> {
    let server = Server::spawn(command)?;
    // SAFETY: fds 0 and 1 are ours for the rest of the process: in stdio mode nothing else
    // reads stdin or writes stdout, and closing them is how the agent learns we are done.
    let (stdin, stdout) = unsafe { (OwnedFd::from_raw_fd(0), OwnedFd::from_raw_fd(1)) };
    relay(server, opts, stdin, stdout).await
}

/// Relay between an agent's pipes (what it writes, where it reads) and a started server
/// until both are done. Returns the server's exit status.
pub async fn relay(
    server: Server,
    opts: StdioOptions,
    from_agent: OwnedFd,
    to_agent: OwnedFd,
) -> Result<ExitStatus, StdioError> {
    let Server {
        mut child,
        pid,
        to_server,
        from_server,
    } = server;
    let agent = Duplex::new(from_agent, to_agent, None)?;
    let server = Duplex::new(from_server, to_server, pid)?;

    let ctx = LinkContext {
        seed: opts.seed,
        index: opts.index,
        toxics: opts.toxics,
        stats: opts.stats,
        framing: Framing::Lines,
        name: opts.name,
        events: opts.events,
    };
    let cancel = CancellationToken::new();
    let relay = link::run(&agent, &server, ctx, cancel.clone());
    tokio::pin!(relay);
    let status = tokio::select! {
        () = &mut relay => {
            debug!("relay finished; waiting for the server to exit");
            stop(&mut child, pid).await?
        }
        status = child.wait() => {
            let status = status?;
            info!(%status, "server exited");
            // Let the server's last output through, then stop reading the agent.
            agent.read.close();
            if tokio::time::timeout(EXIT_GRACE, &mut relay).await.is_err() {
                warn!("server output still open after it exited; closing");
                cancel.cancel();
            }
            status
        }
    };
    Ok(status)
}

/// Wait for the server to exit on its own; after a grace period ask it to (SIGTERM), then
/// make it (SIGKILL).
async fn stop(child: &mut Child, pid: Option<i32>) -> io::Result<ExitStatus> {
    if let Ok(status) = tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        return status;
    }
    if let Some(pid) = pid {
        warn!(
            pid,
            "server still running {EXIT_GRACE:?} after its stdin closed; sending SIGTERM"
        );
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            return status;
        }
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    child.wait().await
}

/// A read pipe and a write pipe used as one endpoint.
struct Duplex {
    read: Pipe,
    write: Pipe,
    /// The server's PID, on the server side.
    pid: Option<i32>,
}

impl Duplex {
    fn new(read: OwnedFd, write: OwnedFd, pid: Option<i32>) -> io::Result<Duplex> {
        Ok(Duplex {
            read: Pipe::new(read, Interest::READABLE)?,
            write: Pipe::new(write, Interest::WRITABLE)?,
            pid,
        })
    }
}

/// One end of a pipe, non-blocking and registered with the runtime. It can be closed while
/// futures wait on it: they wake, and reads then see EOF, writes a broken pipe.
struct Pipe {
    /// `None` once closed. Readiness is polled under the lock, never awaited while holding
    /// it, so closing can deregister and close the fd properly at any time.
    fd: Mutex<Option<Fd>>,
    interest: Interest,
    closed: AtomicBool,
    on_close: Notify,
    /// The file status flags it had, restored on close: the open file may be shared (a
    /// terminal, say) and must not be left non-blocking.
    flags: i32,
}

impl Pipe {
    fn new(fd: OwnedFd, interest: Interest) -> io::Result<Pipe> {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on an fd we own.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is ours and stays open, on the same file, until the AsyncFd
        // is dropped in `close` or with the Pipe.
        let fd = match unsafe { AsyncFd::register_with_interest(fd, interest) } {
            Ok(fd) => Fd::Polled(fd),
            Err(e) => match e.into_parts() {
                // epoll refuses regular files and /dev/null, which never block anyway.
                (fd, err) if err.raw_os_error() == Some(libc::EPERM) => Fd::Plain(fd),
                (_, err) => return Err(err),
            },
        };
        Ok(Pipe {
            fd: Mutex::new(Some(fd)),
            interest,
            closed: AtomicBool::new(false),
            on_close: Notify::new(),
            flags,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Fd>> {
        self.fd.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ready(&self) -> io::Result<()> {
        let closed = self.on_close.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let ready = std::future::poll_fn(|cx| {
            let guard = self.lock();
            let Some(Fd::Polled(fd)) = guard.as_ref() else {
                return Poll::Ready(Ok(()));
            };
            let poll = if self.interest == Interest::READABLE {
                fd.poll_read_ready(cx)
            } else {
                fd.poll_write_ready(cx)
            };
            // Dropping the readiness guard leaves readiness set; the next try_io clears it.
            poll.map(|r| r.map(drop))
        });
        tokio::select! {
            r = ready => r,
            () = closed => Ok(()),
        }
    }

    /// One read or write; `None` when the pipe is closed.
    fn try_io(&self, f: impl FnOnce(RawFd) -> isize) -> Option<io::Result<usize>> {
        let syscall = |fd: RawFd| {
            let n = f(fd);
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        };
        match self.lock().as_ref()? {
            Fd::Polled(fd) => Some(fd.try_io(self.interest, |fd| syscall(fd.as_raw_fd()))),
            Fd::Plain(fd) => Some(syscall(fd.as_raw_fd())),
        }
    }

    /// Close this end: the peer sees EOF (or a broken pipe), and waiters wake.
    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(fd) = self.lock().take() {
            let raw = fd.raw();
            // SAFETY: fcntl on an fd we still own.
            unsafe { libc::fcntl(raw, libc::F_SETFL, self.flags) };
            // Deregisters, then closes.
            drop(fd);
            if raw <= 2 {
                // Keep stdin/stdout/stderr's numbers taken, so nothing opened later lands
                // on them by accident.
                // SAFETY: opening /dev/null onto a standard fd number we just closed.
                unsafe {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                    if null >= 0 && null != raw {
                        libc::dup2(null, raw);
                        libc::close(null);
                    }
                }
            }
        }
        self.on_close.notify_waiters();
    }
}

/// A pipe's fd: registered with the runtime, or a file that is always ready.
enum Fd {
    Polled(AsyncFd<OwnedFd>),
    Plain(OwnedFd),
}

impl Fd {
    fn raw(&self) -> RawFd {
        match self {
            Fd::Polled(fd) => fd.get_ref().as_raw_fd(),
            Fd::Plain(fd) => fd.as_raw_fd(),
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if let Some(fd) = self.lock().as_ref() {
            // SAFETY: fcntl on an fd we still own.
            unsafe { libc::fcntl(fd.raw(), libc::F_SETFL, self.flags) };
        }
    }
}

impl Endpoint for Duplex {
    async fn readable(&self) -> io::Result<()> {
        self.read.ready().await
    }

    async fn writable(&self) -> io::Result<()> {
        self.write.ready().await
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a buffer we own.
        self.read
            .try_io(|fd| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
            .unwrap_or(Ok(0))
    }

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        // SAFETY: writing from a buffer we own.
        self.write
            .try_io(|fd| unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })
            .unwrap_or_else(|| Err(io::ErrorKind::BrokenPipe.into()))
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.write.close();
        Ok(())
    }

    fn shutdown_both(&self) {
        self.write.close();
        self.read.close();
    }

    fn reset_on_close(&self) {
        // Pipes have no reset; a server that is reset is killed.
        self.kill(libc::SIGKILL);
    }

    fn kill(&self, signal: i32) -> bool {
        match self.pid {
            Some(pid) => {
                info!(pid, signal, "killing the server");
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, signal) };
                true
            }
            None => {
                self.shutdown_both();
                false
            }
        }
    }
}
