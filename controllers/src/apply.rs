//! Writing to the cluster: labels every made object carries, owner references,
//! and server-side apply with the field manager `aleph-operator`.

use std::collections::BTreeMap;
use std::fmt::Debug;

use aleph_crds::keys::PART_OF_LABEL;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The field manager of every write.
pub const MANAGER: &str = "aleph-operator";
/// Label: who manages the object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The labels every object the operator makes carries, plus `aleph.dev/<kind>: <name>`.
pub fn standard_labels(kind_label: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (PART_OF_LABEL.to_string(), "aleph".to_string()),
        (format!("aleph.dev/{kind_label}"), name.to_string()),
    ])
}

/// The outcome of an API call with "not found" as `None`: for deletes and
/// patches of objects that may be gone already.
pub fn ignore_missing<T>(result: kube::Result<T>) -> crate::error::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Deletes `name` (its dependents in the background); gone already is fine.
pub async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> crate::error::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    ignore_missing(
        api.delete(name, &kube::api::DeleteParams::background())
            .await,
    )
    .map(|_| ())
}

/// An owner reference making `owner` the controller of a child.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

/// Server-side applies `obj` (forcing ownership of the fields it sets).
pub async fn apply<K>(api: &Api<K>, obj: &K) -> kube::Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Applies `desired` only when it differs from what is observed, so a steady
/// state sends no write. `observed` is the object as read (or from a cache).
///
/// The comparison is semantic: every field `desired` sets must already hold
/// the same value in `observed` (fields defaulted by the API server are ignored).
pub async fn apply_if_changed<K>(
    api: &Api<K>,
    observed: Option<&K>,
    desired: &K,
) -> kube::Result<bool>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    if let Some(observed) = observed
        && is_subset(desired, observed)
    {
        return Ok(false);
    }
    apply(api, desired).await?;
    Ok(true)
}

/// Whether every field `desired` sets holds the same value in `observed`.
pub fn is_subset<A: Serialize, B: Serialize>(desired: &A, observed: &B) -> bool {
    match (
        serde_json::to_value(desired),
        serde_json::to_value(observed),
    ) {
        (Ok(d), Ok(o)) => value_subset(&d, &o),
        _ => false,
    }
}

fn value_subset(desired: &serde_json::Value, observed: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => d.iter().all(|(k, dv)| match o.get(k) {
            Some(ov) => value_subset(dv, ov),
            None => dv.is_null() || is_empty(dv),
        }),
        (Value::Array(d), Value::Array(o)) => {
            d.len() == o.len() && d.iter().zip(o).all(|(dv, ov)| value_subset(dv, ov))
        }
        (Value::Number(d), Value::Number(o)) => d.as_f64() == o.as_f64(),
        (Value::Number(d), Value::String(o)) | (Value::String(o), Value::Number(d)) => {
            d.to_string() == *o
        }
        (d, o) => d == o,
    }
}

fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => m.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Patches the status subresource by server-side apply when it differs from
/// the current one. Returns whether a write was sent.
pub async fn patch_status_if_changed<K, S>(
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    desired: &S,
) -> kube::Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_server_defaults_and_compares_numbers_semantically() {
        let desired = json!({"spec": {"replicas": 2, "template": {"labels": {"a": "b"}}}});
        let observed = json!({"spec": {"replicas": 2.0, "revisionHistoryLimit": 10, "template": {"labels": {"a": "b"}}}});
        assert!(value_subset(&desired, &observed));
        let changed = json!({"spec": {"replicas": 3}});
        assert!(!value_subset(&changed, &observed));
        let missing = json!({"spec": {"paused": true}});
        assert!(!value_subset(&missing, &observed));
    }
}
