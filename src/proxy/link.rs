//! One connection: two pumps, one per direction, each running its own fault chain.
//!
//! Both pumps run inside the connection's task and share the two sockets by reference. A
//! pump reads a chunk, asks its chain what to do with it, queues the result with the time
//! each piece may go out, and writes queued data as it comes due. Reading stops while the
//! queue is full, so a slow destination slows the source down instead of growing memory.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use super::endpoint::Endpoint;
use super::events::{Event, EventSink, Fate, Place};
use super::lines::{Lines, Piece};
use super::stats::{DirectionStats, ProxyStats};
use super::timer;
use crate::faults::{self, Chain, Chunk, Correlator, Direction, End, Message, Reply, ToxicSpec};

/// Bytes a pump may hold that are read but not yet written. Large enough that a bulk
/// transfer through a 100 ms latency fault still streams.
const MAX_QUEUED: usize = 8 << 20;
/// The most one read takes.
const READ_SIZE: usize = 64 << 10;
/// The most one splice moves when no fault acts.
const SPLICE_SIZE: usize = 256 << 10;
/// The longest line read whole as a message (line framing). A longer one passes on as it
/// comes, unparsed and untouched by message faults, as HTTP mode passes a body too long to
/// read, so a peer that never sends a newline costs a bounded amount of memory.
pub const MAX_LINE: usize = 16 << 20;

thread_local! {
    /// Reads land here and are copied out at their exact size: a connection holds no read
    /// buffer between reads, and no large buffer is allocated and freed per message.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// How a link cuts what it reads into items for the fault chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Whatever each read returns; message faults never match.
    Bytes,
    /// One JSON-RPC message per line (MCP over stdio); message faults see each message.
    Lines,
}

/// Everything a link needs to know about the proxy it belongs to.
pub struct LinkContext {
    pub seed: u64,
    pub index: u64,
    pub toxics: watch::Receiver<Arc<[ToxicSpec]>>,
    pub stats: Arc<ProxyStats>,
    pub framing: Framing,
    /// The proxy's name, for events.
    pub name: Arc<str>,
    /// Where to record each framed message, if anywhere.
    pub events: Option<EventSink>,
}

/// What the two directions of one link share.
struct Shared<'a> {
    ctx: &'a LinkContext,
    correlator: Mutex<Correlator>,
    /// Replies a fault sends back to a sender, waiting for the pump that writes to it:
    /// index 0 for the upstream pump, 1 for the downstream one.
    answers: [Mailbox; 2],
}

#[derive(Default)]
struct Mailbox {
    items: Mutex<Vec<Chunk>>,
    notify: Notify,
}

/// How one direction finished.
#[derive(Debug)]
enum Outcome {
    /// The source ended and that end was passed on; the other direction may go on.
    Finished,
    /// A fault ended the link.
    Ended(End),
    /// Reading the source failed (e.g. the peer reset): pass the reset on.
    ReadFailed(io::Error),
    /// Writing the destination failed: nothing more can be delivered.
    WriteFailed(io::Error),
}

/// Relay between `client` and `server` until both directions have finished, a fault ends
/// the connection, or `cancel` fires.
pub async fn run<E: Endpoint>(client: &E, server: &E, ctx: LinkContext, cancel: CancellationToken) {
    let shared = Shared {
        ctx: &ctx,
        correlator: Mutex::default(),
        answers: Default::default(),
    };
    let up = Pump::new(Direction::Upstream, client, server, &shared).run();
    let down = Pump::new(Direction::Downstream, server, client, &shared).run();
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let (outcome, dir) = tokio::select! {
            _ = cancel.cancelled() => return,
            o = &mut up, if !up_done => (o, Direction::Upstream),
            o = &mut down, if !down_done => (o, Direction::Downstream),
        };
        match dir {
            Direction::Upstream => up_done = true,
            Direction::Downstream => down_done = true,
        }
        let dst = match dir {
            Direction::Upstream => server,
            Direction::Downstream => client,
        };
        debug!(direction = %dir, ?outcome, "direction done");
        match outcome {
            // Half-close: the other direction goes on.
            Outcome::Finished => {}
            // Close this side's peer both ways. The other direction then reads EOF from it,
            // delivers what it still holds, and finishes.
            Outcome::Ended(End::Close(_)) => dst.shutdown_both(),
            Outcome::Ended(End::Reset(_)) => return dst.reset_on_close(),
            // A killed process's output ends by itself and the other direction delivers
            // what it holds; a peer that is not a process is reset instead.
            Outcome::Ended(End::Kill(_, signal)) => {
                if !dst.kill(signal) {
                    return;
                }
            }
            Outcome::ReadFailed(e) => {
                debug!(direction = %dir, error = %e, "source failed; passing a reset on");
                return dst.reset_on_close();
            }
            Outcome::WriteFailed(e) => {
                debug!(direction = %dir, error = %e, "destination failed");
                return;
            }
        }
    }
    // Dropping the sockets (in the caller) closes both sides.
}

struct Pump<'a, E> {
    dir: Direction,
    shared: &'a Shared<'a>,
    /// Line framing only: what is held of a line not yet complete.
    lines: Lines,
    /// What one read was cut into, kept to reuse its allocation.
    pieces: Vec<Piece>,
    src: &'a E,
    dst: &'a E,
    chain: Chain,
    rng: fastrand::Rng,
    toxics: watch::Receiver<Arc<[ToxicSpec]>>,
    proxy: &'a ProxyStats,
    stats: &'a DirectionStats,
    queue: VecDeque<Chunk>,
    queued: usize,
    /// When the source's end may be passed on, once everything queued has been written.
    eof_at: Option<Instant>,
    /// An end a fault decided.
    end: Option<End>,
    toxics_closed: bool,
}

impl<'a, E: Endpoint> Pump<'a, E> {
    fn new(dir: Direction, src: &'a E, dst: &'a E, shared: &'a Shared<'a>) -> Self {
        let ctx = shared.ctx;
        let mut pump = Pump {
            dir,
            shared,
            lines: Lines::new(MAX_LINE),
            pieces: Vec::new(),
            src,
            dst,
            chain: Chain::new(dir),
            rng: faults::link_rng(ctx.seed, ctx.index, dir),
            toxics: ctx.toxics.clone(),
            proxy: &ctx.stats,
            stats: ctx.stats.direction(dir),
            queue: VecDeque::new(),
            queued: 0,
            eof_at: None,
            end: None,
            toxics_closed: false,
        };
        pump.refresh_chain(Instant::now());
        pump
    }

    /// Take the current fault specs. When this direction's faults changed, data already
    /// queued goes out now instead of waiting out delays that no longer apply, as Toxiproxy
    /// does when a toxic is added, changed or removed.
    fn refresh_chain(&mut self, now: Instant) {
        let specs = self.toxics.borrow_and_update().clone();
        let proxy = self.proxy;
        let dir = self.dir;
        let changed = self.chain.update(&specs, now, &mut self.rng, &mut |spec| {
            proxy.toxic_counter(&spec.name, dir)
        });
        if changed {
            trace!(direction = %self.dir, faults = specs.len(), "faults changed");
            for c in &mut self.queue {
                c.at = c.at.min(now);
            }
            if let Some(at) = &mut self.eof_at {
                *at = (*at).min(now);
            }
            // What a removed `hold` kept back goes out now, after what is queued.
            for mut c in self.chain.take_released() {
                c.at = now;
                if let Some(sink) = &self.shared.ctx.events
                    && c.msg.is_some()
                {
                    let place = Place {
                        proxy: &self.shared.ctx.name,
                        connection: self.shared.ctx.index,
                        direction: self.dir,
                    };
                    sink.emit(Event::released(place, &c));
                }
                self.queued += c.data.len();
                self.queue.push_back(c);
            }
        }
    }

    async fn run(mut self) -> Outcome {
        loop {
            let now = Instant::now();
            // Faults published before data arrived must apply to that data, so look for a
            // change before every read, not only when the change happens to wake us.
            if !self.toxics_closed && self.toxics.has_changed().unwrap_or(false) {
                self.refresh_chain(now);
            }
            // Replies come only from message faults, which act only on framed messages.
            if self.shared.ctx.framing == Framing::Lines {
                self.take_answers();
            }
            if let Some(o) = self.check_end(now) {
                return o;
            }
            let mut progress = match self.write_due(now) {
                Ok(p) => p,
                Err(e) => return Outcome::WriteFailed(e),
            };
            if self.queue.is_empty()
                && self.eof_at.is_some_and(|at| at <= now)
                && self.end.is_none()
            {
                let _ = self.dst.shutdown_write();
                return Outcome::Finished;
            }
            match self.read_available(now) {
                Ok(p) => progress |= p,
                Err(outcome) => return outcome,
            }
            if progress {
                tokio::task::consume_budget().await;
                continue;
            }
            if self.queue.is_empty() {
                // Idle: hold no buffers.
                self.queue = VecDeque::new();
            }
            self.wait(now).await;
        }
    }

    /// Whether a fault's end has come. A reset happens at its time, whatever is queued; a
    /// close waits until what was queued before it has been written.
    fn check_end(&mut self, now: Instant) -> Option<Outcome> {
        if let Some(d) = self.chain.deadline()
            && d.at() <= now
            && self.end.is_none_or(|e| d.at() < e.at())
        {
            self.chain.note_deadline(d);
            self.end = Some(d);
        }
        // Every kind of end is named here, so a new one cannot be left unhandled (a pump
        // that stops reading for an end it never acts on would spin).
        match self.end? {
            e if e.at() > now => None,
            e @ (End::Reset(_) | End::Kill(..)) => Some(Outcome::Ended(e)),
            e @ End::Close(_) => self.queue.is_empty().then_some(Outcome::Ended(e)),
        }
    }

    /// Write everything that is due, until the destination would block.
    fn write_due(&mut self, now: Instant) -> io::Result<bool> {
        let mut progress = false;
        while let Some(head) = self.queue.front_mut() {
            if head.at > now {
                break;
            }
            match self.dst.try_write(&head.data) {
                Ok(n) => {
                    progress = true;
                    self.stats.add_sent(n);
                    self.queued -= n;
                    head.data.advance(n);
                    if head.data.is_empty() {
                        self.queue.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }

    fn can_read(&self) -> bool {
        // With no fault acting, read only once the destination has taken everything queued:
        // a fault-free link needs no queue of its own, and the next read can then go socket
        // to socket instead of through a copy.
        let room = if self.chain.is_idle() {
            self.queue.is_empty()
        } else {
            self.queued < MAX_QUEUED
        };
        self.eof_at.is_none() && self.end.is_none() && room
    }

    /// Read what the source has, run it through the chain and queue the result. With no
    /// fault acting and nothing queued, data goes straight from socket to socket.
    fn read_available(&mut self, now: Instant) -> Result<bool, Outcome> {
        let mut progress = false;
        while self.can_read() {
            if self.chain.is_idle() && self.shared.ctx.framing == Framing::Bytes {
                match self.src.splice_to(self.dst, SPLICE_SIZE) {
                    None => {}
                    Some(Ok(s)) if s.read == 0 => {
                        progress = true;
                        self.eof_at = Some(self.chain.on_eof(now));
                        continue;
                    }
                    Some(Ok(s)) => {
                        progress = true;
                        self.stats.add_received(s.read);
                        self.stats.add_sent(s.written);
                        if let Some(rest) = s.rest {
                            self.queued += rest.len();
                            self.queue.push_back(Chunk::bytes(rest, now));
                        }
                        if let Some(e) = s.write_error {
                            return Err(Outcome::WriteFailed(e));
                        }
                        continue;
                    }
                    Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Some(Err(e)) => return Err(Outcome::ReadFailed(e)),
                }
            }
            let read: io::Result<Bytes> = SCRATCH.with_borrow_mut(|buf| {
                let n = self.src.try_read(buf)?;
                Ok(Bytes::copy_from_slice(&buf[..n]))
            });
            match read {
                Ok(data) if data.is_empty() => {
                    progress = true;
                    if let Some(line) = self.lines.finish() {
                        // A last line without its newline is still a message.
                        let chunk = self.message(line, now);
                        self.enqueue(chunk);
                    }
                    self.eof_at = Some(self.chain.on_eof(now));
                }
                Ok(data) => {
                    progress = true;
                    self.stats.add_received(data.len());
                    match self.shared.ctx.framing {
                        Framing::Bytes => self.enqueue(Chunk::bytes(data, now)),
                        Framing::Lines => self.frame_lines(data, now),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Outcome::ReadFailed(e)),
            }
        }
        Ok(progress)
    }

    /// Run a chunk through the chain and queue what comes out.
    fn enqueue(&mut self, chunk: Chunk) {
        let before = self.queue.len();
        let record = self
            .shared
            .ctx
            .events
            .is_some()
            .then(|| chunk.clone())
            .filter(|c| c.msg.is_some());
        let mut end = None;
        let mut answered = false;
        if self.chain.is_idle() {
            self.queue.push_back(chunk);
        } else {
            let mut answers = Vec::new();
            end = self
                .chain
                .on_chunk(chunk, &mut self.rng, &mut self.queue, &mut answers);
            if let Some(end) = end {
                self.end = Some(
                    self.end
                        .map_or(end, |e| if e.at() <= end.at() { e } else { end }),
                );
            }
            // Replies go to where this chunk came from: the other pump's destination. Pipes
            // have no status to refuse a message with: such a message is simply dropped.
            let mut replies: Vec<Chunk> = answers
                .into_iter()
                .filter_map(|r| match r {
                    Reply::Message(c) => Some(c),
                    Reply::Status(..) => None,
                })
                .collect();
            if !replies.is_empty() {
                answered = true;
                let mailbox = &self.shared.answers[self.dir.opposite().index()];
                lock(&mailbox.items).append(&mut replies);
                mailbox.notify.notify_one();
            }
        }
        self.queued += self
            .queue
            .iter()
            .skip(before)
            .map(|c| c.data.len())
            .sum::<usize>();
        // A jittered delay must not let later data overtake earlier data.
        for i in before.max(1)..self.queue.len() {
            if self.queue[i].at < self.queue[i - 1].at {
                self.queue[i].at = self.queue[i - 1].at;
            }
        }
        if let Some(arrived) = record {
            self.record(&arrived, before, answered, end, false);
        }
    }

    /// Tell the event sink what became of one message.
    fn record(
        &self,
        arrived: &Chunk,
        first: usize,
        answered: bool,
        end: Option<End>,
        injected: bool,
    ) {
        let Some(sink) = &self.shared.ctx.events else {
            return;
        };
        let faults = if self.chain.is_idle() || injected {
            &[][..]
        } else {
            self.chain.hits()
        };
        let place = Place {
            proxy: &self.shared.ctx.name,
            connection: self.shared.ctx.index,
            direction: self.dir,
        };
        let fate = Fate {
            out: self.queue.range(first..),
            answered,
            injected,
            end,
            faults,
        };
        sink.emit(Event::new(place, arrived, fate));
    }

    /// Cut complete lines off what has been read; each becomes one message.
    fn frame_lines(&mut self, data: Bytes, now: Instant) {
        let mut pieces = std::mem::take(&mut self.pieces);
        self.lines.feed(data, &mut pieces);
        for piece in pieces.drain(..) {
            match piece {
                Piece::Line(line) => {
                    let chunk = self.message(line, now);
                    self.enqueue(chunk);
                }
                Piece::Raw(bytes) => self.enqueue(Chunk::bytes(bytes, now)),
                Piece::Oversized(bytes) => {
                    // Passed on unparsed: the history notes it once per line.
                    if let Some(sink) = &self.shared.ctx.events {
                        let place = Place {
                            proxy: &self.shared.ctx.name,
                            connection: self.shared.ctx.index,
                            direction: self.dir,
                        };
                        sink.emit(Event::oversized(place, bytes));
                    }
                }
            }
        }
        self.pieces = pieces;
    }

    /// A chunk for one framed message, with what is known about it.
    fn message(&self, line: Bytes, now: Instant) -> Chunk {
        let mut msg = Message::parse(&line);
        lock(&self.shared.correlator).observe(self.dir, &mut msg);
        Chunk {
            data: line,
            at: now,
            msg: Some(Arc::new(msg)),
            more: false,
        }
    }

    /// Queue the replies that faults in the other direction sent back through this one.
    fn take_answers(&mut self) {
        let items = std::mem::take(&mut *lock(&self.shared.answers[self.dir.index()].items));
        for reply in items {
            self.queued += reply.data.len();
            if self.shared.ctx.events.is_some() {
                let reply = Chunk {
                    msg: Some(Arc::new(Message::parse(&reply.data))),
                    ..reply
                };
                self.queue.push_back(reply.clone());
                self.record(&reply, self.queue.len() - 1, false, None, true);
            } else {
                self.queue.push_back(reply);
            }
        }
    }

    /// Wait until something can happen: data to read, room to write, a time to come, or the
    /// faults to change.
    async fn wait(&mut self, now: Instant) {
        let head_due = self.queue.front().is_some_and(|c| c.at <= now);
        let next = [
            self.queue.front().map(|c| c.at).filter(|at| *at > now),
            self.queue.is_empty().then_some(self.eof_at).flatten(),
            self.end.map(End::at),
            self.chain.deadline().map(End::at),
        ]
        .into_iter()
        .flatten()
        .min();
        let can_read = self.can_read();
        let (src, dst) = (self.src, self.dst);
        let toxics_open = !self.toxics_closed;
        let answers = &self.shared.answers[self.dir.index()].notify;
        let changed = tokio::select! {
            r = self.toxics.changed(), if toxics_open => Some(r.is_ok()),
            _ = answers.notified() => None,
            _ = timer::sleep_until(next.unwrap_or(now)), if next.is_some() => None,
            _ = dst.writable(), if head_due => None,
            _ = src.readable(), if can_read => None,
        };
        match changed {
            Some(true) => self.refresh_chain(Instant::now()),
            // The proxy is gone and its cancellation will end this link; the faults in
            // force stay as they were.
            Some(false) => self.toxics_closed = true,
            None => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere in this connection cannot leave these in a broken state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
