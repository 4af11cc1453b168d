//! What the CRD's schema cannot check about a Plugin spec (no client).

use std::collections::BTreeSet;

use aleph_crds::keys::PLUGIN_ANNOTATION_PREFIX;
use aleph_crds::plugin::{PluginPermission, PluginSpec};

/// Resources that are not namespaced: a Role in the plugin's namespace cannot
/// grant them, so asking for them is a mistake worth saying.
const CLUSTER_SCOPED: &[&str] = &[
    "nodes",
    "namespaces",
    "persistentvolumes",
    "clusterroles",
    "clusterrolebindings",
    "customresourcedefinitions",
    "storageclasses",
    "priorityclasses",
    "runtimeclasses",
    "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
    "certificatesigningrequests",
    "tenants",
];

const READ_VERBS: &[&str] = &["get", "list", "watch"];

/// Why a Plugin spec cannot be run, as the message of its `InvalidSpec` condition.
pub fn validate(spec: &PluginSpec) -> Result<(), String> {
    for permission in &spec.permissions {
        check_permission(permission)?;
    }
    for key in spec.container.config.keys() {
        if key.is_empty()
            || key.len() > 253
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "config key {key:?} is not a valid file name: use letters, digits, '-', '_' and '.'"
            ));
        }
    }
    for key in spec.pod_annotations.keys() {
        if key.starts_with(PLUGIN_ANNOTATION_PREFIX) {
            return Err(format!(
                "podAnnotations key {key} is the operator's ({PLUGIN_ANNOTATION_PREFIX}*): choose another"
            ));
        }
        if !qualified_name(key) {
            return Err(format!(
                "podAnnotations key {key:?} is not a valid annotation key: use [prefix/]name, the name at most 63 letters, digits, '-', '_' or '.'"
            ));
        }
    }
    let mut names = BTreeSet::new();
    for var in &spec.container.env {
        if !names.insert(var.name.as_str()) {
            return Err(format!(
                "env variable {} is declared twice: keep one",
                var.name
            ));
        }
    }
    let mut secrets = BTreeSet::new();
    for secret in &spec.container.secrets {
        if !secrets.insert(secret.name.as_str()) {
            return Err(format!("secret {} is listed twice: keep one", secret.name));
        }
    }
    Ok(())
}

fn check_permission(permission: &PluginPermission) -> Result<(), String> {
    let cluster_wide: Vec<&str> = permission
        .resources
        .iter()
        .map(|r| r.split('/').next().unwrap_or(r))
        .filter(|r| CLUSTER_SCOPED.contains(r))
        .collect();
    if !cluster_wide.is_empty() {
        return Err(format!(
            "permissions request cluster-wide access ({}), which plugins may not have: a plugin's rules apply in its namespace only",
            cluster_wide.join(", ")
        ));
    }
    let rbac = permission
        .api_groups
        .iter()
        .any(|g| g == "rbac.authorization.k8s.io");
    let writes: Vec<&str> = permission
        .verbs
        .iter()
        .map(String::as_str)
        .filter(|v| !READ_VERBS.contains(v))
        .collect();
    if rbac && !writes.is_empty() {
        return Err(format!(
            "permissions let the plugin {} roles or role bindings, which would let it grant itself more: plugins may only read RBAC objects",
            writes.join("/")
        ));
    }
    Ok(())
}

fn label_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !part.starts_with('-')
                        && !part.ends_with('-')
                })
                && label_part(name)
        }
        None => label_part(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::test_support;

    fn spec(extra: &str) -> PluginSpec {
        test_support::spec(&format!(
            "  version: 1.0.0\n  image: ghcr.io/acme/p:1.0.0\n  mode: job\n{extra}"
        ))
    }

    #[test]
    fn namespaced_read_and_write_permissions_are_fine() {
        let s = spec(
            r#"
  permissions:
    - { apiGroups: [""], resources: [configmaps, pods/log], verbs: [get, list, watch, create] }
    - { apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [get] }
  podAnnotations: { "aleph.dev/test-never-ready": "true", sidecar.istio.io/inject: "false" }
  config: { rules.yaml: "a: 1" }
"#,
        );
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn cluster_wide_and_rbac_writing_permissions_are_refused_saying_why() {
        let refused = [
            (
                r#"{ apiGroups: [""], resources: [nodes], verbs: [get] }"#,
                ["cluster-wide", "(nodes)"],
            ),
            (
                r#"{ apiGroups: [rbac.authorization.k8s.io], resources: [rolebindings], verbs: [create] }"#,
                ["create roles or role bindings", "may only read RBAC"],
            ),
        ];
        for (permission, says) in refused {
            let s = spec(&format!("  permissions:\n    - {permission}\n"));
            let message = validate(&s).expect_err(permission);
            assert!(says.iter().all(|w| message.contains(w)), "{message}");
        }
    }

    #[test]
    fn bad_keys_and_duplicates_are_refused() {
        for extra in [
            "  config: { \"../etc/passwd\": x }",
            "  podAnnotations: { aleph.dev/plugin-version: x }",
            "  podAnnotations: { \"not a key\": x }",
            "  env: [{ name: A, value: x }, { name: A, value: \"y\" }]",
            "  secrets: [{ name: s }, { name: s }]",
        ] {
            assert!(validate(&spec(extra)).is_err(), "{extra}");
        }
    }
}
