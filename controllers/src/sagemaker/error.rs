//! The one error type of SageMaker calls, and how a failed call is classified.

use std::fmt;

/// The longest message kept from an error, in characters.
const MAX_MESSAGE: usize = 512;

/// Why a call that retrying may fix failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoverableKind {
    /// SageMaker throttled the call.
    Throttled,
    /// SageMaker answered 5xx or an unreadable response.
    ServerError,
    /// The request did not get through (connection refused, reset, DNS).
    Network,
    /// The call timed out.
    Timeout,
    /// Credentials were missing, expired or not accepted; fixing IAM or the
    /// credential source outside the spec fixes it.
    Auth,
}

impl fmt::Display for RecoverableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Throttled => "throttled",
            Self::ServerError => "server error",
            Self::Network => "network error",
            Self::Timeout => "timeout",
            Self::Auth => "credentials",
        })
    }
}

/// A failed SageMaker call, classified. Messages hold SageMaker's error code and
/// message, never request bodies, headers or credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SageMakerError {
    /// The resource does not exist.
    #[error("SageMaker {operation}: not found: {message}")]
    NotFound {
        /// The operation.
        operation: &'static str,
        /// SageMaker's message.
        message: String,
    },
    /// A resource with that name exists already.
    #[error("SageMaker {operation}: already exists: {message}")]
    AlreadyExists {
        /// The operation.
        operation: &'static str,
        /// SageMaker's message.
        message: String,
    },
    /// SageMaker rejected the request; retrying the same request cannot help.
    #[error("SageMaker {operation} rejected the request ({code}): {message}")]
    Terminal {
        /// The operation.
        operation: &'static str,
        /// SageMaker's error code, for example `ValidationException`.
        code: String,
        /// SageMaker's message.
        message: String,
    },
    /// The call failed in a way retrying may fix.
    #[error("SageMaker {operation} failed ({kind}); retrying: {message}")]
    Recoverable {
        /// The operation.
        operation: &'static str,
        /// Why.
        kind: RecoverableKind,
        /// What happened.
        message: String,
    },
}

impl SageMakerError {
    /// Whether the resource does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Whether a resource with that name exists already.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. })
    }

    /// Whether retrying may fix it.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Self::Recoverable { .. })
    }

    /// Whether SageMaker rejected the request for good.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Terminal { .. })
    }

    /// The operation that failed.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::NotFound { operation, .. }
            | Self::AlreadyExists { operation, .. }
            | Self::Terminal { operation, .. }
            | Self::Recoverable { operation, .. } => operation,
        }
    }

    /// SageMaker's message (or what happened, for errors without a response).
    pub fn message(&self) -> &str {
        match self {
            Self::NotFound { message, .. }
            | Self::AlreadyExists { message, .. }
            | Self::Terminal { message, .. }
            | Self::Recoverable { message, .. } => message,
        }
    }

    /// The `outcome` label of `aleph_sagemaker_calls_total`: a bounded set.
    pub fn metric_outcome(&self) -> &'static str {
        self.labels().0
    }

    /// A CamelCase condition reason for this error.
    pub fn reason(&self) -> &'static str {
        self.labels().1
    }

    /// Each kind of error's metric outcome and condition reason, side by side.
    fn labels(&self) -> (&'static str, &'static str) {
        use RecoverableKind as K;
        match self {
            Self::NotFound { .. } => ("not_found", "SageMakerNotFound"),
            Self::AlreadyExists { .. } => ("already_exists", "SageMakerConflict"),
            Self::Terminal { .. } => ("terminal", "SageMakerRejected"),
            Self::Recoverable { kind, .. } => match kind {
                K::Throttled => ("throttled", "SageMakerThrottled"),
                K::ServerError => ("server_error", "SageMakerUnavailable"),
                K::Network | K::Timeout => ("network", "SageMakerUnreachable"),
                K::Auth => ("auth", "SageMakerAccessDenied"),
            },
        }
    }

    pub(crate) fn recoverable(
        operation: &'static str,
        kind: RecoverableKind,
        message: impl Into<String>,
    ) -> Self {
        Self::Recoverable {
            operation,
            kind,
            message: clean_message(&message.into()),
        }
    }
}

const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

const SERVER_CODES: &[&str] = &[
    "InternalFailure",
    "InternalServerError",
    "InternalServerException",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
];

const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "RequestExpired",
    "AuthFailure",
];

/// Classifies a failed call from what SageMaker answered: the HTTP status, the
/// error code (`__type`) and the message.
///
/// SageMaker reports a missing resource in two ways: the modelled
/// `ResourceNotFound`, and, for most Describe and Delete operations, a
/// `ValidationException` whose message says so ("Requested resource not
/// found.", "Could not find model ..."). Likewise a duplicate name is
/// `ResourceInUse` for training jobs and a `ValidationException` ("Cannot
/// create already existing endpoint ...") for models, configs and endpoints.
pub fn classify(
    operation: &'static str,
    http_status: Option<u16>,
    code: Option<&str>,
    message: Option<&str>,
) -> SageMakerError {
    let code = code.map(strip_code).unwrap_or_default();
    let message = clean_message(message.unwrap_or_default());
    let lower = message.to_ascii_lowercase();
    let status = http_status.unwrap_or_default();

    if THROTTLING_CODES.contains(&code) || status == 429 {
        return SageMakerError::Recoverable {
            operation,
            kind: RecoverableKind::Throttled,
            message: describe(code, &message, status),
        };
    }
    if SERVER_CODES.contains(&code) || status >= 500 {
        return SageMakerError::Recoverable {
            operation,
            kind: RecoverableKind::ServerError,
            message: describe(code, &message, status),
        };
    }
    if AUTH_CODES.contains(&code) {
        return SageMakerError::Recoverable {
            operation,
            kind: RecoverableKind::Auth,
            message: describe(code, &message, status),
        };
    }
    let not_found = code == "ResourceNotFound"
        || code == "ResourceNotFoundException"
        || (code == "ValidationException"
            && (lower.contains("not found")
                || lower.contains("could not find")
                || lower.contains("does not exist")));
    if not_found {
        return SageMakerError::NotFound { operation, message };
    }
    let exists = code == "ResourceInUse"
        || code == "ResourceInUseException"
        || (code == "ValidationException" && lower.contains("already exist"));
    if exists {
        return SageMakerError::AlreadyExists { operation, message };
    }
    let code = if code.is_empty() {
        if status == 0 {
            "Unknown".to_string()
        } else {
            format!("HTTP{status}")
        }
    } else {
        code.to_string()
    };
    SageMakerError::Terminal {
        operation,
        code,
        message,
    }
}

/// `aws.protocoltests#ValidationException` and `ValidationException:http://...`
/// both mean `ValidationException`.
fn strip_code(code: &str) -> &str {
    let code = code.rsplit('#').next().unwrap_or(code);
    code.split(':').next().unwrap_or(code).trim()
}

fn describe(code: &str, message: &str, status: u16) -> String {
    match (code.is_empty(), message.is_empty()) {
        (false, false) => format!("{code}: {message}"),
        (false, true) => code.to_string(),
        (true, false) => format!("HTTP {status}: {message}"),
        (true, true) => format!("HTTP {status}"),
    }
}

/// Keeps a message to one line of bounded length.
pub(crate) fn clean_message(message: &str) -> String {
    let one_line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    one_line.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Throttling, server errors and expired credentials pass with time:
    /// each is recoverable, with its own metric outcome and reason.
    #[test]
    fn recoverable_errors_by_kind() {
        let throttled = ("throttled", "SageMakerThrottled");
        let unavailable = ("server_error", "SageMakerUnavailable");
        let cases = [
            (400, "ThrottlingException", "Rate exceeded", throttled),
            (429, "", "", throttled),
            (500, "InternalFailure", "", unavailable),
            (503, "ServiceUnavailable", "", unavailable),
            (502, "", "", unavailable),
            (
                400,
                "ExpiredTokenException",
                "expired",
                ("auth", "SageMakerAccessDenied"),
            ),
        ];
        for (status, code, message, (outcome, reason)) in cases {
            let some = |s: &'static str| (!s.is_empty()).then_some(s);
            let e = classify("DescribeModel", Some(status), some(code), some(message));
            assert!(e.is_recoverable(), "{status} {code}: {e:?}");
            assert_eq!(
                (e.metric_outcome(), e.reason()),
                (outcome, reason),
                "{status} {code}"
            );
        }
    }

    /// SageMaker says "not found" and "already exists" with its own codes
    /// and with a ValidationException whose message tells; both count.
    #[test]
    fn missing_and_duplicate_resources_in_every_spelling() {
        const MISSING: &str = "not_found";
        const TAKEN: &str = "already_exists";
        let cases = [
            (
                "DescribeTrainingJob",
                "ValidationException",
                "Requested resource not found.",
                MISSING,
            ),
            (
                "DescribeModel",
                "ValidationException",
                "Could not find model \"arn:aws:sagemaker:x\".",
                MISSING,
            ),
            (
                "DescribeEndpoint",
                "ValidationException",
                "Could not find endpoint \"e\".",
                MISSING,
            ),
            (
                "DescribeEndpointConfig",
                "ValidationException",
                "Could not find endpoint configuration \"c\".",
                MISSING,
            ),
            (
                "StopTrainingJob",
                "ResourceNotFound",
                "Requested resource not found.",
                MISSING,
            ),
            (
                "DescribeTrainingJob",
                "com.amazonaws.sagemaker#ResourceNotFound",
                "",
                MISSING,
            ),
            (
                "CreateTrainingJob",
                "ResourceInUse",
                "Training job names must be unique",
                TAKEN,
            ),
            (
                "CreateModel",
                "ValidationException",
                "Cannot create already existing model \"m\".",
                TAKEN,
            ),
            (
                "CreateEndpoint",
                "ValidationException",
                "Cannot create already existing endpoint \"e\".",
                TAKEN,
            ),
        ];
        for (op, code, message, outcome) in cases {
            let e = classify(op, Some(400), Some(code), Some(message));
            assert_eq!(e.metric_outcome(), outcome, "{op} {code} {message}: {e:?}");
            assert_eq!(e.is_not_found(), outcome == MISSING, "{op}: {e:?}");
            assert_eq!(e.is_already_exists(), outcome == TAKEN, "{op}: {e:?}");
        }
    }

    #[test]
    fn validation_and_limits_are_terminal() {
        let e = classify(
            "CreateTrainingJob",
            Some(400),
            Some("ValidationException"),
            Some(
                "1 validation error detected: Value 'ml.x' at 'resourceConfig.instanceType' failed",
            ),
        );
        assert!(e.is_terminal());
        assert_eq!(e.metric_outcome(), "terminal");
        let e = classify(
            "CreateEndpoint",
            Some(400),
            Some("ResourceLimitExceeded"),
            Some("quota"),
        );
        assert!(
            matches!(e, SageMakerError::Terminal { ref code, .. } if code == "ResourceLimitExceeded")
        );
        let e = classify("CreateEndpoint", Some(404), None, None);
        assert!(matches!(e, SageMakerError::Terminal { ref code, .. } if code == "HTTP404"));
    }

    #[test]
    fn messages_are_one_bounded_line() {
        let long = "x\n".repeat(2000);
        let e = classify(
            "DescribeModel",
            Some(400),
            Some("ValidationException"),
            Some(&long),
        );
        assert!(!e.message().contains('\n'));
        assert!(e.message().chars().count() <= MAX_MESSAGE);
    }
}
