//! The tenant's ResourceQuotas as a pass sees them: read from the
//! controller's watch cache, made safe against that cache lagging behind the
//! operator's own writes.
//!
//! The rebalance's no-overrun guarantee needs two things of what it reads:
//!
//! - **Other writers' changes may be stale.** The quota controller and the
//!   API server's admission move a quota's status (its `hard` and `used`);
//!   the lowering step's writes are conditioned on the resourceVersion read,
//!   so a stale quota fails with a conflict, and the raising step counts the
//!   larger of spec and status, which a stale read only overstates. Only the
//!   operator changes a quota's spec.
//! - **The operator's own writes must be seen.** A raise, or a created quota,
//!   missing from a lagging cache would let another namespace grow into the
//!   same headroom.
//!
//! So the [`QuotaLedger`] remembers every quota the operator wrote until the
//! cache holds that version or a later one, and a pass reads the cache with
//! the ledger laid over it. A write whose outcome is unknown (a timeout, a
//! server error, a creation that found the quota already there) makes the
//! tenant's next pass list its quotas live instead, and what that list finds
//! goes into the ledger as if written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::ResourceExt;

use crate::error::{Error, Result};

/// A tenant's quotas by (namespace, name).
pub(super) type Quotas = BTreeMap<(String, String), ResourceQuota>;

/// How long a written quota may stay missing from the cache before the
/// tenant's quotas are listed live again: far longer than a watch event takes,
/// so only a quota deleted meanwhile (its namespace went) or a watch that is
/// reconnecting gets there.
const CACHE_CATCH_UP: Duration = Duration::from_secs(60);

/// What the operator knows of one tenant's quotas beyond its cache.
#[derive(Debug)]
enum Known {
    /// Quotas written (or listed) whose version the cache may not hold yet.
    Written(BTreeMap<(String, String), (ResourceQuota, Instant)>),
    /// A write's outcome is unknown: list live.
    Uncertain,
}

/// The quotas this process wrote that its cache may not show yet, per tenant.
/// A tenant with no entry has had no write since the cache's initial list (a
/// consistent read, made after the process started), so the cache alone is
/// accurate for it.
#[derive(Debug, Default)]
pub(super) struct QuotaLedger {
    tenants: Mutex<HashMap<String, Known>>,
}

/// A resourceVersion as a number, to tell which of two versions of one
/// object is newer. The API server's are etcd revisions; anything else makes
/// the pass list live.
fn version(rq: &ResourceQuota) -> Option<u64> {
    rq.resource_version()?.parse().ok()
}

impl QuotaLedger {
    /// The tenant's quotas: `cached` (none when the cache cannot answer yet)
    /// with every version written since laid over it. None when they must be
    /// listed live.
    pub(super) fn view(&self, tenant: &str, cached: Option<Quotas>) -> Option<Quotas> {
        self.view_at(tenant, cached, Instant::now())
    }

    fn view_at(&self, tenant: &str, cached: Option<Quotas>, now: Instant) -> Option<Quotas> {
        let mut cached = cached?;
        let mut tenants = self.tenants.lock().expect("quota ledger");
        let Some(known) = tenants.get_mut(tenant) else {
            return Some(cached);
        };
        let Known::Written(written) = known else {
            return None;
        };
        let mut uncertain = false;
        written.retain(|key, (rq, at)| {
            let newer_in_cache = match (cached.get(key).map(version), version(rq)) {
                (Some(Some(in_cache)), Some(ours)) => in_cache >= ours,
                (Some(None), _) | (_, None) => {
                    uncertain = true;
                    return true;
                }
                (None, Some(_)) => false,
            };
            if newer_in_cache {
                return false;
            }
            if !cached.contains_key(key) && now.saturating_duration_since(*at) > CACHE_CATCH_UP {
                uncertain = true;
            }
            cached.insert(key.clone(), rq.clone());
            true
        });
        if uncertain {
            *known = Known::Uncertain;
            return None;
        }
        if written.is_empty() {
            tenants.remove(tenant);
        }
        Some(cached)
    }

    /// Takes in what a live list of the tenant's quotas found.
    pub(super) fn listed(&self, tenant: &str, quotas: &Quotas) {
        let mut tenants = self.tenants.lock().expect("quota ledger");
        let now = Instant::now();
        tenants.insert(
            tenant.to_string(),
            Known::Written(
                quotas
                    .iter()
                    .map(|(k, rq)| (k.clone(), (rq.clone(), now)))
                    .collect(),
            ),
        );
    }

    /// Takes in the outcome of a write of one of the tenant's quotas: the
    /// quota as the API server stored it, a refusal that wrote nothing (a
    /// conflict, a rejected object), or an unknown outcome.
    pub(super) fn wrote(&self, tenant: &str, outcome: &Result<ResourceQuota>) {
        let mut tenants = self.tenants.lock().expect("quota ledger");
        match outcome {
            Ok(rq) => {
                let key = (rq.namespace().unwrap_or_default(), rq.name_any());
                let mut stored = rq.clone();
                stored.metadata.managed_fields = None;
                let entry = tenants
                    .entry(tenant.to_string())
                    .or_insert_with(|| Known::Written(BTreeMap::new()));
                if let Known::Written(written) = entry {
                    written.insert(key, (stored, Instant::now()));
                }
            }
            // A conflict, or an object refused as it is: nothing was written.
            Err(Error::Kube(kube::Error::Api(status)))
                if (status.code == 409 && status.reason == "Conflict")
                    || (status.code != 404 && status.code != 409 && status.code < 500) => {}
            // The quota is there but not in the view (AlreadyExists), is gone
            // (NotFound), or the write may have happened (a server error, a
            // timeout, a lost connection).
            Err(_) => {
                tenants.insert(tenant.to_string(), Known::Uncertain);
            }
        }
    }

    /// Forgets a tenant that is gone.
    pub(super) fn forget(&self, tenant: &str) {
        self.tenants.lock().expect("quota ledger").remove(tenant);
    }
}

#[cfg(test)]
#[path = "quota_view_tests.rs"]
mod tests;
