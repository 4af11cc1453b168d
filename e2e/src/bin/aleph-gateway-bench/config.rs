//! What the benchmark sends and how it configures the gateway: the request
//! body, the keys, and the small and large configurations.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::http::HeaderValue;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The chat request every path is sent, as the engine's OpenAI API takes it.
pub(crate) fn chat_body(model: &str, stream: bool) -> Bytes {
    let mut body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello and offer help, in one short sentence."}
        ],
        "max_tokens": 16,
        "temperature": 0
    });
    if stream {
        body["stream"] = json!(true);
    }
    Bytes::from(body.to_string())
}

pub(crate) fn bearer(key: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {key}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"))
}

pub(crate) fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Limits high enough never to refuse a request of the benchmark, so that
/// the gateway checks them on every request without refusing any.
pub(crate) fn generous_limits() -> serde_json::Value {
    json!({
        "requestsPerMinute": 1_000_000_000u64,
        "tokensPerMinute": 1_000_000_000_000u64,
        "tokensPerDay": 1_000_000_000_000u64
    })
}

/// The small configuration: one tenant, one key, one model on the stub.
pub(crate) fn small_config(engine: SocketAddr, key: &str) -> serde_json::Value {
    json!({
        "tenants": {"bench": generous_limits()},
        "keys": [{"tenant": "bench", "name": "bench/key", "sha256": sha256_hex(key)}],
        "models": [{
            "tenant": "bench", "name": "bench-model", "namespace": "bench",
            "aimodel": "bench-model", "servedName": "stub-model",
            "endpoints": [{"addr": engine.to_string()}]
        }]
    })
}

/// The large configuration and the requests that use every (key, model)
/// pair of every tenant once in turn.
pub(crate) fn large_config(
    engine: SocketAddr,
    tenants: usize,
    keys: usize,
    models: usize,
    stream: bool,
) -> (serde_json::Value, Vec<(HeaderValue, Bytes)>) {
    let tenants = tenants.max(1);
    let tenant = |i: usize| format!("tenant-{:04}", i % tenants);
    let key = |i: usize| format!("sk-aleph-bench-{i:06}-{}", sha256_hex(&i.to_string()));
    let config = json!({
        "tenants": (0..tenants).map(|t| (tenant(t), generous_limits())).collect::<serde_json::Map<_, _>>(),
        "keys": (0..keys).map(|i| json!({
            "tenant": tenant(i), "name": format!("{}/key-{i:04}", tenant(i)), "sha256": sha256_hex(&key(i))
        })).collect::<Vec<_>>(),
        "models": (0..models).map(|j| json!({
            "tenant": tenant(j), "name": format!("model-{j:04}"), "namespace": tenant(j),
            "aimodel": format!("model-{j:04}"), "servedName": "stub-model",
            "created": 1_700_000_000,
            "endpoints": [{"addr": engine.to_string()}]
        })).collect::<Vec<_>>(),
    });
    let mut requests = Vec::new();
    for t in 0..tenants {
        let own_keys: Vec<usize> = (t..keys).step_by(tenants).collect();
        let own_models: Vec<usize> = (t..models).step_by(tenants).collect();
        for k in &own_keys {
            for m in &own_models {
                requests.push((
                    bearer(&key(*k)),
                    chat_body(&format!("model-{m:04}"), stream),
                ));
            }
        }
    }
    (config, requests)
}
