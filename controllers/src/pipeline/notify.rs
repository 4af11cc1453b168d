//! Webhook notifications: the message a run posts (Slack-compatible JSON,
//! `text` first), the URL read from a Secret, and one bounded POST.
//!
//! Deliveries are retried by their callers, with backoff: a notify step by
//! its retry policy (see `retry`), a run's `spec.notifications` by
//! [`next_attempt`].

use std::sync::OnceLock;
use std::time::Duration;

use aleph_crds::common::SecretKeyRef;
use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use http::Request;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};

/// How long a webhook has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer's body read (and ignored).
const ANSWER_LIMIT: usize = 64 * 1024;
/// Deliveries of a run notification before it is given up.
pub const MAX_ATTEMPTS: i32 = 5;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> Result<&'static HttpsClient, String> {
    static CLIENT: OnceLock<Result<HttpsClient, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A certificate the store refuses is one CA less, not a failure.
                let _ = roots.add(cert);
            }
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(TIMEOUT));
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            Ok(Client::builder(TokioExecutor::new()).build(connector))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The body posted to a webhook: `text` for Slack and its kin, and the run's
/// coordinates for receivers that want them.
pub fn message(text: &str, namespace: &str, run: &str, pipeline: &str, event: &str) -> Value {
    json!({
        "text": text,
        "namespace": namespace,
        "pipelineRun": run,
        "pipeline": pipeline,
        "event": event,
    })
}

/// The webhook URL kept in a Secret's key; the error says what is missing.
pub async fn webhook_url(
    client: &kube::Client,
    namespace: &str,
    reference: &SecretKeyRef,
) -> crate::error::Result<Result<String, String>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(Err(format!(
            "Secret {} (the webhook's URL) does not exist in namespace {namespace}",
            reference.name
        )));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string());
    Ok(match value {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => Ok(url),
        Some(_) => Err(format!(
            "key {} of Secret {} is not an http:// or https:// URL",
            reference.key, reference.name
        )),
        None => Err(format!(
            "Secret {} has no key {}",
            reference.name, reference.key
        )),
    })
}

/// Posts `body` to `url`; the error says why it was not taken (the URL itself
/// is never told: it often holds a token).
pub async fn post(url: &str, body: &Value) -> Result<(), String> {
    let client = client()?;
    let request = Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "aleph-operator")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|_| "the webhook's URL is not a valid URL".to_string())?;
    aleph_util::http::fetch(client, request, ANSWER_LIMIT, TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|e| format!("the webhook did not take the message: {}", chain(&e)))
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// When a run notification that failed `attempts` times may be tried again:
/// 5 s, then doubling, at most 5 min; None once [`MAX_ATTEMPTS`] were made.
pub fn next_attempt(attempts: i32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let exponent = u32::try_from(attempts.clamp(1, 16) - 1).unwrap_or(0);
    let seconds = (5i64 << exponent).min(300);
    Some(now + TimeDelta::seconds(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_then_stop() {
        let now = Utc::now();
        let delays: Vec<i64> = (1..MAX_ATTEMPTS)
            .map(|a| (next_attempt(a, now).unwrap_or(now) - now).num_seconds())
            .collect();
        assert_eq!(delays, vec![5, 10, 20, 40]);
        assert_eq!(next_attempt(MAX_ATTEMPTS, now), None);
    }

    #[test]
    fn the_body_is_slack_compatible() {
        let body = message("done", "ns", "run-1", "train", "Succeeded");
        assert_eq!(body["text"], "done");
        assert_eq!(body["pipelineRun"], "run-1");
        assert_eq!(body["event"], "Succeeded");
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_without_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        let url = format!("http://{addr}/hook?token=secret");
        let error = post(&url, &json!({"text": "x"}))
            .await
            .expect_err("nothing listens");
        assert!(!error.contains("secret"), "{error}");
        assert!(
            error.starts_with("the webhook did not take the message"),
            "{error}"
        );
    }
}
