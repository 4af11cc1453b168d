//! Lean copies of what the operator caches in bulk, decoded straight from the
//! API's JSON with only the fields a reader uses. A k8s-openapi struct holds
//! room for every field of its kind, empty ones included (a pod's spec and
//! one container take about 2 KB before any value), and a list page is
//! decoded whole before a watch can trim it: a lean type never holds the
//! rest, in the cache or while a page is decoded.
//!
//! Each lean type names its fields as the full type does, so code reading
//! `pod.spec.as_ref()?.containers` reads either.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::{Deserialize, Deserializer, Serialize};

/// An object's metadata without its managed fields: what the API server
/// keeps of who set each field is often the largest part of a small object,
/// and no reader of a cache needs it.
pub fn metadata_without_managed_fields<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        annotations: Option<BTreeMap<String, String>>,
        creation_timestamp: Option<Time>,
        deletion_grace_period_seconds: Option<i64>,
        deletion_timestamp: Option<Time>,
        finalizers: Option<Vec<String>>,
        generate_name: Option<String>,
        generation: Option<i64>,
        labels: Option<BTreeMap<String, String>>,
        name: Option<String>,
        namespace: Option<String>,
        owner_references: Option<Vec<OwnerReference>>,
        resource_version: Option<String>,
        uid: Option<String>,
    }
    let m = Meta::deserialize(deserializer)?;
    Ok(ObjectMeta {
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        generate_name: m.generate_name,
        generation: m.generation,
        labels: m.labels,
        managed_fields: None,
        name: m.name,
        namespace: m.namespace,
        owner_references: m.owner_references,
        resource_version: m.resource_version,
        self_link: None,
        uid: m.uid,
    })
}

/// A serving pod as a model's status reads it: its metadata, the node it
/// runs on, its containers' names and limits, and its status (which the
/// watch trims further, see `aimodel::observe::trim_pod`). Listed and watched
/// as the `Pod` kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ServingPod {
    /// The pod's metadata, without managed fields.
    #[serde(default, deserialize_with = "metadata_without_managed_fields")]
    pub metadata: ObjectMeta,
    /// What the status reads of its spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ServingPodSpec>,
    /// Its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

/// What a model's status reads of a serving pod's spec.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServingPodSpec {
    /// Its (serving) containers; init containers are not read.
    #[serde(default)]
    pub containers: Vec<ServingContainer>,
    /// The node it was scheduled to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// A serving container's name and limits (the memory limit that an OOM
/// kill is reported against).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ServingContainer {
    /// The container's name.
    pub name: String,
    /// Its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Limits>,
}

/// A container's resource limits.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Limits {
    /// The limits by resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, Quantity>>,
}

impl Resource for ServingPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_json() -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "m-abc", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "labels": { "aleph.dev/model": "m", "pod-template-hash": "abc" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "m-abc", "uid": "u0", "controller": true }],
                "managedFields": [{ "manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "v1", "fieldsType": "FieldsV1",
                    "fieldsV1": { "f:metadata": { "f:labels": {} } } }],
            },
            "spec": {
                "nodeName": "gpu-1",
                "volumes": [{ "name": "weights", "emptyDir": {} }],
                "initContainers": [{ "name": "fetch", "image": "fetch" }],
                "containers": [{
                    "name": "llama-server", "image": "engine",
                    "env": [{ "name": "A", "value": "b" }],
                    "resources": { "limits": { "memory": "2Gi", "nvidia.com/gpu": "1" },
                                   "requests": { "cpu": "1" } },
                }],
            },
            "status": { "phase": "Running" },
        })
    }

    #[test]
    fn a_serving_pod_keeps_what_the_status_reads_and_no_more() {
        let pod: ServingPod = serde_json::from_value(pod_json()).expect("a pod");
        let full: Pod = serde_json::from_value(pod_json()).expect("a pod");
        assert_eq!(pod.metadata.name, full.metadata.name);
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(pod.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(pod.metadata.labels, full.metadata.labels);
        assert_eq!(
            pod.metadata.owner_references,
            full.metadata.owner_references
        );
        assert!(full.metadata.managed_fields.is_some());
        assert_eq!(pod.metadata.managed_fields, None);
        assert_eq!(pod.status, full.status);
        let spec = pod.spec.expect("a spec");
        assert_eq!(spec.node_name.as_deref(), Some("gpu-1"));
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.containers[0].name, "llama-server");
        let limits = spec.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref());
        let full_limits = full.spec.expect("a spec").containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone());
        assert_eq!(limits, full_limits.as_ref());
    }

    #[test]
    fn a_serving_pod_is_listed_and_watched_as_a_pod() {
        assert_eq!(ServingPod::kind(&()), "Pod");
        assert_eq!(ServingPod::api_version(&()), "v1");
        assert_eq!(
            ServingPod::url_path(&(), Some("ns")),
            Pod::url_path(&(), Some("ns"))
        );
        let empty: ServingPod = serde_json::from_value(json!({})).expect("an empty pod");
        assert_eq!(empty, ServingPod::default());
    }
}
