//! An OIDC issuer the test runs on this machine, as an organisation's
//! identity provider would be: its discovery document and key set over HTTP,
//! and ES256 tokens signed with a key made when it starts.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use rand::RngCore;
use serde_json::{Value, json};

/// A running issuer; it stops with the test's runtime.
pub struct LocalIssuer {
    /// Its URL, `http://<ip>:<port>`: what its tokens' `iss` says.
    pub url: String,
    kid: String,
    key: EncodingKey,
}

struct Published {
    url: String,
    jwk: Value,
}

/// A JSON response.
fn as_json(value: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

impl LocalIssuer {
    /// An issuer listening on `ip` (a port of its own), with a fresh P-256 key.
    pub async fn start(ip: &str) -> LocalIssuer {
        let secret = loop {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                break secret;
            }
        };
        let der = secret
            .to_pkcs8_der()
            .unwrap_or_else(|e| panic!("PKCS#8 of the issuer's key: {e}"));
        let key = EncodingKey::from_ec_der(der.as_bytes());
        let kid = format!("e2e-{}", &crate::unique_name("k")[2..]);
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
            .unwrap_or_else(|e| panic!("the issuer's JWK: {e}"));
        jwk.common.key_id = Some(kid.clone());

        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("the issuer cannot listen on {ip}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the issuer's address: {e}"));
        let url = format!("http://{addr}");
        let published = Arc::new(Published {
            url: url.clone(),
            jwk: serde_json::to_value(&jwk).unwrap_or_else(|e| panic!("JWK as JSON: {e}")),
        });
        let router =
            axum::Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    get(|State(p): State<Arc<Published>>| async move {
                        as_json(json!({
                            "issuer": p.url,
                            "jwks_uri": format!("{}/keys", p.url),
                            "id_token_signing_alg_values_supported": ["ES256"],
                        }))
                    }),
                )
                .route(
                    "/keys",
                    get(|State(p): State<Arc<Published>>| async move {
                        as_json(json!({"keys": [p.jwk]}))
                    }),
                )
                .with_state(published);
        tokio::spawn(async move { axum::serve(listener, router).await });
        LocalIssuer { url, kid, key }
    }

    /// A token for `audience` naming `sub` in `groups`, valid for ten minutes.
    pub fn token(&self, audience: &str, sub: &str, groups: &[&str]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.sign(&json!({
            "iss": self.url,
            "aud": audience,
            "sub": sub,
            "groups": groups,
            "iat": now,
            "exp": now + 600,
        }))
    }

    /// `claims`, signed with the issuer's key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
            .unwrap_or_else(|e| panic!("signing a token: {e}"))
    }
}
