//! Plugins end to end, against the operator started by the test command: the
//! sandbox, permissions, automatic rollback, disable/enable, deletion, and a
//! tenant's admission rules applied to plugin pods.

use std::time::Duration;

use aleph_crds::plugin::Plugin;
use aleph_e2e::{
    TestEnv, can_i, find_condition, has_condition, live_pods, refusal, table_row, tenant_manifest,
    unique_name, wait_for, wait_for_deletion,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

mod tenant_support;
use tenant_support::ready_tenant;

const TIMEOUT: Duration = Duration::from_secs(90);
const EXAMPLE: &str = include_str!("../../examples/plugin.yaml");

/// A fresh test namespace with the plugin `name` at `version` (`extra` ends
/// its spec) applied and Running.
async fn running_plugin(name: &str, version: &str, extra: &str) -> (TestEnv, Api<Plugin>) {
    let env = TestEnv::new().await;
    env.apply_yaml(&plugin_yaml(name, version, extra)).await;
    let plugins: Api<Plugin> = env.api();
    ready(&plugins, name, "Running").await;
    (env, plugins)
}

fn plugin_yaml(name: &str, version: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: aleph.dev/v1alpha1
kind: Plugin
metadata: {{ name: {name} }}
spec:
  version: {version}
  image: ghcr.io/acme/{name}:{version}
  port: 9000
  protocol: TCP
  replicas: 2
  resources: {{ cpu: 100m, memory: 64Mi }}
  config: {{ settings.json: '{{"level": "info"}}' }}
{extra}
"#
    )
}

fn reason(plugin: &Plugin, type_: &str) -> String {
    find_condition(plugin, type_)
        .and_then(|c| c.reason)
        .unwrap_or_default()
}

fn message(plugin: &Plugin, type_: &str) -> String {
    find_condition(plugin, type_)
        .and_then(|c| c.message)
        .unwrap_or_default()
}

/// Waits until the plugin `name`, at its current generation, has the
/// condition `type_` with `reason`, whose message says `says`.
async fn wait_reason(
    plugins: &Api<Plugin>,
    name: &str,
    type_: &str,
    reason_is: &str,
    says: &str,
) -> Plugin {
    let plugin = wait_for(plugins, name, TIMEOUT, |p| {
        current(p) && reason(p, type_) == reason_is
    })
    .await;
    let text = message(&plugin, type_);
    assert!(text.contains(says), "{text}");
    plugin
}

/// Asserts that a security context's seccomp profile is the runtime's default.
#[track_caller]
fn assert_runtime_default(profile: Option<k8s_openapi::api::core::v1::SeccompProfile>) {
    assert_eq!(profile.map(|p| p.type_).as_deref(), Some("RuntimeDefault"));
}

fn current(plugin: &Plugin) -> bool {
    plugin.status.as_ref().and_then(|s| s.observed_generation) == plugin.metadata.generation
}

/// Moves the plugin `name` to `version` (its image `ghcr.io/acme/{name}:{version}`),
/// with the fields of the object `also` in the same change of its spec.
async fn upgrade(plugins: &Api<Plugin>, name: &str, version: &str, also: serde_json::Value) {
    let mut spec = also;
    spec["version"] = version.into();
    spec["image"] = format!("ghcr.io/acme/{name}:{version}").into();
    merge(plugins, name, serde_json::json!({ "spec": spec })).await;
}

/// Waits until the plugin reports `Ready=True` with `reason` for its current spec.
async fn ready(plugins: &Api<Plugin>, name: &str, reason_: &str) -> Plugin {
    wait_for(plugins, name, TIMEOUT, |p| {
        current(p) && has_condition(p, "Ready", "True") && reason(p, "Ready") == reason_
    })
    .await
}

async fn merge(plugins: &Api<Plugin>, name: &str, patch: serde_json::Value) {
    plugins
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patch plugin {name}: {e}"));
}

async fn plugin_pods(env: &TestEnv, namespace: &str, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(env.client(), namespace);
    live_pods(&pods, &format!("aleph.dev/plugin={name}"), "list pods").await
}

async fn events(env: &TestEnv, namespace: &str, name: &str) -> Vec<(String, String, String)> {
    let api: Api<Event> = Api::namespaced(env.client(), namespace);
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("Plugin")
                && e.involved_object.name.as_deref() == Some(name)
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits (bounded) for an event of `reason` about the plugin and returns its message.
async fn event(env: &TestEnv, namespace: &str, name: &str, reason_: &str) -> String {
    for _ in 0..60 {
        if let Some((_, _, note)) = events(env, namespace, name)
            .await
            .into_iter()
            .find(|(_, r, _)| r == reason_)
        {
            return note;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "no {reason_} event for plugin {name}; events: {:?}",
        events(env, namespace, name).await
    );
}

fn service_account_client(env: &TestEnv, namespace: &str, name: &str) -> kube::Client {
    let groups = [
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_string(),
    ];
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    env.impersonated_client(
        &format!("system:serviceaccount:{namespace}:{name}"),
        &groups,
    )
}

#[tokio::test]
async fn example_plugin_runs_sandboxed_without_a_token_and_with_only_the_listed_egress() {
    let env = TestEnv::new().await;
    let ns = env.namespace().to_string();
    // The example, under a RuntimeClass of this test's own.
    let runtime_class = unique_name("e2e-sandbox");
    env.apply_yaml(&format!(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {{ name: {runtime_class} }}\nhandler: runsc\n"
    ))
    .await;
    let manifest = EXAMPLE.replace(
        "    # runtimeClassName: gvisor",
        &format!("    runtimeClassName: {runtime_class}"),
    );
    assert_ne!(manifest, EXAMPLE, "the example names no runtimeClassName");
    env.apply_yaml(&manifest).await;

    let plugins: Api<Plugin> = env.api();
    let plugin = ready(&plugins, "pii-redactor", "Running").await;
    let status = plugin.status.clone().expect("status");
    assert_eq!(status.current_version.as_deref(), Some("1.4.2"));
    assert_eq!(status.last_good_version.as_deref(), Some("1.4.2"));
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("pii-redactor.{ns}.svc:8080").as_str())
    );
    assert!(has_condition(&plugin, "Progressing", "False"));
    assert!(has_condition(&plugin, "Degraded", "False"));
    assert!(
        event(&env, &ns, "pii-redactor", "PluginInstalled")
            .await
            .contains("1.4.2")
    );

    // Printer columns.
    let table = env
        .kubectl(["get", "plugins.aleph.dev", "pii-redactor"])
        .await
        .expect_success()
        .stdout;
    let header = table_row(&table, 0);
    assert_eq!(
        header,
        ["NAME", "VERSION", "MODE", "READY", "AGE"],
        "{table}"
    );
    let row = table_row(&table, 1);
    assert_eq!(
        row[..4],
        ["pii-redactor", "1.4.2", "service", "True"],
        "{table}"
    );

    // Every pod, as admitted by the API server: each sandbox field, no token.
    let pods = plugin_pods(&env, &ns, "pii-redactor").await;
    assert_eq!(pods.len(), 2, "two replicas");
    for pod in &pods {
        let spec = pod.spec.clone().expect("pod spec");
        assert_eq!(spec.service_account_name.as_deref(), Some("pii-redactor"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.runtime_class_name.as_deref(),
            Some(runtime_class.as_str())
        );
        let psc = spec.security_context.clone().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_runtime_default(psc.seccomp_profile);
        let volumes = spec.volumes.clone().unwrap_or_default();
        assert!(
            !volumes
                .iter()
                .any(|v| v.name.starts_with("kube-api-access") || v.projected.is_some()),
            "a service-account token volume was mounted: {volumes:?}"
        );
        assert_eq!(spec.containers.len(), 1);
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("ghcr.io/acme/pii-redactor:1.4.2"));
        let sc = c
            .security_context
            .clone()
            .expect("container security context");
        assert_eq!(
            (
                sc.run_as_non_root,
                sc.read_only_root_filesystem,
                sc.allow_privilege_escalation
            ),
            (Some(true), Some(true), Some(false)),
            "non-root, read-only root, no privilege escalation"
        );
        assert_ne!(sc.privileged, Some(true));
        assert!(
            sc.capabilities
                .as_ref()
                .is_none_or(|c| c.add.as_ref().is_none_or(Vec::is_empty)),
            "capabilities added"
        );
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        assert_runtime_default(sc.seccomp_profile);
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        assert!(
            !mounts
                .iter()
                .any(|m| m.mount_path.starts_with("/var/run/secrets/kubernetes.io")),
            "a token is mounted: {mounts:?}"
        );
        let tmp = mounts
            .iter()
            .find(|m| m.mount_path == "/tmp")
            .expect("/tmp");
        assert_ne!(tmp.read_only, Some(true));
        assert!(
            volumes
                .iter()
                .any(|v| v.name == tmp.name && v.empty_dir.is_some())
        );
        let config = mounts
            .iter()
            .find(|m| m.mount_path == "/etc/aleph-plugin")
            .expect("config mount");
        assert_eq!(config.read_only, Some(true));
        let limits = c
            .resources
            .clone()
            .and_then(|r| r.limits)
            .unwrap_or_default();
        assert_eq!(limits.get("cpu").map(|q| q.0.as_str()), Some("500m"));
    }

    let sa: Api<ServiceAccount> = env.api();
    let sa = sa.get("pii-redactor").await.expect("service account");
    assert_eq!(sa.automount_service_account_token, Some(false));
    let cm: Api<ConfigMap> = env.api();
    let cm = cm.get("pii-redactor-config").await.expect("config map");
    assert!(
        cm.data
            .unwrap_or_default()
            .get("rules.yaml")
            .is_some_and(|r| r.contains("redact"))
    );
    let svc: Api<Service> = env.api();
    let svc = svc.get("pii-redactor").await.expect("service");
    assert_eq!(svc.spec.and_then(|s| s.ports).expect("ports")[0].port, 8080);
    let roles: Api<Role> = env.api();
    assert!(
        roles
            .get_opt("aleph-plugin-pii-redactor")
            .await
            .expect("get role")
            .is_none(),
        "a Role without declared permissions"
    );

    // The NetworkPolicy: DNS and the one listed destination out; in only from
    // this namespace (it belongs to no tenant), on the service port.
    let nps: Api<NetworkPolicy> = env.api();
    let np = nps
        .get("aleph-plugin-pii-redactor")
        .await
        .expect("network policy");
    let spec = np.spec.expect("spec");
    assert_eq!(
        spec.pod_selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default()
            .get("aleph.dev/plugin")
            .map(String::as_str),
        Some("pii-redactor")
    );
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_string(), "Egress".to_string()])
    );
    let egress = spec.egress.unwrap_or_default();
    assert_eq!(egress.len(), 2, "{egress:?}");
    let dns = &egress[0];
    let dns_to = dns.to.clone().unwrap_or_default();
    assert_eq!(
        dns_to[0]
            .namespace_selector
            .clone()
            .and_then(|s| s.match_labels)
            .unwrap_or_default()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("kube-system")
    );
    let mut dns_ports: Vec<(String, Option<IntOrString>)> = dns
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.protocol.unwrap_or_default(), p.port))
        .collect();
    dns_ports.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        dns_ports,
        vec![
            ("TCP".to_string(), Some(IntOrString::Int(53))),
            ("UDP".to_string(), Some(IntOrString::Int(53)))
        ]
    );
    let listed = &egress[1];
    let to = listed.to.clone().unwrap_or_default();
    assert_eq!(to.len(), 1);
    let block = to[0].ip_block.clone().expect("ipBlock");
    assert_eq!(block.cidr, "10.20.0.0/16");
    assert!(to[0].namespace_selector.is_none() && to[0].pod_selector.is_none());
    let ports = listed.ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::Int(443)));
    let ingress = spec.ingress.unwrap_or_default();
    assert_eq!(ingress.len(), 1);
    let from = ingress[0].from.clone().unwrap_or_default();
    assert_eq!(from.len(), 1);
    assert!(from[0].namespace_selector.is_none() && from[0].pod_selector.is_some());
    assert_eq!(
        ingress[0].ports.clone().unwrap_or_default()[0].port,
        Some(IntOrString::Int(8080))
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_service_account_gets_exactly_the_declared_permissions() {
    let name = "indexer";
    let declared = r#"  permissions:
    - apiGroups: [""]
      resources: [configmaps]
      verbs: [get, list, watch]
    - apiGroups: [apps]
      resources: [deployments]
      verbs: [get]
"#;
    let (env, plugins) = running_plugin(name, "2.0.0", declared).await;
    let ns = env.namespace().to_string();

    // With permissions, the pods get a token for them.
    let sa: Api<ServiceAccount> = env.api();
    assert_eq!(
        sa.get(name)
            .await
            .expect("service account")
            .automount_service_account_token,
        Some(true)
    );
    let pods = plugin_pods(&env, &ns, name).await;
    assert!(!pods.is_empty());
    for pod in &pods {
        assert_eq!(
            pod.spec
                .as_ref()
                .and_then(|s| s.automount_service_account_token),
            Some(true)
        );
    }

    let client = service_account_client(&env, &ns, name);
    let allowed = [
        ("get", "configmaps", ""),
        ("list", "configmaps", ""),
        ("watch", "configmaps", ""),
        ("get", "deployments", "apps"),
    ];
    let denied = [
        ("create", "configmaps", ""),
        ("update", "configmaps", ""),
        ("delete", "configmaps", ""),
        ("list", "deployments", "apps"),
        ("update", "deployments", "apps"),
        ("get", "secrets", ""),
        ("list", "pods", ""),
        ("create", "roles", "rbac.authorization.k8s.io"),
    ];
    let mut matrix = Vec::new();
    for (verb, resource, group) in allowed {
        let here = can_i(client.clone(), verb, resource, group, &ns).await;
        let elsewhere = can_i(client.clone(), verb, resource, group, "default").await;
        matrix.push(format!(
            "{verb} {resource}: here={here} default={elsewhere}"
        ));
        assert!(here, "the plugin cannot {verb} {resource} it declared");
        assert!(
            !elsewhere,
            "the plugin can {verb} {resource} in another namespace"
        );
    }
    for (verb, resource, group) in denied {
        let here = can_i(client.clone(), verb, resource, group, &ns).await;
        matrix.push(format!("{verb} {resource}: here={here}"));
        assert!(!here, "the plugin can {verb} {resource}, never declared");
    }
    println!(
        "can-i matrix of the plugin's ServiceAccount:\n{}",
        matrix.join("\n")
    );
    // Real requests too.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.list(&ListParams::default())
        .await
        .expect("the plugin lists configmaps");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let refused = secrets.list(&ListParams::default()).await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{refused:?}"
    );

    // Taking the permissions away removes the Role, its binding and the token.
    merge(
        &plugins,
        name,
        serde_json::json!({ "spec": { "permissions": null } }),
    )
    .await;
    let roles: Api<Role> = env.api();
    let bindings: Api<RoleBinding> = env.api();
    wait_for_deletion(&bindings, &format!("aleph-plugin-{name}"), TIMEOUT).await;
    wait_for_deletion(&roles, &format!("aleph-plugin-{name}"), TIMEOUT).await;
    assert!(!can_i(client.clone(), "list", "configmaps", "", &ns).await);
    wait_for(&sa, name, TIMEOUT, |s| {
        s.automount_service_account_token == Some(false)
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn permissions_beyond_the_namespace_are_refused() {
    let env = TestEnv::new().await;
    // Wildcards: refused by the API server at apply.
    let wildcard = plugin_yaml(
        "wild",
        "1.0.0",
        "  permissions: [{ apiGroups: [\"\"], resources: [\"*\"], verbs: [get] }]",
    );
    let out = env
        .kubectl_with_stdin(["apply", "--dry-run=server", "-f", "-"], &wildcard)
        .await;
    assert!(
        !out.success() && out.stderr.contains("wildcards are not allowed"),
        "{out}"
    );
    // Cluster-scoped resources: the operator says the spec is invalid.
    env.apply_yaml(&plugin_yaml(
        "nodes-reader",
        "1.0.0",
        "  permissions: [{ apiGroups: [\"\"], resources: [nodes], verbs: [get, list] }]",
    ))
    .await;
    let plugins: Api<Plugin> = env.api();
    wait_reason(
        &plugins,
        "nodes-reader",
        "Ready",
        "InvalidSpec",
        "cluster-wide",
    )
    .await;
    assert!(
        !env.exists::<Deployment>("nodes-reader").await,
        "an invalid plugin was deployed"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn an_upgrade_that_never_becomes_ready_is_rolled_back() {
    let name = "ranker";
    let (env, plugins) = running_plugin(name, "1.0.0", "  progressDeadlineSeconds: 20").await;
    let ns = env.namespace().to_string();

    // 1.1.0's pods run but never become Ready.
    let never_ready =
        serde_json::json!({ "podAnnotations": { "aleph.dev/test-never-ready": "true" } });
    upgrade(&plugins, name, "1.1.0", never_ready).await;
    let rolling = wait_for(&plugins, name, TIMEOUT, |p| {
        current(p) && has_condition(p, "Progressing", "True")
    })
    .await;
    assert_eq!(reason(&rolling, "Ready"), "RollingOut");
    assert_eq!(
        message(&rolling, "Progressing"),
        "Rolling out version 1.1.0 (was 1.0.0)"
    );
    // The old version serves meanwhile.
    assert_eq!(
        rolling
            .status
            .as_ref()
            .and_then(|s| s.current_version.as_deref()),
        Some("1.0.0")
    );

    let rolled = wait_for(&plugins, name, TIMEOUT, |p| {
        current(p) && has_condition(p, "Degraded", "True") && reason(p, "Degraded") == "RolledBack"
    })
    .await;
    let text = message(&rolled, "Degraded");
    assert_eq!(
        text,
        "Version 1.1.0 was not ready within 20s and was rolled back to 1.0.0; publish a fixed version"
    );
    let status = rolled.status.clone().expect("status");
    assert_eq!(status.failed_version.as_deref(), Some("1.1.0"));
    assert_eq!(status.last_good_version.as_deref(), Some("1.0.0"));
    assert_eq!(status.current_version.as_deref(), Some("1.0.0"));
    let note = event(&env, &ns, name, "PluginRolledBack").await;
    assert!(note.contains("1.1.0") && note.contains("1.0.0"), "{note}");
    assert!(
        events(&env, &ns, name)
            .await
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "PluginRolledBack")
    );

    // The Deployment runs 1.0.0 again, without the bad annotation, on every replica.
    let deployments: Api<Deployment> = env.api();
    let deployment = wait_for(&deployments, name, TIMEOUT, |d| {
        let status = d.status.clone().unwrap_or_default();
        status.observed_generation == d.metadata.generation
            && status.updated_replicas == Some(2)
            && status.ready_replicas == Some(2)
            && status.replicas == Some(2)
    })
    .await;
    let template = deployment.spec.expect("spec").template;
    assert_eq!(
        template.spec.expect("pod spec").containers[0]
            .image
            .as_deref(),
        Some(format!("ghcr.io/acme/{name}:1.0.0").as_str())
    );
    assert!(
        !template
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default()
            .contains_key("aleph.dev/test-never-ready")
    );
    let back = ready(&plugins, name, "Running").await;
    assert_eq!(message(&back, "Ready"), "Version 1.0.0 is running");
    assert!(has_condition(&back, "Degraded", "True"));

    // Not retried while the spec stays the same.
    let generation = deployment.metadata.generation;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = deployments.get(name).await.expect("deployment");
    assert_eq!(
        again.metadata.generation, generation,
        "the bad version was retried"
    );

    // A fixed version rolls out and clears Degraded (with a deadline a busy
    // cluster cannot miss).
    let fix = serde_json::json!({ "podAnnotations": null, "progressDeadlineSeconds": 300 });
    upgrade(&plugins, name, "1.2.0", fix).await;
    let fixed = wait_for(&plugins, name, TIMEOUT, |p| {
        current(p)
            && has_condition(p, "Ready", "True")
            && has_condition(p, "Degraded", "False")
            && p.status.as_ref().and_then(|s| s.current_version.as_deref()) == Some("1.2.0")
    })
    .await;
    let status = fixed.status.expect("status");
    assert_eq!(status.last_good_version.as_deref(), Some("1.2.0"));
    assert!(status.failed_version.is_none());
    let note = event(&env, &ns, name, "PluginUpgraded").await;
    assert!(note.contains("1.0.0") && note.contains("1.2.0"), "{note}");
    env.cleanup().await;
}

#[tokio::test]
async fn disable_and_enable_keep_the_configuration_and_deletion_removes_every_child() {
    let name = "summarizer";
    let (env, plugins) = running_plugin(
        name,
        "3.1.0",
        "  permissions: [{ apiGroups: [\"\"], resources: [configmaps], verbs: [get] }]",
    )
    .await;
    let ns = env.namespace().to_string();
    assert_eq!(plugin_pods(&env, &ns, name).await.len(), 2);

    merge(
        &plugins,
        name,
        serde_json::json!({ "spec": { "disabled": true } }),
    )
    .await;
    let disabled = ready(&plugins, name, "Disabled").await;
    assert!(has_condition(&disabled, "Progressing", "False"));
    let deployments: Api<Deployment> = env.api();
    wait_for(&deployments, name, TIMEOUT, |d| {
        d.spec.as_ref().and_then(|s| s.replicas) == Some(0)
            && d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0) == 0
    })
    .await;
    let cms: Api<ConfigMap> = env.api();
    assert!(
        cms.get(&format!("{name}-config"))
            .await
            .expect("config kept")
            .data
            .unwrap_or_default()
            .contains_key("settings.json")
    );
    let services: Api<Service> = env.api();
    services.get(name).await.expect("service kept");
    let table = env
        .kubectl(["get", "plugins.aleph.dev", name, "-o", "wide"])
        .await
        .expect_success()
        .stdout;
    assert!(table.contains("Disabled"), "{table}");

    merge(
        &plugins,
        name,
        serde_json::json!({ "spec": { "disabled": false } }),
    )
    .await;
    ready(&plugins, name, "Running").await;
    assert_eq!(plugin_pods(&env, &ns, name).await.len(), 2);

    // Deleting the plugin removes every child it made.
    plugins
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete plugin");
    wait_for_deletion(&plugins, name, TIMEOUT).await;
    let policy = format!("aleph-plugin-{name}");
    wait_for_deletion(&deployments, name, TIMEOUT).await;
    wait_for_deletion(&services, name, TIMEOUT).await;
    wait_for_deletion(&cms, &format!("{name}-config"), TIMEOUT).await;
    wait_for_deletion(&env.api::<ServiceAccount>(), name, TIMEOUT).await;
    wait_for_deletion(&env.api::<Role>(), &policy, TIMEOUT).await;
    wait_for_deletion(&env.api::<RoleBinding>(), &policy, TIMEOUT).await;
    wait_for_deletion(&env.api::<NetworkPolicy>(), &policy, TIMEOUT).await;
    for _ in 0..120 {
        if plugin_pods(&env, &ns, name).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        plugin_pods(&env, &ns, name).await.is_empty(),
        "pods survive"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn job_templates_are_ready_without_a_deployment() {
    let env = TestEnv::new().await;
    let name = "tokenizer";
    env.apply_yaml(
        &plugin_yaml(name, "0.3.0", "")
            .replace("  port: 9000\n", "")
            .replace("spec:\n", "spec:\n  mode: job\n"),
    )
    .await;
    let plugins: Api<Plugin> = env.api();
    let plugin = ready(&plugins, name, "Available").await;
    let status = plugin.status.expect("status");
    assert_eq!(
        status.current_image.as_deref(),
        Some("ghcr.io/acme/tokenizer:0.3.0")
    );
    assert!(status.endpoint.is_none());
    let cms: Api<ConfigMap> = env.api();
    cms.get(&format!("{name}-config"))
        .await
        .expect("config map");
    let nps: Api<NetworkPolicy> = env.api();
    let np = nps
        .get(&format!("aleph-plugin-{name}"))
        .await
        .expect("network policy");
    assert_eq!(
        np.spec.and_then(|s| s.ingress).unwrap_or_default().len(),
        0,
        "a job template takes no ingress"
    );
    let deployments: Api<Deployment> = env.api();
    assert!(deployments.get_opt(name).await.expect("get").is_none());
    let services: Api<Service> = env.api();
    assert!(services.get_opt(name).await.expect("get").is_none());
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenants_admission_rules_apply_to_plugin_pods() {
    let env = TestEnv::new().await;
    let tenant = unique_name("tnplg");
    let yaml = tenant_manifest(
        &tenant,
        &format!(
            r#"  owners: [{{ kind: User, name: {tenant}-alice, role: admin }}]
  namespaces: [plugins]
  plan: pro
  quota: {{ cpu: "1" }}
  admission:
    allowedRegistries: ["ghcr.io/acme/"]
"#
        ),
    );
    // Applied, and Ready within 90 s.
    ready_tenant(&env, &tenant, &yaml).await;
    let ns = format!("{tenant}-plugins");
    // Wait until the tenant's rule is in force.
    let pods: Api<Pod> = Api::namespaced(env.client(), &ns);
    let probe: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "probe" },
        "spec": { "containers": [{ "name": "main", "image": "docker.io/library/nginx:1.27" }] },
    }))
    .expect("pod");
    let refused = refusal(&pods, probe).await;
    assert!(refused.contains("allowedRegistries"), "{refused}");

    let plugins: Api<Plugin> = Api::namespaced(env.client(), &ns);
    let outside = plugin_yaml("web-scraper", "1.0.0", "")
        .replace(
            "image: ghcr.io/acme/web-scraper:1.0.0",
            "image: docker.io/library/nginx:1.27",
        )
        .replace(
            "metadata: { name: web-scraper }",
            &format!("metadata: {{ name: web-scraper, namespace: {ns} }}"),
        );
    env.apply_yaml(&outside).await;
    let refused = wait_for(&plugins, "web-scraper", TIMEOUT, |p| {
        current(p)
            && has_condition(p, "Degraded", "True")
            && reason(p, "Degraded") == "AdmissionDenied"
            && message(p, "Degraded").contains("allowedRegistries")
    })
    .await;
    assert!(has_condition(&refused, "Ready", "False"));
    assert_eq!(reason(&refused, "Ready"), "AdmissionDenied");
    assert!(
        message(&refused, "Ready").contains("docker.io/library/nginx:1.27"),
        "{}",
        message(&refused, "Ready")
    );

    // Pods beyond the tenant's CPU quota: refused too, and said so.
    let heavy = plugin_yaml("heavy", "1.0.0", "")
        .replace("cpu: 100m", "cpu: \"2\"")
        .replace(
            "metadata: { name: heavy }",
            &format!("metadata: {{ name: heavy, namespace: {ns} }}"),
        );
    env.apply_yaml(&heavy).await;
    let over = wait_reason(
        &plugins,
        "heavy",
        "Degraded",
        "QuotaExceeded",
        "exceeded quota",
    )
    .await;
    assert_eq!(reason(&over, "Ready"), "QuotaExceeded");

    // A plugin from the allowed registry runs there, reachable from the tenant only.
    let inside = plugin_yaml("summarizer", "1.0.0", "").replace(
        "metadata: { name: summarizer }",
        &format!("metadata: {{ name: summarizer, namespace: {ns} }}"),
    );
    env.apply_yaml(&inside).await;
    ready(&plugins, "summarizer", "Running").await;
    let nps: Api<NetworkPolicy> = Api::namespaced(env.client(), &ns);
    let np = nps
        .get("aleph-plugin-summarizer")
        .await
        .expect("network policy");
    assert_eq!(
        np.metadata
            .labels
            .unwrap_or_default()
            .get("aleph.dev/tenant"),
        Some(&tenant)
    );
    let from = np.spec.and_then(|s| s.ingress).unwrap_or_default()[0]
        .from
        .clone()
        .unwrap_or_default();
    assert_eq!(
        from[0]
            .namespace_selector
            .clone()
            .and_then(|s| s.match_labels)
            .unwrap_or_default()
            .get("aleph.dev/tenant"),
        Some(&tenant)
    );
    env.cleanup().await;
}
