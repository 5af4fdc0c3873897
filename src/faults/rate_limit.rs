//! `rate_limit`: a server that rate-limits requests, as real MCP servers and the APIs behind
//! them do. GCRA from `governor`, on a clock that reads each message's arrival time, so the
//! same arrivals always get the same decisions (and tests are exact).
//!
//! The budget is the toxic's, not a link's: every connection of a proxy (HTTP-mode clients
//! open many) and every wrapped transport draws on one limiter, as one server's would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::message::{Kind, error_line};
use super::spec::{Attrs, SpecError};
use super::{Chunk, Fault, Verdict};

/// What a request over the limit gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// HTTP 429 Too Many Requests with `Retry-After` (HTTP mode only).
    Status,
    /// A JSON-RPC error answer with this code and message.
    Error { code: i64, message: String },
    /// Held until a slot frees, then passed on: throttling.
    Queue,
}

#[derive(Clone, Debug)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub rate: u32,
    /// Requests let through at once after a quiet spell.
    pub burst: u32,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub session: Option<String>,
    pub reply: Reply,
    limiter: Arc<Limiter>,
}

impl PartialEq for RateLimit {
    /// Same attributes; the limiter's state is not part of what the toxic is.
    fn eq(&self, other: &Self) -> bool {
        (
            self.rate,
            self.burst,
            &self.method,
            &self.tool,
            &self.session,
            &self.reply,
        ) == (
            other.rate,
            other.burst,
            &other.method,
            &other.tool,
            &other.session,
            &other.reply,
        )
    }
}

/// governor's clock, set to each request's arrival (as time since the first) before it is
/// checked.
#[derive(Clone, Default)]
struct ArrivalClock(Arc<AtomicU64>);

impl Clock for ArrivalClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, ArrivalClock, NoOpMiddleware<Duration>>;

struct Limiter {
    clock: ArrivalClock,
    /// One decision at a time: the clock is set, then read by the check.
    gcra: Mutex<Gcra>,
    /// Arrival times are measured from the first request checked.
    origin: OnceLock<Instant>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    fn new(rate: u32, burst: u32) -> Limiter {
        let clock = ArrivalClock::default();
        let quota = Quota::per_second(rate.try_into().expect("rate checked > 0"))
            .allow_burst(burst.try_into().expect("burst checked > 0"));
        Limiter {
            gcra: Mutex::new(RateLimiter::direct_with_clock(quota, clock.clone())),
            clock,
            origin: OnceLock::new(),
        }
    }

    /// Take a slot for a request that arrived `at`: `Ok` if it may pass now, else how long
    /// until one frees. With `queue`, a refused request takes the slot it will get instead,
    /// and the wait is how long it is held.
    fn take(&self, at: Instant, queue: bool) -> Result<(), Duration> {
        let origin = *self.origin.get_or_init(|| at);
        let now = at.saturating_duration_since(origin);
        let gcra = self.gcra.lock().unwrap_or_else(|e| e.into_inner());
        let set = |t: Duration| {
            self.clock.0.store(
                t.as_nanos().min(u128::from(u64::MAX)) as u64,
                Ordering::Relaxed,
            )
        };
        set(now);
        let wait = match gcra.check() {
            Ok(()) => return Ok(()),
            Err(not_until) => not_until.wait_time_from(now),
        };
        if queue {
            set(now + wait);
            // The slot at `now + wait` is free by construction.
            let _ = gcra.check();
        }
        Err(wait)
    }
}

impl RateLimit {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        let rate = a.uint("rate", "requests per second", 1_000_000)? as u32;
        if rate == 0 {
            return Err(SpecError::field(
                "attributes.rate",
                "must be at least 1 (requests per second)",
            ));
        }
        let burst = match a.opt_uint("burst", "requests", 1_000_000)? {
            None => 1,
            Some(0) => {
                return Err(SpecError::field(
                    "attributes.burst",
                    "must be at least 1 (requests let through at once)",
                ));
            }
            Some(b) => b as u32,
        };
        let method = a.string("method")?;
        let tool = a.string("tool")?;
        let session = a.string("session")?;
        let code = a.int("code", i64::from(i32::MIN), i64::from(i32::MAX))?;
        let message = a.string("message")?;
        let reply = match a.string("reply")?.as_deref() {
            None | Some("error") => Reply::Error {
                code: code.unwrap_or(-32000),
                message: message.unwrap_or_else(|| "rate limit exceeded".into()),
            },
            Some(other) => {
                if code.is_some() || message.is_some() {
                    return Err(SpecError::field(
                        "attributes.code",
                        format!("code and message are for reply \"error\", not {other:?}"),
                    ));
                }
                match other {
                    "status" => Reply::Status,
                    "queue" => Reply::Queue,
                    _ => {
                        return Err(SpecError::field(
                            "attributes.reply",
                            format!("expected status, error or queue, got {other:?}"),
                        ));
                    }
                }
            }
        };
        Ok(RateLimit {
            rate,
            burst,
            method,
            tool,
            session,
            reply,
            limiter: Arc::new(Limiter::new(rate, burst)),
        })
    }

    pub(super) fn attributes(&self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("rate".into(), self.rate.into());
        out.insert("burst".into(), self.burst.into());
        for (k, v) in [
            ("method", &self.method),
            ("tool", &self.tool),
            ("session", &self.session),
        ] {
            if let Some(v) = v {
                out.insert(k.into(), v.clone().into());
            }
        }
        let reply = match &self.reply {
            Reply::Status => "status",
            Reply::Queue => "queue",
            Reply::Error { code, message } => {
                out.insert("code".into(), (*code).into());
                out.insert("message".into(), message.clone().into());
                "error"
            }
        };
        out.insert("reply".into(), reply.into());
        out
    }

    /// A link's instance: it shares the toxic's limiter.
    pub(super) fn start(&self) -> RateLimit {
        self.clone()
    }
}

impl Fault for RateLimit {
    fn on_chunk(&mut self, mut chunk: Chunk, _rng: &mut fastrand::Rng) -> Verdict {
        let Some(msg) = chunk.msg.clone() else {
            return Verdict::Pass(chunk);
        };
        let wanted = |want: &Option<String>, got: &Option<String>| {
            want.as_ref().is_none_or(|w| got.as_ref() == Some(w))
        };
        if msg.kind != Kind::Request
            || !wanted(&self.method, &msg.method)
            || !wanted(&self.tool, &msg.tool)
            || !wanted(&self.session, &msg.session)
        {
            return Verdict::Pass(chunk);
        }
        let queue = self.reply == Reply::Queue;
        let Err(wait) = self.limiter.take(chunk.at, queue) else {
            return Verdict::Pass(chunk);
        };
        match &self.reply {
            Reply::Queue => {
                chunk.at += wait;
                Verdict::Pass(chunk)
            }
            // Whole seconds, rounded up: Retry-After has no finer unit.
            Reply::Status => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Verdict::Reject(429, Some(secs.max(1)))
            }
            Reply::Error { code, message } => {
                let text = format!("{message} (retry after {} ms)", wait.as_millis().max(1));
                Verdict::Answer(chunk.part(error_line(msg.id.as_ref(), *code, &text), chunk.at))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{FaultKind, Message};
    use bytes::Bytes;
    use serde_json::json;

    fn limit(attributes: Value) -> RateLimit {
        match FaultKind::parse("rate_limit", attributes.as_object().unwrap()).unwrap() {
            FaultKind::RateLimit(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn request(method: &str, at: Instant) -> Chunk {
        let line = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}"}}"#);
        Chunk {
            msg: Some(Arc::new(Message::parse(line.as_bytes()))),
            ..Chunk::bytes(Bytes::from(line), at)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_passes_then_the_rest_wait_for_their_slot() {
        let mut f = limit(json!({"rate": 2, "burst": 2, "reply": "status"})).start();
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut at = |t: u64| f.on_chunk(request("tools/call", t0 + ms(t)), &mut rng);
        assert!(matches!(at(0), Verdict::Pass(_)));
        assert!(matches!(at(0), Verdict::Pass(_)));
        // 2 per second: the next slot is 500 ms after the first.
        assert_eq!(at(100), Verdict::Reject(429, Some(1)));
        assert!(matches!(at(500), Verdict::Pass(_)));
        assert_eq!(at(600), Verdict::Reject(429, Some(1)));
        assert!(matches!(at(1000), Verdict::Pass(_)));
    }

    #[test]
    fn queue_spaces_requests_one_slot_apart() {
        let mut f = limit(json!({"rate": 4, "reply": "queue"})).start();
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let due: Vec<Duration> = (0..4)
            .map(|_| match f.on_chunk(request("tools/call", t0), &mut rng) {
                Verdict::Pass(c) => c.at - t0,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(due, [ms(0), ms(250), ms(500), ms(750)]);
    }

    #[test]
    fn an_error_reply_answers_the_request_and_other_messages_pass() {
        let mut f = limit(json!({"rate": 1, "method": "tools/call", "code": -32029})).start();
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(matches!(
            f.on_chunk(request("tools/call", t0), &mut rng),
            Verdict::Pass(_)
        ));
        // Another method is not limited.
        assert!(matches!(
            f.on_chunk(request("tools/list", t0), &mut rng),
            Verdict::Pass(_)
        ));
        let Verdict::Answer(reply) = f.on_chunk(request("tools/call", t0 + ms(10)), &mut rng)
        else {
            panic!("not answered");
        };
        let v: Value = serde_json::from_slice(&reply.data).unwrap();
        assert_eq!(v["id"], 1);
        assert_eq!(v["error"]["code"], -32029);
        assert_eq!(
            v["error"]["message"],
            "rate limit exceeded (retry after 990 ms)"
        );
    }

    #[test]
    fn every_link_draws_on_the_toxics_one_budget() {
        let spec = limit(json!({"rate": 1, "reply": "status"}));
        let (mut a, mut b) = (spec.start(), spec.start());
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(matches!(
            a.on_chunk(request("ping", t0), &mut rng),
            Verdict::Pass(_)
        ));
        assert_eq!(
            b.on_chunk(request("ping", t0), &mut rng),
            Verdict::Reject(429, Some(1))
        );
    }

    #[test]
    fn bad_attributes_name_the_field() {
        let e = |a: Value| {
            FaultKind::parse("rate_limit", a.as_object().unwrap())
                .unwrap_err()
                .field
        };
        assert_eq!(e(json!({})), "attributes.rate");
        assert_eq!(e(json!({"rate": 1, "burst": 0})), "attributes.burst");
        assert_eq!(e(json!({"rate": 1, "reply": "later"})), "attributes.reply");
        assert_eq!(
            e(json!({"rate": 1, "reply": "queue", "code": 1})),
            "attributes.code"
        );
        assert_eq!(e(json!({"rate": 1, "window": 5})), "attributes.window");
    }
}
