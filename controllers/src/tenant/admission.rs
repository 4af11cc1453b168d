//! The tenants' admission rules, as ValidatingAdmissionPolicies the API
//! server enforces itself (no webhook).
//!
//! Two policies, shared by every tenant, take the Tenant as their parameter
//! (`paramKind` Tenant): each tenant has a binding to each, which names the
//! Tenant (`paramRef`) and selects its namespaces. The rules read what the
//! tenant allows from its spec when a request is admitted, so a change of
//! the spec holds at once, and the API server type-checks two policies
//! however many tenants there are.
//!
//! - `aleph-tenants` holds for everyone, the operator and cluster admins
//!   included: pods (CREATE, UPDATE and the `pods/ephemeralcontainers`
//!   subresource), PersistentVolumeClaims, Services, Ingresses, HTTPRoutes,
//!   and the compliance rules on AIModels and Pipelines. Pods are what runs,
//!   whoever made them, so nothing is exempt there.
//! - `aleph-tenants-owners` holds for the tenants' users only: the pod
//!   templates of workloads (so a bad Deployment is refused at `kubectl apply`,
//!   not later in its ReplicaSet's events), NetworkPolicies that would widen
//!   the tenant's isolation, changes to the objects the operator made, and
//!   the namespaces the owners create (within the room the Tenant's status
//!   counts). The operator, `system:masters` and kube-system's controllers
//!   (garbage collection, namespace deletion, CronJobs) are exempt through
//!   `matchConditions`: their writes are the operator's own or follow from
//!   it, and the pods they lead to are still checked by the first policy.
//!
//! On UPDATE a rule looks only at what changes (new images, a new scheduling
//! constraint, a new Service type), so objects made before a rule existed can
//! still be labelled, scaled, finalized and deleted.

use aleph_crds::keys::{ADMISSION_PROBE_ANNOTATION, TENANT_LABEL};
use aleph_crds::tenant::Tenant;
use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, ParamKind, ParamRef, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{Resource, ResourceExt};

use super::build::{
    PolicyRules, cluster_wide_meta, forbid, forbid_saying, policy_meta, policy_with_binding,
    refuse_probe, resource_rule,
};
use super::cel::{
    PodSpecCel, TENANT, admission_variables, condition, exemptions, host_allowed, lit,
    network_policy_within, network_variables, not_the_operator, owner_namespace_rules, param_or,
    pod_rules, room_variable, rule, variable,
};
use crate::apply::{MANAGED_BY, MANAGER};

/// Creating and updating: what most rules look at.
const WRITE: &[&str] = &["CREATE", "UPDATE"];

/// The shared policy that holds for everyone in the tenants' namespaces.
pub const TENANTS_POLICY: &str = "aleph-tenants";
/// The shared policy that holds for the tenants' users.
pub const OWNERS_POLICY: &str = "aleph-tenants-owners";

/// The name of the tenant's binding to [`TENANTS_POLICY`].
pub fn admission_binding_name(tenant: &str) -> String {
    format!("aleph-tenant-{tenant}")
}

/// The name of the tenant's binding to [`OWNERS_POLICY`].
pub fn owner_binding_name(tenant: &str) -> String {
    format!("aleph-tenant-{tenant}-owners")
}

/// The tenant's bindings: to each shared policy, with the Tenant as the
/// parameter, in the tenant's namespaces.
pub fn bindings(tenant: &Tenant) -> [ValidatingAdmissionPolicyBinding; 2] {
    let t = tenant.name_any();
    let binding = |name: String, policy: &str| ValidatingAdmissionPolicyBinding {
        metadata: policy_meta(tenant, &name),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(policy.to_string()),
            param_ref: Some(ParamRef {
                name: Some(t.clone()),
                // The binding goes with the Tenant (it owns it); in between,
                // nothing is held up by a Tenant already gone.
                parameter_not_found_action: Some("Allow".to_string()),
                ..ParamRef::default()
            }),
            validation_actions: Some(vec!["Deny".to_string()]),
            match_resources: Some(MatchResources {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some([(TENANT_LABEL.to_string(), t.clone())].into()),
                    ..LabelSelector::default()
                }),
                ..MatchResources::default()
            }),
        }),
    };
    [
        binding(admission_binding_name(&t), TENANTS_POLICY),
        binding(owner_binding_name(&t), OWNERS_POLICY),
    ]
}

/// A shared policy `name` of `rules`, with the Tenant as its parameter.
/// Labelled with an empty tenant, so that the Tenant controller's watch of
/// the tenants' policies sees it (and puts it back if it goes).
fn shared_policy(name: &str, rules: PolicyRules) -> ValidatingAdmissionPolicy {
    let mut meta = cluster_wide_meta(name);
    meta.labels
        .get_or_insert_default()
        .insert(TENANT_LABEL.to_string(), String::new());
    let (mut policy, _) = policy_with_binding(meta, rules, None);
    if let Some(spec) = policy.spec.as_mut() {
        spec.param_kind = Some(ParamKind {
            api_version: Some(Tenant::api_version(&()).into_owned()),
            kind: Some(Tenant::kind(&()).into_owned()),
        });
    }
    policy
}

/// The policy that holds for everyone in the tenants' namespaces.
/// `operator_images` (what the operator itself runs there) pass the
/// registry rule.
pub fn tenants_policy(operator_images: &[String]) -> ValidatingAdmissionPolicy {
    let is_pod = "request.resource.group == '' && request.resource.resource == 'pods'";
    let pod = PodSpecCel {
        s: "object.spec",
        old: "oldObject.spec",
    };
    let mut validations = vec![
        admission_probe_rule(),
        rule(
            format!(
                "!variables.cordoned || !({is_pod}) || (request.operation == 'UPDATE' && !(has(request.subResource) && request.subResource == 'ephemeralcontainers'))"
            ),
            format!(
                "{TENANT} + ' is cordoned (rule: cordoned): new pods and ephemeral containers are refused; running pods keep running'"
            ),
            "the tenant is cordoned (rule: cordoned): new pods and ephemeral containers are refused",
        ),
    ];
    validations.extend(pod_rules(&pod, is_pod, "pod", operator_images));
    validations.push(rule(
        "size(variables.storageClasses) == 0 || request.resource.resource != 'persistentvolumeclaims' \
         || (has(object.spec.storageClassName) && object.spec.storageClassName in variables.storageClasses) \
         || (request.operation == 'UPDATE' && has(oldObject.spec.storageClassName) == has(object.spec.storageClassName) \
             && (!has(object.spec.storageClassName) || oldObject.spec.storageClassName == object.spec.storageClassName))".to_string(),
        format!("{TENANT} + ' (rule: allowedStorageClasses): storageClassName must be one of ' + variables.storageClasses.join(', ')"),
        "the storageClassName is not one the tenant allows (rule: allowedStorageClasses)",
    ));
    let is_service = "request.resource.group == '' && request.resource.resource == 'services'";
    let type_unchanged = "(request.operation == 'UPDATE' && has(oldObject.spec.type) && has(object.spec.type) && oldObject.spec.type == object.spec.type)";
    for (kind, field) in [
        ("NodePort", "allowNodePorts"),
        ("LoadBalancer", "allowLoadBalancers"),
    ] {
        validations.push(rule(
            format!("variables.{field} || !({is_service}) || !has(object.spec.type) || object.spec.type != '{kind}' || {type_unchanged}"),
            format!("{TENANT} + ' (rule: {field}): Services of type {kind} are not allowed in this tenant; use ClusterIP (the platform\\'s ingress reaches it)'"),
            &format!("Services of type {kind} are not allowed in this tenant (rule: {field})"),
        ));
    }
    let domains = "variables.domains";
    let shown = "variables.domains.join(', ')";
    let ingress =
        "request.resource.group == 'networking.k8s.io' && request.resource.resource == 'ingresses'";
    validations.push(rule(
        format!(
            "size({domains}) == 0 || !({ingress}) || (!has(object.spec.defaultBackend) \
             && (has(object.spec.rules) ? object.spec.rules : []).all(r, has(r.host) && {}) \
             && (has(object.spec.tls) ? object.spec.tls : []).all(x, !has(x.hosts) || x.hosts.all(h, {})))",
            host_allowed("r.host", domains),
            host_allowed("h", domains)
        ),
        format!("{TENANT} + ' (rule: allowedDomains): every Ingress rule and TLS host must be one of ' + {shown} + ' or a name under one; a rule without a host or a default backend would take every host and is refused'"),
        "an Ingress host is not under a domain the tenant allows (rule: allowedDomains)",
    ));
    let route = "request.resource.group == 'gateway.networking.k8s.io' && request.resource.resource == 'httproutes'";
    validations.push(rule(
        format!(
            "size({domains}) == 0 || !({route}) || (has(object.spec.hostnames) && size(object.spec.hostnames) > 0 && object.spec.hostnames.all(h, {}))",
            host_allowed("h", domains)
        ),
        format!("{TENANT} + ' (rule: allowedDomains): an HTTPRoute must list its hostnames, each one of ' + {shown} + ' or a name under one'"),
        "an HTTPRoute hostname is not under a domain the tenant allows (rule: allowedDomains)",
    ));
    // HIPAA and PCI: SageMaker jobs name a KMS key. Only a spec change is
    // checked, so that objects created before the profile was set can still
    // be updated (finalizers, labels) and deleted.
    let needs_kms = "!(variables.compliance in ['hipaa', 'pci'])";
    let unchanged = "(request.operation == 'UPDATE' && object.spec == oldObject.spec)";
    let steps = "(object.spec.steps + (has(object.spec.finally) ? object.spec.finally : []))";
    validations.push(rule(
        format!("{needs_kms} || request.resource.resource != 'aimodels' || {unchanged} || !has(object.spec.training) || has(object.spec.training.kmsKeyId)"),
        format!("{TENANT} + ' (rule: compliance ' + variables.compliance + '): a SageMaker training job must name a KMS key (spec.training.kmsKeyId)'"),
        "the tenant's compliance profile needs a KMS key on SageMaker training jobs (spec.training.kmsKeyId)",
    ));
    validations.push(rule(
        format!("{needs_kms} || request.resource.resource != 'pipelines' || {unchanged} || {steps}.all(s, !has(s.training) || has(s.training.kmsKeyId))"),
        format!("{TENANT} + ' (rule: compliance ' + variables.compliance + '): every SageMaker training step must name a KMS key (training.kmsKeyId)'"),
        "the tenant's compliance profile needs a KMS key on every SageMaker training step (training.kmsKeyId)",
    ));
    let admission = |field: &str, default: &str| param_or(&["spec", "admission", field], default);
    let mut variables = admission_variables();
    variables.extend([
        variable("allowNodePorts", &admission("allowNodePorts", "false")),
        variable(
            "allowLoadBalancers",
            &admission("allowLoadBalancers", "false"),
        ),
        variable("domains", &admission("allowedDomains", "[]")),
    ]);
    let rules = vec![
        resource_rule("", "v1", WRITE, &["pods", "pods/ephemeralcontainers"]),
        resource_rule("", "v1", WRITE, &["persistentvolumeclaims", "services"]),
        resource_rule("networking.k8s.io", "*", WRITE, &["ingresses"]),
        resource_rule("gateway.networking.k8s.io", "*", WRITE, &["httproutes"]),
        resource_rule("aleph.dev", "*", WRITE, &["aimodels", "pipelines"]),
    ];
    shared_policy(
        TENANTS_POLICY,
        PolicyRules {
            rules,
            variables,
            validations,
            ..PolicyRules::default()
        },
    )
}

/// The message of the tenants' policy refusing the operator's admission
/// probe: the refusal is the proof that the tenant's rules are in force.
pub const PROBE_REFUSED: &str = "admission probe: this tenant's admission rules are in force";

/// The rule that refuses every object carrying [`ADMISSION_PROBE_ANNOTATION`].
/// The operator creates one with a server-side dry run (nothing is stored)
/// before it opens a new tenant's namespaces to pods: the API server loads a
/// new binding a moment after it exists (it recompiles its policies about
/// once a second), and a pod admitted in between would skip every rule.
fn admission_probe_rule() -> k8s_openapi::api::admissionregistration::v1::Validation {
    refuse_probe(
        format!(
            "!has(object.metadata.annotations) || !({} in object.metadata.annotations)",
            lit(ADMISSION_PROBE_ANNOTATION)
        ),
        PROBE_REFUSED,
    )
}

/// A Service that only the tenants' policy refuses (no other policy of the
/// operator looks at Services, and it is valid otherwise: headless, no
/// ports), to be created with a server-side dry run in a namespace of
/// `tenant`.
pub fn admission_probe(tenant: &str) -> k8s_openapi::api::core::v1::Service {
    use k8s_openapi::api::core::v1::{Service, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    Service {
        metadata: ObjectMeta {
            name: Some("aleph-admission-probe".to_string()),
            annotations: Some(
                [(ADMISSION_PROBE_ANNOTATION.to_string(), tenant.to_string())].into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The policy that holds for the tenants' users (everyone but the operator,
/// cluster admins and kube-system's controllers; `operator` is the
/// operator's user name).
pub fn owners_policy(operator: &str, operator_images: &[String]) -> ValidatingAdmissionPolicy {
    let template = PodSpecCel {
        s: "variables.spec",
        old: "variables.oldSpec",
    };
    let is_workload = "variables.isWorkload";
    let mut validations = vec![rule(
        format!("!variables.cordoned || !({is_workload}) || request.operation != 'CREATE'"),
        format!(
            "{TENANT} + ' is cordoned (rule: cordoned): new workloads are refused; running pods keep running'"
        ),
        "the tenant is cordoned (rule: cordoned): new workloads are refused",
    )];
    validations.extend(pod_rules(
        &template,
        is_workload,
        "the pod template's",
        operator_images,
    ));
    validations.push(rule(
        "size(variables.storageClasses) == 0 || request.resource.resource != 'statefulsets' || request.operation != 'CREATE' \
         || !has(object.spec.volumeClaimTemplates) \
         || object.spec.volumeClaimTemplates.all(v, has(v.spec.storageClassName) && v.spec.storageClassName in variables.storageClasses)".to_string(),
        format!("{TENANT} + ' (rule: allowedStorageClasses): every volumeClaimTemplate\\'s storageClassName must be one of ' + variables.storageClasses.join(', ')"),
        "a volumeClaimTemplate's storageClassName is not one the tenant allows (rule: allowedStorageClasses)",
    ));
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
            "{TENANT} + ': ' + request.resource.resource + ' ' + oldObject.metadata.name + ' is made by the operator from the Tenant ' + params.metadata.name + '; ask the platform team to change the Tenant instead'"
        ),
    ));
    validations.extend(owner_namespace_rules());
    validations.push(rule(
        format!("!variables.locked || request.resource.resource != 'networkpolicies' || request.operation == 'DELETE' || ({})", network_policy_within()),
        format!(
            "{TENANT} + ' (rule: ' + (variables.compliance == 'none' ? 'network.lockPolicies' : 'compliance ' + variables.compliance) \
             + '): a NetworkPolicy here may allow ingress only from pods of its namespace, the tenant\\'s namespaces \
             (namespaceSelector matchLabels aleph.dev/tenant: ' + params.metadata.name + ') and the platform\\'s namespaces, and egress only to DNS (port 53), \
             the tenant\\'s namespaces and the Tenant\\'s network.allowedEgress blocks on their listed ports'"
        ),
        "a NetworkPolicy may not widen the tenant's isolation (rule: network.lockPolicies or the compliance profile)",
    ));
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
    let mut variables = vec![
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
    variables.extend(admission_variables());
    variables.extend(network_variables());
    variables.push(room_variable());
    shared_policy(
        OWNERS_POLICY,
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

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
