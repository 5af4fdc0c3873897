//! Guests in the control plane. The owner keeps the registry (names to slots); a guest's
//! own operations (boot, kill, restart) take seconds and do blocking I/O, so they run on
//! a thread of their own with the guest's slot locked, not on the owner's loop or the
//! runtime's worker threads.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};

use super::{Command, ControlError, ControlHandle, ProxyPatch};
use crate::proxy::events::Event;
use crate::vm::{Guest, GuestSpec, GuestView, LeakReport, Signal, State, VmError};

/// One guest's place in the registry: empty while it starts.
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Guest>>>);

impl Deref for Slot {
    type Target = Mutex<Option<Guest>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// How long a server may take to end after a signal before it is killed.
pub const SIGNAL_GRACE: Duration = Duration::from_secs(5);

/// Each signal's action names, in [`Signal`]'s order: alone, and during shutdown.
const SIGNAL_NAMES: [(&str, &str); 7] = [
    ("sigterm", "term-then-sigterm"),
    ("sigkill", "term-then-sigkill"),
    ("sigint", "term-then-sigint"),
    ("sighup", "term-then-sighup"),
    ("sigquit", "term-then-sigquit"),
    ("sigusr1", "term-then-sigusr1"),
    ("sigusr2", "term-then-sigusr2"),
];

/// What can be done to a running guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestAction {
    /// SIGKILL the machine (a crash).
    Kill,
    /// Ask it to shut down; SIGKILL after 10 s.
    Stop,
    Pause,
    Resume,
    /// Kill if running, boot again with the same spec and data.
    Restart,
    /// Kill if running, boot again, and return at once, while its server starts.
    Start,
    /// Send a signal to the server; SIGKILL if it has not ended 5 s later.
    Signal(Signal),
    /// SIGTERM, then this signal a millisecond later, while the server shuts down.
    SignalInShutdown(Signal),
    /// Fill the guest's own disk (`disk_mib`): the server's writes fail for want of space.
    FillDisk,
    /// Give back what filling took.
    FreeDisk,
    /// Take this many MiB of the guest's memory limit and hold them (a namespace guest
    /// with `memory_mib`): its server has that much less.
    PressMemory(u64),
    /// Give back what pressing took.
    ReleaseMemory,
    /// Pull the guest's network cable.
    Unplug,
    /// Plug it back in.
    Plug,
}

impl GuestAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestAction::Kill => "kill",
            GuestAction::Stop => "stop",
            GuestAction::Pause => "pause",
            GuestAction::Resume => "resume",
            GuestAction::Restart => "restart",
            GuestAction::Start => "start",
            GuestAction::Unplug => "unplug",
            GuestAction::Plug => "plug",
            GuestAction::FillDisk => "fill-disk",
            GuestAction::FreeDisk => "free-disk",
            GuestAction::PressMemory(_) => "press-memory",
            GuestAction::ReleaseMemory => "release-memory",
            GuestAction::Signal(s) => SIGNAL_NAMES[s as usize].0,
            GuestAction::SignalInShutdown(s) => SIGNAL_NAMES[s as usize].1,
        }
    }
}

impl std::str::FromStr for GuestAction {
    type Err = VmError;
    fn from_str(s: &str) -> Result<GuestAction, VmError> {
        Ok(match s {
            "kill" => GuestAction::Kill,
            "stop" => GuestAction::Stop,
            "pause" => GuestAction::Pause,
            "resume" => GuestAction::Resume,
            "restart" => GuestAction::Restart,
            "start" => GuestAction::Start,
            "unplug" => GuestAction::Unplug,
            "plug" => GuestAction::Plug,
            "fill-disk" => GuestAction::FillDisk,
            "free-disk" => GuestAction::FreeDisk,
            "release-memory" => GuestAction::ReleaseMemory,
            "press-memory" => {
                return Err(VmError::Invalid(
                    "action: press-memory needs how many MiB to take: press-memory?mib=N".into(),
                ));
            }
            other if other.starts_with("sig") => GuestAction::Signal(other.parse()?),
            other if other.starts_with("term-then-sig") => {
                GuestAction::SignalInShutdown(other["term-then-".len()..].parse()?)
            }
            other => {
                return Err(VmError::Invalid(format!(
                    "action: unknown guest action {other:?}: expected kill, stop, pause, \
                     resume, restart, start, unplug, plug, fill-disk, free-disk, \
                     press-memory?mib=N, release-memory, a signal (sigterm, sigint, \
                     sighup, ...) or one during shutdown (term-then-sigint, ...)"
                )));
            }
        })
    }
}

/// Run a guest operation on a thread of its own: guests do blocking I/O (`ip`, cgroup
/// files, QMP, waits for processes to go) that must not hold up the runtime's worker
/// threads, and with them every other request.
async fn off_runtime<T: Send + 'static>(
    op: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let runtime = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || runtime.block_on(op)).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl ControlHandle {
    /// Start a guest; with `wait`, return once its server answers. With a `proxy` in the
    /// spec, that proxy's upstream becomes the guest's server. Nothing is left behind on
    /// failure.
    pub async fn spawn_guest(
        &self,
        spec: GuestSpec,
        wait: bool,
    ) -> Result<GuestView, ControlError> {
        let this = self.clone();
        off_runtime(async move { this.spawn_guest_here(spec, wait).await }).await
    }

    async fn spawn_guest_here(
        &self,
        spec: GuestSpec,
        wait: bool,
    ) -> Result<GuestView, ControlError> {
        spec.check()?;
        if let Some(proxy) = &spec.proxy {
            self.get(proxy).await?;
        }
        let name = spec.name.clone();
        let spec_proxy = spec.proxy.clone();
        let slot: Slot = ask!(self, ReserveGuest, name.clone())?;
        let mut held = slot.lock().await;
        let started = async {
            let mut guest = Guest::start(spec)?;
            if wait {
                guest.wait_ready().await?;
            }
            Ok::<Guest, VmError>(guest)
        }
        .await;
        let mut guest = match started {
            Ok(g) => g,
            Err(e) => {
                self.guest_event(
                    &name,
                    spec_proxy.as_deref(),
                    "spawn",
                    Some(json!({"error": e.to_string()})),
                );
                drop(held);
                let _: Result<Slot, ControlError> = ask!(self, RemoveGuest, name);
                return Err(e.into());
            }
        };
        if let Err(e) = self.point_proxy(&guest).await {
            // The proxy went away (or cannot take the guest) while the guest started: the
            // guest is not kept, and its name is free again.
            self.guest_event(
                &name,
                spec_proxy.as_deref(),
                "spawn",
                Some(json!({"error": format!("pointing proxy at the guest: {e}")})),
            );
            guest.delete().await;
            drop(held);
            let _: Result<Slot, ControlError> = ask!(self, RemoveGuest, name);
            return Err(e);
        }
        let view = guest.view();
        self.guest_event(
            &name,
            spec_proxy.as_deref(),
            "spawn",
            Some(json!({
                "upstream": view.upstream, "timings": view.timings,
            })),
        );
        *held = Some(guest);
        drop(held);
        self.watch(name, spec_proxy, &slot);
        Ok(view)
    }

    /// Put a guest's own exit (a crash, an out-of-memory kill) in the history when it is
    /// noticed, within about 200 ms. Ends when the guest is deleted.
    fn watch(&self, name: String, proxy: Option<String>, slot: &Slot) {
        let events = self.events.clone();
        let slot = Arc::downgrade(&slot.0);
        tokio::spawn(async move {
            let mut exited = false;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(slot) = slot.upgrade() else { return };
                // Busy: an action is running, and records itself.
                let Ok(mut held) = slot.try_lock() else {
                    continue;
                };
                let Some(guest) = held.as_mut() else { return };
                let now = guest.state() == State::Exited;
                if now
                    && !exited
                    && let Some(exit) = guest.exit().filter(|e| !e.by_brownout)
                {
                    let detail = Some(json!({ "exit": exit }));
                    events.emit(Event::guest(proxy.as_deref(), &name, "exit", detail));
                }
                exited = now;
            }
        });
    }

    /// Record a guest step in the event history, beside the messages it affected.
    fn guest_event(
        &self,
        name: &str,
        proxy: Option<&str>,
        action: &'static str,
        detail: Option<Value>,
    ) {
        self.events.emit(Event::guest(proxy, name, action, detail));
    }

    async fn point_proxy(&self, guest: &Guest) -> Result<(), ControlError> {
        if let (Some(proxy), Some(addr)) = (&guest.spec().proxy, guest.upstream()) {
            let patch = ProxyPatch {
                listen: None,
                upstream: Some(addr.to_string()),
                enabled: None,
            };
            self.update(proxy, patch).await?;
        }
        Ok(())
    }

    pub async fn guest(&self, name: &str) -> Result<GuestView, ControlError> {
        let slot: Slot = ask!(self, GetGuest, name.to_owned())?;
        let mut held = slot.lock().await;
        Ok(held.as_mut().ok_or(VmError::NotFound)?.view())
    }

    /// Every guest; one busy starting or restarting shows as `{"name", "state": "busy"}`.
    pub async fn guests(&self) -> Result<Vec<Value>, ControlError> {
        let slots: Vec<(String, Slot)> = ask!(self, ListGuests)?;
        let mut out = Vec::new();
        for (name, slot) in slots {
            match slot.try_lock() {
                Ok(mut held) => {
                    if let Some(g) = held.as_mut() {
                        out.push(serde_json::to_value(g.view()).expect("views serialize"));
                    }
                }
                Err(_) => out.push(json!({ "name": name, "state": "busy" })),
            }
        }
        Ok(out)
    }

    pub async fn guest_action(
        &self,
        name: &str,
        action: GuestAction,
    ) -> Result<GuestView, ControlError> {
        let (this, name) = (self.clone(), name.to_owned());
        off_runtime(async move { this.guest_action_here(&name, action).await }).await
    }

    async fn guest_action_here(
        &self,
        name: &str,
        action: GuestAction,
    ) -> Result<GuestView, ControlError> {
        let slot: Slot = ask!(self, GetGuest, name.to_owned())?;
        let mut held = slot.lock().await;
        let guest = held.as_mut().ok_or(VmError::NotFound)?;
        let proxy = guest.spec().proxy.clone();
        let result = Self::act(self, guest, name, action).await;
        let detail = match &result {
            Ok(()) => Some(json!({"exit": guest.exit(), "timings": guest.timings()})),
            Err(e) => Some(json!({"error": e.to_string()})),
        };
        self.guest_event(name, proxy.as_deref(), action.as_str(), detail);
        result?;
        Ok(guest.view())
    }

    async fn act(
        &self,
        guest: &mut Guest,
        name: &str,
        action: GuestAction,
    ) -> Result<(), ControlError> {
        match action {
            GuestAction::Kill => {
                guest
                    .kill()
                    .await
                    .ok_or_else(|| VmError::NotRunning(name.into()))?;
            }
            GuestAction::Stop => {
                guest
                    .stop(Duration::from_secs(10))
                    .await
                    .ok_or_else(|| VmError::NotRunning(name.into()))?;
            }
            GuestAction::Pause => guest.pause()?,
            GuestAction::Resume => guest.resume()?,
            GuestAction::Unplug => guest.set_link(false)?,
            GuestAction::Plug => guest.set_link(true)?,
            GuestAction::Restart => {
                guest.restart().await?;
                self.point_proxy(guest).await?;
            }
            GuestAction::Start => {
                guest.start_again().await?;
                self.point_proxy(guest).await?;
            }
            GuestAction::FillDisk => {
                guest.fill_disk()?;
            }
            GuestAction::FreeDisk => guest.free_disk()?,
            GuestAction::PressMemory(mib) => guest.press_memory(mib).await?,
            GuestAction::ReleaseMemory => guest.release_memory().await,
            GuestAction::Signal(s) => guest.signal(&[s], SIGNAL_GRACE).await?,
            GuestAction::SignalInShutdown(s) => {
                guest.signal(&[Signal::Term, s], SIGNAL_GRACE).await?
            }
        }
        Ok(())
    }

    /// Kill the guest, remove everything it holds, and report what is left (nothing).
    pub async fn delete_guest(&self, name: &str) -> Result<LeakReport, ControlError> {
        let (this, name) = (self.clone(), name.to_owned());
        off_runtime(async move { this.delete_guest_here(&name).await }).await
    }

    async fn delete_guest_here(&self, name: &str) -> Result<LeakReport, ControlError> {
        let slot: Slot = ask!(self, GetGuest, name.to_owned())?;
        let guest = slot.lock().await.take().ok_or(VmError::NotFound)?;
        let _: Slot = ask!(self, RemoveGuest, name.to_owned())?;
        let proxy = guest.spec().proxy.clone();
        let report = guest.delete().await;
        self.guest_event(
            name,
            proxy.as_deref(),
            "delete",
            Some(json!({"report": report})),
        );
        Ok(report)
    }
}
