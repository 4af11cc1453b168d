//! Holding requests while a model scales from zero: a request for a model
//! without a ready endpoint waits until one appears, within a bounded queue
//! and time, and the autoscaling series show it waiting.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aleph_gateway::{Endpoint, GatewayConfig, Model, TenantLimits, Track};
use axum::http::StatusCode;
use common::{ACME_KEY, Harness, Reply, Stub, eventually, model, snapshot, stable};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

const INFLIGHT: &str = "aleph_gateway_inflight_requests";
const ARRIVALS: &str = "aleph_gateway_arrivals_total";
const QUEUED: &str = "aleph_gateway_queued_requests";
const COLD: [(&str, &str); 2] = [("namespace", "team-a"), ("model", "cold")];

/// A model `cold` that scales from zero, with no endpoint yet.
fn cold_model() -> Model {
    let mut cold = model("cold", vec![]);
    cold.scale_from_zero = true;
    cold
}

async fn cold_gateway(config: GatewayConfig) -> Arc<Harness> {
    Arc::new(
        Harness::start(
            config,
            snapshot(vec![cold_model()], TenantLimits::default()),
        )
        .await,
    )
}

fn chat() -> serde_json::Value {
    json!({"model": "cold", "messages": [{"role": "user", "content": "wake up"}], "max_tokens": 2})
}

/// A request sent in the background.
fn send(gw: &Arc<Harness>) -> JoinHandle<Reply> {
    let gw = gw.clone();
    tokio::spawn(async move { gw.post("/v1/chat/completions", ACME_KEY, chat()).await })
}

/// Gives `cold` these endpoints, as a watch would.
fn set_endpoints(gw: &Harness, endpoints: Vec<Endpoint>) {
    gw.gateway.state().update(|s| {
        let mut cold = cold_model();
        cold.endpoints = endpoints;
        s.upsert_model("acme", cold);
    });
}

/// The three autoscaling series of `cold`, as `/metrics` shows them.
async fn series(gw: &Harness) -> (u64, u64, u64) {
    (
        gw.metric(INFLIGHT, &COLD).await,
        gw.metric(ARRIVALS, &COLD).await,
        gw.metric(QUEUED, &COLD).await,
    )
}

#[tokio::test]
async fn a_request_waits_for_the_first_ready_endpoint_and_is_then_answered() {
    let gw = cold_gateway(GatewayConfig::default()).await;
    let waiting = send(&gw);
    eventually("the request to wait in the queue", async || {
        series(&gw).await == (1, 1, 1)
    })
    .await;
    // The /metrics text itself, as the operator scrapes it.
    let text = common::get(gw.metrics_addr, "/metrics", None).await.text();
    for line in [
        r#"aleph_gateway_inflight_requests{namespace="team-a",model="cold"} 1"#,
        r#"aleph_gateway_arrivals_total{namespace="team-a",model="cold"} 1"#,
        r#"aleph_gateway_queued_requests{namespace="team-a",model="cold"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }

    // An endpoint that is not ready yet changes nothing.
    let (stub, addr) = Stub::start("first").await;
    set_endpoints(
        &gw,
        vec![Endpoint {
            addr,
            track: Track::Stable,
            ready: false,
        }],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered without a ready endpoint");
    assert_eq!(series(&gw).await, (1, 1, 1));

    set_endpoints(&gw, vec![stable(addr)]);
    let reply = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("answered once the endpoint is ready")
        .expect("request task");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.stub(), "first");
    assert_eq!(stub.bodies()[0]["model"], "cold-served");
    assert_eq!(series(&gw).await, (0, 1, 0));
    assert_eq!(gw.gateway.cold_start_waiting(&cold_model()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_concurrent_waiter_is_served_when_endpoints_appear() {
    let gw = cold_gateway(GatewayConfig::default()).await;
    let n = 40;
    let waiting: Vec<_> = (0..n).map(|_| send(&gw)).collect();
    eventually("every request to wait", async || {
        series(&gw).await == (n, n, n)
    })
    .await;
    let (a, a_addr) = Stub::start("a").await;
    let (b, b_addr) = Stub::start("b").await;
    set_endpoints(&gw, vec![stable(a_addr), stable(b_addr)]);
    for request in waiting {
        let reply = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("answered")
            .expect("request task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(
        a.hits() + b.hits(),
        n as usize,
        "each request reached an engine once"
    );
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "spread: {} and {}",
        a.hits(),
        b.hits()
    );
    assert_eq!(series(&gw).await, (0, n, 0));
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let config = GatewayConfig {
        cold_start_queue: 2,
        retry_after: Duration::from_secs(7),
        ..GatewayConfig::default()
    };
    let gw = cold_gateway(config).await;
    let first = send(&gw);
    let second = send(&gw);
    eventually("two requests to wait", async || {
        gw.metric(QUEUED, &COLD).await == 2
    })
    .await;
    let refused = gw.post("/v1/chat/completions", ACME_KEY, chat()).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error_code(), "model_start_queue_full");
    assert_eq!(refused.json()["error"]["type"], "server_error");
    assert_eq!(refused.retry_after(), Some(7));
    assert_eq!(
        series(&gw).await,
        (2, 3, 2),
        "the refused request arrived, and left"
    );
    // The two in the queue are still served.
    let (_stub, addr) = Stub::start("a").await;
    set_endpoints(&gw, vec![stable(addr)]);
    for request in [first, second] {
        assert_eq!(request.await.expect("task").status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_model_not_ready_in_time_gets_503_saying_so() {
    let config = GatewayConfig {
        cold_start_timeout: Duration::from_millis(500),
        retry_after: Duration::from_secs(3),
        ..GatewayConfig::default()
    };
    let gw = cold_gateway(config).await;
    let started = tokio::time::Instant::now();
    let reply = gw.post("/v1/chat/completions", ACME_KEY, chat()).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "model_start_timeout");
    assert_eq!(
        reply.json()["error"]["message"],
        "the model `cold` did not become ready within 0.5 s"
    );
    assert_eq!(reply.retry_after(), Some(3));
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert_eq!(series(&gw).await, (0, 1, 0));
    assert_eq!(
        gw.gateway
            .metrics()
            .requests("acme", "cold", StatusCode::SERVICE_UNAVAILABLE.as_u16()),
        1
    );
}

/// Sends a chat request on a raw connection and returns it unread.
async fn raw_request(addr: SocketAddr) -> tokio::net::TcpStream {
    let body = chat().to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {ACME_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    stream
}

#[tokio::test]
async fn a_client_that_goes_away_while_waiting_leaves_the_queue() {
    let gw = cold_gateway(GatewayConfig::default()).await;
    let stays = send(&gw);
    let leaves = raw_request(gw.addr).await;
    eventually("two requests to wait", async || {
        series(&gw).await == (2, 2, 2)
    })
    .await;
    drop(leaves);
    eventually(
        "the request that went away to leave the queue",
        async || series(&gw).await == (1, 2, 1),
    )
    .await;
    assert_eq!(gw.gateway.cold_start_waiting(&cold_model()), 1);
    let (stub, addr) = Stub::start("a").await;
    set_endpoints(&gw, vec![stable(addr)]);
    assert_eq!(stays.await.expect("task").status, StatusCode::OK);
    assert_eq!(
        stub.hits(),
        1,
        "the request that went away never reached the engine"
    );
    assert_eq!(series(&gw).await, (0, 2, 0));
}

#[tokio::test]
async fn a_model_that_does_not_scale_from_zero_is_refused_at_once() {
    let gw = Harness::start(
        GatewayConfig::default(),
        snapshot(vec![model("cold", vec![])], TenantLimits::default()),
    )
    .await;
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        gw.post("/v1/chat/completions", ACME_KEY, chat()),
    )
    .await
    .expect("answered at once");
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "model_not_ready");
    assert_eq!(reply.retry_after(), Some(5));
    assert_eq!(
        series(&gw).await,
        (0, 1, 0),
        "counted as an arrival, never queued"
    );
}

#[tokio::test]
async fn a_waiting_request_is_refused_when_its_model_goes_away() {
    let gw = cold_gateway(GatewayConfig::default()).await;
    let waiting = send(&gw);
    eventually("the request to wait", async || {
        gw.metric(QUEUED, &COLD).await == 1
    })
    .await;
    gw.gateway
        .state()
        .update(|s| s.remove_model("team-a", "cold"));
    let reply = waiting.await.expect("task");
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "model_not_found");
    assert_eq!(series(&gw).await, (0, 1, 0));
}
