//! A deleted run's artifacts: a Job in the run's namespace, with the
//! identity its steps used, deletes every object under the run's prefix;
//! the run keeps its finalizer until the Job has succeeded. A failed
//! deletion is retried, and each failure is a Warning Event on the run.
//! A deleted Pipeline's memoized artifacts go the same way ([`drive`]).

use std::collections::BTreeMap;
use std::time::Duration;

use aleph_crds::pipeline::PipelineSpec;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodTemplateSpec};
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

/// The label of an artifact-deleting Job: the name of the run (or the
/// Pipeline) whose artifacts it deletes.
pub const ARTIFACTS_OF_LABEL: &str = "aleph.dev/artifacts-of";
/// How often the Job is looked at.
pub const POLL: Duration = Duration::from_secs(3);
/// How long after a failed deletion it is tried again.
pub const RETRY: Duration = Duration::from_secs(30);

/// The Job `name` that deletes the objects under each of `prefixes` of
/// `bucket`, for `owner` (a run's or a Pipeline's name), with the identity
/// of `spec`'s steps.
pub fn delete_job(
    name: &str,
    owner: &str,
    namespace: &str,
    spec: &PipelineSpec,
    bucket: &str,
    prefixes: &[String],
    image: &str,
) -> Job {
    let store = spec.artifact_store.as_ref();
    let labels = BTreeMap::from([(ARTIFACTS_OF_LABEL.to_string(), owner.to_string())]);
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
                            plain_env("ALEPH_PREFIX", &prefixes.join("\n")),
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

/// What became of a deletion Job.
#[derive(Debug)]
pub enum Deletion {
    /// It has just been created.
    Started,
    /// It is still running.
    Running,
    /// It succeeded, and is deleted.
    Done,
    /// The API server refused it: why.
    Refused(String),
    /// It failed, and is deleted, so the next look starts it again: why.
    Failed(String),
    /// The namespace is being deleted: no Job can start there any more (and
    /// the Secret with the store's credentials is going too), so the
    /// objects stay where they are.
    NamespaceDeleted,
}

/// Creates `job` in `namespace`, or reads what became of it; a finished Job
/// is deleted.
pub async fn drive(client: &kube::Client, namespace: &str, job: &Job) -> Result<Deletion> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let Some(existing) = api.get_opt(&name).await? else {
        return match api.create(&PostParams::default(), job).await {
            Ok(_) => Ok(Deletion::Started),
            Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => Ok(Deletion::Running),
            Err(kube::Error::Api(e)) => {
                let namespaces: Api<Namespace> = Api::all(client.clone());
                let deleted = namespaces
                    .get_opt(namespace)
                    .await?
                    .is_none_or(|n| n.metadata.deletion_timestamp.is_some());
                Ok(if deleted {
                    Deletion::NamespaceDeleted
                } else {
                    Deletion::Refused(e.message)
                })
            }
            Err(e) => Err(e.into()),
        };
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await?
        .items;
    match job_outcome(&existing, &pods, None) {
        JobOutcome::Running(_) => Ok(Deletion::Running),
        JobOutcome::Succeeded(_) => {
            delete_ignoring_missing(&api, &name).await?;
            Ok(Deletion::Done)
        }
        JobOutcome::Failed(why) => {
            delete_ignoring_missing(&api, &name).await?;
            Ok(Deletion::Failed(why))
        }
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
        let job = delete_job(
            &name,
            &self.name,
            &self.namespace,
            spec,
            &store.bucket,
            std::slice::from_ref(&prefix),
            &self.ctx.settings.model_cache_image,
        );
        let (type_, reason, note, after) = match drive(&self.ctx.client, &self.namespace, &job)
            .await?
        {
            Deletion::Running => return Ok(Some(POLL)),
            Deletion::Done => return Ok(None),
            Deletion::NamespaceDeleted => {
                tracing::warn!(
                    namespace = %self.namespace,
                    run = %self.name,
                    "the namespace is being deleted, so the run's artifacts under s3://{}/{prefix} are left there",
                    store.bucket
                );
                return Ok(None);
            }
            Deletion::Started => (
                EventType::Normal,
                "DeletingArtifacts",
                format!(
                    "deleting the run's artifacts under s3://{}/{prefix}",
                    store.bucket
                ),
                POLL,
            ),
            Deletion::Refused(why) => (
                EventType::Warning,
                "ArtifactDeletionFailed",
                format!(
                    "the Job that deletes the run's artifacts (s3://{}/{prefix}) was refused: {why}; retrying in {}s (remove the finalizer aleph.dev/cleanup to leave them)",
                    store.bucket,
                    RETRY.as_secs()
                ),
                RETRY,
            ),
            Deletion::Failed(why) => (
                EventType::Warning,
                "ArtifactDeletionFailed",
                format!(
                    "deleting the run's artifacts (s3://{}/{prefix}) failed: {why}; retrying in {}s (remove the finalizer aleph.dev/cleanup to leave them)",
                    store.bucket,
                    RETRY.as_secs()
                ),
                RETRY,
            ),
        };
        self.event(type_, reason, note);
        self.publish().await;
        Ok(Some(after))
    }
}
