//! Kubernetes tokens (a pod's ServiceAccount token, above all), checked by
//! the API server itself with a TokenReview (`authentication.k8s.io/v1`).
//!
//! Each review's answer, authenticated or not, is kept for a short while
//! ([`TokenReviewConfig::cache_ttl`]), keyed by the token's SHA-256, so that
//! a busy client costs the API server one review per period, not one per
//! request; never past the token's own `exp` when it is a JWT. Failures to
//! reach the API server are not kept. A revoked token (its ServiceAccount or
//! pod deleted) may so be accepted for up to the cache period, as the API
//! server's own webhook token cache allows.
//!
//! RBAC: `create` on `tokenreviews` (group `authentication.k8s.io`), nothing else.

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::cache::{TokenCache, digest};
use super::{AuthFailure, TokenRejection, oidc};

/// How tokens are reviewed.
#[derive(Clone, Debug)]
pub struct TokenReviewConfig {
    /// The audiences a token must be for (one of them); empty: the API
    /// server's own.
    pub audiences: Vec<String>,
    /// How long an answer is kept.
    pub cache_ttl: Duration,
    /// How many answers are kept at most.
    pub cache_capacity: usize,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            audiences: Vec::new(),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 10_000,
        }
    }
}

/// Who the API server says a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedUser {
    /// `status.user.username`, e.g. `system:serviceaccount:team-a:ci`.
    pub username: String,
    /// `status.user.groups`.
    pub groups: Vec<String>,
}

impl ReviewedUser {
    /// `(namespace, name)` of a ServiceAccount user.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then_some((namespace, name))
    }
}

/// Reviews tokens through the API server, with a cache.
#[derive(Debug)]
pub struct TokenReviewer {
    api: Api<TokenReview>,
    config: TokenReviewConfig,
    cache: TokenCache<Result<ReviewedUser, TokenRejection>>,
}

impl TokenReviewer {
    /// A reviewer asking the API server `client` talks to.
    pub fn new(client: kube::Client, config: TokenReviewConfig) -> Self {
        Self {
            api: Api::all(client),
            cache: TokenCache::new(config.cache_capacity),
            config,
        }
    }

    /// How many answers the cache holds.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Who `token` is, from the cache or a new TokenReview.
    pub async fn review(&self, token: &str) -> Result<ReviewedUser, AuthFailure> {
        let key = digest(token);
        if let Some(answer) = self.cache.get(&key, Instant::now()) {
            return answer.map_err(AuthFailure::Rejected);
        }
        let answer = self.ask(token).await?;
        let now = Instant::now();
        let mut until = now + self.config.cache_ttl;
        if let Some(expires) = oidc::unverified_expiry(token) {
            until = until.min(expires);
        }
        if until > now {
            self.cache.insert(key, answer.clone(), until, now);
        }
        answer.map_err(AuthFailure::Rejected)
    }

    async fn ask(&self, token: &str) -> Result<Result<ReviewedUser, TokenRejection>, AuthFailure> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.config.audiences.is_empty())
                    .then(|| self.config.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answered = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "TokenReview failed");
                AuthFailure::Unavailable(
                    "the API server could not review the token; try again".to_owned(),
                )
            })?;
        let status = answered.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Ok(Err(TokenRejection::NotAuthenticated(why)));
        }
        // An API server that ignores the audiences asked for would say so by
        // returning none of them.
        if !self.config.audiences.is_empty()
            && !status
                .audiences
                .unwrap_or_default()
                .iter()
                .any(|a| self.config.audiences.contains(a))
        {
            return Ok(Err(TokenRejection::NotAuthenticated(format!(
                "the token is not for the audiences {}",
                self.config.audiences.join(", ")
            ))));
        }
        let user = status.user.unwrap_or_default();
        match user.username.filter(|u| !u.is_empty()) {
            Some(username) => Ok(Ok(ReviewedUser {
                username,
                groups: user.groups.unwrap_or_default(),
            })),
            None => Ok(Err(TokenRejection::NotAuthenticated(
                "the review named no user".to_owned(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_names_are_read_from_the_username() {
        let user = |name: &str| ReviewedUser {
            username: name.into(),
            groups: vec![],
        };
        assert_eq!(
            user("system:serviceaccount:team-a:ci").service_account(),
            Some(("team-a", "ci"))
        );
        assert_eq!(user("alice").service_account(), None);
        assert_eq!(user("system:serviceaccount:team-a").service_account(), None);
        assert_eq!(user("system:serviceaccount::ci").service_account(), None);
        assert_eq!(user("system:serviceaccount:a:b:c").service_account(), None);
    }
}
