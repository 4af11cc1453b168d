//! `Plugin`: a versioned, sandboxed extension: a long-running service or a
//! job template that Pipeline steps run.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ComputeResources, EgressDestination, EnvVar, SecretRef, kind_status, one};

/// A versioned, sandboxed extension running inside a tenant: a service
/// (Deployment and Service) or a job template for Pipeline steps. Upgrades that
/// do not become Ready in time roll back to the last good version.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aleph.dev",
    version = "v1alpha1",
    kind = "Plugin",
    plural = "plugins",
    shortname = "plg",
    category = "aleph",
    namespaced,
    status = "PluginStatus",
    doc = "A versioned, sandboxed extension: a service or a job template for Pipeline steps, rolled back automatically when an upgrade fails.",
    printcolumn(name = "Version", type_ = "string", json_path = ".status.currentVersion"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 52").message("a Plugin name is at most 52 characters")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'service' || has(self.port)").message("a service plugin needs a port").field_path(".port"))]
pub struct PluginSpec {
    /// The plugin's version (semantic versioning), shown in status and on its pods.
    #[schemars(regex(pattern = r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$"))]
    pub version: String,
    /// The image, by tag or digest.
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[a-z0-9.-]+(:[0-9]+)?/[^\s]+$|^[a-z0-9][^\s/]*(/[^\s]+)?$")
    )]
    pub image: String,
    /// `service`: a long-running Deployment with a Service; `job`: a template Pipeline steps run.
    #[serde(default)]
    pub mode: PluginMode,
    /// The port a service plugin listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// The port's protocol.
    #[serde(default)]
    pub protocol: PluginProtocol,
    /// The container's command, arguments, environment, configuration files and Secrets.
    #[serde(flatten)]
    pub container: PluginContainer,
    /// Replicas of a service plugin.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// CPU, memory and GPUs of each pod.
    #[serde(default)]
    pub resources: ComputeResources,
    /// The sandbox. Every pod runs non-root, read-only, with no capabilities,
    /// no privilege escalation and the RuntimeDefault seccomp profile.
    #[serde(default)]
    pub sandbox: PluginSandbox,
    /// RBAC rules the plugin's own ServiceAccount gets in its namespace; none by
    /// default, and then no token is mounted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub permissions: Vec<PluginPermission>,
    /// How long an upgrade may take to become Ready before it is rolled back, in seconds.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 3600))]
    pub progress_deadline_seconds: i32,
    /// Scale to zero and keep the configuration.
    #[serde(default)]
    pub disabled: bool,
    /// Annotations put on the plugin's pods, for example for a service mesh.
    /// Keys starting with `aleph.dev/plugin-` are the operator's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

/// What a plugin's container runs with, in its spec and in each release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginContainer {
    /// The container's command; the image's entrypoint when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The container's arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Configuration files, rendered into a ConfigMap mounted at `/etc/aleph-plugin`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Secrets mounted read-only at `/var/run/secrets/aleph-plugin/<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub secrets: Vec<SecretRef>,
}

fn default_progress_deadline() -> i32 {
    300
}

/// How a plugin runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum PluginMode {
    /// A long-running Deployment with a Service.
    #[default]
    Service,
    /// A job template that Pipeline steps run.
    Job,
}

/// A service plugin's protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PluginProtocol {
    /// Plain TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// HTTP over TCP.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// gRPC over TCP.
    #[serde(rename = "GRPC")]
    Grpc,
}

/// The sandbox around a plugin's pods.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginSandbox {
    /// A RuntimeClass for stronger isolation, for example `gvisor` or `kata`.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub runtime_class_name: Option<String>,
    /// Where the plugin may connect to besides DNS; nowhere else when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allowed_egress: Vec<EgressDestination>,
}

/// One RBAC rule for the plugin's ServiceAccount, in its namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.verbs.exists(v, v == '*') && !self.resources.exists(r, r == '*') && !self.apiGroups.exists(g, g == '*')").message("wildcards are not allowed in plugin permissions: name each API group, resource and verb"))]
pub struct PluginPermission {
    /// API groups; `""` is the core group.
    #[schemars(length(min = 1, max = 16))]
    pub api_groups: Vec<String>,
    /// Resources, for example `configmaps`.
    #[schemars(length(min = 1, max = 32))]
    pub resources: Vec<String>,
    /// Verbs, for example `get`, `list`, `watch`.
    #[schemars(
        length(min = 1, max = 16),
        inner(regex(pattern = r"^(get|list|watch|create|update|patch|delete|deletecollection)$"))
    )]
    pub verbs: Vec<String>,
}

kind_status! {
    /// What the operator observed of a Plugin.
    pub struct PluginStatus {
        /// Ready, Progressing, Degraded.
        conditions;
        /// The version running now.
        pub current_version: Option<String>,
        /// The image running now.
        pub current_image: Option<String>,
        /// The last version that was Ready: the rollback target.
        pub last_good_version: Option<String>,
        /// The image of the last version that was Ready.
        pub last_good_image: Option<String>,
        /// A version that failed and was rolled back; it is not tried again until the spec changes.
        pub failed_version: Option<String>,
        /// When the rollout of the current version started (RFC 3339).
        pub rollout_started: Option<String>,
        /// The generation whose version failed; that spec is not rolled out again
        /// until it changes.
        pub failed_generation: Option<i64>,
        /// Everything that shaped the pods of the last version that was Ready: what a
        /// rollback restores.
        pub last_good_release: Option<PluginRelease>,
        /// The in-cluster address of a service plugin.
        pub endpoint: Option<String>,
    }
}

/// What shapes a plugin's pods: one release of the plugin. An upgrade that
/// fails rolls the pods back to the last release that was Ready.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginRelease {
    /// The version.
    pub version: String,
    /// The image.
    pub image: String,
    /// The container's command, arguments, environment, configuration files and Secrets.
    #[serde(flatten)]
    pub container: PluginContainer,
    /// CPU, memory and GPUs of each pod.
    #[serde(default)]
    pub resources: ComputeResources,
    /// The RuntimeClass.
    pub runtime_class_name: Option<String>,
    /// Annotations of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

impl PluginRelease {
    /// The release a spec declares.
    pub fn of(spec: &PluginSpec) -> Self {
        Self {
            version: spec.version.clone(),
            image: spec.image.clone(),
            container: spec.container.clone(),
            resources: spec.resources.clone(),
            runtime_class_name: spec.sandbox.runtime_class_name.clone(),
            pod_annotations: spec.pod_annotations.clone(),
        }
    }
}
