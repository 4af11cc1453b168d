//! The driver of container and plugin steps: each attempt is a Job, built by
//! [`build_step_job`](crate::pipeline::build::build_step_job), and what became
//! of it is read from the Job and its pods by
//! [`job_outcome`](crate::pipeline::status::job_outcome).

use aleph_crds::keys::{ATTEMPT_LABEL, RUN_LABEL, STEP_LABEL};
use aleph_crds::pipeline::{PipelineStep, StepStatus};
use aleph_crds::plugin::Plugin;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};

use super::{Observed, StartOutcome, StepDriver, Values};
use crate::apply::delete_ignoring_missing;
use crate::error::Result;
use crate::pipeline::build::{self, build_step_job};
use crate::pipeline::pass::Pass;
use crate::pipeline::status::{JobOutcome, job_outcome};

/// How often a step whose pod has not started yet is looked at.
const POD_START_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// A container or plugin step, in one pass.
pub(in crate::pipeline) struct JobStep<'p, 'c> {
    pub(in crate::pipeline) pass: &'p mut Pass<'c>,
    pub(in crate::pipeline) step: &'p PipelineStep,
}

impl JobStep<'_, '_> {
    async fn pods_of(&mut self, step: &str, attempt: i32) -> Result<Vec<Pod>> {
        if self.pass.pods.is_none() {
            let api: Api<Pod> = Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
            let selector = format!("{RUN_LABEL}={}", build::label_value(&self.pass.name));
            self.pass.pods = Some(
                api.list(&ListParams::default().labels(&selector))
                    .await?
                    .items,
            );
        }
        let attempt = attempt.to_string();
        Ok(self
            .pass
            .pods
            .iter()
            .flatten()
            .filter(|p| {
                let labels = p.labels();
                labels.get(STEP_LABEL).map(String::as_str) == Some(step)
                    && labels.get(ATTEMPT_LABEL) == Some(&attempt)
            })
            .cloned()
            .collect())
    }
}

impl StepDriver for JobStep<'_, '_> {
    async fn start(&mut self, attempt: i32, values: &Values<'_>) -> Result<StartOutcome> {
        let (step, params, outputs) = (self.step, values.params, &values.outputs);
        let plugin = match &step.plugin {
            Some(action) => {
                let plugins: Api<Plugin> =
                    Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
                plugins.get_opt(&action.name).await?
            }
            None => None,
        };
        let job = match build_step_job(
            &self.pass.run,
            step,
            attempt,
            params,
            outputs,
            plugin.as_ref(),
        ) {
            Ok(job) => job,
            Err(e) => return Ok(StartOutcome::Failed(e.to_string())),
        };
        let job_name = job.name_any();
        let api: Api<Job> = Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => {
                // An earlier pass created it, unless a deleted run of the same name did.
                let existing = api.get_opt(&job_name).await?;
                let ours = existing.as_ref().is_some_and(|j| {
                    j.owner_references()
                        .iter()
                        .any(|o| o.uid == self.pass.uid && o.controller == Some(true))
                });
                if !ours {
                    return Ok(StartOutcome::Blocked(format!(
                        "Job {job_name} exists and belongs to something else (a deleted run of the same name?): waiting for it to go away"
                    )));
                }
            }
            Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
                return Ok(StartOutcome::Failed(format!(
                    "the API server refused its Job: {}",
                    e.message
                )));
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Ok(StartOutcome::Blocked(format!(
                    "the API server refused its Job for now: {}; retrying",
                    e.message
                )));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(StartOutcome::Started {
            job_name: Some(job_name),
            observed: Observed::running(),
        })
    }

    async fn observe(&mut self, s: &StepStatus, values: &Values<'_>) -> Result<Observed> {
        let (step, jobs) = (self.step, values.jobs);
        let Some(job_name) = s.job_name.as_deref() else {
            return Ok(Observed::Failed(
                "no Job was recorded for the attempt".into(),
            ));
        };
        let Some(job) = jobs.get(job_name) else {
            return Ok(Observed::Failed(format!(
                "its Job {job_name} was deleted before it finished"
            )));
        };
        let pods = self.pods_of(&step.name, s.attempts).await?;
        Ok(match job_outcome(job, &pods, step.timeout_seconds) {
            JobOutcome::Running(message) => {
                // A pod that has not started changes nothing the run watches
                // (its Job stays as it is) when the kubelet cannot start it:
                // look again soon, so the run says why.
                let starting = pods.is_empty()
                    || pods.iter().any(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
                    });
                Observed::Running {
                    message,
                    recheck: starting.then_some(POD_START_POLL),
                }
            }
            JobOutcome::Succeeded(outputs) => Observed::Succeeded(outputs),
            JobOutcome::Failed(message) => Observed::Failed(message),
        })
    }

    async fn stop(&mut self, job_name: &str) -> Result<()> {
        let api: Api<Job> = Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
        delete_ignoring_missing(&api, job_name).await?;
        Ok(())
    }
}
