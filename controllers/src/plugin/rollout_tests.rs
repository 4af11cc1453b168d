use std::time::Duration;

use super::*;
use crate::conditions::find;
use crate::plugin::status::{PodFailure, Progress, assess, progress};
use crate::plugin::test_support;
use aleph_crds::common::ConditionStatus;
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus,
};

fn spec(version: &str) -> PluginSpec {
    test_support::spec(&format!(
        "  version: {version}\n  image: ghcr.io/acme/p:{version}\n  port: 8080\n  replicas: 2\n  progressDeadlineSeconds: 20"
    ))
}

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("a time")
}

fn running(desired: i32) -> Progress {
    Progress {
        complete: true,
        ready: desired,
        desired,
        ..Progress::default()
    }
}

fn rolling(ready: i32) -> Progress {
    Progress {
        ready,
        desired: 2,
        ..Progress::default()
    }
}

fn observe<'a>(
    spec: &'a PluginSpec,
    status: &PluginStatus,
    generation: i64,
    release: &'a PluginRelease,
    progress: Progress,
    changed: bool,
    now: DateTime<Utc>,
) -> Observation<'a> {
    let (_, rolled_back) = chosen_release(spec, status, Some(generation));
    Observation {
        spec,
        generation: Some(generation),
        release,
        rolled_back,
        release_changed: changed,
        progress: Some(progress),
        endpoint: Some("p.ns.svc:8080".into()),
        now,
    }
}

fn settled(outcome: Outcome) -> Assessment {
    match outcome {
        Outcome::Settled(a) => *a,
        Outcome::RollBack(note) => panic!("unexpected rollback: {note:?}"),
    }
}

fn condition(status: &PluginStatus, type_: &str) -> (ConditionStatus, String, String) {
    let c = find(&status.conditions, type_).expect("condition");
    (c.status, c.reason.clone(), c.message.clone())
}

#[test]
fn first_install_reports_installed_once_ready() {
    let s = spec("1.0.0");
    let release = PluginRelease::of(&s);
    let start = PluginStatus::default();
    let a = settled(assess(
        &start,
        &observe(&s, &start, 1, &release, rolling(0), true, t(0)),
    ));
    assert_eq!(condition(&a.status, "Ready").1, "RollingOut");
    assert_eq!(condition(&a.status, "Progressing").0, ConditionStatus::True);
    assert!(a.status.current_version.is_none());
    assert!(a.notes.is_empty());
    assert_eq!(a.requeue, Duration::from_secs(21));
    let b = settled(assess(
        &a.status,
        &observe(&s, &a.status, 1, &release, running(2), false, t(5)),
    ));
    assert_eq!(
        condition(&b.status, "Ready"),
        (
            ConditionStatus::True,
            "Running".into(),
            "Version 1.0.0 is running".into()
        )
    );
    assert_eq!(b.status.last_good_version.as_deref(), Some("1.0.0"));
    assert_eq!(b.status.current_version.as_deref(), Some("1.0.0"));
    assert_eq!(b.notes.len(), 1);
    assert_eq!(b.notes[0].reason, "PluginInstalled");
    // Steady state: nothing changes, nothing is published.
    let c = settled(assess(
        &b.status,
        &observe(&s, &b.status, 1, &release, running(2), false, t(50)),
    ));
    assert_eq!(c.status, b.status);
    assert!(c.notes.is_empty());
}

fn installed(version: &str) -> PluginStatus {
    let s = spec(version);
    let release = PluginRelease::of(&s);
    let start = PluginStatus::default();
    settled(assess(
        &start,
        &observe(&s, &start, 1, &release, running(2), true, t(0)),
    ))
    .status
}

#[test]
fn an_upgrade_that_misses_its_deadline_is_rolled_back_and_not_retried() {
    let good = installed("1.0.0");
    let s = spec("1.1.0");
    let (release, rolled_back) = chosen_release(&s, &good, Some(2));
    assert!(!rolled_back);
    let a = settled(assess(
        &good,
        &observe(&s, &good, 2, &release, rolling(0), true, t(100)),
    ));
    assert_eq!(
        condition(&a.status, "Progressing").2,
        "Rolling out version 1.1.0 (was 1.0.0)"
    );
    // The old version keeps serving.
    assert_eq!(a.status.current_version.as_deref(), Some("1.0.0"));
    let b = settled(assess(
        &a.status,
        &observe(&s, &a.status, 2, &release, rolling(0), false, t(110)),
    ));
    assert_eq!(b.status.rollout_started, a.status.rollout_started);
    let note = match assess(
        &b.status,
        &observe(&s, &b.status, 2, &release, rolling(0), false, t(121)),
    ) {
        Outcome::RollBack(note) => note,
        Outcome::Settled(a) => panic!("no rollback: {:?}", a.status),
    };
    assert_eq!(note.reason, "PluginRolledBack");
    assert!(note.text.contains("1.1.0") && note.text.contains("1.0.0"));

    let mut failed = b.status.clone();
    mark_failed(&mut failed, Some(2), &release.version);
    let (back, rolled_back) = chosen_release(&s, &failed, Some(2));
    assert!(rolled_back);
    assert_eq!(back.version, "1.0.0");
    let c = settled(assess(
        &failed,
        &observe(&s, &failed, 2, &back, running(2), true, t(122)),
    ));
    assert_eq!(
        condition(&c.status, "Degraded"),
        (
            ConditionStatus::True,
            "RolledBack".into(),
            "Version 1.1.0 was not ready within 20s and was rolled back to 1.0.0; publish a fixed version".into()
        )
    );
    assert_eq!(condition(&c.status, "Ready").0, ConditionStatus::True);
    assert_eq!(c.status.current_version.as_deref(), Some("1.0.0"));
    assert_eq!(c.status.failed_version.as_deref(), Some("1.1.0"));
    assert!(c.notes.is_empty());

    // A new spec is tried again, and its success clears the failure.
    let s3 = spec("1.2.0");
    let (next, rolled_back) = chosen_release(&s3, &c.status, Some(3));
    assert!(!rolled_back);
    let d = settled(assess(
        &c.status,
        &observe(&s3, &c.status, 3, &next, running(2), true, t(200)),
    ));
    assert_eq!(condition(&d.status, "Degraded").0, ConditionStatus::False);
    assert!(d.status.failed_version.is_none());
    assert_eq!(d.notes[0].reason, "PluginUpgraded");
    assert_eq!(d.status.last_good_version.as_deref(), Some("1.2.0"));
}

#[test]
fn a_first_install_past_its_deadline_has_nothing_to_roll_back_to() {
    let s = spec("1.0.0");
    let release = PluginRelease::of(&s);
    let status = PluginStatus {
        rollout_started: Some(t(0).to_rfc3339_opts(SecondsFormat::Secs, true)),
        ..PluginStatus::default()
    };
    let a = settled(assess(
        &status,
        &observe(&s, &status, 1, &release, rolling(1), false, t(30)),
    ));
    let (ready, reason, message) = condition(&a.status, "Ready");
    assert_eq!(ready, ConditionStatus::False);
    assert_eq!(reason, "ProgressDeadlineExceeded");
    assert!(message.contains("1/2 pods ready"), "{message}");
    assert_eq!(condition(&a.status, "Degraded").0, ConditionStatus::True);
}

#[test]
fn refused_pods_and_pods_that_cannot_start_degrade_saying_why() {
    let s = spec("1.0.0");
    let release = PluginRelease::of(&s);
    let status = PluginStatus::default();
    for (reason, detail, how) in [
        (
            "AdmissionDenied",
            "pods \"p-1\" is forbidden: image docker.io/x is not allowed",
            "are refused",
        ),
        (
            "ContainerConfigError",
            "the plugin container of pod p-1 cannot start: secret \"absent\" not found",
            "cannot start",
        ),
    ] {
        let mut p = rolling(0);
        p.failure = Some(PodFailure {
            reason,
            message: detail.into(),
        });
        let a = settled(assess(
            &status,
            &observe(&s, &status, 1, &release, p, true, t(0)),
        ));
        let (_, degraded, message) = condition(&a.status, "Degraded");
        assert_eq!(degraded, reason);
        assert!(message.contains(detail), "{message}");
        let (_, ready, message) = condition(&a.status, "Ready");
        assert_eq!(ready, reason);
        assert_eq!(message, format!("Pods of version 1.0.0 {how}: {detail}"));
    }
}

#[test]
fn disabled_is_ready_scaled_to_zero_and_keeps_the_last_good_version() {
    let good = installed("1.0.0");
    let mut s = spec("1.0.0");
    s.disabled = true;
    let release = PluginRelease::of(&s);
    let a = settled(assess(
        &good,
        &observe(&s, &good, 2, &release, running(0), false, t(10)),
    ));
    assert_eq!(condition(&a.status, "Ready").1, "Disabled");
    assert_eq!(condition(&a.status, "Ready").0, ConditionStatus::True);
    assert_eq!(condition(&a.status, "Progressing").1, "Disabled");
    assert_eq!(a.status.last_good_version.as_deref(), Some("1.0.0"));
    assert!(a.notes.is_empty());
}

#[test]
fn job_templates_are_ready_at_once() {
    let mut s = spec("2.0.0");
    s.mode = aleph_crds::plugin::PluginMode::Job;
    let release = PluginRelease::of(&s);
    let status = PluginStatus::default();
    let mut o = observe(&s, &status, 1, &release, running(0), false, t(0));
    o.progress = None;
    let a = settled(assess(&status, &o));
    assert_eq!(condition(&a.status, "Ready").1, "Available");
    assert_eq!(
        a.status.current_image.as_deref(),
        Some("ghcr.io/acme/p:2.0.0")
    );
    assert_eq!(a.notes[0].reason, "PluginInstalled");
}

fn deployment(
    generation: i64,
    observed: i64,
    counts: (i32, i32, i32),
    conditions: Vec<DeploymentCondition>,
) -> Deployment {
    let (updated, total, available) = counts;
    Deployment {
        metadata: kube::api::ObjectMeta {
            generation: Some(generation),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            ..Default::default()
        }),
        status: Some(DeploymentStatus {
            observed_generation: Some(observed),
            updated_replicas: Some(updated),
            replicas: Some(total),
            available_replicas: Some(available),
            ready_replicas: Some(available),
            conditions: Some(conditions),
            ..Default::default()
        }),
    }
}

#[test]
fn progress_reads_the_deployment() {
    assert!(progress(&deployment(3, 3, (2, 2, 2), vec![])).complete);
    // Old pods still there, or the controller has not seen the new template.
    assert!(!progress(&deployment(3, 3, (1, 3, 2), vec![])).complete);
    assert!(!progress(&deployment(4, 3, (2, 2, 2), vec![])).complete);
    let refused = DeploymentCondition {
        type_: "ReplicaFailure".into(),
        status: "True".into(),
        reason: Some("FailedCreate".into()),
        message: Some("pods \"x\" is forbidden: exceeded quota: q, requested: cpu=1".into()),
        ..Default::default()
    };
    let p = progress(&deployment(3, 3, (0, 2, 2), vec![refused]));
    assert_eq!(p.failure.map(|f| f.reason), Some("QuotaExceeded"));
    let stuck = DeploymentCondition {
        type_: "Progressing".into(),
        status: "False".into(),
        reason: Some("ProgressDeadlineExceeded".into()),
        ..Default::default()
    };
    assert!(progress(&deployment(3, 3, (1, 3, 2), vec![stuck])).deadline_exceeded);
}
