//! The QEMU backend: the server in a microVM booted from brownout's guest image.
//!
//! `-M microvm` with virtio-mmio devices: network through user-mode networking with the
//! server's port forwarded to a loopback port (the proxy's upstream), the data dir as a 9p
//! share, a virtio RNG (so the server's first random numbers do not wait for entropy), the
//! console in `console.log`, and QMP on a unix socket for pause, resume and quit. KVM when
//! the CPU really has it (vmx/svm and kvm_intel/kvm_amd loaded), TCG otherwise. QEMU is
//! started directly (no shell in between), in its own process group, with a parent-death
//! signal, so it cannot outlive brownout.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Child;

use super::{Machine, Setup, VmError, setup_err, tail};

/// Guest RAM unless the spec says: the smallest that boots the image with room for the
/// server.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// What a boot that failed for reasons of the host's load, not the guest's, leaves in the
/// console; such a boot is tried again. Under TCG on a busy host the Debian kernel
/// sometimes dies in `start_kernel` (a divide error in early timer setup), or fails to
/// enable ACPI and so finds no virtio devices (the image's /init then powers off).
pub const TRANSIENT_BOOT_FAILURES: [&str; 2] =
    ["divide error", "brownout-guest: no network device"];

pub struct Qemu {
    child: Child,
    pid: i32,
    upstream: SocketAddr,
    qmp: PathBuf,
    log: PathBuf,
}

/// The image to boot: the spec's, `BROWNOUT_GUEST_IMAGE`, or `guest/` in the target dir
/// the running executable was built in (where `scripts/guest-image.sh` puts it).
pub fn image_dir(spec: Option<&Path>) -> Result<PathBuf, VmError> {
    let has_image = |d: &Path| d.join("vmlinux").is_file() && d.join("initramfs.cpio").is_file();
    let candidates: Vec<PathBuf> = match spec {
        Some(d) => vec![d.to_owned()],
        None => {
            let mut c = Vec::new();
            if let Some(d) = std::env::var_os("BROWNOUT_GUEST_IMAGE") {
                c.push(PathBuf::from(d));
            } else if let Ok(exe) = std::env::current_exe() {
                // target/<profile>/brownout and target/<profile>/deps/<test>.
                c.extend(exe.ancestors().skip(2).take(2).map(|d| d.join("guest")));
            }
            c
        }
    };
    candidates
        .iter()
        .find(|d| has_image(d))
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
            VmError::Invalid(format!(
                "image: no guest image (vmlinux and initramfs.cpio) in {}; build one with \
             scripts/guest-image.sh",
                if looked.is_empty() {
                    "any known place".into()
                } else {
                    looked.join(" or ")
                }
            ))
        })
}

/// KVM only where it can run a stock kernel: the CPU shows vmx or svm and the host's KVM
/// module for it is loaded. `BROWNOUT_ACCEL=tcg|kvm` overrides.
pub fn accelerator() -> &'static str {
    match std::env::var("BROWNOUT_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if Path::new("/dev/kvm").exists()
        && ((has("vmx") && module("kvm_intel")) || (has("svm") && module("kvm_amd")))
    {
        "kvm"
    } else {
        "tcg"
    }
}

/// The host TSC rate in kHz, for `tsc_early_khz`: without it a TCG guest calibrates
/// against a busy host and can hang.
fn tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

fn free_port(keep: Option<u16>) -> Result<u16, VmError> {
    if let Some(p) = keep
        && TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
    {
        return Ok(p);
    }
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| setup_err("finding a free loopback port", e))?;
    Ok(l.local_addr()
        .map_err(|e| setup_err("finding a free loopback port", e))?
        .port())
}

impl Qemu {
    pub fn start(setup: &Setup) -> Result<Qemu, VmError> {
        let spec = setup.spec;
        let image = image_dir(spec.image.as_deref())?;
        let qemu = std::env::var("BROWNOUT_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
        let port = free_port(setup.host_port)?;
        let memory = spec.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        let cpus = spec.cpus.map_or(1, |c| c.ceil() as u64).max(1);
        let accel = accelerator();
        let qmp = setup.run_dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp);
        let log = setup.run_dir.join("console.log");
        // earlyprintk: a fault before the console starts still reaches the log.
        let mut append =
            String::from("console=ttyS0 earlyprintk=ttyS0 panic=1 quiet brownout.data=9p");
        if accel == "tcg" {
            if let Some(khz) = tsc_khz() {
                append.push_str(&format!(" tsc_early_khz={khz}"));
            }
            append.push_str(" tsc=reliable");
        }
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut cmd = tokio::process::Command::new(&qemu);
        cmd.args(["-M", "microvm,pit=on,acpi=on", "-accel", accel])
            .args(["-m", &memory.to_string(), "-smp", &cpus.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-kernel", &path(&image.join("vmlinux"))])
            .args(["-initrd", &path(&image.join("initramfs.cpio"))])
            .args(["-append", &append])
            .args([
                "-chardev",
                &format!("file,id=con,path={},append=on", path(&log)),
            ])
            .args(["-serial", "chardev:con"])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", path(&qmp))])
            .args([
                "-netdev",
                &format!(
                    "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:{}",
                    spec.port()
                ),
            ])
            .args(["-device", "virtio-net-device,netdev=net0"])
            .args(["-device", "virtio-rng-device"])
            .args([
                "-fsdev",
                &format!(
                    "local,id=data,path={},security_model=none",
                    path(setup.data_dir)
                ),
            ])
            .args(["-device", "virtio-9p-device,fsdev=data,mount_tag=data"]);
        if accel == "kvm" {
            cmd.args(["-cpu", "host"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .map_err(|e| setup_err(format_args!("opening {}", log.display()), e))?,
            )
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                VmError::Invalid(format!(
                    "backend: {qemu} not found; install Debian's qemu-system-x86"
                ))
            } else {
                setup_err(format_args!("starting {qemu}"), e)
            }
        })?;
        let pid = child.id().map_or(0, |p| p as i32);
        Ok(Qemu {
            child,
            pid,
            upstream: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            qmp,
            log,
        })
    }

    /// One QMP command; the error says what QEMU answered.
    fn qmp(&self, command: &str) -> Result<(), VmError> {
        self.qmp_with(command, None)
    }

    fn qmp_with(&self, command: &str, arguments: Option<serde_json::Value>) -> Result<(), VmError> {
        let fail = |e: &dyn std::fmt::Display| setup_err(format_args!("QMP {command}"), e);
        let stream = UnixStream::connect(&self.qmp).map_err(|e| fail(&e))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| fail(&e))?;
        let mut writer = stream.try_clone().map_err(|e| fail(&e))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let mut answer = |reader: &mut BufReader<UnixStream>| -> Result<(), VmError> {
            // Skip the greeting and events; bounded by the read timeout and a line count.
            for _ in 0..64 {
                line.clear();
                if reader.read_line(&mut line).map_err(|e| fail(&e))? == 0 {
                    return Err(fail(&"QEMU closed the socket"));
                }
                if line.contains("\"return\"") {
                    return Ok(());
                }
                if line.contains("\"error\"") {
                    return Err(fail(&line.trim()));
                }
            }
            Err(fail(&"no answer"))
        };
        writer
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .map_err(|e| fail(&e))?;
        answer(&mut reader)?;
        let mut request = serde_json::json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(|e| fail(&e))?;
        answer(&mut reader)
    }
}

impl Machine for Qemu {
    fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    fn kill(&mut self) {
        if self.pid > 0 {
            // SAFETY: QEMU's own process group.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        }
    }

    fn terminate(&mut self) {
        if self.qmp("quit").is_err() && self.pid > 0 {
            // SAFETY: QEMU's own pid; it exits cleanly on SIGTERM.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
    }

    fn pause(&mut self) -> Result<(), VmError> {
        self.qmp("stop")
    }

    fn resume(&mut self) -> Result<(), VmError> {
        self.qmp("cont")
    }

    fn set_link(&mut self, up: bool) -> Result<(), VmError> {
        self.qmp_with(
            "set_link",
            Some(serde_json::json!({"name": "net0", "up": up})),
        )
    }

    fn out_of_memory(&self) -> bool {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.contains("Out of memory") || log.contains("invoked oom-killer")
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }

    fn boot_failed_transiently(&self) -> bool {
        let last = tail(&self.log);
        TRANSIENT_BOOT_FAILURES.iter().any(|m| last.contains(m))
    }

    fn cleanup(&mut self) {
        let _ = std::fs::remove_file(&self.qmp);
    }

    fn pids(&self) -> Vec<i32> {
        vec![self.pid]
    }
}
