//! A deleted run's artifacts: a Job in the run's namespace, with the
//! identity its steps used, deletes every object under the run's prefix;
//! the run keeps its finalizer until the Job has succeeded. A failed
//! deletion is retried, and each failure is a Warning Event on the run.

use std::collections::BTreeMap;
use std::time::Duration;

use aleph_crds::pipeline::PipelineSpec;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::EventType;

use super::Pass;
use crate::apply::delete_ignoring_missing;
use crate::error::Result;
use crate::names::bounded_name;
use crate::pipeline::artifacts;
use crate::pipeline::status::{JobOutcome, job_outcome};
use crate::workload::{plain_env, secret_env_from};

/// The label of a run's artifact-deleting Job: the run's name.
pub const ARTIFACTS_OF_LABEL: &str = "aleph.dev/artifacts-of";
/// How often the Job is looked at.
const POLL: Duration = Duration::from_secs(3);
/// How long after a failed deletion it is tried again.
const RETRY: Duration = Duration::from_secs(30);

/// The Job that deletes the objects under `prefix` of `bucket`.
fn gc_job(
    name: &str,
    run: &str,
    namespace: &str,
    spec: &PipelineSpec,
    bucket: &str,
    prefix: &str,
    image: &str,
) -> Job {
    let store = spec.artifact_store.as_ref();
    let labels = BTreeMap::from([(ARTIFACTS_OF_LABEL.to_string(), run.to_string())]);
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: spec.service_account_name.clone(),
                    containers: vec![Container {
                        name: "delete".into(),
                        image: Some(image.to_string()),
                        command: Some(artifacts::script_command("delete")),
                        env: Some(vec![
                            plain_env("ALEPH_BUCKET", bucket),
                            plain_env("ALEPH_PREFIX", prefix),
                        ]),
                        env_from: secret_env_from(
                            store.and_then(|s| s.credentials_secret.as_ref()),
                        ),
                        resources: Some(artifacts::mover_resources()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

impl Pass<'_> {
    /// Deletes the run's artifacts: starts the Job, or reads what became of
    /// it. None once they are deleted; otherwise when to look again.
    pub(super) async fn delete_artifacts(
        &mut self,
        spec: &PipelineSpec,
    ) -> Result<Option<Duration>> {
        let Some(store) = spec.artifact_store.as_ref() else {
            return Ok(None);
        };
        let prefix = artifacts::run_prefix(store, &self.namespace, &self.name);
        let name = bounded_name(&format!("{}-delete-artifacts", self.name), 63);
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let Some(job) = api.get_opt(&name).await? else {
            let job = gc_job(
                &name,
                &self.name,
                &self.namespace,
                spec,
                &store.bucket,
                &prefix,
                &self.ctx.settings.model_cache_image,
            );
            match api.create(&PostParams::default(), &job).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => {}
                Err(kube::Error::Api(e)) => {
                    let note = format!(
                        "the Job that deletes the run's artifacts (s3://{}/{prefix}) was refused: {}; retrying in {}s (remove the finalizer aleph.dev/cleanup to leave them)",
                        store.bucket,
                        e.message,
                        RETRY.as_secs()
                    );
                    self.event(EventType::Warning, "ArtifactDeletionFailed", note);
                    self.publish().await;
                    return Ok(Some(RETRY));
                }
                Err(e) => return Err(e.into()),
            }
            let note = format!(
                "deleting the run's artifacts under s3://{}/{prefix}",
                store.bucket
            );
            self.event(EventType::Normal, "DeletingArtifacts", note);
            self.publish().await;
            return Ok(Some(POLL));
        };
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let pods = pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await?
            .items;
        match job_outcome(&job, &pods, None) {
            JobOutcome::Running(_) => Ok(Some(POLL)),
            JobOutcome::Succeeded(_) => {
                delete_ignoring_missing(&api, &name).await?;
                Ok(None)
            }
            JobOutcome::Failed(why) => {
                let note = format!(
                    "deleting the run's artifacts (s3://{}/{prefix}) failed: {why}; retrying in {}s (remove the finalizer aleph.dev/cleanup to leave them)",
                    store.bucket,
                    RETRY.as_secs()
                );
                self.event(EventType::Warning, "ArtifactDeletionFailed", note);
                self.publish().await;
                delete_ignoring_missing(&api, &name).await?;
                Ok(Some(RETRY))
            }
        }
    }
}
