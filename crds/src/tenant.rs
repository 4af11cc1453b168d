//! `Tenant`: an organisation on the cluster, with its namespaces, owners,
//! tenant-wide quota, network isolation, admission rules and compliance profile.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    DeletionPolicy, EgressDestination, QUANTITY_MAX_LENGTH, kind_status, non_negative_quantity,
    request_within_limit,
};

/// An organisation on the cluster: the namespaces it owns, who administers them,
/// how much of the cluster (GPUs included) it may use in total, whom it may talk
/// to, what it may run, and which compliance controls apply.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aleph.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    shortname = "tn",
    category = "aleph",
    status = "TenantStatus",
    doc = "An organisation on the cluster: namespaces, owners, a tenant-wide quota (GPUs too), network isolation, admission rules and a compliance profile.",
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan"),
    printcolumn(name = "Namespaces", type_ = "integer", json_path = ".status.namespaceCount"),
    printcolumn(name = "GPUs", type_ = "string", description = "GPUs used/hard across the tenant", json_path = ".status.gpus"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec.namespaces.all(n, size(self.metadata.name) + size(n) <= 62)").message("tenant name plus namespace name must be at most 62 characters, so that '<tenant>-<name>' is a valid namespace").field_path(".spec.namespaces"),
    validation = Rule::new("size(self.metadata.name) <= 40").message("a tenant name is at most 40 characters")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Who administers the tenant. Each owner gets a RoleBinding in every tenant namespace.
    #[schemars(length(min = 1, max = 64))]
    pub owners: Vec<TenantOwner>,
    /// Short names of the tenant's namespaces; the operator creates `<tenant>-<name>` for each.
    #[schemars(
        length(min = 1, max = 100),
        inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub namespaces: Vec<String>,
    /// The plan: its default quota applies unless `quota` overrides a field.
    /// free: 4 CPU, 8Gi, 0 GPU, 20 pods, 20Gi storage, 2 models, 5 plugins, 5 pipelines.
    /// pro: 32 CPU, 128Gi, 4 GPU, 200 pods, 500Gi, 20 models, 50 plugins, 50 pipelines.
    /// enterprise: 256 CPU, 1Ti, 32 GPU, 2000 pods, 10Ti, 200 models, 500 plugins, 500 pipelines.
    #[serde(default)]
    pub plan: TenantPlan,
    /// Tenant-wide limits; each set field overrides the plan's default. The sum of
    /// usage over all the tenant's namespaces never exceeds them.
    pub quota: Option<TenantQuota>,
    /// Default requests and limits for containers that do not set their own.
    pub limit_range: Option<TenantLimitRange>,
    /// Network isolation between tenants.
    #[serde(default)]
    pub network: TenantNetwork,
    /// What pods in the tenant may run, enforced by the API server at admission.
    #[serde(default)]
    pub admission: TenantAdmission,
    /// Extra RoleBindings made in every tenant namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub additional_role_bindings: Vec<AdditionalRoleBinding>,
    /// When true, new pods are refused in every tenant namespace; running ones keep running.
    #[serde(default)]
    pub cordoned: bool,
    /// When true, the API server refuses to delete this Tenant.
    #[serde(default)]
    pub prevent_deletion: bool,
    /// What happens to the tenant's namespaces when the Tenant is deleted or a
    /// namespace is removed from the list: Delete them, or Retain them (unlabelled).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// A compliance profile: a documented set of controls applied on top of the spec.
    /// hipaa, sox and pci enforce Pod Security `restricted`, deny egress except DNS and
    /// `network.allowedEgress`, and (hipaa, pci) require a KMS key on SageMaker jobs.
    #[serde(default)]
    pub compliance: ComplianceProfile,
    /// Limits the gateway applies to the tenant's API keys, all of them together;
    /// each set field overrides the plan's default.
    #[serde(default)]
    pub gateway: TenantGateway,
}

/// A tenant owner.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'ServiceAccount' ? has(self.__namespace__) : !has(self.__namespace__)").message("namespace is required for a ServiceAccount owner and not allowed otherwise"))]
pub struct TenantOwner {
    /// The kind of subject.
    pub kind: SubjectKind,
    /// The user, group or service account name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The service account's namespace (ServiceAccount owners only).
    pub namespace: Option<String>,
    /// The access the owner gets in every tenant namespace.
    #[serde(default)]
    pub role: OwnerRole,
}

/// A kind of RBAC subject.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SubjectKind {
    /// A user authenticated by the API server.
    User,
    /// A group of users.
    Group,
    /// A Kubernetes service account.
    ServiceAccount,
}

/// The access an owner has: the built-in ClusterRoles `admin`, `edit` and `view`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum OwnerRole {
    /// Full control of the namespace's objects, including RoleBindings.
    #[default]
    Admin,
    /// Read and write most objects, no RBAC.
    Edit,
    /// Read only.
    View,
}

/// A tenant plan.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum TenantPlan {
    /// Small, no GPUs.
    #[default]
    Free,
    /// A team's production workloads, a few GPUs.
    Pro,
    /// A large organisation.
    Enterprise,
}

/// Tenant-wide limits. Unset fields come from the plan.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuota {
    /// Total CPU requests, for example `64`.
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = non_negative_quantity("quota.cpu", "64 or 500m"))]
    pub cpu: Option<Quantity>,
    /// Total memory requests, for example `256Gi`.
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = non_negative_quantity("quota.memory", "256Gi"))]
    pub memory: Option<Quantity>,
    /// Total `nvidia.com/gpu` requests.
    #[schemars(range(min = 0, max = 100000))]
    pub gpus: Option<i64>,
    /// Total pods.
    #[schemars(range(min = 0, max = 1000000))]
    pub pods: Option<i64>,
    /// Total storage requested by PersistentVolumeClaims, for example `1Ti`.
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = non_negative_quantity("quota.storage", "1Ti"))]
    pub storage: Option<Quantity>,
    /// Total AIModels.
    #[schemars(range(min = 0, max = 100000))]
    pub ai_models: Option<i64>,
    /// Total Plugins.
    #[schemars(range(min = 0, max = 100000))]
    pub plugins: Option<i64>,
    /// Total Pipelines.
    #[schemars(range(min = 0, max = 100000))]
    pub pipelines: Option<i64>,
    /// Total namespaces: those in `spec.namespaces` and those the owners create
    /// themselves. While there is room, owners with the admin role may create
    /// namespaces named `<tenant>-<name>` and labelled `aleph.dev/tenant: <tenant>`;
    /// the Tenant adopts them (quota, policies, bindings). Set it to the length of
    /// `spec.namespaces` to turn this off. Plan default: free 3, pro 10, enterprise 100.
    #[schemars(range(min = 0, max = 10000))]
    pub namespaces: Option<i64>,
}

/// The gateway's limits for a tenant: requests and tokens (prompt plus
/// completion) over all of its API keys. Unset fields come from the plan.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantGateway {
    /// Requests admitted per minute. Plan default: free 60, pro 600, enterprise 6000.
    #[schemars(range(min = 0))]
    pub requests_per_minute: Option<i64>,
    /// Tokens per minute. Plan default: free 20000, pro 200000, enterprise 2000000.
    #[schemars(range(min = 0))]
    pub tokens_per_minute: Option<i64>,
    /// Tokens per UTC day. Plan default: free 200000, pro 5000000, enterprise unlimited.
    #[schemars(range(min = 0))]
    pub tokens_per_day: Option<i64>,
}

/// Default container requests and limits (a LimitRange in each namespace).
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = request_within_limit("defaultCpuRequest", "defaultCpuLimit", "limitRange"),
    validation = request_within_limit("defaultMemoryRequest", "defaultMemoryLimit", "limitRange")
)]
pub struct TenantLimitRange {
    /// Default CPU request.
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = non_negative_quantity("limitRange.defaultCpuRequest", "100m"))]
    pub default_cpu_request: Option<Quantity>,
    /// Default CPU limit.
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = non_negative_quantity("limitRange.defaultCpuLimit", "1"))]
    pub default_cpu_limit: Option<Quantity>,
    /// Default memory request.
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = non_negative_quantity("limitRange.defaultMemoryRequest", "128Mi"))]
    pub default_memory_request: Option<Quantity>,
    /// Default memory limit.
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = non_negative_quantity("limitRange.defaultMemoryLimit", "1Gi"))]
    pub default_memory_limit: Option<Quantity>,
}

/// Network isolation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantNetwork {
    /// Deny traffic from other tenants' namespaces (allow within the tenant and from platform namespaces).
    #[serde(default = "yes")]
    pub isolated: bool,
    /// Labels that mark platform namespaces (ingress controllers, monitoring) allowed to reach the tenant.
    #[serde(default = "default_platform_labels")]
    pub platform_namespace_labels: BTreeMap<String, String>,
    /// Egress: `Allow` everything, or `Restricted` to DNS, the tenant itself and `allowedEgress`.
    #[serde(default)]
    pub egress: EgressMode,
    /// Destinations reachable when egress is restricted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_egress: Vec<EgressDestination>,
    /// When true, owners cannot write NetworkPolicies that widen egress or
    /// open ingress beyond the tenant and its platform namespaces, nor change
    /// or delete the operator's policies. Always on under a compliance profile.
    #[serde(default)]
    pub lock_policies: bool,
}

impl Default for TenantNetwork {
    fn default() -> Self {
        Self {
            isolated: true,
            platform_namespace_labels: default_platform_labels(),
            egress: EgressMode::default(),
            allowed_egress: Vec::new(),
            lock_policies: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_platform_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("aleph.dev/platform".to_string(), "true".to_string())])
}

/// Egress mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum EgressMode {
    /// No egress restriction.
    #[default]
    Allow,
    /// Only DNS, the tenant's own namespaces and `allowedEgress`.
    Restricted,
}

/// Admission rules, enforced by ValidatingAdmissionPolicies (no webhook).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantAdmission {
    /// Image registry prefixes pods may pull from, for example `ghcr.io/acme/`; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allowed_registries: Vec<String>,
    /// RuntimeClasses pods may use; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allowed_runtime_classes: Vec<String>,
    /// StorageClasses PersistentVolumeClaims may use; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allowed_storage_classes: Vec<String>,
    /// GPU products (`nvidia.com/gpu.product`) pods may select; any when empty.
    /// When set, a pod that requests `nvidia.com/gpu` must be pinned to them, by
    /// `nodeSelector` or by a required node affinity whose values are all allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allowed_gpu_products: Vec<String>,
    /// DNS domains Ingress and HTTPRoute hostnames must belong to (the domain
    /// itself or any name under it, for example `acme.example.com`); any when
    /// empty. When set, a rule without a host (which matches every host) is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(regex(
            pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        ))
    )]
    pub allowed_domains: Vec<String>,
    /// Whether Services of type NodePort may be made (they open a port on every node).
    #[serde(default)]
    pub allow_node_ports: bool,
    /// Whether Services of type LoadBalancer may be made (they get an external address).
    #[serde(default)]
    pub allow_load_balancers: bool,
}

/// An extra RoleBinding made in every tenant namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalRoleBinding {
    /// The ClusterRole to bind.
    #[schemars(length(min = 1, max = 253))]
    pub cluster_role: String,
    /// Who gets it.
    #[schemars(length(min = 1, max = 64))]
    pub subjects: Vec<TenantOwner>,
}

/// A compliance profile.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ComplianceProfile {
    /// No extra controls.
    #[default]
    None,
    /// HIPAA: restricted pods, restricted egress, KMS keys on SageMaker jobs.
    Hipaa,
    /// SOX: restricted pods, restricted egress.
    Sox,
    /// PCI DSS: restricted pods, restricted egress, KMS keys on SageMaker jobs.
    Pci,
}

kind_status! {
    /// What the operator observed of a Tenant.
    pub struct TenantStatus {
        /// Ready, and what went wrong where something did.
        conditions;
        /// The tenant's namespaces that exist.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub namespaces: Vec<String>,
        /// How many namespaces exist.
        #[serde(default)]
        pub namespace_count: i32,
        /// The namespaces that count against the tenant's namespace limit
        /// (declared and created by its owners) and that limit: what the
        /// owners' admission policy checks a new namespace against.
        pub namespace_room: Option<NamespaceRoom>,
        /// GPUs used/hard, for `kubectl get`.
        pub gpus: Option<String>,
        /// Usage against the tenant-wide quota, by resource name (for example `requests.nvidia.com/gpu`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub usage: BTreeMap<String, ResourceUsage>,
        /// What the tenant's callers used through aleph-gateway, today and this
        /// month (UTC), summed from the gateways' counters by the operator.
        pub gateway_usage: Option<GatewayUsage>,
    }
}

impl TenantStatus {
    /// This status without `gateway_usage` (which has its own writer).
    #[must_use]
    pub fn without_gateway_usage(mut self) -> Self {
        self.gateway_usage = None;
        self
    }
}

/// How many of a tenant's namespaces count against its limit, and the limit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRoom {
    /// The namespaces counted: those `spec.namespaces` declares and those the
    /// owners created, adopted or not.
    pub count: i32,
    /// `spec.quota.namespaces`, or the plan's default.
    pub limit: i32,
}

/// A tenant's use of aleph-gateway in the current UTC day and month.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayUsage {
    /// The UTC day `today` counts (`2026-12-01`).
    pub day: String,
    /// Requests and tokens on `day`.
    pub today: UsageTotals,
    /// The UTC month `this_month` counts (`2026-12`).
    pub month: String,
    /// Requests and tokens in `month`.
    pub this_month: UsageTotals,
    /// When the operator last added to it (RFC 3339).
    pub updated: String,
}

/// Requests answered and tokens the engines reported.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// Requests answered (any status).
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// Used and hard for one resource across the tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceUsage {
    /// Sum of usage over the tenant's namespaces.
    pub used: String,
    /// The tenant-wide limit.
    pub hard: String,
}
