//! Desired children of a Tenant, built from its spec alone (no client).

use std::collections::BTreeMap;

use aleph_crds::keys::{ADMISSION_PROBE_ANNOTATION, ORIGIN_LABEL, QUOTA_READY_LABEL, TENANT_LABEL};
use aleph_crds::tenant::{
    ComplianceProfile, EgressMode, OwnerRole, SubjectKind, Tenant, TenantOwner,
};
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem, LimitRangeSpec, Namespace};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::apply::{controller_ref, standard_labels};

/// The API group of RBAC's kinds.
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The cluster-wide policy refusing pods in a tenant namespace without its quota.
pub const QUOTA_GUARD_POLICY: &str = "aleph-tenant-quota-guard";
/// Name of the per-namespace ResourceQuota.
pub const QUOTA_NAME: &str = "aleph-tenant-quota";
/// Name of the per-namespace LimitRange.
pub const LIMIT_RANGE_NAME: &str = "aleph-tenant-defaults";
/// Name of the isolation NetworkPolicy.
pub const NETWORK_POLICY_NAME: &str = "aleph-tenant-isolation";
/// The cluster-wide policy that refuses to delete a Tenant with `preventDeletion`.
pub const PREVENT_DELETION_POLICY: &str = "aleph-tenant-prevent-deletion";

/// The cluster-wide policy on namespaces that owners create and delete.
pub const OWNER_NAMESPACES_POLICY: &str = "aleph-tenant-owner-namespaces";
/// A verb on a Tenant: its holder may create and delete the tenant's namespaces.
pub const OWN_VERB: &str = "own";
/// A resource that names no object, only a right: whoever may `create` it got
/// the right to create namespaces from a Tenant. The cluster-wide policy on
/// namespaces applies to them.
pub const SELF_SERVICE_RESOURCE: &str = "tenantnamespaces";

/// The full name of a tenant namespace.
pub fn namespace_name(tenant: &str, short: &str) -> String {
    format!("{tenant}-{short}")
}

/// Labels of everything made for `tenant`.
pub fn tenant_labels(tenant: &str) -> BTreeMap<String, String> {
    let mut labels = standard_labels("tenant", tenant);
    labels.insert(TENANT_LABEL.to_string(), tenant.to_string());
    labels
}

fn restricted(tenant: &Tenant) -> bool {
    tenant.spec.compliance != ComplianceProfile::None
}

/// The metadata of a child of `tenant`: its labels and, unless `namespace` is
/// `None` for a cluster-wide child, its namespace; owned by the Tenant.
pub fn owned_meta(tenant: &Tenant, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(tenant_labels(&tenant.name_any())),
        owner_references: Some(controller_ref(tenant).into_iter().collect()),
        ..ObjectMeta::default()
    }
}

/// The namespace `name` of the tenant.
pub fn namespace(tenant: &Tenant, name: &str) -> Namespace {
    let mut labels = tenant_labels(&tenant.name_any());
    if restricted(tenant) {
        for mode in ["enforce", "audit", "warn"] {
            labels.insert(
                format!("pod-security.kubernetes.io/{mode}"),
                "restricted".into(),
            );
        }
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// A namespace an owner created, as the Tenant adopts it.
pub fn adopted_namespace(tenant: &Tenant, name: &str) -> Namespace {
    let mut ns = namespace(tenant, name);
    ns.labels_mut()
        .insert(ORIGIN_LABEL.to_string(), "owner".to_string());
    ns
}

/// The name of the ClusterRole (and its binding) that lets the tenant's admin
/// owners create and delete the tenant's namespaces.
pub fn owner_cluster_role_name(tenant: &str) -> String {
    format!("aleph-tenant-{tenant}-owners")
}

fn rule(group: &str, resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(strings(resources)),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

fn cluster_role_ref(name: &str) -> RoleRef {
    RoleRef {
        api_group: RBAC_GROUP.to_string(),
        kind: "ClusterRole".to_string(),
        name: name.to_string(),
    }
}

/// The ClusterRole and binding that let the tenant's admin owners create
/// namespaces (and delete those not in `spec.namespaces`), or None when no
/// owner is an admin or the tenant has no room for more namespaces. RBAC
/// cannot limit `create` by name: the admission policies do (the cluster-wide
/// one and the tenant's owners' policy).
pub fn owner_cluster_role(
    tenant: &Tenant,
    room: bool,
) -> Option<(ClusterRole, ClusterRoleBinding)> {
    let t = tenant.name_any();
    let subjects: Vec<Subject> = tenant
        .spec
        .owners
        .iter()
        .filter(|o| o.role == OwnerRole::Admin)
        .map(subject)
        .collect();
    if subjects.is_empty() || !room {
        return None;
    }
    let name = owner_cluster_role_name(&t);
    let meta = owned_meta(tenant, &name, None);
    let role = ClusterRole {
        metadata: meta.clone(),
        rules: Some(vec![
            rule("", &["namespaces"], &[], &["create", "delete"]),
            rule("aleph.dev", &[SELF_SERVICE_RESOURCE], &[], &["create"]),
            rule("aleph.dev", &["tenants"], &[&t], &["get", OWN_VERB]),
        ]),
        ..ClusterRole::default()
    };
    let binding = ClusterRoleBinding {
        metadata: meta,
        role_ref: cluster_role_ref(&name),
        subjects: Some(subjects),
    };
    Some((role, binding))
}

/// Default container requests and limits. Requests are always defaulted,
/// because a namespace with a CPU or memory quota refuses pods without them.
pub fn limit_range(tenant: &Tenant, namespace: &str) -> LimitRange {
    let lr = tenant.spec.limit_range.clone().unwrap_or_default();
    let or = |v: Option<Quantity>, d: &str| v.unwrap_or_else(|| Quantity(d.to_string()));
    let default_request = BTreeMap::from([
        ("cpu".to_string(), or(lr.default_cpu_request, "100m")),
        ("memory".to_string(), or(lr.default_memory_request, "128Mi")),
    ]);
    let limits: BTreeMap<String, Quantity> = [
        ("cpu", lr.default_cpu_limit),
        ("memory", lr.default_memory_limit),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|q| (k.to_string(), q)))
    .collect();
    LimitRange {
        metadata: owned_meta(tenant, LIMIT_RANGE_NAME, Some(namespace)),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_string(),
                default_request: Some(default_request),
                default: (!limits.is_empty()).then_some(limits),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

/// Whether egress is restricted: by the spec or by a compliance profile.
pub fn egress_restricted(tenant: &Tenant) -> bool {
    tenant.spec.network.egress == EgressMode::Restricted || restricted(tenant)
}

fn namespaces_labelled(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn ports(protocol: &str, numbers: impl IntoIterator<Item = i32>) -> Vec<NetworkPolicyPort> {
    numbers
        .into_iter()
        .map(|port| NetworkPolicyPort {
            protocol: Some(protocol.to_string()),
            port: Some(IntOrString::Int(port)),
            ..NetworkPolicyPort::default()
        })
        .collect()
}

/// Ingress from the tenant and platform namespaces; egress restricted when asked.
pub fn network_policy(tenant: &Tenant, namespace: &str) -> Option<NetworkPolicy> {
    let net = &tenant.spec.network;
    let restricted_egress = egress_restricted(tenant);
    if !net.isolated && !restricted_egress {
        return None;
    }
    let same_tenant = namespaces_labelled(BTreeMap::from([(
        TENANT_LABEL.to_string(),
        tenant.name_any(),
    )]));
    let mut spec = NetworkPolicySpec {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicySpec::default()
    };
    let mut policy_types = Vec::new();
    if net.isolated {
        let mut from = vec![same_tenant.clone()];
        if !net.platform_namespace_labels.is_empty() {
            from.push(namespaces_labelled(net.platform_namespace_labels.clone()));
        }
        policy_types.push("Ingress".to_string());
        spec.ingress = Some(vec![NetworkPolicyIngressRule {
            from: Some(from),
            ports: None,
        }]);
    }
    if restricted_egress {
        let mut dns = ports("UDP", [53]);
        dns.extend(ports("TCP", [53]));
        let mut rules = vec![
            NetworkPolicyEgressRule {
                ports: Some(dns),
                to: None,
            },
            NetworkPolicyEgressRule {
                ports: None,
                to: Some(vec![same_tenant]),
            },
        ];
        for dest in &net.allowed_egress {
            rules.push(NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: dest.cidr.clone(),
                        except: None,
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: (!dest.ports.is_empty())
                    .then(|| ports("TCP", dest.ports.iter().map(|p| p.0))),
            });
        }
        policy_types.push("Egress".to_string());
        spec.egress = Some(rules);
    }
    spec.policy_types = Some(policy_types);
    Some(NetworkPolicy {
        metadata: owned_meta(tenant, NETWORK_POLICY_NAME, Some(namespace)),
        spec: Some(spec),
    })
}

fn subject(owner: &TenantOwner) -> Subject {
    let (kind, api_group, namespace) = match owner.kind {
        SubjectKind::User => ("User", Some(RBAC_GROUP.to_string()), None),
        SubjectKind::Group => ("Group", Some(RBAC_GROUP.to_string()), None),
        SubjectKind::ServiceAccount => (
            "ServiceAccount",
            None,
            Some(owner.namespace.clone().unwrap_or_default()),
        ),
    };
    Subject {
        kind: kind.to_string(),
        name: owner.name.clone(),
        api_group,
        namespace,
    }
}

fn role_name(role: OwnerRole) -> &'static str {
    match role {
        OwnerRole::Admin => "admin",
        OwnerRole::Edit => "edit",
        OwnerRole::View => "view",
    }
}

/// One RoleBinding per owner role in use, plus the additional bindings.
pub fn role_bindings(tenant: &Tenant, namespace: &str) -> Vec<RoleBinding> {
    let binding = |name: String, cluster_role: &str, subjects: Vec<Subject>| RoleBinding {
        metadata: owned_meta(tenant, &name, Some(namespace)),
        role_ref: cluster_role_ref(cluster_role),
        subjects: Some(subjects),
    };
    let mut out = Vec::new();
    for role in [OwnerRole::Admin, OwnerRole::Edit, OwnerRole::View] {
        let subjects: Vec<Subject> = tenant
            .spec
            .owners
            .iter()
            .filter(|o| o.role == role)
            .map(subject)
            .collect();
        if subjects.is_empty() {
            continue;
        }
        let cluster_role = role_name(role);
        out.push(binding(
            format!("aleph-owners-{cluster_role}"),
            cluster_role,
            subjects,
        ));
    }
    for (i, extra) in tenant.spec.additional_role_bindings.iter().enumerate() {
        out.push(binding(
            format!("aleph-extra-{i}"),
            &extra.cluster_role,
            extra.subjects.iter().map(subject).collect(),
        ));
    }
    out
}

/// A rule of an admission policy: `operations` on `resources` of `group`.
pub fn resource_rule(
    group: &str,
    version: &str,
    operations: &[&str],
    resources: &[&str],
) -> NamedRuleWithOperations {
    let strings = |items: &[&str]| Some(items.iter().map(|s| (*s).to_string()).collect());
    NamedRuleWithOperations {
        api_groups: Some(vec![group.to_string()]),
        api_versions: Some(vec![version.to_string()]),
        operations: strings(operations),
        resources: strings(resources),
        ..NamedRuleWithOperations::default()
    }
}

/// The parts of an admission policy that vary: which requests it sees, who
/// is exempt, the variables its validations share, and the validations.
#[derive(Clone, Debug, Default)]
pub struct PolicyRules {
    /// The requests the policy sees.
    pub rules: Vec<NamedRuleWithOperations>,
    /// Conditions a request must meet for the policy to apply (exemptions).
    pub match_conditions: Vec<MatchCondition>,
    /// Variables the validations share.
    pub variables: Vec<Variable>,
    /// What a request must satisfy.
    pub validations: Vec<Validation>,
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

/// An admission policy of `metadata`, `Fail` on error, and its `Deny`
/// binding of the same metadata, limited to `binding_resources` when given.
pub fn policy_with_binding(
    metadata: ObjectMeta,
    policy: PolicyRules,
    binding_resources: Option<MatchResources>,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let name = metadata.name.clone();
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: metadata.clone(),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: name,
            validation_actions: Some(vec!["Deny".to_string()]),
            match_resources: binding_resources,
            ..ValidatingAdmissionPolicyBindingSpec::default()
        }),
    };
    let policy = ValidatingAdmissionPolicy {
        metadata,
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".to_string()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(policy.rules),
                ..MatchResources::default()
            }),
            match_conditions: non_empty(policy.match_conditions),
            variables: non_empty(policy.variables),
            validations: Some(policy.validations),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        ..ValidatingAdmissionPolicy::default()
    };
    (policy, binding)
}

/// The metadata of one of the operator's cluster-wide objects, not a tenant's.
pub fn cluster_wide_meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(standard_labels("tenant", "all")),
        ..ObjectMeta::default()
    }
}

/// The metadata of the tenant's admission policy `name` (and its binding).
pub fn policy_meta(tenant: &Tenant, name: &str) -> ObjectMeta {
    owned_meta(tenant, name, None)
}

/// One of the operator's cluster-wide admission policies, `Fail` on error,
/// and its `Deny` binding, limited to `binding_resources` when given.
pub fn cluster_policy(
    name: &str,
    rules: Vec<NamedRuleWithOperations>,
    validations: Vec<Validation>,
    binding_resources: Option<MatchResources>,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    policy_with_binding(
        cluster_wide_meta(name),
        PolicyRules {
            rules,
            validations,
            ..PolicyRules::default()
        },
        binding_resources,
    )
}

/// A validation that refuses the request (reason `Forbidden`) when
/// `expression` is false, saying `message`.
pub fn forbid(expression: String, message: String) -> Validation {
    Validation {
        expression,
        message: Some(message),
        reason: Some("Forbidden".to_string()),
        ..Validation::default()
    }
}

/// A validation refusing the operator's admission probe (reason `Invalid`,
/// HTTP 422, so that the operator's refused probes are not taken for a lack
/// of permissions, which a 403 says).
pub fn refuse_probe(expression: String, message: &str) -> Validation {
    Validation {
        expression,
        message: Some(message.to_string()),
        reason: Some("Invalid".to_string()),
        ..Validation::default()
    }
}

/// Like [`forbid`], with a message computed by the CEL `message_expression`
/// (to name the offending value).
pub fn forbid_saying(expression: String, message_expression: String) -> Validation {
    Validation {
        message: None,
        message_expression: Some(message_expression),
        ..forbid(expression, String::new())
    }
}

/// The cluster-wide policy refusing to delete a Tenant whose spec sets `preventDeletion`.
pub fn prevent_deletion_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    cluster_policy(
        PREVENT_DELETION_POLICY,
        vec![resource_rule("aleph.dev", "*", &["DELETE"], &["tenants"])],
        vec![forbid_saying(
            "!has(oldObject.spec.preventDeletion) || oldObject.spec.preventDeletion == false".to_string(),
            "'tenant ' + oldObject.metadata.name + ' has spec.preventDeletion: true; set it to false before deleting the tenant'".to_string(),
        )],
        None,
    )
}

/// The message of the quota guard refusing the operator's probe: the
/// refusal is the proof that the API server enforces the guard.
pub const GUARD_PROBE_REFUSED: &str = "admission probe: the quota guard is in force";

/// The cluster-wide policy refusing pods in a tenant namespace until its
/// ResourceQuota is in place and the tenant's admission rules are in force
/// (the namespace is labelled [`QUOTA_READY_LABEL`] then), so that no pod
/// escapes the quota or the rules. It also refuses a namespace carrying
/// [`ADMISSION_PROBE_ANNOTATION`]: the operator creates one with a
/// server-side dry run (nothing is stored) to learn that the API server has
/// loaded the guard before it creates any tenant namespace.
pub fn quota_guard_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    cluster_policy(
        QUOTA_GUARD_POLICY,
        vec![
            resource_rule("", "v1", &["CREATE"], &["pods"]),
            resource_rule("", "v1", &["CREATE"], &["namespaces"]),
        ],
        vec![
            forbid(
                format!(
                    "request.resource.resource != 'pods' || (has(namespaceObject.metadata.labels) && '{QUOTA_READY_LABEL}' in namespaceObject.metadata.labels && namespaceObject.metadata.labels['{QUOTA_READY_LABEL}'] == 'ready')"
                ),
                "the tenant quota of this namespace is not in place yet: retry in a few seconds"
                    .to_string(),
            ),
            refuse_probe(
                format!(
                    "request.resource.resource != 'namespaces' || !has(object.metadata.annotations) || !('{ADMISSION_PROBE_ANNOTATION}' in object.metadata.annotations)"
                ),
                GUARD_PROBE_REFUSED,
            ),
        ],
        Some(MatchResources {
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: TENANT_LABEL.to_string(),
                    operator: "Exists".to_string(),
                    values: None,
                }]),
                ..LabelSelector::default()
            }),
            ..MatchResources::default()
        }),
    )
}

/// A namespace that only the quota guard refuses (labelled as a tenant's,
/// so that the guard's binding selects it), to be created with a
/// server-side dry run: see [`quota_guard_policy`].
pub fn guard_probe() -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some("aleph-guard-probe".to_string()),
            labels: Some([(TENANT_LABEL.to_string(), "aleph-guard-probe".to_string())].into()),
            annotations: Some(
                [(ADMISSION_PROBE_ANNOTATION.to_string(), "guard".to_string())].into(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::tenant_from_yaml as tenant;

    const ACME: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: Tenant
metadata: { name: acme }
spec:
  owners:
    - { kind: User, name: alice, role: admin }
    - { kind: Group, name: devs, role: edit }
    - { kind: User, name: bob, role: admin }
  namespaces: [research]
  admission:
    allowedRegistries: ["ghcr.io/acme/"]
    allowedGpuProducts: ["NVIDIA-H100-80GB-HBM3"]
  cordoned: true
  compliance: hipaa
"#;

    #[test]
    fn the_quota_guard_holds_pods_and_refuses_only_the_probe_among_namespaces() {
        let (policy, binding) = quota_guard_policy();
        let spec = policy.spec.expect("spec");
        let rules: Vec<_> = spec
            .match_constraints
            .and_then(|m| m.resource_rules)
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.resources, r.operations))
            .collect();
        let create = Some(vec!["CREATE".to_string()]);
        assert_eq!(
            rules,
            [
                (Some(vec!["pods".to_string()]), create.clone()),
                (Some(vec!["namespaces".to_string()]), create)
            ]
        );
        let validations = spec.validations.unwrap_or_default();
        assert_eq!(validations.len(), 2);
        // Each rule looks at its own kind only.
        assert!(
            validations[0]
                .expression
                .starts_with("request.resource.resource != 'pods' || ")
        );
        assert!(
            validations[1]
                .expression
                .starts_with("request.resource.resource != 'namespaces' || ")
        );
        assert!(
            validations[1]
                .expression
                .contains(ADMISSION_PROBE_ANNOTATION)
        );
        assert_eq!(validations[1].message.as_deref(), Some(GUARD_PROBE_REFUSED));
        // 422, not 403: a refused probe is not a missing permission.
        assert_eq!(validations[1].reason.as_deref(), Some("Invalid"));
        // The probe is a namespace the guard's binding selects.
        let probe = guard_probe();
        let selector = binding
            .spec
            .and_then(|s| s.match_resources)
            .and_then(|m| m.namespace_selector)
            .and_then(|s| s.match_expressions)
            .expect("a selector on the tenant label");
        assert_eq!(selector[0].key, TENANT_LABEL);
        assert!(probe.labels().contains_key(TENANT_LABEL));
        assert!(probe.annotations().contains_key(ADMISSION_PROBE_ANNOTATION));
    }

    #[test]
    fn owners_are_grouped_by_role() {
        let t = tenant(ACME);
        let rbs = role_bindings(&t, "acme-research");
        assert_eq!(rbs.len(), 2);
        let admin = &rbs[0];
        assert_eq!(admin.role_ref.name, "admin");
        assert_eq!(admin.subjects.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            admin.metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn compliance_restricts_pods_and_egress() {
        let t = tenant(ACME);
        let ns = namespace(&t, "acme-research");
        let labels = ns.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels
                .get("pod-security.kubernetes.io/enforce")
                .map(String::as_str),
            Some("restricted")
        );
        assert_eq!(labels.get(TENANT_LABEL).map(String::as_str), Some("acme"));
        let np = network_policy(&t, "acme-research").expect("isolated");
        let types = np.spec.and_then(|s| s.policy_types).unwrap_or_default();
        assert_eq!(types, vec!["Ingress".to_string(), "Egress".to_string()]);
    }

    #[test]
    fn limit_range_always_defaults_requests() {
        let t = tenant(ACME);
        let lr = limit_range(&t, "acme-research");
        let item = &lr.spec.expect("spec").limits[0];
        assert!(
            item.default_request
                .as_ref()
                .is_some_and(|d| d.contains_key("cpu") && d.contains_key("memory"))
        );
    }
}
