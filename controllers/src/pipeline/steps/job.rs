//! The driver of container and plugin steps: each attempt is a Job, built by
//! [`build_step_job`](crate::pipeline::build::build_step_job), and what became
//! of it is read from the Job and its pods by
//! [`job_outcome`](crate::pipeline::status::job_outcome).

use std::collections::BTreeMap;

use aleph_crds::keys::{ATTEMPT_LABEL, ITEM_LABEL, PIPELINE_LABEL, RUN_LABEL, STEP_LABEL};
use aleph_crds::pipeline::{Pipeline, PipelineStep, StepStatus};
use aleph_crds::plugin::Plugin;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::fan_out::{self, Instance, Verdict};
use super::{Observed, StartOutcome, StepDriver, Values};
use crate::apply::delete_ignoring_missing;
use crate::error::Result;
use crate::pipeline::artifacts;
use crate::pipeline::build::{self, build_step_job, job_name};
use crate::pipeline::params::ITEM_KEY;
use crate::pipeline::pass::Pass;
use crate::pipeline::status::{JobOutcome, job_outcome};
use crate::pipeline::workspaces;

/// How often a step whose pod has not started yet is looked at.
const POD_START_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// A container or plugin step, in one pass.
pub(in crate::pipeline) struct JobStep<'p, 'c> {
    pub(in crate::pipeline) pass: &'p mut Pass<'c>,
    pub(in crate::pipeline) step: &'p PipelineStep,
}

impl JobStep<'_, '_> {
    /// The pods of an attempt (of one fan-out instance when `item` is given).
    async fn pods_of(&mut self, step: &str, attempt: i32, item: Option<usize>) -> Result<Vec<Pod>> {
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
        let item = item.map(|i| i.to_string());
        Ok(self
            .pass
            .pods
            .iter()
            .flatten()
            .filter(|p| {
                let labels = p.labels();
                labels.get(STEP_LABEL).map(String::as_str) == Some(step)
                    && labels.get(ATTEMPT_LABEL) == Some(&attempt)
                    && item
                        .as_ref()
                        .is_none_or(|i| labels.get(ITEM_LABEL) == Some(i))
            })
            .cloned()
            .collect())
    }

    /// The Job of an attempt (of instance `item` of a fan-out), with the
    /// step's workspaces; Err says why it cannot be built.
    async fn job(
        &mut self,
        attempt: i32,
        values: &Values<'_>,
        item: Option<(usize, &str)>,
    ) -> Result<std::result::Result<Job, String>> {
        let step = self.step;
        let plugin = match &step.plugin {
            Some(action) => {
                let plugins: Api<Plugin> =
                    Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
                plugins.get_opt(&action.name).await?
            }
            None => None,
        };
        let mut params = values.params.clone();
        if let Some((_, value)) = item {
            params.insert(ITEM_KEY.to_string(), value.to_string());
        }
        let mut job = match build_step_job(
            &self.pass.run,
            step,
            attempt,
            &params,
            &values.outputs,
            plugin.as_ref(),
        ) {
            Ok(job) => job,
            Err(e) => return Ok(Err(e.to_string())),
        };
        workspaces::attach(&mut job, step, values.workspaces);
        if let Some((index, value)) = item {
            instance(&mut job, &self.pass.name, &step.name, attempt, index, value);
        }
        let service_account = values.spec.and_then(|s| s.service_account_name.clone());
        if step.container.is_some()
            && let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut())
        {
            pod.service_account_name = service_account;
        }
        Ok(Ok(job))
    }

    /// Gives a step's Job its artifacts; returns its memoization key when
    /// the step is memoized. Err says why the step cannot run.
    fn artifacts(
        &self,
        job: &mut Job,
        attempt: i32,
        values: &Values<'_>,
    ) -> std::result::Result<Option<String>, String> {
        let step = self.step;
        let inputs = artifacts::resolve_inputs(step, values.steps)?;
        let outputs = step
            .artifacts
            .as_ref()
            .map(|a| a.outputs.clone())
            .unwrap_or_default();
        let key = step
            .memoize
            .then(|| artifacts::memo_key(job, &inputs, &outputs));
        if let Some(key) = &key {
            job.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(artifacts::MEMO_KEY_ANNOTATION.to_string(), key.clone());
        }
        if inputs.is_empty() && outputs.is_empty() {
            return Ok(key);
        }
        let store = values
            .spec
            .and_then(|s| s.artifact_store.as_ref())
            .ok_or("the step has artifacts but the pipeline has no artifactStore")?;
        let destination = artifacts::destination(
            store,
            &self.pass.namespace,
            &self.pass.name,
            &step.name,
            attempt,
            key.as_deref(),
        );
        artifacts::attach(
            job,
            &inputs,
            &outputs,
            store,
            &destination,
            &self.pass.ctx.settings.model_cache_image,
        );
        Ok(key)
    }

    /// What an earlier run of a memoized step with the same key left, if
    /// one did.
    async fn memoized(&self, key: &str) -> Result<Option<Observed>> {
        let api: Api<ConfigMap> =
            Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
        let Some(record) = api.get_opt(&artifacts::memo_record_name(key)).await? else {
            return Ok(None);
        };
        let data = record.data.unwrap_or_default();
        let Some(outputs) = data
            .get("outputs")
            .and_then(|o| serde_json::from_str::<BTreeMap<String, String>>(o).ok())
        else {
            return Ok(None);
        };
        let run = data.get("run").cloned().unwrap_or_default();
        Ok(Some(Observed::Reused {
            outputs,
            message: format!(
                "memoized: reused what run {run} left (same image, command, args, env and inputs)"
            ),
        }))
    }

    /// Records what a memoized step left, for later runs: a ConfigMap owned
    /// by the Pipeline, so it goes with it.
    async fn remember(&mut self, key: &str, outputs: &BTreeMap<String, String>) -> Result<()> {
        let pipeline_name = self.pass.run.spec.pipeline_ref.name.clone();
        let pipelines: Api<Pipeline> =
            Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
        let Some(pipeline) = pipelines.get_opt(&pipeline_name).await? else {
            return Ok(());
        };
        let record = ConfigMap {
            metadata: ObjectMeta {
                name: Some(artifacts::memo_record_name(key)),
                namespace: Some(self.pass.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (
                        PIPELINE_LABEL.to_string(),
                        build::label_value(&pipeline_name),
                    ),
                    (STEP_LABEL.to_string(), self.step.name.clone()),
                ])),
                owner_references: pipeline.controller_owner_ref(&()).map(|mut owner| {
                    owner.controller = Some(false);
                    vec![owner]
                }),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (
                    "outputs".to_string(),
                    serde_json::to_string(outputs).unwrap_or_default(),
                ),
                ("run".to_string(), self.pass.name.clone()),
                ("key".to_string(), key.to_string()),
            ])),
            ..ConfigMap::default()
        };
        let api: Api<ConfigMap> =
            Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
        match api.create(&PostParams::default(), &record).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => Ok(()),
            Err(kube::Error::Api(e)) => {
                let note = format!(
                    "step {}: its outputs could not be recorded for memoization ({}): later runs run it again",
                    self.step.name, e.message
                );
                self.pass
                    .event(EventType::Warning, "MemoizationFailed", note);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a Job; None when it was created (now or by an earlier pass),
    /// or why the step cannot start.
    async fn create(&mut self, job: &Job) -> Result<Option<StartOutcome>> {
        let job_name = job.name_any();
        let api: Api<Job> = Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
        match api.create(&PostParams::default(), job).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => {
                // An earlier pass created it, unless a deleted run of the same name did.
                let existing = api.get_opt(&job_name).await?;
                let ours = existing.as_ref().is_some_and(|j| {
                    j.owner_references()
                        .iter()
                        .any(|o| o.uid == self.pass.uid && o.controller == Some(true))
                });
                Ok((!ours).then(|| StartOutcome::Blocked(format!(
                    "Job {job_name} exists and belongs to something else (a deleted run of the same name?): waiting for it to go away"
                ))))
            }
            Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => Ok(Some(
                StartOutcome::Failed(format!("the API server refused its Job: {}", e.message)),
            )),
            Err(kube::Error::Api(e)) if e.code == 403 => Ok(Some(StartOutcome::Blocked(format!(
                "the API server refused its Job for now: {}; retrying",
                e.message
            )))),
            Err(e) => Err(e.into()),
        }
    }

    /// One look at a fan-out: what its instances did, and the next ones started.
    async fn fan_out(&mut self, attempt: i32, values: &Values<'_>) -> Result<Observed> {
        let Some(for_each) = self.step.for_each.as_ref() else {
            return Ok(Observed::Failed("the step has no forEach".into()));
        };
        let items = match fan_out::items(for_each, values.params, &values.outputs) {
            Ok(items) => items,
            Err(why) => return Ok(Observed::Failed(why)),
        };
        let run = self.pass.name.clone();
        let mut instances = Vec::with_capacity(items.len());
        for index in 0..items.len() {
            let name = fan_out::instance_job_name(&run, &self.step.name, attempt, index);
            let state = match values.jobs.get(&name) {
                None => Instance::NotStarted,
                Some(job) => {
                    let pods = self.pods_of(&self.step.name, attempt, Some(index)).await?;
                    match job_outcome(job, &pods, self.step.timeout_seconds) {
                        JobOutcome::Running(_) => Instance::Running,
                        JobOutcome::Succeeded(outputs) => Instance::Succeeded(outputs),
                        JobOutcome::Failed(why) => Instance::Failed(why),
                    }
                }
            };
            instances.push(state);
        }
        let cap = for_each
            .parallelism
            .map(|p| usize::try_from(p.max(1)).unwrap_or(1))
            .or(values.parallelism);
        let allowed = usize::try_from(for_each.allowed_failures.max(0)).unwrap_or(0);
        Ok(match fan_out::verdict(&items, &instances, allowed, cap) {
            Verdict::Going { start, message } => {
                for index in start {
                    let job = match self
                        .job(attempt, values, Some((index, &items[index])))
                        .await?
                    {
                        Ok(job) => job,
                        Err(why) => return Ok(Observed::Failed(format!("item {index}: {why}"))),
                    };
                    match self.create(&job).await? {
                        None => {}
                        Some(StartOutcome::Failed(why)) => {
                            return Ok(Observed::Failed(format!("item {index}: {why}")));
                        }
                        Some(_) => break,
                    }
                }
                Observed::Running {
                    message: Some(format!("fan-out: {message}")),
                    recheck: Some(POD_START_POLL),
                }
            }
            Verdict::Succeeded(outputs) => Observed::Succeeded(outputs),
            Verdict::Failed(why) => {
                // Fail fast: the instances still running are stopped.
                self.stop(&job_name(&run, &self.step.name, attempt)).await?;
                Observed::Failed(why)
            }
        })
    }

    /// Why the step's workspaces keep it from starting now, if they do.
    fn workspace_hold(&self, values: &Values<'_>) -> Option<StartOutcome> {
        if let Some(why) = workspaces::placement_conflict(self.step, values.workspaces) {
            return Some(StartOutcome::Failed(why));
        }
        let waiting: Vec<&str> = self
            .step
            .workspaces
            .iter()
            .filter(|w| values.unplaced.contains(&w.name))
            .map(|w| w.name.as_str())
            .collect();
        (!waiting.is_empty()).then(|| {
            StartOutcome::Blocked(format!(
                "waiting for the step that mounts {} (ReadWriteOnce) to be placed on a node, so that this one runs there too",
                waiting.join(", ")
            ))
        })
    }
}

impl JobStep<'_, '_> {
    /// Whether this step's artifacts go under the run's prefix and are
    /// deleted with the run.
    fn collects_artifacts(&self, values: &Values<'_>) -> bool {
        artifacts::collected_with_run(values.spec, self.step)
    }
}

/// Makes a step's Job the Job of fan-out instance `index`: its name, the
/// item label on the Job and the pod, and the item in the environment.
fn instance(job: &mut Job, run: &str, step: &str, attempt: i32, index: usize, item: &str) {
    job.metadata.name = Some(fan_out::instance_job_name(run, step, attempt, index));
    let label = |labels: &mut Option<BTreeMap<String, String>>| {
        labels
            .get_or_insert_with(BTreeMap::new)
            .insert(ITEM_LABEL.to_string(), index.to_string());
    };
    label(&mut job.metadata.labels);
    if let Some(spec) = job.spec.as_mut() {
        if let Some(meta) = spec.template.metadata.as_mut() {
            label(&mut meta.labels);
        }
        if let Some(pod) = spec.template.spec.as_mut() {
            for c in &mut pod.containers {
                let env = c.env.get_or_insert_with(Vec::new);
                env.push(crate::workload::plain_env("ALEPH_ITEM", item));
                env.push(crate::workload::plain_env(
                    "ALEPH_ITEM_INDEX",
                    &index.to_string(),
                ));
            }
        }
    }
}

impl StepDriver for JobStep<'_, '_> {
    async fn start(&mut self, attempt: i32, values: &Values<'_>) -> Result<StartOutcome> {
        if let Some(hold) = self.workspace_hold(values) {
            return Ok(hold);
        }
        if self.step.for_each.is_some() {
            let observed = self.fan_out(attempt, values).await?;
            return Ok(StartOutcome::Started {
                // The instances' common prefix: what `stop` is given.
                job_name: Some(job_name(&self.pass.name, &self.step.name, attempt)),
                observed,
            });
        }
        let mut job = match self.job(attempt, values, None).await? {
            Ok(job) => job,
            Err(why) => return Ok(StartOutcome::Failed(why)),
        };
        let key = match self.artifacts(&mut job, attempt, values) {
            Ok(key) => key,
            Err(why) => return Ok(StartOutcome::Failed(why)),
        };
        if let Some(key) = &key
            && let Some(reused) = self.memoized(key).await?
        {
            return Ok(StartOutcome::Started {
                job_name: None,
                observed: reused,
            });
        }
        if self.collects_artifacts(values) {
            // The run's artifacts are deleted with it: it keeps the
            // finalizer until they are.
            self.pass.set_finalizer(true).await?;
        }
        if let Some(outcome) = self.create(&job).await? {
            return Ok(outcome);
        }
        Ok(StartOutcome::Started {
            job_name: Some(job.name_any()),
            observed: Observed::running(),
        })
    }

    async fn observe(&mut self, s: &StepStatus, values: &Values<'_>) -> Result<Observed> {
        if self.step.for_each.is_some() {
            return self.fan_out(s.attempts, values).await;
        }
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
        let pods = self.pods_of(&step.name, s.attempts, None).await?;
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
            JobOutcome::Succeeded(outputs) => {
                let key = job
                    .annotations()
                    .get(artifacts::MEMO_KEY_ANNOTATION)
                    .cloned();
                if let Some(key) = key.filter(|_| step.memoize) {
                    self.remember(&key, &outputs).await?;
                }
                Observed::Succeeded(outputs)
            }
            JobOutcome::Failed(message) => Observed::Failed(message),
        })
    }

    async fn stop(&mut self, job_name: &str) -> Result<()> {
        let api: Api<Job> = Api::namespaced(self.pass.ctx.client.clone(), &self.pass.namespace);
        if self.step.for_each.is_some() {
            // Every instance of the step's attempts still there.
            let selector = format!(
                "{RUN_LABEL}={},{STEP_LABEL}={}",
                build::label_value(&self.pass.name),
                self.step.name
            );
            for job in api.list(&ListParams::default().labels(&selector)).await? {
                let running = job
                    .status
                    .as_ref()
                    .is_none_or(|s| s.completion_time.is_none() && s.failed.unwrap_or(0) == 0);
                if running {
                    delete_ignoring_missing(&api, &job.name_any()).await?;
                }
            }
            return Ok(());
        }
        delete_ignoring_missing(&api, job_name).await?;
        Ok(())
    }
}
