//! AIModels for the benchmark, and the floor: the AIModel reconciler's
//! children (a Service and a Deployment per model, built by its own build
//! functions) written directly by a plain client, waited for until available.

use std::collections::BTreeMap;

use aleph_controllers::aimodel::build;
use aleph_controllers::plugin::status::progress;
use aleph_crds::aimodel::AIModel;
use aleph_crds::keys::MODEL_LABEL;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use serde_json::json;

use crate::{BenchError, Result, Run, create_all, post};

/// The container image of every benchmark model (nothing runs on kwok's nodes).
const IMAGE: &str = "registry.k8s.io/pause:3.10";
const PORT: i32 = 8080;
/// What the floor calls the model label.
const FLOOR_MODEL_LABEL: &str = "aleph.dev/bench-floor-model";

/// The AIModel `name`: a CPU-only custom runtime, one replica, no model cache,
/// so that kwok makes its pod Ready at once.
pub fn aimodel(name: &str, namespace: &str, labels: &BTreeMap<String, String>) -> Result<AIModel> {
    serde_json::from_value(json!({
        "apiVersion": "aleph.dev/v1alpha1",
        "kind": "AIModel",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": {
            "source": { "uri": "hf://aleph-bench/model" },
            "runtime": { "engine": "custom", "image": IMAGE, "port": PORT },
            "resources": { "cpu": "10m", "memory": "16Mi" },
            "replicas": 1,
            "cache": { "enabled": false },
        },
    }))
    .map_err(|e| BenchError::Setup(format!("the benchmark AIModel does not parse: {e}")))
}

/// The name of the i-th model of a run.
pub fn name(i: usize) -> String {
    format!("m-{i:04}")
}

/// Creates the run's N AIModels in `namespace`, `creators` at a time.
pub async fn create(run: &Run, namespace: &str, creators: usize) -> Result<()> {
    let api: Api<AIModel> = Api::namespaced(run.client.clone(), namespace);
    let labels = run.aleph_labels();
    let models = (0..run.n)
        .map(|i| aimodel(&name(i), namespace, &labels))
        .collect::<Result<Vec<_>>>()?;
    create_all(models, creators, |m| {
        let api = api.clone();
        async move { post(&api, &m).await }
    })
    .await
}

/// Renames the model label everywhere (labels and selectors), so that the
/// operator's watches, which select on it, do not see the floor's objects.
fn rename_model_label(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(v) = map.remove(MODEL_LABEL) {
                map.insert(FLOOR_MODEL_LABEL.to_string(), v);
            }
            map.values_mut().for_each(rename_model_label);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(rename_model_label),
        _ => {}
    }
}

/// A child the AIModel reconciler would write, as the floor writes it: the
/// floor's labels on the object, no owner (there is no AIModel, and the
/// garbage collector would delete an orphan), the model label renamed.
fn floor_owned<K>(obj: &K, labels: &BTreeMap<String, String>) -> Result<K>
where
    K: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut value = serde_json::to_value(obj).map_err(|e| BenchError::Setup(e.to_string()))?;
    rename_model_label(&mut value);
    value["metadata"]["labels"] = json!(labels);
    if let Some(meta) = value["metadata"].as_object_mut() {
        meta.remove("ownerReferences");
    }
    serde_json::from_value(value).map_err(|e| BenchError::Setup(e.to_string()))
}

/// What the AIModel reconciler writes for `model` (its own build functions):
/// the Service, then the Deployment, and an HPA when it autoscales.
fn floor_children(
    model: &AIModel,
    labels: &BTreeMap<String, String>,
) -> Result<(Service, Deployment, Option<HorizontalPodAutoscaler>)> {
    let uri = model
        .spec
        .source
        .as_ref()
        .map(|s| s.uri.clone())
        .unwrap_or_default();
    let plan = build::plan(model, &uri)
        .map_err(|e| BenchError::Setup(format!("the benchmark AIModel is invalid: {e}")))?;
    let service = floor_owned(&build::service(model, &plan), labels)?;
    let deployment = floor_owned(
        &build::deployment(
            model,
            &plan,
            &plan.stable,
            aleph_controllers::context::DEFAULT_MODEL_CACHE_IMAGE,
        )?,
        labels,
    )?;
    let hpa = match build::hpa(model, &plan) {
        Some(hpa) => Some(floor_owned(&hpa, labels)?),
        None => None,
    };
    Ok((service, deployment, hpa))
}

/// The floor: `workers` at a time, each writing one model's children in order.
pub async fn floor(
    run: &Run,
    client: &kube::Client,
    namespace: &str,
    workers: usize,
) -> Result<()> {
    let labels = run.floor_labels();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let models = (0..run.n)
        .map(|i| aimodel(&name(i), namespace, &BTreeMap::new()))
        .collect::<Result<Vec<_>>>()?;
    create_all(models, workers, |model| {
        let labels = labels.clone();
        let (deployments, services, hpas) = (deployments.clone(), services.clone(), hpas.clone());
        async move {
            let (service, deployment, hpa) = floor_children(&model, &labels)?;
            post(&services, &service).await?;
            post(&deployments, &deployment).await?;
            if let Some(hpa) = hpa {
                post(&hpas, &hpa).await?;
            }
            Ok(())
        }
    })
    .await
}

/// Whether an AIModel reports Ready=True.
pub fn is_ready(model: &AIModel) -> bool {
    model.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == aleph_crds::common::ConditionStatus::True)
    })
}

/// Whether a Deployment has all its replicas available (as many as it
/// desires, read as the operator reads them).
pub fn is_available(deployment: &Deployment) -> bool {
    let want = progress(deployment).desired;
    deployment.status.as_ref().is_some_and(|s| {
        s.available_replicas.unwrap_or(0) >= want && s.observed_generation.is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_writes_what_the_reconciler_builds_without_its_labels_and_owner() {
        let model = aimodel("m-0001", "ns", &BTreeMap::new()).expect("the benchmark model");
        let labels = BTreeMap::from([("aleph.dev/bench-floor".to_string(), "r".to_string())]);
        let (service, deployment, hpa) = floor_children(&model, &labels).expect("children");
        assert!(hpa.is_none(), "one fixed replica needs no HPA");
        assert_eq!(deployment.metadata.labels.as_ref(), Some(&labels));
        assert!(deployment.metadata.owner_references.is_none());
        let text = serde_json::to_string(&(&service, &deployment)).expect("JSON");
        assert!(!text.contains(&format!("\"{MODEL_LABEL}\"")), "{text}");
        let spec = deployment.spec.expect("spec");
        assert_eq!(spec.replicas, Some(1));
        let pod_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        assert_eq!(
            pod_labels.get(FLOOR_MODEL_LABEL).map(String::as_str),
            Some("m-0001")
        );
        let container = &spec.template.spec.expect("pod spec").containers[0];
        assert_eq!(container.image.as_deref(), Some(IMAGE));
        let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
        assert_eq!(
            selector.get(FLOOR_MODEL_LABEL).map(String::as_str),
            Some("m-0001")
        );
    }
}
