//! The Tenant's status: its namespaces and their count, the usage of its
//! quota, and the Ready and QuotaExhausted conditions with their events,
//! from what the apply pass found and did.

use std::collections::BTreeMap;

use aleph_crds::common::ConditionStatus;
use aleph_crds::conditions::READY;
use aleph_crds::tenant::{NamespaceRoom, ResourceUsage, Tenant, TenantStatus};
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::Api;

use super::build::QUOTA_NAME;
use super::quota::{self, Milli};
use super::rebalance::{QuotaCount, quota_count, quota_values};
use crate::apply::patch_status_if_changed;
use crate::conditions::{NewCondition, set_condition};
use crate::context::Context;
use crate::error::{Error, Result};

/// The Tenant's status without `gatewayUsage`, which the autoscaler's usage
/// summary writes (its own field manager): the reconciler neither compares
/// nor writes it back from a possibly older read.
fn own_status(tenant: &Tenant) -> Option<TenantStatus> {
    tenant
        .status
        .clone()
        .map(TenantStatus::without_gateway_usage)
}

/// Records a spec the validation refused: Ready is False with `InvalidSpec`.
pub(super) async fn invalid_spec(
    tenant: &Tenant,
    client: &kube::Client,
    error: &Error,
) -> Result<()> {
    let generation = tenant.metadata.generation;
    let mut status = tenant.status.clone().unwrap_or_default();
    set_condition(
        &mut status.conditions,
        NewCondition::no(READY, "InvalidSpec", error.to_string()),
        generation,
    );
    status.observed_generation = generation;
    patch_status_if_changed(
        &Api::<Tenant>::all(client.clone()),
        tenant,
        own_status(tenant).as_ref(),
        &status.clone().without_gateway_usage(),
    )
    .await?;
    Ok(())
}

/// What the apply pass found and did, which the status reports.
#[derive(Clone, Copy)]
pub(super) struct Pass<'a> {
    /// The tenant's ResourceQuotas, as listed at the start of the pass.
    pub(super) quotas: &'a BTreeMap<(String, String), ResourceQuota>,
    /// The tenant-wide hard limits.
    pub(super) hard: &'a BTreeMap<&'static str, Milli>,
    /// The namespaces in place, declared and adopted.
    pub(super) ready_namespaces: &'a [String],
    /// How many namespaces `spec.namespaces` declares.
    pub(super) declared: usize,
    /// How many of the namespaces the owners created are adopted.
    pub(super) adopted: usize,
    /// Declared namespaces that exist and belong to somebody else.
    pub(super) conflicts: &'a [String],
    /// Namespaces the owners created beyond the tenant's namespace count.
    pub(super) excess: &'a [String],
    /// The tenant's namespace count (`spec.quota.namespaces` or the plan's).
    pub(super) limit: usize,
    /// A declared namespace is still being deleted.
    pub(super) waiting: bool,
    /// The rebalance created a namespace's quota.
    pub(super) creating: bool,
    /// What the tenant's admission rules wait for, until the API server
    /// enforces them.
    pub(super) admission_waiting: Option<&'a AdmissionWait>,
}

/// How long after its binding was written a tenant's admission rules not
/// in force are shown as stuck, with what the probe got.
pub(super) const ADMISSION_STUCK_SECONDS: i64 = 10;

/// Why the tenant's admission rules are not known to be in force yet.
#[derive(Debug)]
pub(super) enum AdmissionWait {
    /// For what a new tenant waits for in turn (its namespaces, the count
    /// of its quotas, its binding's load): Ready says so in one message.
    Pending,
    /// For longer than the API server takes to load a binding: Ready says
    /// what the probe got.
    Stuck(String),
}

/// The Ready condition of what `pass` found.
fn ready_condition(pass: &Pass<'_>) -> NewCondition {
    let Pass {
        quotas,
        ready_namespaces,
        declared,
        adopted,
        conflicts,
        excess,
        limit,
        waiting,
        creating,
        admission_waiting,
        ..
    } = *pass;
    // In place and counted: until the quota controller has filled in a
    // quota's status, the API server refuses every object the quota counts.
    // Quotas the controller has counted but for some limits (their
    // resources named), and those it has not counted at all yet.
    let mut uncounted = Vec::new();
    let missing: Vec<String> = ready_namespaces
        .iter()
        .filter_map(|ns| {
            match quotas
                .get(&(ns.clone(), QUOTA_NAME.to_string()))
                .map(quota_count)
            {
                Some(QuotaCount::Counted) => None,
                None | Some(QuotaCount::Pending) => {
                    uncounted.push(ns.clone());
                    None
                }
                Some(QuotaCount::Missing(resources)) => {
                    Some(format!("{ns} ({})", resources.join(", ")))
                }
            }
        })
        .collect();
    let quota_wait = |named: &[String]| {
        NewCondition::no(
            READY,
            "Provisioning",
            format!(
                "waiting for the quota controller to count the quotas of {}: until it does, the quota guard refuses new pods there",
                named.join(", ")
            ),
        )
    };
    if !conflicts.is_empty() {
        NewCondition::no(
            READY,
            "NamespaceConflict",
            format!(
                "namespaces {} already exist and belong to somebody else: rename them in spec.namespaces",
                conflicts.join(", ")
            ),
        )
    } else if !excess.is_empty() {
        NewCondition::no(
            READY,
            "NamespaceLimitExceeded",
            format!(
                "owners created {} beyond the tenant's {limit} namespaces (spec.quota.namespaces): they are not adopted; delete them or raise the quota",
                excess.join(", ")
            ),
        )
    } else if !missing.is_empty() {
        quota_wait(&missing)
    } else if matches!(admission_waiting, Some(AdmissionWait::Pending))
        && !ready_namespaces.is_empty()
    {
        // One message for what a new tenant waits for in turn, the count of
        // its quotas and the API server's load of its binding: each new
        // message would be one more status write.
        NewCondition::no(
            READY,
            "Provisioning",
            format!(
                "waiting until the quota controller has counted the quotas of {} and the API server enforces the tenant's admission rules (it loads a new binding a second or more after it is written): until then the quota guard refuses new pods there",
                ready_namespaces.join(", ")
            ),
        )
    } else if !uncounted.is_empty() {
        // The tenant's rules hold (a namespace added later, say): only the
        // quotas not counted yet are waited for.
        quota_wait(&uncounted)
    } else if let Some(AdmissionWait::Stuck(why)) = admission_waiting {
        NewCondition::no(
            READY,
            "Provisioning",
            format!(
                "waiting for the API server to enforce the tenant's admission rules, written {ADMISSION_STUCK_SECONDS} s or more ago: until it does, the quota guard refuses new pods in its namespaces; {why}"
            ),
        )
    } else if waiting
        || ready_namespaces.len() != declared + adopted
        || creating
        || admission_waiting.is_some()
    {
        NewCondition::no(
            READY,
            "Provisioning",
            "creating the tenant's namespaces and quotas",
        )
    } else {
        NewCondition::yes(
            READY,
            "Provisioned",
            format!("{} namespaces provisioned", ready_namespaces.len()),
        )
    }
}

/// Computes the Tenant's status from `pass`, writes it and tells the events
/// of its changes. Whether the Tenant is Ready.
pub(super) async fn write(tenant: &Tenant, ctx: &Context, pass: Pass<'_>) -> Result<bool> {
    let client = &ctx.client;
    let generation = tenant.metadata.generation;
    let Pass {
        quotas,
        hard,
        ready_namespaces,
        declared,
        adopted,
        excess,
        limit,
        ..
    } = pass;
    let usage = aggregate_usage(quotas, ready_namespaces, hard);
    let mut status = tenant.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.namespaces = ready_namespaces.to_vec();
    status.namespace_count = i32::try_from(ready_namespaces.len()).unwrap_or(i32::MAX);
    // What the owners' admission policy checks a new namespace against.
    let counted = declared + adopted + excess.len();
    status.namespace_room = Some(NamespaceRoom {
        count: i32::try_from(counted).unwrap_or(i32::MAX),
        limit: i32::try_from(limit).unwrap_or(i32::MAX),
    });
    status.gpus = usage
        .get(quota::GPU)
        .map(|u| format!("{}/{}", u.used, u.hard));
    let was_ready = crate::conditions::is_true(&status.conditions, READY);
    let ready = ready_condition(&pass);
    let is_ready = ready.status == ConditionStatus::True;
    let was_over = status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.reason == "NamespaceLimitExceeded");
    if !excess.is_empty() && !was_over {
        ctx.warning(tenant, "NamespaceLimitExceeded", ready.message.clone())
            .await;
    }
    set_condition(&mut status.conditions, ready, generation);
    let exhausted: Vec<String> = usage
        .iter()
        .filter(|(r, u)| hard.get(r.as_str()).is_some_and(|h| *h > 0) && u.used == u.hard)
        .map(|(r, u)| format!("{r} ({}/{})", u.used, u.hard))
        .collect();
    let was_exhausted = crate::conditions::is_true(&status.conditions, "QuotaExhausted");
    let exhausted_condition = if exhausted.is_empty() {
        NewCondition::no(
            "QuotaExhausted",
            "WithinQuota",
            "usage is below the tenant quota",
        )
    } else {
        NewCondition::yes(
            "QuotaExhausted",
            "QuotaExhausted",
            format!(
                "the tenant uses all of {}: raise spec.quota or free resources",
                exhausted.join(", ")
            ),
        )
    };
    let note = exhausted_condition.message.clone();
    set_condition(&mut status.conditions, exhausted_condition, generation);
    status.usage = usage;
    let changed = patch_status_if_changed(
        &Api::<Tenant>::all(client.clone()),
        tenant,
        own_status(tenant).as_ref(),
        &status.clone().without_gateway_usage(),
    )
    .await?;
    if changed && is_ready && !was_ready {
        ctx.normal(
            tenant,
            "TenantProvisioned",
            format!("{} namespaces provisioned", status.namespace_count),
        )
        .await;
    }
    if changed && !exhausted.is_empty() && !was_exhausted {
        ctx.warning(tenant, "QuotaExhausted", note).await;
    }
    Ok(is_ready)
}

/// Sum of usage over the tenant's namespaces, against the tenant's hard limits.
fn aggregate_usage(
    quotas: &BTreeMap<(String, String), ResourceQuota>,
    namespaces: &[String],
    hard: &BTreeMap<&'static str, Milli>,
) -> BTreeMap<String, ResourceUsage> {
    let mut used: BTreeMap<&str, Milli> = hard.keys().map(|k| (*k, 0)).collect();
    for ns in namespaces {
        let Some(rq) = quotas.get(&(ns.clone(), QUOTA_NAME.to_string())) else {
            continue;
        };
        let values = quota_values(rq.status.as_ref().and_then(|s| s.used.as_ref()));
        for (resource, total) in used.iter_mut() {
            *total += values.get(*resource).copied().unwrap_or(0);
        }
    }
    used.into_iter()
        .map(|(r, u)| {
            let h = hard.get(r).copied().unwrap_or(0);
            (
                r.to_string(),
                ResourceUsage {
                    used: quota::display(r, u),
                    hard: quota::display(r, h),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The quota of namespace `ns`: `None` not counted yet, else its status
    /// with a usage for the limits in `used`.
    fn quota(ns: &str, used: Option<&[&str]>) -> ((String, String), ResourceQuota) {
        let hard = json!({ "pods": "10", "count/aimodels.aleph.dev": "2" });
        let status = used.map(|used| {
            let used: serde_json::Map<String, serde_json::Value> = used
                .iter()
                .map(|r| ((*r).to_string(), json!("0")))
                .collect();
            json!({ "hard": hard, "used": used })
        });
        let rq = serde_json::from_value(json!({
            "metadata": { "name": QUOTA_NAME, "namespace": ns },
            "spec": { "hard": hard },
            "status": status,
        }))
        .expect("a ResourceQuota");
        ((ns.to_string(), QUOTA_NAME.to_string()), rq)
    }

    fn ready(
        quotas: &BTreeMap<(String, String), ResourceQuota>,
        admission_waiting: Option<&AdmissionWait>,
    ) -> NewCondition {
        let namespaces = ["acme-a".to_string(), "acme-b".to_string()];
        ready_condition(&Pass {
            quotas,
            hard: &BTreeMap::new(),
            ready_namespaces: &namespaces,
            declared: 2,
            adopted: 0,
            conflicts: &[],
            excess: &[],
            limit: 10,
            waiting: false,
            creating: false,
            admission_waiting,
        })
    }

    #[test]
    fn a_new_tenant_waits_in_one_message_until_its_quotas_are_counted_and_its_rules_hold() {
        let all = Some(&["pods", "count/aimodels.aleph.dev"][..]);
        let pending = AdmissionWait::Pending;
        // Quotas not seen yet, seen but not counted, one counted, both
        // counted while the binding loads: each a pass, one message.
        let steps = [
            (BTreeMap::new(), Some(&pending)),
            (
                [quota("acme-a", None), quota("acme-b", None)].into(),
                Some(&pending),
            ),
            (
                [quota("acme-a", all), quota("acme-b", None)].into(),
                Some(&pending),
            ),
            (
                [quota("acme-a", all), quota("acme-b", all)].into(),
                Some(&pending),
            ),
            ([quota("acme-a", all), quota("acme-b", all)].into(), None),
        ];
        let conditions: Vec<NewCondition> = steps
            .iter()
            .map(|(quotas, wait)| ready(quotas, *wait))
            .collect();
        for waiting in &conditions[..4] {
            assert_eq!(waiting, &conditions[0]);
        }
        let first = &conditions[0];
        assert_eq!(first.status, ConditionStatus::False);
        assert_eq!(first.reason, "Provisioning");
        assert!(
            first.message.contains("quotas of acme-a, acme-b")
                && first.message.contains("admission rules"),
            "{}",
            first.message
        );
        assert_eq!(conditions[4].status, ConditionStatus::True);
        assert_eq!(conditions[4].reason, "Provisioned");
    }

    #[test]
    fn once_the_rules_hold_only_the_quotas_not_counted_are_named() {
        let all = Some(&["pods", "count/aimodels.aleph.dev"][..]);
        let quotas: BTreeMap<_, _> = [quota("acme-a", all), quota("acme-b", None)].into();
        let waiting = ready(&quotas, None);
        assert_eq!(waiting.status, ConditionStatus::False);
        assert_eq!(waiting.reason, "Provisioning");
        assert_eq!(
            waiting.message,
            "waiting for the quota controller to count the quotas of acme-b: until it does, the quota guard refuses new pods there"
        );
    }

    #[test]
    fn what_is_stuck_is_named() {
        let all = Some(&["pods", "count/aimodels.aleph.dev"][..]);
        let counted: BTreeMap<_, _> = [quota("acme-a", all), quota("acme-b", all)].into();
        let stuck = AdmissionWait::Stuck("the probe was admitted".to_string());
        let ready_stuck = ready(&counted, Some(&stuck));
        assert_eq!(ready_stuck.status, ConditionStatus::False);
        assert!(
            ready_stuck.message.contains("the probe was admitted")
                && ready_stuck.message.contains("10 s or more ago"),
            "{}",
            ready_stuck.message
        );
        // A quota counted but for a limit: named, with the limit, over the
        // binding's wait.
        let missing: BTreeMap<_, _> =
            [quota("acme-a", all), quota("acme-b", Some(&["pods"][..]))].into();
        let ready_missing = ready(&missing, Some(&AdmissionWait::Pending));
        assert_eq!(ready_missing.status, ConditionStatus::False);
        assert!(
            ready_missing
                .message
                .contains("quotas of acme-b (count/aimodels.aleph.dev)"),
            "{}",
            ready_missing.message
        );
    }
}
