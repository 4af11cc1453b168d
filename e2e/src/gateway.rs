//! aleph-gateway in a test's cluster: the chart's own gateway objects in a
//! platform namespace, API keys for tenants, and the gateway's counters.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helm::{chart_dir, helm};
use crate::real_node::pin_namespace;
use crate::{TestEnv, unique_name};

/// A new API key and the Secret (YAML) that gives it to the tenant owning the
/// namespace it is applied in.
pub fn key_secret(name: &str) -> (String, String) {
    let key = format!("sk-aleph-{}", unique_name("k").replace('-', ""));
    let sha = format!("{:x}", Sha256::digest(key.as_bytes()));
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels: {{aleph.dev/gateway-key: \"true\"}}\nstringData: {{sha256: {sha}}}\n"
    );
    (key, yaml)
}

/// The chart's gateway objects with `replicas` replicas of the locally built image.
pub async fn render(release: &str, namespace: &str, replicas: u32) -> String {
    let chart = chart_dir();
    let replicas = format!("gateway.replicaCount={replicas}");
    helm([
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
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the chart's gateway (`replicas` of it) in the test's namespace, made
/// a platform namespace (tenant isolation admits it) pinned to the real node.
pub async fn install(env: &TestEnv, replicas: u32) {
    let platform = env.namespace().to_string();
    Api::<Namespace>::all(env.client())
        .patch(
            &platform,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "aleph.dev/platform": "true" } } })),
        )
        .await
        .expect("label the platform namespace");
    pin_namespace(&env.client(), &platform).await;
    let release = unique_name("gw");
    env.apply_yaml(&render(&release, &platform, replicas).await)
        .await;
}

/// The gateway's Ready pods in `namespace`, once there are `count` of them.
pub async fn ready_pods(
    client: &Client,
    namespace: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    loop {
        let ready: Vec<Pod> = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=gateway"))
            .await
            .expect("list the gateway's pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .collect();
        if ready.len() >= count {
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

/// The pod's IP.
pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the gateway pod's IP")
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

/// The gateway pod's `/metrics`.
pub async fn metrics(pod_ip: &str) -> String {
    let (code, text) = crate::operator::http_get(&format!("{pod_ip}:9090"), "/metrics")
        .await
        .expect("GET the gateway's /metrics");
    assert_eq!(code, 200, "{text}");
    text
}
