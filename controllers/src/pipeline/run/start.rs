//! The first pass of a run: snapshots the Pipeline's spec (with the step
//! templates its steps use expanded), resolves the params and, for
//! `resumeFrom`, plans which steps the earlier run's successes spare; a run
//! whose Pipeline, step template (or earlier run) is not there yet waits, an
//! invalid one fails at once.

use aleph_crds::common::ConditionStatus;
use aleph_crds::conditions::SUCCEEDED;
use aleph_crds::pipeline::{ParamValue, Pipeline, PipelineRunStatus, RunPhase, StepPhase};
use chrono::TimeDelta;
use kube::api::Api;
use kube::runtime::events::EventType;

use super::{Pass, WAIT_FOR_REFERENCE, format_duration, is_finished};
use crate::conditions::{NewCondition, set_condition};
use crate::error::Result;
use crate::pipeline::templates::ExpandError;
use crate::pipeline::{graph, params, scheduler, steptemplate};

impl Pass<'_> {
    /// Fails the run before any step ran.
    pub(super) fn fail_at_start(
        &mut self,
        status: &mut PipelineRunStatus,
        reason: &str,
        message: String,
    ) {
        let now = scheduler::format_time(self.now);
        status.phase = RunPhase::Failed;
        status.start_time.get_or_insert(now.clone());
        status.completion_time = Some(now);
        status.duration = Some(format_duration(TimeDelta::zero()));
        set_condition(
            &mut status.conditions,
            NewCondition::no(SUCCEEDED, reason, message.clone()),
            self.run.metadata.generation,
        );
        let reason: &'static str = match reason {
            "InvalidGraph" => "InvalidGraph",
            "ParameterMissing" => "ParameterMissing",
            "InvalidParameter" => "InvalidParameter",
            "InvalidWorkspaces" => "InvalidWorkspaces",
            "InvalidTemplate" => "InvalidTemplate",
            _ => "InvalidResume",
        };
        self.event(EventType::Warning, reason, message);
    }

    /// The run waits for something it refers to.
    fn wait_at_start(&mut self, status: &mut PipelineRunStatus, reason: &str, message: String) {
        status.phase = RunPhase::Pending;
        set_condition(
            &mut status.conditions,
            NewCondition::new(SUCCEEDED, ConditionStatus::Unknown, reason, message),
            self.run.metadata.generation,
        );
        self.recheck_in(WAIT_FOR_REFERENCE);
    }

    /// The first pass: snapshots the pipeline, resolves the params, plans a
    /// resume. Returns whether the run is ready to advance (false: it waits or
    /// has failed, and `status` says so).
    pub(super) async fn start(&mut self, status: &mut PipelineRunStatus) -> Result<bool> {
        let pipeline_name = self.run.spec.pipeline_ref.name.clone();
        let pipelines: Api<Pipeline> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let Some(pipeline) = pipelines.get_opt(&pipeline_name).await? else {
            let message = format!(
                "pipeline {pipeline_name} does not exist in namespace {}: create it (the run starts when it does) or fix spec.pipelineRef",
                self.namespace
            );
            self.wait_at_start(status, "PipelineNotFound", message);
            return Ok(false);
        };
        // The snapshot has the step templates expanded: a template changed
        // or deleted later does not change this run.
        let spec =
            match steptemplate::expand(&self.ctx.client, &self.namespace, &pipeline.spec).await? {
                Ok(spec) => spec,
                Err(e @ ExpandError::NotFound { .. }) => {
                    let message =
                        format!("pipeline {pipeline_name}: {e}; the run starts once it exists");
                    self.wait_at_start(status, e.reason(), message);
                    return Ok(false);
                }
                Err(e) => {
                    status.pipeline_spec = Some(pipeline.spec.clone());
                    let message = format!("pipeline {pipeline_name}: {e}");
                    self.fail_at_start(status, e.reason(), message);
                    return Ok(false);
                }
            };
        status.pipeline_spec = Some(spec.clone());

        let mut previous: Option<(String, PipelineRunStatus)> = None;
        if let Some(from) = self.run.spec.resume_from.clone() {
            if from == self.name {
                self.fail_at_start(
                    status,
                    "InvalidResume",
                    "a run cannot resume itself: name an earlier run in spec.resumeFrom".into(),
                );
                return Ok(false);
            }
            let Some(earlier) = self.api.get_opt(&from).await? else {
                let message = format!(
                    "spec.resumeFrom names run {from}, which does not exist in namespace {}",
                    self.namespace
                );
                self.fail_at_start(status, "InvalidResume", message);
                return Ok(false);
            };
            if earlier.spec.pipeline_ref.name != pipeline_name {
                let message = format!(
                    "spec.resumeFrom names run {from} of pipeline {}, not of {pipeline_name}: resume a run of the same pipeline",
                    earlier.spec.pipeline_ref.name
                );
                self.fail_at_start(status, "InvalidResume", message);
                return Ok(false);
            }
            let earlier_status = earlier.status.unwrap_or_default();
            if !is_finished(earlier_status.phase) {
                let message = format!(
                    "waiting for run {from} (named in spec.resumeFrom) to finish; cancel it to resume sooner"
                );
                status.pipeline_spec = None;
                self.wait_at_start(status, "WaitingForResumeFrom", message);
                return Ok(false);
            }
            previous = Some((from, earlier_status));
        }

        let graph = match graph::validate(&spec) {
            Ok(graph) => graph,
            Err(e) => {
                let message = format!("pipeline {pipeline_name}: {e}");
                self.fail_at_start(status, e.reason(), message);
                return Ok(false);
            }
        };
        // A resumed run keeps the earlier run's param values unless it gives its own.
        let mut given: Vec<ParamValue> = previous
            .iter()
            .flat_map(|(_, p)| p.params.iter())
            .filter(|(k, _)| spec.params.iter().any(|p| &p.name == *k))
            .filter(|(k, _)| !self.run.spec.params.iter().any(|p| &p.name == *k))
            .map(|(k, v)| ParamValue {
                name: k.clone(),
                value: v.clone(),
            })
            .collect();
        given.extend(self.run.spec.params.iter().cloned());
        let params = match params::resolve_params(&spec.params, &given) {
            Ok(params) => params,
            Err(e) => {
                let message = format!("pipeline {pipeline_name}: {e}");
                self.fail_at_start(status, e.reason(), message);
                return Ok(false);
            }
        };
        status.params = params;
        status.steps = match &previous {
            Some((_, earlier)) => scheduler::resume_plan(&spec, &earlier.steps),
            None => graph.initial_statuses(),
        };
        status.phase = RunPhase::Running;
        status.start_time = Some(scheduler::format_time(self.now));
        let mut note = format!("started pipeline {pipeline_name}: {} steps", graph.len());
        if let Some((from, _)) = &previous {
            let reused: Vec<&str> = status
                .steps
                .iter()
                .filter(|s| s.phase == StepPhase::Reused)
                .map(|s| s.name.as_str())
                .collect();
            if reused.is_empty() {
                note.push_str(&format!(
                    "; resuming {from}: no step can be reused, all run again"
                ));
            } else {
                note.push_str(&format!(
                    "; resuming {from}: reusing {}, running the rest again",
                    reused.join(", ")
                ));
            }
        }
        self.event(EventType::Normal, "Started", note);
        Ok(true)
    }
}
