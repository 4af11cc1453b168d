//! The driver of rollout steps: sets an AIModel's source (server-side apply,
//! as the field manager [`ROLLOUT_MANAGER`]) and waits until the model is
//! Ready at the generation that source made.

use aleph_crds::conditions::READY;
use std::collections::BTreeMap;
use std::time::Duration;

use aleph_crds::aimodel::AIModel;
use aleph_crds::common::ConditionStatus;
use aleph_crds::keys::ROLLED_OUT_BY_ANNOTATION;
use aleph_crds::pipeline::{PipelineStep, RolloutAction, StepStatus};
use chrono::TimeDelta;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use super::sagemaker::ARTIFACT_OUTPUT;
use super::{Observed, StartOutcome, StepDriver, Values, attempt_started};
use crate::conditions::find;
use crate::error::Result;
use crate::pipeline::params::{self, StepOutputs};
use crate::pipeline::pass::Pass;

/// The field manager of rollout steps' patches to AIModels: a manager of its
/// own, so the managed fields say that a pipeline set the model's source.
pub const ROLLOUT_MANAGER: &str = "aleph-pipeline";

/// The source a rollout step sets: its literal (substituted) or the
/// `artifactUri` output of `fromStep`.
fn rollout_source(
    rollout: &RolloutAction,
    params: &BTreeMap<String, String>,
    outputs: &StepOutputs,
) -> Result<String, String> {
    if let Some(source) = &rollout.source {
        return params::substitute(source, params, outputs).map_err(|e| e.to_string());
    }
    let from = rollout.from_step.as_deref().unwrap_or_default();
    outputs
        .get(from)
        .and_then(|o| o.get(ARTIFACT_OUTPUT))
        .cloned()
        .ok_or_else(|| {
            format!("step {from} has no {ARTIFACT_OUTPUT} output to roll out: fromStep must name a training step, or a step that writes {ARTIFACT_OUTPUT}")
        })
}

/// Whether a rolled-out AIModel is Ready at (or past) `generation`, and if
/// not, why.
fn model_ready(model: &AIModel, generation: i64) -> Result<(), String> {
    let status = model.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
    let ready = status.and_then(|s| find(&s.conditions, READY));
    if observed < generation {
        return Err(format!(
            "its controller has not observed generation {generation} yet (observedGeneration {observed})"
        ));
    }
    match ready {
        Some(c)
            if c.status == ConditionStatus::True
                && c.observed_generation.is_none_or(|g| g >= generation) =>
        {
            Ok(())
        }
        Some(c) => Err(format!(
            "Ready is {:?} ({}): {}",
            c.status, c.reason, c.message
        )),
        None => Err("it has no Ready condition yet".to_string()),
    }
}

/// How long to wait before looking at a rollout again: often at first, then
/// less so, at most every 30 seconds.
fn rollout_poll(elapsed: TimeDelta) -> Duration {
    Duration::from_secs(
        u64::try_from(elapsed.num_seconds() / 10)
            .unwrap_or(0)
            .clamp(2, 30),
    )
}

/// A rollout step, in one pass.
pub(in crate::pipeline) struct RolloutStep<'p, 'c> {
    pub(in crate::pipeline) pass: &'p mut Pass<'c>,
    pub(in crate::pipeline) step: &'p PipelineStep,
    pub(in crate::pipeline) rollout: &'p RolloutAction,
}

impl StepDriver for RolloutStep<'_, '_> {
    async fn start(&mut self, _attempt: i32, _values: &Values<'_>) -> Result<StartOutcome> {
        Ok(StartOutcome::Started {
            job_name: None,
            // Observed at once on the next pass, which sets the source.
            observed: Observed::Running {
                message: Some("setting the AIModel's source".into()),
                recheck: Some(Duration::from_millis(100)),
            },
        })
    }

    async fn observe(&mut self, s: &StepStatus, values: &Values<'_>) -> Result<Observed> {
        let (step, rollout) = (self.step, self.rollout);
        let uri = match rollout_source(rollout, values.params, &values.outputs) {
            Ok(uri) => uri,
            Err(why) => return Ok(Observed::Failed(why)),
        };
        let models: Api<AIModel> =
            Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
        let Some(mut model) = models.get_opt(&rollout.model).await? else {
            return Ok(Observed::Failed(format!(
                "AIModel {} does not exist in namespace {}: create it or fix rollout.model",
                rollout.model, self.pass.namespace
            )));
        };
        if model.spec.source.as_ref().map(|s| s.uri.as_str()) != Some(uri.as_str()) {
            let patch = json!({
                "apiVersion": AIModel::api_version(&()),
                "kind": AIModel::kind(&()),
                "metadata": {
                    "name": rollout.model,
                    "annotations": { ROLLED_OUT_BY_ANNOTATION: self.pass.name },
                },
                "spec": { "source": { "uri": uri } },
            });
            match models
                .patch(
                    &rollout.model,
                    &PatchParams::apply(ROLLOUT_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(patched) => {
                    model = patched;
                    self.pass.event(
                        EventType::Normal,
                        "RolloutStarted",
                        format!(
                            "step {}: AIModel {} now has source {uri} (generation {})",
                            step.name,
                            rollout.model,
                            model.metadata.generation.unwrap_or_default()
                        ),
                    );
                }
                Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                    return Ok(Observed::Failed(format!(
                        "AIModel {} refused source {uri}: {}",
                        rollout.model, e.message
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let generation = model.metadata.generation.unwrap_or(0);
        let why = match model_ready(&model, generation) {
            Ok(()) => {
                return Ok(Observed::Succeeded(BTreeMap::from([
                    ("model".to_string(), rollout.model.clone()),
                    ("source".to_string(), uri),
                    ("generation".to_string(), generation.to_string()),
                ])));
            }
            Err(why) => why,
        };
        let limit = step
            .timeout_seconds
            .map_or(rollout.ready_timeout_seconds, |t| {
                t.min(rollout.ready_timeout_seconds)
            });
        let started = attempt_started(s, self.pass.now);
        let elapsed = self.pass.now - started;
        if elapsed >= TimeDelta::try_seconds(limit).unwrap_or(TimeDelta::MAX) {
            return Ok(Observed::Failed(format!(
                "AIModel {} was not Ready within {limit}s of setting source {uri}: {why}",
                rollout.model
            )));
        }
        Ok(Observed::Running {
            message: Some(format!(
                "waiting for AIModel {} to be Ready with source {uri} (generation {generation}): {why}",
                rollout.model
            )),
            recheck: Some(rollout_poll(elapsed)),
        })
    }

    /// A rollout step has nothing running to stop.
    async fn stop(&mut self, _job_name: &str) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "rollout_tests.rs"]
mod tests;
