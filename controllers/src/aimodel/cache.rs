//! The model cache: a PersistentVolumeClaim per source and namespace, filled
//! once by a download Job, mounted read-only by every serving pod of every
//! model with that source. No client.
//!
//! The claim and the Job are named from a hash of the source URI
//! (`aleph-cache-<hash>`) and carry a (non-controller) owner reference to each
//! model using them, so garbage collection removes them after the last of
//! those models. They are made once and never updated (a Job's template and a
//! claim's size are immutable): the first model's cache settings win.
//! The claim is annotated [`CACHE_READY_ANNOTATION`] once the Job has succeeded, so a
//! cache stays ready even when its Job is deleted.
//!
//! `hf://` and `s3://` sources are downloaded by the project's model-cache image
//! (`e2e/images/model-cache`): a Python with `huggingface_hub` and `boto3` baked
//! in, running `aleph-model-download`, which reads `SOURCE` and `TARGET`, skips
//! files already complete, writes each file atomically, and on failure leaves one
//! line naming the source and the cause in the container's termination message.
//! The image comes from the operator's `--model-cache-image` setting.

use std::collections::BTreeMap;

use aleph_crds::aimodel::AIModel;
use aleph_crds::common::SecretRef;
use aleph_crds::keys::{CACHE_LABEL, CACHE_READY_ANNOTATION, CACHE_SOURCE_ANNOTATION};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, ResourceRequirements, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::runtime::OLLAMA_IMAGE;
use super::validate::Source;
use crate::apply::standard_labels;
use crate::error::{Error, Result};
use crate::tenant::quota::{MEMORY, display, format_quantity, parse_quantity};
use crate::workload::job_condition;

/// Where a download container writes the weights.
pub const TARGET_DIR: &str = "/mnt/model";
/// Retries of a failed download before the Job fails.
pub const DOWNLOAD_RETRIES: i32 = 2;

const MI: i128 = 1 << 20;
const GI: i128 = 1 << 30;

/// The hash naming the cache of `uri`: 10 hex digits of its SHA-256.
pub fn cache_hash(uri: &str) -> String {
    let digest = Sha256::digest(uri.as_bytes());
    digest
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// The name of the claim and Job of `uri`'s cache.
pub fn cache_name(uri: &str) -> String {
    format!("aleph-cache-{}", cache_hash(uri))
}

/// A non-controller owner reference to `model`: one of possibly several users.
pub fn user_ref(model: &AIModel) -> Option<OwnerReference> {
    let meta = model.meta();
    Some(OwnerReference {
        api_version: AIModel::api_version(&()).to_string(),
        kind: AIModel::kind(&()).to_string(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: None,
        block_owner_deletion: None,
    })
}

/// The resources of a download container, from the size the model's spec gives
/// its cache (`spec.cache.size`, also the size limit of a per-pod volume), which
/// bounds how much the download moves:
///
/// - memory request: 1/64 of the size, at least 256Mi and at most 2Gi (50Gi,
///   the default, asks 800Mi): buffers of parallel part downloads, the Python
///   runtime, and page cache of what is being written;
/// - CPU request: 10m per GiB, at least 100m and at most 1 (50Gi asks 500m):
///   hashing, TLS and decompression keep about one core busy at full speed;
/// - memory limit: 4Gi, room for the Hub's chunked transfers on any size.
///
/// A size that does not parse (the API server validates it first) counts as
/// the default 50Gi. The values are written in the API server's canonical
/// form, so what is applied compares equal to what is read back.
pub fn download_resources(cache_size: &str) -> ResourceRequirements {
    let bytes = parse_quantity(cache_size)
        .map(|milli| milli / 1000)
        .unwrap_or(50 * GI);
    let memory = (bytes / 64).clamp(256 * MI, 2 * GI);
    // Whole mebibytes, so the quantity is canonical.
    let memory = (memory + MI - 1) / MI * MI;
    let cpu_milli = (bytes / GI * 10).clamp(100, 1000);
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(format_quantity(cpu_milli))),
            (
                "memory".to_string(),
                Quantity(display(MEMORY, memory * 1000)),
            ),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("4Gi".to_string()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The container that puts the weights of `source` into [`TARGET_DIR`]: the
/// cache Job's, or a serving pod's init container when the cache is off.
/// `image` downloads `hf://` and `s3://` sources (the model-cache image);
/// `cache_size` sizes the container's requests ([`download_resources`]).
pub fn download_container(
    source: &Source,
    uri: &str,
    credentials: Option<&SecretRef>,
    image: &str,
    cache_size: &str,
) -> Result<Container> {
    // (image, shell script or None for the image's own entrypoint, environment)
    let (image, script, mut env): (String, Option<String>, Vec<(&str, String)>) = match source {
        Source::HuggingFace { revision, .. } => (
            image.to_string(),
            None,
            vec![
                ("MODEL_REVISION", revision.clone().unwrap_or_default()),
                ("HF_HOME", "/tmp/hf".to_string()),
                ("HF_HUB_DISABLE_TELEMETRY", "1".to_string()),
            ],
        ),
        Source::S3 { .. } => (image.to_string(), None, Vec::new()),
        Source::Oci { image } => (
            image.clone(),
            Some("set -eu\ncp -a /models/. \"$TARGET\"/\n".to_string()),
            Vec::new(),
        ),
        Source::Ollama { name } => (
            OLLAMA_IMAGE.to_string(),
            Some("set -eu\n\
             ollama serve >/tmp/ollama.log 2>&1 &\n\
             i=0\n\
             until ollama list >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 120 ] || { cat /tmp/ollama.log; exit 1; }; sleep 1; done\n\
             ollama pull \"$MODEL_NAME\"\n"
                .to_string()),
            vec![
                ("MODEL_NAME", name.clone()),
                ("OLLAMA_MODELS", TARGET_DIR.to_string()),
                ("OLLAMA_HOST", "127.0.0.1:11434".to_string()),
            ],
        ),
        Source::Pvc { .. } => {
            return Err(Error::InvalidSpec(
                "a pvc:// source is mounted, never downloaded".into(),
            ));
        }
    };
    env.insert(0, ("SOURCE", uri.to_string()));
    env.insert(1, ("TARGET", TARGET_DIR.to_string()));
    // The API server drops empty values: leave them out so that what is
    // applied compares equal to what is read back.
    let env = env
        .into_iter()
        .map(|(name, value)| EnvVar {
            name: name.to_string(),
            value: (!value.is_empty()).then_some(value),
            ..EnvVar::default()
        })
        .collect();
    Ok(Container {
        name: "download".to_string(),
        image: Some(image),
        env: Some(env),
        volume_mounts: Some(vec![VolumeMount {
            name: "model".to_string(),
            mount_path: TARGET_DIR.to_string(),
            ..VolumeMount::default()
        }]),
        resources: Some(download_resources(cache_size)),
        command: script
            .as_ref()
            .map(|script| vec!["sh".to_string(), "-c".to_string(), script.clone()]),
        // The downloader writes its one-line cause to /dev/termination-log; when
        // it dies before (killed for memory), the log's tail says what happened.
        termination_message_policy: script
            .is_none()
            .then(|| "FallbackToLogsOnError".to_string()),
        env_from: crate::workload::secret_env_from(credentials),
        ..Container::default()
    })
}

fn cache_labels(uri: &str) -> BTreeMap<String, String> {
    standard_labels("cache", &cache_hash(uri))
}

/// The metadata of a cache's claim and Job: shared by the models that use
/// it, each one an owner.
fn cache_meta(model: &AIModel, uri: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(cache_name(uri)),
        namespace: model.namespace(),
        labels: Some(cache_labels(uri)),
        annotations: Some(BTreeMap::from([(
            CACHE_SOURCE_ANNOTATION.to_string(),
            uri.to_string(),
        )])),
        owner_references: Some(user_ref(model).into_iter().collect()),
        ..ObjectMeta::default()
    }
}

/// The cache claim of `uri` as `model` would make it.
pub fn claim(model: &AIModel, uri: &str) -> PersistentVolumeClaim {
    let cache = &model.spec.cache;
    PersistentVolumeClaim {
        metadata: cache_meta(model, uri),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".to_string()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    cache.size.clone(),
                )])),
                limits: None,
            }),
            storage_class_name: cache.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The download Job of `uri` as `model` would make it; `image` downloads
/// `hf://` and `s3://` sources.
pub fn job(model: &AIModel, uri: &str, source: &Source, image: &str) -> Result<Job> {
    let cache = &model.spec.cache;
    let name = cache_name(uri);
    let credentials = model
        .spec
        .source
        .as_ref()
        .filter(|s| s.uri == uri)
        .and_then(|s| s.credentials_secret.as_ref())
        .or_else(|| {
            model
                .spec
                .canary
                .as_ref()
                .and_then(|c| c.source.as_ref())
                .filter(|s| s.uri == uri)
                .and_then(|s| s.credentials_secret.as_ref())
        });
    let container = download_container(source, uri, credentials, image, &cache.size.0)?;
    Ok(Job {
        metadata: cache_meta(model, uri),
        spec: Some(JobSpec {
            backoff_limit: Some(DOWNLOAD_RETRIES),
            active_deadline_seconds: Some(cache.download_timeout_seconds),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(cache_labels(uri)),
                    annotations: Some(cache.pod_annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    enable_service_links: Some(false),
                    // The identity that reads the source (IRSA, workload identity).
                    service_account_name: model.spec.service_account_name.clone(),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "model".to_string(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: name,
                            read_only: None,
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// Where a cache stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheState {
    /// The claim or the Job does not exist yet, or the claim waits for a volume.
    Pending(String),
    /// The Job runs.
    Downloading(String),
    /// The weights are in the claim.
    Ready,
    /// The Job failed: why, and what to do.
    Failed(String),
}

impl CacheState {
    /// The phase shown in `status.cache.phase`.
    pub fn phase(&self) -> &'static str {
        match self {
            CacheState::Pending(_) => "Pending",
            CacheState::Downloading(_) => "Downloading",
            CacheState::Ready => "Ready",
            CacheState::Failed(_) => "Failed",
        }
    }
}

/// Whether the claim says its weights are in place.
pub fn claim_is_ready(claim: &PersistentVolumeClaim) -> bool {
    claim
        .annotations()
        .get(CACHE_READY_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Whether the Job has completed.
pub fn job_succeeded(job: &Job) -> bool {
    job_condition(job, "Complete").is_some()
}

/// The selector of the download pods of `uri`'s cache.
pub fn pod_selector(uri: &str) -> String {
    format!("{CACHE_LABEL}={}", cache_hash(uri))
}

/// What the download's latest failed attempt left: its container's
/// termination message (the downloader writes one line there naming the
/// source and the cause), or its exit code when it left none.
pub fn last_failure(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter_map(|pod| pod.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter_map(|container| {
            let terminated = container.state.as_ref()?.terminated.as_ref()?;
            if terminated.exit_code == 0 {
                return None;
            }
            let message = terminated
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map_or_else(
                    || format!("the download exited with code {}", terminated.exit_code),
                    str::to_owned,
                );
            Some((terminated.finished_at.as_ref().map(|t| t.0), message))
        })
        .max_by_key(|(finished, _)| *finished)
        .map(|(_, message)| message)
}

fn claim_is_bound(claim: &PersistentVolumeClaim) -> bool {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Bound")
}

/// What an unbound cache volume needs.
fn unbound_cause(claim: &PersistentVolumeClaim, name: &str) -> String {
    let class = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .map_or_else(
            || "the default StorageClass".to_string(),
            |c| format!("StorageClass {c}"),
        );
    format!("{class} must provide a ReadWriteMany volume (`kubectl describe pvc {name}`)")
}

/// The state of `uri`'s cache from its claim, its Job and what the Job's
/// latest failed attempt said (`failure`, from [`last_failure`]).
pub fn state(
    uri: &str,
    claim: Option<&PersistentVolumeClaim>,
    job: Option<&Job>,
    failure: Option<&str>,
    timeout_seconds: i64,
) -> CacheState {
    let name = cache_name(uri);
    if claim.is_some_and(claim_is_ready) || job.is_some_and(job_succeeded) {
        return CacheState::Ready;
    }
    let unbound = claim.filter(|c| !claim_is_bound(c));
    if let Some(job) = job
        && let Some((reason, message)) = job_condition(job, "Failed")
    {
        // The deadline runs from the Job's creation: a volume that never bound
        // is the cause, not a slow download (none started).
        if let Some(claim) = unbound
            && reason == "DeadlineExceeded"
            && failure.is_none()
        {
            return CacheState::Failed(format!(
                "the download of {uri} never started: the cache volume {name} was never bound ({}); once it can be, delete Job {name} to download again",
                unbound_cause(claim, &name)
            ));
        }
        let why = match reason {
            "DeadlineExceeded" => format!(
                "it took longer than spec.cache.downloadTimeoutSeconds ({timeout_seconds}s)"
            ),
            "BackoffLimitExceeded" => format!("it failed {} times", DOWNLOAD_RETRIES + 1),
            _ if message.is_empty() => reason.to_string(),
            _ => format!("{message} ({reason})"),
        };
        let why = match failure {
            Some(failure) => format!("{failure} ({why})"),
            None => why,
        };
        return CacheState::Failed(format!(
            "downloading {uri} into {name} failed: {why}. See `kubectl logs job/{name}`; fix the source or its credentials, then delete Job {name} to download again"
        ));
    }
    let Some(claim) = claim else {
        return CacheState::Pending(format!("making the cache volume {name} for {uri}"));
    };
    if job.is_none() {
        return CacheState::Pending(format!("starting the download of {uri} into {name}"));
    }
    if unbound.is_some() {
        return CacheState::Pending(format!(
            "waiting for the cache volume {name} to be bound: {}",
            unbound_cause(claim, &name)
        ));
    }
    match failure {
        Some(failure) => CacheState::Downloading(format!(
            "downloading {uri} into {name} (at most {timeout_seconds}s); an attempt failed, retrying: {failure}"
        )),
        None => CacheState::Downloading(format!(
            "downloading {uri} into {name} (at most {timeout_seconds}s)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn download_requests_follow_the_cache_size_within_bounds() {
        let requests = |size: &str| {
            let r = download_resources(size).requests.unwrap_or_default();
            (r["cpu"].0.clone(), r["memory"].0.clone())
        };
        assert_eq!(requests("50Gi"), ("500m".into(), "800Mi".into()));
        assert_eq!(requests("1Gi"), ("100m".into(), "256Mi".into()));
        assert_eq!(requests("100Gi"), ("1".into(), "1600Mi".into()));
        assert_eq!(requests("1Ti"), ("1".into(), "2Gi".into()));
        // Not whole mebibytes: rounded up to them.
        assert_eq!(requests("20G"), ("180m".into(), "299Mi".into()));
        assert_eq!(requests("not a size"), requests("50Gi"));
        assert_eq!(
            download_resources("1Gi").limits.unwrap_or_default()["memory"].0,
            "4Gi"
        );
    }

    #[test]
    fn names_are_stable_short_and_per_source() {
        let a = cache_name("hf://org/model");
        assert_eq!(a, cache_name("hf://org/model"));
        assert_ne!(a, cache_name("hf://org/model@v2"));
        assert_eq!(a.len(), "aleph-cache-".len() + 10);
    }

    fn job_with(condition: &str, reason: &str) -> Job {
        serde_json::from_value(json!({
            "metadata": { "name": "j" },
            "status": { "conditions": [{ "type": condition, "status": "True", "reason": reason, "message": "m" }] },
        }))
        .unwrap_or_default()
    }

    #[test]
    fn a_failed_job_explains_itself_and_a_ready_claim_wins() {
        let failed = job_with("Failed", "BackoffLimitExceeded");
        let CacheState::Failed(message) = state("hf://a/b", None, Some(&failed), None, 60) else {
            panic!("a failed Job fails the cache");
        };
        assert!(message.contains("failed 3 times"));
        assert!(message.contains("delete Job aleph-cache-"));
        let deadline = job_with("Failed", "DeadlineExceeded");
        assert!(matches!(
            state("hf://a/b", None, Some(&deadline), None, 60),
            CacheState::Failed(m) if m.contains("downloadTimeoutSeconds (60s)")
        ));
        // A deadline passed while the volume never bound: that is the cause.
        let unbound: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": { "name": "c" },
            "spec": { "storageClassName": "slow" },
            "status": { "phase": "Pending" },
        }))
        .unwrap_or_default();
        let CacheState::Failed(message) =
            state("hf://a/b", Some(&unbound), Some(&deadline), None, 60)
        else {
            panic!("a passed deadline fails the cache");
        };
        assert!(
            message.contains("never started")
                && message.contains("never bound")
                && message.contains("StorageClass slow")
                && !message.contains("downloadTimeoutSeconds"),
            "{message}"
        );
        let ready: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": { "name": "c", "annotations": { CACHE_READY_ANNOTATION: "true" } },
        }))
        .unwrap_or_default();
        assert_eq!(
            state("hf://a/b", Some(&ready), None, None, 60),
            CacheState::Ready
        );
        assert_eq!(
            state("hf://a/b", None, Some(&job_with("Complete", "")), None, 60),
            CacheState::Ready
        );
    }

    fn failed_pod(exit_code: i32, message: Option<&str>, finished: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": format!("p-{finished}") },
            "status": { "containerStatuses": [{
                "name": "download", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": {
                    "exitCode": exit_code, "message": message, "finishedAt": finished,
                } },
            }] },
        }))
        .expect("pod")
    }

    #[test]
    fn the_latest_failed_attempt_speaks_in_its_own_words() {
        let pods = [
            failed_pod(1, Some("s3://m/a: old cause\n"), "2026-01-01T00:00:01Z"),
            failed_pod(
                1,
                Some("s3://m/a: no such object (NoSuchKey)\n"),
                "2026-01-01T00:00:03Z",
            ),
            failed_pod(0, None, "2026-01-01T00:00:05Z"),
        ];
        assert_eq!(
            last_failure(&pods).as_deref(),
            Some("s3://m/a: no such object (NoSuchKey)")
        );
        let silent = [failed_pod(137, None, "2026-01-01T00:00:01Z")];
        assert_eq!(
            last_failure(&silent).as_deref(),
            Some("the download exited with code 137")
        );
        let job = job_with("Failed", "BackoffLimitExceeded");
        let CacheState::Failed(message) = state(
            "s3://m/a",
            None,
            Some(&job),
            last_failure(&pods).as_deref(),
            60,
        ) else {
            panic!("a failed Job is a failed cache");
        };
        assert!(
            message.contains("no such object (NoSuchKey) (it failed 3 times)"),
            "{message}"
        );
    }
}
