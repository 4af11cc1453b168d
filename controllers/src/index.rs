//! Which of a watch cache's objects belong to which owner, kept beside the
//! cache from the same watch events ([`OwnerIndex::observe`]), so that a pass
//! finds its owner's children by looking them up rather than by scanning
//! every cached object of the kind: with a scan, each pass of each of N
//! owners read all N owners' children, and the work grew with N squared.
//!
//! The index is a hint, never the truth: it may name an object the cache no
//! longer holds, or that belongs to another owner now (the reader looks each
//! one up in the cache and checks it), and it is updated just after the
//! cache, so for an instant it may not yet name an object the cache holds (a
//! pass then sees the child as missing, and creating it finds it there, as
//! with any cache that lags the API server).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

/// The owner of a cached object, as an index key (`None`: not indexed).
pub type OwnerKey<K> = fn(&K) -> Option<String>;

/// The objects of a watch by owner (see the module's note).
pub struct OwnerIndex<K: Resource<DynamicType = ()> + 'static> {
    key: OwnerKey<K>,
    inner: Arc<Mutex<Inner<K>>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for OwnerIndex<K> {
    fn clone(&self) -> Self {
        OwnerIndex {
            key: self.key,
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K: Resource<DynamicType = ()> + 'static> {
    by_owner: HashMap<String, HashSet<ObjectRef<K>>>,
    /// The objects of a list in progress, which replace `by_owner` when it
    /// is whole (as the cache's own contents are replaced).
    relisting: Option<HashMap<String, HashSet<ObjectRef<K>>>>,
}

/// An object's reference without its version and UID (the index needs only
/// what the cache is keyed by).
fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectRef<K> {
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(ns) => ObjectRef::new(name).within(ns),
        None => ObjectRef::new(name),
    }
}

fn insert<K: Resource<DynamicType = ()>>(
    map: &mut HashMap<String, HashSet<ObjectRef<K>>>,
    owner: String,
    obj: &K,
) {
    map.entry(owner).or_default().insert(reference(obj));
}

impl<K: Resource<DynamicType = ()> + 'static> OwnerIndex<K> {
    /// An empty index of the objects `key` gives an owner.
    pub fn new(key: OwnerKey<K>) -> Self {
        OwnerIndex {
            key,
            inner: Arc::new(Mutex::new(Inner {
                by_owner: HashMap::new(),
                relisting: None,
            })),
        }
    }

    /// Follows one event of the watch that fills the cache.
    pub fn observe(&self, event: &Event<K>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        match event {
            Event::Apply(obj) => {
                if let Some(owner) = (self.key)(obj) {
                    insert(&mut inner.by_owner, owner, obj);
                }
            }
            Event::Delete(obj) => {
                if let Some(owner) = (self.key)(obj) {
                    let reference = reference(obj);
                    if let Some(objects) = inner.by_owner.get_mut(&owner) {
                        objects.remove(&reference);
                        if objects.is_empty() {
                            inner.by_owner.remove(&owner);
                        }
                    }
                }
            }
            Event::Init => inner.relisting = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let (Some(owner), Some(relisting)) = ((self.key)(obj), inner.relisting.as_mut())
                {
                    insert(relisting, owner, obj);
                }
            }
            Event::InitDone => {
                if let Some(listed) = inner.relisting.take() {
                    inner.by_owner = listed;
                }
            }
        }
    }

    /// The objects of `store` this index gives `owner`, as the store holds
    /// them now (those it no longer holds left out; the caller checks that
    /// each is still the owner's).
    pub fn of(&self, store: &Store<K>, owner: &str) -> Vec<Arc<K>>
    where
        K: Clone,
    {
        let references: Vec<ObjectRef<K>> = match self.inner.lock() {
            Ok(inner) => inner
                .by_owner
                .get(owner)
                .map(|objects| objects.iter().cloned().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        references.iter().filter_map(|r| store.get(r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::store;

    fn map(ns: &str, name: &str, owner: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.into());
        cm.metadata.name = Some(name.into());
        cm.metadata.labels = Some([("owner".to_string(), owner.to_string())].into());
        cm
    }

    fn owner_of(cm: &ConfigMap) -> Option<String> {
        cm.metadata.labels.as_ref()?.get("owner").cloned()
    }

    /// Feeds `events` to a store and the index, as the watch does (the
    /// store first), and returns the names each owner's lookup finds.
    fn follow(events: Vec<Event<ConfigMap>>) -> impl Fn(&str) -> Vec<String> {
        let (reader, mut writer) = store();
        let index = OwnerIndex::new(owner_of);
        for event in events {
            writer.apply_watcher_event(&event);
            index.observe(&event);
        }
        move |owner| {
            let mut names: Vec<String> = index
                .of(&reader, owner)
                .iter()
                .map(|cm| cm.metadata.name.clone().unwrap_or_default())
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn each_owner_finds_its_objects_and_only_those() {
        let of = follow(vec![
            Event::Init,
            Event::InitApply(map("a", "one", "t1")),
            Event::InitApply(map("b", "one", "t2")),
            Event::InitDone,
            Event::Apply(map("a", "two", "t1")),
            Event::Apply(map("c", "three", "t1")),
        ]);
        assert_eq!(of("t1"), ["one", "three", "two"]);
        assert_eq!(of("t2"), ["one"]);
        assert!(of("t3").is_empty());
    }

    #[test]
    fn a_deleted_object_is_found_no_more() {
        let of = follow(vec![
            Event::Init,
            Event::InitApply(map("a", "one", "t1")),
            Event::InitApply(map("a", "two", "t1")),
            Event::InitDone,
            Event::Delete(map("a", "one", "t1")),
        ]);
        assert_eq!(of("t1"), ["two"]);
    }

    #[test]
    fn a_relist_replaces_what_was_indexed_when_it_is_whole() {
        let of = follow(vec![
            Event::Init,
            Event::InitApply(map("a", "one", "t1")),
            Event::InitApply(map("a", "two", "t1")),
            Event::InitDone,
            // "two" was deleted while the watch was down: the relist no
            // longer shows it.
            Event::Init,
            Event::InitApply(map("a", "one", "t1")),
            Event::InitApply(map("b", "four", "t2")),
            Event::InitDone,
        ]);
        assert_eq!(of("t1"), ["one"]);
        assert_eq!(of("t2"), ["four"]);
    }

    #[test]
    fn an_object_that_changed_owner_is_returned_for_the_caller_to_check() {
        // The index is a hint: it still names the object under its old
        // owner, and the cache's copy shows the new one.
        let of_owner = {
            let (reader, mut writer) = store();
            let index = OwnerIndex::new(owner_of);
            for event in [
                Event::Init,
                Event::InitApply(map("a", "one", "t1")),
                Event::InitDone,
                Event::Apply(map("a", "one", "t2")),
            ] {
                writer.apply_watcher_event(&event);
                index.observe(&event);
            }
            move |owner: &str| {
                index
                    .of(&reader, owner)
                    .iter()
                    .filter_map(owner_of_arc)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(of_owner("t1"), ["t2"]);
        assert_eq!(of_owner("t2"), ["t2"]);
    }

    fn owner_of_arc(cm: &Arc<ConfigMap>) -> Option<String> {
        owner_of(cm)
    }
}
