use super::*;
use aleph_crds::keys::RECOUNT_ANNOTATION;
use kube::runtime::{reflector, watcher};
use serde_json::json;

fn quota(
    spec: &[(&str, &str)],
    status_hard: &[(&str, &str)],
    used: &[(&str, &str)],
) -> ResourceQuota {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), Quantity((*v).to_string())))
            .collect::<BTreeMap<_, _>>()
    };
    serde_json::from_value(json!({
        "metadata": { "name": QUOTA_NAME, "namespace": "t-a" },
        "spec": { "hard": map(spec) },
        "status": { "hard": map(status_hard), "used": map(used) },
    }))
    .expect("a ResourceQuota")
}

#[test]
fn a_quota_is_counted_only_with_a_usage_for_each_current_hard_limit() {
    let hard = [("pods", "10"), (quota::AI_MODELS, "2")];
    assert_eq!(
        quota_count(&quota(&hard, &[("pods", "20")], &[("pods", "0")])),
        QuotaCount::Pending,
        "the controller has not taken in the new limits"
    );
    assert_eq!(
        quota_count(&quota(&hard, &hard, &[("pods", "0")])),
        QuotaCount::Missing(vec![quota::AI_MODELS.to_string()])
    );
    assert_eq!(
        quota_count(&quota(
            &hard,
            &[("pods", "10000m"), (quota::AI_MODELS, "2")],
            &[("pods", "1"), (quota::AI_MODELS, "0")]
        )),
        QuotaCount::Counted,
        "quantities compare by value"
    );
    let marked = [("pods", "10"), (RECOUNT_MARKER, "0")];
    assert_eq!(
        quota_count(&quota(&marked, &marked, &[("pods", "0")])),
        QuotaCount::Counted,
        "the recount marker needs no usage"
    );
    assert_eq!(hard_limits(Some(&quota(&marked, &[], &[]))).len(), 1);
}

#[test]
fn a_quota_is_enforced_once_its_status_has_limits_old_ones_included() {
    let hard = [("pods", "10")];
    let mut created: ResourceQuota = quota(&hard, &[], &[]);
    assert!(!quota_enforced(&created), "no limits in its status yet");
    created.status = None;
    assert!(!quota_enforced(&created), "no status at all");
    let marked = [(RECOUNT_MARKER, "0")];
    assert!(
        !quota_enforced(&quota(&hard, &marked, &[])),
        "the recount marker limits nothing"
    );
    assert!(quota_enforced(&quota(&hard, &hard, &[("pods", "0")])));
    assert!(
        quota_enforced(&quota(&[("pods", "20")], &hard, &[("pods", "0")])),
        "a quota whose new limits are not counted yet still enforces the old ones"
    );
    assert!(
        quota_enforced(&quota(&hard, &hard, &[])),
        "limits without a usage: admission refuses what they limit"
    );
}

#[test]
fn a_recount_is_asked_for_at_most_every_interval_and_only_when_missing() {
    let hard = [("pods", "10"), (quota::AI_MODELS, "2")];
    let now = chrono::Utc::now();
    let mut missing = quota(&hard, &hard, &[("pods", "0")]);
    assert!(recount_due(&missing, now));
    missing.annotations_mut().insert(
        RECOUNT_ANNOTATION.to_string(),
        (now - chrono::TimeDelta::seconds(3)).to_rfc3339(),
    );
    assert!(!recount_due(&missing, now));
    assert!(recount_due(&missing, now + RECOUNT_INTERVAL));
    let counted = quota(&hard, &hard, &[("pods", "0"), (quota::AI_MODELS, "0")]);
    assert!(!recount_due(&counted, now));
    let pending = quota(&hard, &[], &[]);
    assert!(!recount_due(&pending, now));
}

fn refusal(ns: &str, name: &str, message: &str, last: &str) -> Event {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns },
        "involvedObject": { "kind": "ReplicaSet", "namespace": ns, "name": "web-1" },
        "reason": "FailedCreate",
        "message": message,
        "firstTimestamp": last,
        "lastTimestamp": last,
    }))
    .expect("an Event")
}

#[test]
fn only_recent_refusals_by_the_tenant_quota_in_its_namespaces_count() {
    let (reader, mut writer) = reflector::store::<Event>();
    let quota = "Error creating: pods \"web-1-\" is forbidden: exceeded quota: aleph-tenant-quota, \
        requested: requests.nvidia.com/gpu=4, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=2";
    let other = "Error creating: pods \"web-1-\" is forbidden: exceeded quota: someone-elses, \
        requested: requests.nvidia.com/gpu=4, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=2";
    for event in [
        refusal("t-a", "fresh", quota, "2026-01-01T00:10:00Z"),
        refusal("t-a", "old", quota, "2026-01-01T00:00:00Z"),
        refusal("t-a", "other-quota", other, "2026-01-01T00:10:00Z"),
        refusal("elsewhere", "outside", quota, "2026-01-01T00:10:00Z"),
    ] {
        writer.apply_watcher_event(&watcher::Event::Apply(event));
    }
    let now: k8s_openapi::jiff::Timestamp = "2026-01-01T00:25:00Z".parse().expect("a time");
    let found = recent_refusals(&reader, &["t-a".to_string(), "t-b".to_string()], now);
    let names: Vec<String> = found.iter().map(|e| e.name_any()).collect();
    assert_eq!(names, vec!["fresh".to_string()]);
}
