//! The one error type of the reconcilers.

use std::time::Duration;

/// What can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (a refusal of a child object among them:
    /// 422 invalid, 403 forbidden, 409 conflict).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The spec is invalid in a way the schema cannot catch; retried only when it changes.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A child's name is taken by an object that belongs to something else;
    /// it is left alone until the user removes it or renames the owner.
    #[error("name taken: {0}")]
    NameConflict(String),
    /// The pass cannot go on for a reason the user must fix outside the
    /// spec, named by the kind (for example `PermissionsNotGranted`).
    #[error("{message}")]
    Blocked {
        /// The condition reason.
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// An object the spec names (a Secret, a ConfigMap) does not exist.
    #[error("missing: {0}")]
    Missing(String),
    /// The object is not ready to be worked on yet (no UID, a step that must
    /// settle first); the next pass goes on.
    #[error("not ready yet: {0}")]
    NotReady(String),
    /// A SageMaker call failed, classified (terminal, recoverable, not found).
    #[error("{0}")]
    SageMaker(#[from] crate::sagemaker::SageMakerError),
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

/// The object's UID; [`Error::NotReady`] until the API server has given it one.
pub fn uid_of<K: kube::Resource<DynamicType = ()>>(obj: &K) -> Result<String> {
    obj.meta()
        .uid
        .clone()
        .ok_or_else(|| Error::NotReady(format!("the {} has no UID yet", K::kind(&()))))
}

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
            Error::NameConflict(_) => "NameConflict",
            Error::Blocked { .. } => "Blocked",
            Error::Missing(_) => "Missing",
            Error::NotReady(_) => "NotReady",
            Error::SageMaker(_) => "SageMaker",
            Error::Serialization(_) => "Serialization",
            Error::CleanupPending(_) => "CleanupPending",
            Error::Finalizer(_) => "Finalizer",
        }
    }

    /// The CamelCase reason of the `Ready=False` condition a failed pass
    /// leaves: what kind of failure, for `kubectl get -o wide` and alerts.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) => match s.code {
                409 => "Conflict",
                403 => "Forbidden",
                422 | 400 => "Refused",
                404 => "NotFound",
                _ => "KubernetesAPIError",
            },
            Error::Kube(_) => "KubernetesAPIUnreachable",
            Error::SageMaker(e) => e.reason(),
            Error::Blocked { reason, .. } => reason,
            Error::Finalizer(_) => "FinalizerFailed",
            other => other.metric_label(),
        }
    }

    /// The message for a condition or an Event: the error in full, cut to
    /// fit (an API server's refusal can quote a whole object; Events take 1 kiB).
    pub fn user_message(&self) -> String {
        const MAX: usize = 900;
        let text = self.to_string();
        if text.len() <= MAX {
            return text;
        }
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{} …", &text[..cut])
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
    #[test]
    fn reasons_name_the_kind_of_failure_and_messages_fit_an_event() {
        let refused = Error::Kube(kube::Error::Api(
            kube::core::Status::failure(&"x".repeat(5000), "Invalid")
                .with_code(422)
                .boxed(),
        ));
        assert_eq!(refused.reason(), "Refused");
        let message = refused.user_message();
        assert!(message.len() <= 904 && message.ends_with(" …"), "{message}");
        let region = Error::SageMaker(crate::sagemaker::SageMakerError::Terminal {
            operation: "Configure",
            code: "MissingRegion".into(),
            message: "no region".into(),
        });
        assert_eq!(region.reason(), "SageMakerRejected");
        assert_eq!(Error::NameConflict("x".into()).reason(), "NameConflict");
        assert_eq!(Error::Missing("x".into()).reason(), "Missing");
    }
}
