//! The gateway on a real listener, stub OpenAI engines on others, and a plain
//! HTTP client: what every integration test starts from.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aleph_gateway::{
    Authenticators, Endpoint, Gateway, GatewayConfig, GatewayState, KeyInfo, ManualClock, Model,
    Snapshot, TenantLimits, Track,
};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Tenant `acme`'s key.
pub const ACME_KEY: &str = "sk-aleph-acme-test-key";
/// Tenant `globex`'s key.
pub const GLOBEX_KEY: &str = "sk-aleph-globex-test-key";
/// The clock's start: 10 s into a UTC minute.
pub const START: Duration = Duration::from_secs(1_750_000_020 + 10);

/// A running gateway.
pub struct Harness {
    pub gateway: Gateway,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub clock: Arc<ManualClock>,
}

impl Harness {
    /// A gateway on 127.0.0.1:0 with `config`, serving `snapshot`, synced.
    pub async fn start(config: GatewayConfig, snapshot: Snapshot) -> Harness {
        let harness = Harness::start_unsynced(config).await;
        harness.gateway.state().replace(snapshot);
        harness.gateway.state().mark_synced();
        harness
    }

    /// A gateway authenticating API keys and what `authenticators` enables,
    /// serving `snapshot`, synced.
    pub async fn start_with(
        config: GatewayConfig,
        snapshot: Snapshot,
        authenticators: Authenticators,
    ) -> Harness {
        let harness = Harness::start_unsynced_with(config, authenticators).await;
        harness.gateway.state().replace(snapshot);
        harness.gateway.state().mark_synced();
        harness
    }

    /// A gateway with an empty state, not yet synced.
    pub async fn start_unsynced(config: GatewayConfig) -> Harness {
        Harness::start_unsynced_with(config, Authenticators::api_keys_only()).await
    }

    async fn start_unsynced_with(config: GatewayConfig, authenticators: Authenticators) -> Harness {
        let clock = Arc::new(ManualClock::new(START));
        let mut registry = Registry::default();
        let gateway = Gateway::with_authenticators(
            config,
            Arc::new(GatewayState::new()),
            clock.clone(),
            &mut registry,
            authenticators,
        );
        let addr = serve(gateway.api()).await;
        let metrics_addr = serve(aleph_gateway::api::metrics_router(Arc::new(registry))).await;
        Harness {
            gateway,
            addr,
            metrics_addr,
            clock,
        }
    }

    /// `POST path` with an optional bearer key and a raw body.
    pub async fn post_raw(&self, path: &str, key: Option<&str>, body: Vec<u8>) -> Reply {
        let response = self.send(path, key, body).await;
        Reply::read(response).await
    }

    /// `POST path` with `key` and a JSON body.
    pub async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.post_raw(path, Some(key), body.to_string().into_bytes())
            .await
    }

    /// `POST path`, returning the response with its body unread.
    pub async fn send(
        &self,
        path: &str,
        key: Option<&str>,
        body: Vec<u8>,
    ) -> hyper::Response<Incoming> {
        let mut request = hyper::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        client().request(request).await.expect("gateway answers")
    }

    /// `GET path` on the API listener.
    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        get(self.addr, path, key).await
    }

    /// The value of one series in `/metrics`, 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let text = get(self.metrics_addr, "/metrics", None).await.text();
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .filter(|line| {
                labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|line| {
                line.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .map_or(0, |v| v as u64)
            })
            .sum()
    }
}

/// A plain HTTP/1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `GET http://addr/path`.
pub async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> Reply {
    let mut request = hyper::Request::get(format!("http://{addr}{path}"));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    Reply::read(client().request(request).await.expect("answers")).await
}

/// Serves `router` on 127.0.0.1:0.
pub async fn serve<S>(service: S) -> SocketAddr
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let listener = aleph_gateway::api::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = axum::serve::Listener::local_addr(&listener).expect("addr");
    let service = axum::ServiceExt::<axum::extract::Request>::into_make_service(service);
    tokio::spawn(async move { axum::serve(listener, service).await });
    addr
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub async fn read(response: hyper::Response<Incoming>) -> Reply {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The OpenAI error's `code`.
    pub fn error_code(&self) -> String {
        let json = self.json();
        let error = &json["error"];
        assert!(error["message"].is_string(), "error shape: {json}");
        assert!(error["type"].is_string(), "error shape: {json}");
        assert!(error.get("param").is_some(), "error shape: {json}");
        error["code"].as_str().unwrap_or_default().to_owned()
    }

    /// Asserts that the reply is an OpenAI error with `status` and `code`.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.error_code(), code);
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    /// Which stub answered.
    pub fn stub(&self) -> String {
        self.headers
            .get("x-stub")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// A stub OpenAI engine. Requests steer it with extra fields, which the
/// gateway forwards untouched: `stub_delay_ms` (before answering),
/// `stub_chunks` and `stub_chunk_delay_ms` (a stream's length and pace),
/// `stub_gate` (a stream waits for [`Stub::open_gate`] before its last chunk).
/// Usage: one prompt token per whitespace-separated word of the prompt, and
/// `max_tokens` (default 7) completion tokens.
#[derive(Clone)]
pub struct Stub {
    inner: Arc<StubInner>,
}

struct StubInner {
    name: String,
    hits: AtomicUsize,
    unavailable: AtomicBool,
    bodies: Mutex<Vec<Value>>,
    gate: Notify,
    cancelled: AtomicBool,
}

impl Stub {
    /// A stub named `name` (its `x-stub` header), listening on 127.0.0.1:0.
    pub async fn start(name: &str) -> (Stub, SocketAddr) {
        let stub = Stub {
            inner: Arc::new(StubInner {
                name: name.to_owned(),
                hits: AtomicUsize::new(0),
                unavailable: AtomicBool::new(false),
                bodies: Mutex::new(Vec::new()),
                gate: Notify::new(),
                cancelled: AtomicBool::new(false),
            }),
        };
        let router = axum::Router::new()
            .fallback(answer)
            .with_state(stub.clone());
        (stub, serve(router).await)
    }

    pub fn hits(&self) -> usize {
        self.inner.hits.load(Ordering::SeqCst)
    }

    /// Answer 503 from now on (or not).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.inner.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// The request bodies received, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.inner.bodies.lock().expect("lock").clone()
    }

    /// Lets a gated stream send its last chunk.
    pub fn open_gate(&self) {
        self.inner.gate.notify_one();
    }

    /// Whether a stream found its receiver gone before it ended.
    pub fn stream_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }
}

fn prompt_tokens(body: &Value) -> u64 {
    fn words(value: &Value) -> u64 {
        match value {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(items) => items.iter().map(words).sum(),
            Value::Object(map) => map.get("content").map_or(0, words),
            _ => 0,
        }
    }
    body.get("messages")
        .or_else(|| body.get("prompt"))
        .or_else(|| body.get("input"))
        .map_or(0, words)
}

/// A JSON answer from the stub `name` names.
fn json_reply(name: [(&str, String); 1], reply: &Value) -> Response {
    (
        name,
        [("content-type", "application/json")],
        reply.to_string(),
    )
        .into_response()
}

async fn answer(State(stub): State<Stub>, uri: Uri, body: Bytes) -> Response {
    let stub = stub.inner.clone();
    stub.hits.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    stub.bodies.lock().expect("lock").push(body.clone());
    let name = [("x-stub", stub.name.clone())];
    if stub.unavailable.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            name,
            json!({"error": {"message": "loading"}}).to_string(),
        )
            .into_response();
    }
    if let Some(ms) = body.get("stub_delay_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let model = body["model"].clone();
    let prompt = prompt_tokens(&body);
    if uri.path() == "/v1/embeddings" {
        let reply = json!({
            "object": "list",
            "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        });
        return json_reply(name, &reply);
    }
    let completion = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(7);
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        let reply = json!({
            "id": "cmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": usage,
        });
        return json_reply(name, &reply);
    }
    let chunks = body.get("stub_chunks").and_then(Value::as_u64).unwrap_or(3);
    let pace = Duration::from_millis(
        body.get("stub_chunk_delay_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    );
    let gated = body.get("stub_gate").and_then(Value::as_bool) == Some(true);
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        let mut events = Vec::new();
        for i in 0..chunks {
            let chunk = json!({
                "id": "cmpl-1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}}],
            });
            events.push((i + 1 == chunks, format!("data: {chunk}\n\n")));
        }
        if include_usage {
            let chunk = json!({
                "id": "cmpl-1", "object": "chat.completion.chunk", "model": model,
                "choices": [], "usage": usage,
            });
            events.push((false, format!("data: {chunk}\n\n")));
        }
        events.push((false, "data: [DONE]\n\n".to_owned()));
        for (last_content, event) in events {
            if last_content && gated {
                stub.gate.notified().await;
            }
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            if tx.send(Ok(Bytes::from(event))).await.is_err() {
                stub.cancelled.store(true, Ordering::SeqCst);
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        name,
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A model of tenant `tenant` named `name`, served as `served_name`.
pub fn model(name: &str, endpoints: Vec<Endpoint>) -> Model {
    Model {
        name: name.to_owned(),
        namespace: "team-a".to_owned(),
        aimodel: name.to_owned(),
        served_name: format!("{name}-served"),
        created: 1_700_000_000,
        endpoints,
        canary_percent: 0,
        scale_from_zero: false,
    }
}

/// A ready stable endpoint.
pub fn stable(addr: SocketAddr) -> Endpoint {
    Endpoint {
        addr,
        track: Track::Stable,
        ready: true,
    }
}

/// A ready canary endpoint.
pub fn canary(addr: SocketAddr) -> Endpoint {
    Endpoint {
        addr,
        track: Track::Canary,
        ready: true,
    }
}

/// Tenants `acme` (with `acme_models` and `acme_limits`) and `globex` (with a
/// model `globex-model` on `globex_endpoint`), one key each.
pub fn snapshot(acme_models: Vec<Model>, acme_limits: TenantLimits) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.tenants.insert("acme".into(), acme_limits);
    snapshot
        .tenants
        .insert("globex".into(), TenantLimits::default());
    snapshot.insert_key(
        ACME_KEY,
        KeyInfo {
            tenant: "acme".into(),
            name: "team-a/acme-key".into(),
        },
    );
    snapshot.insert_key(
        GLOBEX_KEY,
        KeyInfo {
            tenant: "globex".into(),
            name: "team-g/globex-key".into(),
        },
    );
    for m in acme_models {
        snapshot.upsert_model("acme", m);
    }
    let mut globex = model(
        "globex-model",
        vec![stable(SocketAddr::from(([127, 0, 0, 1], 9)))],
    );
    globex.namespace = "team-g".into();
    snapshot.upsert_model("globex", globex);
    snapshot
}

/// Polls `check` until it holds or 5 s pass.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
