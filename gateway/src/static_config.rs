//! A state read from a JSON file, so that the gateway can run without
//! Kubernetes:
//!
//! ```json
//! {
//!   "tenants": {"acme": {"requestsPerMinute": 600, "tokensPerDay": 1000000}},
//!   "keys": [{"tenant": "acme", "name": "acme/key-ci", "sha256": "<hex>"}],
//!   "models": [{"tenant": "acme", "name": "llama", "namespace": "acme-ml",
//!               "aimodel": "llama", "servedName": "llama-3.1-8b",
//!               "canaryPercent": 10,
//!               "endpoints": [{"addr": "10.0.0.7:8000", "track": "stable"}]},
//!              {"tenant": "acme", "name": "rare", "namespace": "acme-ml",
//!               "aimodel": "rare", "servedName": "rare", "scaleFromZero": true}],
//!   "owners": [{"tenant": "acme", "kind": "Group", "name": "ml-team"},
//!              {"tenant": "acme", "kind": "User", "name": "alice"}],
//!   "namespaces": {"acme-ml": "acme"}
//! }
//! ```
//!
//! A model with `scaleFromZero` holds requests while it has no ready endpoint
//! (for up to `--cold-start-timeout`); one without answers them 503 at once.
//!
//! A key is given by its `sha256` (what `aleph-gateway keygen` prints) or,
//! for tests, in clear as `key`. `owners` are what OIDC users are matched
//! against (as `Tenant.spec.owners`), `namespaces` where ServiceAccounts
//! belong (as `Tenant.status.namespaces`).

use std::collections::HashMap;

use serde::Deserialize;

use crate::state::{KeyInfo, Model, Snapshot, TenantLimits, hash_key};

/// The file's content.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Tenant name to limits.
    #[serde(default)]
    pub tenants: HashMap<String, TenantLimits>,
    /// API keys.
    #[serde(default)]
    pub keys: Vec<StaticKey>,
    /// Models with their endpoints.
    #[serde(default)]
    pub models: Vec<StaticModel>,
    /// Tenant owners (users and groups).
    #[serde(default)]
    pub owners: Vec<StaticOwner>,
    /// Namespace to tenant.
    #[serde(default)]
    pub namespaces: HashMap<String, String>,
}

/// One owner of a tenant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticOwner {
    /// The tenant it owns.
    pub tenant: String,
    /// `User` or `Group`.
    pub kind: OwnerKind,
    /// The user name or group name.
    pub name: String,
}

/// The kinds of owner an identity provider's user is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum OwnerKind {
    /// A user name.
    User,
    /// A group.
    Group,
}

/// One API key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    /// The tenant it acts for.
    pub tenant: String,
    /// Its id.
    pub name: String,
    /// SHA-256 of the key, hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The key in clear.
    #[serde(default)]
    pub key: Option<String>,
}

/// One model of a tenant.
#[derive(Debug, Deserialize)]
pub struct StaticModel {
    /// The tenant that owns it.
    pub tenant: String,
    /// The model.
    #[serde(flatten)]
    pub model: Model,
}

/// What is wrong with a static configuration.
#[derive(Debug, thiserror::Error)]
pub enum StaticConfigError {
    /// Not the expected JSON.
    #[error("invalid static configuration: {0}")]
    Json(#[from] serde_json::Error),
    /// A key with neither `sha256` nor `key`.
    #[error("key {0} has neither sha256 nor key")]
    KeyWithoutSecret(String),
}

impl StaticConfig {
    /// Parses the file's content.
    pub fn from_json(text: &str) -> Result<Self, StaticConfigError> {
        Ok(serde_json::from_str(text)?)
    }

    /// The snapshot it describes.
    pub fn into_snapshot(self) -> Result<Snapshot, StaticConfigError> {
        let mut snapshot = Snapshot {
            tenants: self.tenants.into_iter().collect(),
            namespaces: self.namespaces,
            ..Snapshot::default()
        };
        for owner in self.owners {
            let names = match owner.kind {
                OwnerKind::User => &mut snapshot.owners.users,
                OwnerKind::Group => &mut snapshot.owners.groups,
            };
            names.entry(owner.name).or_default().insert(owner.tenant);
        }
        for key in self.keys {
            let hash = match (key.sha256, key.key) {
                (Some(hash), _) => hash.to_ascii_lowercase(),
                (None, Some(clear)) => hash_key(&clear),
                (None, None) => return Err(StaticConfigError::KeyWithoutSecret(key.name)),
            };
            snapshot.keys.insert(
                hash,
                KeyInfo {
                    tenant: key.tenant,
                    name: key.name,
                },
            );
        }
        for StaticModel { tenant, model } in self.models {
            snapshot.upsert_model(&tenant, model);
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Lookup, Track};

    #[test]
    fn the_documented_shape_reads_into_a_snapshot() {
        let text = r#"{
          "tenants": {"acme": {"requestsPerMinute": 600, "tokensPerDay": 1000000}},
          "keys": [{"tenant": "acme", "name": "acme/key-ci", "sha256": "ABCDEF"},
                   {"tenant": "acme", "name": "acme/key-dev", "key": "sk-aleph-dev"}],
          "models": [{"tenant": "acme", "name": "llama", "namespace": "acme-ml",
                      "aimodel": "llama", "servedName": "llama-3.1-8b", "canaryPercent": 10,
                      "endpoints": [{"addr": "10.0.0.7:8000", "track": "stable"},
                                    {"addr": "10.0.0.8:8000", "track": "canary", "ready": false}]},
                     {"tenant": "acme", "name": "rare", "namespace": "acme-ml",
                      "aimodel": "rare", "servedName": "rare", "scaleFromZero": true}],
          "owners": [{"tenant": "acme", "kind": "Group", "name": "ml"},
                     {"tenant": "globex", "kind": "Group", "name": "ml"},
                     {"tenant": "acme", "kind": "User", "name": "alice"}],
          "namespaces": {"acme-ml": "acme"}
        }"#;
        let snapshot = StaticConfig::from_json(text)
            .and_then(StaticConfig::into_snapshot)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snapshot.tenants["acme"].requests_per_minute, Some(600));
        assert_eq!(snapshot.keys["abcdef"].name, "acme/key-ci");
        assert_eq!(
            snapshot
                .key_owner("sk-aleph-dev")
                .map(|k| k.tenant.as_str()),
            Some("acme")
        );
        let acme = ["acme".to_owned()];
        let Lookup::Found { tenant, model } = snapshot.lookup(&acme, "acme-ml/llama") else {
            panic!("llama not found");
        };
        assert_eq!(tenant, "acme");
        assert_eq!(snapshot.tenant_of_namespace("acme-ml"), Some("acme"));
        assert_eq!(
            snapshot.tenants_owned_by("alice", &["ml".to_owned()]),
            ["acme", "globex"]
        );
        assert_eq!(snapshot.tenants_owned_by("bob", &[]), Vec::<String>::new());
        assert_eq!(model.served_name, "llama-3.1-8b");
        assert_eq!(model.canary_percent, 10);
        assert!(model.endpoints[0].ready, "ready unless said otherwise");
        assert_eq!(model.endpoints[1].track, Track::Canary);
        assert!(!model.endpoints[1].ready);
        assert!(!model.scale_from_zero, "only when said");
        let Lookup::Found { model: rare, .. } = snapshot.lookup(&acme, "rare") else {
            panic!("rare not found");
        };
        assert!(rare.scale_from_zero);
        assert!(rare.endpoints.is_empty());
        let keyless = r#"{"keys": [{"tenant": "acme", "name": "x"}]}"#;
        assert!(
            StaticConfig::from_json(keyless)
                .and_then(StaticConfig::into_snapshot)
                .is_err()
        );
    }
}
