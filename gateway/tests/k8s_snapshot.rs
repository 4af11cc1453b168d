//! The snapshot built from cluster objects: tenants and their limits, key
//! Secrets, models with their served names, tracks and endpoints.

use std::collections::{BTreeSet, HashMap};

use aleph_crds::aimodel::AIModel;
use aleph_crds::tenant::{Tenant, TenantGateway, TenantPlan};
use aleph_gateway::k8s::{Ignored, build_snapshot, build_snapshot_reporting, gateway_limits};
use aleph_gateway::{Endpoint, FastMap, KeyInfo, Model, Owners, Snapshot, TenantLimits, Track};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;

const TENANTS: &str = include_str!("fixtures/k8s_snapshot/tenants.yaml");

// data.sha256 is base64 (as every Secret's data) of the key's hex SHA-256:
// sk-aleph-acme-ci, sk-aleph-acme-upper (in upper case, with a newline),
// sk-aleph-globex, sk-aleph-stray, then "not-a-hash".
const KEYS: &str = include_str!("fixtures/k8s_snapshot/keys.yaml");

const MODELS: &str = include_str!("fixtures/k8s_snapshot/models.yaml");

const SLICES: &str = include_str!("fixtures/k8s_snapshot/slices.yaml");

fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<T> {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("fixture: {e}"))
}

fn endpoint(addr: &str, track: Track, ready: bool) -> Endpoint {
    Endpoint {
        addr: addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")),
        track,
        ready,
    }
}

fn key(tenant: &str, name: &str) -> KeyInfo {
    KeyInfo {
        tenant: tenant.into(),
        name: name.into(),
    }
}

/// Model `name`, of the AIModel `name` in `namespace`, served under its own name, created at
/// time 0, without endpoints, without a canary, not scaled from zero.
fn model(namespace: &str, name: &str) -> Model {
    Model {
        name: name.into(),
        namespace: namespace.into(),
        aimodel: name.into(),
        served_name: name.into(),
        created: 0,
        endpoints: vec![],
        canary_percent: 0,
        scale_from_zero: false,
    }
}

fn limits(rpm: Option<u64>, tpm: Option<u64>, tpd: Option<u64>) -> TenantLimits {
    TenantLimits {
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        tokens_per_day: tpd,
    }
}

fn fixtures() -> (Vec<Tenant>, Vec<AIModel>, Vec<Secret>, Vec<EndpointSlice>) {
    (parse(TENANTS), parse(MODELS), parse(KEYS), parse(SLICES))
}

fn expected() -> Snapshot {
    use Track::{Canary, Stable};
    Snapshot {
        tenants: FastMap::from_iter([
            (
                "acme".into(),
                limits(Some(600), Some(200_000), Some(1_000_000)),
            ),
            (
                "globex".into(),
                limits(Some(60), Some(20_000), Some(200_000)),
            ),
            ("initech".into(), limits(Some(100), Some(0), None)),
        ]),
        keys: FastMap::from_iter([
            (
                aleph_gateway::hash_key("sk-aleph-acme-ci"),
                key("acme", "acme-ml/key-ci"),
            ),
            (
                aleph_gateway::hash_key("sk-aleph-acme-upper"),
                key("acme", "acme-web/key-upper"),
            ),
            (
                aleph_gateway::hash_key("sk-aleph-globex"),
                key("globex", "globex-ai/key-1"),
            ),
        ]),
        models: FastMap::from_iter([
            (
                "acme".into(),
                vec![
                    Model {
                        created: 1_735_787_045,
                        canary_percent: 10,
                        endpoints: vec![
                            endpoint("10.0.0.1:8000", Stable, false),
                            endpoint("10.0.0.2:8000", Stable, true),
                            endpoint("10.0.0.3:8000", Canary, true),
                        ],
                        ..model("acme-ml", "llama")
                    },
                    Model {
                        served_name: "tiny-chat".into(),
                        created: 1_738_555_506,
                        endpoints: vec![
                            endpoint("10.0.1.1:8080", Stable, true),
                            endpoint("10.0.1.2:8080", Stable, true),
                        ],
                        ..model("acme-ml", "tiny")
                    },
                    Model {
                        served_name: "llama3.2:1b".into(),
                        scale_from_zero: true,
                        ..model("acme-web", "local")
                    },
                ],
            ),
            (
                "globex".into(),
                vec![
                    Model {
                        canary_percent: 25,
                        endpoints: vec![
                            endpoint("[fd00::1]:8080", Stable, true),
                            endpoint("[fd00::2]:8080", Stable, true),
                        ],
                        ..model("globex-ai", "mistral")
                    },
                    model("globex-ai", "vision"),
                ],
            ),
        ]),
        // initech has no status yet: no namespace.
        namespaces: HashMap::from([
            ("acme-ml".into(), "acme".into()),
            ("acme-web".into(), "acme".into()),
            ("globex-ai".into(), "globex".into()),
        ]),
        owners: Owners {
            users: HashMap::from([
                ("alice".into(), BTreeSet::from(["acme".into()])),
                ("bob".into(), BTreeSet::from(["globex".into()])),
            ]),
            groups: HashMap::from([("initech-admins".into(), BTreeSet::from(["initech".into()]))]),
        },
    }
}

#[test]
fn the_cluster_objects_make_the_whole_snapshot() {
    let (tenants, models, keys, slices) = fixtures();
    let snapshot = build_snapshot(&tenants, &models, &keys, &slices);
    assert_eq!(snapshot, expected());
    // The keys work end to end: a presented key finds its tenant.
    let owner = snapshot.key_owner("sk-aleph-acme-upper");
    assert_eq!(owner.map(|k| k.tenant.as_str()), Some("acme"));
    assert!(snapshot.key_owner("sk-aleph-stray").is_none());
}

#[test]
fn left_out_key_secrets_are_reported_with_their_reason() {
    let (tenants, models, keys, slices) = fixtures();
    let (_, mut ignored) = build_snapshot_reporting(&tenants, &models, &keys, &slices);
    ignored.sort();
    let secret = |namespace: &str, name: &str, reason: &str| Ignored {
        kind: "Secret".into(),
        namespace: namespace.into(),
        name: name.into(),
        reason: reason.into(),
    };
    assert_eq!(
        ignored,
        [
            secret(
                "acme-ml",
                "key-bad",
                "data.sha256 is not 64 hex digits (the SHA-256 of the key)"
            ),
            secret("acme-ml", "key-empty", "no data.sha256"),
            secret("default", "stray", "not in a tenant's namespace"),
            secret("globex-ai", "key-copy", "the same key as acme-ml/key-ci"),
        ]
    );
}

#[test]
fn the_order_of_the_lists_does_not_matter() {
    let (mut tenants, mut models, mut keys, mut slices) = fixtures();
    tenants.reverse();
    models.reverse();
    keys.reverse();
    slices.reverse();
    assert_eq!(
        build_snapshot(&tenants, &models, &keys, &slices),
        expected()
    );
}

#[test]
fn nothing_listed_is_an_empty_snapshot() {
    assert_eq!(build_snapshot(&[], &[], &[], &[]), Snapshot::default());
    // Keys and models without their tenant's status are nobody's.
    let (_, models, keys, slices) = fixtures();
    assert_eq!(
        build_snapshot(&[], &models, &keys, &slices),
        Snapshot::default()
    );
}

#[test]
fn a_namespace_listed_by_two_tenants_belongs_to_the_first_by_name() {
    let tenants: Vec<Tenant> = parse(
        r#"
- apiVersion: aleph.dev/v1alpha1
  kind: Tenant
  metadata: {name: zeta}
  spec: {owners: [{kind: User, name: z}], namespaces: [shared]}
  status: {namespaces: [shared]}
- apiVersion: aleph.dev/v1alpha1
  kind: Tenant
  metadata: {name: alpha}
  spec: {owners: [{kind: User, name: a}], namespaces: [shared]}
  status: {namespaces: [shared]}
"#,
    );
    let keys: Vec<Secret> = parse(
        r#"
- apiVersion: v1
  kind: Secret
  metadata: {name: k, namespace: shared, labels: {aleph.dev/gateway-key: "true"}}
  data: {sha256: YjU0MzU2NWJlY2Q1NmZkOGYzYTA0ZTk0MmM2Y2NiMjBkYjU2NjFjZTg3ZWVkZGU0MjcyYWE5Y2JkZTI0Y2ExNw==}
"#,
    );
    let snapshot = build_snapshot(&tenants, &[], &keys, &[]);
    assert_eq!(
        snapshot.key_owner("sk-aleph-globex"),
        Some(&key("alpha", "shared/k"))
    );
}

#[test]
fn plan_defaults_and_overrides() {
    let none = TenantGateway::default();
    let some = TenantGateway {
        requests_per_minute: Some(5),
        tokens_per_minute: None,
        tokens_per_day: Some(7),
    };
    // (plan, overrides, requests a minute, tokens a minute, tokens a day)
    for (plan, overrides, rpm, tpm, tpd) in [
        (TenantPlan::Free, &none, 60, 20_000, Some(200_000)),
        (TenantPlan::Pro, &none, 600, 200_000, Some(5_000_000)),
        (TenantPlan::Enterprise, &none, 6_000, 2_000_000, None),
        (TenantPlan::Enterprise, &some, 5, 2_000_000, Some(7)),
        (TenantPlan::Free, &some, 5, 20_000, Some(7)),
    ] {
        assert_eq!(
            gateway_limits(plan, overrides),
            limits(Some(rpm), Some(tpm), tpd),
            "{plan:?} with {overrides:?}"
        );
    }
    let negative = TenantGateway {
        requests_per_minute: Some(-1),
        ..TenantGateway::default()
    };
    assert_eq!(
        gateway_limits(TenantPlan::Pro, &negative).requests_per_minute,
        Some(0)
    );
}

/// Each listed path: the list's kind and its items.
type Lists = HashMap<&'static str, (&'static str, Vec<serde_json::Value>)>;

/// A fake API server: lists the fixtures (and an AIModel that does not match
/// the schema), holds every watch open, and records what was asked.
async fn fake_api_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::body::Body;
    use axum::extract::{Request, State};
    use std::sync::{Arc, Mutex};

    let mut models: Vec<serde_json::Value> = parse(MODELS);
    models.push(serde_json::json!({
        "apiVersion": "aleph.dev/v1alpha1",
        "kind": "AIModel",
        "metadata": {"name": "broken", "namespace": "acme-ml"},
        "spec": {"replicas": "many"},
    }));
    let lists: Arc<Lists> = Arc::new(HashMap::from([
        (
            "/apis/aleph.dev/v1alpha1/tenants",
            ("TenantList", parse(TENANTS)),
        ),
        ("/apis/aleph.dev/v1alpha1/aimodels", ("AIModelList", models)),
        ("/api/v1/secrets", ("SecretList", parse(KEYS))),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            ("EndpointSliceList", parse(SLICES)),
        ),
    ]));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let asked = asked.clone();
        move |State(lists): State<Arc<Lists>>, request: Request| {
            let asked = asked.clone();
            async move {
                let path = request.uri().path().to_string();
                let query = request.uri().query().unwrap_or_default().to_string();
                asked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{path}?{query}"));
                if query.contains("watch=true") {
                    let never = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
                    return http::Response::new(Body::from_stream(never));
                }
                let body = match lists.get(path.as_str()) {
                    Some((kind, items)) => serde_json::json!({
                        "apiVersion": "v1",
                        "kind": kind,
                        "metadata": {"resourceVersion": "7"},
                        "items": items,
                    }),
                    None => serde_json::json!({}),
                };
                http::Response::new(Body::from(body.to_string()))
            }
        }
    };
    let app = axum::Router::new().fallback(handler).with_state(lists);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), asked)
}

#[tokio::test]
async fn the_watches_fill_the_state_and_mark_it_synced() {
    // Built with the whole workspace, rustls has aws-lc-rs beside ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url, asked) = fake_api_server().await;
    let config = kube::Config::new(url.parse().unwrap_or_else(|e| panic!("{e}")));
    let client = kube::Client::try_from(config).unwrap_or_else(|e| panic!("{e}"));
    let state = std::sync::Arc::new(aleph_gateway::GatewayState::new());
    let watching = tokio::spawn(aleph_gateway::k8s::watch(
        client,
        aleph_gateway::k8s::WatchOptions::default(),
        state.clone(),
    ));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !state.is_synced() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not synced in 10 s; asked: {asked:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    watching.abort();
    // The AIModel that does not decode is skipped; everything else is there.
    assert_eq!(*state.snapshot(), expected());
    let asked = asked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let selector_of = |path: &str| {
        asked
            .iter()
            .find(|a| a.starts_with(&format!("{path}?")) && !a.contains("watch=true"))
            .map(|a| a.contains("labelSelector="))
    };
    assert_eq!(selector_of("/apis/aleph.dev/v1alpha1/tenants"), Some(false));
    assert_eq!(
        selector_of("/apis/aleph.dev/v1alpha1/aimodels"),
        Some(false)
    );
    assert!(
        asked.iter().any(|a| a.starts_with("/api/v1/secrets?")
            && a.contains("labelSelector=aleph.dev%2Fgateway-key%3Dtrue")),
        "{asked:?}"
    );
    assert!(
        asked.iter().any(
            |a| a.starts_with("/apis/discovery.k8s.io/v1/endpointslices?")
                && a.contains("labelSelector=aleph.dev%2Fmodel")
        ),
        "{asked:?}"
    );
}
