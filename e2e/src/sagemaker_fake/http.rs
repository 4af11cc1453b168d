//! The HTTP side: the AWS JSON 1.1 protocol, injected faults, and the
//! `/_fake` endpoints of the binary.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::FakeKnobs;
use super::state::{Shared, lock};

/// The routes: the SageMaker API on `POST /`, the counters and the knobs.
pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", post(handle))
        .route("/_fake/counters", get(counters))
        .route("/_fake/knobs", post(knobs))
        .with_state(shared)
}

async fn counters(State(shared): State<Shared>) -> Response {
    let snapshot = lock(&shared).snapshot();
    (
        StatusCode::OK,
        axum_json(&serde_json::to_value(snapshot).unwrap_or(Value::Null)),
    )
        .into_response()
}

async fn knobs(State(shared): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<FakeKnobs>(&body) {
        Ok(knobs) => {
            lock(&shared).apply(&knobs);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

fn axum_json(value: &Value) -> ([(header::HeaderName, HeaderValue); 1], String) {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
}

/// An API error: HTTP status, `__type` and message.
pub(super) struct ApiError(
    pub(super) StatusCode,
    pub(super) &'static str,
    pub(super) String,
);

impl ApiError {
    /// HTTP 500 `InternalFailure`, as for an injected fault.
    fn internal_failure() -> Self {
        Self(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "An internal error occurred.".into(),
        )
    }

    pub(super) fn validation(message: impl Into<String>) -> Self {
        Self(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            message.into(),
        )
    }
}

pub(super) type ApiResult = Result<Value, ApiError>;

async fn handle(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(operation) = target.strip_prefix("SageMaker.") else {
        return error_response(&ApiError(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("unknown target {target:?}"),
        ));
    };
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error_response(&ApiError(
                    StatusCode::BAD_REQUEST,
                    "SerializationException",
                    e.to_string(),
                ));
            }
        }
    };
    let mut inner = lock(&shared);
    inner.requests += 1;
    *inner
        .counters
        .calls
        .entry(operation.to_string())
        .or_default() += 1;
    let throttle = inner.config.throttle_fraction;
    let server_error = inner.config.server_error_fraction;
    if inner.roll(throttle) {
        inner.counters.throttled += 1;
        return error_response(&ApiError(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded".into(),
        ));
    }
    if inner.roll(server_error) {
        inner.counters.server_errors += 1;
        return error_response(&ApiError::internal_failure());
    }
    let result = inner.dispatch(operation, &input);
    let mutating = !operation.starts_with("Describe") && !operation.starts_with("List");
    let lost = inner.config.lost_response_fraction;
    if result.is_ok() && mutating && inner.roll(lost) {
        inner.counters.lost_responses += 1;
        return error_response(&ApiError::internal_failure());
    }
    let request_id = format!("fake-{:08x}", inner.requests);
    drop(inner);
    match result {
        Ok(value) => {
            let mut response = (StatusCode::OK, value.to_string()).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            if let Ok(id) = HeaderValue::from_str(&request_id) {
                h.insert("x-amzn-requestid", id);
            }
            response
        }
        Err(e) => error_response(&e),
    }
}

fn error_response(error: &ApiError) -> Response {
    let ApiError(status, code, message) = error;
    let body = json!({"__type": code, "message": message});
    let mut response = (*status, body.to_string()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(v) = HeaderValue::from_str(code) {
        h.insert("x-amzn-errortype", v);
    }
    response
}
