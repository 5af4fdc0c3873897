//! The single owner of brownout's state.
//!
//! [`Control`] holds every proxy and its faults. Nothing else mutates them: the HTTP API,
//! the CLI (through the API), config files and embedding code all send typed [`Command`]s
//! through a [`ControlHandle`], and the owner applies them one at a time. Fault changes are
//! published to live connections through a `watch` channel per proxy.

pub mod api;

pub use guests::GuestAction;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::faults::{self, SpecError, ToxicInput, ToxicSpec};
use crate::proxy::events::EventSink;
use crate::proxy::{self, Protocol, ProxyContext, ProxyStats, RunningProxy};

/// Errors the control plane reports. The API turns each into a status code.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("proxy not found")]
    ProxyNotFound,
    #[error("proxy already exists")]
    ProxyExists,
    #[error("toxic not found")]
    ToxicNotFound,
    #[error("toxic already exists")]
    ToxicExists,
    #[error("{0}")]
    Invalid(#[from] SpecError),
    #[error("listen {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("brownout is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Guest(#[from] crate::vm::VmError),
}

/// A proxy as a client sent it: nothing checked yet.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProxyInput {
    pub name: Option<String>,
    /// `tcp` (the default) or `http` (MCP over Streamable HTTP).
    pub protocol: Option<String>,
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub enabled: Option<bool>,
}

/// A validated new proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct NewProxy {
    pub name: String,
    pub protocol: Protocol,
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
}

impl NewProxy {
    /// Validate, with Toxiproxy's defaults (enabled). `at` names the proxy's place in a list,
    /// for error messages about a `/populate` body.
    pub fn from_input(input: ProxyInput, at: Option<usize>) -> Result<NewProxy, SpecError> {
        let field = |f: &str| match at {
            Some(i) => format!("{f} at proxy {}", i + 1),
            None => f.to_owned(),
        };
        let missing = |f: &str| SpecError::field(field(f), "missing required field");
        let name = input
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("name"))?;
        faults::spec::check_name(&name).map_err(|e| SpecError::field(field("name"), e.message))?;
        let upstream = input
            .upstream
            .filter(|u| !u.is_empty())
            .ok_or_else(|| missing("upstream"))?;
        check_addr(&upstream).map_err(|m| SpecError::field(field("upstream"), m))?;
        // Toxiproxy would listen on every interface; loopback is the safer default.
        let listen = input
            .listen
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        check_addr(&listen).map_err(|m| SpecError::field(field("listen"), m))?;
        let protocol = match input.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(p) => Protocol::parse(p).ok_or_else(|| {
                SpecError::field(
                    field("protocol"),
                    format!("expected tcp or http, got {p:?}"),
                )
            })?,
        };
        Ok(NewProxy {
            name,
            protocol,
            listen,
            upstream,
            enabled: input.enabled.unwrap_or(true),
        })
    }
}

/// A change to an existing proxy; absent fields stay as they are.
#[derive(Clone, Debug, Default)]
pub struct ProxyPatch {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub enabled: Option<bool>,
}

impl ProxyPatch {
    pub fn from_input(input: ProxyInput) -> Result<ProxyPatch, SpecError> {
        for (f, v) in [("listen", &input.listen), ("upstream", &input.upstream)] {
            if let Some(v) = v {
                check_addr(v).map_err(|m| SpecError::field(f, m))?;
            }
        }
        Ok(ProxyPatch {
            listen: input.listen,
            upstream: input.upstream,
            enabled: input.enabled,
        })
    }
}

/// `host:port` with a numeric port; `:port` means every interface.
fn check_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{addr:?} has no valid port number"));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{addr:?} has an invalid host"));
    }
    Ok(())
}

/// A proxy as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProxyView {
    pub name: String,
    /// Shown only for proxies that are not plain TCP, so Toxiproxy's proxy object stays
    /// exactly as its clients expect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
    pub toxics: Vec<serde_json::Value>,
}

/// What the metrics endpoint reads.
pub struct ProxySnapshot {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    pub stats: Arc<ProxyStats>,
}

type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

/// Everything that can be asked of the control plane.
pub enum Command {
    List(Reply<Vec<ProxyView>>),
    Create(NewProxy, Reply<ProxyView>),
    Populate(Vec<NewProxy>, Reply<Vec<ProxyView>>),
    Get(String, Reply<ProxyView>),
    Update(String, ProxyPatch, Reply<ProxyView>),
    Delete(String, Reply<()>),
    GetToxic(String, String, Reply<ToxicSpec>),
    AddToxic(String, ToxicSpec, Reply<ToxicSpec>),
    /// Merge new attributes and toxicity into a toxic (proxy, toxic, patch). One command,
    /// so two patches at once each see the other's result and neither is lost.
    UpdateToxic(String, String, ToxicInput, Reply<ToxicSpec>),
    RemoveToxic(String, String, Reply<()>),
    Reset(Reply<()>),
    Snapshot(Reply<Vec<ProxySnapshot>>),
    /// Register a `brownout stdio` relay under `name`, running `command`, with `toxics`;
    /// the reply is the channel its faults arrive on, and its counters.
    Attach {
        name: String,
        command: String,
        toxics: Vec<ToxicSpec>,
        reply: Reply<Attached>,
    },
    /// Claim a guest name; the slot is filled once the guest has started.
    ReserveGuest(String, Reply<guests::Slot>),
    GetGuest(String, Reply<guests::Slot>),
    ListGuests(Reply<Vec<(String, guests::Slot)>>),
    /// Take a guest out of the registry (to delete it, or because its start failed).
    RemoveGuest(String, Reply<guests::Slot>),
    Shutdown(Reply<()>),
}

/// What an attached stdio relay gets from the control plane.
pub struct Attached {
    pub toxics: watch::Receiver<Arc<[ToxicSpec]>>,
    pub stats: Arc<ProxyStats>,
}

/// A cheap, cloneable way to talk to the control plane.
#[derive(Clone)]
pub struct ControlHandle {
    tx: mpsc::Sender<Command>,
    seed: u64,
    events: EventSink,
}

macro_rules! ask {
    ($self:ident, $variant:ident $(, $arg:expr)*) => {{
        let (tx, rx) = oneshot::channel();
        $self
            .tx
            .send(Command::$variant($($arg,)* tx))
            .await
            .map_err(|_| ControlError::ShuttingDown)?;
        rx.await.map_err(|_| ControlError::ShuttingDown)?
    }};
}

// After `ask!`, which it uses.
mod guests;

impl ControlHandle {
    /// The seed every random decision derives from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Where message-aware proxies (and attached relays) record what they see.
    pub fn event_sink(&self) -> EventSink {
        self.events.clone()
    }

    pub async fn attach(
        &self,
        name: &str,
        command: &str,
        toxics: Vec<ToxicSpec>,
    ) -> Result<Attached, ControlError> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Attach {
            name: name.to_owned(),
            command: command.to_owned(),
            toxics,
            reply: tx,
        };
        self.tx
            .send(cmd)
            .await
            .map_err(|_| ControlError::ShuttingDown)?;
        rx.await.map_err(|_| ControlError::ShuttingDown)?
    }

    /// Follow the messages message-aware proxies see, from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Arc<crate::proxy::events::Event>> {
        self.events.subscribe()
    }

    pub async fn list(&self) -> Result<Vec<ProxyView>, ControlError> {
        ask!(self, List)
    }
    pub async fn create(&self, p: NewProxy) -> Result<ProxyView, ControlError> {
        ask!(self, Create, p)
    }
    pub async fn populate(&self, p: Vec<NewProxy>) -> Result<Vec<ProxyView>, ControlError> {
        ask!(self, Populate, p)
    }
    pub async fn get(&self, name: &str) -> Result<ProxyView, ControlError> {
        ask!(self, Get, name.to_owned())
    }
    pub async fn update(&self, name: &str, patch: ProxyPatch) -> Result<ProxyView, ControlError> {
        ask!(self, Update, name.to_owned(), patch)
    }
    pub async fn delete(&self, name: &str) -> Result<(), ControlError> {
        ask!(self, Delete, name.to_owned())
    }
    pub async fn toxic(&self, proxy: &str, toxic: &str) -> Result<ToxicSpec, ControlError> {
        ask!(self, GetToxic, proxy.to_owned(), toxic.to_owned())
    }
    pub async fn add_toxic(&self, proxy: &str, t: ToxicSpec) -> Result<ToxicSpec, ControlError> {
        ask!(self, AddToxic, proxy.to_owned(), t)
    }
    /// Merge `patch` into toxic `toxic`: attributes it names replace the current ones, the
    /// rest are kept, as Toxiproxy's PATCH does.
    pub async fn update_toxic(
        &self,
        proxy: &str,
        toxic: &str,
        patch: ToxicInput,
    ) -> Result<ToxicSpec, ControlError> {
        ask!(self, UpdateToxic, proxy.to_owned(), toxic.to_owned(), patch)
    }
    pub async fn remove_toxic(&self, proxy: &str, toxic: &str) -> Result<(), ControlError> {
        ask!(self, RemoveToxic, proxy.to_owned(), toxic.to_owned())
    }
    pub async fn reset(&self) -> Result<(), ControlError> {
        ask!(self, Reset)
    }
    pub async fn snapshot(&self) -> Result<Vec<ProxySnapshot>, ControlError> {
        ask!(self, Snapshot)
    }
    /// Stop every proxy and close every connection. Later calls fail with `ShuttingDown`.
    pub async fn shutdown(&self) -> Result<(), ControlError> {
        ask!(self, Shutdown)
    }
}

struct Entry {
    name: String,
    protocol: Protocol,
    /// The address it listens on: the real port once it has listened.
    listen: String,
    upstream: String,
    enabled: bool,
    toxics: Vec<ToxicSpec>,
    publish: watch::Sender<Arc<[ToxicSpec]>>,
    stats: Arc<ProxyStats>,
    running: Option<RunningProxy>,
}

impl Entry {
    fn view(&self) -> ProxyView {
        ProxyView {
            name: self.name.clone(),
            protocol: (self.protocol != Protocol::Tcp).then(|| self.protocol.as_str().to_owned()),
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            enabled: self.enabled,
            toxics: self
                .toxics
                .iter()
                .map(|t| serde_json::to_value(t).expect("toxic serializes"))
                .collect(),
        }
    }

    fn publish(&self) {
        self.publish.send_replace(self.toxics.clone().into());
    }

    fn toxic_index(&self, name: &str) -> Result<usize, ControlError> {
        self.toxics
            .iter()
            .position(|t| t.name == name)
            .ok_or(ControlError::ToxicNotFound)
    }
}

/// How the owner runs its proxies.
#[derive(Clone)]
pub struct Options {
    /// Every random decision derives from it.
    pub seed: u64,
    /// Where messages of message-aware proxies are recorded (live readers can follow
    /// either way).
    pub events: Option<EventSink>,
    /// HTTP-mode proxies close a client that has not sent its headers within this.
    pub header_timeout: std::time::Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seed: 0,
            events: None,
            header_timeout: crate::proxy::HEADER_TIMEOUT,
        }
    }
}

/// The state owner. Run it with [`Control::spawn`].
pub struct Control {
    seed: u64,
    header_timeout: std::time::Duration,
    proxies: BTreeMap<String, Entry>,
    guests: BTreeMap<String, guests::Slot>,
    events: EventSink,
    /// Stopped proxies' connections, closing: waited for only at shutdown.
    closing: tokio_util::task::TaskTracker,
}

impl Control {
    /// Start the owner task and return a handle to it. Every random decision derives from
    /// `seed`.
    pub fn spawn(seed: u64) -> ControlHandle {
        Self::spawn_with_events(seed, None)
    }

    /// Like [`Control::spawn`], also recording the messages of message-aware proxies in
    /// `events` (which may write them to a file). Live readers can follow either way.
    pub fn spawn_with_events(seed: u64, events: Option<EventSink>) -> ControlHandle {
        Self::spawn_with(Options {
            seed,
            events,
            ..Options::default()
        })
    }

    /// Start the owner with every option.
    pub fn spawn_with(opts: Options) -> ControlHandle {
        let Options {
            seed,
            events,
            header_timeout,
        } = opts;
        let events = events.unwrap_or_default();
        let live = events.clone();
        let (tx, rx) = mpsc::channel(64);
        let control = Control {
            seed,
            header_timeout,
            proxies: BTreeMap::new(),
            guests: BTreeMap::new(),
            events,
            closing: tokio_util::task::TaskTracker::new(),
        };
        tokio::spawn(control.run(rx));
        ControlHandle {
            tx,
            seed,
            events: live,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            if let Command::Shutdown(reply) = cmd {
                self.stop_all().await;
                let _ = reply.send(Ok(()));
                return;
            }
            self.handle(cmd).await;
        }
        self.stop_all().await;
    }

    async fn stop_all(&mut self) {
        for (_, mut e) in std::mem::take(&mut self.proxies) {
            self.stop(&mut e).await;
        }
        self.closing.close();
        self.closing.wait().await;
        for (_, slot) in std::mem::take(&mut self.guests) {
            if let Some(guest) = slot.lock().await.take() {
                guest.delete().await;
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::List(r) => {
                let _ = r.send(Ok(self.proxies.values().map(Entry::view).collect()));
            }
            Command::Create(p, r) => {
                let _ = r.send(self.create(p).await);
            }
            Command::Populate(p, r) => {
                let _ = r.send(self.populate(p).await);
            }
            Command::Get(name, r) => {
                let _ = r.send(self.entry(&name).map(Entry::view));
            }
            Command::Update(name, patch, r) => {
                let _ = r.send(self.update(&name, patch).await);
            }
            Command::Delete(name, r) => {
                let _ = r.send(self.delete(&name).await);
            }
            Command::GetToxic(proxy, toxic, r) => {
                let res = self
                    .entry(&proxy)
                    .and_then(|e| Ok(e.toxics[e.toxic_index(&toxic)?].clone()));
                let _ = r.send(res);
            }
            Command::AddToxic(proxy, spec, r) => {
                let _ = r.send(self.add_toxic(&proxy, spec));
            }
            Command::UpdateToxic(proxy, toxic, patch, r) => {
                let _ = r.send(self.update_toxic(&proxy, &toxic, patch));
            }
            Command::RemoveToxic(proxy, toxic, r) => {
                let res = self.entry_mut(&proxy).and_then(|e| {
                    let i = e.toxic_index(&toxic)?;
                    e.toxics.remove(i);
                    e.publish();
                    Ok(())
                });
                let _ = r.send(res);
            }
            Command::Reset(r) => {
                let _ = r.send(self.reset().await);
            }
            Command::Snapshot(r) => {
                let snap = self
                    .proxies
                    .values()
                    .map(|e| ProxySnapshot {
                        name: e.name.clone(),
                        listen: e.listen.clone(),
                        upstream: e.upstream.clone(),
                        stats: e.stats.clone(),
                    })
                    .collect();
                let _ = r.send(Ok(snap));
            }
            Command::Attach {
                name,
                command,
                toxics,
                reply,
            } => {
                let _ = reply.send(self.attach(name, command, toxics));
            }
            Command::ReserveGuest(name, r) => {
                let reply = match self.guests.entry(name) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        Err(crate::vm::VmError::Exists.into())
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        Ok(v.insert(guests::Slot::default()).clone())
                    }
                };
                let _ = r.send(reply);
            }
            Command::GetGuest(name, r) => {
                let _ = r.send(
                    self.guests
                        .get(&name)
                        .cloned()
                        .ok_or(crate::vm::VmError::NotFound.into()),
                );
            }
            Command::ListGuests(r) => {
                let _ = r.send(Ok(self
                    .guests
                    .iter()
                    .map(|(n, s)| (n.clone(), s.clone()))
                    .collect()));
            }
            Command::RemoveGuest(name, r) => {
                let _ = r.send(
                    self.guests
                        .remove(&name)
                        .ok_or(crate::vm::VmError::NotFound.into()),
                );
            }
            Command::Shutdown(_) => unreachable!("handled by run"),
        }
    }

    fn entry(&self, name: &str) -> Result<&Entry, ControlError> {
        self.proxies.get(name).ok_or(ControlError::ProxyNotFound)
    }

    fn entry_mut(&mut self, name: &str) -> Result<&mut Entry, ControlError> {
        self.proxies
            .get_mut(name)
            .ok_or(ControlError::ProxyNotFound)
    }

    async fn create(&mut self, p: NewProxy) -> Result<ProxyView, ControlError> {
        if self.proxies.contains_key(&p.name) {
            return Err(ControlError::ProxyExists);
        }
        let (publish, _) = watch::channel(Arc::from(Vec::new()));
        let mut entry = Entry {
            name: p.name.clone(),
            protocol: p.protocol,
            listen: p.listen,
            upstream: p.upstream,
            enabled: false,
            toxics: Vec::new(),
            publish,
            stats: Arc::default(),
            running: None,
        };
        if p.enabled {
            self.start(&mut entry).await?;
        }
        let view = entry.view();
        info!(proxy = %entry.name, listen = %entry.listen, upstream = %entry.upstream, "created");
        self.proxies.insert(p.name, entry);
        Ok(view)
    }

    /// Listen and serve. On success the entry shows the real listen address.
    fn attach(
        &mut self,
        name: String,
        command: String,
        toxics: Vec<ToxicSpec>,
    ) -> Result<Attached, ControlError> {
        if self.proxies.contains_key(&name) {
            return Err(ControlError::ProxyExists);
        }
        let (publish, rx) = watch::channel(Arc::from(toxics.clone()));
        let stats: Arc<ProxyStats> = Arc::default();
        self.proxies.insert(
            name.clone(),
            Entry {
                name,
                protocol: Protocol::Stdio,
                listen: "stdio".into(),
                upstream: command,
                enabled: true,
                toxics,
                publish,
                stats: stats.clone(),
                running: None,
            },
        );
        Ok(Attached { toxics: rx, stats })
    }

    async fn start(&self, e: &mut Entry) -> Result<(), ControlError> {
        if e.protocol == Protocol::Stdio {
            // Nothing to listen on: the relay runs as long as `brownout stdio` does.
            e.enabled = true;
            return Ok(());
        }
        let listener = proxy::bind(&e.listen)
            .await
            .map_err(|source| ControlError::Listen {
                addr: e.listen.clone(),
                source,
            })?;
        let ctx = ProxyContext {
            name: e.name.as_str().into(),
            protocol: e.protocol,
            events: Some(self.events.clone()),
            upstream: e.upstream.clone(),
            seed: faults::derive_seed(self.seed, &e.name),
            toxics: e.publish.subscribe(),
            stats: e.stats.clone(),
            header_timeout: self.header_timeout,
        };
        let running =
            RunningProxy::start(listener, ctx).map_err(|source| ControlError::Listen {
                addr: e.listen.clone(),
                source,
            })?;
        e.listen = running.local_addr().to_string();
        e.running = Some(running);
        e.enabled = true;
        Ok(())
    }

    /// Stop listening at once; the connections close on a task of their own, so no other
    /// request waits on them.
    async fn stop(&self, e: &mut Entry) {
        if let Some(r) = e.running.take() {
            self.closing.spawn(r.close().await.wait());
        }
        e.enabled = false;
    }

    /// Replace proxies whose listen or upstream differ, keep those that match, create the
    /// rest. Either every proxy is in place afterwards or none of the new ones is.
    async fn populate(&mut self, list: Vec<NewProxy>) -> Result<Vec<ProxyView>, ControlError> {
        for (i, p) in list.iter().enumerate() {
            if list[..i].iter().any(|q| q.name == p.name) {
                return Err(SpecError::field(
                    format!("name at proxy {}", i + 1),
                    format!("duplicate proxy name {:?}", p.name),
                )
                .into());
            }
        }
        let mut created = Vec::new();
        let mut views = Vec::new();
        for p in list {
            if let Some(e) = self.proxies.get(&p.name) {
                if e.listen == p.listen && e.upstream == p.upstream && e.protocol == p.protocol {
                    views.push(e.view());
                    continue;
                }
                self.delete(&p.name).await?;
            }
            let name = p.name.clone();
            match self.create(p).await {
                Ok(v) => {
                    created.push(name);
                    views.push(v);
                }
                Err(err) => {
                    for name in created {
                        let _ = self.delete(&name).await;
                    }
                    return Err(err);
                }
            }
        }
        Ok(views)
    }

    async fn update(&mut self, name: &str, patch: ProxyPatch) -> Result<ProxyView, ControlError> {
        let mut e = self
            .proxies
            .remove(name)
            .ok_or(ControlError::ProxyNotFound)?;
        let result = self.apply_patch(&mut e, patch).await;
        let view = e.view();
        self.proxies.insert(name.to_owned(), e);
        result.map(|()| view)
    }

    async fn apply_patch(&self, e: &mut Entry, patch: ProxyPatch) -> Result<(), ControlError> {
        if e.protocol == Protocol::Stdio {
            let field = if patch.listen.is_some() {
                Some("listen")
            } else if patch.upstream.is_some() {
                Some("upstream")
            } else if patch.enabled == Some(false) {
                Some("enabled")
            } else {
                None
            };
            if let Some(field) = field {
                return Err(SpecError::field(
                    field,
                    "a stdio relay cannot be moved or disabled; change its toxics instead",
                )
                .into());
            }
            return Ok(());
        }
        let moved = patch.listen.as_ref().is_some_and(|l| *l != e.listen)
            || patch.upstream.as_ref().is_some_and(|u| *u != e.upstream);
        let enabled = patch.enabled.unwrap_or(e.enabled);
        if moved || !enabled {
            self.stop(e).await;
        }
        if let Some(l) = patch.listen {
            e.listen = l;
        }
        if let Some(u) = patch.upstream {
            e.upstream = u;
        }
        if enabled && e.running.is_none() {
            self.start(e).await?;
        }
        Ok(())
    }

    async fn delete(&mut self, name: &str) -> Result<(), ControlError> {
        if self
            .proxies
            .get(name)
            .is_some_and(|e| e.protocol == Protocol::Stdio)
        {
            return Err(SpecError::field(
                "name",
                format!("{name:?} is the stdio relay: it ends when brownout stdio does"),
            )
            .into());
        }
        let mut e = self
            .proxies
            .remove(name)
            .ok_or(ControlError::ProxyNotFound)?;
        self.stop(&mut e).await;
        info!(proxy = %name, "deleted");
        Ok(())
    }

    fn add_toxic(&mut self, proxy: &str, spec: ToxicSpec) -> Result<ToxicSpec, ControlError> {
        let e = self.entry_mut(proxy)?;
        if e.toxics.iter().any(|t| t.name == spec.name) {
            return Err(ControlError::ToxicExists);
        }
        spec.kind.check_transport(e.protocol.transport())?;
        e.toxics.push(spec.clone());
        e.publish();
        Ok(spec)
    }

    fn update_toxic(
        &mut self,
        proxy: &str,
        toxic: &str,
        patch: ToxicInput,
    ) -> Result<ToxicSpec, ControlError> {
        let e = self.entry_mut(proxy)?;
        let i = e.toxic_index(toxic)?;
        let spec = e.toxics[i].merged(patch)?;
        e.toxics[i] = spec.clone();
        e.publish();
        Ok(spec)
    }

    /// Enable every proxy and remove every toxic.
    async fn reset(&mut self) -> Result<(), ControlError> {
        let mut first_err = None;
        let names: Vec<String> = self.proxies.keys().cloned().collect();
        for name in names {
            let mut e = self.proxies.remove(&name).expect("listed");
            if !e.toxics.is_empty() {
                e.toxics.clear();
                e.publish();
            }
            if e.running.is_none()
                && let Err(err) = self.start(&mut e).await
            {
                warn!(proxy = %name, error = %err, "could not re-enable on reset");
                first_err.get_or_insert(err);
            }
            self.proxies.insert(name, e);
        }
        first_err.map_or(Ok(()), Err)
    }
}
