//! MCP over Streamable HTTP: a reverse proxy that sees every JSON-RPC message.
//!
//! Each accepted connection is served as HTTP/1.1 and forwarded over a connection of its
//! own to the upstream. A POST body is one message from the client; a JSON response body is
//! one message from the server; an SSE response is a stream of events, each carrying one
//! message in its `data` (its `id`, `event` and `retry` fields are kept, so resumption still
//! works). Every message runs through its direction's fault chain, as a line does on stdio,
//! and the verdict is carried out in HTTP terms: a dropped request is never answered, an
//! error reply becomes the HTTP response, a delayed message waits (order is kept), a
//! duplicated request is sent again and a duplicated event repeated, and an end (close,
//! reset, kill) closes the client's connection or cuts the event stream.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::ProxyContext;
use super::conversation::Conversation;
use super::events::{Event, EventSink, Place};
use super::sse::{Scan, SseEvent};
use super::stats::ProxyStats;
use super::timer;
use crate::faults::{self, Chain, Chunk, Direction, End, Kind, Message, Reply, ToxicSpec};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// The largest message body brownout reads whole (requests and JSON responses).
const MAX_BODY: usize = 16 << 20;
/// How long a lost message (a dropped request or response, a duplicate's answer) is waited
/// for before its connection is closed.
const LOST: std::time::Duration = std::time::Duration::from_secs(600);

/// The fault state of one HTTP-mode proxy. An MCP client spreads one conversation over
/// several HTTP connections, so counts (`nth`, `after`), toxicity rolls, the request ids
/// that responses are matched to and what a `hold` keeps belong to the proxy, not to a
/// connection.
pub(crate) struct Faults {
    state: Mutex<State>,
    /// Legacy HTTP+SSE sessions (the 2024-11-05 transport): answers to a POST go on the
    /// session's event stream, so an answer a fault makes up goes there too.
    legacy: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
    stats: Arc<ProxyStats>,
    events: Option<EventSink>,
    name: Arc<str>,
}

struct State {
    conv: Conversation,
    /// Messages a `hold` keeps, by ticket: where each goes when it is let go.
    waiting: HashMap<u64, Held>,
}

/// A message a `hold` keeps: where it goes, and where it came from (for its event).
#[derive(Clone)]
struct Held {
    waiter: Waiter,
    connection: u64,
    dir: Direction,
}

/// Where a message a `hold` kept goes when it is let go: each message belongs to an HTTP
/// exchange or an event stream of its own, which may not be the one that set it free.
#[derive(Clone)]
enum Waiter {
    /// A request or a JSON response, whose exchange waits for it.
    Exchange(mpsc::UnboundedSender<Chunk>),
    /// An SSE event: back onto its stream, with its other fields.
    Event(mpsc::Sender<Bytes>, Arc<SseEvent>),
}

/// What the caller of [`HttpLink::apply`] would wait on, should its message be held.
enum Origin<'a> {
    Exchange,
    Event(&'a mpsc::Sender<Bytes>, &'a Arc<SseEvent>),
}

/// What becomes of a request brownout read whole: it goes upstream (with duplicates to send
/// after it), or a fault answers it instead.
enum Read {
    /// The body in its slices (one, unless a fault slices it), and copies to send after it.
    Forward {
        body: Vec<Chunk>,
        duplicates: Vec<Vec<Chunk>>,
    },
    Answer(Response<Body>),
}

impl Read {
    fn forward(body: Bytes) -> Read {
        Read::Forward {
            body: vec![Chunk::bytes(body, Instant::now())],
            duplicates: Vec::new(),
        }
    }
}

/// The bodies in `chunks`, in order: a chunk and the slices that go on with it are one.
fn bodies(chunks: Vec<Chunk>) -> Vec<Vec<Chunk>> {
    let mut out: Vec<Vec<Chunk>> = Vec::new();
    let mut open = false;
    for c in chunks {
        let more = c.more;
        match out.last_mut() {
            Some(body) if open => body.push(c),
            _ => out.push(vec![c]),
        }
        open = more;
    }
    out
}

/// How many bytes a body's slices hold.
fn body_len(slices: &[Chunk]) -> usize {
    slices.iter().map(|c| c.data.len()).sum()
}

/// All the bytes of a body's slices.
fn joined(slices: &[Chunk]) -> Bytes {
    match slices {
        [one] => one.data.clone(),
        _ => {
            let mut all = BytesMut::with_capacity(body_len(slices));
            for c in slices {
                all.extend_from_slice(&c.data);
            }
            all.freeze()
        }
    }
}

/// A body of slices, each written when its time comes, with its whole length declared: the
/// same bytes as one body (one request, one response), only slower.
fn sliced(slices: Vec<Chunk>) -> Body {
    if let [one] = &slices[..] {
        return full(one.data.clone());
    }
    let left = body_len(&slices) as u64;
    Sliced {
        slices: slices.into(),
        wait: None,
        left,
        cut: None,
    }
    .boxed()
}

/// The first slices of a body that declares `whole` bytes, then, at `at`, an error, on
/// which the connection is closed: a body cut short, as `limit_data` cuts a stream.
fn cut_short(slices: Vec<Chunk>, whole: usize, at: Instant) -> Body {
    Sliced {
        slices: slices.into(),
        wait: None,
        left: whole as u64,
        cut: Some(at),
    }
    .boxed()
}

struct Sliced {
    slices: std::collections::VecDeque<Chunk>,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    /// What the body still declares to come.
    left: u64,
    /// When the body is cut short, after its slices.
    cut: Option<Instant>,
}

impl hyper::body::Body for Sliced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(due) = this.slices.front().map(|c| c.at).or(this.cut) else {
                return Poll::Ready(None);
            };
            match this.wait.as_mut() {
                Some(wait) => {
                    std::task::ready!(wait.as_mut().poll(cx));
                    this.wait = None;
                }
                None if due > Instant::now() => {
                    this.wait = Some(Box::pin(timer::sleep_until(due)));
                    continue;
                }
                None => {}
            }
            let Some(c) = this.slices.pop_front() else {
                this.cut = None;
                return Poll::Ready(Some(Err("a fault cut the body short".into())));
            };
            this.left -= c.data.len() as u64;
            if this.slices.is_empty()
                && let Some(cut) = &mut this.cut
            {
                // hyper writes out what it holds only once the body has nothing for now:
                // the cut waits a moment, so the bytes before it go first.
                *cut = (*cut).max(Instant::now() + std::time::Duration::from_millis(1));
            }
            return Poll::Ready(Some(Ok(Frame::data(c.data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.slices.is_empty() && self.cut.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A message that goes on: the caller's own, or one a hold let go of, to where it waits.
enum Delivery {
    Own(Chunk),
    Other(Held, Chunk),
}

fn ticket(c: &Chunk) -> u64 {
    c.msg.as_ref().map_or(0, |m| m.ticket)
}

impl State {
    fn refresh(&mut self, stats: &ProxyStats, now: Instant) {
        self.conv
            .refresh(now, &mut |s, d| stats.toxic_counter(&s.name, d));
    }

    /// `chunks` as deliveries: those of message `own` to the caller, the others to whoever
    /// waits for them (nobody, if their client went away: they are lost).
    fn route(&mut self, chunks: Vec<Chunk>, own: u64) -> Vec<Delivery> {
        let out: Vec<Delivery> = chunks
            .into_iter()
            .filter_map(|c| match ticket(&c) {
                t if t == own => Some(Delivery::Own(c)),
                t => Some(Delivery::Other(self.waiting.get(&t)?.clone(), c)),
            })
            .collect();
        for d in &out {
            if let Delivery::Other(_, c) = d {
                self.waiting.remove(&ticket(c));
            }
        }
        out
    }

    /// What removed or changed holds let go of, in both directions.
    fn released(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        for dir in [Direction::Upstream, Direction::Downstream] {
            let chunks = self.conv.take_released(dir);
            if !chunks.is_empty() {
                // Tickets start at 1: 0 is nobody's own.
                out.extend(self.route(chunks, 0));
            }
        }
        out
    }
}

impl Faults {
    pub(crate) fn new(ctx: &ProxyContext) -> Arc<Faults> {
        Arc::new(Faults {
            state: Mutex::new(State {
                conv: Conversation::proxy_wide(ctx.toxics.clone(), ctx.seed),
                waiting: HashMap::new(),
            }),
            legacy: Mutex::new(HashMap::new()),
            stats: ctx.stats.clone(),
            events: ctx.events.clone(),
            name: ctx.name.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take new specs, and send on what a removed or changed `hold` let go of (the proxy
    /// calls this when its toxics change: held messages wait for no other message).
    pub(crate) fn let_go(&self) {
        let released = {
            let mut state = self.lock();
            state.refresh(&self.stats, Instant::now());
            state.released()
        };
        self.record_released(&released);
        self.deliver(released);
    }

    /// Record the messages a removed or changed hold let go of.
    fn record_released(&self, released: &[Delivery]) {
        let Some(sink) = &self.events else { return };
        for d in released {
            if let Delivery::Other(held, chunk) = d {
                let place = Place {
                    proxy: &self.name,
                    connection: held.connection,
                    direction: held.dir,
                };
                sink.emit(Event::released(place, chunk));
            }
        }
    }

    /// Messages a hold let go of, each to where it waits, in order. No caller waits on
    /// another client: events go onto their streams from a task of their own, so a stream
    /// whose reader has stalled holds up nothing but itself.
    fn hand_over(&self, items: Vec<(Waiter, Chunk)>) {
        let mut events = Vec::new();
        for (waiter, chunk) in items {
            match waiter {
                Waiter::Exchange(tx) => {
                    let _ = tx.send(chunk);
                }
                Waiter::Event(tx, event) => events.push((tx, event, chunk)),
            }
        }
        if events.is_empty() {
            return;
        }
        let stats = self.stats.clone();
        tokio::spawn(async move {
            for (tx, event, chunk) in events {
                let data = event.with_data(&chunk.data);
                let sent = async {
                    timer::sleep_until(chunk.at).await;
                    stats.direction(Direction::Downstream).add_sent(data.len());
                    tx.send(data).await
                };
                // A stream that ends meanwhile takes nothing more.
                tokio::select! {
                    _ = sent => {}
                    () = tx.closed() => {}
                }
            }
        });
    }

    /// Hand over the others' messages in `out`, in order; the caller's own, in order.
    fn deliver(&self, out: Vec<Delivery>) -> Vec<Chunk> {
        let mut own = Vec::new();
        let mut others = Vec::new();
        for d in out {
            match d {
                Delivery::Own(c) => own.push(c),
                Delivery::Other(held, c) => others.push((held.waiter, c)),
            }
        }
        self.hand_over(others);
        own
    }

    fn legacy_stream(&self, session: &str) -> Option<mpsc::Sender<Bytes>> {
        self.legacy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(session)
            .cloned()
    }
}

/// Serve one client connection until it closes or `cancel` fires.
pub(crate) async fn serve(
    client: TcpStream,
    ctx: Arc<ProxyContext>,
    faults: Arc<Faults>,
    index: u64,
    cancel: CancellationToken,
) {
    let (drive, mut upstreams) = mpsc::unbounded_channel();
    let (ends, mut end) = mpsc::unbounded_channel();
    let time_up = limit_time(ctx.clone(), index);
    let link = Arc::new(HttpLink {
        ctx,
        faults,
        index,
        cancel: cancel.clone(),
        upstream: Mutex::new(None),
        drive,
        ends,
    });
    let socket = client.as_raw_fd();
    let header_timeout = link.ctx.header_timeout;
    let service = hyper::service::service_fn(move |req| {
        let link = link.clone();
        async move { link.handle(req).await.map_err(Ended) }
    });
    // The upstream's own Date header passes on; brownout adds none (nor reads the clock).
    let conn = hyper::server::conn::http1::Builder::new()
        .auto_date_header(false)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(super::MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(client), service);
    // The upstream connection runs on this task, not one of its own, so that a call wakes
    // one task instead of two (about a tenth less CPU per call). A connection replaced while
    // it is still winding down finishes on a task of its own.
    let upstream = async {
        let mut current: Option<Box<Upstream>> = None;
        loop {
            let next = match current.as_mut() {
                None => upstreams.recv().await,
                Some(running) => tokio::select! {
                    r = running => {
                        ended(r);
                        current = None;
                        continue;
                    }
                    next = upstreams.recv() => next,
                },
            };
            let Some(next) = next else { return };
            if let Some(old) = current.replace(next) {
                tokio::spawn(async move { ended(old.await) });
            }
        }
    };
    // Pinned here, so the socket stays open until this function returns.
    let conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn => if let Err(e) = r { debug!(error = %e, "client connection ended") },
        () = upstream => {}
        () = cancel.cancelled() => {}
        // Dropping the connection closes the socket.
        () = time_up => {}
        Some(end) = end.recv() => {
            if matches!(end, End::Reset(_) | End::Kill(..)) {
                // SAFETY: `conn` owns the socket and is alive until this function returns.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket) };
                let _ = socket2::SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
            }
            // Dropping the connection closes the socket: with a reset, if set.
        }
    }
}

/// `limit_time` on an HTTP-mode proxy: returns when the client connection's time is up,
/// `time` after the toxic took effect on it (when it opened, or when the toxic came while it
/// was open), with toxicity rolled once per connection as on a TCP link. Never returns
/// while no such toxic applies.
async fn limit_time(ctx: Arc<ProxyContext>, index: u64) {
    let mut toxics = ctx.toxics.clone();
    let dirs = [Direction::Upstream, Direction::Downstream];
    let mut chains = dirs.map(Chain::new);
    let mut rngs = dirs.map(|d| faults::link_rng(ctx.seed, index, d));
    loop {
        let specs: Vec<ToxicSpec> = (toxics.borrow_and_update().iter())
            .filter(|s| s.kind.per_connection())
            .cloned()
            .collect();
        let now = Instant::now();
        for ((chain, rng), d) in chains.iter_mut().zip(&mut rngs).zip(dirs) {
            chain.update(&specs, now, rng, &mut |s| {
                ctx.stats.toxic_counter(&s.name, d)
            });
        }
        let due = (0..2)
            .filter_map(|i| Some((chains[i].deadline()?, i)))
            .min_by_key(|(end, _)| end.at());
        let expired = async {
            match due {
                Some((end, _)) => timer::sleep_until(end.at()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expired => {
                if let Some((end, i)) = due {
                    chains[i].note_deadline(end);
                }
                return;
            }
            changed = toxics.changed() => {
                if changed.is_err() {
                    // The proxy is going: its connections end with it, not here.
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Why brownout closed a client connection instead of answering (a fault ended it, or the
/// proxy stopped). A concrete type: hyper wants one for its service errors.
#[derive(Debug)]
struct Ended(BoxError);

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Ended {}

struct HttpLink {
    ctx: Arc<ProxyContext>,
    faults: Arc<Faults>,
    index: u64,
    cancel: CancellationToken,
    /// The upstream connection, made on the first request and remade if it closes.
    upstream: Mutex<Option<SendRequest<Body>>>,
    /// Hands a new upstream connection to the client connection's task to be driven.
    /// Boxed: a channel allocates room for 32 of what it carries up front, and a whole
    /// connection state in each slot would cost every client connection about 21 KiB.
    drive: mpsc::UnboundedSender<Box<Upstream>>,
    /// Tells the client connection's task to end the connection now, as a fault decided.
    ends: mpsc::UnboundedSender<End>,
}

/// What the faults made of one message, in HTTP terms.
struct Applied {
    kind: Kind,
    out: Vec<Delivery>,
    answers: Vec<Reply>,
    end: Option<End>,
    /// The message is held: it comes here when let go.
    held: Option<mpsc::UnboundedReceiver<Chunk>>,
    /// A `timeout` toxic swallowed it: the exchange hangs, then its connection closes.
    timed_out: Option<TimedOut>,
}

/// A message a `timeout` toxic swallowed, as Toxiproxy's timeout does with data: nothing
/// more passes on its connection, which closes `after` the message came (with no time,
/// when the toxic is removed).
struct TimedOut {
    toxic: Arc<str>,
    dir: Direction,
    after: Option<std::time::Duration>,
    arrived: Instant,
}

impl HttpLink {
    /// Run one message through its direction's chain, and record what became of it.
    /// What removed holds let go of comes first in `out`.
    fn apply(
        &self,
        dir: Direction,
        data: Bytes,
        session: Option<&str>,
        resumed: bool,
        origin: Origin<'_>,
        arrived: Instant,
    ) -> Applied {
        let now = Instant::now();
        let mut state = self.faults.lock();
        state.refresh(&self.ctx.stats, now);
        let mut out = state.released();
        self.faults.record_released(&out);
        let recording = self.ctx.events.as_ref().is_some_and(|e| e.is_recording());
        if !recording && state.conv.is_idle() {
            // Nothing to decide and nothing to record: pass it on unread. (Requests seen now
            // are not remembered, so if a fault arrives before their responses, it cannot
            // match those responses by method or tool.)
            out.push(Delivery::Own(Chunk::bytes(data, arrived)));
            return Applied {
                kind: Kind::Other,
                out,
                answers: Vec::new(),
                end: None,
                held: None,
                timed_out: None,
            };
        }
        // Read outside the lock: a long body parses without holding up other connections.
        drop(state);
        let msg = Message::parse(&data);
        let mut state = self.faults.lock();
        let state = &mut *state;
        let conv = &mut state.conv;
        let applied = conv.apply_parsed(dir, data, msg, session, resumed, arrived);
        if let Some(sink) = &self.ctx.events {
            applied.record(sink, &self.ctx.name, self.index, dir, conv.hits(dir));
        }
        let own = ticket(&applied.arrived);
        let mut held = None;
        if !applied.out.iter().any(|c| ticket(c) == own) && conv.holds(dir, own) {
            let waiter = match origin {
                Origin::Exchange => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    held = Some(rx);
                    Waiter::Exchange(tx)
                }
                Origin::Event(tx, event) => Waiter::Event(tx.clone(), event.clone()),
            };
            let held = Held {
                waiter,
                connection: self.index,
                dir,
            };
            state.waiting.insert(own, held);
        }
        let swallowed = held.is_none() && applied.out.is_empty() && applied.answers.is_empty();
        let timed_out = swallowed
            .then(|| conv.timed_out(dir))
            .flatten()
            .map(|(toxic, ms)| TimedOut {
                toxic,
                dir,
                after: (ms > 0).then(|| std::time::Duration::from_millis(ms)),
                arrived,
            });
        out.extend(state.route(applied.out, own));
        Applied {
            kind: applied.arrived.msg.as_ref().map_or(Kind::Other, |m| m.kind),
            out,
            answers: applied.answers,
            end: applied.end,
            held,
            timed_out,
        }
    }

    /// Have the connection's task end this client connection when `end` is due (a reset
    /// or kill resets it). The exchange waits for that: it never answers.
    async fn end_exchange(&self, end: End) -> BoxError {
        self.end_connection(end).await;
        std::future::pending::<()>().await;
        unreachable!("the connection's task drops the exchange")
    }

    async fn end_connection(&self, end: End) {
        tokio::select! {
            () = timer::sleep_until(end.at()) => {}
            () = self.cancel.cancelled() => return,
        }
        let _ = self.ends.send(end);
    }

    /// Wait until the `timeout` that swallowed a message has run out from its arrival,
    /// or is removed (Toxiproxy's cleanup closes what it holds): then the connection closes.
    async fn timed_out(&self, t: &TimedOut) -> End {
        let mut toxics = self.ctx.toxics.clone();
        let present = |toxics: &watch::Receiver<Arc<[ToxicSpec]>>| {
            toxics
                .borrow()
                .iter()
                .any(|s| *s.name == *t.toxic && s.stream.applies_to(t.dir))
        };
        let run_out = async {
            match t.after {
                Some(after) => timer::sleep_until(t.arrived + after).await,
                None => std::future::pending().await,
            }
        };
        let removed = async {
            while present(&toxics) {
                if toxics.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = run_out => {}
            () = removed => {}
            () = self.cancel.cancelled() => {}
        }
        End::Close(Instant::now())
    }

    /// Wait for a held message to be let go: its chunks (several if duplicated).
    async fn wait_held(
        &self,
        mut held: mpsc::UnboundedReceiver<Chunk>,
    ) -> Result<Vec<Chunk>, BoxError> {
        let first = tokio::select! {
            c = held.recv() => c,
            () = self.never_answer() => None,
        };
        let mut chunks = vec![first.ok_or("a held message was never let go")?];
        while let Ok(c) = held.try_recv() {
            chunks.push(c);
        }
        Ok(chunks)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
        let (parts, body) = req.into_parts();
        let mut copies = Vec::new();
        // What goes upstream read whole, counted once sent (a streamed body counts itself).
        let mut sent = 0;
        let body = if declared_len(&parts.headers).is_some_and(|n| n > MAX_BODY as u64) {
            // Too long to read as one message: passed on as it comes, unread and unfaulted.
            streamed(body, self.ctx.stats.clone(), Direction::Upstream)
        } else {
            match self.read_request(&parts, body).await? {
                Read::Answer(answer) => return Ok(answer),
                Read::Forward { body, duplicates } => {
                    sent = body_len(&body);
                    copies = duplicates;
                    sliced(body)
                }
            }
        };
        let resp = match self.forward(&parts, body).await {
            Ok(r) => r,
            Err(e) => return Ok(self.bad_gateway(e)),
        };
        self.ctx.stats.direction(Direction::Upstream).add_sent(sent);
        self.send_copies(&parts, copies);
        let session = session(&parts.headers).map(str::to_owned);
        // A GET with Last-Event-ID resumes a stream: what comes on it is a replay.
        let resumed = parts.method == Method::GET && parts.headers.contains_key("last-event-id");
        self.respond(resp, session, resumed).await
    }

    /// Read a request's body whole and run it through the faults.
    async fn read_request(&self, parts: &Parts, body: Incoming) -> Result<Read, BoxError> {
        let Some(body) = read_whole(body).await? else {
            return Ok(Read::Answer(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "brownout: a request body without a length is read whole, up to {MAX_BODY} bytes\n"
                ),
            )));
        };
        self.ctx
            .stats
            .direction(Direction::Upstream)
            .add_received(body.len());
        let legacy = legacy_session(&parts.uri).map(str::to_owned);
        if parts.method != Method::POST || body.is_empty() {
            return Ok(Read::forward(body));
        }
        let session = session(&parts.headers).or(legacy.as_deref());
        let applied = self.apply(
            Direction::Upstream,
            body,
            session,
            false,
            Origin::Exchange,
            Instant::now(),
        );
        let mut own = self.faults.deliver(applied.out);
        match applied.answers.into_iter().next() {
            Some(Reply::Message(reply)) => {
                self.ctx
                    .stats
                    .direction(Direction::Downstream)
                    .add_sent(reply.data.len());
                // Legacy HTTP+SSE: accepted here, answered on the session's stream.
                if let Some(stream) = legacy
                    .as_deref()
                    .and_then(|id| self.faults.legacy_stream(id))
                {
                    let data = String::from_utf8_lossy(reply.data.trim_ascii_end()).into_owned();
                    let _ = stream
                        .send(Bytes::from(format!("event: message\ndata: {data}\n\n")))
                        .await;
                    return accepted().map(Read::Answer);
                }
                return Ok(Read::Answer(json(StatusCode::OK, reply.data)));
            }
            Some(Reply::Status(status, retry_after)) => {
                let status = StatusCode::from_u16(status)?;
                let mut answer = text(status, format!("brownout: {status}\n"));
                if let Some(secs) = retry_after {
                    answer
                        .headers_mut()
                        .insert(hyper::header::RETRY_AFTER, secs.into());
                }
                return Ok(Read::Answer(answer));
            }
            None => {}
        }
        if let Some(end) = applied.end {
            // What came of the request before the end is no request: none goes upstream.
            return Err(self.end_exchange(end).await);
        }
        if let Some(t) = applied.timed_out {
            return Err(self.end_exchange(self.timed_out(&t).await).await);
        }
        if let Some(held) = applied.held {
            own = self.wait_held(held).await?;
        }
        let mut out = bodies(own).into_iter();
        let Some(first) = out.next() else {
            if legacy.is_some() {
                // A legacy server accepts every POST at once; the answer never comes.
                return accepted().map(Read::Answer);
            }
            return self.dropped(applied.kind).await.map(Read::Answer);
        };
        timer::sleep_until(first[0].at).await;
        Ok(Read::Forward {
            body: first,
            duplicates: out.collect(),
        })
    }

    /// Send duplicates of a request after it, each on a connection of its own.
    fn send_copies(self: &Arc<Self>, parts: &Parts, copies: Vec<Vec<Chunk>>) {
        for copy in copies {
            // A duplicate goes out on its own connection after the original; its answer is
            // dropped, as a client would never see it.
            let (link, parts) = (self.clone(), parts.clone());
            tokio::spawn(async move {
                let send = async {
                    timer::sleep_until(copy[0].at).await;
                    link.send_copy(&parts, joined(&copy)).await
                };
                tokio::select! {
                    r = tokio::time::timeout(LOST, send) => match r {
                        Ok(Err(e)) => debug!(error = %e, "duplicate request failed"),
                        Err(_) => debug!("duplicate request unanswered; gave up"),
                        Ok(Ok(())) => {}
                    },
                    () = link.cancel.cancelled() => {}
                }
            });
        }
    }

    fn bad_gateway(&self, e: BoxError) -> Response<Body> {
        warn!(upstream = %self.ctx.upstream, error = %e, "upstream request failed");
        text(
            StatusCode::BAD_GATEWAY,
            format!("brownout: upstream {}: {e}\n", self.ctx.upstream),
        )
    }

    /// Wait as a client with a lost message would: until the proxy stops, or for a bound far
    /// beyond any client's timeout. hyper may not notice a client that hangs up while its
    /// request is pending, so without a bound lost requests could pile up.
    async fn never_answer(&self) {
        tokio::select! {
            () = self.cancel.cancelled() => {}
            () = tokio::time::sleep(LOST) => {}
        }
    }

    /// A dropped client message: a request is never answered, as if it was lost on the way;
    /// a notification or response was accepted and then lost.
    async fn dropped(&self, kind: Kind) -> Result<Response<Body>, BoxError> {
        if kind == Kind::Request {
            self.never_answer().await;
            return Err("a dropped request was never answered".into());
        }
        accepted()
    }

    fn upstream_request(&self, parts: &Parts, body: Body) -> Result<Request<Body>, BoxError> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder().method(parts.method.clone()).uri(path);
        let headers = req.headers_mut().expect("builder is fresh");
        copy_headers(&parts.headers, headers);
        // The server sees its own address as the host, as if the client had called it; some
        // servers accept only that.
        headers.insert(HOST, HeaderValue::from_str(&self.ctx.upstream)?);
        Ok(req.body(body)?)
    }

    async fn forward(&self, parts: &Parts, body: Body) -> Result<Response<Incoming>, BoxError> {
        let req = self.upstream_request(parts, body)?;
        // Taken out while in use, so no lock is held across the exchange (the client's
        // connection sends one request at a time: none finds it taken).
        let mut kept = self
            .upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(sender) = kept.as_mut()
            && sender.ready().await.is_err()
        {
            // The server closed the kept-alive connection.
            kept = None;
        }
        let mut sender = match kept {
            Some(sender) => sender,
            None => {
                let (sender, conn) = connect(&self.ctx.upstream).await?;
                self.drive.send(Box::new(conn))?;
                sender
            }
        };
        let resp = sender.send_request(req).await?;
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        Ok(resp)
    }

    async fn send_copy(&self, parts: &Parts, body: Bytes) -> Result<(), BoxError> {
        let (mut sender, conn) = connect(&self.ctx.upstream).await?;
        tokio::spawn(async move { ended(conn.await) });
        let resp = sender
            .send_request(self.upstream_request(parts, full(body))?)
            .await?;
        resp.into_body().collect().await?;
        Ok(())
    }

    /// Pass the upstream's response on. `session` is the request's session, if it had one;
    /// a response that starts a session (to `initialize`) names its own.
    async fn respond(
        self: Arc<Self>,
        resp: Response<Incoming>,
        session: Option<String>,
        resumed: bool,
    ) -> Result<Response<Body>, BoxError> {
        let (mut parts, body) = resp.into_parts();
        let headers = std::mem::take(&mut parts.headers);
        copy_headers(&headers, &mut parts.headers);
        let session = self::session(&headers).map(str::to_owned).or(session);
        let ctype = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ctype.starts_with("text/event-stream") {
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(self.clone().relay_events(body, tx, session, resumed));
            return Ok(Response::from_parts(
                parts,
                ChannelBody(rx).map_err(|e| match e {}).boxed(),
            ));
        }
        // Not a message, or too long to read as one: passed on as it comes.
        if !ctype.starts_with("application/json")
            || declared_len(&headers).is_some_and(|n| n > MAX_BODY as u64)
        {
            let body = streamed(body, self.ctx.stats.clone(), Direction::Downstream);
            return Ok(Response::from_parts(parts, body));
        }
        let Some(bytes) = read_whole(body).await? else {
            return Ok(self.bad_gateway(
                format!("a JSON body without a length is read whole, up to {MAX_BODY} bytes")
                    .into(),
            ));
        };
        self.ctx
            .stats
            .direction(Direction::Downstream)
            .add_received(bytes.len());
        if bytes.is_empty() {
            return Ok(Response::from_parts(parts, full(bytes)));
        }
        let whole = bytes.len();
        let applied = self.apply(
            Direction::Downstream,
            bytes,
            session.as_deref(),
            false,
            Origin::Exchange,
            Instant::now(),
        );
        let mut own = self.faults.deliver(applied.out);
        if let Some(end) = applied.end {
            if own.is_empty() {
                return Err(self.end_exchange(end).await);
            }
            // The first bytes of the body (`limit_data`), then the connection ends: the
            // client sees the whole length declared and the body cut short.
            timer::sleep_until(own[0].at).await;
            self.ctx
                .stats
                .direction(Direction::Downstream)
                .add_sent(body_len(&own));
            parts.headers.insert(CONTENT_LENGTH, whole.into());
            return Ok(Response::from_parts(parts, cut_short(own, whole, end.at())));
        }
        if let Some(t) = applied.timed_out {
            return Err(self.end_exchange(self.timed_out(&t).await).await);
        }
        if let Some(held) = applied.held {
            own = self.wait_held(held).await?;
        }
        // One body carries one message: with several (a duplicate), the client sees one.
        let Some(last) = bodies(own).pop() else {
            // A dropped response: the client waits for an answer that never comes.
            self.never_answer().await;
            return Err("a dropped response was never sent".into());
        };
        timer::sleep_until(last[0].at).await;
        self.ctx
            .stats
            .direction(Direction::Downstream)
            .add_sent(body_len(&last));
        Ok(Response::from_parts(parts, sliced(last)))
    }

    /// Pass an SSE stream on event by event, each through the downstream chain.
    async fn relay_events(
        self: Arc<Self>,
        mut body: Incoming,
        tx: mpsc::Sender<Bytes>,
        mut session: Option<String>,
        resumed: bool,
    ) {
        // Frames are read, and stamped with their arrival, while earlier events wait out
        // their faults: each event's delay counts from when it came, so events that come
        // back to back are not delayed one after another.
        let (frames_tx, mut frames) = mpsc::channel::<(Bytes, Instant)>(32);
        let read = async {
            // Owned here: when the stream ends, so does what the relay receives.
            let frames_tx = frames_tx;
            loop {
                let frame = tokio::select! {
                    f = body.frame() => f,
                    () = frames_tx.closed() => return,
                };
                match frame.map(|f| f.map(Frame::into_data)) {
                    None => return,
                    Some(Err(e)) => {
                        debug!(error = %e, "upstream event stream failed");
                        return;
                    }
                    Some(Ok(Ok(data))) => {
                        self.ctx
                            .stats
                            .direction(Direction::Downstream)
                            .add_received(data.len());
                        if frames_tx.send((data, Instant::now())).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Err(_))) => {}
                }
            }
        };
        let relay = async {
            let mut buf = BytesMut::new();
            let mut scan = Scan::default();
            // Inside an event too long to hold: it passes on as it comes, up to its end.
            let mut oversized = false;
            loop {
                let next = tokio::select! {
                    f = frames.recv() => f,
                    () = tx.closed() => return,
                    () = self.cancel.cancelled() => return,
                };
                let Some((mut data, arrived)) = next else {
                    break;
                };
                if oversized {
                    let Some(end) = scan.feed(&data) else {
                        if !self.send(&tx, data).await {
                            return;
                        }
                        continue;
                    };
                    let rest = data.split_off(end);
                    if !self.send(&tx, data).await {
                        return;
                    }
                    (data, oversized) = (rest, false);
                }
                // Only what arrived is scanned: each byte is looked at once.
                let mut from = buf.len();
                buf.extend_from_slice(&data);
                while let Some(end) = scan.feed(&buf[from..]) {
                    let raw = buf.split_to(from + end).freeze();
                    from = 0;
                    if !self
                        .relay_event(raw, arrived, &tx, &mut session, resumed)
                        .await
                    {
                        return;
                    }
                }
                if buf.len() > MAX_BODY {
                    // Too long to hold: what there is goes on now, unparsed, and the rest
                    // of the event as it comes. The history notes it once.
                    if let Some(sink) = &self.ctx.events {
                        let place = Place {
                            proxy: &self.ctx.name,
                            connection: self.index,
                            direction: Direction::Downstream,
                        };
                        sink.emit(Event::oversized(place, buf.len()));
                    }
                    if !self.send(&tx, std::mem::take(&mut buf).freeze()).await {
                        return;
                    }
                    oversized = true;
                }
            }
            if !buf.is_empty() {
                let _ = tx.send(buf.freeze()).await;
            }
            // The reader stops with it.
            drop(frames);
        };
        tokio::join!(read, relay);
        // Forget legacy sessions whose stream this was.
        self.faults
            .legacy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| !s.same_channel(&tx));
    }

    /// One SSE event; false when the stream must end. A legacy stream's `endpoint` event
    /// names the stream's session, which the events after it then carry.
    async fn relay_event(
        &self,
        raw: Bytes,
        arrived: Instant,
        tx: &mpsc::Sender<Bytes>,
        session: &mut Option<String>,
        resumed: bool,
    ) -> bool {
        let event = Arc::new(SseEvent::parse(&raw));
        let Some(data) = event.data.as_ref().filter(|d| !d.trim().is_empty()) else {
            // A comment, only a retry or id, or a priming event (an id and empty data, which
            // a resumable server sends first): no message, nothing to fault.
            return self.send(tx, raw).await;
        };
        if event
            .other
            .iter()
            .any(|l| l.trim() == "event: endpoint" || l.trim() == "event:endpoint")
            && let Some(id) = data
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("sessionId="))
        {
            // A legacy HTTP+SSE stream: its session's POSTs are answered here.
            let id = id.trim().to_owned();
            self.faults
                .legacy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), tx.clone());
            session.get_or_insert(id);
        }
        let applied = self.apply(
            Direction::Downstream,
            Bytes::from(data.clone()),
            session.as_deref(),
            resumed,
            Origin::Event(tx, &event),
            arrived,
        );
        if applied.end.is_some() || applied.timed_out.is_some() {
            // What a hold let go of for others goes on; this stream ends when due.
            self.faults.deliver(applied.out);
            let end = match (applied.end, applied.timed_out) {
                (Some(end), _) => end,
                (None, t) => self.timed_out(&t.expect("checked above")).await,
            };
            self.end_connection(end).await;
            // Until the connection's task lets the stream go.
            tx.closed().await;
            return false;
        }
        // In order: what a hold lets go of may belong on this very stream.
        let mut slices = Vec::new();
        for d in applied.out {
            match d {
                Delivery::Own(c) => {
                    let more = c.more;
                    slices.push(c);
                    if !more
                        && !self
                            .send_event(tx, &event, std::mem::take(&mut slices))
                            .await
                    {
                        return false;
                    }
                }
                // One for this very stream keeps its place among this stream's events.
                Delivery::Other(held, c) => match held.waiter {
                    Waiter::Event(other, event) if other.same_channel(tx) => {
                        if !self.send_event(tx, &event, vec![c]).await {
                            return false;
                        }
                    }
                    waiter => self.faults.hand_over(vec![(waiter, c)]),
                },
            }
        }
        slices.is_empty() || self.send_event(tx, &event, slices).await
    }

    /// An event with its data in `slices`: written slice by slice, each at its time, as
    /// one event (a slice's share of the event's own lines goes with the first).
    async fn send_event(
        &self,
        tx: &mpsc::Sender<Bytes>,
        event: &SseEvent,
        slices: Vec<Chunk>,
    ) -> bool {
        let mut whole = event.with_data(&joined(&slices));
        let framing = whole.len().saturating_sub(body_len(&slices));
        let last = slices.len() - 1;
        for (i, c) in slices.iter().enumerate() {
            let piece = if i == last {
                std::mem::take(&mut whole)
            } else {
                whole.split_to((c.data.len() + if i == 0 { framing } else { 0 }).min(whole.len()))
            };
            timer::sleep_until(c.at).await;
            if !self.send(tx, piece).await {
                return false;
            }
        }
        true
    }

    async fn send(&self, tx: &mpsc::Sender<Bytes>, data: Bytes) -> bool {
        self.ctx
            .stats
            .direction(Direction::Downstream)
            .add_sent(data.len());
        tx.send(data).await.is_ok()
    }
}

/// The MCP session a message belongs to, from its HTTP headers.
fn session(headers: &HeaderMap) -> Option<&str> {
    headers.get("mcp-session-id").and_then(|v| v.to_str().ok())
}

/// The session of a legacy HTTP+SSE POST: its `sessionId` query parameter.
fn legacy_session(uri: &hyper::Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("sessionId="))
        .filter(|id| !id.is_empty())
}

/// A body of `bytes`.
fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|e| match e {}).boxed()
}

/// `body` passed on as it comes, counted in `dir`'s stats.
fn streamed(body: Incoming, stats: Arc<ProxyStats>, dir: Direction) -> Body {
    Counted { body, stats, dir }.boxed()
}

/// A body passed on unread, counted as it goes; its length (if declared) is kept, so the
/// next hop sees the same framing.
struct Counted {
    body: Incoming,
    stats: Arc<ProxyStats>,
    dir: Direction,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame
            && let Some(d) = f.data_ref()
        {
            let stats = self.stats.direction(self.dir);
            stats.add_received(d.len());
            stats.add_sent(d.len());
        }
        frame.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The body length its headers declare, if any.
fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Read a whole message body of at most [`MAX_BODY`] bytes; `Ok(None)` when it is longer.
async fn read_whole(body: Incoming) -> Result<Option<Bytes>, BoxError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(Some(c.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(None),
        Err(e) => Err(e),
    }
}

fn accepted() -> Result<Response<Body>, BoxError> {
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .body(Empty::new().map_err(|e| match e {}).boxed())?)
}

type Upstream = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Body>;

fn ended(r: hyper::Result<()>) {
    if let Err(e) = r {
        debug!(error = %e, "upstream connection ended");
    }
}

/// A new upstream connection: its sender, and the connection to drive. The connection ends
/// when the sender is dropped and it is idle, or when the server closes it.
async fn connect(upstream: &str) -> Result<(SendRequest<Body>, Upstream), BoxError> {
    let tcp = TcpStream::connect(upstream).await?;
    let _ = tcp.set_nodelay(true);
    Ok(hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?)
}

/// Headers that describe one hop, not the message; each side sets its own.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !hop_by_hop(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .body(full(body))
        .expect("valid response")
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(Bytes::from(body)))
        .expect("valid response")
}

/// A body fed from a channel, for a stream brownout rewrites (or writes) as it goes.
pub(crate) struct ChannelBody(pub(crate) mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
