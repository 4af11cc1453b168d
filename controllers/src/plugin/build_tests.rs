use super::*;
use aleph_crds::keys::{PLUGIN_RELEASE_ANNOTATION, PLUGIN_VERSION_ANNOTATION, TENANT_LABEL};

pub(crate) fn plugin(yaml: &str) -> Plugin {
    let mut p: Plugin = serde_saphyr::from_str(yaml).expect("fixture parses");
    p.metadata.uid = Some("uid-1".into());
    p.metadata.namespace = Some("acme-research".into());
    p
}

const EXAMPLE: &str = include_str!("../../../examples/plugin.yaml");

const JOB: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: Plugin
metadata: { name: tokenizer }
spec:
  version: 0.3.0
  image: ghcr.io/acme/tokenizer:0.3.0
  mode: job
  permissions:
    - apiGroups: [""]
      resources: [configmaps]
      verbs: [get, list]
    - apiGroups: [apps]
      resources: [deployments]
      verbs: [get]
"#;

fn target(p: &Plugin) -> Target<'_> {
    Target {
        plugin: p,
        tenant: Some("acme"),
    }
}

#[test]
fn every_pod_runs_in_the_sandbox_without_a_token() {
    let p = plugin(EXAMPLE);
    let d = deployment(target(&p), &PluginRelease::of(&p.spec));
    let spec = d.spec.expect("spec");
    assert_eq!(spec.progress_deadline_seconds, Some(120));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.service_account_name.as_deref(), Some("pii-redactor"));
    let psc = pod.security_context.expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(SANDBOX_USER));
    assert_eq!(psc.run_as_group, Some(SANDBOX_USER));
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
    assert!(pod.runtime_class_name.is_none());
    let c = &pod.containers[0];
    let sc = c
        .security_context
        .clone()
        .expect("container security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == CONFIG_DIR && m.read_only == Some(true))
    );
    let sa = service_account(target(&p));
    assert_eq!(sa.automount_service_account_token, Some(false));
    assert!(role(target(&p)).is_none() && role_binding(target(&p)).is_none());
}

#[test]
fn upgrades_keep_the_old_pods_until_new_ones_are_ready() {
    let p = plugin(EXAMPLE);
    let d = deployment(target(&p), &PluginRelease::of(&p.spec));
    let rolling = d
        .spec
        .and_then(|s| s.strategy)
        .and_then(|s| s.rolling_update)
        .expect("rolling update");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
}

#[test]
fn disabled_scales_to_zero_and_keeps_the_rest() {
    let mut p = plugin(EXAMPLE);
    p.spec.disabled = true;
    let d = deployment(target(&p), &PluginRelease::of(&p.spec));
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(0));
    assert!(
        config_map(target(&p), &PluginRelease::of(&p.spec))
            .data
            .is_some()
    );
    assert!(service(target(&p)).is_some());
}

#[test]
fn the_release_shapes_the_pods() {
    let p = plugin(EXAMPLE);
    let mut old = PluginRelease::of(&p.spec);
    old.version = "1.0.0".into();
    old.image = "ghcr.io/acme/pii-redactor:1.0.0".into();
    old.pod_annotations.clear();
    let new = PluginRelease::of(&p.spec);
    assert_ne!(release_hash(&old), release_hash(&new));
    let template = pod_template(target(&p), &old);
    let annotations = template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(
        annotations
            .get(PLUGIN_VERSION_ANNOTATION)
            .map(String::as_str),
        Some("1.0.0")
    );
    assert_eq!(
        annotations.get(PLUGIN_RELEASE_ANNOTATION),
        Some(&release_hash(&old))
    );
    let image = template.spec.map(|s| s.containers[0].image.clone());
    assert_eq!(
        image.flatten().as_deref(),
        Some("ghcr.io/acme/pii-redactor:1.0.0")
    );
}

#[test]
fn permissions_become_exactly_one_role_bound_to_the_plugin() {
    let p = plugin(JOB);
    let r = role(target(&p)).expect("role");
    let rules = r.rules.expect("rules");
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].verbs, vec!["get".to_string(), "list".to_string()]);
    assert_eq!(rules[1].api_groups, Some(vec!["apps".to_string()]));
    let rb = role_binding(target(&p)).expect("binding");
    assert_eq!(rb.role_ref.name, "aleph-plugin-tokenizer");
    let subject = &rb.subjects.expect("subjects")[0];
    assert_eq!(subject.name, "tokenizer");
    assert_eq!(subject.namespace.as_deref(), Some("acme-research"));
    assert_eq!(
        service_account(target(&p)).automount_service_account_token,
        Some(true)
    );
    assert!(service(target(&p)).is_none());
    assert!(endpoint(&p).is_none());
}

#[test]
fn network_policy_allows_dns_the_listed_egress_and_the_tenant() {
    let p = plugin(EXAMPLE);
    let np = network_policy(target(&p));
    assert_eq!(
        np.metadata.name.as_deref(),
        Some("aleph-plugin-pii-redactor")
    );
    let spec = np.spec.expect("spec");
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_string(), "Egress".to_string()])
    );
    let egress = spec.egress.expect("egress");
    assert_eq!(egress.len(), 1 + p.spec.sandbox.allowed_egress.len());
    let dns_ports = egress[0].ports.clone().unwrap_or_default();
    assert_eq!(dns_ports.len(), 2);
    for (rule, dest) in egress[1..].iter().zip(&p.spec.sandbox.allowed_egress) {
        let to = rule.to.clone().unwrap_or_default();
        assert_eq!(
            to[0].ip_block.as_ref().map(|b| b.cidr.clone()),
            Some(dest.cidr.clone())
        );
    }
    let ingress = spec.ingress.expect("ingress");
    let from = ingress[0].from.clone().unwrap_or_default();
    let selector = from[0]
        .namespace_selector
        .clone()
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    assert_eq!(selector.get(TENANT_LABEL).map(String::as_str), Some("acme"));
    // Outside a tenant: the plugin's own namespace only.
    let alone = network_policy(Target {
        plugin: &p,
        tenant: None,
    });
    let from = alone.spec.and_then(|s| s.ingress).expect("ingress")[0]
        .from
        .clone()
        .unwrap_or_default();
    assert!(from[0].namespace_selector.is_none() && from[0].pod_selector.is_some());
    // A job template takes no ingress.
    let job = plugin(JOB);
    let ingress = network_policy(target(&job)).spec.and_then(|s| s.ingress);
    assert_eq!(ingress, Some(Vec::new()));
}

#[test]
fn service_and_endpoint_use_the_declared_port() {
    let p = plugin(EXAMPLE);
    let svc = service(target(&p)).expect("service");
    let port = &svc.spec.expect("spec").ports.expect("ports")[0];
    assert_eq!(port.port, 8080);
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        endpoint(&p).as_deref(),
        Some("pii-redactor.acme-research.svc:8080")
    );
}
