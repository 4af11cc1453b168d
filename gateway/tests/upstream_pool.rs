//! The connections to the engines: kept alive and reused between requests,
//! never used once the engine has closed them, closed (and not reused) when
//! the client of a stream goes away, and bounded in number and idle time.
//! Against a test engine that counts the connections it accepts.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aleph_gateway::{GatewayConfig, TenantLimits};
use axum::http::StatusCode;
use bytes::Bytes;
use common::{ACME_KEY, Harness, eventually, model, snapshot, stable};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// An engine on 127.0.0.1:0 that counts the connections it accepted and
/// those its clients closed, and can close every connection it holds. A
/// request's JSON body says what to answer: `"stream": true` for a stream of
/// `chunks` events (default 3) `delay_ms` apart (default 0), else one plain
/// answer.
struct Engine {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Engine {
    async fn start() -> Engine {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let engine = Engine {
            addr: listener.local_addr().expect("addr"),
            accepted: Arc::default(),
            ended: Arc::default(),
            requests: Arc::default(),
            connections: Arc::default(),
        };
        let (accepted, ended, requests, connections) = (
            engine.accepted.clone(),
            engine.ended.clone(),
            engine.requests.clone(),
            engine.connections.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (ended, requests) = (ended.clone(), requests.clone());
                let task = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        answer(request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
                connections.lock().expect("lock").push(task.abort_handle());
            }
        });
        engine
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The connections that ended on their client's side (the gateway's).
    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Closes every connection it holds, as an engine does with idle ones.
    fn close_all(&self) {
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }
}

type AnswerBody = BoxBody<Bytes, Infallible>;

async fn answer(
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<AnswerBody>, Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let usage = json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3});
    if body["stream"] != true {
        let reply = json!({"id": "cmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": usage});
        return Ok(hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(reply.to_string())).boxed())
            .expect("response"));
    }
    let chunks = body["chunks"].as_u64().unwrap_or(3);
    let delay = Duration::from_millis(body["delay_ms"].as_u64().unwrap_or(0));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        let mut events: Vec<String> = (0..chunks)
            .map(|i| {
                format!(
                    "data: {}\n\n",
                    json!({"choices": [{"delta": {"content": format!("tok{i} ")}}]})
                )
            })
            .collect();
        events.push(format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": usage})
        ));
        events.push("data: [DONE]\n\n".to_owned());
        for event in events {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(hyper::Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(stream).boxed())
        .expect("response"))
}

async fn gateway_for(config: GatewayConfig, engine: SocketAddr) -> Harness {
    Harness::start(
        config,
        snapshot(
            vec![model("llama", vec![stable(engine)])],
            TenantLimits::default(),
        ),
    )
    .await
}

fn plain() -> Value {
    json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]})
}

fn stream(chunks: u64, delay_ms: u64) -> Value {
    json!({"model": "llama", "stream": true, "chunks": chunks, "delay_ms": delay_ms,
           "messages": [{"role": "user", "content": "hi"}]})
}

/// Asks for `body`'s answer and checks it came whole.
async fn ask(gw: &Harness, body: Value) {
    let streamed = body["stream"] == true;
    let reply = gw.post("/v1/chat/completions", ACME_KEY, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    if streamed {
        assert!(
            reply.text().ends_with("data: [DONE]\n\n"),
            "{}",
            reply.text()
        );
    } else {
        assert_eq!(reply.json()["choices"][0]["message"]["content"], "hi");
    }
}

#[tokio::test]
async fn one_engine_connection_serves_request_after_request() {
    let engine = Engine::start().await;
    let gw = gateway_for(GatewayConfig::default(), engine.addr).await;
    for i in 0..30 {
        if i % 3 == 0 {
            ask(&gw, stream(4, 0)).await;
        } else {
            ask(&gw, plain()).await;
        }
    }
    assert_eq!(engine.requests(), 30);
    assert_eq!(engine.accepted(), 1, "one connection, kept alive");
    assert_eq!(engine.ended(), 0);
}

#[tokio::test]
async fn concurrent_requests_open_connections_that_are_kept_for_later() {
    let engine = Engine::start().await;
    let gw = gateway_for(GatewayConfig::default(), engine.addr).await;
    let burst = || futures::future::join_all((0..4).map(|_| ask(&gw, stream(3, 50))));
    burst().await;
    assert_eq!(engine.accepted(), 4);
    burst().await;
    assert_eq!(engine.accepted(), 4, "the second burst reuses all four");
}

#[tokio::test]
async fn the_idle_connections_are_bounded_per_endpoint() {
    let engine = Engine::start().await;
    let config = GatewayConfig {
        upstream_idle_per_endpoint: 2,
        ..GatewayConfig::default()
    };
    let gw = gateway_for(config, engine.addr).await;
    let burst = || futures::future::join_all((0..4).map(|_| ask(&gw, stream(3, 50))));
    burst().await;
    assert_eq!(engine.accepted(), 4);
    eventually("two of the four connections to close", async || {
        engine.ended() == 2
    })
    .await;
    burst().await;
    assert_eq!(engine.accepted(), 6, "two kept, two new");
}

#[tokio::test]
async fn a_connection_idle_past_the_timeout_is_not_reused() {
    let engine = Engine::start().await;
    let config = GatewayConfig {
        upstream_idle_timeout: Duration::from_millis(100),
        ..GatewayConfig::default()
    };
    let gw = gateway_for(config, engine.addr).await;
    ask(&gw, plain()).await;
    ask(&gw, plain()).await;
    assert_eq!(engine.accepted(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    ask(&gw, plain()).await;
    assert_eq!(engine.accepted(), 2);
    eventually("the stale connection to close", async || {
        engine.ended() == 1
    })
    .await;
}

#[tokio::test]
async fn a_connection_the_engine_closed_while_idle_is_not_used() {
    let engine = Engine::start().await;
    let gw = gateway_for(GatewayConfig::default(), engine.addr).await;
    ask(&gw, plain()).await;
    ask(&gw, stream(3, 0)).await;
    assert_eq!(engine.accepted(), 1);
    engine.close_all();
    // Let the gateway's side see the engine's end of the connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        ask(&gw, plain()).await;
    }
    assert_eq!(engine.accepted(), 2, "a new connection, then kept");
    assert_eq!(engine.requests(), 7, "no request was lost or repeated");
}

/// An engine that answers the first request of each connection and closes
/// the connection when the next one arrives, without an answer: the race of
/// an engine closing an idle connection just as the gateway reuses it.
async fn closing_engine() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                if read_request(&mut stream).await.is_none() {
                    return;
                }
                let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
                count.fetch_add(1, Ordering::SeqCst);
                // The next request is read, then the connection closes.
                let _ = read_request(&mut stream).await;
            });
        }
    });
    (addr, answered)
}

/// Reads one request with a `content-length` body; `None` at the end of the
/// connection.
async fn read_request(stream: &mut TcpStream) -> Option<()> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return Some(());
            }
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_request_the_engine_drops_on_a_reused_connection_goes_again_on_a_new_one() {
    let (addr, answered) = closing_engine().await;
    let gw = gateway_for(GatewayConfig::default(), addr).await;
    for i in 1..=5 {
        ask(&gw, plain()).await;
        assert_eq!(answered.load(Ordering::SeqCst), i);
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_closes_the_engine_connection() {
    let engine = Engine::start().await;
    let gw = gateway_for(GatewayConfig::default(), engine.addr).await;
    ask(&gw, plain()).await;
    let response = gw
        .send(
            "/v1/chat/completions",
            Some(ACME_KEY),
            stream(1000, 10).to_string().into_bytes(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a first event within 5 s");
    assert!(first.is_some());
    assert_eq!(engine.accepted(), 1, "the stream took the idle connection");
    drop(body);
    eventually("the engine to see its connection closed", async || {
        engine.ended() == 1
    })
    .await;
    ask(&gw, plain()).await;
    assert_eq!(
        engine.accepted(),
        2,
        "the stream's connection was not kept for reuse"
    );
}

#[tokio::test]
async fn a_plain_answer_read_whole_returns_its_connection_at_once() {
    let engine = Engine::start().await;
    let gw = gateway_for(GatewayConfig::default(), engine.addr).await;
    // A slow stream holds one connection while plain requests pass beside it
    // one after the other on a second one.
    let slow = tokio::spawn({
        let addr = gw.addr;
        async move {
            let request = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {ACME_KEY}"))
                .body(Full::new(Bytes::from(stream(10, 50).to_string())))
                .expect("request");
            let response = common::client().request(request).await.expect("answers");
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..10 {
        ask(&gw, plain()).await;
    }
    let streamed = slow.await.expect("stream");
    assert!(streamed.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(engine.accepted(), 2);
}
