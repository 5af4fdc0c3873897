//! The HTTP API: Toxiproxy's, so its clients work unchanged.
//!
//! Handlers only parse, validate and translate: each request becomes one or two calls on a
//! [`ControlHandle`], and the reply becomes JSON.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{ControlError, ControlHandle, GuestAction, NewProxy, ProxyInput, ProxyPatch};
use crate::faults::{Direction, SpecError, ToxicInput, ToxicSpec};
use crate::vm::{GuestSpec, Snapshot, VmError};

/// The default API address, as Toxiproxy's.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8474";
/// Bodies larger than this are refused.
const MAX_BODY: usize = 1 << 20;
const REQUEST_ID: &str = "x-toxiproxy-request-id";

type Body = BoxBody<Bytes, Infallible>;

/// Serve the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    control: ControlHandle,
    shutdown: impl Future<Output = ()>,
) {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "api accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let control = control.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(handle(req, &control).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "api connection") },
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    // A reader following /events never finishes on its own.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
                }
            }
        });
    }
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

/// One request to one response. Public so that embedding code can mount the API on its own
/// server.
pub async fn handle(req: Request<Incoming>, control: &ControlHandle) -> Response<Body> {
    let mut resp = route(req, control).await.unwrap_or_else(|e| e.response());
    let id: String = std::iter::repeat_with(|| fastrand::alphanumeric().to_ascii_lowercase())
        .take(20)
        .collect();
    resp.headers_mut().insert(
        REQUEST_ID,
        HeaderValue::from_str(&id).expect("alphanumeric"),
    );
    resp
}

/// An error as the API reports it: `{"error": "...", "status": N}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn response(&self) -> Response<Body> {
        json(
            self.status,
            &serde_json::json!({"error": self.message, "status": self.status.as_u16()}),
        )
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match &e {
            ControlError::ProxyNotFound | ControlError::ToxicNotFound => StatusCode::NOT_FOUND,
            ControlError::ProxyExists | ControlError::ToxicExists => StatusCode::CONFLICT,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Listen { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ControlError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Guest(g) => match g {
                VmError::Invalid(_) => StatusCode::BAD_REQUEST,
                VmError::NotFound => StatusCode::NOT_FOUND,
                VmError::Exists | VmError::NotRunning(_) => StatusCode::CONFLICT,
                VmError::NotReady { .. } | VmError::ExitedEarly { .. } => StatusCode::BAD_GATEWAY,
                VmError::Setup(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        let message = match &e {
            ControlError::Invalid(s) => invalid_message(s),
            other => other.to_string(),
        };
        ApiError::new(status, message)
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, invalid_message(&e))
    }
}

/// Toxiproxy's words first, so scripts that look for them still find them, then ours
/// naming the field: "missing required field: name", "invalid toxic type: type: unknown
/// toxic type ...", "stream was invalid, can be either upstream or downstream: stream:
/// ...", "bad request body: toxicity: must be between 0 and 1, got 2".
fn invalid_message(e: &SpecError) -> String {
    match e.field.as_str() {
        "type" => format!("invalid toxic type: {e}"),
        "stream" => format!("stream was invalid, can be either upstream or downstream: {e}"),
        _ if e.message == "missing required field" => {
            format!("missing required field: {}", e.field)
        }
        _ => format!("bad request body: {e}"),
    }
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("API values serialize");
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()).boxed())
        .expect("valid response")
}

async fn raw_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Ok(Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))?
        .to_bytes())
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = raw_body(req).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

async fn route(
    req: Request<Incoming>,
    control: &ControlHandle,
) -> Result<Response<Body>, ApiError> {
    // As Toxiproxy: keep browsers' cross-site requests away from the API.
    if req
        .headers()
        .get(USER_AGENT)
        .is_some_and(|ua| ua.as_bytes().starts_with(b"Mozilla/"))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "User agent not allowed",
        ));
    }
    let path: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let update = method == Method::PATCH || method == Method::POST;
    match (segments.as_slice(), &method) {
        (["reset"], &Method::POST) => {
            control.reset().await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["version"], &Method::GET) => Ok(Response::builder()
            .header(CONTENT_TYPE, "application/json;charset=utf-8")
            .body(
                Full::new(Bytes::from(format!(
                    "{{\"version\": \"{}\"}}\n",
                    env!("CARGO_PKG_VERSION")
                )))
                .boxed(),
            )
            .expect("valid response")),
        (["metrics"], &Method::GET) => Ok(Response::builder()
            .header(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(metrics(control).await?)).boxed())
            .expect("valid response")),
        (["events"], &Method::GET) => Ok(events(control)),
        (["resources"], &Method::GET) => Ok(json(StatusCode::OK, &Snapshot::take())),
        (["guests"], &Method::GET) => Ok(json(StatusCode::OK, &control.guests().await?)),
        (["guests"], &Method::POST) => {
            let wait = !req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "wait=false"));
            let bytes = raw_body(req).await?;
            let spec = GuestSpec::from_json(&bytes).map_err(ControlError::from)?;
            Ok(json(
                StatusCode::CREATED,
                &control.spawn_guest(spec, wait).await?,
            ))
        }
        (["guests", name], &Method::GET) => Ok(json(StatusCode::OK, &control.guest(name).await?)),
        (["guests", name], &Method::DELETE) => {
            Ok(json(StatusCode::OK, &control.delete_guest(name).await?))
        }
        (["guests", name, action], &Method::POST) => {
            let mib = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("mib="))
                    .map(str::to_owned)
            });
            let action: GuestAction = match (*action, mib) {
                ("press-memory", Some(m)) => GuestAction::PressMemory(m.parse().map_err(|_| {
                    ControlError::from(SpecError::field(
                        "mib",
                        format!("{m:?} is not a number of MiB"),
                    ))
                })?),
                _ => action.parse().map_err(ControlError::from)?,
            };
            Ok(json(
                StatusCode::OK,
                &control.guest_action(name, action).await?,
            ))
        }
        (["proxies"], &Method::GET) => {
            let map: serde_json::Map<String, serde_json::Value> = control
                .list()
                .await?
                .into_iter()
                .map(|p| (p.name.clone(), serde_json::to_value(p).expect("serializes")))
                .collect();
            Ok(json(StatusCode::OK, &map))
        }
        (["proxies"], &Method::POST) => {
            let input: ProxyInput = body(req).await?;
            let p = NewProxy::from_input(input, None)?;
            Ok(json(StatusCode::CREATED, &control.create(p).await?))
        }
        (["populate"], &Method::POST) => {
            let populated = async {
                let input: Vec<ProxyInput> = body(req).await?;
                let list = input
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| NewProxy::from_input(p, Some(i)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, ApiError>(control.populate(list).await?)
            };
            match populated.await {
                Ok(proxies) => Ok(json(
                    StatusCode::CREATED,
                    &serde_json::json!({ "proxies": proxies }),
                )),
                // Toxiproxy's shape: the error, and the proxies it made. Populate is
                // all-or-nothing here, so a failed one made none.
                Err(e) => Ok(json(
                    e.status,
                    &serde_json::json!({"error": e.message, "status": e.status.as_u16(),
                                        "proxies": []}),
                )),
            }
        }
        (["proxies", name], &Method::GET) => Ok(json(StatusCode::OK, &control.get(name).await?)),
        (["proxies", name], _) if update => {
            // Look the proxy up first: an unknown proxy is a 404 whatever the body says.
            control.get(name).await?;
            let patch = ProxyPatch::from_input(body(req).await?)?;
            Ok(json(StatusCode::OK, &control.update(name, patch).await?))
        }
        (["proxies", name], &Method::DELETE) => {
            control.delete(name).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["proxies", name, "toxics"], &Method::GET) => {
            Ok(json(StatusCode::OK, &control.get(name).await?.toxics))
        }
        (["proxies", name, "toxics"], &Method::POST) => {
            control.get(name).await?;
            let input: ToxicInput = body(req).await?;
            let spec = ToxicSpec::from_input(input)?;
            // Toxiproxy answers 200 here, not 201.
            Ok(json(StatusCode::OK, &control.add_toxic(name, spec).await?))
        }
        (["proxies", name, "toxics", toxic], &Method::GET) => {
            Ok(json(StatusCode::OK, &control.toxic(name, toxic).await?))
        }
        (["proxies", name, "toxics", toxic], _) if update => {
            // Not found before a bad body, as Toxiproxy answers.
            control.toxic(name, toxic).await?;
            let patch: ToxicInput = body(req).await?;
            Ok(json(
                StatusCode::OK,
                &control.update_toxic(name, toxic, patch).await?,
            ))
        }
        (["proxies", name, "toxics", toxic], &Method::DELETE) => {
            control.remove_toxic(name, toxic).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["reset" | "version" | "metrics" | "populate" | "events"], _)
        | (["proxies"], _)
        | (["proxies", _], _)
        | (["proxies", _, "toxics"], _)
        | (["proxies", _, "toxics", _], _) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed on {}", req.uri().path()),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {}", req.uri().path()),
        )),
    }
}

/// Prometheus text format: per proxy and direction, bytes and connections, and how often
/// each toxic acted.
async fn metrics(control: &ControlHandle) -> Result<String, ApiError> {
    let snap = control.snapshot().await?;
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
    let labels = |p: &super::ProxySnapshot| {
        format!(
            "proxy=\"{}\",listener=\"{}\",upstream=\"{}\"",
            p.name,
            escape(&p.listen),
            escape(&p.upstream)
        )
    };
    let dirs = [Direction::Upstream, Direction::Downstream];
    family(
        "brownout_proxy_received_bytes_total",
        "counter",
        "Bytes read from the source of each direction.",
        &mut snap.iter().flat_map(|p| {
            dirs.iter().map(|d| {
                (
                    format!("{},direction=\"{d}\"", labels(p)),
                    p.stats.direction(*d).received(),
                )
            })
        }),
    );
    family(
        "brownout_proxy_sent_bytes_total",
        "counter",
        "Bytes written to the destination of each direction.",
        &mut snap.iter().flat_map(|p| {
            dirs.iter().map(|d| {
                (
                    format!("{},direction=\"{d}\"", labels(p)),
                    p.stats.direction(*d).sent(),
                )
            })
        }),
    );
    family(
        "brownout_proxy_connections_total",
        "counter",
        "Connections accepted.",
        &mut snap.iter().map(|p| (labels(p), p.stats.connections())),
    );
    family(
        "brownout_proxy_active_connections",
        "gauge",
        "Connections open now.",
        &mut snap.iter().map(|p| (labels(p), p.stats.active())),
    );
    family(
        "brownout_toxic_applied_total",
        "counter",
        "Times each toxic acted on a chunk or ended a connection.",
        &mut snap.iter().flat_map(|p| {
            p.stats.toxic_counts().into_iter().map(|(t, d, n)| {
                (
                    format!("{},toxic=\"{}\",direction=\"{d}\"", labels(p), escape(&t)),
                    n,
                )
            })
        }),
    );
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Follow the event history live: one JSON line per message that HTTP-mode proxies see,
/// from now on, until the reader goes away. A reader too slow to keep up is told how many
/// events it missed (`{"lagged": N}`) rather than slowing the proxies down.
fn events(control: &ControlHandle) -> Response<Body> {
    let mut events = control.events();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                e = events.recv() => e,
                () = tx.closed() => return,
            };
            let line = match next {
                Ok(e) => {
                    let mut line = serde_json::to_vec(&*e).expect("events serialize");
                    line.push(b'\n');
                    line
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    format!("{{\"lagged\": {n}}}\n").into_bytes()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header(CONTENT_TYPE, "application/x-ndjson")
        .body(crate::proxy::http::ChannelBody(rx).boxed())
        .expect("valid response")
}
