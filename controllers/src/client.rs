//! The Kubernetes client: counts every request by verb and status code, and
//! limits the request rate (QPS with a burst) like client-go does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::ClientBuilder;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::metrics::{KubeRequestLabels, Metrics};

/// The most a connection to the API server buffers of what it reads. Each
/// watch holds a connection for its life, and hyper's buffer grows with the
/// reads that fill it, up to about 400 KiB: a watch whose first list came
/// in large pages kept that much for good (7 of the 42 MiB the operator's
/// heap peaked at after a restart at N = 300). Larger answers are read in
/// more pieces of this size.
const READ_BUFFER: usize = 32 * 1024;

/// Builds a client from `config` that records request metrics and keeps to
/// `qps` requests per second with bursts of up to `burst`: kube's own stack
/// (TLS, timeouts, the API server's base URI, authentication, extra headers,
/// retries of the server's 429/503), with the read buffer of each
/// connection bounded by [`READ_BUFFER`]. Through a proxy, kube's stack as
/// it is.
pub fn build_client(
    config: kube::Config,
    metrics: Arc<Metrics>,
    qps: f64,
    burst: u32,
) -> kube::Result<kube::Client> {
    use kube::client::ConfigExt;
    let layer = InstrumentLayer {
        metrics,
        limiter: Arc::new(RateLimiter::new(qps, burst)),
    };
    if config.proxy_url.is_some() {
        return Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build());
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let mut connector =
        hyper_timeout::TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http1_max_buf_size(READ_BUFFER)
            .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// A token bucket shared by every request of one client.
#[derive(Debug)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A bucket refilled at `qps` tokens per second holding at most `burst`.
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: qps.max(0.1),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = {
            let mut state = self.state.lock().await;
            let now = Instant::now();
            let (tokens, last) = *state;
            let tokens =
                (tokens + now.duration_since(last).as_secs_f64() * self.qps).min(self.burst);
            let tokens = tokens - 1.0;
            *state = (tokens, now);
            if tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-tokens / self.qps)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Clone, Debug)]
struct InstrumentLayer {
    metrics: Arc<Metrics>,
    limiter: Arc<RateLimiter>,
}

impl<S> Layer<S> for InstrumentLayer {
    type Service = Instrumented<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Instrumented {
            inner,
            metrics: self.metrics.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Instrumented<S> {
    inner: S,
    metrics: Arc<Metrics>,
    limiter: Arc<RateLimiter>,
}

/// The verb of a request, as Kubernetes audit logs name it.
pub fn verb_of(method: &Method, path: &str, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    match *method {
        Method::GET if watch => "watch",
        Method::GET if is_collection(path) => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// The segments of a path after its API group and version:
/// `/api/v1/<rest>` or `/apis/<group>/<version>/<rest>`.
fn resource_segments(path: &str) -> Option<Vec<&str>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }?;
    Some(rest.to_vec())
}

/// Whether a path names a collection (`.../namespaces/ns/pods`) rather than an object.
fn is_collection(path: &str) -> bool {
    // <res> | namespaces/<ns>/<res>
    matches!(
        resource_segments(path).as_deref(),
        Some([_] | ["namespaces", _, _])
    )
}

/// The resource a path names, with its subresource (`pods`, `tenants/status`,
/// `namespaces`); `other` when it names none (discovery, `/version`). Bounded
/// by the API's resources: object names never appear.
pub fn resource_of(path: &str) -> String {
    let Some(rest) = resource_segments(path) else {
        return "other".to_owned();
    };
    let parts: &[&str] = match rest.as_slice() {
        // A namespace's own subresources, not a resource in it.
        ["namespaces", _, sub @ ("status" | "finalize")] => {
            return format!("namespaces/{sub}");
        }
        // namespaces/<ns>/<res>[/<name>[/<sub>]]
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        all => all,
    };
    match parts {
        [] => "other".to_owned(),
        [resource] | [resource, _] => (*resource).to_owned(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
    }
}

impl<S, B, RB> Service<Request<B>> for Instrumented<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let verb = verb_of(req.method(), req.uri().path(), req.uri().query());
        let resource = resource_of(req.uri().path());
        let metrics = self.metrics.clone();
        let limiter = self.limiter.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            // Watches are long-lived; the bucket is for the requests that load the server.
            if verb != "watch" {
                limiter.acquire().await;
            }
            let result = fut.await;
            let code = match &result {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            metrics
                .kube_requests
                .get_or_create(&KubeRequestLabels {
                    verb,
                    resource,
                    code,
                })
                .inc();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_named_like_the_audit_log() {
        let get = Method::GET;
        let cases = [
            (&get, "/api/v1/namespaces/a/pods", None, "list"),
            (&get, "/api/v1/namespaces/a/pods/p", None, "get"),
            (&get, "/api/v1/namespaces", None, "list"),
            (&get, "/api/v1/namespaces/a", None, "get"),
            (
                &get,
                "/apis/aleph.dev/v1alpha1/tenants",
                Some("watch=true&x=1"),
                "watch",
            ),
            (&get, "/apis/aleph.dev/v1alpha1/tenants/t", None, "get"),
            (&get, "/apis/apps/v1/namespaces/n/deployments", None, "list"),
            (
                &Method::PATCH,
                "/apis/apps/v1/namespaces/n/deployments/d",
                None,
                "patch",
            ),
        ];
        for (method, path, query, verb) in cases {
            assert_eq!(
                verb_of(method, path, query),
                verb,
                "{method} {path} {query:?}"
            );
        }
    }

    #[test]
    fn resources_name_no_object() {
        assert_eq!(resource_of("/api/v1/namespaces/a/pods"), "pods");
        assert_eq!(resource_of("/api/v1/namespaces/a/pods/p"), "pods");
        assert_eq!(resource_of("/api/v1/namespaces/a/pods/p/log"), "pods/log");
        assert_eq!(resource_of("/api/v1/namespaces"), "namespaces");
        assert_eq!(resource_of("/api/v1/namespaces/a"), "namespaces");
        assert_eq!(
            resource_of("/api/v1/namespaces/a/finalize"),
            "namespaces/finalize"
        );
        assert_eq!(
            resource_of("/apis/aleph.dev/v1alpha1/tenants/t/status"),
            "tenants/status"
        );
        assert_eq!(
            resource_of("/apis/coordination.k8s.io/v1/namespaces/n/leases/aleph"),
            "leases"
        );
        assert_eq!(
            resource_of("/apis/aleph.dev/v1alpha1/namespaces/n/aimodels/m/scale"),
            "aimodels/scale"
        );
        assert_eq!(resource_of("/apis/aleph.dev/v1alpha1"), "other");
        assert_eq!(resource_of("/version"), "other");
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_keeps_to_qps() {
        let limiter = RateLimiter::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(10));
        for _ in 0..10 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() >= Duration::from_millis(950));
    }
}
