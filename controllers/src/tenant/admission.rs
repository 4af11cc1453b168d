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

use aleph_crds::keys::{GPU_PRODUCT_LABEL, TENANT_LABEL};
use std::collections::{BTreeMap, BTreeSet};

use aleph_crds::tenant::{ComplianceProfile, Tenant};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::build::{egress_restricted, tenant_labels};
use crate::apply::{MANAGED_BY, MANAGER, controller_ref};
use crate::error::{Error, Result};

/// The name of the tenant's policy (and binding) that holds for everyone.
pub fn admission_policy_name(tenant: &str) -> String {
    format!("aleph-tenant-{tenant}")
}

/// The name of the tenant's policy (and binding) that holds for its users.
pub fn owner_policy_name(tenant: &str) -> String {
    format!("aleph-tenant-{tenant}-owners")
}

/// A CEL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A CEL list of string literals.
fn cel_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| lit(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Serialization(e.to_string()))
}

/// CEL over one pod spec (`s`) and, on UPDATE, the spec it replaces (`old`).
struct PodSpecCel {
    s: &'static str,
    old: &'static str,
}

impl PodSpecCel {
    /// Every image of the spec: containers, init containers, ephemeral containers.
    fn images(spec: &str) -> String {
        format!(
            "({spec}.containers.map(c, c.image) \
             + (has({spec}.initContainers) ? {spec}.initContainers.map(c, c.image) : []) \
             + (has({spec}.ephemeralContainers) ? {spec}.ephemeralContainers.map(c, c.image) : []))"
        )
    }

    /// The images an UPDATE adds (all of them on CREATE).
    fn new_images(&self) -> String {
        format!(
            "{}.filter(i, request.operation != 'UPDATE' || !({}.exists(o, o == i)))",
            Self::images(self.s),
            Self::images(self.old)
        )
    }

    /// Whether an UPDATE leaves `field` of the spec as it was.
    fn unchanged(&self, field: &str) -> String {
        let (s, old) = (self.s, self.old);
        format!(
            "(request.operation == 'UPDATE' && has({old}.{field}) == has({s}.{field}) \
             && (!has({s}.{field}) || {old}.{field} == {s}.{field}))"
        )
    }

    fn scheduling_unchanged(&self) -> String {
        format!(
            "({} && {})",
            self.unchanged("nodeSelector"),
            self.unchanged("affinity")
        )
    }

    /// Whether a container or init container asks for GPUs.
    fn requests_gpus(&self) -> String {
        let s = self.s;
        let asks = |field: &str| {
            format!(
                "(has(c.resources.{field}) && 'nvidia.com/gpu' in c.resources.{field} \
                 && string(c.resources.{field}['nvidia.com/gpu']) != '0')"
            )
        };
        format!(
            "({s}.containers + (has({s}.initContainers) ? {s}.initContainers : []))\
             .exists(c, has(c.resources) && ({} || {}))",
            asks("requests"),
            asks("limits")
        )
    }

    /// Whether the spec can only land on nodes of the listed products.
    fn pinned(&self, products: &str) -> String {
        let s = self.s;
        let p = lit(GPU_PRODUCT_LABEL);
        let required =
            format!("{s}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution");
        format!(
            "((has({s}.nodeSelector) && {p} in {s}.nodeSelector && {s}.nodeSelector[{p}] in {products}) \
             || (has({s}.affinity) && has({s}.affinity.nodeAffinity) && has({required}) \
                 && size({required}.nodeSelectorTerms) > 0 \
                 && {required}.nodeSelectorTerms.all(t, has(t.matchExpressions) \
                    && t.matchExpressions.exists(e, e.key == {p} && e.operator == 'In' \
                       && has(e.values) && size(e.values) > 0 && e.values.all(v, v in {products})))))"
        )
    }

    /// Whether the spec names a product outside the list (by selector or affinity).
    fn names_other_product(&self, products: &str) -> String {
        let s = self.s;
        let p = lit(GPU_PRODUCT_LABEL);
        let required =
            format!("{s}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution");
        format!(
            "((has({s}.nodeSelector) && {p} in {s}.nodeSelector && !({s}.nodeSelector[{p}] in {products})) \
             || (has({s}.affinity) && has({s}.affinity.nodeAffinity) && has({required}) \
                 && {required}.nodeSelectorTerms.exists(t, has(t.matchExpressions) \
                    && t.matchExpressions.exists(e, e.key == {p} && e.operator == 'In' \
                       && has(e.values) && e.values.exists(v, !(v in {products}))))))"
        )
    }
}

/// The rules on one pod spec, each guarded by `guard` (which says the request
/// carries such a spec). `what` names the object in messages (it goes inside
/// a CEL string literal: no quotes).
/// `operator_images` (the images the operator itself runs in tenant
/// namespaces, such as the model cache's downloader) pass the registry rule.
fn pod_rules(
    tenant: &Tenant,
    cel: &PodSpecCel,
    guard: &str,
    what: &str,
    operator_images: &[String],
) -> Vec<Value> {
    let t = tenant.name_any();
    let a = &tenant.spec.admission;
    let mut rules = Vec::new();
    if !a.allowed_registries.is_empty() {
        let list = cel_list(&a.allowed_registries);
        let own = cel_list(operator_images);
        let new_images = cel.new_images();
        rules.push(json!({
            "expression": format!("!({guard}) || {new_images}.all(i, i in {own} || {list}.exists(r, i.startsWith(r)))"),
            "messageExpression": format!(
                "{} + {new_images}.filter(i, !(i in {own}) && !{list}.exists(r, i.startsWith(r)))[0] + {}",
                lit(&format!("tenant {t} (rule: allowedRegistries): {what} image ")),
                lit(&format!(" is not from an allowed registry ({})", a.allowed_registries.join(", ")))
            ),
            "reason": "Forbidden",
        }));
    }
    if !a.allowed_runtime_classes.is_empty() {
        let list = cel_list(&a.allowed_runtime_classes);
        let s = cel.s;
        rules.push(json!({
            "expression": format!(
                "!({guard}) || !has({s}.runtimeClassName) || {s}.runtimeClassName in {list} || {}",
                cel.unchanged("runtimeClassName")
            ),
            "message": format!(
                "tenant {t} (rule: allowedRuntimeClasses): {what} runtimeClassName must be one of {}",
                a.allowed_runtime_classes.join(", ")
            ),
            "reason": "Forbidden",
        }));
    }
    if !a.allowed_gpu_products.is_empty() {
        let list = cel_list(&a.allowed_gpu_products);
        let allowed = a.allowed_gpu_products.join(", ");
        let unchanged = cel.scheduling_unchanged();
        rules.push(json!({
            "expression": format!("!({guard}) || !{} || {unchanged}", cel.names_other_product(&list)),
            "message": format!(
                "tenant {t} (rule: allowedGpuProducts): {what} selects a GPU product (nvidia.com/gpu.product) other than {allowed}"
            ),
            "reason": "Forbidden",
        }));
        rules.push(json!({
            "expression": format!("!({guard}) || !{} || {} || {unchanged}", cel.requests_gpus(), cel.pinned(&list)),
            "message": format!(
                "tenant {t} (rule: allowedGpuProducts): {what} requests nvidia.com/gpu but is not pinned to an allowed GPU product: \
                 set nodeSelector nvidia.com/gpu.product to one of {allowed}, or a required node affinity \
                 (every nodeSelectorTerm with nvidia.com/gpu.product In values among {allowed})"
            ),
            "reason": "Forbidden",
        }));
    }
    rules
}

/// Whether `host` (a CEL expression) is one of the allowed domains or under one.
fn host_allowed(host: &str, domains: &str) -> String {
    format!("{domains}.exists(d, {host} == d || {host}.endsWith('.' + d))")
}

/// The policy and binding that hold for everyone in the tenant's namespaces,
/// or None when the tenant has no such rule.
pub fn admission_policy(
    tenant: &Tenant,
    operator_images: &[String],
) -> Result<Option<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)>> {
    let t = tenant.name_any();
    let a = &tenant.spec.admission;
    let is_pod = "request.resource.group == '' && request.resource.resource == 'pods'";
    let pod = PodSpecCel {
        s: "object.spec",
        old: "oldObject.spec",
    };
    let mut validations = Vec::new();
    if tenant.spec.cordoned {
        validations.push(json!({
            "expression": format!("!({is_pod}) || (request.operation == 'UPDATE' && !(has(request.subResource) && request.subResource == 'ephemeralcontainers'))"),
            "message": format!("tenant {t} is cordoned (rule: cordoned): new pods and ephemeral containers are refused; running pods keep running"),
            "reason": "Forbidden",
        }));
    }
    validations.extend(pod_rules(tenant, &pod, is_pod, "pod", operator_images));
    if !a.allowed_storage_classes.is_empty() {
        let list = cel_list(&a.allowed_storage_classes);
        validations.push(json!({
            "expression": format!(
                "request.resource.resource != 'persistentvolumeclaims' \
                 || (has(object.spec.storageClassName) && object.spec.storageClassName in {list}) \
                 || (request.operation == 'UPDATE' && has(oldObject.spec.storageClassName) == has(object.spec.storageClassName) \
                     && (!has(object.spec.storageClassName) || oldObject.spec.storageClassName == object.spec.storageClassName))"
            ),
            "message": format!("tenant {t} (rule: allowedStorageClasses): storageClassName must be one of {}", a.allowed_storage_classes.join(", ")),
            "reason": "Forbidden",
        }));
    }
    let is_service = "request.resource.group == '' && request.resource.resource == 'services'";
    let type_unchanged = "(request.operation == 'UPDATE' && has(oldObject.spec.type) && has(object.spec.type) && oldObject.spec.type == object.spec.type)";
    for (allowed, kind, field) in [
        (a.allow_node_ports, "NodePort", "allowNodePorts"),
        (a.allow_load_balancers, "LoadBalancer", "allowLoadBalancers"),
    ] {
        if !allowed {
            validations.push(json!({
                "expression": format!("!({is_service}) || !has(object.spec.type) || object.spec.type != '{kind}' || {type_unchanged}"),
                "message": format!("tenant {t} (rule: {field}): Services of type {kind} are not allowed in this tenant; use ClusterIP (the platform's ingress reaches it)"),
                "reason": "Forbidden",
            }));
        }
    }
    if !a.allowed_domains.is_empty() {
        let domains = cel_list(&a.allowed_domains);
        let shown = a.allowed_domains.join(", ");
        let ingress = "request.resource.group == 'networking.k8s.io' && request.resource.resource == 'ingresses'";
        validations.push(json!({
            "expression": format!(
                "!({ingress}) || (!has(object.spec.defaultBackend) \
                 && (has(object.spec.rules) ? object.spec.rules : []).all(r, has(r.host) && {}) \
                 && (has(object.spec.tls) ? object.spec.tls : []).all(x, !has(x.hosts) || x.hosts.all(h, {})))",
                host_allowed("r.host", &domains),
                host_allowed("h", &domains)
            ),
            "message": format!("tenant {t} (rule: allowedDomains): every Ingress rule and TLS host must be one of {shown} or a name under one; a rule without a host or a default backend would take every host and is refused"),
            "reason": "Forbidden",
        }));
        let route = "request.resource.group == 'gateway.networking.k8s.io' && request.resource.resource == 'httproutes'";
        validations.push(json!({
            "expression": format!(
                "!({route}) || (has(object.spec.hostnames) && size(object.spec.hostnames) > 0 && object.spec.hostnames.all(h, {}))",
                host_allowed("h", &domains)
            ),
            "message": format!("tenant {t} (rule: allowedDomains): an HTTPRoute must list its hostnames, each one of {shown} or a name under one"),
            "reason": "Forbidden",
        }));
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
        validations.push(json!({
            "expression": format!("request.resource.resource != 'aimodels' || {unchanged} || !has(object.spec.training) || has(object.spec.training.kmsKeyId)"),
            "message": format!("tenant {t} (rule: compliance {profile}): a SageMaker training job must name a KMS key (spec.training.kmsKeyId)"),
            "reason": "Forbidden",
        }));
        validations.push(json!({
            "expression": format!("request.resource.resource != 'pipelines' || {unchanged} || {steps}.all(s, !has(s.training) || has(s.training.kmsKeyId))"),
            "message": format!("tenant {t} (rule: compliance {profile}): every SageMaker training step must name a KMS key (training.kmsKeyId)"),
            "reason": "Forbidden",
        }));
    }
    if validations.is_empty() {
        return Ok(None);
    }
    let write = json!(["CREATE", "UPDATE"]);
    let rules = json!([
        { "apiGroups": [""], "apiVersions": ["v1"], "operations": write, "resources": ["pods", "pods/ephemeralcontainers"] },
        { "apiGroups": [""], "apiVersions": ["v1"], "operations": write, "resources": ["persistentvolumeclaims", "services"] },
        { "apiGroups": ["networking.k8s.io"], "apiVersions": ["*"], "operations": write, "resources": ["ingresses"] },
        { "apiGroups": ["gateway.networking.k8s.io"], "apiVersions": ["*"], "operations": write, "resources": ["httproutes"] },
        { "apiGroups": ["aleph.dev"], "apiVersions": ["*"], "operations": write, "resources": ["aimodels", "pipelines"] },
    ]);
    policy_and_binding(
        tenant,
        &admission_policy_name(&t),
        rules,
        json!([]),
        validations,
    )
    .map(Some)
}

/// Who is exempt from the owners' policy: the operator itself, cluster
/// admins, and kube-system's controllers.
fn exemptions(operator: &str) -> Value {
    json!([
        { "name": "not-the-operator", "expression": format!("request.userInfo.username != {}", lit(operator)) },
        { "name": "not-a-cluster-admin", "expression": "!has(request.userInfo.groups) || !('system:masters' in request.userInfo.groups)" },
        { "name": "not-a-kube-system-controller", "expression": "!request.userInfo.username.startsWith('system:serviceaccount:kube-system:') && request.userInfo.username != 'system:kube-controller-manager'" },
    ])
}

/// Whether NetworkPolicies of the tenant are locked against widening.
pub fn policies_locked(tenant: &Tenant) -> bool {
    tenant.spec.network.lock_policies || tenant.spec.compliance != ComplianceProfile::None
}

/// The tenant's namespaces as its owners' policy sees them: those
/// `spec.namespaces` declares, how many count against the limit (declared and
/// owner-created), and the limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceRoom {
    pub declared: Vec<String>,
    pub count: usize,
    pub limit: usize,
}

/// The policy and binding that hold for the tenant's users (everyone but the
/// operator, cluster admins and kube-system's controllers, named by
/// `operator`, the operator's user name).
pub fn owner_policy(
    tenant: &Tenant,
    operator: &str,
    operator_images: &[String],
    room: &NamespaceRoom,
) -> Result<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    let t = tenant.name_any();
    let template = PodSpecCel {
        s: "variables.spec",
        old: "variables.oldSpec",
    };
    let is_workload = "variables.isWorkload";
    let mut validations = Vec::new();
    if tenant.spec.cordoned {
        validations.push(json!({
            "expression": format!("!({is_workload}) || request.operation != 'CREATE'"),
            "message": format!("tenant {t} is cordoned (rule: cordoned): new workloads are refused; running pods keep running"),
            "reason": "Forbidden",
        }));
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
        validations.push(json!({
            "expression": format!(
                "request.resource.resource != 'statefulsets' || request.operation != 'CREATE' || !has(object.spec.volumeClaimTemplates) \
                 || object.spec.volumeClaimTemplates.all(v, has(v.spec.storageClassName) && v.spec.storageClassName in {list})"
            ),
            "message": format!("tenant {t} (rule: allowedStorageClasses): every volumeClaimTemplate's storageClassName must be one of {}", a.allowed_storage_classes.join(", ")),
            "reason": "Forbidden",
        }));
    }
    // The operator's objects: the owners may not change or delete them (the
    // operator would put them back; refusing says so at once).
    let managed = format!(
        "(has(oldObject.metadata.labels) && {} in oldObject.metadata.labels && oldObject.metadata.labels[{}] == {})",
        lit(MANAGED_BY),
        lit(MANAGED_BY),
        lit(MANAGER)
    );
    validations.push(json!({
        "expression": format!("!(request.resource.resource in ['networkpolicies', 'rolebindings', 'resourcequotas', 'limitranges']) || request.operation == 'CREATE' || !{managed}"),
        "messageExpression": format!(
            "'tenant {t}: ' + request.resource.resource + ' ' + oldObject.metadata.name + ' is made by the operator from the Tenant {t}; ask the platform team to change the Tenant instead'"
        ),
        "reason": "Forbidden",
    }));
    validations.extend(owner_namespace_rules(&t, room));
    if policies_locked(tenant) {
        validations.push(json!({
            "expression": format!("request.resource.resource != 'networkpolicies' || request.operation == 'DELETE' || ({})", network_policy_within(tenant)),
            "message": format!(
                "tenant {t} (rule: {}): a NetworkPolicy here may allow ingress only from pods of its namespace, the tenant's namespaces \
                 (namespaceSelector matchLabels aleph.dev/tenant: {t}) and the platform's namespaces, and egress only to DNS (port 53), \
                 the tenant's namespaces and the Tenant's network.allowedEgress blocks on their listed ports",
                if tenant.spec.compliance == ComplianceProfile::None { "network.lockPolicies".to_string() } else { format!("compliance {}", profile_name(tenant.spec.compliance)) }
            ),
            "reason": "Forbidden",
        }));
    }
    let write = json!(["CREATE", "UPDATE"]);
    let rules = json!([
        { "apiGroups": ["apps"], "apiVersions": ["v1"], "operations": write, "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"] },
        { "apiGroups": ["batch"], "apiVersions": ["v1"], "operations": write, "resources": ["jobs", "cronjobs"] },
        { "apiGroups": [""], "apiVersions": ["v1"], "operations": write, "resources": ["replicationcontrollers"] },
        { "apiGroups": ["networking.k8s.io"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["networkpolicies"] },
        { "apiGroups": ["rbac.authorization.k8s.io"], "apiVersions": ["v1"], "operations": ["UPDATE", "DELETE"], "resources": ["rolebindings"] },
        { "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE", "DELETE"], "resources": ["resourcequotas", "limitranges"] },
        { "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "DELETE"], "resources": ["namespaces"] },
    ]);
    let variables = json!([
        { "name": "isWorkload", "expression": "request.resource.resource == 'cronjobs' || (request.resource.resource in ['deployments', 'statefulsets', 'daemonsets', 'replicasets', 'jobs', 'replicationcontrollers'] && has(object.spec.template))" },
        { "name": "spec", "expression": "request.resource.resource == 'cronjobs' ? object.spec.jobTemplate.spec.template.spec : object.spec.template.spec" },
        { "name": "oldSpec", "expression": "request.operation != 'UPDATE' ? null : request.resource.resource == 'cronjobs' ? oldObject.spec.jobTemplate.spec.template.spec : oldObject.spec.template.spec" },
    ]);
    let (mut policy, binding): (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) =
        policy_and_binding(
            tenant,
            &owner_policy_name(&t),
            rules,
            variables,
            validations,
        )?;
    if let Some(spec) = policy.spec.as_mut() {
        spec.match_conditions = Some(from_json(exemptions(operator))?);
    }
    Ok((policy, binding))
}

/// The owners' rules on the tenant's namespaces themselves (the binding
/// selects namespaces labelled with the tenant, so these see the namespaces
/// an owner creates for the tenant): named with the tenant's prefix, within
/// the namespace count, without the operator's labels; only those not in
/// `spec.namespaces` may be deleted.
fn owner_namespace_rules(t: &str, room: &NamespaceRoom) -> Vec<Value> {
    let creating = "request.resource.resource != 'namespaces' || request.operation != 'CREATE'";
    let reserved = format!(
        "object.metadata.labels.all(k, !(k.startsWith('pod-security.kubernetes.io/') || k == {} \
         || (k.startsWith('aleph.dev/') && k != {})))",
        lit(crate::apply::MANAGED_BY),
        lit(TENANT_LABEL)
    );
    vec![
        json!({
            "expression": format!("{creating} || object.metadata.name.startsWith({})", lit(&format!("{t}-"))),
            "message": format!("tenant {t}: a namespace its owners create must be named {t}-<name>"),
            "reason": "Forbidden",
        }),
        json!({
            "expression": format!("{creating} || {} < {}", room.count, room.limit),
            "message": format!(
                "tenant {t} has {} of its {} namespaces (spec.quota.namespaces): delete one of those its owners created, or ask the platform team for more",
                room.count, room.limit
            ),
            "reason": "Forbidden",
        }),
        json!({
            "expression": format!("{creating} || {reserved}"),
            "message": format!(
                "tenant {t}: labels under aleph.dev/ (but aleph.dev/tenant), pod-security.kubernetes.io/ and {} are set by the operator, not on creation",
                crate::apply::MANAGED_BY
            ),
            "reason": "Forbidden",
        }),
        json!({
            "expression": format!(
                "request.resource.resource != 'namespaces' || request.operation != 'DELETE' || !(oldObject.metadata.name in {})",
                cel_list(&room.declared)
            ),
            "messageExpression": format!(
                "'namespace ' + oldObject.metadata.name + {}",
                lit(&format!(" is in the Tenant {t}'s spec.namespaces: the platform team removes it there"))
            ),
            "reason": "Forbidden",
        }),
    ]
}

/// The cluster-wide policy on namespaces created or deleted by users whose
/// right to do so comes from a Tenant (they may `create` the
/// `tenantnamespaces` marker): the namespace must be labelled with a tenant
/// the user owns (the `own` verb on that Tenant). Platform admins (who may
/// update Tenants) and the operator are not concerned; the tenant's owners'
/// policy then checks the name, the count and the labels.
pub fn owner_namespaces_policy(
    operator: &str,
) -> Result<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    use super::build::{OWN_VERB, OWNER_NAMESPACES_POLICY, SELF_SERVICE_RESOURCE};
    let meta = json!({
        "name": OWNER_NAMESPACES_POLICY,
        "labels": crate::apply::standard_labels("tenant", "all"),
    });
    let owns = |object: &str| {
        format!(
            "has({object}.metadata.labels) && {tl} in {object}.metadata.labels \
             && authorizer.group('aleph.dev').resource('tenants').name({object}.metadata.labels[{tl}]).check({}).allowed()",
            lit(OWN_VERB),
            tl = lit(TENANT_LABEL),
        )
    };
    let policy = from_json(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": meta,
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "DELETE"], "resources": ["namespaces"] }],
            },
            "matchConditions": [
                { "name": "not-the-operator", "expression": format!("request.userInfo.username != {}", lit(operator)) },
                { "name": "a-tenant-owner", "expression": format!("authorizer.group('aleph.dev').resource({}).check('create').allowed()", lit(SELF_SERVICE_RESOURCE)) },
                { "name": "not-a-platform-admin", "expression": "!authorizer.group('aleph.dev').resource('tenants').check('update').allowed()" },
            ],
            "validations": [
                {
                    "expression": format!("request.operation != 'CREATE' || ({})", owns("object")),
                    "message": format!(
                        "a namespace a tenant owner creates must be labelled {TENANT_LABEL}: <tenant> with a tenant the user owns, and named <tenant>-<name>"
                    ),
                    "reason": "Forbidden",
                },
                {
                    "expression": format!("request.operation != 'DELETE' || ({})", owns("oldObject")),
                    "messageExpression": "'namespace ' + oldObject.metadata.name + ' does not belong to a tenant the user owns'",
                    "reason": "Forbidden",
                },
            ],
        },
    }))?;
    let binding = from_json(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": meta,
        "spec": { "policyName": OWNER_NAMESPACES_POLICY, "validationActions": ["Deny"] },
    }))?;
    Ok((policy, binding))
}

fn profile_name(profile: ComplianceProfile) -> &'static str {
    match profile {
        ComplianceProfile::None => "none",
        ComplianceProfile::Hipaa => "hipaa",
        ComplianceProfile::Sox => "sox",
        ComplianceProfile::Pci => "pci",
    }
}

/// CEL: the NetworkPolicy in `object` allows nothing beyond what the tenant's
/// own isolation policy allows.
fn network_policy_within(tenant: &Tenant) -> String {
    let t = tenant.name_any();
    let tenant_ns = format!(
        "(has(p.namespaceSelector) && has(p.namespaceSelector.matchLabels) && {} in p.namespaceSelector.matchLabels && p.namespaceSelector.matchLabels[{}] == {})",
        lit(TENANT_LABEL),
        lit(TENANT_LABEL),
        lit(&t)
    );
    let same_ns = "(has(p.podSelector) && !has(p.namespaceSelector) && !has(p.ipBlock))";
    let platform = &tenant.spec.network.platform_namespace_labels;
    let platform_ns = if platform.is_empty() {
        "false".to_string()
    } else {
        let all: Vec<String> = platform
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} in p.namespaceSelector.matchLabels && p.namespaceSelector.matchLabels[{}] == {}",
                    lit(k),
                    lit(k),
                    lit(v)
                )
            })
            .collect();
        format!(
            "(has(p.namespaceSelector) && has(p.namespaceSelector.matchLabels) && {})",
            all.join(" && ")
        )
    };
    // Each allowed block with its TCP ports (None: every port). A block listed
    // twice allows the union of its entries.
    let mut blocks: BTreeMap<String, Option<BTreeSet<i32>>> = BTreeMap::new();
    if egress_restricted(tenant) {
        for d in &tenant.spec.network.allowed_egress {
            let ports = blocks
                .entry(d.cidr.clone())
                .or_insert_with(|| Some(BTreeSet::new()));
            match (ports.as_mut(), d.ports.is_empty()) {
                (_, true) => *ports = None,
                (Some(set), false) => set.extend(d.ports.iter().map(|p| p.0)),
                (None, false) => {}
            }
        }
    }
    let cidrs: Vec<String> = blocks.keys().cloned().collect();
    let allowed_block = format!(
        "(has(p.ipBlock) && !has(p.namespaceSelector) && !has(p.podSelector) && p.ipBlock.cidr in {})",
        cel_list(&cidrs)
    );
    // A rule that reaches a block with listed ports opens only those: TCP,
    // by number, no ranges.
    let port_checks: Vec<String> = blocks
        .iter()
        .filter_map(|(cidr, ports)| {
            let ports: Vec<String> = ports.as_ref()?.iter().map(i32::to_string).collect();
            Some(format!(
                "(p.ipBlock.cidr != {} || (has(r.ports) && size(r.ports) > 0 && r.ports.all(x, has(x.port) && !has(x.endPort) \
                 && (!has(x.protocol) || x.protocol == 'TCP') && string(x.port) in {})))",
                lit(cidr),
                cel_list(&ports)
            ))
        })
        .collect();
    let block_ports = if port_checks.is_empty() {
        String::new()
    } else {
        format!(
            " && r.to.all(p, !has(p.ipBlock) || ({}))",
            port_checks.join(" && ")
        )
    };
    let ingress_ok = format!(
        "has(r.from) && size(r.from) > 0 && r.from.all(p, {same_ns} || {tenant_ns} || {platform_ns})"
    );
    let dns_only = "(has(r.ports) && size(r.ports) > 0 && r.ports.all(x, has(x.port) && string(x.port) == '53'))";
    let egress_ok = format!(
        "(has(r.to) && size(r.to) > 0 && r.to.all(p, {same_ns} || {tenant_ns} || {allowed_block}){block_ports}) || ((!has(r.to) || size(r.to) == 0) && {dns_only})"
    );
    format!(
        "(!has(object.spec.ingress) || object.spec.ingress.all(r, {ingress_ok})) && (!has(object.spec.egress) || object.spec.egress.all(r, {egress_ok}))"
    )
}

fn policy_and_binding(
    tenant: &Tenant,
    name: &str,
    rules: Value,
    variables: Value,
    validations: Vec<Value>,
) -> Result<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    let t = tenant.name_any();
    let meta = json!({
        "name": name,
        "labels": tenant_labels(&t),
        "ownerReferences": controller_ref(tenant).into_iter().collect::<Vec<_>>(),
    });
    let mut spec = json!({
        "failurePolicy": "Fail",
        "matchConstraints": { "resourceRules": rules },
        "validations": validations,
    });
    if variables.as_array().is_some_and(|v| !v.is_empty()) {
        spec["variables"] = variables;
    }
    let policy = from_json(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": meta,
        "spec": spec,
    }))?;
    let binding = from_json(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": meta,
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": { "namespaceSelector": { "matchLabels": { TENANT_LABEL: t } } },
        },
    }))?;
    Ok((policy, binding))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(yaml: &str) -> Tenant {
        let mut t: Tenant = serde_saphyr::from_str(yaml).expect("fixture parses");
        t.metadata.uid = Some("uid-1".into());
        t
    }

    const ACME: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: Tenant
metadata: { name: acme }
spec:
  owners: [{ kind: User, name: alice, role: admin }]
  namespaces: [research]
  admission:
    allowedRegistries: ["ghcr.io/acme/"]
    allowedGpuProducts: ["NVIDIA-H100-80GB-HBM3"]
    allowedDomains: ["acme.example.com"]
  cordoned: true
  compliance: hipaa
"#;

    fn messages(policy: &ValidatingAdmissionPolicy) -> Vec<String> {
        policy
            .spec
            .as_ref()
            .and_then(|s| s.validations.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.message.or(v.message_expression).unwrap_or_default())
            .collect()
    }

    fn resources(policy: &ValidatingAdmissionPolicy) -> Vec<(String, Vec<String>)> {
        policy
            .spec
            .as_ref()
            .and_then(|s| s.match_constraints.as_ref())
            .and_then(|m| m.resource_rules.clone())
            .unwrap_or_default()
            .into_iter()
            .flat_map(|r| {
                let ops = r.operations.clone().unwrap_or_default();
                r.resources
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |res| (res, ops.clone()))
            })
            .collect()
    }

    #[test]
    fn every_rule_names_itself_and_covers_every_path_to_a_pod() {
        let t = tenant(ACME);
        let own = ["aleph.local/model-cache:dev".to_string()];
        let (policy, binding) = admission_policy(&t, &own).expect("builds").expect("rules");
        let m = messages(&policy);
        // cordoned, registries, GPU product, GPU pinning, NodePort, LoadBalancer,
        // Ingress and HTTPRoute domains, hipaa's two KMS rules.
        assert_eq!(m.len(), 10, "{m:#?}");
        for rule in [
            "cordoned",
            "allowedRegistries",
            "allowedGpuProducts",
            "allowNodePorts",
            "allowLoadBalancers",
            "allowedDomains",
            "compliance hipaa",
        ] {
            assert!(m.iter().any(|m| m.contains(rule)), "no rule {rule}: {m:#?}");
        }
        assert!(
            m.iter()
                .any(|m| m.contains("is not pinned") && m.contains("nodeSelector"))
        );
        let r = resources(&policy);
        for res in [
            "pods",
            "pods/ephemeralcontainers",
            "persistentvolumeclaims",
            "services",
            "ingresses",
            "httproutes",
        ] {
            let ops = r
                .iter()
                .find(|(name, _)| name == res)
                .map(|(_, o)| o.clone())
                .unwrap_or_default();
            assert!(
                ops.contains(&"CREATE".to_string()) && ops.contains(&"UPDATE".to_string()),
                "{res}: {ops:?}"
            );
        }
        // Nobody is exempt from the rules on pods.
        assert!(
            policy
                .spec
                .as_ref()
                .and_then(|s| s.match_conditions.as_ref())
                .is_none()
        );
        assert_eq!(
            binding.spec.and_then(|s| s.policy_name).as_deref(),
            Some("aleph-tenant-acme")
        );
    }

    #[test]
    fn the_owners_policy_covers_templates_and_the_operators_objects_and_exempts_the_operator() {
        let t = tenant(ACME);
        let (policy, _) = owner_policy(
            &t,
            "system:serviceaccount:aleph-system:aleph-operator",
            &[],
            &NamespaceRoom::default(),
        )
        .expect("builds");
        let r = resources(&policy);
        for res in [
            "deployments",
            "statefulsets",
            "daemonsets",
            "jobs",
            "cronjobs",
            "networkpolicies",
            "rolebindings",
        ] {
            assert!(r.iter().any(|(name, _)| name == res), "{res} missing");
        }
        let np = r
            .iter()
            .find(|(n, _)| n == "networkpolicies")
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        assert!(np.contains(&"DELETE".to_string()));
        let m = messages(&policy);
        assert!(
            m.iter()
                .any(|m| m.contains("compliance hipaa") && m.contains("NetworkPolicy")),
            "{m:#?}"
        );
        assert!(m.iter().any(|m| m.contains("made by the operator")));
        let conditions = policy
            .spec
            .and_then(|s| s.match_conditions)
            .unwrap_or_default();
        let exempt: Vec<&str> = conditions.iter().map(|c| c.expression.as_str()).collect();
        assert!(
            exempt
                .iter()
                .any(|e| e.contains("'system:serviceaccount:aleph-system:aleph-operator'")),
            "{exempt:?}"
        );
        assert!(exempt.iter().any(|e| e.contains("system:masters")));
    }

    #[test]
    fn policies_are_unlocked_only_without_compliance_or_lock() {
        let mut t = tenant(ACME);
        assert!(policies_locked(&t));
        t.spec.compliance = ComplianceProfile::None;
        assert!(!policies_locked(&t));
        let (policy, _) = owner_policy(&t, "op", &[], &NamespaceRoom::default()).expect("builds");
        assert!(
            !messages(&policy)
                .iter()
                .any(|m| m.contains("a NetworkPolicy here"))
        );
        t.spec.network.lock_policies = true;
        assert!(policies_locked(&t));
    }

    #[test]
    fn the_owners_namespace_rules_bake_in_the_count_and_the_declared_names() {
        let t = tenant(ACME);
        let room = NamespaceRoom {
            declared: vec!["acme-research".into()],
            count: 3,
            limit: 3,
        };
        let (policy, _) = owner_policy(&t, "op", &[], &room).expect("builds");
        let spec = policy.spec.expect("spec");
        let expressions: Vec<String> = spec
            .validations
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.expression)
            .collect();
        assert!(
            expressions.iter().any(|e| e.ends_with("|| 3 < 3")),
            "{expressions:?}"
        );
        assert!(
            expressions
                .iter()
                .any(|e| e.contains("startsWith('acme-')")),
            "{expressions:?}"
        );
        assert!(
            expressions
                .iter()
                .any(|e| e.contains("!(oldObject.metadata.name in ['acme-research'])")),
            "{expressions:?}"
        );
        let rules = spec
            .match_constraints
            .and_then(|m| m.resource_rules)
            .unwrap_or_default();
        assert!(rules.iter().any(|r| {
            r.resources.as_deref() == Some(&["namespaces".to_string()][..])
                && r.operations.as_deref()
                    == Some(&["CREATE".to_string(), "DELETE".to_string()][..])
        }));
        // The cluster-wide policy applies to owners only, not to the operator
        // nor to whoever may update Tenants.
        let (cluster, _) = owner_namespaces_policy("op").expect("builds");
        let conditions: Vec<String> = cluster
            .spec
            .and_then(|s| s.match_conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.expression)
            .collect();
        assert_eq!(conditions.len(), 3, "{conditions:?}");
        assert!(conditions[0].contains("'op'"));
        assert!(conditions[1].contains("'tenantnamespaces'"));
        assert!(conditions[2].starts_with("!authorizer") && conditions[2].contains("'update'"));
    }

    #[test]
    fn an_allowed_block_with_ports_opens_only_those_ports() {
        let mut t = tenant(ACME);
        t.spec.network.allowed_egress = serde_json::from_value(serde_json::json!([
            { "cidr": "10.0.0.0/8", "ports": [443] },
            { "cidr": "10.0.0.0/8", "ports": [8443] },
            { "cidr": "192.168.0.0/16" },
        ]))
        .expect("egress");
        let cel = network_policy_within(&t);
        assert!(
            cel.contains("p.ipBlock.cidr in ['10.0.0.0/8', '192.168.0.0/16']"),
            "{cel}"
        );
        assert!(
            cel.contains("p.ipBlock.cidr != '10.0.0.0/8' ||")
                && cel.contains("string(x.port) in ['443', '8443']"),
            "{cel}"
        );
        assert!(!cel.contains("p.ipBlock.cidr != '192.168.0.0/16'"), "{cel}");
    }

    #[test]
    fn quotes_in_names_cannot_break_out_of_a_cel_string() {
        assert_eq!(lit("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(cel_list(&["x".into(), "y'".into()]), "['x', 'y\\'']");
    }
}
