//! The process backend: the server as a plain process on the host, in a process group of
//! its own, listening on a loopback port. It needs no root and isolates nothing: what it
//! puts to the test is the server process itself (signals, crashes, restarts, and what it
//! leaves behind when it dies), not its machine.
//!
//! A crash (`kill`) is SIGKILL to the server alone, as when it dies on its own: children
//! it started stay behind. Cleanup finds them by their process group, reports each one as
//! left behind, and kills them, so nothing outlives the guest.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Child;

use super::resources;
use super::{Machine, Setup, VmError, limit_files, server_command, setup_err, tail};

/// How a leak report names a process the server left running: `process N (...)`.
pub const LEFT_RUNNING: &str = "left running by the server";

pub struct Process {
    child: Child,
    /// The server's pid, which is also its process group's id.
    pid: i32,
    upstream: SocketAddr,
    log: PathBuf,
    /// What cleanup found of the group after the server was gone (and killed).
    orphans: Vec<String>,
}

impl Process {
    pub fn start(setup: &Setup) -> Result<Process, VmError> {
        // A restart keeps the port, so the proxies in front keep their upstream.
        let port = match setup.host_port.or(setup.spec.port) {
            Some(p) => p,
            None => free_port()?,
        };
        let (command, log, out, err) = server_command(setup, "127.0.0.1", port)?;
        let fds = setup.spec.fds;
        let mut cmd = tokio::process::Command::new(&command[0]);
        cmd.args(&command[1..])
            .current_dir(setup.data_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(move || {
                // The server does not outlive brownout, whatever ends brownout.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                limit_files(fds)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| setup_err(format_args!("starting {:?}", command[0]), e))?;
        Ok(Process {
            pid: child.id().map_or(0, |p| p as i32),
            child,
            upstream: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log,
            orphans: Vec::new(),
        })
    }

    fn group(&self, signal: i32) {
        if self.pid > 0 {
            // SAFETY: the server's own process group, made for it at spawn.
            unsafe { libc::kill(-self.pid, signal) };
        }
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> Result<u16, VmError> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| setup_err("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| setup_err("finding a free port", e))?
        .port())
}

impl Machine for Process {
    fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    fn kill(&mut self) {
        if self.pid > 0 {
            // SAFETY: our child's pid; it stays ours until it is reaped.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    fn terminate(&mut self) {
        let _ = self.signal(libc::SIGTERM);
    }

    fn signal(&mut self, signal: i32) -> Result<(), VmError> {
        if self.pid > 0 && self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: our child's pid, not reaped yet (checked just above).
            unsafe { libc::kill(self.pid, signal) };
        }
        Ok(())
    }

    fn pause(&mut self) -> Result<(), VmError> {
        self.group(libc::SIGSTOP);
        Ok(())
    }

    fn resume(&mut self) -> Result<(), VmError> {
        self.group(libc::SIGCONT);
        Ok(())
    }

    fn set_link(&mut self, _up: bool) -> Result<(), VmError> {
        Err(VmError::Invalid(
            "unplug: a process guest has no network link of its own; a partition toxic on \
             its proxy cuts it off"
                .into(),
        ))
    }

    fn out_of_memory(&self) -> bool {
        false
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }

    fn cleanup(&mut self) {
        let left = resources::group_members(self.pid);
        if left.is_empty() {
            return;
        }
        for pid in &left {
            self.orphans.push(format!("process {pid} ({LEFT_RUNNING})"));
        }
        self.group(libc::SIGCONT);
        self.group(libc::SIGKILL);
        // They are init's children now; it reaps them. Bounded: a process in D state
        // may take a while, and is then reported by the leak check.
        let t0 = Instant::now();
        while !resources::group_members(self.pid).is_empty()
            && t0.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pids(&self) -> Vec<i32> {
        vec![self.pid]
    }

    fn left_behind(&self) -> Vec<String> {
        self.orphans.clone()
    }
}
