//! The errors the API answers with, each in OpenAI's error shape:
//! `{"error": {"message", "type", "param", "code"}}`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer` header.
    #[error("missing API key: send Authorization: Bearer <key>")]
    MissingKey,
    /// A key that no tenant owns.
    #[error("invalid API key")]
    InvalidKey,
    /// A bearer token that is not an API key and did not authenticate.
    #[error("invalid bearer token: {0}")]
    TokenRejected(crate::auth::TokenRejection),
    /// The caller authenticated but acts for no tenant.
    #[error("{0}")]
    NoTenant(String),
    /// The token could not be checked now (its issuer or the API server did
    /// not answer).
    #[error("{0}")]
    AuthUnavailable(String),
    /// The body is larger than the gateway accepts.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body could not be read from the client.
    #[error("could not read the request body")]
    BodyUnreadable,
    /// The body is not a JSON object.
    #[error("request body is not a JSON object: {0}")]
    InvalidJson(String),
    /// The body has no string `"model"`.
    #[error("you must provide a model parameter")]
    MissingModel,
    /// No tenant has the model.
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// Another tenant's model.
    #[error("the model `{0}` belongs to another tenant")]
    ModelForbidden(String),
    /// A tenant limit is used up.
    #[error("rate limit reached for {limit}; retry after {} s", retry_after_seconds(*retry_after))]
    RateLimited {
        /// Which limit: `requests per minute`, `tokens per minute`, `tokens per day`.
        limit: &'static str,
        /// When the window frees.
        retry_after: Duration,
    },
    /// The model has no ready endpoint.
    #[error("the model `{model}` has no ready replica")]
    NoReadyEndpoint {
        /// The requested model.
        model: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The model, scaling from zero, got no ready endpoint within the time a
    /// request may wait for one.
    #[error("the model `{model}` did not become ready within {} s", seconds(*waited))]
    ColdStartTimeout {
        /// The requested model.
        model: String,
        /// How long the request waited.
        waited: Duration,
        /// When to try again.
        retry_after: Duration,
    },
    /// As many requests as may wait for the model to start already do.
    #[error("too many requests are waiting for the model `{model}` to start")]
    ColdStartQueueFull {
        /// The requested model.
        model: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The engine could not be reached.
    #[error("the model's engine could not be reached")]
    UpstreamUnreachable,
    /// The engine did not answer in time.
    #[error("the model's engine did not answer in time")]
    UpstreamTimeout,
    /// No such route.
    #[error("unknown path")]
    NotFound,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey | ApiError::TokenRejected(_) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::NoTenant(_) => StatusCode::FORBIDDEN,
            ApiError::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyUnreadable
            | ApiError::InvalidJson(_)
            | ApiError::MissingModel
            | ApiError::ModelNotFound(_) => StatusCode::BAD_REQUEST,
            ApiError::ModelForbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoReadyEndpoint { .. }
            | ApiError::ColdStartTimeout { .. }
            | ApiError::ColdStartQueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// OpenAI's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey | ApiError::TokenRejected(_) => {
                "authentication_error"
            }
            ApiError::ModelForbidden(_) | ApiError::NoTenant(_) => "permission_error",
            ApiError::AuthUnavailable(_) => "server_error",
            ApiError::RateLimited { .. } => "rate_limit_error",
            ApiError::NoReadyEndpoint { .. }
            | ApiError::ColdStartTimeout { .. }
            | ApiError::ColdStartQueueFull { .. }
            | ApiError::UpstreamUnreachable
            | ApiError::UpstreamTimeout => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's `code`: a short, stable name of the error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingKey => "missing_api_key",
            ApiError::InvalidKey => "invalid_api_key",
            ApiError::TokenRejected(rejection) => rejection.code(),
            ApiError::NoTenant(_) => "no_tenant",
            ApiError::AuthUnavailable(_) => "authentication_unavailable",
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::BodyUnreadable => "body_unreadable",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::MissingModel => "missing_model",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::ModelForbidden(_) => "model_not_permitted",
            ApiError::RateLimited { .. } => "rate_limit_exceeded",
            ApiError::NoReadyEndpoint { .. } => "model_not_ready",
            ApiError::ColdStartTimeout { .. } => "model_start_timeout",
            ApiError::ColdStartQueueFull { .. } => "model_start_queue_full",
            ApiError::UpstreamUnreachable => "upstream_unreachable",
            ApiError::UpstreamTimeout => "upstream_timeout",
            ApiError::NotFound => "not_found",
        }
    }

    /// OpenAI's `param`: the request field at fault, if one is.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::MissingModel | ApiError::ModelNotFound(_) | ApiError::ModelForbidden(_) => {
                Some("model")
            }
            _ => None,
        }
    }

    /// How long the client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. }
            | ApiError::NoReadyEndpoint { retry_after, .. }
            | ApiError::ColdStartTimeout { retry_after, .. }
            | ApiError::ColdStartQueueFull { retry_after, .. } => Some(*retry_after),
            ApiError::AuthUnavailable(_) => Some(AUTH_RETRY_AFTER),
            _ => None,
        }
    }
}

/// A duration in seconds as people write it: `300`, `0.5`.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.1}", d.as_secs_f64())
    }
}
/// The `Retry-After` of a token that could not be checked.
const AUTH_RETRY_AFTER: Duration = Duration::from_secs(5);

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_seconds(wait)),
            );
        }
        response
    }
}
