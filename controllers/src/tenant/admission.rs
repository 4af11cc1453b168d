//! The tenant's admission rules, as ValidatingAdmissionPolicies the API server
//! enforces itself (no webhook), built from the spec alone.
//!
//! Two policies per tenant:
//!
//! - `aleph-tenant-<tenant>` holds for everyone, the operator and cluster
//!   admins included: pods (CREATE, UPDATE and the `pods/ephemeralcontainers`
//!   subresource), PersistentVolumeClaims, Services, Ingresses, HTTPRoutes,
//!   and the compliance rules on AIModels and Pipelines. Pods are what runs,
//!   whoever made them, so nothing is exempt there.
//! - `aleph-tenant-<tenant>-owners` holds for the tenant's users only: the pod
//!   templates of workloads (so a bad Deployment is refused at `kubectl apply`,
//!   not later in its ReplicaSet's events), NetworkPolicies that would widen
//!   the tenant's isolation, and changes to the objects the operator made. The
//!   operator, `system:masters` and kube-system's controllers (garbage
//!   collection, namespace deletion, CronJobs) are exempt through
//!   `matchConditions`: their writes are the operator's own or follow from it,
//!   and the pods they lead to are still checked by the first policy.
//!
//! On UPDATE a rule looks only at what changes (new images, a new scheduling
//! constraint, a new Service type), so objects made before a rule existed can
//! still be labelled, scaled, finalized and deleted.

use aleph_crds::keys::TENANT_LABEL;
use aleph_crds::tenant::{ComplianceProfile, Tenant};
use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::build::{
    PolicyRules, cluster_wide_meta, forbid, forbid_saying, policy_meta, policy_with_binding,
    resource_rule,
};
pub use super::cel::NamespaceRoom;
use super::cel::{
    PodSpecCel, cel_list, condition, exemptions, host_allowed, lit, network_policy_within,
    not_the_operator, owner_namespace_rules, pod_rules,
};
use crate::apply::{MANAGED_BY, MANAGER};

/// Creating and updating: what most rules look at.
const WRITE: &[&str] = &["CREATE", "UPDATE"];

/// The name of the tenant's policy (and binding) that holds for everyone.
pub fn admission_policy_name(tenant: &str) -> String {
    format!("aleph-tenant-{tenant}")
}

/// The name of the tenant's policy (and binding) that holds for its users.
pub fn owner_policy_name(tenant: &str) -> String {
    format!("aleph-tenant-{tenant}-owners")
}

/// The policy and binding that hold for everyone in the tenant's namespaces,
/// or None when the tenant has no such rule.
pub fn admission_policy(
    tenant: &Tenant,
    operator_images: &[String],
) -> Option<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    let t = tenant.name_any();
    let a = &tenant.spec.admission;
    let is_pod = "request.resource.group == '' && request.resource.resource == 'pods'";
    let pod = PodSpecCel {
        s: "object.spec",
        old: "oldObject.spec",
    };
    let mut validations = Vec::new();
    if tenant.spec.cordoned {
        validations.push(forbid(
            format!("!({is_pod}) || (request.operation == 'UPDATE' && !(has(request.subResource) && request.subResource == 'ephemeralcontainers'))"),
            format!("tenant {t} is cordoned (rule: cordoned): new pods and ephemeral containers are refused; running pods keep running"),
        ));
    }
    validations.extend(pod_rules(tenant, &pod, is_pod, "pod", operator_images));
    if !a.allowed_storage_classes.is_empty() {
        let list = cel_list(&a.allowed_storage_classes);
        validations.push(forbid(
            format!(
                "request.resource.resource != 'persistentvolumeclaims' \
                 || (has(object.spec.storageClassName) && object.spec.storageClassName in {list}) \
                 || (request.operation == 'UPDATE' && has(oldObject.spec.storageClassName) == has(object.spec.storageClassName) \
                     && (!has(object.spec.storageClassName) || oldObject.spec.storageClassName == object.spec.storageClassName))"
            ),
            format!("tenant {t} (rule: allowedStorageClasses): storageClassName must be one of {}", a.allowed_storage_classes.join(", ")),
        ));
    }
    let is_service = "request.resource.group == '' && request.resource.resource == 'services'";
    let type_unchanged = "(request.operation == 'UPDATE' && has(oldObject.spec.type) && has(object.spec.type) && oldObject.spec.type == object.spec.type)";
    for (allowed, kind, field) in [
        (a.allow_node_ports, "NodePort", "allowNodePorts"),
        (a.allow_load_balancers, "LoadBalancer", "allowLoadBalancers"),
    ] {
        if !allowed {
            validations.push(forbid(
                format!("!({is_service}) || !has(object.spec.type) || object.spec.type != '{kind}' || {type_unchanged}"),
                format!("tenant {t} (rule: {field}): Services of type {kind} are not allowed in this tenant; use ClusterIP (the platform's ingress reaches it)"),
            ));
        }
    }
    if !a.allowed_domains.is_empty() {
        let domains = cel_list(&a.allowed_domains);
        let shown = a.allowed_domains.join(", ");
        let ingress = "request.resource.group == 'networking.k8s.io' && request.resource.resource == 'ingresses'";
        validations.push(forbid(
            format!(
                "!({ingress}) || (!has(object.spec.defaultBackend) \
                 && (has(object.spec.rules) ? object.spec.rules : []).all(r, has(r.host) && {}) \
                 && (has(object.spec.tls) ? object.spec.tls : []).all(x, !has(x.hosts) || x.hosts.all(h, {})))",
                host_allowed("r.host", &domains),
                host_allowed("h", &domains)
            ),
            format!("tenant {t} (rule: allowedDomains): every Ingress rule and TLS host must be one of {shown} or a name under one; a rule without a host or a default backend would take every host and is refused"),
        ));
        let route = "request.resource.group == 'gateway.networking.k8s.io' && request.resource.resource == 'httproutes'";
        validations.push(forbid(
            format!(
                "!({route}) || (has(object.spec.hostnames) && size(object.spec.hostnames) > 0 && object.spec.hostnames.all(h, {}))",
                host_allowed("h", &domains)
            ),
            format!("tenant {t} (rule: allowedDomains): an HTTPRoute must list its hostnames, each one of {shown} or a name under one"),
        ));
    }
    let needs_kms = matches!(
        tenant.spec.compliance,
        ComplianceProfile::Hipaa | ComplianceProfile::Pci
    );
    if needs_kms {
        let profile = match tenant.spec.compliance {
            ComplianceProfile::Pci => "pci",
            _ => "hipaa",
        };
        // Only a spec change is checked, so that objects created before the
        // profile was set can still be updated (finalizers, labels) and deleted.
        let unchanged = "(request.operation == 'UPDATE' && object.spec == oldObject.spec)";
        let steps = "(object.spec.steps + (has(object.spec.finally) ? object.spec.finally : []))";
        validations.push(forbid(
            format!("request.resource.resource != 'aimodels' || {unchanged} || !has(object.spec.training) || has(object.spec.training.kmsKeyId)"),
            format!("tenant {t} (rule: compliance {profile}): a SageMaker training job must name a KMS key (spec.training.kmsKeyId)"),
        ));
        validations.push(forbid(
            format!("request.resource.resource != 'pipelines' || {unchanged} || {steps}.all(s, !has(s.training) || has(s.training.kmsKeyId))"),
            format!("tenant {t} (rule: compliance {profile}): every SageMaker training step must name a KMS key (training.kmsKeyId)"),
        ));
    }
    if validations.is_empty() {
        return None;
    }
    let rules = vec![
        resource_rule("", "v1", WRITE, &["pods", "pods/ephemeralcontainers"]),
        resource_rule("", "v1", WRITE, &["persistentvolumeclaims", "services"]),
        resource_rule("networking.k8s.io", "*", WRITE, &["ingresses"]),
        resource_rule("gateway.networking.k8s.io", "*", WRITE, &["httproutes"]),
        resource_rule("aleph.dev", "*", WRITE, &["aimodels", "pipelines"]),
    ];
    Some(tenant_policy(
        tenant,
        &admission_policy_name(&t),
        PolicyRules {
            rules,
            validations,
            ..PolicyRules::default()
        },
    ))
}

/// Whether NetworkPolicies of the tenant are locked against widening.
pub fn policies_locked(tenant: &Tenant) -> bool {
    tenant.spec.network.lock_policies || tenant.spec.compliance != ComplianceProfile::None
}

/// The policy and binding that hold for the tenant's users (everyone but the
/// operator, cluster admins and kube-system's controllers, named by
/// `operator`, the operator's user name).
pub fn owner_policy(
    tenant: &Tenant,
    operator: &str,
    operator_images: &[String],
    room: &NamespaceRoom,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let t = tenant.name_any();
    let template = PodSpecCel {
        s: "variables.spec",
        old: "variables.oldSpec",
    };
    let is_workload = "variables.isWorkload";
    let mut validations = Vec::new();
    if tenant.spec.cordoned {
        validations.push(forbid(
            format!("!({is_workload}) || request.operation != 'CREATE'"),
            format!("tenant {t} is cordoned (rule: cordoned): new workloads are refused; running pods keep running"),
        ));
    }
    validations.extend(pod_rules(
        tenant,
        &template,
        is_workload,
        "the pod template's",
        operator_images,
    ));
    let a = &tenant.spec.admission;
    if !a.allowed_storage_classes.is_empty() {
        let list = cel_list(&a.allowed_storage_classes);
        validations.push(forbid(
            format!(
                "request.resource.resource != 'statefulsets' || request.operation != 'CREATE' || !has(object.spec.volumeClaimTemplates) \
                 || object.spec.volumeClaimTemplates.all(v, has(v.spec.storageClassName) && v.spec.storageClassName in {list})"
            ),
            format!("tenant {t} (rule: allowedStorageClasses): every volumeClaimTemplate's storageClassName must be one of {}", a.allowed_storage_classes.join(", ")),
        ));
    }
    // The operator's objects: the owners may not change or delete them (the
    // operator would put them back; refusing says so at once).
    let managed = format!(
        "(has(oldObject.metadata.labels) && {} in oldObject.metadata.labels && oldObject.metadata.labels[{}] == {})",
        lit(MANAGED_BY),
        lit(MANAGED_BY),
        lit(MANAGER)
    );
    validations.push(forbid_saying(
        format!("!(request.resource.resource in ['networkpolicies', 'rolebindings', 'resourcequotas', 'limitranges']) || request.operation == 'CREATE' || !{managed}"),
        format!(
            "'tenant {t}: ' + request.resource.resource + ' ' + oldObject.metadata.name + ' is made by the operator from the Tenant {t}; ask the platform team to change the Tenant instead'"
        ),
    ));
    validations.extend(owner_namespace_rules(&t, room));
    if policies_locked(tenant) {
        validations.push(forbid(
            format!("request.resource.resource != 'networkpolicies' || request.operation == 'DELETE' || ({})", network_policy_within(tenant)),
            format!(
                "tenant {t} (rule: {}): a NetworkPolicy here may allow ingress only from pods of its namespace, the tenant's namespaces \
                 (namespaceSelector matchLabels aleph.dev/tenant: {t}) and the platform's namespaces, and egress only to DNS (port 53), \
                 the tenant's namespaces and the Tenant's network.allowedEgress blocks on their listed ports",
                if tenant.spec.compliance == ComplianceProfile::None { "network.lockPolicies".to_string() } else { format!("compliance {}", profile_name(tenant.spec.compliance)) }
            ),
        ));
    }
    let rules = vec![
        resource_rule(
            "apps",
            "v1",
            WRITE,
            &["deployments", "statefulsets", "daemonsets", "replicasets"],
        ),
        resource_rule("batch", "v1", WRITE, &["jobs", "cronjobs"]),
        resource_rule("", "v1", WRITE, &["replicationcontrollers"]),
        resource_rule(
            "networking.k8s.io",
            "v1",
            &["CREATE", "UPDATE", "DELETE"],
            &["networkpolicies"],
        ),
        resource_rule(
            "rbac.authorization.k8s.io",
            "v1",
            &["UPDATE", "DELETE"],
            &["rolebindings"],
        ),
        resource_rule(
            "",
            "v1",
            &["UPDATE", "DELETE"],
            &["resourcequotas", "limitranges"],
        ),
        resource_rule("", "v1", &["CREATE", "DELETE"], &["namespaces"]),
    ];
    let variable = |name: &str, expression: &str| Variable {
        name: name.to_string(),
        expression: expression.to_string(),
    };
    let variables = vec![
        variable(
            "isWorkload",
            "request.resource.resource == 'cronjobs' || (request.resource.resource in ['deployments', 'statefulsets', 'daemonsets', 'replicasets', 'jobs', 'replicationcontrollers'] && has(object.spec.template))",
        ),
        variable(
            "spec",
            "request.resource.resource == 'cronjobs' ? object.spec.jobTemplate.spec.template.spec : object.spec.template.spec",
        ),
        variable(
            "oldSpec",
            "request.operation != 'UPDATE' ? null : request.resource.resource == 'cronjobs' ? oldObject.spec.jobTemplate.spec.template.spec : oldObject.spec.template.spec",
        ),
    ];
    tenant_policy(
        tenant,
        &owner_policy_name(&t),
        PolicyRules {
            rules,
            match_conditions: exemptions(operator),
            variables,
            validations,
        },
    )
}

/// The cluster-wide policy on namespaces created or deleted by users whose
/// right to do so comes from a Tenant (they may `create` the
/// `tenantnamespaces` marker): the namespace must be labelled with a tenant
/// the user owns (the `own` verb on that Tenant). Platform admins (who may
/// update Tenants) and the operator are not concerned; the tenant's owners'
/// policy then checks the name, the count and the labels.
pub fn owner_namespaces_policy(
    operator: &str,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    use super::build::{OWN_VERB, OWNER_NAMESPACES_POLICY, SELF_SERVICE_RESOURCE};
    let owns = |object: &str| {
        format!(
            "has({object}.metadata.labels) && {tl} in {object}.metadata.labels \
             && authorizer.group('aleph.dev').resource('tenants').name({object}.metadata.labels[{tl}]).check({}).allowed()",
            lit(OWN_VERB),
            tl = lit(TENANT_LABEL),
        )
    };
    let rules = PolicyRules {
        rules: vec![resource_rule("", "v1", &["CREATE", "DELETE"], &["namespaces"])],
        match_conditions: vec![
            not_the_operator(operator),
            condition(
                "a-tenant-owner",
                &format!(
                    "authorizer.group('aleph.dev').resource({}).check('create').allowed()",
                    lit(SELF_SERVICE_RESOURCE)
                ),
            ),
            condition(
                "not-a-platform-admin",
                "!authorizer.group('aleph.dev').resource('tenants').check('update').allowed()",
            ),
        ],
        variables: Vec::new(),
        validations: vec![
            forbid(
                format!("request.operation != 'CREATE' || ({})", owns("object")),
                format!(
                    "a namespace a tenant owner creates must be labelled {TENANT_LABEL}: <tenant> with a tenant the user owns, and named <tenant>-<name>"
                ),
            ),
            forbid_saying(
                format!("request.operation != 'DELETE' || ({})", owns("oldObject")),
                "'namespace ' + oldObject.metadata.name + ' does not belong to a tenant the user owns'".to_string(),
            ),
        ],
    };
    policy_with_binding(cluster_wide_meta(OWNER_NAMESPACES_POLICY), rules, None)
}

fn profile_name(profile: ComplianceProfile) -> &'static str {
    match profile {
        ComplianceProfile::None => "none",
        ComplianceProfile::Hipaa => "hipaa",
        ComplianceProfile::Sox => "sox",
        ComplianceProfile::Pci => "pci",
    }
}

/// One of the tenant's policies, owned by it, bound in its namespaces.
fn tenant_policy(
    tenant: &Tenant,
    name: &str,
    rules: PolicyRules,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let tenant_namespaces = MatchResources {
        namespace_selector: Some(LabelSelector {
            match_labels: Some([(TENANT_LABEL.to_string(), tenant.name_any())].into()),
            ..LabelSelector::default()
        }),
        ..MatchResources::default()
    };
    policy_with_binding(policy_meta(tenant, name), rules, Some(tenant_namespaces))
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
