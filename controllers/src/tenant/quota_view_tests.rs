use super::*;
use crate::tenant::build::QUOTA_NAME;
use crate::tenant::quota::{self, GPU};
use crate::tenant::rebalance::enforced_limits;
use serde_json::json;

const TENANT: &str = "acme";

/// A counted quota of namespace `ns` at resourceVersion `rv`, with `gpus` as
/// both its spec's and its status's hard limit.
fn gpu_quota(ns: &str, rv: u64, gpus: &str) -> ResourceQuota {
    serde_json::from_value(json!({
        "metadata": { "name": QUOTA_NAME, "namespace": ns, "resourceVersion": rv.to_string() },
        "spec": { "hard": { GPU: gpus } },
        "status": { "hard": { GPU: gpus }, "used": { GPU: "0" } },
    }))
    .expect("a ResourceQuota")
}

fn key(ns: &str) -> (String, String) {
    (ns.to_string(), QUOTA_NAME.to_string())
}

fn cache(quotas: &[ResourceQuota]) -> Option<Quotas> {
    Some(
        quotas
            .iter()
            .map(|rq| {
                (
                    (rq.namespace().unwrap_or_default(), rq.name_any()),
                    rq.clone(),
                )
            })
            .collect(),
    )
}

fn gpus(view: &Quotas, ns: &str) -> Option<String> {
    view.get(&key(ns))
        .and_then(|rq| rq.spec.as_ref()?.hard.as_ref()?.get(GPU))
        .map(|q| q.0.clone())
}

fn api_error(code: u16, reason: &str) -> Result<ResourceQuota> {
    Err(Error::Kube(kube::Error::Api(
        kube::core::Status::failure("refused", reason)
            .with_code(code)
            .boxed(),
    )))
}

fn tracks(ledger: &QuotaLedger, tenant: &str) -> bool {
    ledger
        .tenants
        .lock()
        .expect("quota ledger")
        .contains_key(tenant)
}

#[test]
fn without_writes_the_cache_is_the_view_and_an_unfilled_cache_means_a_list() {
    let ledger = QuotaLedger::default();
    let cached = cache(&[gpu_quota("acme-a", 5, "2")]);
    assert_eq!(ledger.view(TENANT, cached.clone()), cached);
    assert_eq!(
        ledger.view(TENANT, None),
        None,
        "the cache is not filled yet"
    );
}

/// A write is laid over the cache while the cache misses it (a created
/// quota) or holds an older version (a raise), and forgotten once the cache
/// holds that version (the write's own event) or a newer one (the quota
/// controller's status after it).
#[test]
fn a_write_is_seen_until_the_cache_holds_it_or_a_newer_version() {
    let a = || gpu_quota("acme-a", 5, "3");
    let cases = [
        ("created", None, 9),
        ("raised", Some(gpu_quota("acme-b", 7, "1")), 9),
        (
            "raised, then counted",
            Some(gpu_quota("acme-b", 7, "1")),
            11,
        ),
    ];
    for (what, before, caught_up_at) in cases {
        let ledger = QuotaLedger::default();
        ledger.wrote(TENANT, &Ok(gpu_quota("acme-b", 9, "2")));
        let lagging: Vec<ResourceQuota> = std::iter::once(a()).chain(before).collect();
        let view = ledger.view(TENANT, cache(&lagging)).expect("a view");
        assert_eq!(gpus(&view, "acme-a").as_deref(), Some("3"), "{what}");
        assert_eq!(gpus(&view, "acme-b").as_deref(), Some("2"), "{what}: ours");

        let caught_up = cache(&[a(), gpu_quota("acme-b", caught_up_at, "2")]);
        assert_eq!(ledger.view(TENANT, caught_up.clone()), caught_up, "{what}");
        assert!(!tracks(&ledger, TENANT), "{what}: nothing kept");
    }
}

/// The hazard the ledger closes, on the rebalance's own arithmetic: tenant
/// `acme` has 4 GPUs over namespaces a and b, 1 each. A pass raised a to 3;
/// the cache still shows a at 1. Raising b toward 3 from that cache would let
/// the enforced limits sum to 6; from the view, b stays at 1 and the sum at 4.
#[test]
fn a_lagging_cache_cannot_make_the_enforced_limits_exceed_the_tenant() {
    let tenant_gpus = 4_000;
    let ledger = QuotaLedger::default();
    ledger.wrote(TENANT, &Ok(gpu_quota("acme-a", 12, "3")));
    let lagging = cache(&[gpu_quota("acme-a", 10, "1"), gpu_quota("acme-b", 11, "1")]);

    let enforced_gpus = |quotas: &Quotas| -> Vec<quota::Milli> {
        ["acme-a", "acme-b"]
            .iter()
            .map(|ns| {
                enforced_limits(quotas.get(&key(ns)))
                    .get(GPU)
                    .copied()
                    .unwrap_or(0)
            })
            .collect()
    };
    let raise_b =
        |enforced: &[quota::Milli]| quota::raise_to(tenant_gpus, enforced, 1, enforced[1], 3_000);

    let stale = enforced_gpus(lagging.as_ref().expect("quotas"));
    assert_eq!(
        3_000 + raise_b(&stale),
        6_000,
        "from the stale cache alone the sum would overrun"
    );

    let view = ledger.view(TENANT, lagging).expect("a view");
    let seen = enforced_gpus(&view);
    assert_eq!(seen, vec![3_000, 1_000]);
    assert_eq!(raise_b(&seen), 1_000, "b cannot take what a holds");
    assert_eq!(seen[0] + raise_b(&seen), tenant_gpus);
}

/// A refusal wrote nothing and changes nothing. Any other failure may have
/// written, or shows the view wrong: the next pass lists, and what the list
/// finds is laid over the cache after it.
#[test]
fn a_failed_write_makes_the_next_pass_list_unless_it_was_refused() {
    let cases = [
        (409, "Conflict", false),
        (422, "Invalid", false),
        (403, "Forbidden", false),
        (409, "AlreadyExists", true),
        (404, "NotFound", true),
        (500, "InternalError", true),
        (504, "Timeout", true),
    ];
    for (code, reason, lists) in cases {
        let ledger = QuotaLedger::default();
        ledger.wrote(TENANT, &api_error(code, reason));
        let cached = cache(&[gpu_quota("acme-a", 5, "1")]);
        let view = ledger.view(TENANT, cached.clone());
        if !lists {
            assert_eq!(view, cached, "{reason}");
            assert!(!tracks(&ledger, TENANT), "{reason}");
            continue;
        }
        assert_eq!(view, None, "{reason}: a live list");
        let listed = cache(&[gpu_quota("acme-a", 8, "3")]).expect("quotas");
        ledger.listed(TENANT, &listed);
        let view = ledger.view(TENANT, cached).expect("a view");
        assert_eq!(
            gpus(&view, "acme-a").as_deref(),
            Some("3"),
            "{reason}: the list over the lagging cache"
        );
    }
}

#[test]
fn a_write_the_cache_never_shows_leads_to_a_list() {
    let ledger = QuotaLedger::default();
    ledger.wrote(TENANT, &Ok(gpu_quota("acme-b", 9, "1")));
    let without_b = cache(&[gpu_quota("acme-a", 5, "3")]);
    let soon = Instant::now() + Duration::from_secs(5);
    assert!(ledger.view_at(TENANT, without_b.clone(), soon).is_some());
    let later = Instant::now() + CACHE_CATCH_UP + Duration::from_secs(1);
    assert_eq!(
        ledger.view_at(TENANT, without_b, later),
        None,
        "deleted meanwhile, or a watch that is reconnecting"
    );
}

#[test]
fn a_version_that_is_not_a_number_leads_to_a_list() {
    let ledger = QuotaLedger::default();
    ledger.wrote(TENANT, &Ok(gpu_quota("acme-a", 12, "3")));
    let mut odd = gpu_quota("acme-a", 10, "1");
    odd.metadata.resource_version = Some("opaque".into());
    assert_eq!(ledger.view(TENANT, cache(&[odd])), None);
}

#[test]
fn tenants_are_kept_apart_and_a_deleted_tenant_is_forgotten() {
    let ledger = QuotaLedger::default();
    ledger.wrote(TENANT, &Ok(gpu_quota("acme-a", 12, "3")));
    let other = cache(&[gpu_quota("globex-a", 4, "1")]);
    assert_eq!(ledger.view("globex", other.clone()), other);
    ledger.forget(TENANT);
    assert!(!tracks(&ledger, TENANT));
}
