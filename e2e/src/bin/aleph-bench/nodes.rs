//! The fake nodes (run by kwok) the benchmark's pods are scheduled on.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use tokio::time::Instant;

use crate::{BENCH_LABEL, BenchError, Result, post};

/// Fake nodes (run by kwok) with room for `pods` more pods: the local control
/// plane's own nodes hold 110 each.
pub async fn ensure_nodes(client: &kube::Client, run_id: &str, pods: usize) -> Result<()> {
    const PODS_PER_NODE: usize = 1000;
    let count = pods.div_ceil(PODS_PER_NODE);
    let nodes: Api<Node> = Api::all(client.clone());
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("aleph-bench-{run_id}-{i}");
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    BENCH_LABEL: run_id,
                },
            },
            "spec": {},
            "status": {
                "allocatable": { "cpu": "1000", "memory": "4000Gi", "pods": PODS_PER_NODE.to_string() },
                "capacity": { "cpu": "1000", "memory": "4000Gi", "pods": PODS_PER_NODE.to_string() },
            },
        }))
        .map_err(|e| BenchError::Setup(e.to_string()))?;
        post(&nodes, &node).await?;
        names.push(name);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in names {
        loop {
            let ready =
                nodes.get_opt(&name).await?.is_some_and(|n| {
                    let ready = n.status.and_then(|s| s.conditions).is_some_and(|c| {
                        c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                    });
                    let tainted = n.spec.and_then(|s| s.taints).is_some_and(|t| {
                        t.iter().any(|t| t.key.starts_with("node.kubernetes.io/"))
                    });
                    ready && !tainted
                });
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup(format!(
                    "node {name} did not get Ready in 120 s: is kwok running?"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}
