//! The namespace backend: the server as a process in network, PID and mount namespaces of
//! its own, reached through a veth pair, limited by cgroup v1 controllers.
//!
//! Layout for lease `n` (tag `bo<n>`): netns `brownout-<n>`; veth `bo<n>h` on the host
//! (10.213.x.y+1/30) and `bo<n>g` in the guest (+2); cgroups `brownout/bo<n>` under
//! memory, pids, cpu and freezer. The process tree is `unshare --fork` (in the host PID
//! namespace, in the cgroups and the netns) over the server (PID 1 of its own namespace),
//! so killing either ends the whole guest.

use std::ffi::CString;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Child;

use super::resources::{self, CONTROLLERS, cgroup_dir, netns_name};
use super::{Machine, Setup, VmError, limit_files, server_command, setup_err, tail};

pub struct Namespace {
    child: Child,
    /// The first process's pid (kept: the child forgets it once reaped).
    pid: i32,
    index: u32,
    upstream: SocketAddr,
    cgroups: Vec<PathBuf>,
    log: PathBuf,
    /// An out-of-memory kill seen before cleanup removed the memory cgroup.
    oom: bool,
}

/// Run `ip` with `args`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), VmError> {
    resources::ip(args).map_err(VmError::Setup)
}

impl Namespace {
    pub fn start(setup: &Setup) -> Result<Namespace, VmError> {
        let spec = setup.spec;
        let index = setup.lease.index;
        let tag = setup.lease.tag();
        let ns = netns_name(index);
        let (host_ip, guest_ip) = setup.lease.addresses();
        let port = spec.port();
        let mut made = Partial {
            index,
            netns: false,
            cgroups: Vec::new(),
        };

        resources::ensure_subnet_route()
            .map_err(|e| setup_err("routing the guest subnet as unreachable", e))?;
        ip(&["netns", "add", &ns])?;
        made.netns = true;
        let (host_if, guest_if) = (format!("{tag}h"), format!("{tag}g"));
        let (host_mac, guest_mac) = (mac(index, 1), mac(index, 2));
        ip(&[
            "link", "add", &host_if, "address", &host_mac, "type", "veth", "peer", "name",
            &guest_if, "address", &guest_mac, "netns", &ns,
        ])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{guest_ip}/30"),
            "dev",
            &guest_if,
        ])?;
        ip(&["-n", &ns, "link", "set", &guest_if, "up"])?;
        // Each end knows the other's hardware address from the start: a restarted guest's
        // fresh veth sometimes leaves ARP unanswered for seconds, and its first calls
        // would wait on that rather than on the server.
        ip(&[
            "neigh",
            "replace",
            &guest_ip.to_string(),
            "lladdr",
            &guest_mac,
            "dev",
            &host_if,
            "nud",
            "permanent",
        ])?;
        guest_neighbour(index)?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;

        for controller in CONTROLLERS {
            let root = cgroup_dir(controller, &tag);
            let Some(parent) = root
                .parent()
                .filter(|p| p.parent().is_some_and(|c| c.exists()))
            else {
                continue;
            };
            let _ = fs::create_dir_all(parent);
            fs::create_dir(&root)
                .map_err(|e| setup_err(format_args!("creating cgroup {}", root.display()), e))?;
            made.cgroups.push(root);
        }
        let write = |c: &str, file: &str, value: String, field: &str| -> Result<(), VmError> {
            let dir = controller_dir(&made.cgroups, c).ok_or_else(|| {
                VmError::Invalid(format!(
                    "{field}: this host has no cgroup v1 {c} controller at /sys/fs/cgroup/{c}"
                ))
            })?;
            fs::write(dir.join(file), &value).map_err(|e| {
                setup_err(
                    format_args!("{field}: writing {value} to {}", dir.join(file).display()),
                    e,
                )
            })
        };
        if let Some(mib) = spec.memory_mib {
            write(
                "memory",
                "memory.limit_in_bytes",
                (mib << 20).to_string(),
                "memory_mib",
            )?;
        }
        if let Some(pids) = spec.pids {
            write("pids", "pids.max", pids.to_string(), "pids")?;
        }
        if let Some(cpus) = spec.cpus {
            write("cpu", "cpu.cfs_period_us", "100000".into(), "cpus")?;
            write(
                "cpu",
                "cpu.cfs_quota_us",
                ((cpus * 100_000.0) as u64).max(1000).to_string(),
                "cpus",
            )?;
        }

        let (command, log, out, err) = server_command(setup, "0.0.0.0", port)?;
        let netns = fs::File::open(format!("/run/netns/{ns}"))
            .map_err(|e| setup_err(format_args!("opening netns {ns}"), e))?;
        let procs: Vec<CString> = made
            .cgroups
            .iter()
            .map(|d| {
                CString::new(d.join("cgroup.procs").to_string_lossy().as_bytes())
                    .expect("no NUL in a path")
            })
            .collect();

        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--",
        ])
        .args(&command)
        .current_dir(setup.data_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
        let netns_fd = netns.as_raw_fd();
        let fds = spec.fds;
        // SAFETY: only async-signal-safe calls (setpgid, prctl, open/write/close, setns)
        // between fork and exec, on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                limit_files(fds)?;
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| setup_err("starting unshare (util-linux) for the guest", e))?;
        drop(netns);
        let pid = child.id().map_or(0, |p| p as i32);
        let cgroups = std::mem::take(&mut made.cgroups);
        made.netns = false;
        Ok(Namespace {
            child,
            pid,
            index,
            upstream: SocketAddr::from((guest_ip, port)),
            cgroups,
            log,
            oom: false,
        })
    }

    fn cgroup(&self, controller: &str) -> Option<&PathBuf> {
        controller_dir(&self.cgroups, controller)
    }

    /// The guest's own processes. Not the memory cgroup's: a memory hog pressing on the
    /// guest is in that one alone, and is not the guest's.
    fn guest_pids(&self) -> Vec<i32> {
        let own = self
            .cgroups
            .iter()
            .find(|d| !d.starts_with("/sys/fs/cgroup/memory/"))
            .or(self.cgroups.first());
        own.map(|d| resources::cgroup_pids(d)).unwrap_or_default()
    }

    fn freeze(&self, state: &str) -> Result<(), VmError> {
        let dir = self.cgroup("freezer").ok_or_else(|| {
            VmError::Setup("pause: no cgroup v1 freezer controller on this host".into())
        })?;
        fs::write(dir.join("freezer.state"), state)
            .map_err(|e| setup_err(format_args!("writing {state} to {}", dir.display()), e))
    }

    fn read_oom(&self) -> bool {
        self.cgroup("memory")
            .and_then(|d| fs::read_to_string(d.join("memory.oom_control")).ok())
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .map(|n| n.trim().parse::<u64>().unwrap_or(0))
                })
            })
            .is_some_and(|n| n > 0)
    }

    /// The guest side address, for tests and logs.
    pub fn guest_ip(&self) -> Ipv4Addr {
        match self.upstream {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => unreachable!("guest addresses are IPv4"),
        }
    }
}

/// The hardware address of end `end` (1 host, 2 guest) of lease `index`'s veth: locally
/// administered, and the same on every start, so neither end ever has to ask for it.
fn mac(index: u32, end: u8) -> String {
    let [_, a, b, c] = index.to_be_bytes();
    format!("02:62:{a:02x}:{b:02x}:{c:02x}:{end:02x}")
}

/// The guest's permanent entry for the host's end.
fn guest_neighbour(index: u32) -> Result<(), VmError> {
    let host_ip = resources::Lease::addresses_of(index).0.to_string();
    ip(&[
        "-n",
        &netns_name(index),
        "neigh",
        "replace",
        &host_ip,
        "lladdr",
        &mac(index, 1),
        "dev",
        &format!("bo{index}g"),
        "nud",
        "permanent",
    ])
}

/// Which of a guest's cgroup dirs belongs to `controller`.
fn controller_dir<'a>(cgroups: &'a [PathBuf], controller: &str) -> Option<&'a PathBuf> {
    cgroups
        .iter()
        .find(|p| p.starts_with(format!("/sys/fs/cgroup/{controller}/")))
}

impl Machine for Namespace {
    fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    fn kill(&mut self) {
        self.oom |= self.read_oom();
        if self.pid > 0 {
            // SAFETY: the guest's own process group.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        }
        for dir in &self.cgroups {
            resources::kill_cgroup(dir);
        }
    }

    fn terminate(&mut self) {
        let _ = self.signal(libc::SIGTERM);
    }

    fn signal(&mut self, signal: i32) -> Result<(), VmError> {
        // The server, not unshare: unshare would die of it and take the server down
        // with SIGKILL. PID 1 of a namespace only gets signals it handles;
        // brownout-mcp-server handles SIGTERM.
        for pid in self.guest_pids() {
            if pid != self.pid {
                // SAFETY: a pid in the guest's own cgroup.
                unsafe { libc::kill(pid, signal) };
            }
        }
        Ok(())
    }

    fn pause(&mut self) -> Result<(), VmError> {
        self.freeze("FROZEN")
    }

    fn resume(&mut self) -> Result<(), VmError> {
        self.freeze("THAWED")
    }

    fn set_link(&mut self, up: bool) -> Result<(), VmError> {
        // The guest's end: the host keeps its route and sends into a dead link, so
        // connections see silence, as with a pulled cable, not an error.
        let guest_if = format!("bo{}g", self.index);
        let ns = netns_name(self.index);
        ip(&[
            "-n",
            &ns,
            "link",
            "set",
            &guest_if,
            if up { "up" } else { "down" },
        ])?;
        // Taking the link down flushed the guest's static entry for the host.
        if up {
            guest_neighbour(self.index)
        } else {
            Ok(())
        }
    }

    fn out_of_memory(&self) -> bool {
        self.oom || self.read_oom()
    }

    fn memory_cgroup(&self) -> Option<PathBuf> {
        self.cgroup("memory").cloned()
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }

    fn cleanup(&mut self) {
        self.oom |= self.read_oom();
        Partial {
            index: self.index,
            netns: true,
            cgroups: std::mem::take(&mut self.cgroups),
        }
        .remove();
    }

    fn pids(&self) -> Vec<i32> {
        vec![self.pid]
    }
}

/// What a start has made so far, removed if the start fails.
struct Partial {
    index: u32,
    netns: bool,
    cgroups: Vec<PathBuf>,
}

impl Partial {
    fn remove(&mut self) {
        for dir in self.cgroups.drain(..) {
            resources::kill_cgroup(&dir);
            let _ = resources::remove_cgroup(&dir);
        }
        if self.netns {
            resources::remove_netns(self.index);
            self.netns = false;
        }
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        self.remove();
    }
}
