//! Which of a watch cache's objects belong to which owner, kept beside the
//! cache from the same watch events ([`OwnerIndex::observe`]), so that a pass
//! finds its owner's children by looking them up rather than by scanning
//! every cached object of the kind: with a scan, each pass of each of N
//! owners read all N owners' children, and the work grew with N squared.
//!
//! The index is a hint, never the truth: an entry may name an object that
//! belongs to another owner now (the reader checks each object it gets),
//! and it is updated just after the cache, so for an instant it may not yet
//! name an object the cache holds (a pass then sees the child as missing,
//! and creating it finds it there, as with any cache that lags the API
//! server). It holds the cache's own copies, and hands out only what the
//! cache holds ([`OwnerIndex::of`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

/// The owner of a cached object, as an index key (`None`: not indexed).
pub type OwnerKey<K> = fn(&K) -> Option<String>;

/// The objects of a watch by owner (see the module's note). It holds the
/// cache's own copies (`Arc`s of the store), replaced as the store replaces
/// them, so it costs a pointer per object.
pub struct OwnerIndex<K: Resource<DynamicType = ()> + 'static> {
    key: OwnerKey<K>,
    store: Store<K>,
    /// `None` until the end of the first list: the store is ready a moment
    /// before the index is built from it.
    by_owner: Arc<Mutex<Option<ByOwner<K>>>>,
}

/// The store's objects by owner.
type ByOwner<K> = HashMap<String, Vec<Arc<K>>>;

impl<K: Resource<DynamicType = ()> + 'static> Clone for OwnerIndex<K> {
    fn clone(&self) -> Self {
        OwnerIndex {
            key: self.key,
            store: self.store.clone(),
            by_owner: self.by_owner.clone(),
        }
    }
}

/// Whether `a` and `b` are the same object (by namespace and name).
fn same<K: Resource>(a: &K, b: &K) -> bool {
    a.meta().name == b.meta().name && a.meta().namespace == b.meta().namespace
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> OwnerIndex<K> {
    /// An empty index of the objects of `store` that `key` gives an owner.
    pub fn new(store: Store<K>, key: OwnerKey<K>) -> Self {
        OwnerIndex {
            key,
            store,
            by_owner: Arc::new(Mutex::new(None)),
        }
    }

    /// Follows one event of the watch that fills the store, once the store
    /// has taken it.
    pub fn observe(&self, event: &Event<K>) {
        match event {
            Event::Apply(obj) => {
                let Some(cached) = self.store.get(&ObjectRef::from_obj(obj)) else {
                    return;
                };
                self.update(obj, |objects| {
                    match objects.iter_mut().find(|o| same(o.as_ref(), obj)) {
                        Some(slot) => *slot = cached,
                        None => objects.push(cached),
                    }
                });
            }
            Event::Delete(obj) => self.update(obj, |objects| {
                objects.retain(|o| !same(o.as_ref(), obj));
            }),
            // The store replaces its contents at the end of a list: so does
            // the index, from the store.
            Event::InitDone => {
                let mut rebuilt: ByOwner<K> = HashMap::new();
                for cached in self.store.state() {
                    if let Some(owner) = (self.key)(&cached) {
                        rebuilt.entry(owner).or_default().push(cached);
                    }
                }
                if let Ok(mut by_owner) = self.by_owner.lock() {
                    *by_owner = Some(rebuilt);
                }
            }
            Event::Init | Event::InitApply(_) => {}
        }
    }

    /// Changes the entries of `obj`'s owner with `change`, once the index is
    /// built (an owner left with none is dropped).
    fn update(&self, obj: &K, change: impl FnOnce(&mut Vec<Arc<K>>)) {
        let Some(owner) = (self.key)(obj) else {
            return;
        };
        let Ok(mut by_owner) = self.by_owner.lock() else {
            return;
        };
        let Some(by_owner) = by_owner.as_mut() else {
            return;
        };
        let objects = by_owner.entry(owner.clone()).or_default();
        change(objects);
        if objects.is_empty() {
            by_owner.remove(&owner);
        }
    }

    /// The objects this index gives `owner`, as the store holds them now
    /// (the caller checks that each is still the owner's). An entry the
    /// store no longer holds is dropped, and one it holds a newer copy of
    /// is brought up to date, so an old copy is never handed out. (An
    /// object whose owner changed keeps an entry under the old owner, which
    /// keeps its old copy alive until that owner is next looked up or the
    /// watch lists again.)
    /// `None` until the index has been built from the watch's first list
    /// (the caller then reads another way).
    pub fn of(&self, owner: &str) -> Option<Vec<Arc<K>>> {
        let mut by_owner = self.by_owner.lock().ok()?;
        let by_owner = by_owner.as_mut()?;
        let Some(objects) = by_owner.get_mut(owner) else {
            return Some(Vec::new());
        };
        objects.retain_mut(
            |entry| match self.store.get(&ObjectRef::from_obj(entry.as_ref())) {
                Some(current) => {
                    if !Arc::ptr_eq(entry, &current) {
                        *entry = current;
                    }
                    true
                }
                None => false,
            },
        );
        let found = objects.clone();
        if found.is_empty() {
            by_owner.remove(owner);
        }
        Some(found)
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

    /// Feeds `events` to a store and its index, as the watch does (the
    /// store first).
    fn indexed(events: Vec<Event<ConfigMap>>) -> (Store<ConfigMap>, OwnerIndex<ConfigMap>) {
        let (reader, mut writer) = store();
        let index = OwnerIndex::new(reader.clone(), owner_of);
        for event in events {
            writer.apply_watcher_event(&event);
            index.observe(&event);
        }
        (reader, index)
    }

    /// [`indexed`], then the names each owner's lookup finds.
    fn follow(events: Vec<Event<ConfigMap>>) -> impl Fn(&str) -> Vec<String> {
        let (_, index) = indexed(events);
        move |owner| {
            let mut names: Vec<String> = index
                .of(owner)
                .unwrap_or_default()
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
        let (_, index) = indexed(vec![
            Event::Init,
            Event::InitApply(map("a", "one", "t1")),
            Event::InitDone,
            Event::Apply(map("a", "one", "t2")),
        ]);
        let of_owner = |owner: &str| {
            index
                .of(owner)
                .unwrap_or_default()
                .iter()
                .filter_map(owner_of_arc)
                .collect::<Vec<_>>()
        };
        assert_eq!(of_owner("t1"), ["t2"]);
        assert_eq!(of_owner("t2"), ["t2"]);
    }

    #[test]
    fn the_index_hands_out_the_stores_own_current_copy() {
        let mut newer = map("a", "one", "t1");
        newer.data = Some([("v".to_string(), "2".to_string())].into());
        let (reader, index) = indexed(vec![
            Event::Init,
            Event::InitApply(map("a", "one", "t1")),
            Event::InitDone,
            Event::Apply(newer),
        ]);
        let found = index.of("t1").unwrap_or_default();
        let cached = reader.get(&ObjectRef::new("one").within("a"));
        assert_eq!(found.len(), 1);
        assert!(cached.is_some_and(|c| Arc::ptr_eq(&c, &found[0])));
        assert_eq!(
            found[0]
                .data
                .as_ref()
                .and_then(|d| d.get("v"))
                .map(String::as_str),
            Some("2")
        );
    }

    #[test]
    fn the_index_answers_only_once_built_from_the_first_list() {
        // The store is ready at the end of the list, a moment before the
        // index has been built from it: until then the index does not
        // answer, rather than answer that an owner has nothing.
        let (_, index) = indexed(vec![Event::Init, Event::InitApply(map("a", "one", "t1"))]);
        assert!(index.of("t1").is_none());
        let (_, index) = indexed(vec![
            Event::Init,
            Event::InitApply(map("a", "one", "t1")),
            Event::InitDone,
        ]);
        assert_eq!(index.of("t1").map(|found| found.len()), Some(1));
        assert_eq!(index.of("t2").map(|found| found.len()), Some(0));
    }

    fn owner_of_arc(cm: &Arc<ConfigMap>) -> Option<String> {
        owner_of(cm)
    }
}
