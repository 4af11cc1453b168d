//! Forwarding: the rewritten request, streaming, cancellation, endpoint
//! picking, retries and token metering, against stub engines over real HTTP.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use aleph_gateway::{Endpoint, GatewayConfig, TenantLimits};
use axum::http::StatusCode;
use common::{ACME_KEY, Harness, Reply, Stub, canary, eventually, model, snapshot, stable};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

/// A gateway with `config` serving model `llama` on `endpoints`.
async fn serving(config: GatewayConfig, endpoints: Vec<Endpoint>) -> Harness {
    Harness::start(
        config,
        snapshot(vec![model("llama", endpoints)], TenantLimits::default()),
    )
    .await
}

async fn single(name: &str) -> (Harness, Stub, SocketAddr) {
    single_with(name, |_| {}).await
}

/// One stub engine `name` behind a gateway with the default configuration
/// as `configure` changes it.
async fn single_with(
    name: &str,
    configure: impl FnOnce(&mut GatewayConfig),
) -> (Harness, Stub, SocketAddr) {
    let mut config = GatewayConfig::default();
    configure(&mut config);
    let (stub, addr) = Stub::start(name).await;
    (serving(config, vec![stable(addr)]).await, stub, addr)
}

/// Stub engines, one a name, and their stable endpoints.
async fn start_stubs(names: &[&str]) -> (Vec<Stub>, Vec<Endpoint>) {
    let mut stubs = Vec::new();
    let mut endpoints = Vec::new();
    for name in names {
        let (stub, addr) = Stub::start(name).await;
        stubs.push(stub);
        endpoints.push(stable(addr));
    }
    (stubs, endpoints)
}

/// Asks `llama` to complete the prompt `x`.
async fn complete_x(gw: &Harness) -> Reply {
    gw.post(
        "/v1/completions",
        ACME_KEY,
        json!({"model": "llama", "prompt": "x"}),
    )
    .await
}

/// Asks `llama` for the embedding of `input`.
async fn embed(gw: &Harness, input: &str) -> Reply {
    gw.post(
        "/v1/embeddings",
        ACME_KEY,
        json!({"model": "llama", "input": input}),
    )
    .await
}

/// Sends `request` with tenant `acme`'s key, for the test to read the response as it comes.
async fn send(gw: &Harness, path: &str, request: &Value) -> hyper::Response<Incoming> {
    gw.send(path, Some(ACME_KEY), request.to_string().into_bytes())
        .await
}

/// Waits for the requests to `addr` to leave the in-flight count.
async fn nothing_in_flight(gw: &Harness, addr: SocketAddr) {
    eventually("the request to leave the in-flight count", async || {
        gw.gateway.balancer().in_flight(addr) == 0
    })
    .await;
}

#[tokio::test]
async fn the_model_field_is_rewritten_to_the_served_name() {
    let (gw, stub, _) = single("a").await;
    for requested in ["llama", "team-a/llama"] {
        let reply = gw
            .post(
                "/v1/chat/completions",
                ACME_KEY,
                json!({"model": requested, "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()["model"], "llama-served");
    }
    let bodies = stub.bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["model"], "llama-served");
    assert_eq!(bodies[0]["temperature"], 0.5, "other fields pass untouched");
    assert!(
        bodies[0].get("stream_options").is_none(),
        "added only to streams"
    );
    let embedded = embed(&gw, "a b").await;
    assert_eq!(embedded.status, StatusCode::OK);
    assert_eq!(embedded.json()["data"][0]["embedding"][1], -0.5);
}

/// Reads the next body chunk, failing after 5 s.
async fn next_chunk(body: &mut Incoming) -> Option<String> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a chunk within 5 s")?
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            return Some(String::from_utf8_lossy(&data).into_owned());
        }
    }
}

#[tokio::test]
async fn streams_pass_through_chunk_by_chunk() {
    let (gw, stub, _) = single("a").await;
    let request = json!({
        "model": "llama", "stream": true, "stub_gate": true, "stub_chunks": 3,
        "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 4,
    });
    let response = send(&gw, "/v1/chat/completions", &request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut body = response.into_body();
    let mut seen = String::new();
    // The stub holds its last content chunk until the gate opens: everything
    // before it must already have reached the client.
    while !seen.contains("tok1 ") {
        seen.push_str(&next_chunk(&mut body).await.expect("more chunks"));
    }
    assert!(!seen.contains("tok2"), "the last chunk is not sent yet");
    stub.open_gate();
    while let Some(chunk) = next_chunk(&mut body).await {
        seen.push_str(&chunk);
    }
    assert!(seen.contains("tok2 "));
    assert!(seen.ends_with("data: [DONE]\n\n"));
    assert!(seen.contains("\"usage\""), "the usage chunk passes through");
    assert_eq!(
        stub.bodies()[0]["stream_options"],
        json!({"include_usage": true}),
        "usage is asked for"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_stream() {
    let (gw, stub, addr) = single("a").await;
    let request = json!({
        "model": "llama", "stream": true, "stub_chunks": 2000, "stub_chunk_delay_ms": 10,
        "messages": [{"role": "user", "content": "go on forever"}],
    });
    let response = send(&gw, "/v1/chat/completions", &request).await;
    let mut body = response.into_body();
    assert!(
        next_chunk(&mut body)
            .await
            .is_some_and(|c| c.contains("tok0"))
    );
    assert_eq!(gw.gateway.balancer().in_flight(addr), 1);
    drop(body);
    eventually("the stub to see its stream dropped", async || {
        stub.stream_cancelled()
    })
    .await;
    nothing_in_flight(&gw, addr).await;
    assert_eq!(
        gw.metric(
            "aleph_gateway_inflight_requests",
            &[("namespace", "team-a"), ("model", "llama")]
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_in_flight_spreads_concurrent_slow_requests_evenly() {
    let (stubs, endpoints) = start_stubs(&["a", "b", "c"]).await;
    let gw = serving(GatewayConfig::default(), endpoints).await;
    let slow = json!({"model": "llama", "prompt": "slow", "stub_delay_ms": 600});
    let replies: Vec<Reply> = futures::future::join_all(
        (0..9).map(|_| gw.post("/v1/completions", ACME_KEY, slow.clone())),
    )
    .await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    let hits: Vec<usize> = stubs.iter().map(Stub::hits).collect();
    assert_eq!(hits, [3, 3, 3]);
}

#[tokio::test]
async fn the_canary_gets_exactly_its_percentage() {
    let (stable_stub, stable_addr) = Stub::start("stable").await;
    let (canary_stub, canary_addr) = Stub::start("canary").await;
    let mut llama = model("llama", vec![stable(stable_addr), canary(canary_addr)]);
    llama.canary_percent = 25;
    let gw = Harness::start(
        GatewayConfig::default(),
        snapshot(vec![llama], TenantLimits::default()),
    )
    .await;
    let mut answered: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let reply = embed(&gw, "x").await;
        assert_eq!(reply.status, StatusCode::OK);
        *answered.entry(reply.stub()).or_default() += 1;
    }
    assert_eq!(answered.get("canary"), Some(&250));
    assert_eq!(answered.get("stable"), Some(&750));
    assert_eq!((stable_stub.hits(), canary_stub.hits()), (750, 250));
}

/// A local address nothing listens on.
async fn refusing_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_endpoint() {
    let dead = refusing_addr().await;
    let (stub, addr) = Stub::start("alive").await;
    let gw = serving(GatewayConfig::default(), vec![stable(dead), stable(addr)]).await;
    for _ in 0..6 {
        let reply = complete_x(&gw).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.stub(), "alive");
    }
    assert_eq!(stub.hits(), 6);

    let only_dead = serving(GatewayConfig::default(), vec![stable(dead)]).await;
    let reply = complete_x(&only_dead).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "upstream_unreachable");
}

#[tokio::test]
async fn a_503_is_retried_once_on_another_endpoint() {
    let (loading, loading_addr) = Stub::start("loading").await;
    let (ready, ready_addr) = Stub::start("ready").await;
    loading.set_unavailable(true);
    let gw = serving(
        GatewayConfig::default(),
        vec![stable(loading_addr), stable(ready_addr)],
    )
    .await;
    for _ in 0..6 {
        let reply = complete_x(&gw).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.stub(), "ready");
    }
    assert!(
        loading.hits() >= 1,
        "the loading engine was tried first sometimes"
    );
    assert_eq!(ready.hits(), 6);

    // Both answer 503: one retry, then the engine's answer goes back.
    ready.set_unavailable(true);
    let (before_loading, before_ready) = (loading.hits(), ready.hits());
    let reply = complete_x(&gw).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (loading.hits() - before_loading) + (ready.hits() - before_ready),
        2,
        "exactly one retry"
    );
}

/// The usage object the client saw: a JSON body's, or a stream's usage chunk.
fn client_usage(reply: &Reply) -> (u64, u64) {
    let usage = if reply.text().starts_with("data:") {
        reply
            .text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find_map(|v| v.get("usage").filter(|u| u.is_object()).cloned())
            .expect("a usage chunk")
    } else {
        reply.json()["usage"].clone()
    };
    (
        usage["prompt_tokens"].as_u64().unwrap_or(0),
        usage["completion_tokens"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn token_counters_equal_the_engines_usage() {
    let (gw, _stub, _) = single("a").await;
    let requests = [
        (
            "/v1/chat/completions",
            json!({"model": "llama", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 5}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "llama", "stream": true, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "d e"}], "max_tokens": 11}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "llama", "stream": true, "stream_options": {"include_usage": false}, "messages": [{"role": "user", "content": "f"}], "max_tokens": 2}),
        ),
        (
            "/v1/completions",
            json!({"model": "llama", "prompt": "g h i j", "max_tokens": 6}),
        ),
        (
            "/v1/completions",
            json!({"model": "llama", "prompt": "k", "stream": true, "stub_chunks": 20, "max_tokens": 20}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "llama", "input": ["l m", "n o p"]}),
        ),
    ];
    let (mut prompt, mut completion) = (0, 0);
    for (path, body) in requests {
        let reply = gw.post(path, ACME_KEY, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        let (p, c) = client_usage(&reply);
        prompt += p;
        completion += c;
    }
    assert_eq!(
        (prompt, completion),
        (3 + 4 + 1 + 4 + 1 + 5, 5 + 11 + 2 + 6 + 20)
    );
    let labels = |kind| {
        [
            ("tenant", "acme"),
            ("model", "llama"),
            ("key", "team-a/acme-key"),
            ("kind", kind),
        ]
    };
    assert_eq!(
        gw.metric("aleph_gateway_tokens_total", &labels("prompt"))
            .await,
        prompt
    );
    assert_eq!(
        gw.metric("aleph_gateway_tokens_total", &labels("completion"))
            .await,
        completion
    );
    let totals = gw.gateway.usage().totals("acme", "llama");
    assert_eq!(totals.today.requests, 6);
    assert_eq!(
        (totals.today.prompt_tokens, totals.today.completion_tokens),
        (prompt, completion)
    );
    assert_eq!(totals.this_month, totals.today);
    assert_eq!(
        gw.metric(
            "aleph_gateway_requests_total",
            &[("tenant", "acme"), ("model", "llama"), ("code", "200")]
        )
        .await,
        6
    );

    // The next day starts from zero; the month goes on.
    gw.clock.advance(Duration::from_secs(86_400));
    let next_day = gw.gateway.usage().totals("acme", "llama");
    assert_eq!(next_day.today, Default::default());
    assert_eq!(
        next_day.this_month, totals.this_month,
        "the clock starts mid-June"
    );
}

#[tokio::test]
async fn prefix_hash_sends_a_shared_prefix_to_one_endpoint() {
    let (_stubs, endpoints) = start_stubs(&["a", "b", "c", "d"]).await;
    let config = GatewayConfig {
        routing: aleph_gateway::RoutingMode::PrefixHash {
            prefix_chars: 32,
            load_factor: 0.25,
        },
        ..GatewayConfig::default()
    };
    let gw = serving(config, endpoints).await;
    let system = "You are a terse assistant for ACME support.";
    let mut answered = std::collections::HashSet::new();
    for question in [
        "where is my order",
        "reset my password",
        "cancel",
        "refund please",
    ] {
        let body = json!({"model": "llama", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]});
        let reply = gw.post("/v1/chat/completions", ACME_KEY, body).await;
        assert_eq!(reply.status, StatusCode::OK);
        answered.insert(reply.stub());
    }
    assert_eq!(
        answered.len(),
        1,
        "one endpoint for one prefix: {answered:?}"
    );
    let mut spread = std::collections::HashSet::new();
    for i in 0..40 {
        let body = json!({"model": "llama", "prompt": format!("{i} distinct prompt")});
        spread.insert(gw.post("/v1/completions", ACME_KEY, body).await.stub());
    }
    assert!(spread.len() >= 3, "different prefixes spread: {spread:?}");
}

#[tokio::test]
async fn an_engine_slower_than_the_header_timeout_gets_504() {
    let (gw, stub, addr) = single_with("slow", |c| {
        c.response_header_timeout = Duration::from_millis(200);
    })
    .await;
    let reply = gw
        .post(
            "/v1/completions",
            ACME_KEY,
            json!({"model": "llama", "prompt": "x", "stub_delay_ms": 3000}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error_code(), "upstream_timeout");
    assert_eq!(
        stub.hits(),
        1,
        "a timeout is not retried: the engine may be working on it"
    );
    assert_eq!(gw.gateway.balancer().in_flight(addr), 0);
}

#[tokio::test]
async fn the_request_timeout_cuts_a_stream_off() {
    // Long enough for the first event to reach the client on a busy machine
    // (the timeout passing before it would close the connection before any
    // header), far shorter than the 20 s stream.
    let (gw, _stub, addr) = single_with("endless", |c| {
        c.request_timeout = Duration::from_millis(1500);
    })
    .await;
    let request = json!({"model": "llama", "stream": true, "stub_chunks": 2000, "stub_chunk_delay_ms": 10, "prompt": "x"});
    let response = send(&gw, "/v1/completions", &request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let outcome =
        tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await;
    assert!(
        matches!(outcome, Ok(Err(_))),
        "the stream ends in an error, early"
    );
    nothing_in_flight(&gw, addr).await;
}
