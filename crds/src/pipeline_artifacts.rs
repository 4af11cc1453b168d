//! Artifacts: files a step leaves in an S3 bucket (AWS, or any S3-compatible
//! store) for later steps, with their digests in the run's status, and the
//! memoization that reuses them. The fields live in [`crate::pipeline`]'s
//! types.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretRef;

/// Where a pipeline's artifacts are kept.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStore {
    /// The S3 bucket.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// The start of every object key. A run's artifacts are under
    /// `PREFIX/NAMESPACE/RUN/STEP/ATTEMPT/`, a memoized step's under
    /// `PREFIX/NAMESPACE/cache/KEY/`.
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$")
    )]
    pub prefix: Option<String>,
    /// A Secret whose keys become the environment of the containers that
    /// move artifacts: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, and
    /// optionally `AWS_REGION` and `AWS_ENDPOINT_URL_S3` (for an
    /// S3-compatible store). When unset, they use the identity of the steps'
    /// ServiceAccount (`serviceAccountName`: EKS IRSA or Pod Identity).
    pub credentials_secret: Option<SecretRef>,
    /// Delete (the default): a run's artifacts are deleted with the run.
    /// Keep: they stay. Memoized artifacts outlive the runs (later runs reuse
    /// them): with Delete they are deleted with the Pipeline, with Keep they stay.
    #[serde(default)]
    pub retention: ArtifactRetention,
}

/// What happens to a run's artifacts when the run is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ArtifactRetention {
    /// Deleted with the run.
    #[default]
    Delete,
    /// Kept.
    Keep,
}

/// The artifacts a step takes and leaves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepArtifacts {
    /// Artifacts of earlier steps, downloaded (and their digests checked)
    /// before the step's container starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub inputs: Vec<ArtifactInput>,
    /// Files the step writes, uploaded once its container has exited 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub outputs: Vec<ArtifactOutput>,
}

/// A file a step leaves for later steps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.path.size() > 1 && !self.path.endsWith('/')").message("an artifact's path is a file, for example /out/model.bin").field_path(".path"))]
pub struct ArtifactOutput {
    /// The artifact's name: later steps take it as `steps.STEP.artifacts.NAME`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z0-9_-]{1,63}$"))]
    pub name: String,
    /// The file the step writes. Its directory is an empty directory the
    /// step's container gets (not the image's own), shared by the artifacts
    /// of the same directory.
    #[schemars(length(max = 512), regex(pattern = r"^/.*$"))]
    pub path: String,
}

/// An artifact of an earlier step that a step takes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.path.size() > 1 && !self.path.endsWith('/')").message("an input artifact's path is a file, for example /in/model.bin").field_path(".path"))]
pub struct ArtifactInput {
    /// A name for the input, unique in the step.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z0-9_-]{1,63}$"))]
    pub name: String,
    /// `steps.STEP.artifacts.NAME`: an output artifact of an earlier step.
    #[schemars(
        length(max = 128),
        regex(pattern = r"^steps\.[a-z0-9-]+\.artifacts\.[a-zA-Z0-9_-]+$")
    )]
    pub from: String,
    /// Where the file appears in the step's container (read-only).
    #[schemars(length(max = 512), regex(pattern = r"^/.*$"))]
    pub path: String,
}

/// An artifact a step left: where it is and what it holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRef {
    /// The artifact's name.
    pub name: String,
    /// The object, `s3://BUCKET/KEY`.
    pub uri: String,
    /// The SHA-256 of its contents, in hex.
    pub sha256: String,
    /// Its size in bytes.
    #[serde(default)]
    pub size: i64,
}
