//! Cached children kept small: a watch's copy of a child keeps its metadata
//! and status (what passes read) and, in place of the rest, a digest of it
//! ([`keep_digest`]). Whether a desired child already holds is then decided
//! without the rest ([`Verified`]): the last full comparison is remembered as
//! a pair of digests (the desired content and the child's content it was
//! found in). A cached copy whose content digest matches that record, and
//! whose metadata holds what is desired, is up to date. Any other case (the
//! desired child changed, somebody edited the child, the operator restarted
//! and remembers nothing) reads the child whole and compares it field by
//! field, as before: an edit by hand is still undone on the next pass.
//!
//! The digest covers the child's labels and annotations too, but for the
//! annotations of Kubernetes' own components (`kubernetes.io/` and its
//! subdomains, which change on their own: a Deployment's revision): the copy
//! keeps only those, so most copies keep no map of annotations, and a kind
//! whose passes find its children by owner rather than by label keeps no
//! map of labels either ([`keep_digest`]'s `strip` drops them). The digest
//! is computed in memory and never written: it is kept beside the cache, by
//! UID and version ([`carried`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{LazyLock, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::Serialize;

/// At most this many comparisons (and as many digests) are remembered;
/// past it the record starts again. A comparison forgotten costs a read of
/// the child whole; a digest forgotten (only possible with more trimmed
/// children than this), one write of a child that needed none.
const MAX_RECORDS: usize = 200_000;

/// Whether the digest covers the annotation `key`: every one but those of
/// Kubernetes' own components, which a trimmed copy keeps as they are.
fn covered(key: &str) -> bool {
    !key.split_once('/')
        .is_some_and(|(domain, _)| domain == "kubernetes.io" || domain.ends_with(".kubernetes.io"))
}

/// The digest of everything in `obj` but its metadata and status, and of
/// its labels and the annotations that the digest covers: what a desired
/// child sets besides its owners.
pub fn content_digest<K: Resource + Serialize>(obj: &K) -> Option<u64> {
    let mut value = serde_json::to_value(obj).ok()?;
    let fields = value.as_object_mut()?;
    fields.remove("metadata");
    fields.remove("status");
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    obj.labels().hash(&mut hasher);
    let annotations: BTreeMap<&String, &String> = obj
        .annotations()
        .iter()
        .filter(|(k, _)| covered(k))
        .collect();
    annotations.hash(&mut hasher);
    Some(hasher.finish())
}

/// The digests of the trimmed copies, by UID: (the version it was computed
/// from, the digest). The watch computes it before its cache holds the copy,
/// so a cached copy is never newer than its digest.
static CARRIED: LazyLock<Mutex<HashMap<u128, (u64, u64)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Trims a cached copy: `strip` drops what no pass reads, the annotations
/// the digest covers are dropped, and the digest of the content before
/// that is kept beside the cache ([`carried`]). A copy whose digest cannot
/// be computed (no UID, version or serialization) is kept whole.
pub fn keep_digest<K: Resource + Serialize>(obj: &mut K, strip: impl FnOnce(&mut K)) {
    let (Some(uid), Some(version), Some(digest)) = (
        obj.meta().uid.as_deref().map(uid_key),
        version_of(obj),
        content_digest(obj),
    ) else {
        return;
    };
    strip(obj);
    let meta = obj.meta_mut();
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| !covered(k));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    bounded_insert(&CARRIED, uid, (version, digest));
}

/// Inserts into one of the records by UID, which starts again past
/// [`MAX_RECORDS`].
fn bounded_insert(records: &Mutex<HashMap<u128, (u64, u64)>>, uid: u128, value: (u64, u64)) {
    if let Ok(mut records) = records.lock() {
        if records.len() >= MAX_RECORDS && !records.contains_key(&uid) {
            records.clear();
        }
        records.insert(uid, value);
    }
}

/// Forgets the digest of a deleted child.
pub fn forget<K: Resource>(obj: &K) {
    if let (Some(uid), Ok(mut carried)) = (obj.meta().uid.as_deref(), CARRIED.lock()) {
        carried.remove(&uid_key(uid));
    }
}

/// The digest of the content of the trimmed copy `obj`: `None` for an
/// object that is not one. An object newer than the last digest taken of
/// its child (read whole, or created, after the watch last showed it) is
/// judged as it is; an older one by its child's content as the watch last
/// showed it, which is what a pass deciding whether to write must hold.
pub fn carried<K: Resource>(obj: &K) -> Option<u64> {
    let uid = uid_key(obj.meta().uid.as_deref()?);
    let version = version_of(obj)?;
    let carried = CARRIED.lock().ok()?;
    let (at, digest) = carried.get(&uid)?;
    (version <= *at).then_some(*digest)
}

/// `desired`'s metadata as a trimmed copy can show it: without its labels
/// and the annotations the digest covers (what [`Verified::holds`] judged).
pub fn beside_digest(desired: &ObjectMeta) -> Cow<'_, ObjectMeta> {
    let has_covered = desired.labels.is_some()
        || desired
            .annotations
            .as_ref()
            .is_some_and(|a| a.keys().any(|k| covered(k)));
    if !has_covered {
        return Cow::Borrowed(desired);
    }
    let mut meta = desired.clone();
    meta.labels = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| !covered(k));
    }
    Cow::Owned(meta)
}

/// The last full comparisons, per child UID: (desired content, child content).
static VERIFIED: LazyLock<Mutex<HashMap<u128, (u64, u64)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A UID as the record's key: the 128 bits of the UUID the API server
/// gives every object (a tenth of the memory of the text and its
/// allocation, for each of tens of thousands of children), or the hash of
/// any other text.
fn uid_key(uid: &str) -> u128 {
    let mut key = 0u128;
    let mut digits = 0;
    for c in uid.chars().filter(|c| *c != '-') {
        match c.to_digit(16) {
            Some(d) if digits < 32 => {
                key = key << 4 | u128::from(d);
                digits += 1;
            }
            _ => {
                digits = 0;
                break;
            }
        }
    }
    if digits == 32 {
        return key;
    }
    let mut hasher = DefaultHasher::new();
    uid.hash(&mut hasher);
    u128::from(hasher.finish())
}

/// The record of full comparisons that [`keep_digest`]'s copies are judged by.
pub struct Verified;

impl Verified {
    /// Remembers that `desired` holds in `child`, read whole.
    pub fn remember<K: Resource + Serialize>(child: &K, desired: &K) {
        let (Some(uid), Some(wanted), Some(found)) = (
            child.meta().uid.as_deref().map(uid_key),
            content_digest(desired),
            content_digest(child),
        ) else {
            return;
        };
        bounded_insert(&VERIFIED, uid, (wanted, found));
    }

    /// Whether the content of the trimmed copy `cached` is the one last
    /// found to hold `desired`'s (its metadata, which the copy keeps, is the
    /// caller's to compare). `None` when `cached` is not trimmed.
    pub fn holds<K: Resource + Serialize>(cached: &K, desired: &K) -> Option<bool> {
        let found = carried(cached)?;
        let known = (|| {
            let uid = uid_key(cached.meta().uid.as_deref()?);
            let wanted = content_digest(desired)?;
            let records = VERIFIED.lock().ok()?;
            Some(records.get(&uid) == Some(&(wanted, found)))
        })()
        .unwrap_or(false);
        Some(known)
    }
}

/// How long a child the operator created is taken to exist without a
/// cache showing it. A watch shows a new object within moments; past this
/// (a watch that restarted and missed it, a cache that never holds the kind)
/// the child is looked for again.
const PENDING_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// A child the operator created and no cache has shown yet: its UID, the
/// digest of the desired object it was created from, when, and the object
/// as the API server returned it.
struct Pending {
    uid: String,
    version: Option<u64>,
    /// `None` for an object the operator wrote but did not create (a
    /// status): never pending, only newer.
    desired: Option<u64>,
    at: std::time::Instant,
    child: Box<dyn std::any::Any + Send>,
}

/// An object's kind, namespace and name.
type Key = (String, String, String);

/// Objects the operator created or wrote and no cache has shown yet, by key.
static CREATED: LazyLock<Mutex<Records>> = LazyLock::new(|| {
    Mutex::new(Records {
        map: HashMap::new(),
        pruned: std::time::Instant::now(),
    })
});

/// The records, and when the expired ones were last dropped.
struct Records {
    map: HashMap<Key, Pending>,
    pruned: std::time::Instant,
}

impl Records {
    /// Drops the expired records, at most once per tenth of their life: a
    /// watch ends almost every record long before, so this only bounds
    /// what a missed one keeps, off the path of every write.
    fn prune(&mut self) {
        if self.pruned.elapsed() < PENDING_FOR / 10 {
            return;
        }
        self.pruned = std::time::Instant::now();
        self.map.retain(|_, p| p.at.elapsed() < PENDING_FOR);
    }
}

/// The digest of a whole object, metadata included: what a desired child
/// was created from.
fn whole_digest<K: Serialize>(obj: &K) -> Option<u64> {
    let text = serde_json::to_string(obj).ok()?;
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    Some(hasher.finish())
}

/// A resourceVersion as a number, to tell which of two versions of one
/// object is newer (the API server's are etcd revisions).
fn version_of<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> Key {
    (
        K::kind(&()).into_owned(),
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.name_any(),
    )
}

/// The children the operator has just created, until its caches show them.
///
/// A cache lags the operator's own writes: the passes right after a create
/// (woken by the create itself, or by a sibling's) would find the child
/// missing from the cache and look it up again. A child recorded here, and
/// still desired as it was created, needs no request; a cache that shows it
/// ([`Created::seen`], called for every object a watch brings) ends the
/// record, so from then on the cached copy decides.
pub struct Created;

impl Created {
    /// Records `child`, just created from `desired`.
    pub fn record<K>(child: &K, desired: &K)
    where
        K: Resource<DynamicType = ()> + Serialize + Clone + Send + 'static,
    {
        let Some(desired_digest) = whole_digest(desired) else {
            return;
        };
        Self::insert(child, Some(desired_digest));
    }

    /// Records `obj` as the API server returned it after the operator wrote
    /// it (its status): until a cache shows that version, [`Created::newer`]
    /// gives it in place of the cached, older one, so the pass that the write
    /// itself wakes starts from what was written rather than writing it again.
    pub fn wrote<K>(obj: &K)
    where
        K: Resource<DynamicType = ()> + Clone + Send + 'static,
    {
        Self::insert(obj, None);
    }

    fn insert<K>(obj: &K, desired: Option<u64>)
    where
        K: Resource<DynamicType = ()> + Clone + Send + 'static,
    {
        let Some(uid) = obj.meta().uid.clone() else {
            return;
        };
        if let Ok(mut created) = CREATED.lock() {
            created.prune();
            created.map.insert(
                key_of(obj),
                Pending {
                    uid,
                    version: version_of(obj),
                    desired,
                    at: std::time::Instant::now(),
                    child: Box::new({
                        let mut kept = obj.clone();
                        kept.managed_fields_mut().clear();
                        kept
                    }),
                },
            );
        }
    }

    /// The child created from exactly `desired` that no cache has shown
    /// yet, as it was created.
    pub fn pending<K>(desired: &K) -> Option<K>
    where
        K: Resource<DynamicType = ()> + Serialize + Clone + 'static,
    {
        let wanted = whole_digest(desired)?;
        let created = CREATED.lock().ok()?;
        let pending = created.map.get(&key_of(desired))?;
        if pending.desired != Some(wanted) || pending.at.elapsed() >= PENDING_FOR {
            return None;
        }
        pending.child.downcast_ref::<K>().cloned()
    }

    /// The child as the operator last wrote it, where `cached` is an older
    /// version of it (the cache has not caught up with that write yet).
    pub fn newer<K>(cached: &K) -> Option<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let created = CREATED.lock().ok()?;
        if created.map.is_empty() {
            return None;
        }
        let pending = created.map.get(&key_of(cached))?;
        let same = cached.meta().uid.as_deref() == Some(pending.uid.as_str());
        let older = matches!((version_of(cached), pending.version), (Some(c), Some(w)) if c < w);
        if !same || !older || pending.at.elapsed() >= PENDING_FOR {
            return None;
        }
        pending.child.downcast_ref::<K>().cloned()
    }

    /// A watch's cache now holds `obj`: a record of it ends once the cache
    /// holds the version written or a later one.
    pub fn seen<K: Resource<DynamicType = ()>>(obj: &K) {
        let Ok(mut created) = CREATED.lock() else {
            return;
        };
        if created.map.is_empty() {
            return;
        }
        let key = key_of(obj);
        let caught_up = created.map.get(&key).is_some_and(|p| {
            obj.meta().uid.as_deref() == Some(p.uid.as_str())
                && match (version_of(obj), p.version) {
                    (Some(cached), Some(written)) => cached >= written,
                    _ => true,
                }
        });
        if caught_up {
            created.map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

    fn service(uid: &str, port: i32) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some("m".into());
        s.metadata.uid = Some(uid.into());
        s.metadata.resource_version = Some("10".into());
        s.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        s.spec = Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        });
        s
    }

    /// A desired Service: no UID or version, as the operator builds it.
    fn wanted(port: i32) -> Service {
        let mut s = service("", port);
        s.metadata.uid = None;
        s.metadata.resource_version = None;
        s
    }

    /// `s` at `version`.
    fn at(mut s: Service, version: &str) -> Service {
        s.metadata.resource_version = Some(version.into());
        s
    }

    fn trimmed(s: &Service) -> Service {
        let mut copy = s.clone();
        keep_digest(&mut copy, |s| s.spec = None);
        copy
    }

    #[test]
    fn a_trimmed_copy_holds_only_what_was_verified_in_that_content() {
        let desired = wanted(80);
        let child = service("uid-verified", 80);
        let cached = trimmed(&child);
        assert!(cached.spec.is_none());
        // Nothing remembered yet: not known to hold, so the child is read whole.
        assert_eq!(Verified::holds(&cached, &desired), Some(false));
        Verified::remember(&child, &desired);
        assert_eq!(Verified::holds(&cached, &desired), Some(true));
        // The desired port changed: no longer known.
        assert_eq!(Verified::holds(&cached, &wanted(81)), Some(false));
        // Somebody edited the child's port: its new copy is not known either.
        let edited = trimmed(&at(service("uid-verified", 8080), "11"));
        assert_eq!(Verified::holds(&edited, &desired), Some(false));
        // Nor an older copy still in a pass's hands: the child's content is
        // judged as the watch last showed it.
        assert_eq!(Verified::holds(&cached, &desired), Some(false));
        // An object newer than the last digest (read whole, or created) is
        // for the full comparison.
        let newer = at(service("uid-verified", 80), "12");
        assert_eq!(Verified::holds(&newer, &desired), None);
        // A deleted child's digest is forgotten.
        forget(&edited);
        assert_eq!(carried(&edited), None);
    }

    #[test]
    fn the_labels_are_in_the_digest_and_a_copy_may_drop_them() {
        let desired = wanted(80);
        let child = service("uid-labelled", 80);
        let mut copy = child.clone();
        keep_digest(&mut copy, |s| {
            s.spec = None;
            s.metadata.labels = None;
        });
        Verified::remember(&child, &desired);
        assert_eq!(Verified::holds(&copy, &desired), Some(true));
        assert!(crate::apply::is_subset(
            &*beside_digest(desired.meta()),
            copy.meta()
        ));
        let mut relabelled = at(child, "11");
        relabelled
            .labels_mut()
            .insert("a".to_string(), "changed".to_string());
        assert_eq!(
            Verified::holds(&trimmed(&relabelled), &desired),
            Some(false)
        );
    }

    #[test]
    fn a_created_child_is_pending_until_a_cache_shows_it_and_only_as_it_was_desired() {
        let mut desired = wanted(80);
        desired.metadata.name = Some("created-child".into());
        let mut child = service("uid-created", 80);
        child.metadata.name = Some("created-child".into());
        assert!(Created::pending(&desired).is_none());
        Created::record(&child, &desired);
        assert_eq!(
            Created::pending(&desired).and_then(|c| c.metadata.uid),
            Some("uid-created".to_string())
        );
        // Desired otherwise than it was created from: not pending.
        let mut relabelled = desired.clone();
        relabelled.labels_mut().insert("c".into(), "d".into());
        assert!(Created::pending(&relabelled).is_none());
        assert!(Created::pending(&wanted(81)).is_none());
        // Another object of that name (deleted and made again) ends nothing.
        let mut other = child.clone();
        other.metadata.uid = Some("uid-other".into());
        Created::seen(&other);
        assert!(Created::pending(&desired).is_some());
        // The cache shows an older version: the record stays, and stands
        // in for that version.
        child.metadata.resource_version = Some("12".into());
        Created::record(&child, &desired);
        let mut older = child.clone();
        older.metadata.resource_version = Some("11".into());
        Created::seen(&older);
        assert!(Created::pending(&desired).is_some());
        assert_eq!(
            Created::newer(&older).and_then(|c| c.metadata.resource_version),
            Some("12".to_string())
        );
        assert!(Created::newer(&child).is_none());
        // The cache shows the version written: the record ends.
        Created::seen(&child);
        assert!(Created::pending(&desired).is_none());
        assert!(Created::newer(&older).is_none());
    }

    #[test]
    fn a_uuid_is_its_own_key_and_other_text_is_hashed() {
        assert_eq!(
            uid_key("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"),
            0x0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0
        );
        assert_ne!(uid_key("uid-a"), uid_key("uid-b"));
        assert_eq!(uid_key("uid-a"), uid_key("uid-a"));
    }

    #[test]
    fn the_digest_ignores_metadata_and_status_but_for_annotations_it_covers() {
        let a = service("x", 80);
        let mut b = service("y", 80);
        b.metadata.resource_version = Some("42".into());
        b.status = Some(Default::default());
        b.annotations_mut()
            .insert("deployment.kubernetes.io/revision".into(), "3".into());
        assert_eq!(content_digest(&a), content_digest(&b));
        assert_ne!(content_digest(&a), content_digest(&service("x", 81)));
        let mut annotated = service("x", 80);
        annotated
            .annotations_mut()
            .insert("example.com/owner".into(), "team-a".into());
        assert_ne!(content_digest(&a), content_digest(&annotated));
    }

    #[test]
    fn a_trimmed_copy_keeps_only_the_annotations_the_digest_leaves_out() {
        let mut child = service("uid-annotated", 80);
        child
            .annotations_mut()
            .insert("example.com/owner".into(), "team-a".into());
        let mut copy = trimmed(&child);
        assert!(copy.metadata.annotations.is_none());
        assert!(carried(&copy).is_some());
        assert!(copy.labels().contains_key("a"));
        child
            .annotations_mut()
            .insert("deployment.kubernetes.io/revision".into(), "2".into());
        copy = trimmed(&child);
        assert_eq!(
            copy.annotations().keys().collect::<Vec<_>>(),
            ["deployment.kubernetes.io/revision"]
        );
        // Verified with its annotation: a copy whose annotation changed
        // (dropped from the copy, but in its digest) is no longer known.
        let mut desired = wanted(80);
        desired
            .annotations_mut()
            .insert("example.com/owner".into(), "team-a".into());
        Verified::remember(&child, &desired);
        assert_eq!(Verified::holds(&copy, &desired), Some(true));
        assert!(crate::apply::is_subset(
            &*beside_digest(desired.meta()),
            copy.meta()
        ));
        let mut edited = at(child.clone(), "11");
        edited
            .annotations_mut()
            .insert("example.com/owner".into(), "team-b".into());
        assert_eq!(Verified::holds(&trimmed(&edited), &desired), Some(false));
    }

    #[test]
    fn a_written_object_stands_in_for_older_cached_versions_only() {
        let mut written = service("uid-written", 80);
        written.metadata.name = Some("written-status".into());
        written.metadata.resource_version = Some("12".into());
        let mut cached = written.clone();
        cached.metadata.resource_version = Some("11".into());
        assert!(Created::newer(&cached).is_none());
        Created::wrote(&written);
        // Never pending: nothing was created from a desired object.
        assert!(Created::pending(&written).is_none());
        assert_eq!(
            Created::newer(&cached).and_then(|s| s.metadata.resource_version),
            Some("12".to_string())
        );
        // The cache caught up, or somebody wrote after: the cache decides.
        let mut later = written.clone();
        later.metadata.resource_version = Some("13".into());
        assert!(Created::newer(&later).is_none());
        // Another object of that name (deleted and made again) is not it.
        let mut other = cached.clone();
        other.metadata.uid = Some("uid-other".into());
        assert!(Created::newer(&other).is_none());
        Created::seen(&written);
        assert!(Created::newer(&cached).is_none());
    }
}
