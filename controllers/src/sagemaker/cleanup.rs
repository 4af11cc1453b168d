//! Compensation: what happens in SageMaker when the owner is deleted.
//!
//! With `Delete`, a running training job is stopped (and waited for), the
//! endpoint is deleted (and waited for), and then every EndpointConfig and
//! Model whose name carries this owner's tag (see [`super::naming`]); with
//! `Retain` nothing is touched. Every step is idempotent: a resource that is
//! already gone counts as deleted. Training jobs themselves cannot be deleted
//! in SageMaker; they stay in its history.

use std::time::Duration;

use aleph_crds::{
    DeletionPolicy, EndpointStatus, SageMakerServing, SageMakerTraining, TrainingStatus,
};

use super::naming::{endpoint_name, is_owned, owner_tag, training_job_name};
use super::{EndpointState, SageMakerApi, SmResult, TrainingJobState};

/// How long to wait for a training job to stop or an endpoint to go away.
const REQUEUE_DELETING: Duration = Duration::from_secs(10);
/// How long to wait for an endpoint to leave Creating or Updating.
const REQUEUE_BUSY: Duration = Duration::from_secs(30);

/// Where cleanup stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CleanupOutcome {
    /// Nothing is left to do: the finalizer can go.
    Done,
    /// SageMaker is still stopping or deleting something: call again after this long.
    RequeueAfter {
        /// When to call again.
        after: Duration,
        /// What is being waited for, for a condition or a log line.
        waiting_for: String,
    },
}

impl CleanupOutcome {
    /// Whether nothing is left to do.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    fn wait(after: Duration, waiting_for: impl Into<String>) -> Self {
        Self::RequeueAfter {
            after,
            waiting_for: waiting_for.into(),
        }
    }

    /// Both: done when both are, else the sooner requeue with both reasons.
    fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::Done, other) | (other, Self::Done) => other,
            (
                Self::RequeueAfter {
                    after: a,
                    waiting_for: wa,
                },
                Self::RequeueAfter {
                    after: b,
                    waiting_for: wb,
                },
            ) => Self::RequeueAfter {
                after: a.min(b),
                waiting_for: format!("{wa}; {wb}"),
            },
        }
    }
}

/// Deletes (or, with `Retain`, leaves) what the owner made in SageMaker, one
/// step per call. `owner_uid` is the owning object's UID: only Models and
/// EndpointConfigs whose names carry it are deleted.
pub async fn cleanup(
    api: &dyn SageMakerApi,
    owner_uid: &str,
    training: Option<&TrainingStatus>,
    endpoint: Option<&EndpointStatus>,
    policy: DeletionPolicy,
) -> SmResult<CleanupOutcome> {
    if policy == DeletionPolicy::Retain {
        return Ok(CleanupOutcome::Done);
    }
    let mut outcome = CleanupOutcome::Done;
    if let Some(training) = training {
        outcome = outcome.and(stop_training(api, training).await?);
    }
    match endpoint {
        Some(endpoint) => {
            outcome = outcome.and(cleanup_endpoint(api, owner_uid, endpoint, &[]).await?)
        }
        None => sweep(api, owner_uid, &[]).await?,
    }
    Ok(outcome)
}

/// Stops the job if it runs, and waits until it no longer does.
pub async fn stop_training(
    api: &dyn SageMakerApi,
    training: &TrainingStatus,
) -> SmResult<CleanupOutcome> {
    // Rejected at creation: there is no job.
    if training.job_status.is_none() && training.failure_reason.is_some() {
        return Ok(CleanupOutcome::Done);
    }
    let job = match api.describe_training_job(&training.job_name).await {
        Ok(job) => job,
        Err(e) if e.is_not_found() => return Ok(CleanupOutcome::Done),
        Err(e) => return Err(e),
    };
    let waiting = || {
        CleanupOutcome::wait(
            REQUEUE_DELETING,
            format!("training job {} to stop", job.name),
        )
    };
    match job.state {
        TrainingJobState::InProgress => match api.stop_training_job(&training.job_name).await {
            Ok(()) => Ok(waiting()),
            Err(e) if e.is_not_found() => Ok(CleanupOutcome::Done),
            // It finished between the two calls; the next pass sees it final.
            Err(e) if e.is_terminal() => Ok(waiting()),
            Err(e) => Err(e),
        },
        TrainingJobState::Stopping | TrainingJobState::Other(_) => Ok(waiting()),
        TrainingJobState::Completed | TrainingJobState::Failed | TrainingJobState::Stopped => {
            Ok(CleanupOutcome::Done)
        }
    }
}

/// Deletes the endpoint (when this owner made or adopted it), then every
/// EndpointConfig and Model this owner made, except the names in `keep`.
pub(crate) async fn cleanup_endpoint(
    api: &dyn SageMakerApi,
    owner_uid: &str,
    status: &EndpointStatus,
    keep: &[&str],
) -> SmResult<CleanupOutcome> {
    let endpoint = match api.describe_endpoint(&status.name).await {
        Ok(endpoint) => endpoint,
        Err(e) if e.is_not_found() => {
            sweep(api, owner_uid, keep).await?;
            return Ok(CleanupOutcome::Done);
        }
        Err(e) => return Err(e),
    };
    let owned_config = |c: &Option<String>| c.as_deref().is_some_and(|c| is_owned(c, owner_uid));
    let ours = status.config_name.is_some()
        || owned_config(&endpoint.config_name)
        || owned_config(&endpoint.pending_config_name);
    if !ours {
        // Named by the spec (or to be adopted) but never moved to a config of ours: not ours to delete.
        sweep(api, owner_uid, keep).await?;
        return Ok(CleanupOutcome::Done);
    }
    match &endpoint.state {
        EndpointState::Deleting => {
            return Ok(CleanupOutcome::wait(
                REQUEUE_DELETING,
                format!("endpoint {} to be deleted", endpoint.name),
            ));
        }
        state if state.is_transitional() => {
            return Ok(CleanupOutcome::wait(
                REQUEUE_BUSY,
                format!(
                    "endpoint {} to leave {} before deleting it",
                    endpoint.name,
                    state.as_str()
                ),
            ));
        }
        _ => {}
    }
    deleted(api.delete_endpoint(&endpoint.name).await)?;
    match api.describe_endpoint(&endpoint.name).await {
        Err(e) if e.is_not_found() => {
            sweep(api, owner_uid, keep).await?;
            Ok(CleanupOutcome::Done)
        }
        Err(e) => Err(e),
        Ok(_) => Ok(CleanupOutcome::wait(
            REQUEUE_DELETING,
            format!("endpoint {} to be deleted", endpoint.name),
        )),
    }
}

/// Deletes every EndpointConfig and Model whose name carries this owner's tag,
/// except the names in `keep`: what a pass cut short, a superseded spec or a
/// rolled-back update left behind included.
pub(crate) async fn sweep(api: &dyn SageMakerApi, owner_uid: &str, keep: &[&str]) -> SmResult<()> {
    let tag = format!("-{}-", owner_tag(owner_uid));
    let swept = |name: &String| is_owned(name, owner_uid) && !keep.contains(&name.as_str());
    let configs = api.list_endpoint_configs(&tag).await?;
    for config in configs.iter().filter(|c| swept(c)) {
        deleted(api.delete_endpoint_config(config).await)?;
    }
    let models = api.list_models(&tag).await?;
    for model in models.iter().filter(|m| swept(m)) {
        deleted(api.delete_model(model).await)?;
    }
    Ok(())
}

/// A Delete call's result, with a resource that was already gone counted as deleted.
pub(crate) fn deleted(result: SmResult<()>) -> SmResult<()> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        result => result,
    }
}

/// The training status to give [`cleanup`]: the recorded one, or, when none was
/// recorded (a pass that created the job failed before the status was
/// written), the job the spec names.
pub fn training_for_cleanup(
    status: Option<&TrainingStatus>,
    owner_uid: &str,
    name: &str,
    spec: Option<&SageMakerTraining>,
) -> Option<TrainingStatus> {
    status.cloned().or_else(|| {
        spec.map(|spec| TrainingStatus {
            job_name: training_job_name(owner_uid, name, spec),
            job_status: None,
            artifact_uri: None,
            failure_reason: None,
        })
    })
}

/// The endpoint status to give [`cleanup`]: the recorded one, or, when none
/// was recorded, the endpoint the spec names (deleted only if it runs a config
/// of this owner).
pub fn endpoint_for_cleanup(
    status: Option<&EndpointStatus>,
    namespace: &str,
    name: &str,
    serving: Option<&SageMakerServing>,
    adopt: Option<&str>,
) -> Option<EndpointStatus> {
    status.cloned().or_else(|| {
        serving.map(|serving| EndpointStatus {
            name: adopt.map_or_else(|| endpoint_name(namespace, name, serving), str::to_string),
            arn: None,
            state: None,
            model_name: None,
            config_name: None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_combine() {
        let a = CleanupOutcome::wait(Duration::from_secs(30), "a");
        let b = CleanupOutcome::wait(Duration::from_secs(10), "b");
        assert_eq!(
            CleanupOutcome::Done.and(CleanupOutcome::Done),
            CleanupOutcome::Done
        );
        assert_eq!(CleanupOutcome::Done.and(a.clone()), a);
        assert_eq!(
            a.and(b),
            CleanupOutcome::RequeueAfter {
                after: Duration::from_secs(10),
                waiting_for: "a; b".into()
            }
        );
    }
}

#[cfg(test)]
#[path = "cleanup_tests.rs"]
mod saga_tests;
