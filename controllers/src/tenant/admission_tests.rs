use super::*;
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
    let (policy, binding) = admission_policy(&t, &own).expect("rules");
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
    );
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
    let (policy, _) = owner_policy(&t, "op", &[], &NamespaceRoom::default());
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
    let (policy, _) = owner_policy(&t, "op", &[], &room);
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
