//! The SageMaker side of an AIModel: its training job and its SageMaker
//! endpoint, and their removal when the model is deleted.
//!
//! The sagas in [`crate::sagemaker`] do the work and are exactly-once by
//! construction (every name is derived from the model's UID and spec, and
//! every step looks before it acts); this module runs them for one model,
//! records what they observed in the status (`status.training`,
//! `status.endpoint`, the `Trained` and `Serving` conditions) and publishes
//! their events.
//!
//! Errors that retrying may fix (throttling, 5xx, the network) are written to
//! the status as a condition with status `Unknown` and a reason naming the
//! kind of error, and are then returned so the object is retried with
//! backoff. SageMaker saying no for good (a rejected spec, a failed job) is a
//! terminal condition and is not retried until the spec changes.

use aleph_crds::conditions::{SERVING, TRAINED};
use std::time::Duration;

use aleph_crds::aimodel::{AIModel, AIModelStatus, ServingBackend};
use aleph_crds::common::{Condition, ConditionStatus};
use aleph_crds::keys::ADOPT_ENDPOINT_ANNOTATION;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use crate::apply::patch_status_if_changed;
use crate::conditions::{NewCondition, set_condition};
use crate::context::Context;
use crate::error::{Error, Result, uid_of};
use crate::sagemaker::cleanup::{CleanupOutcome, cleanup as cleanup_saga};
use crate::sagemaker::{
    SagaOutcome, SagaOwner, SageMakerError, SageMakerEvent, SmResult, endpoint_for_cleanup,
    reconcile_endpoint, reconcile_training, recoverable_condition, training_for_cleanup,
};

/// Whether `model` has anything on SageMaker: a training job or SageMaker serving.
pub fn uses_sagemaker(model: &AIModel) -> bool {
    model.spec.training.is_some() || model.spec.sagemaker.is_some()
}

/// Whether `model` has, or may have, left something on SageMaker that its
/// deletion must clean up.
fn has_sagemaker_state(model: &AIModel) -> bool {
    uses_sagemaker(model)
        || model
            .status
            .as_ref()
            .is_some_and(|s| s.training.is_some() || s.endpoint.is_some())
}

/// The model artifact a finished training job produced: the source of serving
/// when the spec names none.
pub fn trained_artifact(status: Option<&AIModelStatus>) -> Option<String> {
    let training = status?.training.as_ref()?;
    if training.job_status.as_deref() == Some("Completed") {
        training.artifact_uri.clone()
    } else {
        None
    }
}

/// Reasons of the Trained and Serving conditions that only a spec change fixes.
const TERMINAL_REASONS: &[&str] = &[
    "TrainingRejected",
    "TrainingFailed",
    "TrainingStopped",
    "EndpointFailed",
    "EndpointUpdateFailed",
    "EndpointRejected",
    "EndpointNameConflict",
    "InvalidSpec",
];

/// The Trained or Serving condition that reports a terminal failure (training
/// first), for Ready and Degraded to repeat.
pub fn terminal_failure(status: &AIModelStatus) -> Option<&Condition> {
    [TRAINED, SERVING].iter().find_map(|type_| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == *type_ && TERMINAL_REASONS.contains(&c.reason.as_str()))
    })
}

struct Identity<'a> {
    uid: String,
    namespace: String,
    name: &'a str,
    generation: Option<i64>,
}

impl Identity<'_> {
    /// The model as the sagas know it.
    fn owner(&self) -> SagaOwner<'_> {
        SagaOwner {
            uid: &self.uid,
            namespace: &self.namespace,
            name: self.name,
        }
    }
}

fn identity(model: &AIModel) -> Result<Identity<'_>> {
    let uid = uid_of(model)?;
    Ok(Identity {
        uid,
        namespace: model.namespace().unwrap_or_default(),
        name: model.meta().name.as_deref().unwrap_or_default(),
        generation: model.meta().generation,
    })
}

/// Drives the training job and the SageMaker endpoint toward `model`'s spec,
/// writing what it observes (training and endpoint status, the Trained and
/// Serving conditions) into `status`. Returns when to look again.
pub async fn reconcile(
    model: &AIModel,
    ctx: &Context,
    status: &mut AIModelStatus,
) -> Result<Option<Duration>> {
    let id = identity(model)?;
    let mut requeue: Option<Duration> = None;
    let mut merge = |after: Option<Duration>| {
        if let Some(after) = after {
            let after = ctx
                .settings
                .sagemaker_max_poll
                .map_or(after, |cap| after.min(cap));
            requeue = Some(requeue.map_or(after, |r: Duration| r.min(after)));
        }
    };

    match &model.spec.training {
        Some(training) => {
            let api = ctx.sagemaker(training.region.as_deref()).await?;
            let pass =
                reconcile_training(api.as_ref(), id.owner(), training, status.training.as_ref())
                    .await;
            let (trained, after) = settle(ctx, model, status, (TRAINED, "training"), pass).await?;
            status.training = Some(trained);
            merge(after);
        }
        None => status.conditions.retain(|c| c.type_ != TRAINED),
    }

    let serving = model
        .spec
        .sagemaker
        .as_ref()
        .filter(|_| model.spec.backend == ServingBackend::SageMaker);
    match serving {
        Some(serving) => {
            let artifact = match (&model.spec.training, &model.spec.source) {
                (Some(_), _) => trained_artifact(Some(status)),
                (None, Some(source)) if source.uri.starts_with("s3://") => Some(source.uri.clone()),
                // The serving image holds the model.
                (None, _) => Some(String::new()),
            };
            let Some(artifact) = artifact else {
                let training_failed = status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == TRAINED && c.status == ConditionStatus::False)
                    && status
                        .training
                        .as_ref()
                        .is_some_and(|t| t.failure_reason.is_some());
                let condition = if training_failed {
                    NewCondition::no(
                        SERVING,
                        "TrainingFailed",
                        "no model to serve: the training job failed (see the Trained condition)",
                    )
                } else {
                    NewCondition::no(
                        SERVING,
                        "WaitingForTraining",
                        "the endpoint is created once the training job has produced the model",
                    )
                };
                set_condition(&mut status.conditions, condition, id.generation);
                return Ok(requeue);
            };
            let adopt = model
                .annotations()
                .get(ADOPT_ENDPOINT_ANNOTATION)
                .map(String::as_str)
                .filter(|a| !a.is_empty());
            let api = ctx.sagemaker(serving.region.as_deref()).await?;
            let pass = reconcile_endpoint(
                api.as_ref(),
                id.owner(),
                serving,
                &artifact,
                status.endpoint.as_ref(),
                adopt,
            )
            .await;
            let (endpoint, after) = settle(ctx, model, status, (SERVING, "serving"), pass).await?;
            if endpoint.is_some() {
                status.endpoint = endpoint;
            }
            merge(after);
        }
        None => status.conditions.retain(|c| c.type_ != SERVING),
    }
    Ok(requeue)
}

/// Records one pass of a saga in `status`: publishes its events and sets its
/// condition, and returns the saga's status and when to look again. An error
/// is recorded as the condition `type_` of the saga `what` and returned (see
/// [`recoverable`]).
async fn settle<S>(
    ctx: &Context,
    model: &AIModel,
    status: &mut AIModelStatus,
    (type_, what): (&'static str, &str),
    pass: SmResult<SagaOutcome<S>>,
) -> Result<(S, Option<Duration>)> {
    match pass {
        Ok(outcome) => {
            publish(ctx, model, &outcome.events).await;
            let generation = model.meta().generation;
            set_condition(&mut status.conditions, outcome.condition, generation);
            Ok((outcome.status, outcome.requeue_after))
        }
        Err(error) => Err(recoverable(ctx, model, status, type_, what, &error).await),
    }
}

/// Records a recoverable SageMaker error in the status (condition `Unknown`
/// with the error's reason) and returns it for the runner to back off.
async fn recoverable(
    ctx: &Context,
    model: &AIModel,
    status: &mut AIModelStatus,
    condition: &'static str,
    what: &str,
    error: &SageMakerError,
) -> Error {
    if !error.is_recoverable() {
        return Error::SageMaker(error.clone());
    }
    let recovering = recoverable_condition(condition, what, error);
    set_condition(&mut status.conditions, recovering, model.meta().generation);
    let api: Api<AIModel> =
        Api::namespaced(ctx.client.clone(), &model.namespace().unwrap_or_default());
    if let Err(e) = patch_status_if_changed(&api, model, model.status.as_ref(), &*status).await {
        tracing::warn!(error = %e, "could not record the SageMaker error in the status");
    }
    Error::SageMaker(error.clone())
}

async fn publish(ctx: &Context, model: &AIModel, events: &[SageMakerEvent]) {
    for event in events {
        ctx.event(model, event.type_, event.reason, event.message.clone())
            .await;
    }
}

/// Stops or deletes what `model` has on SageMaker (unless its deletion policy
/// is Retain). `Ok(None)` when nothing is left; `Ok(Some(d))` to look again.
pub async fn cleanup(model: &AIModel, ctx: &Context) -> Result<Option<Duration>> {
    if !has_sagemaker_state(model) {
        return Ok(None);
    }
    let id = identity(model)?;
    let status = model.status.as_ref();
    let adopt = model
        .annotations()
        .get(ADOPT_ENDPOINT_ANNOTATION)
        .map(String::as_str)
        .filter(|a| !a.is_empty());
    let training = training_for_cleanup(
        status.and_then(|s| s.training.as_ref()),
        &id.uid,
        id.name,
        model.spec.training.as_ref(),
    );
    let endpoint = endpoint_for_cleanup(
        status.and_then(|s| s.endpoint.as_ref()),
        &id.namespace,
        id.name,
        model.spec.sagemaker.as_ref(),
        adopt,
    );
    let policy = model.spec.deletion_policy;
    let training_region = model.spec.training.as_ref().and_then(|t| t.region.clone());
    let serving_region = model.spec.sagemaker.as_ref().and_then(|s| s.region.clone());
    // With no region anywhere no client could have made anything: a model
    // whose status shows nothing made is not held back by the missing region.
    let nothing_made = status.is_none_or(|s| s.training.is_none() && s.endpoint.is_none());
    if nothing_made {
        for region in [&training_region, &serving_region] {
            if let Err(Error::Blocked {
                reason: "AWSNotConfigured",
                ..
            }) = ctx.sagemaker(region.as_deref()).await
            {
                return Ok(None);
            }
        }
    }
    let outcomes = if training_region == serving_region {
        let api = ctx.sagemaker(training_region.as_deref()).await?;
        vec![
            cleanup_saga(
                api.as_ref(),
                &id.uid,
                training.as_ref(),
                endpoint.as_ref(),
                policy,
            )
            .await?,
        ]
    } else {
        let training_api = ctx.sagemaker(training_region.as_deref()).await?;
        let serving_api = ctx.sagemaker(serving_region.as_deref()).await?;
        vec![
            cleanup_saga(
                training_api.as_ref(),
                &id.uid,
                training.as_ref(),
                None,
                policy,
            )
            .await?,
            cleanup_saga(
                serving_api.as_ref(),
                &id.uid,
                None,
                endpoint.as_ref(),
                policy,
            )
            .await?,
        ]
    };
    let mut wait: Option<Duration> = None;
    for outcome in outcomes {
        if let CleanupOutcome::RequeueAfter { after, waiting_for } = outcome {
            tracing::info!(%waiting_for, "SageMaker cleanup in progress");
            let after = ctx
                .settings
                .sagemaker_max_poll
                .map_or(after, |cap| after.min(cap));
            wait = Some(wait.map_or(after, |w| w.min(after)));
        }
    }
    Ok(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aleph_crds::aimodel::TrainingStatus;

    #[test]
    fn only_a_completed_job_gives_an_artifact() {
        let mut status = AIModelStatus {
            training: Some(TrainingStatus {
                job_name: "j".into(),
                job_status: Some("InProgress".into()),
                artifact_uri: Some("s3://b/out/model.tar.gz".into()),
                failure_reason: None,
            }),
            ..AIModelStatus::default()
        };
        assert_eq!(trained_artifact(Some(&status)), None);
        if let Some(t) = status.training.as_mut() {
            t.job_status = Some("Completed".into());
        }
        assert_eq!(
            trained_artifact(Some(&status)).as_deref(),
            Some("s3://b/out/model.tar.gz")
        );
        assert_eq!(trained_artifact(None), None);
    }
}
