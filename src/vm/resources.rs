//! What guests hold on the host, counted and cleaned.
//!
//! Every guest takes a [`Lease`]: a small file under `/run/brownout/leases` (or the temp
//! dir) named by an index and holding the owner's pid. Everything a guest creates is named
//! from that index (`bo<index>h` veth, `brownout-<index>` netns, cgroup `brownout/bo<index>`,
//! temp dir `brownout-guest-<index>`), so a later brownout can find what a crashed one left
//! and remove it ([`sweep`]).

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// Subnet carved into one /30 per lease: host side .1, guest side .2.
const SUBNET: [u8; 2] = [10, 213];
const LEASES: u32 = 16_384;
/// cgroup v1 controllers a namespace guest may use.
pub const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One guest's claim on its names and addresses; released on drop.
#[derive(Debug)]
pub struct Lease {
    pub index: u32,
    path: PathBuf,
}

impl Lease {
    /// The lowest free index. Free means no lease file, or one whose owner is gone (its
    /// leftovers are swept first).
    pub fn take() -> io::Result<Lease> {
        let dir = lease_dir();
        fs::create_dir_all(&dir)?;
        for index in 0..LEASES {
            let path = dir.join(index.to_string());
            if claim(&path)? {
                return Ok(Lease { index, path });
            }
            if owner_alive(&path) {
                continue;
            }
            remove_leftovers(index);
            let _ = fs::remove_file(&path);
            // Another brownout may take it between our removal and retry: fine, the next
            // index is as good.
            if claim(&path).unwrap_or(false) {
                return Ok(Lease { index, path });
            }
        }
        Err(io::Error::other(format!(
            "all {LEASES} guest leases are taken"
        )))
    }

    /// The prefix of every name this guest uses on the host.
    pub fn tag(&self) -> String {
        tag(self.index)
    }

    /// (host side, guest side) of this lease's /30.
    pub fn addresses(&self) -> (Ipv4Addr, Ipv4Addr) {
        Self::addresses_of(self.index)
    }

    /// The host's and the guest's end of lease `index`'s /30.
    pub fn addresses_of(index: u32) -> (Ipv4Addr, Ipv4Addr) {
        let base = index * 4;
        let a = |n: u32| Ipv4Addr::new(SUBNET[0], SUBNET[1], (n >> 8) as u8, (n & 0xff) as u8);
        (a(base + 1), a(base + 2))
    }

    pub fn run_dir(&self) -> PathBuf {
        run_dir(self.index)
    }
}

/// Create the lease file at `path` with our pid, unless it exists: whether we got it.
fn claim(path: &Path) -> io::Result<bool> {
    // The lease appears with its owner's PID already in it (a hard link to a file written
    // first), so a guest starting beside this one never reads an empty lease, takes it for
    // a dead brownout's and sweeps it away.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let written = path.with_file_name(format!(".claim-{}-{n}", std::process::id()));
    fs::write(&written, format!("{}\n", std::process::id()))?;
    let linked = fs::hard_link(&written, path);
    let _ = fs::remove_file(&written);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        drop_subnet_route_if_unused();
    }
}

/// The whole guest subnet as unreachable on the host, beneath each live guest's /30: a
/// connection to a guest that is gone fails at once (EHOSTUNREACH) instead of being routed
/// off the machine.
pub fn ensure_subnet_route() -> Result<(), String> {
    let subnet = format!("{}.{}.0.0/16", SUBNET[0], SUBNET[1]);
    ip(&["route", "replace", "unreachable", &subnet])
}

/// Run `ip` (iproute2) with `args`; the error names the command and what it printed.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Remove that route once no brownout holds a guest lease.
fn drop_subnet_route_if_unused() {
    let in_use = fs::read_dir(lease_dir()).is_ok_and(|mut d| d.next().is_some());
    let subnet = format!("{}.{}.0.0/16", SUBNET[0], SUBNET[1]);
    if !in_use
        && Command::new("ip")
            .args(["route", "show", "type", "unreachable", &subnet])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    {
        let _ = ip(&["route", "del", "unreachable", &subnet]);
    }
}

fn tag(index: u32) -> String {
    format!("bo{index}")
}

pub fn netns_name(index: u32) -> String {
    format!("brownout-{index}")
}

fn run_dir(index: u32) -> PathBuf {
    std::env::temp_dir().join(format!("brownout-guest-{index}"))
}

pub fn cgroup_dir(controller: &str, tag: &str) -> PathBuf {
    Path::new(CGROUP_ROOT)
        .join(controller)
        .join("brownout")
        .join(tag)
}

fn lease_dir() -> PathBuf {
    let run = Path::new("/run/brownout/leases");
    if fs::create_dir_all(run).is_ok() {
        return run.to_owned();
    }
    std::env::temp_dir().join("brownout-leases")
}

fn owner_alive(lease: &Path) -> bool {
    let Some(pid) = fs::read_to_string(lease)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Remove what guests of dead brownouts left behind; say what was removed.
pub fn sweep() -> Vec<String> {
    let dir = lease_dir();
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let Some(index) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if owner_alive(&entry.path()) {
            continue;
        }
        let owner = fs::read_to_string(entry.path()).unwrap_or_default();
        let found = remove_leftovers(index);
        let _ = fs::remove_file(entry.path());
        drop_subnet_route_if_unused();
        if !found.is_empty() {
            removed.push(format!(
                "guest {} of brownout pid {}: {}",
                tag(index),
                owner.trim(),
                found.join(", ")
            ));
        }
    }
    removed
}

/// Remove everything named after `index`; returns what existed.
pub fn remove_leftovers(index: u32) -> Vec<String> {
    let mut found = Vec::new();
    // Processes outside any cgroup of ours (a QEMU) die with brownout (parent-death
    // signal); ones that still hold the run dir are killed here.
    let run = run_dir(index);
    for pid in processes_using(&run) {
        // SAFETY: plain kill of a pid found holding our run dir.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        found.push(format!("process {pid}"));
    }
    let disk = run.join("data");
    if unmount(&disk) {
        found.push(format!("mount {}", disk.display()));
    }
    for object in named(index) {
        object.remove(index);
        found.push(object.to_string());
    }
    if run.exists() {
        let _ = fs::remove_dir_all(&run);
        found.push(format!("dir {}", run.display()));
    }
    found
}

/// A tmpfs of `mib` MiB on `dir`: a disk of the guest's own, which filling cannot fill
/// the host's. Needs root.
pub fn mount_disk(dir: &Path, mib: u64) -> Result<(), String> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} has a NUL in it", dir.display()))?;
    let options = std::ffi::CString::new(format!("size={}m,mode=0755", mib)).expect("no NUL");
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"brownout-disk".as_ptr(),
            path.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "mounting a {mib} MiB tmpfs on {}: {}",
            dir.display(),
            io::Error::last_os_error()
        ))
    }
}

/// Unmount what is mounted on `dir`, if anything: whether something was.
pub fn unmount(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) == 0 }
}

/// A host object named after a lease.
enum Named {
    Cgroup(PathBuf),
    Netns(String),
    Veth(String),
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Named::Cgroup(dir) => write!(f, "cgroup {}", dir.display()),
            Named::Netns(ns) => write!(f, "netns {ns}"),
            Named::Veth(veth) => write!(f, "veth {veth}"),
        }
    }
}

impl Named {
    fn remove(&self, index: u32) {
        match self {
            Named::Cgroup(dir) => {
                kill_cgroup(dir);
                let _ = remove_cgroup(dir);
            }
            Named::Netns(_) => remove_netns(index),
            Named::Veth(veth) => {
                if Path::new("/sys/class/net").join(veth).exists() {
                    let _ = ip(&["link", "delete", veth]);
                }
            }
        }
    }
}

/// The cgroups, netns and host veth named after lease `index` that exist now.
fn named(index: u32) -> Vec<Named> {
    let tag = tag(index);
    let mut found: Vec<Named> = CONTROLLERS
        .iter()
        .map(|c| cgroup_dir(c, &tag))
        .filter(|d| d.exists())
        .map(Named::Cgroup)
        .collect();
    let ns = netns_name(index);
    if Path::new("/run/netns").join(&ns).exists() {
        found.push(Named::Netns(ns));
    }
    let veth = format!("{tag}h");
    if Path::new("/sys/class/net").join(&veth).exists() {
        found.push(Named::Veth(veth));
    }
    found
}

/// Delete lease `index`'s netns. That destroys the guest end of the veth, and with it the
/// pair; the kernel takes the host end down a few ms later, so wait for it (bounded).
pub fn remove_netns(index: u32) {
    let _ = ip(&["netns", "delete", &netns_name(index)]);
    let host_if = Path::new("/sys/class/net").join(format!("{}h", tag(index)));
    for _ in 0..200 {
        if !host_if.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = ip(&["link", "delete", &format!("{}h", tag(index))]);
}

/// Pids whose command line mentions `dir` (a QEMU started for that guest).
fn processes_using(dir: &Path) -> Vec<i32> {
    // "brownout-guest-1/" must not match "brownout-guest-12/".
    let needle = format!("{}/", dir.to_string_lossy());
    let mut pids = Vec::new();
    for Proc { pid, .. } in processes() {
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// One line of the process table.
struct Proc {
    pid: i32,
    ppid: i32,
    /// Its state letter: `Z` for a zombie.
    state: char,
    pgrp: i32,
}

/// Every process.
fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let pgrp = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push(Proc {
            pid,
            ppid,
            state,
            pgrp,
        });
    }
    out
}

/// The live processes (zombies aside) of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    if pgid <= 0 {
        return Vec::new();
    }
    processes()
        .into_iter()
        .filter(|p| p.pgrp == pgid && p.state != 'Z')
        .map(|p| p.pid)
        .collect()
}

/// Pids in a cgroup (v1 `cgroup.procs`).
pub fn cgroup_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILL everything in a cgroup, thawing it first if it is frozen (frozen tasks do not
/// die until thawed).
pub fn kill_cgroup(dir: &Path) {
    for pid in cgroup_pids(dir) {
        // SAFETY: plain kill of a pid in our own cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let state = dir.join("freezer.state");
    if state.exists() {
        let _ = fs::write(state, "THAWED");
    }
}

/// rmdir a cgroup once its processes are gone (bounded wait: they are already killed).
pub fn remove_cgroup(dir: &Path) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => {
                kill_cgroup(dir);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// What brownout and its guests hold on the host at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// brownout's descendants (guest processes, QEMUs), zombies included.
    pub processes: usize,
    pub zombies: usize,
    /// brownout's own open file descriptors, and how many of them are sockets.
    pub fds: usize,
    pub sockets: usize,
    /// Host network devices of brownout's guests (veth `bo*`).
    pub net_devices: usize,
    /// Network namespaces of brownout's guests.
    pub namespaces: usize,
    /// Mounts in brownout's mount namespace.
    pub mounts: usize,
    /// cgroups of brownout's guests.
    pub cgroups: usize,
    /// Guest run dirs in the temp dir.
    pub temp_dirs: usize,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let me = std::process::id() as i32;
        let all = processes();
        let mut family = vec![me];
        let (mut processes, mut zombies) = (0, 0);
        // Descendants, breadth first; bounded by the process count.
        let mut i = 0;
        while i < family.len() && i <= all.len() {
            let parent = family[i];
            for p in &all {
                if p.ppid == parent {
                    family.push(p.pid);
                    processes += 1;
                    zombies += usize::from(p.state == 'Z');
                }
            }
            i += 1;
        }
        let (mut fds, mut sockets) = (0, 0);
        if let Ok(entries) = fs::read_dir("/proc/self/fd") {
            for e in entries.flatten() {
                fds += 1;
                if fs::read_link(e.path())
                    .map(|t| t.to_string_lossy().starts_with("socket:"))
                    .unwrap_or(false)
                {
                    sockets += 1;
                }
            }
        }
        let count = |dir: &Path, prefix: &str| {
            fs::read_dir(dir)
                .map(|es| {
                    es.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                        .count()
                })
                .unwrap_or(0)
        };
        Snapshot {
            processes,
            zombies,
            fds,
            sockets,
            net_devices: count(Path::new("/sys/class/net"), "bo"),
            namespaces: count(Path::new("/run/netns"), "brownout-"),
            mounts: fs::read_to_string("/proc/self/mountinfo")
                .map(|s| s.lines().count())
                .unwrap_or(0),
            cgroups: CONTROLLERS
                .iter()
                .map(|c| count(&Path::new(CGROUP_ROOT).join(c).join("brownout"), "bo"))
                .sum(),
            temp_dirs: count(&std::env::temp_dir(), "brownout-guest-"),
        }
    }
}

/// A guest's resources before it started and after it was cleaned up.
#[derive(Debug, Clone, Serialize)]
pub struct LeakReport {
    pub before: Snapshot,
    pub after: Snapshot,
    /// This guest's own resources that still exist (processes, devices, cgroups, dirs).
    pub leftovers: Vec<String>,
    /// No leftovers.
    pub clean: bool,
}

impl LeakReport {
    pub fn new(before: Snapshot, leftovers: Vec<String>) -> LeakReport {
        LeakReport {
            before,
            after: Snapshot::take(),
            clean: leftovers.is_empty(),
            leftovers,
        }
    }
}

/// This guest's resources that exist now, by the names its lease gives them.
pub fn leftovers(index: u32, pids: &[i32]) -> Vec<String> {
    pids.iter()
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .map(|pid| format!("process {pid}"))
        .chain(named(index).iter().map(Named::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lease_has_its_own_slash_30() {
        let at = |index| Lease {
            index,
            path: PathBuf::new(),
        };
        let (a, b) = (at(0), at(64));
        assert_eq!(
            a.addresses(),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        assert_eq!(
            b.addresses(),
            (Ipv4Addr::new(10, 213, 1, 1), Ipv4Addr::new(10, 213, 1, 2))
        );
        let last = at(LEASES - 1);
        assert_eq!(last.addresses().1, Ipv4Addr::new(10, 213, 255, 254));
        // Names stay within the kernel's 15 characters for interfaces.
        assert!(format!("{}h", last.tag()).len() <= 15);
        std::mem::forget((a, b, last)); // not real leases: no file to remove
    }
}
