//! The HTTP surface: the OpenAI-compatible API, health and readiness on one
//! listener, `/metrics` on another (so that it need not be exposed with the API).

use std::net::SocketAddr;
use std::sync::Arc;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{ListenerExt, TapIo};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::error::ApiError;
use crate::{Gateway, proxy};

/// A listener whose accepted connections have Nagle's algorithm off.
pub type ApiListener = TapIo<TcpListener, fn(&mut TcpStream)>;

/// Binds a listener for [`router`] (or [`metrics_router`]) with Nagle's
/// algorithm off on every accepted connection. With it on, a small write
/// (a streamed event after the headers, an answer after the last one on a
/// kept-alive connection) waits for the client to acknowledge the previous
/// one, which a client may delay by up to 40 ms.
pub async fn bind(addr: SocketAddr) -> std::io::Result<ApiListener> {
    Ok(no_delay_on_accept(TcpListener::bind(addr).await?))
}

/// `listener`, with Nagle's algorithm off on every connection it accepts
/// (see [`bind`]).
pub fn no_delay_on_accept(listener: TcpListener) -> ApiListener {
    listener.tap_io(no_delay as fn(&mut TcpStream))
}

fn no_delay(stream: &mut TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
}

/// The API: the inference routes (`POST /v1/chat/completions`,
/// `/v1/completions`, `/v1/embeddings`) go straight to their handler, every
/// other request through [`router`]. The router would do the same for them,
/// at a cost that shows on every request: a route lookup, the path
/// parameters' map, two boxed services cloned (about a tenth of what the
/// gateway does per request of its own).
#[derive(Clone)]
pub struct Api {
    gateway: Gateway,
    router: Router,
}

impl Api {
    /// The API of `gateway`.
    pub fn new(gateway: Gateway) -> Self {
        Self {
            router: router(gateway.clone()),
            gateway,
        }
    }
}

/// Whether `path` is one of the inference routes.
fn is_inference(path: &str) -> bool {
    matches!(
        path,
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
    )
}

impl tower::Service<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.method() == Method::POST && is_inference(request.uri().path()) {
            let gateway = self.gateway.clone();
            return Box::pin(async move { Ok(proxy::handle(State(gateway), request).await) });
        }
        Box::pin(self.router.clone().oneshot(request))
    }
}

/// The API router.
///
/// While the gateway drains, each answer closes its HTTP/1 connection
/// (`Connection: close`): a client that keeps connections alive opens its
/// next one through the Service, which no longer sends it here. Each handler
/// says so itself ([`closing_while_draining`]) rather than through a
/// middleware, which would box every request's future once more.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(proxy::handle))
        .route("/v1/completions", post(proxy::handle))
        .route("/v1/embeddings", post(proxy::handle))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(gateway)
}

/// `response`, closing its HTTP/1 connection when the gateway drains. Looked
/// at once the answer is ready: a request that began before the drain (one
/// held for a starting model, say) closes its connection too.
pub(crate) fn closing_while_draining(
    gateway: &Gateway,
    version: Version,
    mut response: Response,
) -> Response {
    if version <= Version::HTTP_11 && gateway.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn healthz(State(gateway): State<Gateway>, version: Version) -> Response {
    closing_while_draining(&gateway, version, "ok".into_response())
}

async fn not_found(State(gateway): State<Gateway>, version: Version) -> Response {
    closing_while_draining(&gateway, version, ApiError::NotFound.into_response())
}

/// The router of the metrics listener: `/metrics` in the OpenMetrics text format.
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(gateway): State<Gateway>, version: Version) -> Response {
    let response = if gateway.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if gateway.state().is_synced() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "state not synced").into_response()
    };
    closing_while_draining(&gateway, version, response)
}

/// `GET /v1/models`: every model of the caller's tenants, ready or not.
async fn list_models(
    State(gateway): State<Gateway>,
    version: Version,
    headers: HeaderMap,
) -> Response {
    let response = models_of_caller(&gateway, &headers).await;
    closing_while_draining(&gateway, version, response)
}

async fn models_of_caller(gateway: &Gateway, headers: &HeaderMap) -> Response {
    let snapshot = gateway.state().snapshot();
    let caller = match gateway
        .inner
        .authenticators
        .authenticate(headers, &snapshot)
        .await
    {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let data: Vec<_> = snapshot
        .models_for(&caller.tenants)
        .into_iter()
        .map(|listed| {
            serde_json::json!({
                "id": listed.id,
                "object": "model",
                "created": listed.model.created,
                "owned_by": listed.tenant,
            })
        })
        .collect();
    let body = serde_json::json!({"object": "list", "data": data});
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
