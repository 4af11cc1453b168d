//! The snapshot of tenants, keys and models that every request reads.
//!
//! Whoever fills it (the Kubernetes watches of [`crate::k8s`], or a static configuration)
//! builds a new [`Snapshot`] and swaps it in whole through [`GatewayState`];
//! a request holds the `Arc` it loaded for its whole life, so it never sees
//! half of an update. Counters that must outlive a swap (requests in flight,
//! canary counters, limit windows) live outside the snapshot, keyed by name.
//! Every swap is announced ([`GatewayState::changes`]), so that requests
//! waiting for a model's first ready endpoint look again.

use crate::FastMap;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// A tenant's limits, as whole-tenant numbers (before any replica share).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimits {
    /// Requests admitted per minute.
    pub requests_per_minute: Option<u64>,
    /// Prompt plus completion tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Prompt plus completion tokens per UTC day.
    pub tokens_per_day: Option<u64>,
}

/// Who an API key belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct KeyInfo {
    /// The tenant the key acts for.
    pub tenant: String,
    /// The key's id, e.g. `namespace/secret-name`: a metric label and a log
    /// field, never the key itself.
    pub name: String,
}

/// The release track an endpoint serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// The current release.
    #[default]
    Stable,
    /// The release being tried on `canary_percent` of the requests.
    Canary,
}

/// One replica of a model's engine.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Endpoint {
    /// Where the engine listens (plain HTTP).
    pub addr: SocketAddr,
    /// Which release it serves.
    #[serde(default)]
    pub track: Track,
    /// Whether it passes its readiness probe; only ready endpoints get requests.
    #[serde(default = "ready_by_default")]
    pub ready: bool,
}

fn ready_by_default() -> bool {
    true
}

/// A model as clients see it, with the endpoints that serve it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    /// What clients send as `"model"`; unique within its tenant.
    pub name: String,
    /// The AIModel's namespace.
    pub namespace: String,
    /// The AIModel's object name.
    pub aimodel: String,
    /// The name the engine knows: the request's `"model"` is rewritten to it.
    pub served_name: String,
    /// When the model was created (Unix seconds), shown by `/v1/models`.
    #[serde(default)]
    pub created: i64,
    /// Every endpoint, ready or not.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The share of requests (0 to 100) sent to the canary track when both
    /// tracks have a ready endpoint.
    #[serde(default)]
    pub canary_percent: u8,
    /// Whether the model may have no replica at all (an AIModel's
    /// `spec.autoscaling.minReplicas: 0`): a request that finds no ready
    /// endpoint then waits for one instead of being refused.
    #[serde(default)]
    pub scale_from_zero: bool,
}

impl Model {
    /// `namespace/aimodel`: the key of the model's counters.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.aimodel)
    }

    /// Whether any endpoint can take a request.
    pub fn has_ready_endpoint(&self) -> bool {
        self.endpoints.iter().any(|e| e.ready)
    }

    fn answers_to(&self, requested: &str) -> bool {
        if self.name == requested {
            return true;
        }
        requested.split_once('/').is_some_and(|(ns, name)| {
            ns == self.namespace && (name == self.aimodel || name == self.name)
        })
    }
}

/// What a requested model name resolves to for a caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// One of the caller's tenants has it: the request is that tenant's.
    Found {
        /// The tenant whose model it is (its limits apply, its usage grows).
        tenant: &'a str,
        /// The model.
        model: &'a Model,
    },
    /// Only a tenant the caller does not act for has a model by that name.
    OtherTenant,
    /// No tenant has it.
    Unknown,
}

/// A model as one caller lists it.
#[derive(Debug, PartialEq, Eq)]
pub struct Listed<'a> {
    /// The id the caller lists and calls it by: the model's name, or
    /// `namespace/name` when a model listed before it has that name.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: &'a str,
    /// The model.
    pub model: &'a Model,
}

/// Who owns which tenants, as `Tenant.spec.owners` says: for callers known
/// by a user name and groups (OIDC tokens, users the API server
/// authenticates).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    /// A `User` owner's name to the tenants it owns.
    pub users: HashMap<String, BTreeSet<String>>,
    /// A `Group` owner's name to the tenants it owns.
    pub groups: HashMap<String, BTreeSet<String>>,
}

/// Everything the handlers need to know, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Tenant name to its limits. A key whose tenant is missing here still
    /// authenticates, with no limits.
    pub tenants: FastMap<String, TenantLimits>,
    /// [`hash_key`] of an API key to its owner. Keys are held hashed only.
    pub keys: FastMap<String, KeyInfo>,
    /// Tenant name to its models.
    pub models: FastMap<String, Vec<Model>>,
    /// Namespace to the tenant it belongs to: where a ServiceAccount's
    /// tenant is found.
    pub namespaces: HashMap<String, String>,
    /// The tenants' `User` and `Group` owners.
    pub owners: Owners,
}

impl Snapshot {
    /// The owner of a presented API key.
    pub fn key_owner(&self, key: &str) -> Option<&KeyInfo> {
        // Every request's key: its hash is written on the stack, not the heap.
        let mut text = [0u8; 64];
        write_hex(&Sha256::digest(key.as_bytes()), &mut text);
        self.keys.get(std::str::from_utf8(&text).ok()?)
    }

    /// A tenant's models (none for an unknown tenant).
    pub fn models_of(&self, tenant: &str) -> &[Model] {
        self.models
            .get(tenant)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The tenant a namespace belongs to.
    pub fn tenant_of_namespace(&self, namespace: &str) -> Option<&str> {
        self.namespaces.get(namespace).map(String::as_str)
    }

    /// The tenants that `user`, or any of `groups`, owns: sorted, each once.
    pub fn tenants_owned_by(&self, user: &str, groups: &[String]) -> Vec<String> {
        let mut tenants: BTreeSet<&String> = BTreeSet::new();
        tenants.extend(self.owners.users.get(user).into_iter().flatten());
        for group in groups {
            tenants.extend(self.owners.groups.get(group).into_iter().flatten());
        }
        tenants.into_iter().cloned().collect()
    }

    /// The models a caller of `tenants` sees, sorted by id. The tenants are
    /// taken in the order given (callers hold them sorted by name), each
    /// tenant's models in its own order; a model whose name an earlier one
    /// already has is listed as `namespace/name`, so every id is unique and
    /// calls the model it lists (see [`lookup`](Self::lookup)).
    pub fn models_for<'a>(&'a self, tenants: &'a [String]) -> Vec<Listed<'a>> {
        let mut names: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut listed = Vec::new();
        for tenant in tenants {
            for model in self.models_of(tenant) {
                let id = if names.insert(model.name.as_str()) {
                    model.name.clone()
                } else {
                    format!("{}/{}", model.namespace, model.name)
                };
                listed.push(Listed {
                    id,
                    tenant: tenant.as_str(),
                    model,
                });
            }
        }
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        listed
    }

    /// Resolves `requested` (a model's `name`, or `namespace/aimodel`, or
    /// `namespace/name`) for a caller acting for `tenants`: the first of them
    /// (in the order given) that has a model answering to it wins.
    pub fn lookup<'a>(&'a self, tenants: &'a [String], requested: &str) -> Lookup<'a> {
        for tenant in tenants {
            if let Some(model) = self
                .models_of(tenant)
                .iter()
                .find(|m| m.answers_to(requested))
            {
                return Lookup::Found {
                    tenant: tenant.as_str(),
                    model,
                };
            }
        }
        let elsewhere = self
            .models
            .iter()
            .filter(|(owner, _)| !tenants.contains(owner))
            .any(|(_, models)| models.iter().any(|m| m.answers_to(requested)));
        if elsewhere {
            Lookup::OtherTenant
        } else {
            Lookup::Unknown
        }
    }

    /// Adds a model to a tenant, replacing one with the same namespace and
    /// AIModel name.
    pub fn upsert_model(&mut self, tenant: &str, model: Model) {
        let models = self.models.entry(tenant.to_owned()).or_default();
        match models
            .iter_mut()
            .find(|m| m.namespace == model.namespace && m.aimodel == model.aimodel)
        {
            Some(existing) => *existing = model,
            None => models.push(model),
        }
    }

    /// Removes the model of an AIModel, whichever tenant has it.
    pub fn remove_model(&mut self, namespace: &str, aimodel: &str) {
        for models in self.models.values_mut() {
            models.retain(|m| !(m.namespace == namespace && m.aimodel == aimodel));
        }
        self.models.retain(|_, models| !models.is_empty());
    }

    /// Adds an API key (given in clear; only its hash is kept).
    pub fn insert_key(&mut self, key: &str, info: KeyInfo) {
        self.keys.insert(hash_key(key), info);
    }
}

/// The SHA-256 of an API key, lowercase hex: how keys are stored and looked up.
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Lowercase hex of `bytes` into `out` (twice as long).
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(bytes, &mut out);
    out.into_iter().map(char::from).collect()
}

/// The current snapshot, swapped whole, and whether it is complete yet.
#[derive(Debug)]
pub struct GatewayState {
    snapshot: RwLock<Arc<Snapshot>>,
    synced: AtomicBool,
    /// Counts the swaps; its receivers wake on each.
    swaps: watch::Sender<u64>,
}

impl Default for GatewayState {
    fn default() -> Self {
        Self {
            snapshot: RwLock::default(),
            synced: AtomicBool::default(),
            swaps: watch::Sender::new(0),
        }
    }
}

impl GatewayState {
    /// An empty, unsynced state.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver that wakes after every swap of the snapshot. Take it before
    /// reading the snapshot it should watch over: a swap in between then
    /// still wakes it.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    fn announce_swap(&self) {
        self.swaps.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The current snapshot; cheap (one `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the snapshot.
    pub fn replace(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        self.announce_swap();
    }

    /// Changes a copy of the current snapshot and swaps it in. Concurrent
    /// updates are serialized: none is lost.
    pub fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Snapshot::clone(&guard);
        change(&mut next);
        *guard = Arc::new(next);
        drop(guard);
        self.announce_swap();
    }

    /// Records that every source has delivered its first complete listing:
    /// `/readyz` turns ready.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Whether [`mark_synced`](Self::mark_synced) was called.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_to_lowercase_hex_sha256() {
        // `printf %s abc | sha256sum`
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
