//! Who is calling. Every authenticator turns a bearer credential into the
//! same [`Caller`]; API keys are the first, Kubernetes ServiceAccount tokens
//! (TokenReview) and OIDC tokens are meant to be further variants of
//! [`Authenticator`] tried in turn.

use axum::http::{HeaderMap, header};

use crate::error::ApiError;
use crate::state::Snapshot;

/// An authenticated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The tenant it acts for: its models, limits and usage.
    pub tenant: String,
    /// The credential's id (for a key, `namespace/secret-name`).
    pub key_name: String,
}

/// One way of recognising a bearer credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authenticator {
    /// API keys from the snapshot, compared by SHA-256.
    ApiKeys,
}

impl Authenticator {
    /// The caller `token` identifies, or `None` if this authenticator does not
    /// recognise it (another one may).
    pub async fn authenticate(&self, token: &str, snapshot: &Snapshot) -> Option<Caller> {
        match self {
            Authenticator::ApiKeys => snapshot.key_owner(token).map(|info| Caller {
                tenant: info.tenant.clone(),
                key_name: info.name.clone(),
            }),
        }
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Tries each authenticator in order: 401 without a bearer token or when none
/// recognises it.
pub async fn authenticate(
    authenticators: &[Authenticator],
    headers: &HeaderMap,
    snapshot: &Snapshot,
) -> Result<Caller, ApiError> {
    let token = bearer(headers).ok_or(ApiError::MissingKey)?;
    for authenticator in authenticators {
        if let Some(caller) = authenticator.authenticate(token, snapshot).await {
            return Ok(caller);
        }
    }
    Err(ApiError::InvalidKey)
}
