//! Who is calling. Three kinds of bearer credential turn into the same
//! [`Caller`]: the tenants it acts for and a bounded, non-secret name for
//! its metrics.
//!
//! 1. **API keys**: a token whose SHA-256 a key Secret holds acts for that
//!    Secret's tenant. A token starting `sk-aleph-` is an API key or nothing.
//! 2. **OIDC tokens** ([`oidc`]): a JWT whose `iss` is the configured issuer,
//!    verified against the issuer's keys. It acts for every tenant that lists
//!    its user (the username claim) as a `User` owner or one of its groups
//!    (the groups claim) as a `Group` owner.
//! 3. **Kubernetes tokens** ([`token_review`]): any other token is sent to
//!    the API server in a TokenReview. A ServiceAccount
//!    (`system:serviceaccount:<ns>:<name>`) acts for the tenant whose
//!    namespace `<ns>` is; another user the API server knows is matched
//!    against the owners as an OIDC user is.
//!
//! A caller may act for several tenants (a user in two teams' groups): it
//! lists all their models, and each request is the tenant's whose model it
//! calls, which is charged for it and whose limits apply. When two of its
//! tenants have a model of the same name, the bare name is the first
//! tenant's by name and the other is called `namespace/name`
//! ([`Snapshot::models_for`]). An authenticated caller that acts for no
//! tenant gets 403; a credential that does not authenticate gets 401.

pub mod cache;
pub mod oidc;
pub mod token_review;

use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::error::ApiError;
use crate::state::Snapshot;

pub use oidc::{OidcConfig, OidcVerifier};
pub use token_review::{ReviewedUser, TokenReviewer};

/// The prefix of every API key `aleph-gateway keygen` makes.
pub const API_KEY_PREFIX: &str = "sk-aleph-";

/// The longest user name kept in a metric label; longer ones are cut.
const LABEL_NAME_MAX: usize = 128;

/// An authenticated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The tenants it acts for, sorted by name, never empty: their models,
    /// limits and usage.
    pub tenants: Vec<String>,
    /// The credential's id, the `key` label of its token counts and a log
    /// field, never a secret: `namespace/secret-name` for a key,
    /// `sa:<namespace>/<name>` for a ServiceAccount, `oidc:<username>` for an
    /// OIDC token, `user:<username>` for another user the API server knows.
    pub key_name: String,
}

impl Caller {
    /// The tenant its requests count under before they name a model: its
    /// only tenant, or none (empty) when it acts for several.
    pub fn single_tenant(&self) -> &str {
        match self.tenants.as_slice() {
            [only] => only,
            _ => "",
        }
    }
}

/// Why a bearer token was refused (401), each with its own `code`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    /// Not a JWT (three base64url parts), or its header or claims do not parse.
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    /// Signed with an algorithm the gateway does not accept (`none`, HMAC).
    #[error(
        "the token is signed with {0}, which is not accepted (RS*, PS*, ES256, ES384, EdDSA are)"
    )]
    UnsupportedAlgorithm(String),
    /// Its `kid` is not among the issuer's keys, even after fetching them again.
    #[error("the token's signing key `{0}` is not among the issuer's keys")]
    UnknownKey(String),
    /// The signature does not verify with the issuer's key.
    #[error("the token's signature does not verify with the issuer's key")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still to come.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `aud` does not include the gateway's client id.
    #[error("the token's audience does not include `{0}`")]
    WrongAudience(String),
    /// `iss` is not the configured issuer (and no TokenReview could take it).
    #[error("the token's issuer `{found}` is not the configured issuer `{expected}`")]
    WrongIssuer {
        /// The token's `iss`.
        found: String,
        /// The configured issuer.
        expected: String,
    },
    /// A claim the gateway needs is missing or not a string.
    #[error("the token has no string claim `{0}`")]
    MissingClaim(String),
    /// The API server's TokenReview did not authenticate it.
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
}

impl TokenRejection {
    /// OpenAI's `code` of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            TokenRejection::Malformed(_) => "invalid_token",
            TokenRejection::UnsupportedAlgorithm(_) => "unsupported_token_algorithm",
            TokenRejection::UnknownKey(_) => "unknown_token_key",
            TokenRejection::BadSignature => "invalid_token_signature",
            TokenRejection::Expired => "token_expired",
            TokenRejection::NotYetValid => "token_not_yet_valid",
            TokenRejection::WrongAudience(_) => "invalid_token_audience",
            TokenRejection::WrongIssuer { .. } => "invalid_token_issuer",
            TokenRejection::MissingClaim(_) => "missing_token_claim",
            TokenRejection::NotAuthenticated(_) => "token_not_authenticated",
        }
    }
}

/// What checking a token gave besides an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// The token is refused: 401.
    Rejected(TokenRejection),
    /// The token could not be checked now (the issuer or the API server did
    /// not answer): 503, to be retried.
    Unavailable(String),
}

impl From<AuthFailure> for ApiError {
    fn from(failure: AuthFailure) -> Self {
        match failure {
            AuthFailure::Rejected(rejection) => ApiError::TokenRejected(rejection),
            AuthFailure::Unavailable(why) => ApiError::AuthUnavailable(why),
        }
    }
}

/// The ways of authenticating besides API keys (which are always on).
#[derive(Clone, Debug, Default)]
pub struct Authenticators {
    /// OIDC tokens of one issuer.
    pub oidc: Option<Arc<OidcVerifier>>,
    /// Kubernetes tokens, by TokenReview.
    pub token_review: Option<Arc<TokenReviewer>>,
}

impl Authenticators {
    /// API keys only.
    pub fn api_keys_only() -> Self {
        Self::default()
    }

    /// The caller the request's bearer token identifies: 401 without one or
    /// when it does not authenticate, 403 when it authenticates but acts for
    /// no tenant, 503 when it could not be checked.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        snapshot: &Snapshot,
    ) -> Result<Caller, ApiError> {
        let token = bearer(headers).ok_or(ApiError::MissingKey)?;
        if let Some(info) = snapshot.key_owner(token) {
            return Ok(Caller {
                tenants: vec![info.tenant.clone()],
                key_name: info.name.clone(),
            });
        }
        if token.starts_with(API_KEY_PREFIX) {
            return Err(ApiError::InvalidKey);
        }
        let issuer = oidc::unverified_issuer(token);
        if let Some(verifier) = &self.oidc
            && issuer.as_deref() == Some(verifier.issuer())
        {
            let user = verifier.verify(token).await?;
            return person(snapshot, "oidc", &user.username, &user.groups);
        }
        if let Some(reviewer) = &self.token_review {
            let user = reviewer.review(token).await?;
            return match user.service_account() {
                Some((namespace, name)) => match snapshot.tenant_of_namespace(namespace) {
                    Some(tenant) => Ok(Caller {
                        tenants: vec![tenant.to_owned()],
                        key_name: format!("sa:{namespace}/{name}"),
                    }),
                    None => Err(ApiError::NoTenant(format!(
                        "the service account {namespace}/{name} is not in a tenant's namespace"
                    ))),
                },
                None => person(snapshot, "user", &user.username, &user.groups),
            };
        }
        match (&self.oidc, issuer) {
            (Some(verifier), Some(found)) => {
                Err(ApiError::TokenRejected(TokenRejection::WrongIssuer {
                    found,
                    expected: verifier.issuer().to_owned(),
                }))
            }
            _ => Err(ApiError::InvalidKey),
        }
    }
}

/// A caller known by a user name and groups: the tenants they own.
fn person(
    snapshot: &Snapshot,
    kind: &str,
    username: &str,
    groups: &[String],
) -> Result<Caller, ApiError> {
    let tenants = snapshot.tenants_owned_by(username, groups);
    if tenants.is_empty() {
        let groups = if groups.is_empty() {
            "no groups".to_owned()
        } else {
            format!("groups {}", groups.join(", "))
        };
        return Err(ApiError::NoTenant(format!(
            "the user {username} ({groups}) owns no tenant: a Tenant lists its owners \
             in spec.owners (kind User or Group)"
        )));
    }
    let name: String = username.chars().take(LABEL_NAME_MAX).collect();
    Ok(Caller {
        tenants,
        key_name: format!("{kind}:{name}"),
    })
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_of_several_tenants_counts_under_none_until_it_names_a_model() {
        let one = Caller {
            tenants: vec!["acme".into()],
            key_name: "k".into(),
        };
        assert_eq!(one.single_tenant(), "acme");
        let two = Caller {
            tenants: vec!["acme".into(), "globex".into()],
            key_name: "k".into(),
        };
        assert_eq!(two.single_tenant(), "");
    }
}
