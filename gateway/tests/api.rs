//! The API's answers before and around forwarding: authentication, request
//! validation, model resolution, `/v1/models`, limits, readiness.

mod common;

use std::time::Duration;

use aleph_gateway::{Endpoint, GatewayConfig, TenantLimits, Track};
use axum::http::StatusCode;
use common::{ACME_KEY, GLOBEX_KEY, Harness, Reply, Stub, model, snapshot, stable};
use serde_json::json;

fn chat(model: &str) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3})
}

/// A chat completion of `model` sent with `key`.
async fn chat_as(gw: &Harness, key: &str, model: &str) -> Reply {
    gw.post("/v1/chat/completions", key, chat(model)).await
}

/// [`one_model_gateway`] taking bodies of at most `max_body_bytes`.
async fn body_limited_gateway(max_body_bytes: usize) -> (Harness, Stub) {
    let config = GatewayConfig {
        max_body_bytes,
        ..GatewayConfig::default()
    };
    one_model_gateway(config, TenantLimits::default()).await
}

async fn one_model_gateway(config: GatewayConfig, limits: TenantLimits) -> (Harness, Stub) {
    let (stub, addr) = Stub::start("a").await;
    let harness = Harness::start(
        config,
        snapshot(vec![model("llama", vec![stable(addr)])], limits),
    )
    .await;
    (harness, stub)
}

#[tokio::test]
async fn missing_or_unknown_keys_get_401() {
    let (gw, stub) = one_model_gateway(GatewayConfig::default(), TenantLimits::default()).await;
    let body = chat("llama").to_string().into_bytes();
    let missing = gw
        .post_raw("/v1/chat/completions", None, body.clone())
        .await;
    missing.assert_error(StatusCode::UNAUTHORIZED, "missing_api_key");
    let wrong = gw
        .post_raw("/v1/chat/completions", Some("sk-aleph-nope"), body)
        .await;
    wrong.assert_error(StatusCode::UNAUTHORIZED, "invalid_api_key");
    let models = gw.get("/v1/models", Some("sk-aleph-nope")).await;
    assert_eq!(models.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stub.hits(), 0, "nothing reached the engine");
}

#[tokio::test]
async fn another_tenants_model_gets_403_and_an_unknown_one_400() {
    let (gw, stub) = one_model_gateway(GatewayConfig::default(), TenantLimits::default()).await;
    let theirs = chat_as(&gw, ACME_KEY, "globex-model").await;
    theirs.assert_error(StatusCode::FORBIDDEN, "model_not_permitted");
    assert_eq!(theirs.json()["error"]["param"], "model");
    let mine_for_them = chat_as(&gw, GLOBEX_KEY, "llama").await;
    assert_eq!(mine_for_them.status, StatusCode::FORBIDDEN);
    let unknown = chat_as(&gw, ACME_KEY, "no-such-model").await;
    unknown.assert_error(StatusCode::BAD_REQUEST, "model_not_found");
    assert_eq!(stub.hits(), 0);
}

#[tokio::test]
async fn bodies_that_are_not_json_or_lack_a_model_get_400() {
    let (gw, stub) = one_model_gateway(GatewayConfig::default(), TenantLimits::default()).await;
    let garbage = gw
        .post_raw(
            "/v1/chat/completions",
            Some(ACME_KEY),
            b"model=llama".to_vec(),
        )
        .await;
    garbage.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    let array = gw.post("/v1/completions", ACME_KEY, json!(["llama"])).await;
    array.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    let no_model = gw
        .post("/v1/embeddings", ACME_KEY, json!({"input": "x"}))
        .await;
    no_model.assert_error(StatusCode::BAD_REQUEST, "missing_model");
    assert_eq!(stub.hits(), 0);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (gw, stub) = body_limited_gateway(1024).await;
    let big = json!({"model": "llama", "prompt": "x".repeat(2000)});
    let reply = gw.post("/v1/completions", ACME_KEY, big).await;
    reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large");
    let small = json!({"model": "llama", "prompt": "x".repeat(500)});
    assert_eq!(
        gw.post("/v1/completions", ACME_KEY, small).await.status,
        StatusCode::OK
    );
    assert_eq!(stub.hits(), 1);
}

#[tokio::test]
async fn models_lists_only_the_callers_models() {
    let down = Endpoint {
        addr: ([127, 0, 0, 1], 9).into(),
        track: Track::Stable,
        ready: false,
    };
    let gw = Harness::start(
        GatewayConfig::default(),
        snapshot(
            vec![model("llama", vec![]), model("mistral", vec![down])],
            TenantLimits::default(),
        ),
    )
    .await;
    let reply = gw.get("/v1/models", Some(ACME_KEY)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["object"], "list");
    let ids: Vec<_> = json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert_eq!(m["owned_by"], "acme");
            assert_eq!(m["created"], 1_700_000_000);
            m["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        ["llama", "mistral"],
        "ready or not, and no globex model"
    );
    let theirs = gw.get("/v1/models", Some(GLOBEX_KEY)).await.json();
    assert_eq!(theirs["data"][0]["id"], "globex-model");
    assert_eq!(theirs["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn no_ready_endpoint_gets_503_with_retry_after() {
    let config = GatewayConfig {
        retry_after: Duration::from_secs(7),
        ..GatewayConfig::default()
    };
    let (stub, addr) = Stub::start("a").await;
    let not_ready = Endpoint {
        addr,
        track: Track::Stable,
        ready: false,
    };
    let gw = Harness::start(
        config,
        snapshot(
            vec![model("llama", vec![not_ready]), model("empty", vec![])],
            TenantLimits::default(),
        ),
    )
    .await;
    for name in ["llama", "empty"] {
        let reply = chat_as(&gw, ACME_KEY, name).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert_eq!(reply.retry_after(), Some(7));
        assert_eq!(reply.error_code(), "model_not_ready");
    }
    assert_eq!(stub.hits(), 0);
}

#[tokio::test]
async fn request_limit_refuses_with_retry_after_until_the_window_ends() {
    let limits = TenantLimits {
        requests_per_minute: Some(2),
        ..TenantLimits::default()
    };
    let (gw, stub) = one_model_gateway(GatewayConfig::default(), limits).await;
    for _ in 0..2 {
        let ok = chat_as(&gw, ACME_KEY, "llama").await;
        assert_eq!(ok.status, StatusCode::OK);
    }
    let refused = chat_as(&gw, ACME_KEY, "llama").await;
    refused.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
    // The clock stands 10 s into its minute.
    assert_eq!(refused.retry_after(), Some(50));
    assert_eq!(stub.hits(), 2, "the refused request was not forwarded");
    let other_tenant_unaffected = chat_as(&gw, GLOBEX_KEY, "llama").await;
    assert_eq!(other_tenant_unaffected.status, StatusCode::FORBIDDEN);

    gw.clock.advance(Duration::from_secs(49));
    let still = chat_as(&gw, ACME_KEY, "llama").await;
    assert_eq!(still.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(still.retry_after(), Some(1));
    gw.clock.advance(Duration::from_secs(1));
    let again = chat_as(&gw, ACME_KEY, "llama").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        gw.metric(
            "aleph_gateway_requests_total",
            &[("tenant", "acme"), ("model", "llama"), ("code", "429")]
        )
        .await,
        2
    );
}

#[tokio::test]
async fn token_limits_refuse_the_next_request_once_used() {
    let limits = TenantLimits {
        tokens_per_minute: Some(10),
        tokens_per_day: Some(25),
        ..TenantLimits::default()
    };
    let (gw, _stub) = one_model_gateway(GatewayConfig::default(), limits).await;
    // 2 prompt words + 9 completion tokens = 11 > 10 per minute.
    let first = gw
        .post("/v1/chat/completions", ACME_KEY, json!({"model": "llama", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 9}))
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json()["usage"]["total_tokens"], 11);
    let refused = chat_as(&gw, ACME_KEY, "llama").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.retry_after(), Some(50));
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tokens per minute")
    );

    gw.clock.advance(Duration::from_secs(50));
    // 2 + 20 = 22 more tokens: 33 today, over 25.
    let second = gw
        .post("/v1/chat/completions", ACME_KEY, json!({"model": "llama", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 20}))
        .await;
    assert_eq!(second.status, StatusCode::OK);
    gw.clock.advance(Duration::from_secs(60));
    let per_day = chat_as(&gw, ACME_KEY, "llama").await;
    assert_eq!(per_day.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        per_day.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tokens per day")
    );
    let wait = per_day.retry_after().expect("retry-after");
    assert!(wait > 3600 && wait <= 86_400, "until midnight UTC: {wait}");
    gw.clock.advance(Duration::from_secs(wait));
    let next_day = chat_as(&gw, ACME_KEY, "llama").await;
    assert_eq!(next_day.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_waits_for_the_state_to_be_synced() {
    let gw = Harness::start_unsynced(GatewayConfig::default()).await;
    assert_eq!(gw.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(
        gw.get("/readyz", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    gw.gateway
        .state()
        .replace(snapshot(vec![], TenantLimits::default()));
    assert_eq!(
        gw.get("/readyz", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    gw.gateway.state().mark_synced();
    assert_eq!(gw.get("/readyz", None).await.status, StatusCode::OK);
    let unknown = gw.get("/v2/anything", None).await;
    unknown.assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_get_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, stub) = body_limited_gateway(1024).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {ACME_KEY}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"));
    assert_eq!(stub.hits(), 0);
}

#[tokio::test]
async fn the_other_methods_and_paths_still_get_the_routers_answers() {
    let (gw, stub) = one_model_gateway(GatewayConfig::default(), TenantLimits::default()).await;
    // The inference routes are served before the router: other methods on
    // them, and paths next to them, are still the router's.
    let get = gw.get("/v1/chat/completions", Some(ACME_KEY)).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    let slash = gw
        .post_raw("/v1/chat/completions/", Some(ACME_KEY), b"{}".to_vec())
        .await;
    slash.assert_error(StatusCode::NOT_FOUND, "not_found");
    let models = gw
        .post_raw("/v1/models", Some(ACME_KEY), b"{}".to_vec())
        .await;
    assert_eq!(models.status, StatusCode::METHOD_NOT_ALLOWED);
    // And the inference routes themselves answer as before.
    let unknown = gw
        .post_raw(
            "/v1/embeddings",
            Some(ACME_KEY),
            br#"{"model":"nope"}"#.to_vec(),
        )
        .await;
    unknown.assert_error(StatusCode::BAD_REQUEST, "model_not_found");
    let known = gw
        .post_raw(
            "/v1/embeddings",
            Some(ACME_KEY),
            br#"{"model":"llama"}"#.to_vec(),
        )
        .await;
    assert_eq!(known.status, StatusCode::OK);
    assert_eq!(stub.hits(), 1);
}
