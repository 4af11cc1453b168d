//! The one error type of the reconcilers.

use std::time::Duration;

/// What can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The spec is invalid in a way the schema cannot catch; retried only when it changes.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// An object the spec depends on is missing or not ready yet.
    #[error("waiting: {0}")]
    Dependency(String),
    /// A SageMaker call failed in a way retrying may fix.
    #[error("SageMaker: {0}")]
    SageMaker(String),
    /// An object could not be decoded or encoded.
    #[error("serialization: {0}")]
    Serialization(String),
    /// Deletion waits for something outside the cluster (a job stopping, an
    /// endpoint being deleted); the finalizer stays and the cleanup runs again.
    #[error("cleanup pending: {0}")]
    CleanupPending(String),
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

/// Reconcile result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The outcome of a reconcile run through `kube::runtime::finalizer`: the
/// reconciler's own errors come out unwrapped, and a finalizer that cannot be
/// removed because the object is already gone is no error at all.
pub fn from_finalizer(
    result: std::result::Result<
        kube::runtime::controller::Action,
        kube::runtime::finalizer::Error<Error>,
    >,
) -> Result<kube::runtime::controller::Action> {
    use kube::runtime::finalizer::Error as F;
    match result {
        Ok(action) => Ok(action),
        Err(F::ApplyFailed(e) | F::CleanupFailed(e)) => Err(e),
        Err(F::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(kube::runtime::controller::Action::await_change())
        }
        Err(other) => Err(Error::Finalizer(Box::new(other))),
    }
}

impl Error {
    /// The variant's name: a bounded metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "Conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "Forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => "Invalid",
            Error::Kube(_) => "Kube",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Dependency(_) => "Dependency",
            Error::SageMaker(_) => "SageMaker",
            Error::Serialization(_) => "Serialization",
            Error::CleanupPending(_) => "CleanupPending",
            Error::Finalizer(_) => "Finalizer",
        }
    }

    /// Whether retrying without a spec change is pointless.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::InvalidSpec(_))
    }
}

/// Per-object exponential backoff with jitter: `base * 2^failures`, capped,
/// with up to 20% random jitter so retries of many objects spread out.
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX));
    let capped = exp.min(cap);
    let jitter = rand::random::<f64>() * 0.2;
    capped.mul_f64(1.0 + jitter).min(cap.mul_f64(1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        let first = backoff(0, base, cap);
        assert!(first >= base && first <= base.mul_f64(1.2));
        let fifth = backoff(5, base, cap);
        assert!(fifth >= Duration::from_secs(32));
        let huge = backoff(40, base, cap);
        assert!(huge <= cap.mul_f64(1.2) && huge >= cap);
    }
}
