//! OIDC bearer tokens from the organisation's identity provider (Keycloak,
//! Dex, Entra ID, ...).
//!
//! The gateway reads the issuer's discovery document
//! (`<issuer>/.well-known/openid-configuration`), whose `issuer` must be the
//! configured one, then the key set at its `jwks_uri`, and keeps the keys. A
//! token whose `kid` is not among them makes it fetch the keys again (so a
//! rotated key is picked up at once), at most once per
//! [`OidcConfig::min_refresh_interval`] whatever tokens arrive; keys older
//! than [`OidcConfig::max_key_age`] are fetched again on the next token (so a
//! withdrawn key stops working), the old ones kept if the issuer does not
//! answer.
//!
//! A token is accepted when its signature verifies with the issuer's key of
//! its `kid` (RS256/384/512, PS256/384/512, ES256/384 or EdDSA; never `none`
//! or HMAC), its `iss` is the issuer, its `aud` includes the client id, and
//! `exp` has not passed nor `nbf` still to come (give or take
//! [`OidcConfig::leeway`]). The user is its username claim (`sub` by
//! default; Keycloak users often prefer `preferred_username`), and its
//! groups the groups claim (`groups`: a list of strings, or one string).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aleph_util::http::fetch;
use axum::http::{Request, Uri, header};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{AuthFailure, TokenRejection};

/// The signature algorithms accepted: asymmetric ones only.
const ACCEPTED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The largest discovery document or key set read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// How the issuer is trusted and its tokens read.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// The issuer, exactly as its tokens' `iss` says (`https://sso.example.com/realms/acme`).
    pub issuer_url: String,
    /// The client id the tokens' `aud` must include.
    pub audience: String,
    /// The claim naming the user (matched against `User` owners).
    pub username_claim: String,
    /// The claim listing the user's groups (matched against `Group` owners).
    pub groups_claim: String,
    /// PEM certificates the issuer's TLS certificate must chain to, instead
    /// of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The shortest time between two fetches of the keys.
    pub min_refresh_interval: Duration,
    /// Keys older than this are fetched again on the next token.
    pub max_key_age: Duration,
    /// How long one fetch from the issuer may take.
    pub fetch_timeout: Duration,
}

impl OidcConfig {
    /// The defaults for `issuer_url` and `audience`: `sub` and `groups`,
    /// 30 s of leeway, keys fetched at most every 10 s and at least every 10 min.
    pub fn new(issuer_url: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer_url: issuer_url.into(),
            audience: audience.into(),
            username_claim: "sub".to_owned(),
            groups_claim: "groups".to_owned(),
            ca_file: None,
            leeway: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(10),
            max_key_age: Duration::from_secs(600),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// What is wrong with an OIDC configuration.
#[derive(Debug, thiserror::Error)]
pub enum OidcConfigError {
    /// The issuer is not an http(s) URL.
    #[error("--oidc-issuer-url {0:?} is not an http:// or https:// URL")]
    IssuerUrl(String),
    /// No client id.
    #[error("--oidc-audience (the client id) is required with --oidc-issuer-url")]
    NoAudience,
    /// The CA file cannot be read or holds no certificate.
    #[error("--oidc-ca-file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A user an OIDC token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcUser {
    /// The username claim.
    pub username: String,
    /// The groups claim.
    pub groups: Vec<String>,
}

/// One of the issuer's keys.
struct IssuerKey {
    kid: Option<String>,
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<IssuerKey>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    jwks_uri: Option<String>,
}

/// What a refresh did.
enum Refresh {
    Fetched,
    /// Another fetch was too recent.
    Skipped,
    Failed(String),
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Verifies the tokens of one issuer.
pub struct OidcVerifier {
    config: OidcConfig,
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    keys: RwLock<Arc<KeySet>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    key_fetches: AtomicU64,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// A verifier for `config`; nothing is fetched yet ([`warm_up`](Self::warm_up)
    /// does, and so does the first token).
    pub fn new(config: OidcConfig) -> Result<Self, OidcConfigError> {
        let uri: Uri = config
            .issuer_url
            .parse()
            .map_err(|_| OidcConfigError::IssuerUrl(config.issuer_url.clone()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(OidcConfigError::IssuerUrl(config.issuer_url.clone()));
        }
        if config.audience.is_empty() {
            return Err(OidcConfigError::NoAudience);
        }
        let roots = root_certificates(config.ca_file.as_ref())?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| OidcConfigError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.fetch_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            keys: RwLock::new(Arc::new(KeySet::default())),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            key_fetches: AtomicU64::new(0),
            config,
        })
    }

    /// The issuer, as its tokens' `iss` says.
    pub fn issuer(&self) -> &str {
        &self.config.issuer_url
    }

    /// How many times the key set was fetched.
    pub fn key_fetches(&self) -> u64 {
        self.key_fetches.load(Ordering::Relaxed)
    }

    /// Fetches the issuer's keys now, so that the first token need not wait;
    /// a failure is logged (the next token tries again).
    pub async fn warm_up(&self) {
        if let Refresh::Failed(why) = self.refresh().await {
            tracing::warn!(issuer = %self.config.issuer_url, %why, "could not fetch the OIDC issuer's keys yet");
        }
    }

    /// The user a token names, if the token is valid.
    pub async fn verify(&self, token: &str) -> Result<OidcUser, AuthFailure> {
        let reject = |r| AuthFailure::Rejected(r);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| reject(TokenRejection::Malformed(e.to_string())))?;
        let algorithm = header.alg;
        if !ACCEPTED.contains(&algorithm) {
            return Err(reject(TokenRejection::UnsupportedAlgorithm(format!(
                "{algorithm:?}"
            ))));
        }
        let kid = header.kid.as_deref();

        let mut keys = self.current_keys();
        let stale = keys
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.config.max_key_age);
        let mut failure = None;
        if stale || candidates(&keys, kid, algorithm).is_empty() {
            if let Refresh::Failed(why) = self.refresh().await {
                failure = Some(why);
            }
            keys = self.current_keys();
        }
        let found = candidates(&keys, kid, algorithm);
        if found.is_empty() {
            return Err(if keys.fetched_at.is_none() {
                AuthFailure::Unavailable(format!(
                    "the OIDC issuer's keys could not be fetched yet{}",
                    failure.map(|why| format!(": {why}")).unwrap_or_default()
                ))
            } else {
                reject(TokenRejection::UnknownKey(
                    kid.unwrap_or("(no kid)").to_owned(),
                ))
            });
        }

        let mut validation = Validation::new(algorithm);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer_url]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = TokenRejection::BadSignature;
        for key in found {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.user(&data.claims).map_err(reject),
                Err(error) => {
                    last = rejection(error.kind(), &self.config.audience);
                    // Another key without a kid may still verify it.
                    if last != TokenRejection::BadSignature {
                        break;
                    }
                }
            }
        }
        Err(reject(last))
    }

    fn user(&self, claims: &Map<String, Value>) -> Result<OidcUser, TokenRejection> {
        let username = claims
            .get(&self.config.username_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| TokenRejection::MissingClaim(self.config.username_claim.clone()))?;
        let groups = match claims.get(&self.config.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(OidcUser {
            username: username.to_owned(),
            groups,
        })
    }

    fn current_keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches the keys unless another fetch happened within the minimum
    /// interval (one that ran while this one waited counts).
    async fn refresh(&self) -> Refresh {
        let mut state = self.refresh.lock().await;
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.config.min_refresh_interval)
        {
            return Refresh::Skipped;
        }
        state.last_attempt = Some(Instant::now());
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => match self.discover().await {
                Ok(uri) => {
                    state.jwks_uri = Some(uri.clone());
                    uri
                }
                Err(why) => return Refresh::Failed(why),
            },
        };
        self.key_fetches.fetch_add(1, Ordering::Relaxed);
        let set: JwkSet = match self.get_json(&jwks_uri).await {
            Ok(set) => set,
            Err(why) => {
                // The issuer may have moved its keys: ask its discovery again next time.
                state.jwks_uri = None;
                return Refresh::Failed(why);
            }
        };
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => keys.push(IssuerKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm: jwk
                        .common
                        .key_algorithm
                        .and_then(|a| Algorithm::try_from(a).ok()),
                    key,
                }),
                Err(error) => tracing::debug!(kid = ?jwk.common.key_id, %error, "OIDC key skipped"),
            }
        }
        tracing::info!(issuer = %self.config.issuer_url, keys = keys.len(), "OIDC keys fetched");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        });
        Refresh::Fetched
    }

    async fn discover(&self) -> Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer_url.trim_end_matches('/')
        );
        let discovery: Discovery = self.get_json(&url).await?;
        if discovery.issuer != self.config.issuer_url {
            return Err(format!(
                "the discovery document names the issuer {:?}, not {:?}",
                discovery.issuer, self.config.issuer_url
            ));
        }
        Ok(discovery.jwks_uri)
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let request = Request::get(url)
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let body = fetch(
            &self.http,
            request,
            MAX_DOCUMENT_BYTES,
            self.config.fetch_timeout,
        )
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
    }
}

/// The keys that may have signed a token of `kid` and `algorithm`.
fn candidates<'a>(keys: &'a KeySet, kid: Option<&str>, algorithm: Algorithm) -> Vec<&'a IssuerKey> {
    keys.keys
        .iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .filter(|k| k.algorithm.is_none_or(|a| a == algorithm))
        .filter(|k| k.key.family() == algorithm.family())
        .collect()
}

fn rejection(kind: &ErrorKind, audience: &str) -> TokenRejection {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            TokenRejection::BadSignature
        }
        ErrorKind::ExpiredSignature => TokenRejection::Expired,
        ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
        ErrorKind::InvalidAudience => TokenRejection::WrongAudience(audience.to_owned()),
        ErrorKind::MissingRequiredClaim(claim) => TokenRejection::MissingClaim(claim.clone()),
        other => TokenRejection::Malformed(format!("{other:?}")),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn root_certificates(ca_file: Option<&PathBuf>) -> Result<rustls::RootCertStore, OidcConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let error = |reason: String| OidcConfigError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| error(e.to_string()))?;
                roots.add(cert).map_err(|e| error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(error("no PEM certificate in it".to_owned()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!(%error, "a system CA certificate could not be read");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system CA certificates: an https OIDC issuer needs --oidc-ca-file"
                );
            }
        }
    }
    Ok(roots)
}

#[derive(Deserialize)]
struct UnverifiedClaims {
    #[serde(default)]
    iss: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
}

fn unverified_claims(token: &str) -> Option<UnverifiedClaims> {
    // Three dot-separated parts, or it is no JWT (an opaque token).
    if token.split('.').count() != 3 {
        return None;
    }
    jsonwebtoken::dangerous::insecure_decode_claims(token).ok()
}

/// The `iss` a JWT claims, unverified: which authenticator should check it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    match unverified_claims(token)?.iss? {
        Value::String(iss) => Some(iss),
        _ => None,
    }
}

/// When a JWT claims to expire, unverified: a cached answer about it never
/// outlives it.
pub fn unverified_expiry(token: &str) -> Option<Instant> {
    let exp = unverified_claims(token)?.exp?.as_f64()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let left = Duration::try_from_secs_f64((exp - now).max(0.0)).ok()?;
    Instant::now().checked_add(left)
}
