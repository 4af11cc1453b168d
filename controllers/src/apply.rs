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

use crate::digest::{Created, Verified, beside_digest};
use crate::error::{Error, Result};

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
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug + 'static,
{
    let fresher = observed.and_then(Created::newer);
    if let Some(observed) = fresher.as_ref().or(observed)
        && holding(api, observed, desired).await?.is_some()
    {
        return Ok(false);
    }
    applied(api, desired).await?;
    Ok(true)
}

/// Applies `desired` to a child this pass has just created or found to be
/// its owner's, with nothing to compare against first (the caches do not
/// show the pass's own writes yet).
pub async fn apply_unchecked<K>(api: &Api<K>, desired: &K) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug + Send + 'static,
{
    let result = applied(api, desired).await?;
    Created::record(&result, desired);
    Ok(result)
}

/// The child as it is when `desired` already holds in `observed`, else
/// `None`. A trimmed cached copy ([`crate::digest`]) is judged by the record
/// of the last full comparison; without one that matches, the child is read
/// whole and compared field by field.
async fn holding<K>(api: &Api<K>, observed: &K, desired: &K) -> kube::Result<Option<K>>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    match Verified::holds(observed, desired) {
        None => Ok(is_subset(desired, observed).then(|| observed.clone())),
        Some(true) if is_subset(&*beside_digest(desired.meta()), observed.meta()) => {
            Ok(Some(observed.clone()))
        }
        Some(_) => {
            let Some(whole) = api.get_opt(&observed.name_any()).await? else {
                return Ok(None);
            };
            if !is_subset(desired, &whole) {
                return Ok(None);
            }
            Verified::remember(&whole, desired);
            Ok(Some(whole))
        }
    }
}

/// [`apply`], remembering the result's content where `desired` holds in it
/// (a mutating webhook may change what was sent: then it is compared again
/// on the next pass, as before).
///
/// Server-side apply merges the lists it treats as sets or keyed maps
/// (`validationActions`, containers by name): an entry somebody else added
/// by hand stays, owned by them, and `desired` still does not hold. Then the
/// lists are replaced by a merge patch of `desired`, so that an edit by hand
/// is undone rather than applied against on every pass.
async fn applied<K>(api: &Api<K>, desired: &K) -> kube::Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    tracing::debug!(
        kind = std::any::type_name::<K>().rsplit("::").next().unwrap_or_default(),
        name = %desired.name_any(),
        namespace = desired.meta().namespace.as_deref().unwrap_or_default(),
        "applying: missing or different in the cluster"
    );
    let mut result = apply(api, desired).await?;
    if !is_subset(desired, &result) {
        let params = PatchParams {
            field_manager: Some(MANAGER.to_string()),
            ..PatchParams::default()
        };
        result = api
            .patch(&desired.name_any(), &params, &Patch::Merge(desired))
            .await?;
    }
    if is_subset(desired, &result) {
        Verified::remember(&result, desired);
    }
    Ok(result)
}

/// A resourceVersion no stored object has: etcd's revisions start at 1 and
/// its first write makes 2, so an object's version is never "1".
const NO_OBJECT_HAS_THIS_VERSION: &str = "1";

/// What [`create_absent`] found.
#[derive(Debug)]
pub enum Absent<K> {
    /// The child was created (or had just been, and no cache shows it yet).
    Created(K),
    /// An object of that name exists; nothing was written.
    Exists,
}

/// Creates `desired`, which the caller's watch cache does not show, in one
/// request that cannot change an object already there: a server-side apply
/// with a resourceVersion precondition no stored object meets. An absent
/// object is created as any apply creates it (the operator's field manager
/// owns what it set); an existing one, of this operator's or of somebody
/// else's, makes the API server answer 409 Conflict and is left untouched,
/// so the caller looks it up and decides as before. A child created moments
/// ago that the caches do not show yet ([`Created`]) needs no request.
///
/// Reading first and writing after, as a child missing from a cache used to
/// be handled, costs two requests for every child made; this costs one.
pub async fn create_absent<K>(api: &Api<K>, desired: &K) -> kube::Result<Absent<K>>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug + Send + 'static,
{
    if let Some(created) = Created::pending(desired) {
        return Ok(Absent::Created(created));
    }
    let mut only_if_absent = desired.clone();
    only_if_absent.meta_mut().resource_version = Some(NO_OBJECT_HAS_THIS_VERSION.to_string());
    tracing::debug!(
        kind = %K::kind(&()),
        name = %desired.name_any(),
        namespace = desired.meta().namespace.as_deref().unwrap_or_default(),
        "creating: not in the cache"
    );
    let created = match apply(api, &only_if_absent).await {
        Ok(created) => created,
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Absent::Exists),
        Err(e) => return Err(e),
    };
    // A mutating admission may have changed what was sent: settle it as
    // any other apply does.
    let created = if is_subset(desired, &created) {
        Verified::remember(&created, desired);
        created
    } else {
        applied(api, desired).await?
    };
    Created::record(&created, desired);
    Ok(Absent::Created(created))
}

/// Adds (`present`) or removes Aleph's finalizer on `obj`, with the
/// resourceVersion read as a precondition; the object as written, or None
/// when it already was as asked.
pub async fn set_finalizer<K>(api: &Api<K>, obj: &K, present: bool) -> kube::Result<Option<K>>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let finalizer = aleph_crds::keys::FINALIZER;
    let has = obj.finalizers().iter().any(|f| f == finalizer);
    if has == present {
        return Ok(None);
    }
    let mut list: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if present {
        list.push(finalizer.to_string());
    }
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": list,
            "resourceVersion": obj.resource_version(),
        }
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(Some)
}

/// The object children are made for: what owns them, by UID, and what the
/// user calls its kind in a message ("plugin", "model", "tenant").
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    /// The owner's UID, the controller reference every child carries.
    pub uid: &'a str,
    /// The owner's kind, as a message names it.
    pub noun: &'static str,
}

impl Owner<'_> {
    /// Whether this owner is `obj`'s controller.
    pub fn controls<K: Resource>(&self, obj: &K) -> bool {
        obj.meta()
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|r| r.controller == Some(true) && r.uid == self.uid)
    }

    /// Applies `desired`, a child of this owner, unless it already holds.
    /// Returns the child as it now is.
    ///
    /// `observed` is the child as last read (from a list, a cache or a GET);
    /// with `None` the name is looked up first. An object of that name that
    /// this owner does not control is never taken over: it is left as it is
    /// and the pass fails with [`Error::NameConflict`] naming it.
    pub async fn ensure<K>(&self, api: &Api<K>, observed: Option<&K>, desired: &K) -> Result<K>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug + 'static,
    {
        let looked_up;
        let fresher = observed.and_then(Created::newer);
        let observed = match fresher.as_ref().or(observed) {
            Some(observed) => Some(observed),
            None => {
                looked_up = api.get_opt(&desired.name_any()).await?;
                looked_up.as_ref()
            }
        };
        if let Some(observed) = observed {
            if !self.controls(observed) {
                return Err(self.conflict(&K::kind(&()), &observed.name_any()));
            }
            if let Some(current) = holding(api, observed, desired).await? {
                return Ok(current);
            }
        }
        Ok(applied(api, desired).await?)
    }

    /// [`Owner::ensure`] for a child read from a watch cache, where `cached`
    /// is `None` when the cache (filled, or a list in its place) does not
    /// show it: the child is then created without a read first
    /// ([`create_absent`]), and only an object of that name already there
    /// is looked up and judged as [`Owner::ensure`] judges it (never taken
    /// over when it is somebody else's).
    pub async fn ensure_cached<K>(&self, api: &Api<K>, cached: Option<&K>, desired: &K) -> Result<K>
    where
        K: Resource<DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug
            + Send
            + 'static,
    {
        if cached.is_none()
            && let Absent::Created(created) = create_absent(api, desired).await?
        {
            return Ok(created);
        }
        self.ensure(api, cached, desired).await
    }

    /// Deletes the child `name` if this owner controls it; another's object
    /// of that name, or none, is left alone.
    pub async fn remove<K>(&self, api: &Api<K>, name: &str) -> Result<()>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        match api.get_opt(name).await? {
            Some(observed) if self.controls(&observed) => delete_ignoring_missing(api, name).await,
            _ => Ok(()),
        }
    }

    /// The error for a `kind` named `name` that is not this owner's.
    pub fn conflict(&self, kind: &str, name: &str) -> Error {
        let noun = self.noun;
        Error::NameConflict(format!(
            "a {kind} named {name} already exists and does not belong to this {noun}: delete it or rename the {noun}"
        ))
    }
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
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    tracing::debug!(
        kind = %K::kind(&()),
        name = %obj.name_any(),
        status = %serde_json::to_string(desired).unwrap_or_default(),
        "writing the status: changed"
    );
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    let written = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    // The next pass starts from this write until the cache shows it.
    crate::digest::Created::wrote(&written);
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

    #[test]
    fn an_owner_controls_only_what_names_it_as_controller() {
        use k8s_openapi::api::core::v1::Service;
        let owner = Owner {
            uid: "u1",
            noun: "model",
        };
        let with = |uid: &str, controller: Option<bool>| {
            let mut service = Service::default();
            service.metadata.owner_references = Some(vec![OwnerReference {
                uid: uid.into(),
                controller,
                ..OwnerReference::default()
            }]);
            service
        };
        assert!(owner.controls(&with("u1", Some(true))));
        assert!(
            !owner.controls(&with("u1", None)),
            "an owner, not the controller"
        );
        assert!(!owner.controls(&with("u2", Some(true))));
        assert!(!owner.controls(&Service::default()));
        assert_eq!(
            owner.conflict("Service", "chat").to_string(),
            "name taken: a Service named chat already exists and does not belong to this model: delete it or rename the model"
        );
    }
}
