//! Rollouts with automatic rollback, and the status that reports them: pure
//! functions of the spec, the previous status and what the Deployment shows.
//!
//! A release (see [`PluginRelease`]) is everything that shapes the pods. The
//! declared release rolls out; once every pod of it is Ready it becomes the
//! last good release (kept in status, with its version and image). When the
//! declared release is not Ready within `progressDeadlineSeconds` (counted
//! from when it was applied, or earlier if the Deployment reports
//! ProgressDeadlineExceeded), the pods go back to the last good release,
//! `Degraded=True` says why, and the failed generation is remembered: that
//! spec is not rolled out again until it changes.

use std::time::Duration;

use aleph_crds::common::ConditionStatus;
use aleph_crds::plugin::{PluginRelease, PluginSpec, PluginStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::apps::v1::Deployment;

use crate::conditions::{NewCondition, parse_time, set_condition};

/// How long to wait before looking again at a plugin that is settled.
pub const SETTLED_REQUEUE: Duration = Duration::from_secs(600);

/// Why the Deployment cannot make pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFailure {
    /// `AdmissionDenied` or `QuotaExceeded`.
    pub reason: &'static str,
    /// The API server's message.
    pub message: String,
}

/// What a Deployment shows of its rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every desired pod runs the current template, is available, and no old pod is left.
    pub complete: bool,
    /// The Deployment reports `Progressing=False` with `ProgressDeadlineExceeded`.
    pub deadline_exceeded: bool,
    /// Pods cannot be created.
    pub failure: Option<PodFailure>,
    /// Pods of the current template that are ready.
    pub ready: i32,
    /// Desired pods.
    pub desired: i32,
}

/// Reads the rollout state of a Deployment.
pub fn progress(deployment: &Deployment) -> Progress {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let Some(status) = deployment.status.as_ref() else {
        return Progress {
            desired,
            ..Progress::default()
        };
    };
    let seen = match (status.observed_generation, deployment.metadata.generation) {
        (Some(observed), Some(generation)) => observed >= generation,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let deadline_exceeded = seen
        && conditions.iter().any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    let failure = conditions
        .iter()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .map(|c| {
            let message = c.message.clone().unwrap_or_default();
            let reason = if message.contains("exceeded quota") {
                "QuotaExceeded"
            } else {
                "AdmissionDenied"
            };
            PodFailure { reason, message }
        });
    Progress {
        complete: seen && updated == desired && total == desired && available == desired,
        deadline_exceeded,
        failure,
        ready: ready.min(updated),
        desired,
    }
}

/// The release the pods should run, and whether it is the last good one
/// because the declared one failed at this generation.
pub fn chosen_release(
    spec: &PluginSpec,
    status: &PluginStatus,
    generation: Option<i64>,
) -> (PluginRelease, bool) {
    match (status.failed_generation, &status.last_good_release) {
        (Some(failed), Some(good)) if generation.is_none_or(|g| g <= failed) => {
            (good.clone(), true)
        }
        _ => (PluginRelease::of(spec), false),
    }
}

/// Records that the declared release of `generation` failed.
pub fn mark_failed(status: &mut PluginStatus, generation: Option<i64>, version: &str) {
    status.failed_version = Some(version.to_string());
    status.failed_generation = generation;
}

/// An event to publish once the status is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// A Warning rather than a Normal event.
    pub warning: bool,
    /// The event's reason.
    pub reason: &'static str,
    /// What happened.
    pub text: String,
}

/// What a reconcile observed.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// The plugin's spec.
    pub spec: &'a PluginSpec,
    /// Its generation.
    pub generation: Option<i64>,
    /// The release the pods were given.
    pub release: &'a PluginRelease,
    /// Whether that is the last good release after the declared one failed.
    pub rolled_back: bool,
    /// Whether the Deployment was just given another release.
    pub release_changed: bool,
    /// The Deployment's rollout; `None` for a job template.
    pub progress: Option<Progress>,
    /// The service's address.
    pub endpoint: Option<String>,
    /// The current time.
    pub now: DateTime<Utc>,
}

/// The status to write, the events to publish and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    /// The new status.
    pub status: PluginStatus,
    /// Events to publish.
    pub notes: Vec<Note>,
    /// When to reconcile again at the latest.
    pub requeue: Duration,
}

/// The outcome of looking at a rollout.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Report this.
    Settled(Box<Assessment>),
    /// The declared release missed its deadline: put the last good one back.
    RollBack(Note),
}

fn rolled_back_message(status: &PluginStatus, spec: &PluginSpec, good: &str) -> String {
    format!(
        "Version {} was not ready within {}s and was rolled back to {good}; publish a fixed version",
        status.failed_version.as_deref().unwrap_or("?"),
        spec.progress_deadline_seconds
    )
}

/// Makes `release` the last good one, with the event that says so.
fn promote(status: &mut PluginStatus, release: &PluginRelease, job: bool, notes: &mut Vec<Note>) {
    let previous = status.last_good_release.as_ref();
    if previous == Some(release) {
        return;
    }
    let text = match previous {
        None if job => format!("Version {} is ready for Pipeline steps", release.version),
        None => format!("Version {} is running", release.version),
        Some(old) if old.version != release.version => {
            format!("Upgraded from {} to {}", old.version, release.version)
        }
        Some(old) => format!("Version {} rolled out with changed settings", old.version),
    };
    notes.push(Note {
        warning: false,
        reason: if previous.is_none() {
            "PluginInstalled"
        } else {
            "PluginUpgraded"
        },
        text,
    });
    status.last_good_release = Some(release.clone());
    status.last_good_version = Some(release.version.clone());
    status.last_good_image = Some(release.image.clone());
}

/// Computes the status of a plugin from what was observed, or asks for a rollback.
pub fn assess(previous: &PluginStatus, o: &Observation<'_>) -> Outcome {
    let spec = o.spec;
    let generation = o.generation;
    let release = o.release;
    let mut status = previous.clone();
    let mut notes = Vec::new();
    status.observed_generation = generation;
    status.endpoint = o.endpoint.clone();
    if !o.rolled_back {
        status.failed_version = None;
        status.failed_generation = None;
    }
    let degraded = if o.rolled_back {
        NewCondition::yes(
            "Degraded",
            "RolledBack",
            rolled_back_message(&status, spec, &release.version),
        )
    } else {
        NewCondition::no("Degraded", "AsExpected", "")
    };
    let set = |status: &mut PluginStatus, c: NewCondition| {
        set_condition(&mut status.conditions, c, generation);
    };

    let Some(progress) = &o.progress else {
        // A job template: ready once its children exist.
        status.rollout_started = None;
        status.current_version = Some(release.version.clone());
        status.current_image = Some(release.image.clone());
        if spec.disabled {
            set(
                &mut status,
                NewCondition::yes(
                    "Ready",
                    "Disabled",
                    "Disabled: Pipeline steps cannot run it until spec.disabled is false",
                ),
            );
            set(&mut status, NewCondition::no("Progressing", "Disabled", ""));
        } else {
            promote(&mut status, release, true, &mut notes);
            set(
                &mut status,
                NewCondition::yes(
                    "Ready",
                    "Available",
                    format!("Version {} is ready for Pipeline steps", release.version),
                ),
            );
            set(
                &mut status,
                NewCondition::no("Progressing", "RolloutComplete", ""),
            );
        }
        set(&mut status, degraded);
        return Outcome::Settled(Box::new(Assessment {
            status,
            notes,
            requeue: SETTLED_REQUEUE,
        }));
    };

    if spec.disabled {
        status.rollout_started = None;
        status.current_version = Some(release.version.clone());
        status.current_image = Some(release.image.clone());
        set(
            &mut status,
            NewCondition::yes(
                "Ready",
                "Disabled",
                "Scaled to zero; the configuration is kept: set spec.disabled to false to run it again",
            ),
        );
        set(&mut status, NewCondition::no("Progressing", "Disabled", ""));
        set(&mut status, degraded);
        return Outcome::Settled(Box::new(Assessment {
            status,
            notes,
            requeue: SETTLED_REQUEUE,
        }));
    }

    if progress.complete {
        status.rollout_started = None;
        status.current_version = Some(release.version.clone());
        status.current_image = Some(release.image.clone());
        if !o.rolled_back {
            promote(&mut status, release, false, &mut notes);
        }
        set(
            &mut status,
            NewCondition::yes(
                "Ready",
                "Running",
                format!("Version {} is running", release.version),
            ),
        );
        set(
            &mut status,
            NewCondition::no(
                "Progressing",
                if o.rolled_back {
                    "RolledBack"
                } else {
                    "RolloutComplete"
                },
                "",
            ),
        );
        set(&mut status, degraded);
        return Outcome::Settled(Box::new(Assessment {
            status,
            notes,
            requeue: SETTLED_REQUEUE,
        }));
    }

    // Rolling out.
    let started = if o.release_changed {
        o.now
    } else {
        parse_time(previous.rollout_started.as_deref()).unwrap_or(o.now)
    };
    status.rollout_started = Some(started.to_rfc3339_opts(SecondsFormat::Secs, true));
    let deadline = Duration::from_secs(u64::try_from(spec.progress_deadline_seconds).unwrap_or(0));
    let elapsed = (o.now - started).to_std().unwrap_or_default();
    let exceeded = elapsed >= deadline || progress.deadline_exceeded;
    let good = previous.last_good_release.as_ref();
    if exceeded
        && !o.rolled_back
        && let Some(good) = good.filter(|g| *g != release)
    {
        let cause = match &progress.failure {
            Some(f) => format!(" ({}: {})", f.reason, f.message),
            None => format!(" ({}/{} pods ready)", progress.ready, progress.desired),
        };
        return Outcome::RollBack(Note {
            warning: true,
            reason: "PluginRolledBack",
            text: format!(
                "Version {} was not ready within {}s{cause}; rolled back to {}",
                release.version, spec.progress_deadline_seconds, good.version
            ),
        });
    }
    // The old pods keep serving until the new ones are ready.
    status.current_version = good.map(|g| g.version.clone());
    status.current_image = good.map(|g| g.image.clone());
    let counts = format!("{}/{} pods ready", progress.ready, progress.desired);
    let ready = if let Some(failure) = &progress.failure {
        NewCondition::no(
            "Ready",
            failure.reason,
            format!(
                "Pods of version {} are refused: {}",
                release.version, failure.message
            ),
        )
    } else if exceeded {
        NewCondition::no(
            "Ready",
            "ProgressDeadlineExceeded",
            format!(
                "Version {} was not ready within {}s ({counts}) and there is no earlier version to roll back to: check its pods' events and logs",
                release.version, spec.progress_deadline_seconds
            ),
        )
    } else if o.rolled_back {
        NewCondition::no(
            "Ready",
            "RollingOut",
            format!("Rolling back to version {} ({counts})", release.version),
        )
    } else {
        NewCondition::no(
            "Ready",
            "RollingOut",
            format!("Version {} is rolling out ({counts})", release.version),
        )
    };
    let progressing = if exceeded {
        NewCondition::no(
            "Progressing",
            "ProgressDeadlineExceeded",
            ready.message.clone(),
        )
    } else {
        let was = match good {
            Some(g) if g.version != release.version => format!(" (was {})", g.version),
            _ => String::new(),
        };
        NewCondition::yes(
            "Progressing",
            "RollingOut",
            format!("Rolling out version {}{was}", release.version),
        )
    };
    let degraded = if o.rolled_back {
        degraded
    } else if ready.status == ConditionStatus::False && ready.reason != "RollingOut" {
        NewCondition::yes("Degraded", ready.reason.clone(), ready.message.clone())
    } else {
        degraded
    };
    set(&mut status, ready);
    set(&mut status, progressing);
    set(&mut status, degraded);
    let requeue = if exceeded {
        Duration::from_secs(60)
    } else {
        (deadline.saturating_sub(elapsed) + Duration::from_secs(1)).min(Duration::from_secs(60))
    };
    Outcome::Settled(Box::new(Assessment {
        status,
        notes,
        requeue,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::find;
    use aleph_crds::plugin::Plugin;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};

    fn spec(version: &str) -> PluginSpec {
        let yaml = format!(
            r#"
apiVersion: aleph.dev/v1alpha1
kind: Plugin
metadata: {{ name: p }}
spec:
  version: {version}
  image: ghcr.io/acme/p:{version}
  port: 8080
  replicas: 2
  progressDeadlineSeconds: 20
"#
        );
        let p: Plugin = serde_saphyr::from_str(&yaml).expect("fixture parses");
        p.spec
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
    fn refused_pods_degrade_with_the_api_servers_message() {
        let s = spec("1.0.0");
        let release = PluginRelease::of(&s);
        let status = PluginStatus::default();
        let mut p = rolling(0);
        p.failure = Some(PodFailure {
            reason: "AdmissionDenied",
            message: "pods \"p-1\" is forbidden: image docker.io/x is not allowed".into(),
        });
        let a = settled(assess(
            &status,
            &observe(&s, &status, 1, &release, p, true, t(0)),
        ));
        let (_, reason, message) = condition(&a.status, "Degraded");
        assert_eq!(reason, "AdmissionDenied");
        assert!(message.contains("docker.io/x"));
        assert_eq!(condition(&a.status, "Ready").1, "AdmissionDenied");
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
}
