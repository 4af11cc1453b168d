//! Artifacts: files a step leaves in the pipeline's artifact store (an S3
//! bucket) for later steps. Pure: what the pod of a step with artifacts
//! looks like, where its objects go, and the memoization key.
//!
//! A step with artifacts runs in one pod of three parts, sharing the
//! emptyDir [`VOLUME`]:
//!
//! 1. the init container [`FETCH_CONTAINER`] (the model-cache image, which
//!    has Python and boto3) makes the directories of the output artifacts
//!    and downloads the input artifacts, checking each one's SHA-256 against
//!    the digest its producer recorded;
//! 2. the step's own container, with each input mounted (read-only) at its
//!    path and each output's directory an empty directory of the volume; it
//!    is an init container too when the step has outputs, so that
//! 3. the container [`UPLOAD_CONTAINER`] runs only once it has exited 0: it
//!    uploads each output and reports its URI, SHA-256 and size in its
//!    termination message, as `aleph-artifact-NAME=JSON` lines that the
//!    run's reconciler moves from the step's outputs into
//!    `status.steps[].artifacts` ([`split_refs`]).
//!
//! A run's objects are under `PREFIX/NAMESPACE/RUN/`, deleted with the run
//! by a Job running the script's `delete` unless the store's retention is Keep; a
//! memoized step's are under `PREFIX/NAMESPACE/cache/KEY/`, kept for later
//! runs.

use std::collections::BTreeMap;

use aleph_crds::common::SecretRef;
use aleph_crds::pipeline::{PipelineSpec, PipelineStep, StepStatus};
use aleph_crds::pipeline_artifacts::{
    ArtifactOutput, ArtifactRef, ArtifactRetention, ArtifactStore,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, ResourceRequirements, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::build::STEP_CONTAINER;
use crate::workload::{empty_dir, mount, plain_env};

/// The init container that prepares and downloads.
pub const FETCH_CONTAINER: &str = "aleph-fetch";
/// The container that uploads.
pub const UPLOAD_CONTAINER: &str = "aleph-upload";
/// The volume the three share.
pub const VOLUME: &str = "aleph-artifacts";
/// Where they mount it.
pub const DIR: &str = "/aleph/artifacts";
/// The output keys that carry an artifact's reference.
pub const REF_PREFIX: &str = "aleph-artifact-";
/// The annotation of a memoized step's Job: its memoization key.
pub const MEMO_KEY_ANNOTATION: &str = "aleph.dev/memo-key";

/// The script that moves artifacts: `fetch`, `upload` or `delete`.
const SCRIPT: &str = include_str!("artifacts.py");

/// The command that runs the artifact script's `mode` (`fetch`, `upload`
/// or `delete`).
pub fn script_command(mode: &str) -> Vec<String> {
    ["python3", "-c", SCRIPT, mode]
        .iter()
        .map(|s| (*s).to_string())
        .collect()
}

/// An input artifact, resolved to the object it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The input's name in the step.
    pub name: String,
    /// Where the file appears in the step's container.
    pub path: String,
    /// The producing step's artifact.
    pub artifact: ArtifactRef,
}

/// The input artifacts of `step`, from the artifacts the earlier steps left
/// (`steps`); Err says which one is missing.
pub fn resolve_inputs(step: &PipelineStep, steps: &[StepStatus]) -> Result<Vec<Input>, String> {
    let Some(artifacts) = &step.artifacts else {
        return Ok(Vec::new());
    };
    artifacts
        .inputs
        .iter()
        .map(|input| {
            let (producer, name) = input
                .from
                .strip_prefix("steps.")
                .and_then(|rest| rest.split_once(".artifacts."))
                .ok_or_else(|| {
                    format!(
                        "input {}: {} is not steps.STEP.artifacts.NAME",
                        input.name, input.from
                    )
                })?;
            let artifact = steps
                .iter()
                .find(|s| s.name == producer)
                .and_then(|s| s.artifacts.iter().find(|a| a.name == name))
                .ok_or_else(|| {
                    format!(
                        "input {}: step {producer} left no artifact {name}",
                        input.name
                    )
                })?;
            Ok(Input {
                name: input.name.clone(),
                path: input.path.clone(),
                artifact: artifact.clone(),
            })
        })
        .collect()
}

fn under(store: &ArtifactStore, rest: &str) -> String {
    match &store.prefix {
        Some(prefix) => format!("{}/{rest}", prefix.trim_end_matches('/')),
        None => rest.to_string(),
    }
}

/// The key prefix of everything a run leaves (ends with `/`).
pub fn run_prefix(store: &ArtifactStore, namespace: &str, run: &str) -> String {
    under(store, &format!("{namespace}/{run}/"))
}

/// The key prefix under which memoized steps of `namespace` leave their
/// artifacts, one `KEY/` each (ends with `/`).
pub fn cache_prefix(store: &ArtifactStore, namespace: &str) -> String {
    under(store, &format!("{namespace}/cache/"))
}

/// The key prefix of one attempt's artifacts, or of a memoized step's.
pub fn destination(
    store: &ArtifactStore,
    namespace: &str,
    run: &str,
    step: &str,
    attempt: i32,
    memo_key: Option<&str>,
) -> String {
    match memo_key {
        Some(key) => format!("{}{key}/", cache_prefix(store, namespace)),
        None => format!("{}{step}/{attempt}/", run_prefix(store, namespace, run)),
    }
}

fn step_container(job: &Job) -> Option<&Container> {
    let pod = job.spec.as_ref()?.template.spec.as_ref()?;
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .find(|c| c.name == STEP_CONTAINER)
}

/// The memoization key of a step's Job (as built, before [`attach`]): the
/// SHA-256 of its image, command, args and env (but the run's own
/// `ALEPH_*` variables), of its inputs' digests and of its outputs.
pub fn memo_key(job: &Job, inputs: &[Input], outputs: &[ArtifactOutput]) -> String {
    let container = step_container(job);
    let env: Vec<serde_json::Value> = container
        .and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
        .filter(|e| !e.name.starts_with("ALEPH_"))
        .map(|e| json!([e.name, e.value, e.value_from]))
        .collect();
    let identity = json!({
        "image": container.and_then(|c| c.image.clone()),
        "command": container.and_then(|c| c.command.clone()),
        "args": container.and_then(|c| c.args.clone()),
        "env": env,
        "inputs": inputs.iter().map(|i| json!([i.name, i.path, i.artifact.sha256])).collect::<Vec<_>>(),
        "outputs": outputs.iter().map(|o| json!([o.name, o.path])).collect::<Vec<_>>(),
    });
    hex(&Sha256::digest(identity.to_string().as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The directory of a file path, `/` for a file at the root.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A container that moves artifacts: the model-cache image running the
/// script's `mode`, with the store's credentials and the volume.
fn mover(
    name: &str,
    image: &str,
    mode: &str,
    plan: &serde_json::Value,
    credentials: Option<&SecretRef>,
    read_only: bool,
) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        command: Some(script_command(mode)),
        env: Some(vec![plain_env("ALEPH_ARTIFACTS", &plan.to_string())]),
        env_from: crate::workload::secret_env_from(credentials),
        volume_mounts: Some(vec![mount(VOLUME, DIR, read_only)]),
        resources: Some(mover_resources()),
        ..Container::default()
    }
}

/// Requests and limits of the containers that move artifacts: they stream,
/// so memory stays small whatever the files' sizes.
pub fn mover_resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities("50m", "128Mi")),
        limits: Some(quantities("1", "512Mi")),
        ..ResourceRequirements::default()
    }
}

/// Makes a step's Job (as built, with its workspaces) the Job of a step with
/// artifacts: `inputs` resolved, `outputs` uploaded under `destination` (a
/// key prefix ending with `/`) of the store, moved by the model-cache `image`.
pub fn attach(
    job: &mut Job,
    inputs: &[Input],
    outputs: &[ArtifactOutput],
    store: &ArtifactStore,
    destination: &str,
    image: &str,
) {
    if inputs.is_empty() && outputs.is_empty() {
        return;
    }
    let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return;
    };
    let Some(index) = pod.containers.iter().position(|c| c.name == STEP_CONTAINER) else {
        return;
    };
    pod.volumes
        .get_or_insert_with(Vec::new)
        .push(empty_dir(VOLUME));
    let mut step = pod.containers.remove(index);
    let mounts = step.volume_mounts.get_or_insert_with(Vec::new);

    let mut fetched = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let sub = format!("in/{i}");
        mounts.push(VolumeMount {
            name: VOLUME.to_string(),
            mount_path: input.path.clone(),
            sub_path: Some(sub.clone()),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        fetched.push(json!({
            "name": input.name,
            "uri": input.artifact.uri,
            "sha256": input.artifact.sha256,
            "file": format!("{DIR}/{sub}"),
        }));
    }
    let mut dirs: Vec<&str> = Vec::new();
    let mut uploads = Vec::new();
    for output in outputs {
        let dir = parent(&output.path);
        let d = dirs.iter().position(|x| *x == dir).unwrap_or_else(|| {
            dirs.push(dir);
            dirs.len() - 1
        });
        uploads.push(json!({
            "name": output.name,
            "path": output.path,
            "file": format!("{DIR}/out/{d}/{}", base(&output.path)),
            "bucket": store.bucket,
            "key": format!("{destination}{}/{}", output.name, base(&output.path)),
        }));
    }
    for (d, dir) in dirs.iter().enumerate() {
        mounts.push(VolumeMount {
            name: VOLUME.to_string(),
            mount_path: (*dir).to_string(),
            sub_path: Some(format!("out/{d}")),
            ..VolumeMount::default()
        });
    }
    let out_dirs: Vec<String> = (0..dirs.len()).map(|d| format!("{DIR}/out/{d}")).collect();
    let credentials = store.credentials_secret.as_ref();
    let fetch = mover(
        FETCH_CONTAINER,
        image,
        "fetch",
        &json!({ "dirs": out_dirs, "inputs": fetched }),
        credentials,
        false,
    );
    let init = pod.init_containers.get_or_insert_with(Vec::new);
    init.push(fetch);
    if outputs.is_empty() {
        pod.containers.insert(index, step);
        return;
    }
    init.push(step);
    pod.containers.insert(
        index,
        mover(
            UPLOAD_CONTAINER,
            image,
            "upload",
            &json!({ "outputs": uploads }),
            credentials,
            true,
        ),
    );
}

/// Takes the artifact references out of a step's outputs.
pub fn split_refs(
    outputs: BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<ArtifactRef>) {
    let mut refs = Vec::new();
    let mut rest = BTreeMap::new();
    for (key, value) in outputs {
        if key.starts_with(REF_PREFIX) {
            if let Ok(artifact) = serde_json::from_str::<ArtifactRef>(&value) {
                refs.push(artifact);
            }
        } else {
            rest.insert(key, value);
        }
    }
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    (rest, refs)
}

/// Puts artifact references back among outputs, as [`split_refs`] reads them
/// (what a memoization record keeps).
pub fn join_refs(
    outputs: &BTreeMap<String, String>,
    refs: &[ArtifactRef],
) -> BTreeMap<String, String> {
    let mut all = outputs.clone();
    for artifact in refs {
        if let Ok(text) = serde_json::to_string(artifact) {
            all.insert(format!("{REF_PREFIX}{}", artifact.name), text);
        }
    }
    all
}

/// Whether `step`'s output artifacts are the run's, deleted with it: the
/// store's retention is Delete and the step is not memoized.
pub fn collected_with_run(spec: Option<&PipelineSpec>, step: &PipelineStep) -> bool {
    let deletes = spec
        .and_then(|s| s.artifact_store.as_ref())
        .is_some_and(|s| s.retention == ArtifactRetention::Delete);
    deletes
        && !step.memoize
        && step
            .artifacts
            .as_ref()
            .is_some_and(|a| !a.outputs.is_empty())
}

/// Whether a run has artifacts of its own to delete with it: a step whose
/// artifacts are [`collected_with_run`] has started.
pub fn run_has_artifacts(spec: &PipelineSpec, steps: &[StepStatus]) -> bool {
    spec.steps
        .iter()
        .chain(spec.finally.iter())
        .filter(|step| collected_with_run(Some(spec), step))
        .any(|step| steps.iter().any(|s| s.name == step.name && s.attempts > 0))
}

/// The name of the ConfigMap that records a memoized step's outputs.
pub fn memo_record_name(key: &str) -> String {
    format!("aleph-memo-{key}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "artifacts_tests.rs"]
mod tests;
