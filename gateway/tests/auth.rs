//! OIDC tokens from a real issuer the test runs (discovery document and key
//! set over HTTP, tokens signed with keys made here), and Kubernetes tokens
//! checked by TokenReview against a fake API server: who acts for which
//! tenants, and every way a token is refused.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aleph_gateway::auth::oidc::{OidcConfig, OidcVerifier};
use aleph_gateway::auth::token_review::{TokenReviewConfig, TokenReviewer};
use aleph_gateway::{Authenticators, GatewayConfig, Snapshot, TenantLimits};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::{ACME_KEY, Harness, Reply, Stub, model, serve, snapshot, stable};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use rand::RngCore;
use serde_json::{Value, json};

const CLIENT_ID: &str = "aleph-gateway";
/// The shortest time between two fetches of the issuer's keys in the rotation test.
const INTERVAL: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------- the issuer

/// A key the issuer signs with.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
}

impl SigningKey {
    /// A fresh P-256 key (ES256).
    fn es256(kid: &str) -> SigningKey {
        let secret = loop {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                break secret;
            }
        };
        let der = secret.to_pkcs8_der().expect("PKCS#8 of the key");
        SigningKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
        }
    }

    /// The test RSA key of tests/fixtures (RS256); made for these tests only.
    fn rs256(kid: &str) -> SigningKey {
        let pem = include_bytes!("fixtures/rs256-test-key.pem");
        SigningKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(pem).expect("the RSA test key"),
        }
    }

    /// Its public half, as the key set publishes it.
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.algorithm).expect("JWK");
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).expect("JWK as JSON")
    }

    /// A token of `claims`, signed.
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signed")
    }
}

#[derive(Default)]
struct IssuerState {
    url: Mutex<String>,
    keys: Mutex<Vec<Value>>,
    discoveries: AtomicUsize,
    key_fetches: AtomicUsize,
}

/// An OIDC issuer on 127.0.0.1: discovery and key set.
struct Issuer {
    url: String,
    state: Arc<IssuerState>,
}

impl Issuer {
    async fn start(keys: &[&SigningKey]) -> Issuer {
        let state = Arc::new(IssuerState::default());
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<Arc<IssuerState>>| async move {
                    s.discoveries.fetch_add(1, Ordering::SeqCst);
                    let url = s.url.lock().expect("url").clone();
                    as_json(json!({
                        "issuer": url,
                        "jwks_uri": format!("{url}/keys"),
                        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
                    }))
                }),
            )
            .route(
                "/keys",
                get(|State(s): State<Arc<IssuerState>>| async move {
                    s.key_fetches.fetch_add(1, Ordering::SeqCst);
                    as_json(json!({"keys": *s.keys.lock().expect("keys")}))
                }),
            )
            .with_state(state.clone());
        let addr = serve(router).await;
        let url = format!("http://{addr}");
        *state.url.lock().expect("url") = url.clone();
        let issuer = Issuer { url, state };
        issuer.publish(keys);
        issuer
    }

    /// Publishes exactly `keys` from now on.
    fn publish(&self, keys: &[&SigningKey]) {
        *self.state.keys.lock().expect("keys") = keys.iter().map(|k| k.jwk()).collect();
    }

    fn key_fetches(&self) -> usize {
        self.state.key_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a token for `sub` with `groups`, valid for an hour.
    fn claims(&self, sub: &str, groups: &[&str]) -> Value {
        let now = now();
        json!({
            "iss": self.url,
            "aud": CLIENT_ID,
            "sub": sub,
            "preferred_username": format!("{sub}@example.com"),
            "groups": groups,
            "iat": now,
            "exp": now + 3600,
        })
    }

    fn config(&self) -> OidcConfig {
        let mut config = OidcConfig::new(&self.url, CLIENT_ID);
        config.min_refresh_interval = Duration::from_millis(300);
        config
    }
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

// ------------------------------------------------------------- the tenants

/// acme (models `llama` in team-a), globex (`globex-model` in team-g), and
/// initech (its own `llama` in team-i); owners: Group `ml-team` owns acme
/// and initech, User `bob` owns globex.
async fn tenants() -> (Snapshot, Stub, Stub) {
    let (acme_stub, acme_addr) = Stub::start("acme").await;
    let (initech_stub, initech_addr) = Stub::start("initech").await;
    let mut snapshot = snapshot(
        vec![model("llama", vec![stable(acme_addr)])],
        TenantLimits::default(),
    );
    let mut initech = model("llama", vec![stable(initech_addr)]);
    initech.namespace = "team-i".into();
    snapshot.upsert_model("initech", initech);
    snapshot
        .tenants
        .insert("initech".into(), TenantLimits::default());
    snapshot.namespaces = HashMap::from([
        ("team-a".into(), "acme".into()),
        ("team-g".into(), "globex".into()),
        ("team-i".into(), "initech".into()),
    ]);
    let owners = &mut snapshot.owners;
    owners.groups.insert(
        "ml-team".into(),
        ["acme".to_owned(), "initech".to_owned()].into(),
    );
    owners
        .users
        .insert("bob".into(), ["globex".to_owned()].into());
    (snapshot, acme_stub, initech_stub)
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2})
}

async fn listed(gw: &Harness, token: &str) -> Vec<(String, String)> {
    let reply = gw.get("/v1/models", Some(token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().to_owned(),
                m["owned_by"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

async fn oidc_gateway(issuer: &Issuer, snapshot: Snapshot) -> (Harness, Arc<OidcVerifier>) {
    oidc_gateway_with(issuer.config(), snapshot).await
}

/// A gateway whose only authenticator is OIDC with `config`.
async fn oidc_gateway_with(config: OidcConfig, snapshot: Snapshot) -> (Harness, Arc<OidcVerifier>) {
    let verifier = Arc::new(OidcVerifier::new(config).expect("OIDC config"));
    let authenticators = Authenticators {
        oidc: Some(verifier.clone()),
        token_review: None,
    };
    let gw = Harness::start_with(GatewayConfig::default(), snapshot, authenticators).await;
    (gw, verifier)
}

/// An issuer signing with one ES256 key, the two tenants' engines (acme,
/// initech), and a gateway that trusts the issuer.
async fn oidc_setup() -> (SigningKey, Issuer, Stub, Stub, Harness) {
    let key = SigningKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let (snapshot, acme, initech) = tenants().await;
    let (gw, _) = oidc_gateway(&issuer, snapshot).await;
    (key, issuer, acme, initech, gw)
}

/// Asserts that `reply` says authentication is unavailable for now.
fn assert_authentication_unavailable(reply: &Reply) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_code(), "authentication_unavailable");
}

// ------------------------------------------------------------------- OIDC

#[tokio::test]
async fn an_oidc_group_lists_and_calls_its_tenants_models_each_charged_to_its_own_tenant() {
    let (key, issuer, acme, initech, gw) = oidc_setup().await;

    // Group ml-team owns acme and initech: both tenants' models; initech's
    // llama, whose name acme's has (a before i), is listed by namespace.
    let ml = key.sign(&issuer.claims("alice", &["ml-team", "unrelated"]));
    assert_eq!(
        listed(&gw, &ml).await,
        pairs(&[("llama", "acme"), ("team-i/llama", "initech")])
    );
    let answer = gw.post("/v1/chat/completions", &ml, chat("llama")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.stub(), "acme");
    let answer = gw
        .post("/v1/chat/completions", &ml, chat("team-i/llama"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.stub(), "initech");
    assert_eq!((acme.hits(), initech.hits()), (1, 1));
    // globex is not theirs.
    let theirs = gw
        .post("/v1/chat/completions", &ml, chat("globex-model"))
        .await;
    assert_eq!(theirs.status, StatusCode::FORBIDDEN);
    assert_eq!(theirs.error_code(), "model_not_permitted");

    // Each request is charged to the tenant of its model, under the user's name.
    for tenant in ["acme", "initech"] {
        let labels = [
            ("tenant", tenant),
            ("key", "oidc:alice"),
            ("kind", "prompt"),
        ];
        assert_eq!(gw.metric("aleph_gateway_tokens_total", &labels).await, 3);
        let labels = [("tenant", tenant), ("code", "200")];
        assert_eq!(gw.metric("aleph_gateway_requests_total", &labels).await, 1);
    }
}

#[tokio::test]
async fn user_owners_match_the_username_claim_and_add_to_the_groups_tenants() {
    let key = SigningKey::rs256("rsa-1");
    let issuer = Issuer::start(&[&key]).await;
    let (mut snapshot, _acme, _initech) = tenants().await;
    snapshot
        .owners
        .users
        .insert("bob@example.com".into(), ["globex".to_owned()].into());
    let mut config = issuer.config();
    config.username_claim = "preferred_username".into();
    let (gw, _) = oidc_gateway_with(config, snapshot).await;

    // bob (by preferred_username, RS256) owns globex as a User, and is in ml-team.
    let bob = key.sign(&issuer.claims("bob", &["ml-team"]));
    assert_eq!(
        listed(&gw, &bob).await,
        pairs(&[
            ("globex-model", "globex"),
            ("llama", "acme"),
            ("team-i/llama", "initech")
        ])
    );
    // Without the group: globex only. The sub `bob` matches nothing here: the
    // claim is preferred_username.
    let bob_alone = key.sign(&issuer.claims("bob", &[]));
    assert_eq!(
        listed(&gw, &bob_alone).await,
        pairs(&[("globex-model", "globex")])
    );
    let mine = gw
        .post("/v1/chat/completions", &bob_alone, chat("llama"))
        .await;
    assert_eq!(mine.status, StatusCode::FORBIDDEN);
    // A token without the username claim.
    let mut claims = issuer.claims("bob", &[]);
    claims
        .as_object_mut()
        .expect("claims")
        .remove("preferred_username");
    let nameless = gw.get("/v1/models", Some(&key.sign(&claims))).await;
    assert_eq!(nameless.status, StatusCode::UNAUTHORIZED);
    assert_eq!(nameless.error_code(), "missing_token_claim");
}

#[tokio::test]
async fn a_valid_token_of_no_tenant_gets_403() {
    let (key, issuer, acme, _, gw) = oidc_setup().await;
    let nobody = key.sign(&issuer.claims("carol", &["interns"]));
    let models = gw.get("/v1/models", Some(&nobody)).await;
    assert_eq!(models.status, StatusCode::FORBIDDEN, "{}", models.text());
    assert_eq!(models.error_code(), "no_tenant");
    assert_eq!(models.json()["error"]["type"], "permission_error");
    let message = models.json()["error"]["message"].to_string();
    assert!(
        message.contains("carol") && message.contains("interns"),
        "{message}"
    );
    let call = gw
        .post("/v1/chat/completions", &nobody, chat("llama"))
        .await;
    assert_eq!(call.status, StatusCode::FORBIDDEN);
    assert_eq!(acme.hits(), 0);
}

#[tokio::test]
async fn bad_tokens_get_401_saying_what_is_wrong() {
    let (key, issuer, acme, _, gw) = oidc_setup().await;
    let good = issuer.claims("alice", &["ml-team"]);
    let with = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut claims = good.clone();
        change(claims.as_object_mut().expect("claims"));
        claims
    };
    let now = now();

    let expired = key.sign(&with(&|c| {
        c.insert("exp".into(), json!(now - 120));
    }));
    let early = key.sign(&with(&|c| {
        c.insert("nbf".into(), json!(now + 600));
    }));
    let audience = key.sign(&with(&|c| {
        c.insert("aud".into(), json!(["another-client"]));
    }));
    let other_issuer = key.sign(&with(&|c| {
        c.insert("iss".into(), json!("https://sso.example.com/realms/other"));
    }));
    // Same kid, another key: the signature does not verify.
    let forged = SigningKey::es256("k1").sign(&good);
    let hmac = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let secret = EncodingKey::from_secret(b"shared secret").expect("HMAC key");
        jsonwebtoken::encode(&header, &good, &secret).expect("HMAC token")
    };
    // Within the leeway (30 s) an expired token still passes.
    let just_expired = key.sign(&with(&|c| {
        c.insert("exp".into(), json!(now - 5));
    }));
    assert_eq!(
        gw.get("/v1/models", Some(&just_expired)).await.status,
        StatusCode::OK
    );

    for (token, code, says) in [
        (&expired, "token_expired", "expired"),
        (&early, "token_not_yet_valid", "not valid yet"),
        (&audience, "invalid_token_audience", CLIENT_ID),
        (
            &other_issuer,
            "invalid_token_issuer",
            "https://sso.example.com/realms/other",
        ),
        (&forged, "invalid_token_signature", "signature"),
        (&hmac, "unsupported_token_algorithm", "HS256"),
        (
            &"not.a.jwt".to_owned(),
            "invalid_api_key",
            "invalid API key",
        ),
    ] {
        for reply in [
            gw.get("/v1/models", Some(token)).await,
            gw.post("/v1/chat/completions", token, chat("llama")).await,
        ] {
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{code}: {}",
                reply.text()
            );
            assert_eq!(reply.error_code(), code, "{}", reply.text());
            assert_eq!(reply.json()["error"]["type"], "authentication_error");
            let message = reply.json()["error"]["message"].to_string();
            assert!(message.contains(says), "{code}: {message}");
        }
    }
    assert_eq!(acme.hits(), 0, "no refused token reached the engine");
}

#[tokio::test]
async fn a_new_key_is_fetched_on_its_first_token_and_unknown_kids_do_not_flood_the_issuer() {
    let old = SigningKey::es256("2026-01");
    let issuer = Issuer::start(&[&old]).await;
    let (snapshot, _, _) = tenants().await;
    // Fetches at most every 2 s: a burst of tokens (each signed here, slowly
    // in a debug build) fits in one interval.
    let mut config = issuer.config();
    config.min_refresh_interval = INTERVAL;
    let (gw, verifier) = oidc_gateway_with(config, snapshot).await;
    let claims = issuer.claims("alice", &["ml-team"]);
    let past_interval = INTERVAL + Duration::from_millis(100);

    assert_eq!(
        gw.get("/v1/models", Some(&old.sign(&claims))).await.status,
        StatusCode::OK
    );
    assert_eq!(issuer.key_fetches(), 1);
    for _ in 0..5 {
        gw.get("/v1/models", Some(&old.sign(&claims))).await;
    }
    assert_eq!(issuer.key_fetches(), 1, "known keys are not fetched again");

    // The issuer rotates: a new key, the old one withdrawn.
    tokio::time::sleep(past_interval).await;
    let new = SigningKey::es256("2026-02");
    issuer.publish(&[&new]);
    let reply = gw.get("/v1/models", Some(&new.sign(&claims))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        issuer.key_fetches(),
        2,
        "the unknown kid made the gateway fetch the keys"
    );

    // Tokens of a kid the issuer never published, in a burst: one fetch at
    // most per interval, and 401 each.
    let stray = SigningKey::es256("never-published");
    for _ in 0..10 {
        let reply = gw.get("/v1/models", Some(&stray.sign(&claims))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.error_code(), "unknown_token_key");
        assert!(reply.text().contains("never-published"), "{}", reply.text());
    }
    assert_eq!(
        issuer.key_fetches(),
        2,
        "the burst fetched nothing: too soon"
    );
    tokio::time::sleep(past_interval).await;
    gw.get("/v1/models", Some(&stray.sign(&claims))).await;
    assert_eq!(issuer.key_fetches(), 3);
    assert_eq!(verifier.key_fetches(), 3);
    // The withdrawn key, once the keys were fetched again, is unknown.
    let withdrawn = gw.get("/v1/models", Some(&old.sign(&claims))).await;
    assert_eq!(withdrawn.status, StatusCode::UNAUTHORIZED);
    assert_eq!(withdrawn.error_code(), "unknown_token_key");
    assert_eq!(issuer.state.discoveries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_issuer_answers_503_and_api_keys_keep_working() {
    // A port that was just free: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let url = format!("http://{closed}");
    let key = SigningKey::es256("k1");
    let now = now();
    let token = key.sign(&json!({"iss": url, "aud": CLIENT_ID, "sub": "alice", "exp": now + 60}));
    let (snapshot, _, _) = tenants().await;
    let verifier = Arc::new(OidcVerifier::new(OidcConfig::new(&url, CLIENT_ID)).expect("config"));
    let gw = Harness::start_with(
        GatewayConfig::default(),
        snapshot,
        Authenticators {
            oidc: Some(verifier),
            token_review: None,
        },
    )
    .await;
    let reply = gw.get("/v1/models", Some(&token)).await;
    assert_authentication_unavailable(&reply);
    assert_eq!(reply.retry_after(), Some(5));
    assert_eq!(
        gw.get("/v1/models", Some(ACME_KEY)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tenant_limits_bind_every_identity_of_the_tenant_together() {
    let key = SigningKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let (mut snapshot, _, _) = tenants().await;
    snapshot.tenants.insert(
        "acme".into(),
        TenantLimits {
            requests_per_minute: Some(3),
            ..TenantLimits::default()
        },
    );
    let (gw, _) = oidc_gateway(&issuer, snapshot).await;
    let token = key.sign(&issuer.claims("alice", &["ml-team"]));
    let ok = gw
        .post("/v1/chat/completions", ACME_KEY, chat("llama"))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    for _ in 0..2 {
        let ok = gw.post("/v1/chat/completions", &token, chat("llama")).await;
        assert_eq!(ok.status, StatusCode::OK);
    }
    let limited = gw.post("/v1/chat/completions", &token, chat("llama")).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let limited = gw
        .post("/v1/chat/completions", ACME_KEY, chat("llama"))
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // initech's model, called by the same user, has initech's own budget.
    let other = gw
        .post("/v1/chat/completions", &token, chat("team-i/llama"))
        .await;
    assert_eq!(other.status, StatusCode::OK);
}

// ------------------------------------------------------------ TokenReview

#[derive(Default)]
struct ApiServer {
    reviews: Mutex<Vec<Value>>,
}

impl ApiServer {
    fn reviews_of(&self, token: &str) -> usize {
        self.reviews
            .lock()
            .expect("reviews")
            .iter()
            .filter(|r| r["spec"]["token"] == token)
            .count()
    }
}

/// A fake API server that answers TokenReviews: `sa-acme` is
/// system:serviceaccount:team-a:ci, `sa-default` system:serviceaccount:default:builder,
/// `user-bob` the user bob in ml-team; `wrong-audience` authenticates for
/// none of the audiences asked; anything else does not authenticate.
async fn api_server() -> (Arc<ApiServer>, SocketAddr) {
    let server = Arc::new(ApiServer::default());
    let router = axum::Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(
                |State(s): State<Arc<ApiServer>>, body: bytes::Bytes| async move {
                    let review: Value = serde_json::from_slice(&body).expect("a TokenReview");
                    s.reviews.lock().expect("reviews").push(review.clone());
                    let token = review["spec"]["token"].as_str().unwrap_or_default();
                    let audiences = review["spec"]["audiences"].clone();
                    let user = |name: &str, groups: &[&str]| {
                        json!({"authenticated": true,
                               "user": {"username": name, "groups": groups},
                               "audiences": audiences})
                    };
                    let status = match token {
                        "sa-acme" => user(
                            "system:serviceaccount:team-a:ci",
                            &["system:serviceaccounts", "system:serviceaccounts:team-a"],
                        ),
                        "sa-default" => user("system:serviceaccount:default:builder", &[]),
                        "user-bob" => user("bob", &["ml-team", "system:authenticated"]),
                        "wrong-audience" => json!({"authenticated": true,
                            "user": {"username": "system:serviceaccount:team-a:ci"},
                            "audiences": []}),
                        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
                    };
                    (
                        StatusCode::CREATED,
                        as_json(json!({
                            "apiVersion": "authentication.k8s.io/v1",
                            "kind": "TokenReview",
                            "metadata": {"creationTimestamp": null},
                            "spec": review["spec"],
                            "status": status,
                        })),
                    )
                },
            ),
        )
        .with_state(server.clone());
    (server, serve(router).await)
}

fn kube_client(addr: SocketAddr) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new(format!("http://{addr}").parse().expect("URL"));
    kube::Client::try_from(config).expect("client")
}

async fn review_gateway(
    addr: SocketAddr,
    config: TokenReviewConfig,
    oidc: Option<Arc<OidcVerifier>>,
) -> (Harness, Stub, Arc<TokenReviewer>) {
    let (snapshot, acme, _) = tenants().await;
    let reviewer = Arc::new(TokenReviewer::new(kube_client(addr), config));
    let gw = Harness::start_with(
        GatewayConfig::default(),
        snapshot,
        Authenticators {
            oidc,
            token_review: Some(reviewer.clone()),
        },
    )
    .await;
    (gw, acme, reviewer)
}

#[tokio::test]
async fn a_service_account_acts_for_the_tenant_of_its_namespace() {
    let (api, addr) = api_server().await;
    let (gw, acme, _) = review_gateway(addr, TokenReviewConfig::default(), None).await;
    assert_eq!(listed(&gw, "sa-acme").await, pairs(&[("llama", "acme")]));
    let answer = gw
        .post("/v1/chat/completions", "sa-acme", chat("llama"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(acme.hits(), 1);
    let theirs = gw
        .post("/v1/chat/completions", "sa-acme", chat("globex-model"))
        .await;
    assert_eq!(theirs.status, StatusCode::FORBIDDEN);
    let labels = [
        ("tenant", "acme"),
        ("key", "sa:team-a/ci"),
        ("kind", "prompt"),
    ];
    assert_eq!(gw.metric("aleph_gateway_tokens_total", &labels).await, 3);
    // Three requests, one review: the answer is cached.
    assert_eq!(api.reviews_of("sa-acme"), 1);
    // No audiences configured: none asked for (the API server's own).
    assert_eq!(
        api.reviews.lock().expect("reviews")[0]["spec"].get("audiences"),
        None
    );

    // A user the API server knows is matched against the owners.
    assert_eq!(
        listed(&gw, "user-bob").await,
        pairs(&[
            ("globex-model", "globex"),
            ("llama", "acme"),
            ("team-i/llama", "initech")
        ])
    );
}

#[tokio::test]
async fn service_accounts_outside_tenants_get_403_and_unknown_tokens_401_both_cached() {
    let (api, addr) = api_server().await;
    let config = TokenReviewConfig {
        cache_ttl: Duration::from_millis(400),
        ..TokenReviewConfig::default()
    };
    let (gw, acme, reviewer) = review_gateway(addr, config, None).await;
    for _ in 0..3 {
        let outside = gw.get("/v1/models", Some("sa-default")).await;
        assert_eq!(outside.status, StatusCode::FORBIDDEN, "{}", outside.text());
        assert_eq!(outside.error_code(), "no_tenant");
        let message = outside.json()["error"]["message"].to_string();
        assert!(message.contains("default/builder"), "{message}");
        let garbage = gw
            .post("/v1/chat/completions", "garbage", chat("llama"))
            .await;
        assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
        assert_eq!(garbage.error_code(), "token_not_authenticated");
        assert!(
            garbage.text().contains("invalid bearer token"),
            "{}",
            garbage.text()
        );
    }
    assert_eq!(api.reviews_of("sa-default"), 1);
    assert_eq!(
        api.reviews_of("garbage"),
        1,
        "failed reviews are cached too"
    );
    assert_eq!(reviewer.cached(), 2);
    // Past the cache period, asked again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    gw.get("/v1/models", Some("garbage")).await;
    assert_eq!(api.reviews_of("garbage"), 2);
    assert_eq!(acme.hits(), 0);
    // An API key never goes to the API server, right or wrong.
    gw.get("/v1/models", Some(ACME_KEY)).await;
    gw.get("/v1/models", Some("sk-aleph-wrong")).await;
    assert_eq!(api.reviews.lock().expect("reviews").len(), 3);
}

#[tokio::test]
async fn audiences_are_asked_for_and_checked() {
    let (api, addr) = api_server().await;
    let config = TokenReviewConfig {
        audiences: vec!["aleph-gateway".into()],
        ..TokenReviewConfig::default()
    };
    let (gw, _, _) = review_gateway(addr, config, None).await;
    assert_eq!(
        gw.get("/v1/models", Some("sa-acme")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.reviews.lock().expect("reviews")[0]["spec"]["audiences"],
        json!(["aleph-gateway"])
    );
    let wrong = gw.get("/v1/models", Some("wrong-audience")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.text().contains("audiences"), "{}", wrong.text());
}

#[tokio::test]
async fn with_both_on_a_jwt_of_another_issuer_goes_to_the_api_server() {
    let key = SigningKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let (api, addr) = api_server().await;
    let verifier = Arc::new(OidcVerifier::new(issuer.config()).expect("config"));
    let (gw, _, _) = review_gateway(addr, TokenReviewConfig::default(), Some(verifier)).await;
    // A ServiceAccount token is a JWT of the API server's issuer.
    let sa = SigningKey::es256("sa").sign(&json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "sub": "system:serviceaccount:team-a:ci",
        "exp": now() + 3600,
    }));
    let reply = gw.get("/v1/models", Some(&sa)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code(), "token_not_authenticated");
    assert_eq!(api.reviews_of(&sa), 1);
    // The issuer's tokens never do.
    let token = key.sign(&issuer.claims("alice", &["ml-team"]));
    assert_eq!(
        gw.get("/v1/models", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(api.reviews_of(&token), 0);
}

#[tokio::test]
async fn an_unreachable_api_server_answers_503_and_is_asked_again() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let (gw, _, reviewer) = review_gateway(closed, TokenReviewConfig::default(), None).await;
    let reply = gw.get("/v1/models", Some("sa-acme")).await;
    assert_authentication_unavailable(&reply);
    assert_eq!(reviewer.cached(), 0, "a failure to ask is not an answer");
}
