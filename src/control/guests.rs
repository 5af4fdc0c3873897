//! Guests in the control plane. The owner keeps the registry (names to slots); a guest's
//! own operations (boot, kill, restart) take seconds, so they run on the caller's task
//! with the guest's slot locked, not on the owner's loop.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};

use super::{Command, ControlError, ControlHandle, ProxyPatch};
use crate::vm::{Guest, GuestSpec, GuestView, LeakReport, VmError};

/// One guest's place in the registry: empty while it starts.
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Guest>>>);

impl Deref for Slot {
    type Target = Mutex<Option<Guest>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

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
            other => {
                return Err(VmError::Invalid(format!(
                    "action: unknown guest action {other:?}: expected kill, stop, pause, resume or restart"
                )));
            }
        })
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
        spec.check()?;
        if let Some(proxy) = &spec.proxy {
            self.get(proxy).await?;
        }
        let name = spec.name.clone();
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
                drop(held);
                let _: Result<Slot, ControlError> = ask!(self, RemoveGuest, name);
                return Err(e.into());
            }
        };
        self.point_proxy(&guest).await?;
        let view = guest.view();
        *held = Some(guest);
        Ok(view)
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
        let slot: Slot = ask!(self, GetGuest, name.to_owned())?;
        let mut held = slot.lock().await;
        let guest = held.as_mut().ok_or(VmError::NotFound)?;
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
            GuestAction::Restart => {
                guest.restart().await?;
                self.point_proxy(guest).await?;
            }
        }
        Ok(guest.view())
    }

    /// Kill the guest, remove everything it holds, and report what is left (nothing).
    pub async fn delete_guest(&self, name: &str) -> Result<LeakReport, ControlError> {
        let slot: Slot = ask!(self, GetGuest, name.to_owned())?;
        let guest = slot.lock().await.take().ok_or(VmError::NotFound)?;
        let _: Slot = ask!(self, RemoveGuest, name.to_owned())?;
        Ok(guest.delete().await)
    }
}
