//! Faults on whole JSON-RPC messages: the `mcp` toxic.
//!
//! On links that frame messages (stdio: one message per line), every chunk carries a
//! [`Message`]: its kind, id, method and tool. Responses carry the method and tool of the
//! request they answer, found by a [`Correlator`], so "drop the response to tools/call" can
//! be said directly.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::spec::{Attrs, DAY_MS, SpecError};
use super::{Chunk, Direction, End, Fault, FaultKind, Verdict};

/// What kind of JSON-RPC message a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kind {
    Request,
    Notification,
    Response,
    Error,
    /// Not a JSON-RPC object (a batch, garbage, a log line on stdout).
    #[default]
    Other,
}

impl Kind {
    fn parse(s: &str) -> Result<Kind, SpecError> {
        Ok(match s {
            "request" => Kind::Request,
            "notification" => Kind::Notification,
            "response" => Kind::Response,
            "error" => Kind::Error,
            other => {
                return Err(SpecError::field(
                    "attributes.kind",
                    format!("expected request, notification, response or error, got {other:?}"),
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Notification => "notification",
            Kind::Response => "response",
            Kind::Error => "error",
            Kind::Other => "other",
        }
    }
}

/// What the proxy knows about one message.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Message {
    pub kind: Kind,
    pub id: Option<Value>,
    /// The method; for a response, the method of the request it answers, when known.
    pub method: Option<String>,
    /// `params.name` of a `tools/call`; for a response, that of its request.
    pub tool: Option<String>,
    /// The MCP session it belongs to (HTTP: `Mcp-Session-Id`), when there is one.
    pub session: Option<String>,
    /// It came on an SSE stream the client resumed (a GET with `Last-Event-ID`): the server
    /// replaying what the client missed.
    pub resumed: bool,
    /// Which message this is, among those a conversation has seen (from 1; 0 when not
    /// counted): what a message held back is found by when it is let go.
    pub ticket: u64,
}

impl Message {
    /// Read one message. Anything that is not a JSON-RPC object is [`Kind::Other`].
    pub fn parse(line: &[u8]) -> Message {
        let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(line.trim_ascii()) else {
            return Message::default();
        };
        let id = o.get("id").filter(|v| !v.is_null()).cloned();
        let method = o.get("method").and_then(Value::as_str).map(str::to_owned);
        let kind = match (&method, &id) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) if o.contains_key("error") => Kind::Error,
            (None, Some(_)) => Kind::Response,
            (None, None) if o.contains_key("error") => Kind::Error,
            (None, None) => Kind::Other,
        };
        let tool = (method.as_deref() == Some("tools/call"))
            .then(|| o.get("params")?.get("name")?.as_str().map(str::to_owned))
            .flatten();
        Message {
            kind,
            id,
            method,
            tool,
            ..Message::default()
        }
    }
}

/// Remembers the requests seen in each direction, so a response in the other direction can
/// be matched by the method and tool of its request. Bounded: requests that are never
/// answered are forgotten, oldest first.
#[derive(Default)]
pub struct Correlator {
    pending: [HashMap<String, (String, Option<String>)>; 2],
    order: [VecDeque<String>; 2],
}

const MAX_PENDING: usize = 10_000;

impl Correlator {
    /// Note a message travelling in `dir`: remember it if it is a request; if it is a
    /// response, fill in what it answers.
    pub fn observe(&mut self, dir: Direction, msg: &mut Message) {
        let Some(id) = &msg.id else { return };
        let key = id.to_string();
        match msg.kind {
            Kind::Request => {
                let i = dir.index();
                let method = msg.method.clone().unwrap_or_default();
                if self.pending[i]
                    .insert(key.clone(), (method, msg.tool.clone()))
                    .is_none()
                {
                    self.order[i].push_back(key);
                }
                while self.order[i].len() > MAX_PENDING {
                    if let Some(old) = self.order[i].pop_front() {
                        self.pending[i].remove(&old);
                    }
                }
            }
            Kind::Response | Kind::Error => {
                // A response answers a request that went the other way. The request stays
                // known (until MAX_PENDING newer ones push it out): a replayed or duplicated
                // response is still that method's.
                let i = dir.opposite().index();
                if let Some((method, tool)) = self.pending[i].get(&key) {
                    msg.method = Some(method.clone());
                    msg.tool = tool.clone();
                }
            }
            Kind::Notification | Kind::Other => {}
        }
    }
}

/// Which messages an `mcp` toxic acts on. Every given field must match.
#[derive(Clone, Debug, PartialEq)]
pub struct Matcher {
    pub kind: Option<Kind>,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub id: Option<Value>,
    pub session: Option<String>,
    /// Only messages on a resumed SSE stream (true) or only others (false).
    pub resumed: Option<bool>,
    /// Act only on the n-th matching message (1-based).
    pub nth: Option<u64>,
    /// Act only on matching messages after the first `after`.
    pub after: Option<u64>,
    /// Chance to act on each message that matches everything else.
    pub probability: f64,
}

impl Matcher {
    fn matches(&self, m: &Message) -> bool {
        self.kind.is_none_or(|k| k == m.kind)
            && self
                .method
                .as_ref()
                .is_none_or(|x| m.method.as_ref() == Some(x))
            && self
                .tool
                .as_ref()
                .is_none_or(|x| m.tool.as_ref() == Some(x))
            && self.id.as_ref().is_none_or(|x| m.id.as_ref() == Some(x))
            && self.resumed.is_none_or(|r| r == m.resumed)
            && self
                .session
                .as_ref()
                .is_none_or(|x| m.session.as_ref() == Some(x))
    }
}

/// What an `mcp` toxic does to a message it matched.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Drop,
    Delay {
        ms: u64,
    },
    Duplicate {
        copies: u64,
    },
    /// Instead of a request: a JSON-RPC error answered to its sender. Instead of a
    /// response: that error in its place. A notification cannot be answered and is dropped.
    Error {
        code: i64,
        message: String,
    },
    /// Replace the message with a line that is not valid JSON.
    Malformed,
    /// Cut the message to its first `bytes` bytes.
    Truncate {
        bytes: u64,
    },
    /// Put this line before the message (junk on stdout, a stray log line).
    Inject {
        text: String,
    },
    /// Kill the server with this signal instead of delivering the message (stdio).
    Kill {
        signal: i32,
    },
    /// End the link here: stdio closes both pipes; HTTP closes the connection, or cuts the
    /// event stream this message was on.
    Close,
    /// Refuse the message with this HTTP status instead of forwarding it (404 expires a
    /// session); on stdio it is dropped.
    Status {
        status: u16,
    },
    /// Keep matching messages back until `count` are held, then let them all go at once, in
    /// the order given. Removing or changing the toxic lets go of what it holds.
    Hold {
        count: u64,
        order: Order,
    },
    /// From a matching message on, pass nothing in this direction for `ms`: everything
    /// behind it waits too, as behind a stuck pipe (a server whose stdout stalls).
    Stall {
        ms: u64,
    },
}

/// The order held messages are let go in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Arrival,
    Reversed,
    /// A random order from the link's seeded RNG.
    Shuffled,
}

impl Order {
    fn as_str(self) -> &'static str {
        match self {
            Order::Arrival => "arrival",
            Order::Reversed => "reversed",
            Order::Shuffled => "shuffled",
        }
    }
}

impl Action {
    const NAMES: &'static str = "drop, delay, duplicate, error, malformed, truncate, inject, \
                                 kill, close, status, hold, stall";
}

/// The `mcp` toxic: a matcher and an action.
#[derive(Clone, Debug, PartialEq)]
pub struct Mcp {
    pub matcher: Matcher,
    pub action: Action,
}

impl Mcp {
    pub(super) fn parse(a: &mut Attrs) -> Result<Self, SpecError> {
        let probability = a.probability("probability", 1.0)?;
        let matcher = Matcher {
            kind: a.string("kind")?.as_deref().map(Kind::parse).transpose()?,
            method: a.string("method")?,
            tool: a.string("tool")?,
            id: a.scalar("id")?,
            session: a.string("session")?,
            resumed: a.boolean("resumed")?,
            nth: a.opt_uint("nth", "messages", u64::MAX)?,
            after: a.opt_uint("after", "messages", u64::MAX)?,
            probability,
        };
        if matcher.nth == Some(0) {
            return Err(SpecError::field("attributes.nth", "counts from 1"));
        }
        let Some(name) = a.string("action")? else {
            return Err(SpecError::field(
                "attributes.action",
                format!("missing required field (one of {})", Action::NAMES),
            ));
        };
        let action = match name.as_str() {
            "drop" => Action::Drop,
            "delay" => Action::Delay {
                ms: a.uint("delay", "milliseconds", DAY_MS)?,
            },
            "duplicate" => Action::Duplicate {
                copies: a.opt_uint("copies", "copies", 1000)?.unwrap_or(1),
            },
            "error" => Action::Error {
                code: a
                    .int("code", i64::from(i32::MIN), i64::from(i32::MAX))?
                    .unwrap_or(-32603),
                message: a
                    .string("message")?
                    .unwrap_or_else(|| "error injected by brownout".into()),
            },
            "malformed" => Action::Malformed,
            "truncate" => Action::Truncate {
                bytes: a.uint("bytes", "bytes", u64::MAX)?,
            },
            "inject" => Action::Inject {
                text: a
                    .string("text")?
                    .unwrap_or_else(|| "brownout: not a JSON-RPC message".into()),
            },
            "close" => Action::Close,
            "hold" => {
                let count = a.uint("count", "messages", 1_000_000)?;
                if count < 2 {
                    return Err(SpecError::field(
                        "attributes.count",
                        "must be at least 2 (messages held before all are let go)",
                    ));
                }
                let order = match a.string("order")?.as_deref() {
                    None | Some("arrival") => Order::Arrival,
                    Some("reversed") => Order::Reversed,
                    Some("shuffled") => Order::Shuffled,
                    Some(other) => {
                        return Err(SpecError::field(
                            "attributes.order",
                            format!("unknown order {other:?} (known: arrival, reversed, shuffled)"),
                        ));
                    }
                };
                Action::Hold { count, order }
            }
            "stall" => match a.opt_uint("delay", "milliseconds", DAY_MS)? {
                Some(ms) if ms > 0 => Action::Stall { ms },
                _ => {
                    return Err(SpecError::field(
                        "attributes.delay",
                        "a stall needs how long nothing passes, in milliseconds (more than 0)",
                    ));
                }
            },
            "status" => match a.opt_uint("status", "", 599)? {
                Some(status) if status >= 100 => Action::Status {
                    status: status as u16,
                },
                other => {
                    return Err(SpecError::field(
                        "attributes.status",
                        format!("expected an HTTP status from 100 to 599, got {other:?}"),
                    ));
                }
            },
            "kill" => Action::Kill {
                signal: match a.scalar("signal")? {
                    None => libc::SIGKILL,
                    Some(v) => parse_signal(&v)?,
                },
            },
            other => {
                return Err(SpecError::field(
                    "attributes.action",
                    format!("unknown action {other:?} (known: {})", Action::NAMES),
                ));
            }
        };
        Ok(Mcp { matcher, action })
    }

    /// The attributes as the API shows them; they parse back to the same toxic.
    pub(super) fn attributes(&self) -> Map<String, Value> {
        let m = &self.matcher;
        let mut out = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                out.insert(k.to_owned(), v);
            }
        };
        put("kind", m.kind.map(|k| k.as_str().into()));
        put("method", m.method.clone().map(Value::from));
        put("tool", m.tool.clone().map(Value::from));
        put("id", m.id.clone());
        put("session", m.session.clone().map(Value::from));
        put("resumed", m.resumed.map(Value::from));
        put("nth", m.nth.map(Value::from));
        put("after", m.after.map(Value::from));
        put("probability", Some(m.probability.into()));
        let (name, params): (&str, Vec<(&str, Value)>) = match &self.action {
            Action::Drop => ("drop", vec![]),
            Action::Delay { ms } => ("delay", vec![("delay", (*ms).into())]),
            Action::Duplicate { copies } => ("duplicate", vec![("copies", (*copies).into())]),
            Action::Error { code, message } => (
                "error",
                vec![
                    ("code", (*code).into()),
                    ("message", message.clone().into()),
                ],
            ),
            Action::Malformed => ("malformed", vec![]),
            Action::Truncate { bytes } => ("truncate", vec![("bytes", (*bytes).into())]),
            Action::Inject { text } => ("inject", vec![("text", text.clone().into())]),
            Action::Kill { signal } => ("kill", vec![("signal", (*signal).into())]),
            Action::Close => ("close", vec![]),
            Action::Status { status } => ("status", vec![("status", (*status).into())]),
            Action::Hold { count, order } => (
                "hold",
                vec![("count", (*count).into()), ("order", order.as_str().into())],
            ),
            Action::Stall { ms } => ("stall", vec![("delay", (*ms).into())]),
        };
        put("action", Some(name.into()));
        for (k, v) in params {
            put(k, Some(v));
        }
        out
    }

    pub(super) fn start(&self) -> McpState {
        McpState {
            spec: self.clone(),
            matched: 0,
            held: Vec::new(),
            stalled_until: None,
        }
    }
}

fn parse_signal(v: &Value) -> Result<i32, SpecError> {
    let bad = || {
        SpecError::field(
            "attributes.signal",
            format!("expected a signal name (KILL, TERM, INT, HUP, STOP) or number, got {v}"),
        )
    };
    match v {
        Value::Number(n) => n
            .as_i64()
            .filter(|n| (1..=64).contains(n))
            .map(|n| n as i32)
            .ok_or_else(bad),
        Value::String(s) => match s.trim_start_matches("SIG") {
            "KILL" => Ok(libc::SIGKILL),
            "TERM" => Ok(libc::SIGTERM),
            "INT" => Ok(libc::SIGINT),
            "HUP" => Ok(libc::SIGHUP),
            "STOP" => Ok(libc::SIGSTOP),
            "QUIT" => Ok(libc::SIGQUIT),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

pub(super) struct McpState {
    spec: Mcp,
    /// Messages that matched so far, for `nth` and `after`.
    matched: u64,
    /// Messages a `hold` keeps back.
    held: Vec<Chunk>,
    /// Until when a `stall` keeps everything back.
    stalled_until: Option<Instant>,
}

impl Fault for McpState {
    fn on_chunk(&mut self, mut chunk: Chunk, rng: &mut fastrand::Rng) -> Verdict {
        if let Some(until) = self.stalled_until {
            chunk.at = chunk.at.max(until);
        }
        let Some(msg) = chunk.msg.clone() else {
            return Verdict::Pass(chunk);
        };
        let m = &self.spec.matcher;
        if !m.matches(&msg) {
            return Verdict::Pass(chunk);
        }
        self.matched += 1;
        if m.nth.is_some_and(|n| self.matched != n) || m.after.is_some_and(|a| self.matched <= a) {
            return Verdict::Pass(chunk);
        }
        if m.probability < 1.0 && rng.f64() >= m.probability {
            return Verdict::Pass(chunk);
        }
        match &self.spec.action {
            Action::Drop => Verdict::Drop,
            Action::Delay { ms } => {
                chunk.at += Duration::from_millis(*ms);
                Verdict::Pass(chunk)
            }
            Action::Duplicate { copies } => Verdict::Replace(vec![chunk; *copies as usize + 1]),
            Action::Error { code, message } => {
                let reply = error_line(msg.id.as_ref(), *code, message);
                match msg.kind {
                    Kind::Request => Verdict::Answer(chunk.part(reply, chunk.at)),
                    Kind::Response | Kind::Error => Verdict::Pass(chunk.part(reply, chunk.at)),
                    Kind::Notification | Kind::Other => Verdict::Drop,
                }
            }
            Action::Malformed => {
                let id = msg.id.as_ref().map_or("null".to_owned(), Value::to_string);
                let line = format!("{{\"jsonrpc\": \"2.0\", \"id\": {id}, \"result\": ]}}\n");
                Verdict::Pass(chunk.part(Bytes::from(line), chunk.at))
            }
            Action::Truncate { bytes } => {
                let body = chunk.data.trim_ascii_end();
                let keep = (*bytes as usize).min(body.len());
                let mut cut = body[..keep].to_vec();
                cut.push(b'\n');
                Verdict::Pass(chunk.part(Bytes::from(cut), chunk.at))
            }
            Action::Inject { text } => {
                let line = Bytes::from(format!("{text}\n"));
                Verdict::Replace(vec![chunk.part(line, chunk.at), chunk])
            }
            Action::Kill { signal } => Verdict::End {
                last: None,
                end: End::Kill(chunk.at, *signal),
            },
            Action::Close => Verdict::End {
                last: None,
                end: End::Close(chunk.at),
            },
            Action::Status { status } => Verdict::Reject(*status, None),
            Action::Hold { count, order } => {
                let at = chunk.at;
                self.held.push(chunk);
                if (self.held.len() as u64) < *count {
                    return Verdict::Drop;
                }
                let mut go = std::mem::take(&mut self.held);
                match order {
                    Order::Arrival => {}
                    Order::Reversed => go.reverse(),
                    Order::Shuffled => rng.shuffle(&mut go),
                }
                for c in &mut go {
                    c.at = at;
                }
                Verdict::Replace(go)
            }
            Action::Stall { ms } => {
                let until = chunk.at + Duration::from_millis(*ms);
                self.stalled_until = Some(self.stalled_until.map_or(until, |u| u.max(until)));
                chunk.at = chunk.at.max(until);
                Verdict::Pass(chunk)
            }
        }
    }

    fn release(&mut self) -> Vec<Chunk> {
        std::mem::take(&mut self.held)
    }

    fn holds(&self, ticket: u64) -> bool {
        self.held
            .iter()
            .any(|c| c.msg.as_ref().is_some_and(|m| m.ticket == ticket))
    }

    fn reconfigure(&mut self, kind: &FaultKind) -> bool {
        match kind {
            FaultKind::Mcp(m) => {
                self.spec = m.clone();
                true
            }
            _ => false,
        }
    }
}

/// A JSON-RPC error response, one line.
pub fn error_line(id: Option<&Value>, code: i64, message: &str) -> Bytes {
    let v = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": code, "message": message},
    });
    let mut line = serde_json::to_vec(&v).expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::ToxicSpec;
    use serde_json::json;
    use std::sync::Arc;
    use tokio::time::Instant;

    fn spec(attrs: Value) -> Result<Mcp, SpecError> {
        let input = serde_json::from_value(json!({"type": "mcp", "attributes": attrs})).unwrap();
        match ToxicSpec::from_input(input)?.kind {
            FaultKind::Mcp(m) => Ok(m),
            other => panic!("{other:?}"),
        }
    }

    fn msg(line: &str, dir: Direction, corr: &mut Correlator) -> Chunk {
        let mut m = Message::parse(line.as_bytes());
        corr.observe(dir, &mut m);
        Chunk {
            data: Bytes::from(format!("{line}\n")),
            at: Instant::now(),
            msg: Some(Arc::new(m)),
            more: false,
        }
    }

    #[test]
    fn parses_kinds_and_tools() {
        let m = Message::parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
        );
        assert_eq!(
            (m.kind, m.method.as_deref(), m.tool.as_deref()),
            (Kind::Request, Some("tools/call"), Some("echo"))
        );
        assert_eq!(
            Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).kind,
            Kind::Notification
        );
        assert_eq!(
            Message::parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).kind,
            Kind::Response
        );
        assert_eq!(
            Message::parse(br#"{"jsonrpc":"2.0","id":2,"error":{"code":1,"message":"x"}}"#).kind,
            Kind::Error
        );
        assert_eq!(Message::parse(b"starting server...").kind, Kind::Other);
        assert_eq!(Message::parse(b"[1,2]").kind, Kind::Other);
    }

    #[test]
    fn responses_are_matched_by_their_request() {
        let mut corr = Correlator::default();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut f = spec(
            json!({"action": "drop", "method": "tools/call", "tool": "slow", "kind": "response"}),
        )
        .unwrap()
        .start();
        msg(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow"}}"#,
            Direction::Upstream,
            &mut corr,
        );
        msg(
            r#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#,
            Direction::Upstream,
            &mut corr,
        );
        let other = msg(
            r#"{"jsonrpc":"2.0","id":8,"result":{}}"#,
            Direction::Downstream,
            &mut corr,
        );
        assert!(matches!(f.on_chunk(other, &mut rng), Verdict::Pass(_)));
        let answer = msg(
            r#"{"jsonrpc":"2.0","id":7,"result":{}}"#,
            Direction::Downstream,
            &mut corr,
        );
        assert_eq!(f.on_chunk(answer, &mut rng), Verdict::Drop);
    }

    #[test]
    fn hold_lets_go_at_the_count_in_order_and_release_gives_back_the_rest() {
        let mut corr = Correlator::default();
        let call = |id: u32, corr: &mut Correlator| {
            msg(
                &format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call"}}"#),
                Direction::Upstream,
                corr,
            )
        };
        let ids = |v: Verdict| -> Vec<u64> {
            let Verdict::Replace(out) = v else {
                panic!("{v:?}")
            };
            out.iter()
                .map(|c| {
                    serde_json::from_slice::<Value>(&c.data).unwrap()["id"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        for (order, want) in [("arrival", vec![1, 2, 3]), ("reversed", vec![3, 2, 1])] {
            let mut rng = fastrand::Rng::with_seed(1);
            let mut f = spec(json!({"action": "hold", "count": 3, "order": order}))
                .unwrap()
                .start();
            assert_eq!(f.on_chunk(call(1, &mut corr), &mut rng), Verdict::Drop);
            assert_eq!(f.on_chunk(call(2, &mut corr), &mut rng), Verdict::Drop);
            assert_eq!(ids(f.on_chunk(call(3, &mut corr), &mut rng)), want);
        }
        // Shuffled: the same seed gives the same order.
        let shuffled = |seed| {
            let mut corr = Correlator::default();
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut f = spec(json!({"action": "hold", "count": 5, "order": "shuffled"}))
                .unwrap()
                .start();
            let mut last = Verdict::Drop;
            for id in 1..=5 {
                last = f.on_chunk(call(id, &mut corr), &mut rng);
            }
            ids(last)
        };
        assert_eq!(shuffled(7), shuffled(7));
        let mut sorted = shuffled(7);
        sorted.sort();
        assert_eq!(sorted, [1, 2, 3, 4, 5]);
        // Removed while holding: what it held comes back.
        let mut rng = fastrand::Rng::with_seed(1);
        let mut f = spec(json!({"action": "hold", "count": 3})).unwrap().start();
        assert_eq!(f.on_chunk(call(9, &mut corr), &mut rng), Verdict::Drop);
        assert_eq!(f.release().len(), 1);
        assert!(f.release().is_empty());
        for (attrs, field) in [
            (json!({"action": "hold", "count": 1}), "attributes.count"),
            (json!({"action": "hold"}), "attributes.count"),
            (
                json!({"action": "hold", "count": 2, "order": "random"}),
                "attributes.order",
            ),
            (json!({"action": "stall"}), "attributes.delay"),
            (
                json!({"action": "drop", "resumed": "yes"}),
                "attributes.resumed",
            ),
        ] {
            assert_eq!(spec(attrs.clone()).unwrap_err().field, field, "{attrs}");
        }
    }

    #[test]
    fn stall_holds_back_everything_behind_the_matching_message() {
        let mut corr = Correlator::default();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut f = spec(json!({"action": "stall", "delay": 500, "method": "a"}))
            .unwrap()
            .start();
        let first = msg(
            r#"{"jsonrpc":"2.0","method":"a"}"#,
            Direction::Downstream,
            &mut corr,
        );
        let t0 = first.at;
        let Verdict::Pass(a) = f.on_chunk(first, &mut rng) else {
            panic!()
        };
        assert_eq!(a.at, t0 + Duration::from_millis(500));
        // Not a match, and still behind the stall.
        let other = msg(
            r#"{"jsonrpc":"2.0","method":"b"}"#,
            Direction::Downstream,
            &mut corr,
        );
        let Verdict::Pass(b) = f.on_chunk(other, &mut rng) else {
            panic!()
        };
        assert_eq!(b.at, t0 + Duration::from_millis(500));
    }

    #[test]
    fn error_answers_a_request_and_replaces_a_response() {
        let mut corr = Correlator::default();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut f = spec(json!({"action": "error", "code": -32000, "message": "boom"}))
            .unwrap()
            .start();
        let req = msg(
            r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
            Direction::Upstream,
            &mut corr,
        );
        let Verdict::Answer(a) = f.on_chunk(req, &mut rng) else {
            panic!()
        };
        let v: Value = serde_json::from_slice(&a.data).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32000, "message": "boom"}})
        );
        let resp = msg(
            r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
            Direction::Downstream,
            &mut corr,
        );
        let Verdict::Pass(p) = f.on_chunk(resp, &mut rng) else {
            panic!()
        };
        assert_eq!(p.data, a.data);
    }

    #[test]
    fn nth_after_and_actions_on_the_bytes() {
        let mut corr = Correlator::default();
        let mut rng = fastrand::Rng::with_seed(1);
        let line = r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#;
        let mut nth = spec(json!({"action": "drop", "nth": 2})).unwrap().start();
        let verdicts: Vec<bool> = (0..4)
            .map(|_| {
                nth.on_chunk(msg(line, Direction::Downstream, &mut corr), &mut rng) == Verdict::Drop
            })
            .collect();
        assert_eq!(verdicts, [false, true, false, false]);
        let mut after = spec(json!({"action": "drop", "after": 2})).unwrap().start();
        let verdicts: Vec<bool> = (0..4)
            .map(|_| {
                after.on_chunk(msg(line, Direction::Downstream, &mut corr), &mut rng)
                    == Verdict::Drop
            })
            .collect();
        assert_eq!(verdicts, [false, false, true, true]);

        let mut t = spec(json!({"action": "truncate", "bytes": 5}))
            .unwrap()
            .start();
        let Verdict::Pass(c) = t.on_chunk(msg(line, Direction::Downstream, &mut corr), &mut rng)
        else {
            panic!()
        };
        assert_eq!(&c.data[..], b"{\"jso\n");
        let mut bad = spec(json!({"action": "malformed"})).unwrap().start();
        let Verdict::Pass(c) = bad.on_chunk(msg(line, Direction::Downstream, &mut corr), &mut rng)
        else {
            panic!()
        };
        assert!(serde_json::from_slice::<Value>(&c.data).is_err());
        let mut dup = spec(json!({"action": "duplicate", "copies": 2}))
            .unwrap()
            .start();
        let Verdict::Replace(v) =
            dup.on_chunk(msg(line, Direction::Downstream, &mut corr), &mut rng)
        else {
            panic!()
        };
        assert_eq!(v.len(), 3);
        // Raw bytes (no message) are never touched.
        let raw = Chunk::bytes(Bytes::from_static(b"x"), Instant::now());
        assert!(matches!(dup.on_chunk(raw, &mut rng), Verdict::Pass(_)));
    }

    #[test]
    fn specs_round_trip_and_bad_ones_name_the_field() {
        let m = spec(json!({"action": "error", "method": "tools/call", "tool": "t", "id": 4, "session": "s", "nth": 2, "code": -1, "message": "m", "probability": 0.5})).unwrap();
        let again = spec(Value::Object(m.attributes())).unwrap();
        assert_eq!(m, again);
        for attrs in [
            json!({"action": "status", "status": 503}),
            json!({"action": "close", "after": 3}),
        ] {
            let m = spec(attrs).unwrap();
            assert_eq!(m, spec(Value::Object(m.attributes())).unwrap());
        }
        for (attrs, field) in [
            (json!({}), "attributes.action"),
            (json!({"action": "explode"}), "attributes.action"),
            (
                json!({"action": "drop", "kind": "reply"}),
                "attributes.kind",
            ),
            (
                json!({"action": "drop", "probability": 2}),
                "attributes.probability",
            ),
            (json!({"action": "drop", "nth": 0}), "attributes.nth"),
            (
                json!({"action": "kill", "signal": "NOPE"}),
                "attributes.signal",
            ),
            (json!({"action": "drop", "method": 5}), "attributes.method"),
            (json!({"action": "drop", "id": {"a": 1}}), "attributes.id"),
            (
                json!({"action": "drop", "frobnicate": 1}),
                "attributes.frobnicate",
            ),
            (json!({"action": "status"}), "attributes.status"),
            (
                json!({"action": "status", "status": 99}),
                "attributes.status",
            ),
            (
                json!({"action": "status", "status": 600}),
                "attributes.status",
            ),
            (
                json!({"action": "drop", "session": 5}),
                "attributes.session",
            ),
        ] {
            assert_eq!(spec(attrs.clone()).unwrap_err().field, field, "{attrs}");
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes read as some message, never a panic.
        #[test]
        fn any_bytes_parse_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::parse(&bytes);
        }

        /// A tools/call and its answer: the request reads as one, and the response, seen in
        /// the other direction, is matched to its method and tool.
        #[test]
        fn answers_are_matched_to_their_requests(
            id in prop_oneof![any::<i64>().prop_map(Value::from), "[ -~]{0,12}".prop_map(Value::from)],
            tool in "[ -~]{0,16}",
            error in any::<bool>(),
        ) {
            let request = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                             "params": {"name": tool}});
            let mut req = Message::parse(request.to_string().as_bytes());
            prop_assert_eq!(req.kind, Kind::Request);
            prop_assert_eq!(req.tool.as_deref(), Some(tool.as_str()));
            let mut corr = Correlator::default();
            corr.observe(Direction::Upstream, &mut req);
            let answer = if error {
                serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": 1, "message": "x"}})
            } else {
                serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {}})
            };
            let mut resp = Message::parse(answer.to_string().as_bytes());
            prop_assert_eq!(resp.kind, if error { Kind::Error } else { Kind::Response });
            corr.observe(Direction::Downstream, &mut resp);
            prop_assert_eq!(resp.method.as_deref(), Some("tools/call"));
            prop_assert_eq!(resp.tool.as_deref(), Some(tool.as_str()));
        }
    }
}
