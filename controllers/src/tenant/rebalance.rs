//! The tenant's quota split over its namespaces' ResourceQuotas: headroom
//! moved to where a creation was refused, quotas created, lowered and raised,
//! and the quota controller asked to count them again.

use std::collections::BTreeMap;
use std::sync::Arc;

use aleph_crds::keys::RECOUNT_ANNOTATION;
use aleph_crds::tenant::Tenant;
use k8s_openapi::api::core::v1::{Event, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;

use super::build::{self, QUOTA_NAME};
use super::quota::{self, Milli};
use super::quota_view::{QuotaLedger, Quotas};
use super::{DEMAND_WINDOW_SECONDS, RECOUNT_INTERVAL, RECOUNT_MARKER};
use crate::apply::MANAGER;
use crate::error::{Error, Result};

pub(super) fn quota_values(map: Option<&BTreeMap<String, Quantity>>) -> BTreeMap<String, Milli> {
    map.map(|m| {
        m.iter()
            .filter_map(|(k, v)| quota::parse_quantity(&v.0).ok().map(|q| (k.clone(), q)))
            .collect()
    })
    .unwrap_or_default()
}

/// What one rebalancing pass did.
#[derive(Debug, Default)]
pub(super) struct Rebalance {
    /// A namespace's quota was created: the tenant is still being provisioned.
    pub(super) creating: bool,
    /// Limits are on their way (lowered and not yet raised, a conflicting
    /// admission, a recount asked for): look again soon.
    pub(super) moving: bool,
    /// Headroom moved toward a refused namespace.
    pub(super) moved: bool,
    /// What moved, for the event.
    pub(super) note: String,
}

/// The recent refusals by the tenant's quotas in `namespaces`.
pub(super) fn recent_refusals(
    refusals: &Store<Event>,
    namespaces: &[String],
    now: k8s_openapi::jiff::Timestamp,
) -> Vec<Arc<Event>> {
    refusals
        .state()
        .into_iter()
        .filter(|event| {
            let in_tenant = event.namespace().is_some_and(|ns| namespaces.contains(&ns));
            let last = event
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
                .or_else(|| event.last_timestamp.as_ref().map(|t| t.0))
                .or_else(|| event.event_time.as_ref().map(|t| t.0))
                .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0));
            in_tenant
                && last.is_some_and(|l| now.as_second() - l.as_second() <= DEMAND_WINDOW_SECONDS)
                && event
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains(&format!("exceeded quota: {QUOTA_NAME},")))
        })
        .collect()
}

/// Whether the ReplicaSet or Job a refusal is about still waits for pods: it
/// exists (the same object) and has fewer pods than it wants. A refusal about
/// another kind is taken as open until it is old.
async fn still_waiting(client: &kube::Client, event: &Event) -> Result<bool> {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::batch::v1::Job;
    let involved = &event.involved_object;
    let (Some(ns), Some(name)) = (involved.namespace.as_deref(), involved.name.as_deref()) else {
        return Ok(false);
    };
    let same = |uid: Option<&String>| involved.uid.is_none() || uid == involved.uid.as_ref();
    match involved.kind.as_deref() {
        Some("ReplicaSet") => {
            let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
            Ok(match api.get_opt(name).await? {
                Some(rs) if same(rs.metadata.uid.as_ref()) => {
                    let wanted = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let made = rs.status.as_ref().map_or(0, |s| s.replicas);
                    made < wanted
                }
                _ => false,
            })
        }
        Some("Job") => {
            let api: Api<Job> = Api::namespaced(client.clone(), ns);
            Ok(match api.get_opt(name).await? {
                Some(job) if same(job.metadata.uid.as_ref()) => {
                    let status = job.status.clone().unwrap_or_default();
                    let finished = status.conditions.iter().flatten().any(|c| {
                        (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                    });
                    let parallelism = job.spec.as_ref().and_then(|s| s.parallelism).unwrap_or(1);
                    !finished && status.active.unwrap_or(0) < parallelism
                }
                _ => false,
            })
        }
        _ => Ok(true),
    }
}

/// The demands open in the tenant's namespaces: from the recent refusals by
/// their quotas whose ReplicaSet or Job still waits, per namespace and
/// resource the highest usage a refused creation would have brought the
/// namespace to, and since when.
pub(super) async fn demands(
    client: &kube::Client,
    refusals: Vec<Arc<Event>>,
) -> Result<BTreeMap<String, BTreeMap<String, quota::Demand>>> {
    let mut out: BTreeMap<String, BTreeMap<String, quota::Demand>> = BTreeMap::new();
    for event in refusals {
        let Some(ns) = event.namespace() else {
            continue;
        };
        let Some((requested, used)) = event
            .message
            .as_deref()
            .and_then(|m| quota::parse_refusal(m, QUOTA_NAME))
        else {
            continue;
        };
        if !still_waiting(client, &event).await? {
            continue;
        }
        let first = event
            .first_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| event.event_time.as_ref().map(|t| t.0))
            .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .map_or(0, |t| t.as_second());
        let per_resource = out.entry(ns).or_default();
        for (resource, amount) in requested {
            let level = used.get(&resource).copied().unwrap_or(0) + amount;
            let entry = per_resource.entry(resource).or_insert(quota::Demand {
                level,
                since: first,
            });
            entry.level = entry.level.max(level);
            entry.since = entry.since.min(first);
        }
    }
    Ok(out)
}

/// A namespace's quota as the rebalance sees it.
struct Observed {
    namespace: String,
    quota: Option<ResourceQuota>,
    /// The spec's hard limits.
    hard: BTreeMap<String, Milli>,
    /// What admission enforces now: the larger of spec and status.
    enforced: BTreeMap<String, Milli>,
    used: BTreeMap<String, Milli>,
}

/// Splits the tenant's hard limits over its namespaces' ResourceQuotas,
/// moving headroom to where a creation was refused, so that no namespace
/// ever enforces more than the tenant has:
///
/// 1. lower every limit above its target, each write conditioned on the
///    quota's resourceVersion (a concurrent admission changes it, and the
///    write fails instead of cutting below what was just admitted);
/// 2. create missing quotas with what is free now;
/// 3. raise a limit only by what the others do not enforce: admission reads a
///    quota's status, which the quota controller updates a moment after its
///    spec, so a lowered limit counts at its old value until then.
///
/// At every instant the limits admission reads sum to at most the tenant's.
#[allow(clippy::too_many_arguments)]
pub(super) async fn rebalance_quotas(
    tenant: &Tenant,
    client: &kube::Client,
    ledger: &QuotaLedger,
    namespaces: &[String],
    quotas: &Quotas,
    hard: &BTreeMap<&'static str, Milli>,
    demands: &BTreeMap<String, BTreeMap<String, quota::Demand>>,
) -> Result<Rebalance> {
    let tenant_name = tenant.name_any();
    let record = |outcome: Result<ResourceQuota>| {
        ledger.wrote(&tenant_name, &outcome);
        outcome
    };
    let mut current: Vec<Observed> = Vec::new();
    for ns in namespaces {
        let rq = quotas.get(&(ns.clone(), QUOTA_NAME.to_string())).cloned();
        let h = hard_limits(rq.as_ref());
        let enforced = enforced_limits(rq.as_ref());
        let mut used = quota_values(
            rq.as_ref()
                .and_then(|q| q.status.as_ref())
                .and_then(|s| s.used.as_ref()),
        );
        // Not counted yet: assume the namespace uses all it may admit.
        if rq.as_ref().is_some_and(|q| !quota_counted(q)) {
            used = enforced.clone();
        }
        current.push(Observed {
            namespace: ns.clone(),
            quota: rq,
            hard: h,
            enforced,
            used,
        });
    }
    let mut target: Vec<BTreeMap<String, Milli>> = vec![BTreeMap::new(); current.len()];
    for (resource, tenant_hard) in hard {
        let used: Vec<Milli> = current
            .iter()
            .map(|o| o.used.get(*resource).copied().unwrap_or(0))
            .collect();
        let wanted: Vec<Option<quota::Demand>> = current
            .iter()
            .map(|o| {
                demands
                    .get(&o.namespace)
                    .and_then(|d| d.get(*resource))
                    .copied()
            })
            .collect();
        let shares = quota::targets(*tenant_hard, &used, &wanted, quota::unit_of(resource));
        for (i, share) in shares.into_iter().enumerate() {
            target[i].insert(resource.to_string(), share);
        }
    }
    let mut pass = Rebalance::default();
    let mut notes = Vec::new();

    // 1. Lower.
    for (i, o) in current.iter_mut().enumerate() {
        let Some(rq) = &o.quota else { continue };
        let lower: BTreeMap<String, Milli> = target[i]
            .iter()
            .map(|(r, t)| (r.clone(), (*t).min(o.hard.get(r).copied().unwrap_or(*t))))
            .collect();
        if lower != o.hard {
            let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &o.namespace);
            match record(replace_hard(&api, rq, &lower).await) {
                Ok(updated) => {
                    o.quota = Some(updated);
                    o.hard = lower;
                    pass.moving = true;
                }
                Err(e) if is_conflict(&e) => {
                    // An admission counted meanwhile: look again.
                    pass.moving = true;
                    return Ok(pass);
                }
                Err(e) => return Err(e),
            }
        }
    }

    // 2. Create the missing quotas with what nobody else enforces.
    for i in 0..current.len() {
        if current[i].quota.is_some() {
            continue;
        }
        let mut start = BTreeMap::new();
        for (resource, tenant_hard) in hard {
            let enforced: Vec<Milli> = current
                .iter()
                .map(|o| o.enforced.get(*resource).copied().unwrap_or(0))
                .collect();
            let t = target[i].get(*resource).copied().unwrap_or(0);
            start.insert(
                resource.to_string(),
                quota::raise_to(*tenant_hard, &enforced, i, 0, t).max(0),
            );
        }
        let ns = current[i].namespace.clone();
        let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
        let rq = ResourceQuota {
            metadata: build::owned_meta(tenant, QUOTA_NAME, Some(&ns)),
            spec: Some(ResourceQuotaSpec {
                hard: Some(to_quantities(&start)),
                ..ResourceQuotaSpec::default()
            }),
            ..ResourceQuota::default()
        };
        let created = api
            .create(
                &PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..PostParams::default()
                },
                &rq,
            )
            .await
            .map_err(Error::from);
        match record(created) {
            Ok(_) => {}
            // Created by an earlier pass the view missed: the next pass lists.
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        current[i].enforced = start;
        pass.creating = true;
        pass.moving = true;
    }
    if pass.creating {
        return Ok(pass);
    }

    // 3. Raise, the namespaces with a demand first.
    let mut order: Vec<usize> = (0..current.len()).collect();
    order.sort_by_key(|i| !demands.contains_key(&current[*i].namespace));
    for i in order {
        let Some(rq) = current[i].quota.clone() else {
            continue;
        };
        let mut raised = current[i].hard.clone();
        for (resource, tenant_hard) in hard {
            let enforced: Vec<Milli> = current
                .iter()
                .map(|o| o.enforced.get(*resource).copied().unwrap_or(0))
                .collect();
            let h = current[i].hard.get(*resource).copied().unwrap_or(0);
            let t = target[i].get(*resource).copied().unwrap_or(0);
            raised.insert(
                resource.to_string(),
                quota::raise_to(*tenant_hard, &enforced, i, h, t),
            );
        }
        let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &current[i].namespace);
        if raised != current[i].hard {
            match record(replace_hard(&api, &rq, &raised).await) {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => {
                    pass.moving = true;
                    return Ok(pass);
                }
                Err(e) => return Err(e),
            }
            if demands.contains_key(&current[i].namespace) {
                let gpus = |m: &BTreeMap<String, Milli>| m.get(quota::GPU).copied().unwrap_or(0);
                notes.push(format!(
                    "{}: GPUs {} -> {}",
                    current[i].namespace,
                    quota::display(quota::GPU, gpus(&current[i].hard)),
                    quota::display(quota::GPU, gpus(&raised))
                ));
                pass.moved = true;
            }
            for (r, v) in &raised {
                let e = current[i].enforced.entry(r.clone()).or_insert(0);
                *e = (*e).max(*v);
            }
            current[i].hard = raised;
        } else if recount_due(&rq, chrono::Utc::now()) {
            pass.moving = true;
            match record(request_recount(&api, &rq).await) {
                Ok(_) => {}
                // Counted meanwhile, or a view behind the quota: look again.
                Err(e) if is_conflict(&e) => return Ok(pass),
                Err(e) => return Err(e),
            }
        }
        if current[i].hard != target[i] {
            // Waiting for the others' lowered limits to be enforced.
            pass.moving = true;
        }
    }
    pass.note = format!(
        "moved headroom to where the quota refused a creation: {}",
        notes.join(", ")
    );
    Ok(pass)
}

fn is_conflict(error: &Error) -> bool {
    matches!(error, Error::Kube(kube::Error::Api(s)) if s.code == 409)
}

/// How far the quota controller has counted a quota.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum QuotaCount {
    /// It has not taken in the quota's current hard limits yet.
    Pending,
    /// It has taken them in but has no usage for these resources: it synced
    /// the quota before its discovery (every 30 s) found their custom
    /// resource, and it will not look at the quota again before its full
    /// resync (5 min by default) or a change to the quota's hard limits.
    Missing(Vec<String>),
    /// Every hard limit has a usage: the API server admits what fits.
    Counted,
}

/// Whether the quota controller has counted usage against the quota's
/// current hard limits: its status has the spec's hard limits and a usage for
/// each (the API server refuses objects of a resource without one, "status
/// unknown for quota").
pub(super) fn quota_count(rq: &ResourceQuota) -> QuotaCount {
    let spec = quota_values(rq.spec.as_ref().and_then(|s| s.hard.as_ref()));
    let Some(status) = rq.status.as_ref() else {
        return QuotaCount::Pending;
    };
    let Some(status_hard) = status.hard.as_ref() else {
        return QuotaCount::Pending;
    };
    if quota_values(Some(status_hard)) != spec {
        return QuotaCount::Pending;
    }
    let used = status.used.as_ref();
    let missing: Vec<String> = status_hard
        .keys()
        .filter(|r| r.as_str() != RECOUNT_MARKER && !used.is_some_and(|u| u.contains_key(*r)))
        .cloned()
        .collect();
    if missing.is_empty() {
        QuotaCount::Counted
    } else {
        QuotaCount::Missing(missing)
    }
}

/// Whether admission enforces `rq` at all: the quota controller has copied
/// hard limits into its status, which admission reads. A quota just created
/// has none there (the API server drops a status sent with the quota), and
/// until it has, the API server admits everything the quota would limit.
pub(super) fn quota_enforced(rq: &ResourceQuota) -> bool {
    rq.status
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .is_some_and(|hard| hard.keys().any(|r| r != RECOUNT_MARKER))
}

/// Whether the quota controller has counted every hard limit of `rq`
/// against its current spec ([`quota_count`]): what a Tenant's Ready waits for.
pub fn quota_counted(rq: &ResourceQuota) -> bool {
    quota_count(rq) == QuotaCount::Counted
}

/// What admission enforces for a quota now: the larger of its spec's and its
/// status's hard limits (the quota controller copies a new spec into the
/// status, which admission reads, a moment later).
pub(super) fn enforced_limits(rq: Option<&ResourceQuota>) -> BTreeMap<String, Milli> {
    let mut status_hard = quota_values(
        rq.and_then(|q| q.status.as_ref())
            .and_then(|s| s.hard.as_ref()),
    );
    status_hard.remove(RECOUNT_MARKER);
    let mut enforced = hard_limits(rq);
    for (r, v) in status_hard {
        let e = enforced.entry(r).or_insert(0);
        *e = (*e).max(v);
    }
    enforced
}

/// The quota's hard limits, without the recount marker.
fn hard_limits(rq: Option<&ResourceQuota>) -> BTreeMap<String, Milli> {
    let mut hard = quota_values(
        rq.and_then(|q| q.spec.as_ref())
            .and_then(|s| s.hard.as_ref()),
    );
    hard.remove(RECOUNT_MARKER);
    hard
}

/// Whether to ask the quota controller to count `rq` again now: it has
/// resources it did not count, and the last request is long enough ago for
/// its discovery to have found them meanwhile.
fn recount_due(rq: &ResourceQuota, now: chrono::DateTime<chrono::Utc>) -> bool {
    if !matches!(quota_count(rq), QuotaCount::Missing(_)) {
        return false;
    }
    rq.annotations()
        .get(RECOUNT_ANNOTATION)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_none_or(|last| now - last.with_timezone(&chrono::Utc) >= RECOUNT_INTERVAL)
}

/// Asks the quota controller to count `rq` again, by adding or removing the
/// recount marker (it watches changes to the hard limits only).
async fn request_recount(api: &Api<ResourceQuota>, rq: &ResourceQuota) -> Result<ResourceQuota> {
    let mut updated = rq.clone();
    updated.metadata.managed_fields = None;
    let hard = updated
        .spec
        .get_or_insert_with(Default::default)
        .hard
        .get_or_insert_with(Default::default);
    if hard.remove(RECOUNT_MARKER).is_none() {
        hard.insert(RECOUNT_MARKER.to_string(), Quantity("0".to_string()));
    }
    updated.annotations_mut().insert(
        RECOUNT_ANNOTATION.to_string(),
        crate::conditions::now_rfc3339(),
    );
    replace_quota(api, updated).await
}

fn to_quantities(values: &BTreeMap<String, Milli>) -> BTreeMap<String, Quantity> {
    values
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(quota::display(k, *v))))
        .collect()
}

/// Replaces the hard limits of `rq`, failing with a conflict if it changed since read.
async fn replace_hard(
    api: &Api<ResourceQuota>,
    rq: &ResourceQuota,
    hard: &BTreeMap<String, Milli>,
) -> Result<ResourceQuota> {
    let mut updated = rq.clone();
    updated.metadata.managed_fields = None;
    updated.spec.get_or_insert_with(Default::default).hard = Some(to_quantities(hard));
    replace_quota(api, updated).await
}

/// Writes `updated` over its quota, conditioned on the resourceVersion it
/// carries: a quota changed meanwhile (an admission counted) fails with a
/// conflict and the pass starts again from a fresh look.
async fn replace_quota(api: &Api<ResourceQuota>, updated: ResourceQuota) -> Result<ResourceQuota> {
    Ok(api
        .replace(
            &updated.name_any(),
            &PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            },
            &updated,
        )
        .await?)
}

#[cfg(test)]
#[path = "rebalance_tests.rs"]
mod tests;
