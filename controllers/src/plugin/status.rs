//! The status of a Plugin, computed from the spec, the previous status and
//! what the Deployment shows: pure, no client.
//!
//! A release that is Ready becomes the last good release (kept in status,
//! with its version and image). `Degraded=True` says why the pods went back
//! to the last good release (see [`super::rollout`]), or why pods of the
//! declared release are refused.

use std::time::Duration;

use aleph_crds::common::ConditionStatus;
use aleph_crds::conditions::{DEGRADED, PROGRESSING, READY};
use aleph_crds::plugin::{PluginRelease, PluginSpec, PluginStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::apps::v1::Deployment;

use crate::conditions::{NewCondition, parse_time, set_condition};

/// How long to wait before looking again at a plugin that is settled.
pub const SETTLED_REQUEUE: Duration = Duration::from_secs(600);

/// Why the Deployment cannot make pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFailure {
    /// `AdmissionDenied` or `QuotaExceeded` (pods are refused), or
    /// `ImagePullFailed` or `ContainerConfigError` (a pod cannot start).
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

/// The pods run `release`, and nothing is rolling out.
fn runs(status: &mut PluginStatus, release: &PluginRelease) {
    status.rollout_started = None;
    status.current_version = Some(release.version.clone());
    status.current_image = Some(release.image.clone());
}

/// Nothing is under way: look again after [`SETTLED_REQUEUE`].
fn settled(status: PluginStatus, notes: Vec<Note>) -> Outcome {
    Outcome::Settled(Box::new(Assessment {
        status,
        notes,
        requeue: SETTLED_REQUEUE,
    }))
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
            DEGRADED,
            "RolledBack",
            rolled_back_message(&status, spec, &release.version),
        )
    } else {
        NewCondition::no(DEGRADED, "AsExpected", "")
    };
    let set = |status: &mut PluginStatus, c: NewCondition| {
        set_condition(&mut status.conditions, c, generation);
    };

    let Some(progress) = &o.progress else {
        // A job template: ready once its children exist.
        runs(&mut status, release);
        if spec.disabled {
            set(
                &mut status,
                NewCondition::yes(
                    READY,
                    "Disabled",
                    "Disabled: Pipeline steps cannot run it until spec.disabled is false",
                ),
            );
            set(&mut status, NewCondition::no(PROGRESSING, "Disabled", ""));
        } else {
            promote(&mut status, release, true, &mut notes);
            set(
                &mut status,
                NewCondition::yes(
                    READY,
                    "Available",
                    format!("Version {} is ready for Pipeline steps", release.version),
                ),
            );
            set(
                &mut status,
                NewCondition::no(PROGRESSING, "RolloutComplete", ""),
            );
        }
        set(&mut status, degraded);
        return settled(status, notes);
    };

    if spec.disabled {
        runs(&mut status, release);
        set(
            &mut status,
            NewCondition::yes(
                READY,
                "Disabled",
                "Scaled to zero; the configuration is kept: set spec.disabled to false to run it again",
            ),
        );
        set(&mut status, NewCondition::no(PROGRESSING, "Disabled", ""));
        set(&mut status, degraded);
        return settled(status, notes);
    }

    if progress.complete {
        runs(&mut status, release);
        if !o.rolled_back {
            promote(&mut status, release, false, &mut notes);
        }
        set(
            &mut status,
            NewCondition::yes(
                READY,
                "Running",
                format!("Version {} is running", release.version),
            ),
        );
        set(
            &mut status,
            NewCondition::no(
                PROGRESSING,
                if o.rolled_back {
                    "RolledBack"
                } else {
                    "RolloutComplete"
                },
                "",
            ),
        );
        set(&mut status, degraded);
        return settled(status, notes);
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
        let how = match failure.reason {
            "QuotaExceeded" | "AdmissionDenied" => "are refused",
            _ => "cannot start",
        };
        NewCondition::no(
            READY,
            failure.reason,
            format!(
                "Pods of version {} {how}: {}",
                release.version, failure.message
            ),
        )
    } else if exceeded {
        NewCondition::no(
            READY,
            "ProgressDeadlineExceeded",
            format!(
                "Version {} was not ready within {}s ({counts}) and there is no earlier version to roll back to: check its pods' events and logs",
                release.version, spec.progress_deadline_seconds
            ),
        )
    } else if o.rolled_back {
        NewCondition::no(
            READY,
            "RollingOut",
            format!("Rolling back to version {} ({counts})", release.version),
        )
    } else {
        NewCondition::no(
            READY,
            "RollingOut",
            format!("Version {} is rolling out ({counts})", release.version),
        )
    };
    let progressing = if exceeded {
        NewCondition::no(
            PROGRESSING,
            "ProgressDeadlineExceeded",
            ready.message.clone(),
        )
    } else {
        let was = match good {
            Some(g) if g.version != release.version => format!(" (was {})", g.version),
            _ => String::new(),
        };
        NewCondition::yes(
            PROGRESSING,
            "RollingOut",
            format!("Rolling out version {}{was}", release.version),
        )
    };
    let degraded = if o.rolled_back {
        degraded
    } else if ready.status == ConditionStatus::False && ready.reason != "RollingOut" {
        NewCondition::yes(DEGRADED, ready.reason.clone(), ready.message.clone())
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

/// The status of a plugin whose spec is invalid: not Ready, not Progressing,
/// with `message` saying why.
pub fn invalid_spec(
    previous: &PluginStatus,
    generation: Option<i64>,
    message: &str,
) -> PluginStatus {
    let mut status = previous.clone();
    status.observed_generation = generation;
    set_condition(
        &mut status.conditions,
        NewCondition::no(READY, "InvalidSpec", message.to_string()),
        generation,
    );
    set_condition(
        &mut status.conditions,
        NewCondition::no(PROGRESSING, "InvalidSpec", ""),
        generation,
    );
    status
}
