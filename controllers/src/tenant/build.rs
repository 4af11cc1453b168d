//! Desired children of a Tenant, built from its spec alone (no client).

use std::collections::BTreeMap;

use aleph_crds::tenant::{
    ComplianceProfile, EgressMode, OwnerRole, SubjectKind, Tenant, TenantOwner,
};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{LimitRange, Namespace};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::apply::{TENANT_LABEL, controller_ref, standard_labels};
use crate::error::{Error, Result};

/// Name of the per-namespace ResourceQuota.
pub const QUOTA_NAME: &str = "aleph-tenant-quota";
/// Name of the per-namespace LimitRange.
pub const LIMIT_RANGE_NAME: &str = "aleph-tenant-defaults";
/// Name of the isolation NetworkPolicy.
pub const NETWORK_POLICY_NAME: &str = "aleph-tenant-isolation";
/// The cluster-wide policy that refuses to delete a Tenant with `preventDeletion`.
pub const PREVENT_DELETION_POLICY: &str = "aleph-tenant-prevent-deletion";

/// The label the operator puts on a namespace an owner created and the Tenant
/// adopted (the value is `owner`). Such a namespace is the tenant's although
/// `spec.namespaces` does not list it.
pub const ORIGIN_LABEL: &str = "aleph.dev/origin";
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

pub(super) fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Serialization(e.to_string()))
}

fn restricted(tenant: &Tenant) -> bool {
    tenant.spec.compliance != ComplianceProfile::None
}

/// The namespace `name` of the tenant.
pub fn namespace(tenant: &Tenant, name: &str) -> Result<Namespace> {
    let mut labels = tenant_labels(&tenant.name_any());
    if restricted(tenant) {
        for mode in ["enforce", "audit", "warn"] {
            labels.insert(
                format!("pod-security.kubernetes.io/{mode}"),
                "restricted".into(),
            );
        }
    }
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": labels },
    }))
}

/// A namespace an owner created, as the Tenant adopts it.
pub fn adopted_namespace(tenant: &Tenant, name: &str) -> Result<Namespace> {
    let mut ns = namespace(tenant, name)?;
    ns.labels_mut()
        .insert(ORIGIN_LABEL.to_string(), "owner".to_string());
    Ok(ns)
}

/// The name of the ClusterRole (and its binding) that lets the tenant's admin
/// owners create and delete the tenant's namespaces.
pub fn owner_cluster_role_name(tenant: &str) -> String {
    format!("aleph-tenant-{tenant}-owners")
}

/// The ClusterRole and binding that let the tenant's admin owners create
/// namespaces (and delete those not in `spec.namespaces`), or None when no
/// owner is an admin or the tenant has no room for more namespaces. RBAC
/// cannot limit `create` by name: the admission policies do (the cluster-wide
/// one and the tenant's owners' policy).
pub fn owner_cluster_role(
    tenant: &Tenant,
    room: bool,
) -> Result<Option<(ClusterRole, ClusterRoleBinding)>> {
    let t = tenant.name_any();
    let subjects: Vec<Value> = tenant
        .spec
        .owners
        .iter()
        .filter(|o| o.role == OwnerRole::Admin)
        .map(subject)
        .collect();
    if subjects.is_empty() || !room {
        return Ok(None);
    }
    let name = owner_cluster_role_name(&t);
    let meta = json!({
        "name": name,
        "labels": tenant_labels(&t),
        "ownerReferences": controller_ref(tenant).into_iter().collect::<Vec<_>>(),
    });
    let role = from_json(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta,
        "rules": [
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["create", "delete"] },
            { "apiGroups": ["aleph.dev"], "resources": [SELF_SERVICE_RESOURCE], "verbs": ["create"] },
            { "apiGroups": ["aleph.dev"], "resources": ["tenants"], "resourceNames": [t], "verbs": ["get", OWN_VERB] },
        ],
    }))?;
    let binding = from_json(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
        "subjects": subjects,
    }))?;
    Ok(Some((role, binding)))
}

fn owned_meta(tenant: &Tenant, name: &str, namespace: &str) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "labels": tenant_labels(&tenant.name_any()),
        "ownerReferences": controller_ref(tenant).into_iter().collect::<Vec<_>>(),
    })
}

/// Default container requests and limits. Requests are always defaulted,
/// because a namespace with a CPU or memory quota refuses pods without them.
pub fn limit_range(tenant: &Tenant, namespace: &str) -> Result<LimitRange> {
    let lr = tenant.spec.limit_range.clone().unwrap_or_default();
    let q = |v: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>, d: &str| {
        v.map(|q| q.0).unwrap_or_else(|| d.to_string())
    };
    let mut item = json!({
        "type": "Container",
        "defaultRequest": {
            "cpu": q(lr.default_cpu_request, "100m"),
            "memory": q(lr.default_memory_request, "128Mi"),
        },
    });
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = lr.default_cpu_limit {
        limits.insert("cpu".into(), json!(cpu.0));
    }
    if let Some(memory) = lr.default_memory_limit {
        limits.insert("memory".into(), json!(memory.0));
    }
    if !limits.is_empty() {
        item["default"] = Value::Object(limits);
    }
    from_json(json!({
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": owned_meta(tenant, LIMIT_RANGE_NAME, namespace),
        "spec": { "limits": [item] },
    }))
}

/// Whether egress is restricted: by the spec or by a compliance profile.
pub fn egress_restricted(tenant: &Tenant) -> bool {
    tenant.spec.network.egress == EgressMode::Restricted || restricted(tenant)
}

/// Ingress from the tenant and platform namespaces; egress restricted when asked.
pub fn network_policy(tenant: &Tenant, namespace: &str) -> Result<Option<NetworkPolicy>> {
    let net = &tenant.spec.network;
    let restricted_egress = egress_restricted(tenant);
    if !net.isolated && !restricted_egress {
        return Ok(None);
    }
    let same_tenant =
        json!({ "namespaceSelector": { "matchLabels": { TENANT_LABEL: tenant.name_any() } } });
    let mut spec = json!({ "podSelector": {} });
    let mut policy_types = Vec::new();
    if net.isolated {
        let mut from = vec![same_tenant.clone()];
        if !net.platform_namespace_labels.is_empty() {
            from.push(
                json!({ "namespaceSelector": { "matchLabels": net.platform_namespace_labels } }),
            );
        }
        policy_types.push("Ingress");
        spec["ingress"] = json!([{ "from": from }]);
    }
    if restricted_egress {
        let mut rules = vec![
            json!({ "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }] }),
            json!({ "to": [same_tenant] }),
        ];
        for dest in &net.allowed_egress {
            let mut rule = json!({ "to": [{ "ipBlock": { "cidr": dest.cidr } }] });
            if !dest.ports.is_empty() {
                rule["ports"] = dest
                    .ports
                    .iter()
                    .map(|p| json!({ "protocol": "TCP", "port": p.0 }))
                    .collect();
            }
            rules.push(rule);
        }
        policy_types.push("Egress");
        spec["egress"] = Value::Array(rules);
    }
    spec["policyTypes"] = json!(policy_types);
    from_json(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": owned_meta(tenant, NETWORK_POLICY_NAME, namespace),
        "spec": spec,
    }))
    .map(Some)
}

fn subject(owner: &TenantOwner) -> Value {
    match owner.kind {
        SubjectKind::User => {
            json!({ "kind": "User", "name": owner.name, "apiGroup": "rbac.authorization.k8s.io" })
        }
        SubjectKind::Group => {
            json!({ "kind": "Group", "name": owner.name, "apiGroup": "rbac.authorization.k8s.io" })
        }
        SubjectKind::ServiceAccount => {
            json!({ "kind": "ServiceAccount", "name": owner.name, "namespace": owner.namespace.clone().unwrap_or_default() })
        }
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
pub fn role_bindings(tenant: &Tenant, namespace: &str) -> Result<Vec<RoleBinding>> {
    let mut out = Vec::new();
    for role in [OwnerRole::Admin, OwnerRole::Edit, OwnerRole::View] {
        let subjects: Vec<Value> = tenant
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
        out.push(from_json(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": owned_meta(tenant, &format!("aleph-owners-{cluster_role}"), namespace),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role },
            "subjects": subjects,
        }))?);
    }
    for (i, extra) in tenant.spec.additional_role_bindings.iter().enumerate() {
        out.push(from_json(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": owned_meta(tenant, &format!("aleph-extra-{i}"), namespace),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": extra.cluster_role },
            "subjects": extra.subjects.iter().map(subject).collect::<Vec<_>>(),
        }))?);
    }
    Ok(out)
}

/// The cluster-wide policy refusing to delete a Tenant whose spec sets `preventDeletion`.
pub fn prevent_deletion_policy()
-> Result<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    let labels = standard_labels("tenant", "all");
    let meta = json!({ "name": PREVENT_DELETION_POLICY, "labels": labels });
    let spec = json!({
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [{ "apiGroups": ["aleph.dev"], "apiVersions": ["*"], "operations": ["DELETE"], "resources": ["tenants"] }],
        },
        "validations": [{
            "expression": "!has(oldObject.spec.preventDeletion) || oldObject.spec.preventDeletion == false",
            "messageExpression": "'tenant ' + oldObject.metadata.name + ' has spec.preventDeletion: true; set it to false before deleting the tenant'",
            "reason": "Forbidden",
        }],
    });
    policy_with_binding(meta, spec, None)
}

/// A ValidatingAdmissionPolicy of `meta` and `spec`, and its binding (of the
/// same metadata) denying what the policy refuses in the namespaces
/// `match_resources` selects (everywhere when None).
pub(super) fn policy_with_binding(
    meta: Value,
    spec: Value,
    match_resources: Option<Value>,
) -> Result<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    let mut binding_spec = json!({ "policyName": meta["name"], "validationActions": ["Deny"] });
    if let Some(match_resources) = match_resources {
        binding_spec["matchResources"] = match_resources;
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
        "spec": binding_spec,
    }))?;
    Ok((policy, binding))
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
    fn owners_are_grouped_by_role() {
        let t = tenant(ACME);
        let rbs = role_bindings(&t, "acme-research").expect("builds");
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
        let ns = namespace(&t, "acme-research").expect("builds");
        let labels = ns.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels
                .get("pod-security.kubernetes.io/enforce")
                .map(String::as_str),
            Some("restricted")
        );
        assert_eq!(labels.get(TENANT_LABEL).map(String::as_str), Some("acme"));
        let np = network_policy(&t, "acme-research")
            .expect("builds")
            .expect("isolated");
        let types = np.spec.and_then(|s| s.policy_types).unwrap_or_default();
        assert_eq!(types, vec!["Ingress".to_string(), "Egress".to_string()]);
    }

    #[test]
    fn limit_range_always_defaults_requests() {
        let t = tenant(ACME);
        let lr = limit_range(&t, "acme-research").expect("builds");
        let item = &lr.spec.expect("spec").limits[0];
        assert!(
            item.default_request
                .as_ref()
                .is_some_and(|d| d.contains_key("cpu") && d.contains_key("memory"))
        );
    }
}
