//! Forwarding an inference request to an engine and streaming its answer
//! back, metering the tokens on the way.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::LengthLimitError;
use tokio::time::{Instant, Sleep};

use crate::Gateway;
use crate::body::RequestBody;
use crate::cold_start::NotReady;
use crate::error::ApiError;
use crate::route::{EndpointGuard, RoutingMode, prompt_prefix};
use crate::state::{Model, TenantLimits};
use crate::upstream::h1::{self, Head};
use crate::upstream::{Conn, SendError};
use crate::usage::{InflightGuard, Meter, UsageScanner};

/// The labels of `requests_total`, filled in as the request is understood.
#[derive(Default)]
struct Labels {
    tenant: String,
    model: String,
}

/// `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
pub(crate) async fn handle(State(gateway): State<Gateway>, request: Request) -> Response {
    let version = request.version();
    let mut labels = Labels::default();
    // An answer is counted where it is made (`respond`), an error here.
    let response = match forward(&gateway, request, &mut labels).await {
        Ok(response) => response,
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(tenant = %labels.tenant, model = %labels.model, %error, "request failed");
            }
            let response = error.into_response();
            gateway.metrics().count_request(
                &labels.tenant,
                &labels.model,
                response.status().as_u16(),
            );
            response
        }
    };
    crate::api::closing_while_draining(&gateway, version, response)
}

async fn forward(
    gateway: &Gateway,
    request: Request,
    labels: &mut Labels,
) -> Result<Response, ApiError> {
    let inner = &gateway.inner;
    let config = &inner.config;
    let deadline = Instant::now() + config.request_timeout;
    let snapshot = inner.state.snapshot();
    let (parts, body) = request.into_parts();
    let caller = inner
        .authenticators
        .authenticate(&parts.headers, &snapshot)
        .await?;
    labels.tenant = caller.single_tenant().to_owned();

    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = ApiError::BodyTooLarge {
        limit: config.max_body_bytes,
    };
    if declared.is_some_and(|n| n > config.max_body_bytes as u64) {
        return Err(too_large);
    }
    let bytes =
        tokio::time::timeout_at(deadline, axum::body::to_bytes(body, config.max_body_bytes))
            .await
            .map_err(|_| ApiError::BodyUnreadable)?
            .map_err(|e| {
                if is_length_limit(&e) {
                    too_large
                } else {
                    ApiError::BodyUnreadable
                }
            })?;
    let request_body = RequestBody::parse(&bytes)?;
    let requested = request_body.string("model").ok_or(ApiError::MissingModel)?;
    // The request is the tenant's whose model it calls: its limits, its usage.
    // The model is read from the snapshot, kept until the answer's head.
    let (tenant, found) = match snapshot.lookup(&caller.tenants, &requested) {
        crate::state::Lookup::Found { tenant, model } => (tenant, model),
        crate::state::Lookup::OtherTenant => {
            return Err(ApiError::ModelForbidden(requested.into_owned()));
        }
        crate::state::Lookup::Unknown => {
            return Err(ApiError::ModelNotFound(requested.into_owned()));
        }
    };
    if labels.tenant != tenant {
        labels.tenant = tenant.to_owned();
    }
    labels.model.clone_from(&found.name);
    // What the model's autoscaling reads: the arrival at once, and the
    // request in flight from now on, while it waits for an endpoint too.
    let in_flight = inner.metrics.arrive(&found.namespace, &found.aimodel);
    let no_endpoint = |model: &Model| ApiError::NoReadyEndpoint {
        model: model.name.clone(),
        retry_after: config.retry_after,
    };
    if !found.has_ready_endpoint() && !found.scale_from_zero {
        return Err(no_endpoint(found));
    }
    let no_limits = TenantLimits::default();
    let tenant_limits = snapshot.tenants.get(tenant).unwrap_or(&no_limits);
    inner.limits.admit(tenant, tenant_limits)?;
    // A model at zero: held until it has a ready endpoint, then as it is then.
    let started;
    let model = if found.has_ready_endpoint() {
        found
    } else {
        started = wait_for_endpoint(gateway, tenant, &requested, found, deadline).await?;
        &started
    };

    // The engine's name for the model; and for a stream, usage at its end:
    // reported only when asked for, it is asked for even when the client
    // said no, since tokens must be counted. The extra chunk (empty
    // `choices`) is valid for clients.
    let body = Bytes::from(request_body.rewrite(&model.served_name));
    let prefix = match config.routing {
        RoutingMode::PrefixHash { prefix_chars, .. } => {
            prompt_prefix(&request_body.prompt_fields(), prefix_chars)
        }
        RoutingMode::LeastInFlight => None,
    };
    drop(request_body);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());

    let guard = inner
        .balancer
        .pick(model, prefix.as_deref())
        .ok_or_else(|| no_endpoint(model))?;
    let (guard, upstream) = match send(gateway, &guard, path, &parts.headers, &body, deadline).await
    {
        Sent::Answered(response, conn) if response.status != StatusCode::SERVICE_UNAVAILABLE => {
            (guard, (response, conn))
        }
        first @ (Sent::Answered(..) | Sent::NotConnected) => {
            // Nothing has reached the client yet and the engine did no
            // work (refused, or said it cannot): one more endpoint may.
            match inner.balancer.pick_other(model, prefix.as_deref(), &guard) {
                Some(other) => {
                    tracing::info!(
                        model = %model.id(), failed = %guard.addr(), retry = %other.addr(),
                        "retrying on another endpoint"
                    );
                    drop(first);
                    drop(guard);
                    match send(gateway, &other, path, &parts.headers, &body, deadline).await {
                        Sent::Answered(response, conn) => (other, (response, conn)),
                        failed => return Err(failed.error()),
                    }
                }
                None => match first {
                    Sent::Answered(response, conn) => (guard, (response, conn)),
                    failed => return Err(failed.error()),
                },
            }
        }
        // The request may have reached the engine: not retried.
        failed => return Err(failed.error()),
    };
    Ok(respond(
        gateway, labels, caller, guard, in_flight, upstream, deadline,
    ))
}

/// Holds a request for `model` (which scales from zero and has no ready
/// endpoint) until it has one, and returns the model as it then is.
async fn wait_for_endpoint(
    gateway: &Gateway,
    tenant: &str,
    requested: &str,
    model: &Model,
    deadline: Instant,
) -> Result<Model, ApiError> {
    let inner = &gateway.inner;
    let config = &inner.config;
    let started = Instant::now();
    let until = (started + config.cold_start_timeout).min(deadline);
    tracing::debug!(model = %model.id(), "waiting for a first ready endpoint");
    let waited = inner
        .cold_start
        .wait_until_ready(&inner.state, tenant, requested, model, until)
        .await;
    match waited {
        Ok(ready) => {
            tracing::debug!(
                model = %ready.id(),
                waited_ms = started.elapsed().as_millis(),
                "a ready endpoint appeared"
            );
            Ok(ready)
        }
        Err(NotReady::QueueFull) => Err(ApiError::ColdStartQueueFull {
            model: model.name.clone(),
            retry_after: config.retry_after,
        }),
        Err(NotReady::TimedOut) => Err(ApiError::ColdStartTimeout {
            model: model.name.clone(),
            waited: until.saturating_duration_since(started),
            retry_after: config.retry_after,
        }),
        Err(NotReady::NoLongerScalesFromZero) => Err(ApiError::NoReadyEndpoint {
            model: model.name.clone(),
            retry_after: config.retry_after,
        }),
        Err(NotReady::Forbidden) => Err(ApiError::ModelForbidden(requested.to_owned())),
        Err(NotReady::Gone) => Err(ApiError::ModelNotFound(requested.to_owned())),
    }
}

/// What sending to one endpoint gave. Short-lived, moved once or twice:
/// not worth an allocation to make it smaller.
#[allow(clippy::large_enum_variant)]
enum Sent {
    /// The response head, and the connection its body comes on.
    Answered(Head, Conn),
    /// The connection could not be made: nothing reached the engine.
    NotConnected,
    /// The connection broke after the request was (maybe) sent.
    Failed,
    TimedOut,
}

impl Sent {
    fn error(self) -> ApiError {
        match self {
            Sent::TimedOut => ApiError::UpstreamTimeout,
            _ => ApiError::UpstreamUnreachable,
        }
    }
}

async fn send(
    gateway: &Gateway,
    endpoint: &EndpointGuard,
    path: &str,
    client_headers: &HeaderMap,
    body: &Bytes,
    deadline: Instant,
) -> Sent {
    let config = &gateway.inner.config;
    let addr = endpoint.addr();
    if !h1::valid_path(path) {
        return Sent::Failed;
    }
    let request = h1::Request {
        path,
        host: addr,
        accept: client_headers
            .get(header::ACCEPT)
            .map(HeaderValue::as_bytes),
        body,
    };
    let headers_by = (Instant::now() + config.response_header_timeout).min(deadline);
    match tokio::time::timeout_at(headers_by, gateway.inner.upstream.send(addr, &request)).await {
        Ok(Ok((response, conn))) => Sent::Answered(response, conn),
        Ok(Err(SendError::NotConnected)) => Sent::NotConnected,
        Ok(Err(SendError::Failed)) => Sent::Failed,
        Err(_) => Sent::TimedOut,
    }
}

/// The answer to the client: the engine's head, and its body metered on the
/// way. It is counted here, its labels moved into the meter.
fn respond(
    gateway: &Gateway,
    labels: &mut Labels,
    caller: crate::Caller,
    endpoint: EndpointGuard,
    in_flight: InflightGuard,
    (head, conn): (Head, Conn),
    deadline: Instant,
) -> Response {
    let event_stream = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let scanner = if event_stream {
        UsageScanner::sse()
    } else {
        UsageScanner::json()
    };
    gateway
        .metrics()
        .count_request(&labels.tenant, &labels.model, head.status.as_u16());
    let meter = head.status.is_success().then(|| Meter {
        metrics: gateway.inner.metrics.clone(),
        limits: gateway.inner.limits.clone(),
        ledger: gateway.inner.ledger.clone(),
        tenant: std::mem::take(&mut labels.tenant),
        model: std::mem::take(&mut labels.model),
        key: caller.key_name,
    });
    let body = MeteredBody {
        conn: Some(conn),
        gateway: gateway.clone(),
        scanner,
        meter,
        endpoint: Some(endpoint),
        in_flight: Some(in_flight),
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        finished: false,
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = head.status;
    // The engine's headers move over as they are (those of its hop were
    // left out when its head was read).
    *response.headers_mut() = head.headers;
    let headers = response.headers_mut();
    if event_stream {
        // Proxies in front of the gateway must not hold the events back.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    response
}

/// The engine's response body on its way to the client: passed through frame
/// by frame (the client's reads pace the engine's writes), scanned for
/// `usage`, holding the request in flight until it ends or is dropped.
///
/// It reads the engine connection itself: each poll takes what the last read
/// brought, and reads again only when that is used up. The frames one read
/// brought are so handed on one after the other, and the client's
/// connection writes them at once. Once the body has ended, the
/// connection goes back to the idle pool. Dropping the body before (the
/// client went away) closes the engine connection and so cancels the
/// generation.
struct MeteredBody {
    /// The connection the body comes on, until the body ends.
    conn: Option<Conn>,
    gateway: Gateway,
    scanner: UsageScanner,
    meter: Option<Meter>,
    endpoint: Option<EndpointGuard>,
    in_flight: Option<InflightGuard>,
    deadline: Pin<Box<Sleep>>,
    finished: bool,
}

impl MeteredBody {
    /// Records the usage found, once.
    fn settle(&mut self) {
        if let Some(meter) = self.meter.take()
            && let Some(usage) = self.scanner.usage()
        {
            meter.record(usage);
        }
    }

    /// Ends the exchange: the usage is recorded, the request leaves the
    /// in-flight counts, and the engine connection goes back to the pool if
    /// the body `ended` as HTTP says (else it closes).
    fn finish(&mut self, ended: bool) {
        self.settle();
        self.endpoint = None;
        self.in_flight = None;
        self.finished = true;
        if let Some(conn) = self.conn.take()
            && ended
        {
            self.gateway.inner.upstream.put(conn);
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // A body that was empty from the start is never polled.
        let ended = !self.finished && self.conn.as_ref().is_some_and(Conn::body_ended);
        if ended {
            self.finish(true);
        } else {
            self.settle();
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.finish(false);
            return Poll::Ready(Some(Err("the request timeout passed".into())));
        }
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match conn.poll_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.finish(false);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(Some(Ok(data))) => {
                let ended = conn.body_ended();
                let complete = this.scanner.feed_bytes(&data);
                // Settle before the last bytes leave, so that a client that has
                // read the whole answer finds its usage counted.
                if ended {
                    this.finish(true);
                } else if complete {
                    this.settle();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.conn.as_ref().is_some_and(Conn::body_ended)
    }

    fn size_hint(&self) -> SizeHint {
        if self.finished {
            return SizeHint::with_exact(0);
        }
        self.conn
            .as_ref()
            .and_then(Conn::body_remaining)
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
