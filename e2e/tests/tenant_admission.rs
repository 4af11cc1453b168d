//! A tenant's admission rules on every path to a pod (UPDATE, ephemeral and
//! init containers, workload templates), GPU pinning, locked NetworkPolicies,
//! Services and Ingress hosts, runtime and storage classes; the Retain
//! deletion policy and additional RoleBindings. Owners act through
//! impersonation. Against the operator started by the test command.

mod tenant_support;

use std::time::Duration;

use aleph_crds::tenant::Tenant;
use aleph_e2e::{TestEnv, node_of, poll, unique_name, user_can, wait_for, wait_for_deletion};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tenant_support::*;

fn tenant_yaml(name: &str, extra: &str) -> String {
    let admission = format!(
        "  admission:\n    allowedRegistries: [\"ghcr.io/acme/\"]\n    allowedGpuProducts: [\"{H100}\"]\n{extra}\n"
    );
    pro_tenant(name, &[("alice", "admin")], "one, two", &admission)
}

/// Applies `yaml`, the Tenant `name`, and waits until it is Ready; returns
/// its owner alice (impersonated) and its namespace `one`.
async fn alice_in_one(env: &TestEnv, name: &str, yaml: &str) -> (kube::Client, String) {
    ready_tenant(env, name, yaml).await;
    let alice = env.impersonated_client(&format!("{name}-alice"), &[]);
    (alice, format!("{name}-one"))
}

/// A fresh [`TestEnv`] and, named after `prefix`, a Ready Tenant whose
/// admission adds `extra` to [`tenant_yaml`]'s; returns the env, the Tenant's
/// name, its owner alice (impersonated) and its namespace `one`. With
/// `debugger`, alice may also add ephemeral containers, which the built-in
/// admin role does not allow: a role that does is bound to her.
async fn env_with_alice(
    prefix: &str,
    extra: &str,
    debugger: bool,
) -> (TestEnv, String, kube::Client, String) {
    let env = TestEnv::new().await;
    let name = unique_name(prefix);
    let mut extra = extra.to_string();
    if debugger {
        extra += &debugger_role(&env, &format!("{name}-debugger"), &format!("{name}-alice")).await;
    }
    let (alice, ns) = alice_in_one(&env, &name, &tenant_yaml(&name, &extra)).await;
    (env, name, alice, ns)
}

/// The rules hold beyond a pod's CREATE: an image changed on a running pod,
/// an ephemeral container (`kubectl debug`), an init container, and the
/// templates of a Deployment and a CronJob are refused, each naming the rule.
/// A pod made the moment a new tenant's namespace exists, before the API
/// server has loaded the tenant's bindings (it does so about once a second),
/// is refused by the quota guard until the tenant's own rules hold: from the
/// namespace's first appearance to a while after the Tenant is Ready, every
/// attempt is refused, by the guard or by the tenant's registry rule, and
/// from Ready on by the rule at the first attempt.
#[tokio::test]
async fn a_pod_made_as_soon_as_a_tenants_namespace_exists_is_never_admitted() {
    let env = TestEnv::new().await;
    let name = unique_name("tnrace");
    let ns = format!("{name}-one");
    let tenants: Api<Tenant> = env.cluster_api();
    let pods: Api<Pod> = Api::namespaced(env.client(), &ns);
    let bad: Pod = typed(pod("early", "docker.io/evil/x:1"));
    env.kubectl_with_stdin(["apply", "-f", "-"], &tenant_yaml(&name, ""))
        .await
        .expect_success();
    env.delete_on_cleanup(kube::discovery::ApiResource::erase::<Tenant>(&()), &name);
    let guard = "the tenant quota of this namespace is not in place yet";
    let (mut by_guard, mut by_rule, mut no_namespace) = (0, 0, 0);
    let mut ready_at = None;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    // The cluster admin's dry runs: the tenant's rules hold for everyone.
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not Ready in {TIMEOUT:?}"
        );
        let message = outcome(pods.create(&dry_run(), &bad).await);
        if message.contains("NotFound") || message.contains("not found") {
            no_namespace += 1;
            assert!(ready_at.is_none(), "{ns} missing after Ready: {message}");
        } else if message.contains(guard) {
            by_guard += 1;
            assert!(
                ready_at.is_none(),
                "refused by the quota guard after the Tenant was Ready: {message}"
            );
        } else if refused_by(&message, "allowedRegistries") {
            by_rule += 1;
        } else {
            panic!(
                "a pod from a registry {name} does not allow, made as soon as {ns} existed, was {message} (after {by_guard} refusals by the quota guard)"
            );
        }
        match ready_at {
            None => {
                let tenant = tenants.get(&name).await.expect("the Tenant");
                if aleph_e2e::has_condition(&tenant, "Ready", "True") {
                    // The first attempt after Ready is the rule's.
                    ready_at = Some(by_rule + by_guard + no_namespace);
                }
            }
            Some(at) if by_rule + by_guard + no_namespace >= at + 20 => break,
            Some(_) => {}
        }
    }
    println!(
        "{name}: {no_namespace} attempts before {ns} existed, {by_guard} refused by the quota guard, {by_rule} by the tenant's registry rule"
    );
    assert!(
        by_guard > 0,
        "no attempt between {ns}'s creation and the Tenant's Ready: the test did not look at the window"
    );
    assert!(by_rule >= 20, "{by_rule} refusals by the rule after Ready");
    env.cleanup().await;
}

#[tokio::test]
async fn images_are_checked_on_update_ephemeral_init_containers_and_templates() {
    let (env, _, alice, ns) = env_with_alice("tnupd", "", true).await;
    let pods: Api<Pod> = Api::namespaced(alice.clone(), &ns);
    // In force for the owner first (the policies reach the API server's cache a moment after they are written).
    let first = create_refused(&pods, &pod("probe", "docker.io/evil/x:1")).await;
    assert!(refused_by(&first, "allowedRegistries"), "{first}");

    pods.create(
        &PostParams::default(),
        &typed(pod("p2", "ghcr.io/acme/web:1")),
    )
    .await
    .expect("an allowed pod is admitted");
    // `kubectl set image pod/p2 main=docker.io/evil/x:1`
    let set_image = pods
        .patch(
            "p2",
            &PatchParams::default(),
            &Patch::Strategic(json!({ "spec": { "containers": [{ "name": "main", "image": "docker.io/evil/x:1" }] } })),
        )
        .await;
    let message = outcome(set_image);
    assert!(
        refused_by(&message, "allowedRegistries") && message.contains("docker.io/evil/x:1"),
        "an image change by UPDATE: {message}"
    );
    // An unchanged image still lets the pod be updated (labels, finalizers).
    assert_pod_relabels(&pods, "p2").await;
    // `kubectl debug p2 --image=docker.io/evil/x:1`
    let message = outcome(debug_pod(&pods, "p2", "docker.io/evil/x:1", Some("main")).await);
    assert!(
        refused_by(&message, "allowedRegistries"),
        "an ephemeral container: {message}"
    );
    // An allowed debug image passes.
    debug_pod(&pods, "p2", "ghcr.io/acme/debug:1", None)
        .await
        .expect("an ephemeral container from an allowed registry is admitted");
    // An init container.
    let mut init = pod("init", "ghcr.io/acme/web:1");
    init["spec"]["initContainers"] = json!([container("fetch", "docker.io/evil/fetch:1")]);
    let message = outcome(pods.create(&PostParams::default(), &typed(init)).await);
    assert!(
        refused_by(&message, "allowedRegistries") && message.contains("docker.io/evil/fetch:1"),
        "an init container: {message}"
    );
    // A Deployment's template: refused at apply, not later in its ReplicaSet's events.
    owners_policy_in_force(&alice, &ns).await;
    let deployments: Api<Deployment> = Api::namespaced(alice.clone(), &ns);
    let message = outcome(
        deployments
            .create(
                &PostParams::default(),
                &typed(deployment("web", &pod("x", "docker.io/evil/x:1"))),
            )
            .await,
    );
    assert!(
        refused_by(&message, "allowedRegistries") && message.contains("pod template"),
        "a Deployment: {message}"
    );
    // And the same image through a CronJob's template.
    let cronjob = json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": { "name": "nightly" },
        "spec": { "schedule": "0 3 * * *", "jobTemplate": { "spec": { "template": {
            "spec": { "restartPolicy": "Never", "containers": [container("job", "docker.io/evil/x:1")] } } } } },
    });
    let cronjobs: Api<k8s_openapi::api::batch::v1::CronJob> = Api::namespaced(alice.clone(), &ns);
    assert_create_refused(&cronjobs, &typed(cronjob), "allowedRegistries", "a CronJob").await;
    env.cleanup().await;
}

/// The GPU-product rule reads node affinity as well as `nodeSelector`. A GPU
/// pod steered by node affinity to another product, or not pinned at all, is
/// refused with a message that says how to pin it; pinned by affinity to an
/// allowed product, it is admitted and lands there.
#[tokio::test]
async fn gpu_pods_must_be_pinned_to_an_allowed_product() {
    let (env, _, alice, ns) = env_with_alice("tnpin", "", false).await;
    let pods: Api<Pod> = Api::namespaced(alice.clone(), &ns);
    let image = "ghcr.io/acme/train:1";

    let mut to_a100 = gpu_pod("a100", image, 1);
    to_a100["spec"]["affinity"] = affinity(&[A100]);
    let message =
        until_refused(async || pods.create(&dry_run(), &typed(to_a100.clone())).await).await;
    assert!(
        refused_by(&message, "allowedGpuProducts"),
        "affinity to an A100: {message}"
    );
    owners_policy_in_force(&alice, &ns).await;

    let mut either = gpu_pod("either", image, 1);
    either["spec"]["affinity"] = affinity(&[H100, A100]);
    assert_create_refused(
        &pods,
        &typed(either),
        "allowedGpuProducts",
        "affinity to H100 or A100",
    )
    .await;

    let unpinned = gpu_pod("unpinned", image, 1);
    let message = outcome(pods.create(&PostParams::default(), &typed(unpinned)).await);
    assert!(
        refused_by(&message, "not pinned") && message.contains("nodeSelector"),
        "a GPU pod without a selector: {message}"
    );
    // The same through a Deployment: refused at apply.
    let deployments: Api<Deployment> = Api::namespaced(alice.clone(), &ns);
    assert_create_refused(
        &deployments,
        &typed(deployment("unpinned", &gpu_pod("x", image, 1))),
        "not pinned",
        "an unpinned GPU Deployment",
    )
    .await;

    let mut pinned = gpu_pod("pinned", image, 1);
    pinned["spec"]["affinity"] = affinity(&[H100]);
    pods.create(&PostParams::default(), &typed(pinned))
        .await
        .expect("a GPU pod pinned by affinity to an allowed product is admitted");
    let admin_pods: Api<Pod> = Api::namespaced(env.client(), &ns);
    let placed = wait_for(&admin_pods, "pinned", TIMEOUT, |p| node_of(p).is_some()).await;
    let node = node_of(&placed).unwrap_or_default();
    assert!(node.contains("h100"), "the pinned pod landed on {node}");
    // A pod without GPUs needs no pinning.
    pods.create(&PostParams::default(), &typed(pod("cpu", image)))
        .await
        .expect("a CPU pod is admitted");
    env.cleanup().await;
}

fn network_policy(name: &str, spec: serde_json::Value) -> NetworkPolicy {
    typed(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": { "name": name }, "spec": spec,
    }))
}

/// Under a compliance profile a policy that allows all egress would undo the
/// restricted egress (policies add up). Widening policies and changes to the
/// operator's policy are refused; a policy that stays within the tenant passes.
#[tokio::test]
async fn owners_cannot_widen_a_compliance_tenants_network_isolation() {
    let extra = "  compliance: hipaa\n  network:\n    allowedEgress: [{ cidr: 10.200.0.0/16, ports: [443] }, { cidr: 10.201.0.0/16 }]";
    let (env, name, alice, ns) = env_with_alice("tnnet", extra, false).await;
    let policies: Api<NetworkPolicy> = Api::namespaced(alice.clone(), &ns);
    let allow_all_egress = network_policy(
        "allow-all-egress",
        json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{}] }),
    );
    let message =
        until_refused(async || policies.create(&dry_run(), &allow_all_egress).await).await;
    assert!(
        refused_by(&message, "compliance hipaa"),
        "allow all egress: {message}"
    );
    assert_create_refused(
        &policies,
        &allow_all_egress,
        "compliance hipaa",
        "allow all egress",
    )
    .await;
    for (what, spec) in [
        (
            "egress to the internet",
            json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{ "to": [{ "ipBlock": { "cidr": "0.0.0.0/0" } }] }] }),
        ),
        (
            "egress to every namespace",
            json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{ "to": [{ "namespaceSelector": {} }] }] }),
        ),
        (
            "an allowed block on a port it does not list",
            json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{ "to": [{ "ipBlock": { "cidr": "10.200.0.0/16" } }], "ports": [{ "port": 22 }] }] }),
        ),
        (
            "an allowed block on every port",
            json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{ "to": [{ "ipBlock": { "cidr": "10.200.0.0/16" } }] }] }),
        ),
        (
            "an allowed block on a range of ports",
            json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{ "to": [{ "ipBlock": { "cidr": "10.200.0.0/16" } }], "ports": [{ "port": 443, "endPort": 8443 }] }] }),
        ),
        (
            "an allowed block over UDP",
            json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{ "to": [{ "ipBlock": { "cidr": "10.200.0.0/16" } }], "ports": [{ "port": 443, "protocol": "UDP" }] }] }),
        ),
        (
            "a block with open ports in one rule with a block of listed ports",
            json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{ "to": [{ "ipBlock": { "cidr": "10.201.0.0/16" } }, { "ipBlock": { "cidr": "10.200.0.0/16" } }], "ports": [{ "port": 80 }] }] }),
        ),
        (
            "ingress from anywhere",
            json!({ "podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}] }),
        ),
        (
            "ingress from another tenant",
            json!({ "podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "aleph.dev/tenant": "someone-else" } } }] }] }),
        ),
    ] {
        assert_create_refused(
            &policies,
            &network_policy("wider", spec),
            "compliance hipaa",
            what,
        )
        .await;
    }
    // The operator's policy can be neither deleted nor changed.
    let message = outcome(delete(&policies, "aleph-tenant-isolation").await);
    assert!(
        refused_by(&message, "made by the operator"),
        "delete: {message}"
    );
    let message = outcome(
        merge_patch(
            &policies,
            "aleph-tenant-isolation",
            json!({ "spec": { "egress": [{}] } }),
        )
        .await,
    );
    assert!(message != "admitted", "change: {message}");
    // Narrower policies pass: within the namespace, within the tenant, DNS.
    policies
        .create(
            &PostParams::default(),
            &network_policy(
                "within",
                json!({ "podSelector": { "matchLabels": { "app": "db" } }, "policyTypes": ["Ingress", "Egress"],
                  "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": "web" } } }] }],
                  "egress": [{ "to": [{ "namespaceSelector": { "matchLabels": { "aleph.dev/tenant": name } } }] },
                             { "ports": [{ "protocol": "UDP", "port": 53 }] }] }),
            ),
        )
        .await
        .expect("a policy within the tenant is admitted");
    // The allowed blocks, each on its own ports: 443 to the first, any port to the second.
    policies
        .create(
            &PostParams::default(),
            &network_policy(
                "allowed-blocks",
                json!({ "podSelector": {}, "policyTypes": ["Egress"],
                  "egress": [{ "to": [{ "ipBlock": { "cidr": "10.200.0.0/16" } }], "ports": [{ "protocol": "TCP", "port": 443 }] },
                             { "to": [{ "ipBlock": { "cidr": "10.201.0.0/16" } }] }] }),
            ),
        )
        .await
        .expect("egress to the allowed blocks on their ports is admitted");
    // Everywhere: the operator's policy is still the one it made.
    let admin: Api<NetworkPolicy> = Api::namespaced(env.client(), &ns);
    let isolation = admin
        .get("aleph-tenant-isolation")
        .await
        .expect("still there");
    let types = isolation
        .spec
        .and_then(|s| s.policy_types)
        .unwrap_or_default();
    assert!(types.contains(&"Egress".to_string()));
    env.cleanup().await;
}

/// Without a compliance profile or `network.lockPolicies`, owners keep
/// writing their own NetworkPolicies (the operator's are still protected).
#[tokio::test]
async fn without_a_lock_owners_write_their_own_network_policies() {
    let (env, name, alice, ns) = env_with_alice("tnopen", "", false).await;
    let policies: Api<NetworkPolicy> = Api::namespaced(alice.clone(), &ns);
    let message = until_refused(async || {
        policies
            .delete(
                "aleph-tenant-isolation",
                &DeleteParams {
                    dry_run: true,
                    ..DeleteParams::default()
                },
            )
            .await
    })
    .await;
    assert!(refused_by(&message, "made by the operator"), "{message}");
    policies
        .create(
            &PostParams::default(),
            &network_policy(
                "open",
                json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{}] }),
            ),
        )
        .await
        .expect("an unlocked tenant's owner may allow egress");
    // Locking the tenant refuses the same policy from then on.
    patch_tenant_spec(&env, &name, json!({ "network": { "lockPolicies": true } })).await;
    let message = until_refused(async || {
        policies
            .create(
                &dry_run(),
                &network_policy(
                    "open2",
                    json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{}] }),
                ),
            )
            .await
    })
    .await;
    assert!(refused_by(&message, "network.lockPolicies"), "{message}");
    env.cleanup().await;
}

/// NodePort and LoadBalancer Services are refused unless the Tenant allows
/// them; Ingress hosts and HTTPRoute hostnames must be the Tenant's allowed
/// domains or names under them, on CREATE and UPDATE.
#[tokio::test]
async fn node_ports_load_balancers_and_foreign_ingress_hosts_are_refused_unless_allowed() {
    let env = TestEnv::new().await;
    let name = unique_name("tnsvc");
    let extra = "    allowedDomains: [\"acme.example.com\"]";
    let yaml = tenant_yaml(&name, "").replace(
        &format!("    allowedGpuProducts: [\"{H100}\"]\n"),
        &format!("    allowedGpuProducts: [\"{H100}\"]\n{extra}\n"),
    );
    let (alice, ns) = alice_in_one(&env, &name, &yaml).await;
    let services: Api<Service> = Api::namespaced(alice.clone(), &ns);
    let service = |name: &str, type_: &str| -> Service {
        typed(
            json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name },
            "spec": { "type": type_, "selector": { "app": "web" }, "ports": [{ "port": 80 }] } }),
        )
    };
    let message = until_refused(async || {
        services
            .create(&dry_run(), &service("np", "NodePort"))
            .await
    })
    .await;
    assert!(refused_by(&message, "allowNodePorts"), "{message}");
    assert_create_refused(
        &services,
        &service("lb", "LoadBalancer"),
        "allowLoadBalancers",
        "a LoadBalancer",
    )
    .await;
    services
        .create(&PostParams::default(), &service("web", "ClusterIP"))
        .await
        .expect("a ClusterIP Service is admitted");
    let message =
        outcome(merge_patch(&services, "web", json!({ "spec": { "type": "NodePort" } })).await);
    assert!(
        refused_by(&message, "allowNodePorts"),
        "turned into a NodePort: {message}"
    );

    let ingresses: Api<Ingress> = Api::namespaced(alice.clone(), &ns);
    let ingress = |name: &str, host: Option<&str>| -> Ingress {
        let mut rule = json!({ "http": { "paths": [{ "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": "web", "port": { "number": 80 } } } }] } });
        if let Some(host) = host {
            rule["host"] = json!(host);
        }
        typed(
            json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": name },
            "spec": { "rules": [rule] } }),
        )
    };
    for (what, host) in [
        ("a foreign host", Some("shop.other.example.com")),
        ("a look-alike host", Some("evilacme.example.com")),
        ("no host (every host)", None),
    ] {
        assert_create_refused(&ingresses, &ingress("bad", host), "allowedDomains", what).await;
    }
    ingresses
        .create(
            &PostParams::default(),
            &ingress("good", Some("api.acme.example.com")),
        )
        .await
        .expect("a host under the allowed domain is admitted");

    // HTTPRoutes (the Gateway API's kinds are installed by the local control
    // plane): the rule holds for everyone, so the cluster admin writes them
    // here (the built-in admin role does not cover Gateway API kinds).
    let routes = aleph_e2e::dynamic::http_routes(env.client(), &ns);
    let route = |name: &str, hostnames: Option<&[&str]>| -> DynamicObject {
        let mut spec = json!({ "rules": [{ "backendRefs": [{ "name": "web", "port": 80 }] }] });
        if let Some(hostnames) = hostnames {
            spec["hostnames"] = json!(hostnames);
        }
        typed(
            json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": name }, "spec": spec }),
        )
    };
    for (what, hostnames) in [
        ("a foreign hostname", Some(&["shop.other.example.com"][..])),
        (
            "one foreign hostname among allowed ones",
            Some(&["api.acme.example.com", "acme.example.org"][..]),
        ),
        ("a look-alike hostname", Some(&["evilacme.example.com"][..])),
        ("no hostnames (every host)", None),
    ] {
        assert_create_refused(
            &routes,
            &route("bad", hostnames),
            "allowedDomains",
            &format!("HTTPRoute with {what}"),
        )
        .await;
    }
    routes
        .create(
            &PostParams::default(),
            &route("good", Some(&["acme.example.com", "api.acme.example.com"])),
        )
        .await
        .expect("an HTTPRoute for the allowed domain and a name under it is admitted");
    let message = outcome(
        merge_patch(
            &routes,
            "good",
            json!({ "spec": { "hostnames": ["api.other.example.com"] } }),
        )
        .await,
    );
    assert!(
        refused_by(&message, "allowedDomains"),
        "an HTTPRoute changed to a foreign hostname: {message}"
    );

    // Allowed by the Tenant, a NodePort passes.
    patch_tenant_spec(
        &env,
        &name,
        json!({ "admission": { "allowNodePorts": true } }),
    )
    .await;
    let mut admitted = false;
    for _ in 0..60 {
        if services
            .create(&dry_run(), &service("np", "NodePort"))
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(admitted, "a NodePort is admitted once the Tenant allows it");
    env.cleanup().await;
}

#[tokio::test]
async fn allowed_runtime_classes_are_enforced_on_pods_and_templates() {
    let env = TestEnv::new().await;
    let name = unique_name("tnrtc");
    // The RuntimeClass admission plugin refuses unknown classes first; make both.
    let (allowed, other) = (format!("{name}-gvisor"), format!("{name}-kata"));
    let classes: Api<RuntimeClass> = env.cluster_api();
    for (class, handler) in [(&allowed, "runsc"), (&other, "kata")] {
        classes
            .create(
                &PostParams::default(),
                &typed(
                    json!({ "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                "metadata": { "name": class }, "handler": handler }),
                ),
            )
            .await
            .expect("runtime class");
    }
    let yaml = tenant_yaml(&name, "").replace(
        "    allowedRegistries:",
        &format!("    allowedRuntimeClasses: [\"{allowed}\"]\n    allowedRegistries:"),
    );
    let (alice, ns) = alice_in_one(&env, &name, &yaml).await;
    let pods: Api<Pod> = Api::namespaced(alice.clone(), &ns);
    let with_class = |pod_name: &str, class: &str| {
        let mut p = pod(pod_name, "ghcr.io/acme/web:1");
        p["spec"]["runtimeClassName"] = json!(class);
        p["spec"]["nodeSelector"] = json!({ "aleph.dev/node-pool": "cpu" });
        p
    };
    let message = until_refused(async || {
        pods.create(&dry_run(), &typed(with_class("kata", &other)))
            .await
    })
    .await;
    assert!(
        refused_by(&message, "allowedRuntimeClasses") && message.contains(&allowed),
        "{message}"
    );
    let deployments: Api<Deployment> = Api::namespaced(alice.clone(), &ns);
    owners_policy_in_force(&alice, &ns).await;
    assert_create_refused(
        &deployments,
        &typed(deployment("kata", &with_class("x", &other))),
        "allowedRuntimeClasses",
        "a Deployment",
    )
    .await;
    pods.create(
        &PostParams::default(),
        &typed(with_class("gvisor", &allowed)),
    )
    .await
    .expect("a pod of an allowed runtime class is admitted");
    pods.create(
        &PostParams::default(),
        &typed(pod("default", "ghcr.io/acme/web:1")),
    )
    .await
    .expect("a pod without a runtime class is admitted");
    delete_tenant(&env, &name).await;
    for class in [&allowed, &other] {
        let _ = delete(&classes, class).await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn allowed_storage_classes_are_enforced_on_claims_and_claim_templates() {
    let env = TestEnv::new().await;
    let name = unique_name("tnstc");
    let yaml = tenant_yaml(&name, "").replace(
        "    allowedRegistries:",
        "    allowedStorageClasses: [\"fast-ssd\"]\n    allowedRegistries:",
    );
    let (alice, ns) = alice_in_one(&env, &name, &yaml).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(alice.clone(), &ns);
    let claim = |claim_name: &str, class: Option<&str>| -> PersistentVolumeClaim {
        let mut c = json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": claim_name },
            "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } } });
        if let Some(class) = class {
            c["spec"]["storageClassName"] = json!(class);
        }
        typed(c)
    };
    let message = until_refused(async || {
        claims
            .create(&dry_run(), &claim("slow", Some("standard")))
            .await
    })
    .await;
    assert!(
        refused_by(&message, "allowedStorageClasses") && message.contains("fast-ssd"),
        "{message}"
    );
    assert_create_refused(
        &claims,
        &claim("default", None),
        "allowedStorageClasses",
        "no class (the cluster's default)",
    )
    .await;
    claims
        .create(&PostParams::default(), &claim("fast", Some("fast-ssd")))
        .await
        .expect("a claim of an allowed class is admitted");
    owners_policy_in_force(&alice, &ns).await;
    let statefulsets: Api<StatefulSet> = Api::namespaced(alice.clone(), &ns);
    let sts = json!({ "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": { "name": "db" },
        "spec": { "serviceName": "db", "replicas": 1, "selector": { "matchLabels": { "app": "db" } },
          "template": { "metadata": { "labels": { "app": "db" } }, "spec": { "containers": [container("db", "ghcr.io/acme/db:1")] } },
          "volumeClaimTemplates": [{ "metadata": { "name": "data" }, "spec": { "storageClassName": "standard",
            "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } } }] } });
    assert_create_refused(
        &statefulsets,
        &typed(sts),
        "allowedStorageClasses",
        "a StatefulSet's claim template",
    )
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn deletion_policy_retain_keeps_the_namespaces_and_what_is_in_them() {
    let env = TestEnv::new().await;
    let name = unique_name("tnret");
    let yaml = tenant_yaml(&name, "  deletionPolicy: Retain");
    ready_tenant(&env, &name, &yaml).await;
    let client = env.client();
    let config = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "keep-me" }, "data": { "k": "v" } });
    for short in ["one", "two"] {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &format!("{name}-{short}"));
        maps.create(&PostParams::default(), &typed(config.clone()))
            .await
            .expect("config map");
    }
    // A namespace taken off the list is released, not deleted.
    let tenants: Api<Tenant> = env.cluster_api();
    patch_tenant_spec(&env, &name, json!({ "namespaces": ["one"] })).await;
    let namespaces: Api<Namespace> = env.cluster_api();
    let released = wait_for(&namespaces, &format!("{name}-two"), TIMEOUT, |ns| {
        !ns.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("aleph.dev/tenant"))
    })
    .await;
    assert!(
        released.metadata.deletion_timestamp.is_none(),
        "a Retain namespace is not deleted"
    );
    // The Tenant deleted: its namespaces stay, released, with their objects.
    delete(&tenants, &name).await.expect("delete tenant");
    wait_for_deletion(&tenants, &name, TIMEOUT).await;
    for short in ["one", "two"] {
        let ns_name = format!("{name}-{short}");
        let ns = namespaces
            .get(&ns_name)
            .await
            .expect("the namespace is kept");
        assert!(
            ns.metadata.deletion_timestamp.is_none(),
            "{ns_name} is being deleted"
        );
        let labels = ns.metadata.labels.unwrap_or_default();
        assert!(
            !labels.contains_key("aleph.dev/tenant"),
            "{ns_name} still carries the tenant label"
        );
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns_name);
        maps.get("keep-me")
            .await
            .expect("the namespace's objects are kept");
        // Kept by the tenant's policy, so removed by the test itself.
        let _ = delete(&namespaces, &ns_name).await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn additional_role_bindings_grant_their_cluster_role_in_every_namespace_and_only_there() {
    let env = TestEnv::new().await;
    let name = unique_name("tnarb");
    let carol = format!("{name}-carol");
    let yaml = format!(
        "{}  additionalRoleBindings:\n    - clusterRole: view\n      subjects: [{{ kind: User, name: {carol} }}]\n",
        tenant_yaml(&name, "")
    );
    ready_tenant(&env, &name, &yaml).await;
    let client = env.client();
    for short in ["one", "two"] {
        let ns = format!("{name}-{short}");
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        let binding = bindings
            .get("aleph-extra-0")
            .await
            .expect("the additional binding");
        assert_eq!(binding.role_ref.name, "view");
        assert!(
            user_can(&client, &carol, "list", "pods", &ns).await,
            "carol can list pods in {ns}"
        );
        assert!(
            !user_can(&client, &carol, "create", "pods", &ns).await,
            "view does not create"
        );
    }
    assert!(
        !user_can(&client, &carol, "list", "pods", env.namespace()).await,
        "nothing outside the tenant"
    );
    // Real reads as carol.
    let as_carol = env.impersonated_client(&carol, &[]);
    Api::<Pod>::namespaced(as_carol.clone(), &format!("{name}-one"))
        .list(&Default::default())
        .await
        .expect("carol lists pods");
    // Removed from the spec, the binding goes.
    patch_tenant_spec(&env, &name, json!({ "additionalRoleBindings": null })).await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &format!("{name}-one"));
    wait_for_deletion(&bindings, "aleph-extra-0", TIMEOUT).await;
    // The authorizer reads RBAC from its own cache, a moment behind the API.
    poll(
        Duration::from_secs(5),
        Duration::from_millis(250),
        async || {
            if user_can(&client, &carol, "list", "pods", &format!("{name}-one")).await {
                Err("carol still lists pods after her binding went".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    env.cleanup().await;
}

/// Cordoned, a tenant refuses new pods, new workloads (at `kubectl apply`)
/// and ephemeral containers; a running pod stays and can still be updated.
#[tokio::test]
async fn a_cordoned_tenant_refuses_new_pods_workloads_and_ephemeral_containers() {
    let (env, name, alice, ns) = env_with_alice("tncrd", "", true).await;
    let pods: Api<Pod> = Api::namespaced(alice.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &typed(pod("running", "ghcr.io/acme/web:1")),
    )
    .await
    .expect("a pod before the cordon");
    patch_tenant_spec(&env, &name, json!({ "cordoned": true })).await;
    let deployments: Api<Deployment> = Api::namespaced(alice.clone(), &ns);
    assert_pod_and_deployment_refused(&pods, &deployments, "ghcr.io/acme/web:1", "cordoned").await;
    let message = outcome(debug_pod(&pods, "running", "ghcr.io/acme/debug:1", None).await);
    assert!(
        refused_by(&message, "cordoned"),
        "an ephemeral container: {message}"
    );
    assert_pod_relabels(&pods, "running").await;
    env.cleanup().await;
}

/// The rules are two policies shared by every tenant, with the Tenant as
/// their parameter. The API server's own type check of their CEL against the
/// Tenant's schema finds nothing (a misspelt or misplaced field of the
/// Tenant shows there as a warning), a policy changed by hand is put back,
/// each tenant has only its two bindings, and its status carries the
/// namespace room the owners' policy reads.
#[tokio::test]
async fn the_shared_policies_type_check_against_the_tenant_schema() {
    let (env, name, _, _) = env_with_alice("tntype", "", false).await;
    let policies: Api<ValidatingAdmissionPolicy> = env.cluster_api();
    for policy in ["aleph-tenants", "aleph-tenants-owners"] {
        let checked = wait_for(&policies, policy, TIMEOUT, |p| {
            let generation = p.metadata.generation;
            p.status
                .as_ref()
                .is_some_and(|s| generation.is_some() && s.observed_generation == generation)
        })
        .await;
        let param = checked
            .spec
            .as_ref()
            .and_then(|s| s.param_kind.clone())
            .expect("paramKind");
        assert_eq!(param.kind.as_deref(), Some("Tenant"), "{policy}");
        let warnings = checked
            .status
            .and_then(|s| s.type_checking)
            .and_then(|t| t.expression_warnings)
            .unwrap_or_default();
        // A rule on pods is also checked against Services, claims and the
        // other kinds the policy matches, where it is guarded off: those
        // fields are missing there. Nothing else may be wrong, and nothing
        // read from the Tenant.
        let wrong: Vec<String> = warnings
            .iter()
            .flat_map(|w| type_errors(&w.warning))
            .filter(|e| !e.is_a_field_of_another_kind())
            .map(|e| format!("{e:?}"))
            .collect();
        assert!(wrong.is_empty(), "{policy}: {wrong:#?}");
    }
    // Changed by hand, a shared policy is put back (not deleted here: the
    // tests beside this one rely on it).
    policies
        .patch(
            "aleph-tenants",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "failurePolicy": "Ignore" } })),
        )
        .await
        .expect("edit the shared policy by hand");
    wait_for(&policies, "aleph-tenants", TIMEOUT, |p| {
        p.spec.as_ref().and_then(|s| s.failure_policy.as_deref()) == Some("Fail")
    })
    .await;
    let own = policies
        .list(&ListParams::default().labels(&format!("aleph.dev/tenant={name}")))
        .await
        .expect("list policies");
    assert!(
        own.items.is_empty(),
        "the tenant has policies of its own: {:?}",
        own.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    let bindings: Api<ValidatingAdmissionPolicyBinding> = env.cluster_api();
    let mut bound: Vec<(String, String)> = bindings
        .list(&ListParams::default().labels(&format!("aleph.dev/tenant={name}")))
        .await
        .expect("list bindings")
        .items
        .into_iter()
        .map(|b| {
            let spec = b.spec.clone().unwrap_or_default();
            let param = spec.param_ref.and_then(|p| p.name).unwrap_or_default();
            (spec.policy_name.unwrap_or_default(), param)
        })
        .collect();
    bound.sort();
    assert_eq!(
        bound,
        vec![
            ("aleph-tenants".to_string(), name.clone()),
            ("aleph-tenants-owners".to_string(), name.clone()),
        ]
    );
    let tenants: Api<Tenant> = env.cluster_api();
    let room = tenants
        .get(&name)
        .await
        .expect("the Tenant")
        .status
        .and_then(|s| s.namespace_room)
        .expect("status.namespaceRoom");
    // Two declared namespaces, the pro plan's ten.
    assert_eq!((room.count, room.limit), (2, 10));
}

/// One error of the API server's type check: its message and the path of
/// names it stops at (`object.spec.containers`).
#[derive(Debug)]
struct TypeError {
    message: String,
    path: String,
}

impl TypeError {
    /// A field the request's object lacks in one of the kinds the policy
    /// matches (not a field of the Tenant, nor of a variable read from it).
    fn is_a_field_of_another_kind(&self) -> bool {
        let root = self.path.split('.').next().unwrap_or_default();
        let tenant_variable = self.path.starts_with("variables.")
            && !self.path.starts_with("variables.spec.")
            && !self.path.starts_with("variables.oldSpec.");
        self.message.starts_with("undefined field") && root != "params" && !tenant_variable
    }
}

/// The errors in a type check warning: `ERROR: <input>:1:<column>: <message>`,
/// then the expression, then a caret under the column.
fn type_errors(warning: &str) -> Vec<TypeError> {
    warning
        .split("ERROR: <input>:")
        .skip(1)
        .map(|entry| {
            let mut lines = entry.lines();
            let head = lines.next().unwrap_or_default();
            let mut parts = head.splitn(3, ':');
            let _line = parts.next();
            let column: usize = parts
                .next()
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or_default();
            let message = parts.next().unwrap_or_default().trim().to_string();
            let expression = lines
                .next()
                .unwrap_or_default()
                .trim_start_matches(" | ")
                .to_string();
            // The path ends at the field the column points at.
            let chars: Vec<char> = expression.chars().collect();
            let is_name = |c: &char| c.is_ascii_alphanumeric() || *c == '_' || *c == '.';
            let at = column.saturating_sub(1).min(chars.len());
            let start = chars[..at]
                .iter()
                .rposition(|c| !is_name(c))
                .map_or(0, |i| i + 1);
            let end = chars[at..]
                .iter()
                .position(|c| !is_name(c))
                .map_or(chars.len(), |i| at + i);
            TypeError {
                message,
                path: chars[start..end].iter().collect(),
            }
        })
        .collect()
}
