//! Proxies on other brownout servers (sidecars), driven through their HTTP API: one
//! scenario, a fleet of brownouts. Their event histories are followed (`GET /events`) and
//! merged into the run's, so triggers and the results see every proxy alike.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::faults::ToxicSpec;
use crate::proxy::events::{Event, EventSink};

/// How long one API call to a sidecar may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One brownout server, by its API address (`host:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub api: String,
}

impl Remote {
    /// Create an HTTP-mode proxy in front of `upstream`; the address it listens on.
    pub async fn create(&self, name: &str, upstream: &str) -> Result<String, String> {
        let body = json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream,
                          "protocol": "http", "enabled": true});
        let v = self.call(Method::POST, "/proxies", Some(body)).await?;
        v["listen"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{}: no listen address in {v}", self.api))
    }

    pub async fn delete(&self, name: &str) -> Result<(), String> {
        self.call(Method::DELETE, &format!("/proxies/{name}"), None)
            .await
            .map(drop)
    }

    pub async fn add_toxic(&self, proxy: &str, toxic: &ToxicSpec) -> Result<(), String> {
        let body = serde_json::to_value(toxic).map_err(|e| e.to_string())?;
        self.call(
            Method::POST,
            &format!("/proxies/{proxy}/toxics"),
            Some(body),
        )
        .await
        .map(drop)
    }

    pub async fn remove_toxic(&self, proxy: &str, toxic: &str) -> Result<(), String> {
        let path = format!("/proxies/{proxy}/toxics/{toxic}");
        self.call(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn set_enabled(&self, proxy: &str, enabled: bool) -> Result<(), String> {
        let body = json!({ "enabled": enabled });
        self.call(Method::POST, &format!("/proxies/{proxy}"), Some(body))
            .await
            .map(drop)
    }

    /// Follow the sidecar's event history into `sink` until the task is aborted or the
    /// sidecar closes the stream. Returns once the stream is open, so nothing after this
    /// call is missed.
    pub async fn follow(&self, sink: EventSink) -> Result<JoinHandle<()>, String> {
        let mut body = self.open(Method::GET, "/events", None).await?;
        Ok(tokio::spawn(async move {
            let mut pending: Vec<u8> = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&line)
                        && let Some(e) = Event::from_json(&v)
                    {
                        sink.emit(e);
                    }
                }
                // A line longer than any event: not a history; stop rather than grow.
                if pending.len() > 1 << 20 {
                    return;
                }
            }
        }))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let what = format!("{} {method} {path}", self.api);
        let call = async {
            let (status, body) = {
                let resp = self.request(method.clone(), path, body).await?;
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                (status, bytes)
            };
            let v: Value = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).map_err(|e| format!("not JSON ({e})"))?
            };
            if status.is_success() {
                Ok(v)
            } else {
                let why = v["error"].as_str().unwrap_or("no reason given").to_owned();
                Err(format!("{}: {why}", status.as_u16()))
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r.map_err(|e| format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {CALL_TIMEOUT:?}")),
        }
    }

    /// A response's body, once its status said it is there.
    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<hyper::body::Incoming, String> {
        let what = format!("{} {method} {path}", self.api);
        let resp = tokio::time::timeout(CALL_TIMEOUT, self.request(method, path, body))
            .await
            .map_err(|_| format!("{what}: no answer within {CALL_TIMEOUT:?}"))?
            .map_err(|e| format!("{what}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{what}: {}", resp.status()));
        }
        Ok(resp.into_body())
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let stream = TcpStream::connect(&self.api)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.api)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())
    }
}
