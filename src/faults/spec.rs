//! Fault specs as the API, CLI and config files give them, validated into typed values.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::message::Mcp;
use super::{
    Bandwidth, Corrupt, Direction, Latency, LimitData, LimitTime, Loss, Partition, RateLimit,
    ResetPeer, Slicer, SlowClose, SlowOpen, Timeout,
};

/// A toxic exactly as a client sent it: nothing checked yet.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ToxicInput {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub stream: Option<String>,
    pub toxicity: Option<f64>,
    pub attributes: Option<Map<String, Value>>,
}

/// Which directions a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Upstream,
    Downstream,
    Both,
}

impl Stream {
    pub fn parse(s: &str) -> Result<Stream, SpecError> {
        match s {
            "upstream" => Ok(Stream::Upstream),
            "downstream" => Ok(Stream::Downstream),
            "both" => Ok(Stream::Both),
            other => Err(SpecError::field(
                "stream",
                format!("expected upstream, downstream or both, got {other:?}"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
            Stream::Both => "both",
        }
    }

    pub fn applies_to(self, direction: Direction) -> bool {
        match self {
            Stream::Both => true,
            Stream::Upstream => direction == Direction::Upstream,
            Stream::Downstream => direction == Direction::Downstream,
        }
    }
}

/// A fault type with its validated attributes. One variant per fault.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    Noop,
    Latency(Latency),
    Bandwidth(Bandwidth),
    SlowClose(SlowClose),
    Timeout(Timeout),
    ResetPeer(ResetPeer),
    Slicer(Slicer),
    LimitData(LimitData),
    Partition(Partition),
    Loss(Loss),
    LimitTime(LimitTime),
    SlowOpen(SlowOpen),
    Corrupt(Corrupt),
    /// A fault on whole JSON-RPC messages, on links that frame them.
    Mcp(Mcp),
    /// A server's rate limit on requests, on links that frame messages.
    RateLimit(RateLimit),
}

impl FaultKind {
    pub const TYPES: &'static [&'static str] = &[
        "latency",
        "bandwidth",
        "slow_close",
        "timeout",
        "reset_peer",
        "slicer",
        "limit_data",
        "partition",
        "loss",
        "limit_time",
        "slow_open",
        "corrupt",
        "noop",
        "mcp",
        "rate_limit",
    ];

    pub fn type_name(&self) -> &'static str {
        match self {
            FaultKind::Noop => "noop",
            FaultKind::Latency(_) => "latency",
            FaultKind::Bandwidth(_) => "bandwidth",
            FaultKind::SlowClose(_) => "slow_close",
            FaultKind::Timeout(_) => "timeout",
            FaultKind::ResetPeer(_) => "reset_peer",
            FaultKind::Slicer(_) => "slicer",
            FaultKind::LimitData(_) => "limit_data",
            FaultKind::Partition(_) => "partition",
            FaultKind::Loss(_) => "loss",
            FaultKind::LimitTime(_) => "limit_time",
            FaultKind::SlowOpen(_) => "slow_open",
            FaultKind::Corrupt(_) => "corrupt",
            FaultKind::Mcp(_) => "mcp",
            FaultKind::RateLimit(_) => "rate_limit",
        }
    }

    /// Parse `attributes` for the fault type `kind`. Missing attributes are 0, as in
    /// Toxiproxy; unknown ones are refused so that a typo is not silently ignored.
    pub fn parse(kind: &str, attributes: &Map<String, Value>) -> Result<FaultKind, SpecError> {
        let mut a = Attrs::new(kind, attributes);
        let fault = match kind {
            "noop" => FaultKind::Noop,
            "latency" => FaultKind::Latency(Latency::parse(&mut a)?),
            "bandwidth" => FaultKind::Bandwidth(Bandwidth::parse(&mut a)?),
            "slow_close" => FaultKind::SlowClose(SlowClose::parse(&mut a)?),
            "timeout" => FaultKind::Timeout(Timeout::parse(&mut a)?),
            "reset_peer" => FaultKind::ResetPeer(ResetPeer::parse(&mut a)?),
            "slicer" => FaultKind::Slicer(Slicer::parse(&mut a)?),
            "limit_data" => FaultKind::LimitData(LimitData::parse(&mut a)?),
            "partition" => FaultKind::Partition(Partition::parse(&mut a)?),
            "loss" => FaultKind::Loss(Loss::parse(&mut a)?),
            "limit_time" => FaultKind::LimitTime(LimitTime::parse(&mut a)?),
            "slow_open" => FaultKind::SlowOpen(SlowOpen::parse(&mut a)?),
            "corrupt" => FaultKind::Corrupt(Corrupt::parse(&mut a)?),
            "mcp" => FaultKind::Mcp(Mcp::parse(&mut a)?),
            "rate_limit" => FaultKind::RateLimit(RateLimit::parse(&mut a)?),
            other => {
                return Err(SpecError::field(
                    "type",
                    format!(
                        "unknown toxic type {other:?} (known: {})",
                        FaultKind::TYPES.join(", ")
                    ),
                ));
            }
        };
        a.finish()?;
        Ok(fault)
    }

    /// The attributes as the API shows them.
    pub fn attributes(&self) -> Map<String, Value> {
        let pairs: Vec<(&str, u64)> = match self {
            FaultKind::Noop => vec![],
            FaultKind::Latency(l) => vec![("latency", l.latency), ("jitter", l.jitter)],
            FaultKind::Bandwidth(b) => vec![("rate", b.rate)],
            FaultKind::SlowClose(s) => vec![("delay", s.delay)],
            FaultKind::Timeout(t) => vec![("timeout", t.timeout)],
            FaultKind::ResetPeer(r) => vec![("timeout", r.timeout)],
            FaultKind::Slicer(s) => vec![
                ("average_size", s.average_size),
                ("size_variation", s.size_variation),
                ("delay", s.delay),
            ],
            FaultKind::LimitData(l) => vec![("bytes", l.bytes)],
            FaultKind::LimitTime(l) => vec![("time", l.time)],
            FaultKind::SlowOpen(o) => vec![("delay", o.delay)],
            FaultKind::Partition(p) => return p.attributes(),
            FaultKind::Loss(l) => return l.attributes(),
            FaultKind::Corrupt(c) => return c.attributes(),
            FaultKind::Mcp(m) => return m.attributes(),
            FaultKind::RateLimit(r) => return r.attributes(),
        };
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect()
    }
}

/// What a fault runs on, and so what it can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A raw TCP proxy: byte streams.
    Tcp,
    /// `brownout stdio`: one JSON-RPC message per line, one server process.
    Stdio,
    /// An HTTP-mode proxy: MCP over Streamable HTTP.
    Http,
    /// The in-process rmcp wrapper: whole messages, no bytes.
    Wrapper,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Stdio => "stdio",
            Transport::Http => "http",
            Transport::Wrapper => "wrapper",
        }
    }
}

impl FaultKind {
    /// A fault that acts on a connection as a whole, whatever travels on it: an HTTP-mode
    /// proxy runs it per client connection, not in the conversation of the whole proxy.
    pub fn per_connection(&self) -> bool {
        matches!(self, FaultKind::LimitTime(_))
    }

    /// Refuse a fault that would do nothing on `transport`, rather than accept it and
    /// ignore it.
    pub fn check_transport(&self, transport: Transport) -> Result<(), SpecError> {
        use Transport::{Http, Stdio, Tcp, Wrapper};
        let why = match (self, transport) {
            (FaultKind::RateLimit(_), Tcp) => {
                "it limits JSON-RPC requests, and a TCP proxy sees bytes (use an http proxy)"
            }
            (FaultKind::RateLimit(r), Stdio | Wrapper)
                if r.reply == super::rate_limit::Reply::Status =>
            {
                "reply \"status\" is an HTTP status; use reply \"error\" or \"queue\" here"
            }
            (FaultKind::SlowOpen(_), Stdio | Http | Wrapper) => {
                "it delays dialling the upstream, and there is no dial per connection here"
            }
            (FaultKind::SlowClose(_), Http) => {
                "it holds back the end of a byte stream, and an HTTP-mode proxy ends a client's \
                 connection only when the client does or a fault ends it (use latency or timeout)"
            }
            _ => return Ok(()),
        };
        Err(SpecError::field(
            "type",
            format!(
                "{} is not supported on {} proxies: {why}",
                self.type_name(),
                transport.as_str()
            ),
        ))
    }
}

/// A validated toxic: what the control plane stores and links run.
#[derive(Clone, Debug, PartialEq)]
pub struct ToxicSpec {
    pub name: String,
    pub kind: FaultKind,
    pub stream: Stream,
    pub toxicity: f64,
}

impl ToxicSpec {
    /// Validate a new toxic, applying Toxiproxy's defaults: stream `downstream`, toxicity 1,
    /// name `<type>_<stream>`.
    pub fn from_input(input: ToxicInput) -> Result<ToxicSpec, SpecError> {
        let kind = match input.kind.as_deref() {
            None | Some("") => return Err(SpecError::field("type", "missing required field")),
            Some(k) => k,
        };
        let stream = Stream::parse(input.stream.as_deref().unwrap_or("downstream"))?;
        let toxicity = check_toxicity(input.toxicity.unwrap_or(1.0))?;
        let kind = FaultKind::parse(kind, &input.attributes.unwrap_or_default())?;
        let name = match input.name {
            Some(n) if !n.is_empty() => n,
            _ => format!("{}_{}", kind.type_name(), stream.as_str()),
        };
        check_name(&name)?;
        Ok(ToxicSpec {
            name,
            kind,
            stream,
            toxicity,
        })
    }

    /// Apply a partial update: given attributes replace the current ones one by one, and a
    /// given toxicity replaces the current one. Name, type and stream stay.
    pub fn merged(&self, patch: ToxicInput) -> Result<ToxicSpec, SpecError> {
        let mut attributes = self.kind.attributes();
        attributes.extend(patch.attributes.unwrap_or_default());
        let toxicity = match patch.toxicity {
            Some(t) => check_toxicity(t)?,
            None => self.toxicity,
        };
        Ok(ToxicSpec {
            name: self.name.clone(),
            kind: FaultKind::parse(self.kind.type_name(), &attributes)?,
            stream: self.stream,
            toxicity,
        })
    }
}

impl Serialize for ToxicSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Field order as Toxiproxy writes it.
        #[derive(Serialize)]
        struct View<'a> {
            attributes: Map<String, Value>,
            name: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            stream: &'a str,
            toxicity: f64,
        }
        View {
            attributes: self.kind.attributes(),
            name: &self.name,
            kind: self.kind.type_name(),
            stream: self.stream.as_str(),
            toxicity: self.toxicity,
        }
        .serialize(s)
    }
}

fn check_toxicity(t: f64) -> Result<f64, SpecError> {
    if (0.0..=1.0).contains(&t) {
        Ok(t)
    } else {
        Err(SpecError::field(
            "toxicity",
            format!("must be between 0 and 1, got {t}"),
        ))
    }
}

/// Names appear in URL paths, so they must be usable there without escaping.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SpecError::field(
            "name",
            format!("{name:?} must be 1 to 200 characters of A-Z a-z 0-9 - _ . ~"),
        ))
    }
}

/// A spec that failed validation, naming the field that was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Reads a fault's attributes one at a time and notices the ones nobody asked for.
pub(super) struct Attrs<'a> {
    kind: &'a str,
    map: &'a Map<String, Value>,
    seen: Vec<&'static str>,
}

/// Upper bound for any time attribute: one day, in the attribute's unit.
pub(super) const DAY_MS: u64 = 86_400_000;

impl<'a> Attrs<'a> {
    fn new(kind: &'a str, map: &'a Map<String, Value>) -> Self {
        Attrs {
            kind,
            map,
            seen: Vec::new(),
        }
    }

    /// A non-negative integer attribute no larger than `max`; 0 when absent.
    pub(super) fn uint(
        &mut self,
        key: &'static str,
        unit: &str,
        max: u64,
    ) -> Result<u64, SpecError> {
        self.seen.push(key);
        let field = || format!("attributes.{key}");
        let value = match self.map.get(key) {
            None | Some(Value::Null) => return Ok(0),
            Some(v) => v,
        };
        let n = match value {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            }),
            _ => None,
        };
        match n {
            Some(n) if n <= max => Ok(n),
            Some(n) => Err(SpecError::field(
                field(),
                format!("{n} {unit} is more than the maximum of {max}"),
            )),
            None => Err(SpecError::field(
                field(),
                format!("expected a non-negative whole number of {unit}, got {value}"),
            )),
        }
    }

    /// Like [`Attrs::uint`], but `None` when absent.
    pub(super) fn opt_uint(
        &mut self,
        key: &'static str,
        unit: &str,
        max: u64,
    ) -> Result<Option<u64>, SpecError> {
        match self.map.get(key) {
            None | Some(Value::Null) => {
                self.seen.push(key);
                Ok(None)
            }
            Some(_) => self.uint(key, unit, max).map(Some),
        }
    }

    /// `key`'s value as `convert` reads it, or `None` when absent; a value it cannot read
    /// is an error saying what was `expected`.
    fn optional<T>(
        &mut self,
        key: &'static str,
        expected: &str,
        convert: impl FnOnce(&Value) -> Option<T>,
    ) -> Result<Option<T>, SpecError> {
        self.seen.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => convert(v).map(Some).ok_or_else(|| {
                SpecError::field(
                    format!("attributes.{key}"),
                    format!("expected {expected}, got {v}"),
                )
            }),
        }
    }

    /// A whole number in `min..=max`, or `None` when absent.
    pub(super) fn int(
        &mut self,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, SpecError> {
        let expected = format!("a whole number from {min} to {max}");
        self.optional(key, &expected, |v| {
            v.as_i64().filter(|n| (min..=max).contains(n))
        })
    }

    /// A probability from 0 to 1, or `default` when absent.
    pub(super) fn probability(
        &mut self,
        key: &'static str,
        default: f64,
    ) -> Result<f64, SpecError> {
        let p = self.float(key)?.unwrap_or(default);
        if (0.0..=1.0).contains(&p) {
            Ok(p)
        } else {
            Err(SpecError::field(
                format!("attributes.{key}"),
                format!("must be between 0 and 1, got {p}"),
            ))
        }
    }

    /// A number, or `None` when absent.
    pub(super) fn float(&mut self, key: &'static str) -> Result<Option<f64>, SpecError> {
        self.optional(key, "a number", Value::as_f64)
    }

    /// true or false, or `None` when absent.
    pub(super) fn boolean(&mut self, key: &'static str) -> Result<Option<bool>, SpecError> {
        self.optional(key, "true or false", Value::as_bool)
    }

    /// A string, or `None` when absent.
    pub(super) fn string(&mut self, key: &'static str) -> Result<Option<String>, SpecError> {
        self.optional(key, "a string", |v| v.as_str().map(str::to_owned))
    }

    /// A string or a number (a JSON-RPC id, a signal), or `None` when absent.
    pub(super) fn scalar(&mut self, key: &'static str) -> Result<Option<Value>, SpecError> {
        self.optional(key, "a string or a number", |v| {
            matches!(v, Value::String(_) | Value::Number(_)).then(|| v.clone())
        })
    }

    fn finish(self) -> Result<(), SpecError> {
        match self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(SpecError::field(
                format!("attributes.{k}"),
                if self.seen.is_empty() {
                    format!("{} takes no attributes", self.kind)
                } else {
                    format!(
                        "unknown attribute for {} (known: {})",
                        self.kind,
                        self.seen.join(", ")
                    )
                },
            )),
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Attribute names the faults read, and one they do not.
    const KEYS: &[&str] = &[
        "latency",
        "jitter",
        "rate",
        "average_size",
        "size_variation",
        "delay",
        "bytes",
        "timeout",
        "probability",
        "rto",
        "mode",
        "time",
        "bits",
        "burst",
        "method",
        "tool",
        "session",
        "reply",
        "code",
        "message",
        "action",
        "count",
        "nth",
        "after",
        "every",
        "colour",
    ];

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-5i64..100_000).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-2.0f64..2.0).prop_map(Value::from),
            "[a-z/_]{0,10}".prop_map(Value::from),
            Just(Value::Array(vec![])),
        ]
    }

    fn input() -> impl Strategy<Value = ToxicInput> {
        let kind = prop_oneof![
            proptest::sample::select(FaultKind::TYPES).prop_map(|t| Some(t.to_owned())),
            proptest::option::of("[a-z_]{0,10}"),
        ];
        let stream = proptest::option::of(prop_oneof![
            Just("upstream".to_owned()),
            Just("downstream".to_owned()),
            Just("both".to_owned()),
            "[a-z]{0,6}",
        ]);
        let attributes = proptest::option::of(proptest::collection::btree_map(
            proptest::sample::select(KEYS).prop_map(str::to_owned),
            value(),
            0..5,
        ));
        (
            proptest::option::of("[a-z0-9_./ -]{0,8}"),
            kind,
            stream,
            proptest::option::of(-0.5f64..1.5),
            attributes,
        )
            .prop_map(|(name, kind, stream, toxicity, attributes)| ToxicInput {
                name,
                kind,
                stream,
                toxicity,
                attributes: attributes.map(|a| a.into_iter().collect()),
            })
    }

    proptest! {
        /// Any toxic is accepted or refused, never a panic; what is accepted, written out
        /// as the API writes it and read again, is the same toxic.
        #[test]
        fn accepted_toxics_read_back_the_same(input in input()) {
            if let Ok(spec) = ToxicSpec::from_input(input) {
                let json = serde_json::to_value(&spec).unwrap();
                let again: ToxicInput = serde_json::from_value(json).unwrap();
                prop_assert_eq!(ToxicSpec::from_input(again), Ok(spec));
            }
        }
    }
}
