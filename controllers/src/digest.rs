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
//! The digest is computed in memory and never written: the annotation
//! [`DIGEST_ANNOTATION`] exists only on the cached copies.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{LazyLock, Mutex};

use kube::{Resource, ResourceExt};
use serde::Serialize;

/// The annotation that carries, on a trimmed cached copy only, the digest of
/// what was trimmed from it.
pub const DIGEST_ANNOTATION: &str = "aleph.dev/cached-content-digest";

/// At most this many comparisons are remembered; past it the record starts
/// again (each child is then read whole once more).
const MAX_RECORDS: usize = 200_000;

/// The digest of everything in `obj` but its metadata and status: what a
/// desired child sets besides its labels, annotations and owners.
pub fn content_digest<K: Serialize>(obj: &K) -> Option<u64> {
    let mut value = serde_json::to_value(obj).ok()?;
    let fields = value.as_object_mut()?;
    fields.remove("metadata");
    fields.remove("status");
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    Some(hasher.finish())
}

/// Trims a cached copy: `strip` drops what no pass reads, and the digest of
/// the content before it did is kept in [`DIGEST_ANNOTATION`]. A copy whose
/// digest cannot be computed is kept whole.
pub fn keep_digest<K: Resource + Serialize>(obj: &mut K, strip: impl FnOnce(&mut K)) {
    if let Some(digest) = content_digest(obj) {
        strip(obj);
        obj.annotations_mut()
            .insert(DIGEST_ANNOTATION.to_string(), format!("{digest:016x}"));
    }
}

/// The digest a trimmed copy carries, if it is one.
pub fn carried<K: Resource>(obj: &K) -> Option<u64> {
    let text = obj.annotations().get(DIGEST_ANNOTATION)?;
    u64::from_str_radix(text, 16).ok()
}

/// The last full comparisons, per child UID: (desired content, child content).
static VERIFIED: LazyLock<Mutex<HashMap<String, (u64, u64)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The record of full comparisons that [`keep_digest`]'s copies are judged by.
pub struct Verified;

impl Verified {
    /// Remembers that `desired` holds in `child`, read whole.
    pub fn remember<K: Resource + Serialize>(child: &K, desired: &K) {
        let (Some(uid), Some(wanted), Some(found)) = (
            child.meta().uid.clone(),
            content_digest(desired),
            content_digest(child),
        ) else {
            return;
        };
        if let Ok(mut records) = VERIFIED.lock() {
            if records.len() >= MAX_RECORDS && !records.contains_key(&uid) {
                records.clear();
            }
            records.insert(uid, (wanted, found));
        }
    }

    /// Whether the content of the trimmed copy `cached` is the one last
    /// found to hold `desired`'s (its metadata, which the copy keeps, is the
    /// caller's to compare). `None` when `cached` is not trimmed.
    pub fn holds<K: Resource + Serialize>(cached: &K, desired: &K) -> Option<bool> {
        let found = carried(cached)?;
        let known = (|| {
            let uid = cached.meta().uid.as_ref()?;
            let wanted = content_digest(desired)?;
            let records = VERIFIED.lock().ok()?;
            Some(records.get(uid) == Some(&(wanted, found)))
        })()
        .unwrap_or(false);
        Some(known)
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

    /// A desired Service: no UID, as the operator builds it.
    fn wanted(port: i32) -> Service {
        let mut s = service("", port);
        s.metadata.uid = None;
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
        let edited = trimmed(&service("uid-verified", 8080));
        assert_eq!(Verified::holds(&edited, &desired), Some(false));
        // A copy that is not trimmed is for the full comparison.
        assert_eq!(Verified::holds(&child, &desired), None);
    }

    #[test]
    fn the_digest_ignores_metadata_and_status_only() {
        let a = service("x", 80);
        let mut b = service("y", 80);
        b.metadata.resource_version = Some("42".into());
        b.status = Some(Default::default());
        assert_eq!(content_digest(&a), content_digest(&b));
        assert_ne!(content_digest(&a), content_digest(&service("x", 81)));
    }
}
