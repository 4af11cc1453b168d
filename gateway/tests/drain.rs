//! The binary's shutdown, as the kubelet causes it: SIGTERM, then a drain
//! (not ready, still serving, closing connections after each answer), then
//! no new connections while the requests in flight, a stream among them,
//! finish; then the process exits.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use common::{ACME_KEY, Stub};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

const DRAIN: Duration = Duration::from_secs(2);

/// The gateway binary on ports of its own choosing, with a static
/// configuration of one model on `engine`.
struct Binary {
    child: Child,
    api: SocketAddr,
    metrics: SocketAddr,
}

impl Binary {
    async fn start(engine: SocketAddr) -> Binary {
        let config = json!({
            "tenants": {"acme": {}},
            "keys": [{"tenant": "acme", "name": "team-a/key", "key": ACME_KEY}],
            "models": [{"tenant": "acme", "name": "llama", "namespace": "team-a",
                        "aimodel": "llama", "servedName": "llama",
                        "endpoints": [{"addr": engine.to_string()}]}],
        });
        let path = std::env::temp_dir().join(format!(
            "aleph-gateway-drain-{}-{}.json",
            std::process::id(),
            engine.port()
        ));
        std::fs::write(&path, config.to_string()).expect("write the static configuration");
        let mut child = Command::new(env!("CARGO_BIN_EXE_aleph-gateway"))
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--drain-seconds")
            .arg(DRAIN.as_secs_f64().to_string())
            .arg("--static-config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start aleph-gateway");
        // Its JSON log says where it listens; the rest is echoed for failures.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("gateway: {line}");
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if event["message"] == "listening"
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(event);
                }
            }
        });
        let listening = timeout(Duration::from_secs(10), rx)
            .await
            .expect("the gateway logs where it listens")
            .expect("log line");
        let addr = |field: &str| -> SocketAddr {
            listening[field]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {field} address in {listening}"))
        };
        let _ = std::fs::remove_file(&path);
        Binary {
            api: addr("api"),
            metrics: addr("metrics"),
            child,
        }
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("the gateway runs");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    }
}

/// One HTTP/1 connection, kept alive between requests.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    closed: tokio::task::JoinHandle<()>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let closed = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, closed })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> hyper::Response<hyper::body::Incoming> {
        self.sender
            .ready()
            .await
            .expect("the connection takes a request");
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway")
            .header("authorization", format!("Bearer {ACME_KEY}"));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = request.body(Full::new(body)).expect("request");
        self.sender.send_request(request).await.expect("an answer")
    }

    /// Whether the server has closed the connection, within a second.
    async fn closed_by_server(&mut self) -> bool {
        timeout(Duration::from_secs(1), &mut self.closed)
            .await
            .is_ok()
    }
}

fn connection_header(response: &hyper::Response<hyper::body::Incoming>) -> Option<String> {
    response
        .headers()
        .get("connection")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn status_of(addr: SocketAddr, path: &str) -> StatusCode {
    let mut connection = Connection::open(addr).await.expect("connect");
    connection.send("GET", path, None).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_finishes_the_requests_in_flight_then_exits() {
    let (stub, engine) = Stub::start("engine").await;
    let mut gateway = Binary::start(engine).await;
    assert_eq!(status_of(gateway.api, "/readyz").await, StatusCode::OK);

    // A keep-alive client, and a stream that the engine holds open.
    let mut keep_alive = Connection::open(gateway.api).await.expect("connect");
    let chat =
        json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let before = keep_alive
        .send("POST", "/v1/chat/completions", Some(chat.clone()))
        .await;
    assert_eq!(before.status(), StatusCode::OK);
    assert_eq!(connection_header(&before), None);
    before.into_body().collect().await.expect("body");
    let mut streaming = Connection::open(gateway.api).await.expect("connect");
    let stream_request = json!({
        "model": "llama", "stream": true, "stub_gate": true, "stub_chunks": 3,
        "messages": [{"role": "user", "content": "a long answer"}],
    });
    let stream = streaming
        .send("POST", "/v1/chat/completions", Some(stream_request))
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.into_body();
    let first = timeout(Duration::from_secs(5), stream.frame())
        .await
        .expect("the stream's first chunk")
        .expect("a frame")
        .expect("data");
    assert!(
        String::from_utf8_lossy(&first.into_data().unwrap_or_default()).contains("tok0"),
        "the first chunk"
    );

    gateway.terminate();
    let terminated = Instant::now();
    // At once: not ready, still serving, and each answer closes its connection.
    let mut unready = false;
    while terminated.elapsed() < Duration::from_millis(500) {
        if status_of(gateway.api, "/readyz").await == StatusCode::SERVICE_UNAVAILABLE {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unready, "/readyz still ready 500 ms after SIGTERM");
    let during = keep_alive
        .send("POST", "/v1/chat/completions", Some(chat.clone()))
        .await;
    assert_eq!(during.status(), StatusCode::OK, "served while draining");
    assert_eq!(connection_header(&during).as_deref(), Some("close"));
    during.into_body().collect().await.expect("body");
    assert!(
        keep_alive.closed_by_server().await,
        "the connection was closed after the answer"
    );
    let mut fresh = Connection::open(gateway.api)
        .await
        .expect("new connections are still accepted while draining");
    let answer = fresh
        .send("POST", "/v1/chat/completions", Some(chat.clone()))
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(connection_header(&answer).as_deref(), Some("close"));
    assert!(
        terminated.elapsed() < DRAIN,
        "the checks above took longer than the drain"
    );

    // After the drain: no new connections, the stream goes on, metrics still answer.
    tokio::time::sleep_until(terminated + DRAIN + Duration::from_millis(500)).await;
    assert!(
        Connection::open(gateway.api).await.is_err(),
        "a connection accepted after the drain"
    );
    assert_eq!(status_of(gateway.metrics, "/metrics").await, StatusCode::OK);
    assert!(
        gateway.child.try_wait().expect("wait").is_none(),
        "the gateway exited with a stream in flight"
    );
    stub.open_gate();
    let mut rest = String::new();
    while let Some(frame) = timeout(Duration::from_secs(5), stream.frame())
        .await
        .expect("the stream's next chunk")
    {
        if let Ok(data) = frame.expect("frame").into_data() {
            rest.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(rest.contains("tok2"), "the stream's last chunk: {rest}");
    assert!(
        rest.ends_with("data: [DONE]\n\n"),
        "the stream ended whole: {rest}"
    );

    let status = timeout(Duration::from_secs(5), gateway.child.wait())
        .await
        .expect("the gateway exits once the stream has ended")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        stub.hits(),
        4,
        "three chats and the stream reached the engine"
    );
}
