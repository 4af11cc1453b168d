use super::*;
use crate::tenant::cel::cel_list;
use crate::tenant::tenant_from_yaml as tenant;

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
        .map(|v| v.message_expression.or(v.message).unwrap_or_default())
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

const OPERATOR: &str = "system:serviceaccount:aleph-system:aleph-operator";

fn expressions(policy: &ValidatingAdmissionPolicy) -> Vec<String> {
    let spec = policy.spec.as_ref().expect("spec");
    let validations = spec
        .validations
        .iter()
        .flatten()
        .map(|v| v.expression.clone());
    let variables = spec
        .variables
        .iter()
        .flatten()
        .map(|v| v.expression.clone());
    validations.chain(variables).collect()
}

/// Every reference to `variables.<name>` has that variable declared, and
/// every variable is used.
fn variables_are_declared_and_used(policy: &ValidatingAdmissionPolicy) {
    let spec = policy.spec.as_ref().expect("spec");
    let declared: Vec<&str> = spec
        .variables
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let mut text = expressions(policy).join(" ");
    for v in spec.validations.iter().flatten() {
        text.push_str(v.message_expression.as_deref().unwrap_or_default());
    }
    for name in &declared {
        assert!(
            text.contains(&format!("variables.{name}")),
            "variable {name} is never used"
        );
    }
    for used in text.split("variables.").skip(1) {
        let name: String = used
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        assert!(
            declared.contains(&name.as_str()),
            "variables.{name} is not declared"
        );
    }
}

#[test]
fn every_rule_names_itself_and_covers_every_path_to_a_pod() {
    let own = ["aleph.local/model-cache:dev".to_string()];
    let policy = tenants_policy(&own);
    let m = messages(&policy);
    // cordoned, registries, runtime classes, GPU product, GPU pinning,
    // storage classes, NodePort, LoadBalancer, Ingress and HTTPRoute domains,
    // the compliance profiles' two KMS rules; and the operator's probe.
    assert_eq!(m.len(), 13, "{m:#?}");
    for rule in [
        "cordoned",
        "allowedRegistries",
        "allowedRuntimeClasses",
        "allowedGpuProducts",
        "allowedStorageClasses",
        "allowNodePorts",
        "allowLoadBalancers",
        "allowedDomains",
        "rule: compliance ' + variables.compliance",
    ] {
        assert!(m.iter().any(|m| m.contains(rule)), "no rule {rule}: {m:#?}");
    }
    assert!(
        m.iter()
            .any(|m| m.contains("is not pinned") && m.contains("nodeSelector"))
    );
    // The operator's own images pass the registry rule.
    assert!(
        expressions(&policy)
            .iter()
            .any(|e| e.contains("i in ['aleph.local/model-cache:dev']"))
    );
    variables_are_declared_and_used(&policy);
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
    let spec = policy.spec.as_ref().expect("spec");
    // Nobody is exempt from the rules on pods.
    assert!(spec.match_conditions.is_none());
    let param = spec
        .param_kind
        .clone()
        .expect("the Tenant is the parameter");
    assert_eq!(param.api_version.as_deref(), Some("aleph.dev/v1alpha1"));
    assert_eq!(param.kind.as_deref(), Some("Tenant"));
}

#[test]
fn only_the_tenants_policy_refuses_the_admission_probe_and_the_probe_is_a_valid_headless_service() {
    let probe_rules = |policy: &ValidatingAdmissionPolicy| {
        expressions(policy)
            .iter()
            .filter(|e| e.contains(ADMISSION_PROBE_ANNOTATION))
            .count()
    };
    let everyone = tenants_policy(&[]);
    assert_eq!(probe_rules(&everyone), 1);
    assert!(messages(&everyone).contains(&PROBE_REFUSED.to_string()));
    // A policy that matches Services and exempts the operator, or none.
    assert_eq!(probe_rules(&owners_policy(OPERATOR, &[])), 0);
    assert!(
        resources(&everyone)
            .iter()
            .any(|(r, ops)| r == "services" && ops.contains(&"CREATE".to_string()))
    );
    let probe = admission_probe("acme");
    assert_eq!(
        probe
            .annotations()
            .get(ADMISSION_PROBE_ANNOTATION)
            .map(String::as_str),
        Some("acme")
    );
    let spec = probe.spec.expect("spec");
    assert_eq!(
        spec.cluster_ip.as_deref(),
        Some("None"),
        "no address to allocate"
    );
    assert_eq!(spec.ports, None, "a headless Service needs no port");
    assert_eq!(
        spec.type_, None,
        "ClusterIP: no rule on Service types refuses it"
    );
}

#[test]
fn each_tenant_binds_both_policies_with_itself_as_the_parameter_in_its_namespaces() {
    let t = tenant(ACME);
    let [everyone, owners] = bindings(&t);
    for (binding, name, policy) in [
        (&everyone, "aleph-tenant-acme", TENANTS_POLICY),
        (&owners, "aleph-tenant-acme-owners", OWNERS_POLICY),
    ] {
        assert_eq!(binding.metadata.name.as_deref(), Some(name));
        assert_eq!(
            binding.metadata.owner_references.as_ref().map(Vec::len),
            Some(1),
            "{name} goes with the Tenant"
        );
        let spec = binding.spec.clone().expect("spec");
        assert_eq!(spec.policy_name.as_deref(), Some(policy));
        let param = spec.param_ref.expect("paramRef");
        assert_eq!(param.name.as_deref(), Some("acme"));
        assert_eq!(param.namespace, None, "Tenants are cluster-scoped");
        assert_eq!(spec.validation_actions, Some(vec!["Deny".to_string()]));
        let selector = spec
            .match_resources
            .and_then(|m| m.namespace_selector)
            .and_then(|s| s.match_labels)
            .expect("the tenant's namespaces");
        assert_eq!(selector.get(TENANT_LABEL).map(String::as_str), Some("acme"));
    }
}

#[test]
fn the_owners_policy_covers_templates_and_the_operators_objects_and_exempts_the_operator() {
    let policy = owners_policy(OPERATOR, &[]);
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
            .any(|m| m.contains("'compliance ' + variables.compliance")
                && m.contains("NetworkPolicy")),
        "{m:#?}"
    );
    assert!(m.iter().any(|m| m.contains("made by the operator")));
    variables_are_declared_and_used(&policy);
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
fn the_owners_namespace_rules_read_the_room_and_the_declared_names_from_the_tenant() {
    let policy = owners_policy("op", &[]);
    let spec = policy.spec.clone().expect("spec");
    let all = expressions(&policy).join("\n");
    assert!(
        all.contains("variables.room != null && variables.room.count < variables.room.limit"),
        "{all}"
    );
    assert!(
        all.contains("params.status.namespaceRoom"),
        "the room comes from the Tenant's status: {all}"
    );
    assert!(
        all.contains("object.metadata.name.startsWith(params.metadata.name + '-')"),
        "{all}"
    );
    assert!(
        all.contains("params.spec.namespaces : []).map(n, params.metadata.name + '-' + n)"),
        "{all}"
    );
    let rules = spec
        .match_constraints
        .and_then(|m| m.resource_rules)
        .unwrap_or_default();
    assert!(rules.iter().any(|r| {
        r.resources.as_deref() == Some(&["namespaces".to_string()][..])
            && r.operations.as_deref() == Some(&["CREATE".to_string(), "DELETE".to_string()][..])
    }));
    // The cluster-wide policy applies to owners only, not to the operator
    // nor to whoever may update Tenants.
    let (cluster, _) = owner_namespaces_policy("op");
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
fn the_network_rules_default_as_the_tenant_schema_does() {
    let policy = owners_policy("op", &[]);
    let all = expressions(&policy).join("\n");
    // Unset, the platform's labels are the Tenant's default ones, egress is
    // allowed (no blocks) and policies are unlocked unless a compliance
    // profile is set.
    assert!(all.contains("{'aleph.dev/platform': 'true'}"), "{all}");
    assert!(
        all.contains("params.spec.network.egress : 'Allow') == 'Restricted'"),
        "{all}"
    );
    assert!(all.contains("|| variables.compliance != 'none'"), "{all}");
    assert!(
        all.contains("d.ports.exists(q, string(q) == string(x.port))"),
        "{all}"
    );
}

#[test]
fn quotes_in_names_cannot_break_out_of_a_cel_string() {
    assert_eq!(lit("a'b\\c"), "'a\\'b\\\\c'");
    assert_eq!(cel_list(&["x".into(), "y'".into()]), "['x', 'y\\'']");
}
