//! aleph-gateway on the real node, as the gateway tests deploy it: the
//! chart's own gateway objects (rendered with `helm template`) in a platform
//! namespace, Tenants whose namespaces it serves, and API keys (Secrets
//! holding a key's SHA-256).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helm::{chart_dir, helm};
use crate::real_node::pin_namespace;
use crate::unique_name;

/// The label of the gateway's pods (value `gateway`).
pub const GATEWAY_COMPONENT: &str = "app.kubernetes.io/component=gateway";

/// A Tenant named `name`, owned by the user `<name>-owner` and the group
/// `<name>-ml`, with one namespace, `<name>-apps`, admitting the
/// local images; `gateway` is more of the spec (YAML lines indented by two
/// spaces, e.g. `  gateway: {tokensPerMinute: 400}\n`), or empty.
pub fn tenant(name: &str, gateway: &str) -> String {
    format!(
        r#"apiVersion: aleph.dev/v1alpha1
kind: Tenant
metadata: {{name: {name}}}
spec:
  owners: [{{kind: User, name: {name}-owner}}, {{kind: Group, name: {name}-ml}}]
  namespaces: [apps]
  plan: free
  admission:
    allowedRegistries: ["aleph.local/"]
{gateway}"#
    )
}

/// A new API key and the Secret named `name` that gives it to the tenant
/// owning the namespace the Secret is applied in.
pub fn key_secret(name: &str) -> (String, String) {
    let key = format!("sk-aleph-{}", unique_name("k").replace('-', ""));
    let sha = format!("{:x}", Sha256::digest(key.as_bytes()));
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels: {{aleph.dev/gateway-key: \"true\"}}\nstringData: {{sha256: {sha}}}\n"
    );
    (key, yaml)
}

/// Labels `namespace` as a platform namespace (tenants' isolation admits its
/// pods) and pins its pods to the real node.
pub async fn platform_namespace(client: &Client, namespace: &str) {
    Api::<Namespace>::all(client.clone())
        .patch(
            namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "aleph.dev/platform": "true" } } })),
        )
        .await
        .expect("label the platform namespace");
    pin_namespace(client, namespace).await;
}

/// The chart's gateway objects with `replicas` replicas of the locally built
/// image; `extra` are more `--set` values.
pub async fn render_gateway(
    release: &str,
    namespace: &str,
    replicas: u32,
    extra: &[&str],
) -> String {
    let chart = chart_dir();
    let replicas = format!("gateway.replicaCount={replicas}");
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap_or_default(),
        "--namespace",
        namespace,
        "--kube-version",
        "1.35.0",
        "--show-only",
        "templates/gateway.yaml",
        "--set",
        &replicas,
        "--set",
        "gateway.image.repository=aleph.local/aleph-gateway",
        "--set",
        "gateway.image.tag=dev",
        "--set",
        "gateway.image.pullPolicy=Never",
        "--set",
        "gateway.podDisruptionBudget.enabled=false",
        "--set",
        "gateway.resources.requests.cpu=10m",
    ];
    for value in extra {
        args.extend(["--set", value]);
    }
    helm(args).await.unwrap_or_else(|e| panic!("{e}"))
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The gateway's pods in `pods`' namespace once `count` of them are Ready and
/// not being deleted (those, by name).
pub async fn wait_for_gateway_pods(pods: &Api<Pod>, count: usize, timeout: Duration) -> Vec<Pod> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut ready: Vec<Pod> = pods
            .list(&ListParams::default().labels(GATEWAY_COMPONENT))
            .await
            .expect("list the gateway's pods")
            .items
            .into_iter()
            .filter(is_ready)
            .collect();
        if ready.len() >= count {
            ready.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} gateway pods Ready after {timeout:?}",
            ready.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A pod's IP.
pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(|| panic!("pod {:?} has no IP", pod.metadata.name))
}

/// Runs the chart's gateway (`replicas` of it) in the test's namespace, made
/// a platform namespace pinned to the real node.
pub async fn install(env: &crate::TestEnv, replicas: u32) {
    platform_namespace(&env.client(), env.namespace()).await;
    let release = unique_name("gw");
    env.apply_yaml(&render_gateway(&release, env.namespace(), replicas, &[]).await)
        .await;
}

/// Sums the samples of `metric` whose labels include every `label="value"` of `labels`.
pub fn sum(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> u64 {
    let prefix = format!("{metric}{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A gateway pod's `/metrics`.
pub async fn metrics(pod_ip: &str) -> String {
    let (code, text) = crate::operator::http_get(&format!("{pod_ip}:9090"), "/metrics")
        .await
        .expect("GET the gateway's /metrics");
    assert_eq!(code, 200, "{text}");
    text
}
