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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher::Event;
use serde::de::value::StrDeserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `K` decoded without its managed fields: what the API server keeps of who
/// set each field is often the largest part of a small object (a tree of
/// JSON values, kept whole), and no reader of a cache needs it. A watch
/// decodes its objects so ([`crate::runner::cached_watch`]) and hands on
/// the `K` within.
#[derive(Clone, Debug, PartialEq)]
pub struct Lean<K>(pub K);

impl<K> Lean<K> {
    /// A watch's event of the lean object, as an event of the object.
    pub fn unwrap_event(event: Event<Lean<K>>) -> Event<K> {
        match event {
            Event::Apply(Lean(o)) => Event::Apply(o),
            Event::Delete(Lean(o)) => Event::Delete(o),
            Event::Init => Event::Init,
            Event::InitApply(Lean(o)) => Event::InitApply(o),
            Event::InitDone => Event::InitDone,
        }
    }
}

impl<K: Resource> Resource for Lean<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn url_path(dt: &Self::DynamicType, namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

impl<'de, K: Deserialize<'de>> Deserialize<'de> for Lean<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(Lens {
            de: deserializer,
            level: Level::Object,
        })
        .map(Lean)
    }
}

/// Where a [`Lens`] looks: at an object (whose `metadata` it looks into), at
/// its metadata (whose `managedFields` it skips and whose `annotations` it
/// looks into) or at its annotations (whose [`LAST_APPLIED`] it skips).
#[derive(Clone, Copy)]
enum Level {
    Object,
    Metadata,
    Annotations,
}

/// The annotation in which `kubectl apply` (and Argo CD, which applies as it
/// does) keeps the whole object as last applied: as large as the rest of the
/// object, read by `kubectl apply` only.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A deserializer that hands the decoded type everything of the input but
/// an object's `metadata.managedFields` and its [`LAST_APPLIED`]
/// annotation, which it skips unread (serde's `IgnoredAny`: nothing is
/// allocated for them).
struct Lens<D> {
    de: D,
    level: Level,
}

impl<D> Lens<D> {
    fn visitor<V>(&self, visitor: V) -> Lens<V> {
        Lens {
            de: visitor,
            level: self.level,
        }
    }
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Lens<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_option(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_struct(name, fields, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple tuple_struct
        enum identifier ignored_any
    }
}

/// The visitor of a [`Lens`]: a map is read through [`LensMap`], anything
/// else is the inner visitor's.
impl<'de, V: Visitor<'de>> Visitor<'de> for Lens<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.de.expecting(f)
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<V::Value, M::Error> {
        self.de.visit_map(LensMap {
            map,
            level: self.level,
            next: None,
        })
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.de.visit_some(Lens {
            de,
            level: self.level,
        })
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.de.visit_none()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.de.visit_unit()
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.de.visit_bool(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.de.visit_i64(v)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.de.visit_u64(v)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.de.visit_f64(v)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.de.visit_str(v)
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.de.visit_borrowed_str(v)
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<V::Value, E> {
        self.de.visit_string(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.de.visit_seq(seq)
    }
}

/// The entries of a map seen through a [`Lens`].
struct LensMap<M> {
    map: M,
    level: Level,
    /// Where the [`Lens`] looks in the value of the key just read, if anywhere.
    next: Option<Level>,
}

impl<'de, M: MapAccess<'de>> MapAccess<'de> for LensMap<M> {
    type Error = M::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, M::Error> {
        loop {
            let Some(key) = self.map.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            self.next = match (self.level, key.0.as_ref()) {
                (Level::Metadata, "managedFields") | (Level::Annotations, LAST_APPLIED) => {
                    self.map.next_value::<IgnoredAny>()?;
                    continue;
                }
                (Level::Object, "metadata") => Some(Level::Metadata),
                (Level::Metadata, "annotations") => Some(Level::Annotations),
                _ => None,
            };
            return seed
                .deserialize(StrDeserializer::<M::Error>::new(&key.0))
                .map(Some);
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, M::Error> {
        match self.next.take() {
            Some(level) => self.map.next_value_seed(LensSeed { seed, level }),
            None => self.map.next_value_seed(seed),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// A map's key, borrowed from the input where it can be.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The value of a key that a [`Lens`] looks into.
struct LensSeed<S> {
    seed: S,
    level: Level,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for LensSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Lens {
            de,
            level: self.level,
        })
    }
}

/// A serving pod as a model's status reads it: its metadata, the node it
/// runs on, its containers' names and limits, and its status (which the
/// watch trims further, see `aimodel::observe::trim_pod`). Listed and watched
/// as the `Pod` kind.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ServingPod {
    /// The pod's metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the status reads of its spec.
    #[serde(default)]
    pub spec: Option<ServingPodSpec>,
    /// Its status.
    #[serde(default)]
    pub status: Option<PodStatus>,
}

/// What a model's status reads of a serving pod's spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServingPodSpec {
    /// Its (serving) containers; init containers are not read.
    #[serde(default)]
    pub containers: Vec<ServingContainer>,
    /// The node it was scheduled to.
    #[serde(default)]
    pub node_name: Option<String>,
}

/// A serving container's name and limits (the memory limit that an OOM
/// kill is reported against).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ServingContainer {
    /// The container's name.
    pub name: String,
    /// Its limits.
    #[serde(default)]
    pub resources: Option<Limits>,
}

/// A container's resource limits.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Limits {
    /// The limits by resource name.
    #[serde(default)]
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
        let Lean(pod): Lean<ServingPod> = serde_json::from_value(pod_json()).expect("a pod");
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

    /// Decodes `json` as `K` and as `Lean<K>`, from text as a watch does.
    fn both<K: serde::de::DeserializeOwned>(
        json: &serde_json::Value,
    ) -> (Result<K, String>, Result<K, String>) {
        let text = json.to_string();
        let full = serde_json::from_str::<K>(&text).map_err(|e| e.to_string());
        let lean = serde_json::from_str::<Lean<K>>(&text)
            .map(|Lean(k)| k)
            .map_err(|e| e.to_string());
        (full, lean)
    }

    #[test]
    fn a_lean_object_is_the_object_without_its_managed_fields() {
        use k8s_openapi::api::apps::v1::Deployment;
        use k8s_openapi::api::core::v1::ConfigMap;
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "m", "namespace": "ns", "uid": "u", "resourceVersion": "9",
                "labels": { "managedFields": "a label of that name is kept" },
                "annotations": { "deployment.kubernetes.io/revision": "2" },
                "managedFields": [
                    { "manager": "aleph", "operation": "Apply", "apiVersion": "apps/v1",
                      "fieldsType": "FieldsV1",
                      "fieldsV1": { "f:spec": { "f:replicas": {}, "f:template": {} } } },
                    { "manager": "kube-controller-manager", "operation": "Update",
                      "subresource": "status", "fieldsV1": { "f:status": {} } },
                ],
                "generation": 3,
            },
            "spec": { "replicas": 2, "selector": { "matchLabels": { "a": "b" } },
                      "template": { "metadata": { "labels": { "a": "b" } },
                                    "spec": { "containers": [{ "name": "c", "image": "i" }] } } },
            "status": { "replicas": 2, "readyReplicas": 1 },
        });
        let (full, lean) = both::<Deployment>(&deployment);
        let mut full = full.expect("a Deployment");
        assert_eq!(full.metadata.managed_fields.as_ref().map(Vec::len), Some(2));
        full.metadata.managed_fields = None;
        assert_eq!(lean.expect("a lean Deployment"), full);

        // Keys named alike elsewhere are data, kept as they are.
        let config = json!({
            "metadata": { "name": "c", "managedFields": [] },
            "data": { "metadata": "x", "managedFields": "y" },
        });
        let (full, lean) = both::<ConfigMap>(&config);
        let mut full = full.expect("a ConfigMap");
        full.metadata.managed_fields = None;
        let lean = lean.expect("a lean ConfigMap");
        assert_eq!(lean, full);
        assert_eq!(lean.data.map(|d| d.len()), Some(2));

        // Without metadata, and with keys in any order or escaped.
        for json in [
            json!({ "kind": "ConfigMap", "data": { "a": "b" } }),
            json!({ "data": { "a": "b" }, "metadata": { "managedFields": [{}], "name": "x" } }),
            serde_json::from_str(r#"{"metad\u0061ta": {"name": "x", "managedFields": []}}"#)
                .expect("JSON"),
        ] {
            let (full, lean) = both::<ConfigMap>(&json);
            let mut full = full.expect("a ConfigMap");
            full.metadata.managed_fields = None;
            assert_eq!(lean.expect("a lean ConfigMap"), full, "{json}");
        }
    }

    #[test]
    fn a_lean_object_has_no_last_applied_configuration() {
        use aleph_crds::aimodel::AIModel;
        use kube::ResourceExt;
        let spec = json!({ "source": { "uri": "hf://org/m" } });
        let applied = json!({
            "apiVersion": "aleph.dev/v1alpha1", "kind": "AIModel",
            "metadata": { "name": "m", "namespace": "ns", "annotations": {} },
            "spec": spec,
        });
        let model = json!({
            "apiVersion": "aleph.dev/v1alpha1", "kind": "AIModel",
            "metadata": {
                "name": "m", "namespace": "ns", "uid": "u",
                "annotations": {
                    LAST_APPLIED: applied.to_string(),
                    "aleph.dev/note": "kept",
                },
                "labels": { LAST_APPLIED: "a label of that name is kept" },
            },
            "spec": spec,
        });
        let (full, lean) = both::<AIModel>(&model);
        let mut full = full.expect("an AIModel");
        assert!(full.annotations().contains_key(LAST_APPLIED));
        full.annotations_mut().remove(LAST_APPLIED);
        let lean = lean.expect("a lean AIModel");
        assert_eq!(
            serde_json::to_value(&lean).expect("JSON"),
            serde_json::to_value(&full).expect("JSON")
        );
        assert_eq!(
            lean.annotations().get("aleph.dev/note").map(String::as_str),
            Some("kept")
        );
        assert!(lean.labels().contains_key(LAST_APPLIED));
        // In the spec, a key of that name is data.
        let config = json!({
            "metadata": { "name": "c", "annotations": { LAST_APPLIED: "{}" } },
            "data": { LAST_APPLIED: "y" },
        });
        let (_, lean) = both::<k8s_openapi::api::core::v1::ConfigMap>(&config);
        let lean = lean.expect("a lean ConfigMap");
        assert_eq!(lean.metadata.annotations.map(|a| a.len()), Some(0));
        assert_eq!(lean.data.map(|d| d.len()), Some(1));
    }

    #[test]
    fn a_lean_object_decodes_or_fails_where_the_object_does() {
        use k8s_openapi::api::core::v1::ConfigMap;
        for json in [
            json!({ "metadata": null }),
            json!({ "metadata": { "name": 3 } }),
            json!({ "metadata": { "labels": null, "finalizers": ["f"] } }),
            json!({ "metadata": { "managedFields": null } }),
            json!({ "data": [] }),
            json!({ "data": null, "immutable": true }),
            json!([]),
            json!("text"),
            json!(null),
        ] {
            let (full, lean) = both::<ConfigMap>(&json);
            match (full, lean) {
                (Ok(mut full), Ok(lean)) => {
                    full.metadata.managed_fields = None;
                    assert_eq!(lean, full, "{json}");
                }
                (Err(_), Err(_)) => {}
                (full, lean) => panic!("{json}: {full:?} against {lean:?}"),
            }
        }
        // Managed fields that would not decode are skipped unread.
        let json = json!({ "metadata": { "managedFields": [{ "manager": 3 }] } });
        let (full, lean) = both::<ConfigMap>(&json);
        assert!(full.is_err());
        assert_eq!(lean, Ok(ConfigMap::default()));
    }

    #[test]
    fn an_object_that_does_not_decode_keeps_its_name_for_the_error() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::core::error_boundary::DeserializeGuard;
        let json = json!({
            "metadata": { "name": "c", "namespace": "ns", "managedFields": [{ "manager": "m" }] },
            "data": { "a": 1 },
        });
        let Lean(guard): Lean<DeserializeGuard<ConfigMap>> =
            serde_json::from_str(&json.to_string()).expect("a guarded object");
        assert!(guard.0.is_err());
        assert_eq!(guard.meta().name.as_deref(), Some("c"));
        assert_eq!(guard.meta().namespace.as_deref(), Some("ns"));
        assert_eq!(guard.meta().managed_fields, None);
        let good =
            json!({ "metadata": { "name": "c", "managedFields": [{}] }, "data": { "a": "1" } });
        let Lean(guard): Lean<DeserializeGuard<ConfigMap>> =
            serde_json::from_str(&good.to_string()).expect("a guarded object");
        let config = guard.0.expect("a ConfigMap");
        assert_eq!(config.metadata.managed_fields, None);
        assert_eq!(config.data.map(|d| d.len()), Some(1));
    }

    #[test]
    fn a_lean_object_is_watched_as_its_kind() {
        use k8s_openapi::api::apps::v1::Deployment;
        assert_eq!(
            Lean::<Deployment>::url_path(&(), Some("ns")),
            Deployment::url_path(&(), Some("ns"))
        );
        assert_eq!(Lean::<Deployment>::api_version(&()), "apps/v1");
        assert_eq!(Lean::<Deployment>::plural(&()), "deployments");
        let event = Lean::unwrap_event(Event::Apply(Lean(Deployment::default())));
        assert!(matches!(event, Event::Apply(d) if d == Deployment::default()));
    }
}
