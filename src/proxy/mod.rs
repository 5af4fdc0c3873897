//! Listeners, upstream dialing and links.
//!
//! A [`RunningProxy`] owns one listening socket and every connection accepted on it. Each
//! connection is one task: it dials the upstream (never holding up the accept loop), then
//! runs a [`link`] whose two directions apply the fault chain the control plane publishes
//! through a `watch` channel, so changes reach live connections at once.

pub(crate) mod conversation;
mod endpoint;
pub mod events;
pub(crate) mod http;
pub mod lines;
pub mod link;
pub mod sse;
mod stats;
pub mod stdio;
pub(crate) mod timer;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

pub use endpoint::Endpoint;
pub use stats::{DirectionStats, ProxyStats};

use crate::faults::ToxicSpec;

/// What a proxy speaks, and so what its faults can see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// Raw TCP: byte faults only.
    #[default]
    Tcp,
    /// MCP over Streamable HTTP (and the older HTTP+SSE): byte faults do not apply; message
    /// faults see every JSON-RPC message in request bodies, JSON responses and SSE events.
    Http,
    /// A `brownout stdio` relay registered with its own control plane (`--api`): it has no
    /// listener and lives as long as the relay.
    Stdio,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "tcp" => Some(Protocol::Tcp),
            "http" => Some(Protocol::Http),
            _ => None,
        }
    }

    /// What its faults run on.
    pub fn transport(self) -> crate::faults::Transport {
        use crate::faults::Transport;
        match self {
            Protocol::Tcp => Transport::Tcp,
            Protocol::Http => Transport::Http,
            Protocol::Stdio => Transport::Stdio,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Stdio => "stdio",
        }
    }
}

/// What every connection of a proxy shares.
pub struct ProxyContext {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub upstream: String,
    /// This proxy's seed; each connection derives its own from it and its index.
    pub seed: u64,
    pub toxics: watch::Receiver<Arc<[ToxicSpec]>>,
    pub stats: Arc<ProxyStats>,
    /// Where framed messages are recorded, if anywhere.
    pub events: Option<events::EventSink>,
    /// HTTP mode: how long a client may take to send a request's headers before its
    /// connection is closed.
    pub header_timeout: Duration,
}

/// [`ProxyContext::header_timeout`] unless told otherwise: a client that has not sent its
/// headers within this is closed, so a crowd of half-sent requests costs nothing for long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The most an HTTP-mode proxy buffers of one request's head (request line and headers)
/// while it is incomplete; a larger one is answered 431. The bound is checked between
/// reads, so a head that arrives whole in one read may pass somewhat over it. What a
/// connection waiting on its headers can cost.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// A proxy that is listening. Dropping it stops the listener and every connection.
pub struct RunningProxy {
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// The accept loop, which owns the listening socket.
    accepting: tokio::task::JoinHandle<()>,
}

/// A stopped proxy's connections, closing; the address it listened on, for the log.
pub struct Closing(TaskTracker, SocketAddr);

impl Closing {
    /// Wait until every connection is gone. Connection tasks end at their next poll once
    /// cancelled; the bound only guards against a task stuck outside brownout's code.
    pub async fn wait(self) {
        if tokio::time::timeout(Duration::from_secs(5), self.0.wait())
            .await
            .is_err()
        {
            warn!(listen = %self.1, open = self.0.len(), "connections still closing after 5 s");
        }
    }
}

/// The listen backlog asked for. The kernel caps it at `net.core.somaxconn`, so this is as
/// deep as the system allows: agents that fan out open connections in bursts, and a connect
/// that finds the queue full loses its SYN, which the client retries only after a second.
const BACKLOG: u32 = 65_535;

/// Bind a listen address the way Toxiproxy accepts it: `host:port`, or `:port` for every
/// interface; port 0 picks a free port.
pub async fn bind(listen: &str) -> io::Result<TcpListener> {
    let addr = if listen.starts_with(':') {
        format!("0.0.0.0{listen}")
    } else {
        listen.to_owned()
    };
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

impl RunningProxy {
    pub fn start(listener: TcpListener, ctx: ProxyContext) -> io::Result<RunningProxy> {
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let span = info_span!("proxy", name = %ctx.name, listen = %addr);
        let accepting = tracker.spawn(
            accept_loop(listener, Arc::new(ctx), cancel.clone(), tracker.clone()).instrument(span),
        );
        Ok(RunningProxy {
            addr,
            cancel,
            tracker,
            accepting,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening and close every connection, and wait until all are gone.
    pub async fn stop(self) {
        self.close().await.wait().await;
    }

    /// Stop listening (the address is free when this returns) and close every
    /// connection; what is returned waits for them to be gone.
    pub async fn close(mut self) -> Closing {
        self.cancel.cancel();
        self.tracker.close();
        let _ = (&mut self.accepting).await;
        Closing(self.tracker.clone(), self.addr)
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let http_faults = (ctx.protocol == Protocol::Http).then(|| http::Faults::new(&ctx));
    // HTTP mode keeps held messages proxy-wide: when the toxics change, what a removed hold
    // kept is sent on at once, not with the next message.
    let mut changes = http_faults.as_ref().map(|_| ctx.toxics.clone());
    loop {
        let changed = async {
            match changes.as_mut() {
                Some(c) => c.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            live = changed => {
                match (&http_faults, live) {
                    (Some(faults), true) => faults.let_go(),
                    _ => changes = None,
                }
                continue;
            }
            r = listener.accept() => r,
        };
        match accepted {
            Ok((client, peer)) => {
                let ctx = ctx.clone();
                let http_faults = http_faults.clone();
                let cancel = cancel.child_token();
                let guard = ctx.stats.open_connection();
                let index = ctx.stats.connections() - 1;
                let span = info_span!("conn", index, %peer);
                // Two spawns, not one over a match: a task is as large as its future, and
                // an HTTP connection's need not carry room for a TCP link's.
                match http_faults {
                    None => tracker.spawn(
                        async move {
                            let _guard = guard;
                            connection(client, ctx, index, cancel).await;
                        }
                        .instrument(span),
                    ),
                    Some(faults) => tracker.spawn(
                        async move {
                            let _guard = guard;
                            let _ = client.set_nodelay(true);
                            http::serve(client, ctx, faults, index, cancel).await;
                        }
                        .instrument(span),
                    ),
                };
            }
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn connection(
    client: TcpStream,
    ctx: Arc<ProxyContext>,
    index: u64,
    cancel: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    // slow_open: the dial waits. Its toxicity rolls come from an RNG of their own, so they
    // do not shift the link's decisions.
    let specs = ctx.toxics.borrow().clone();
    let seed = crate::faults::derive_seed(ctx.seed, "slow_open");
    let mut rng = crate::faults::link_rng(seed, index, crate::faults::Direction::Upstream);
    let wait = crate::faults::open_delay(&specs, &mut rng);
    if !wait.is_zero() {
        debug!(?wait, "slow_open: dialling later");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let server = tokio::select! {
        _ = cancel.cancelled() => return,
        r = TcpStream::connect(ctx.upstream.as_str()) => r,
    };
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            // As Toxiproxy does: the client sees its connection closed.
            warn!(upstream = %ctx.upstream, error = %e, "upstream dial failed");
            return;
        }
    };
    let _ = server.set_nodelay(true);
    debug!("connected upstream");
    let link = link::LinkContext {
        seed: ctx.seed,
        index,
        toxics: ctx.toxics.clone(),
        stats: ctx.stats.clone(),
        framing: link::Framing::Bytes,
        name: ctx.name.clone(),
        events: None,
    };
    link::run(&client, &server, link, cancel).await;
    debug!("closed");
}
