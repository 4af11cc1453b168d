//! Escalation: the owners of two tenants, through impersonation, and a
//! ServiceAccount token one of them made, try to get out of their tenant or
//! undo its controls. Every attempt must be refused. Against the operator
//! started by the test command.

mod tenant_support;

use std::fmt::Write as _;

use aleph_crds::tenant::Tenant;
use aleph_e2e::{TestEnv, install_crypto_provider, unique_name};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, Pod, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tenant_support::*;

fn tenant_yaml(name: &str, compliance: &str) -> String {
    pro_tenant(
        name,
        &[("owner", "admin")],
        "app",
        &format!(
            r#"  quota: {{ gpus: 2 }}
  admission:
    allowedRegistries: ["ghcr.io/{name}/"]
    allowedGpuProducts: ["{H100}"]
    allowedDomains: ["{name}.example.com"]
  compliance: {compliance}
"#
        ),
    )
}

/// The attempts made and how each ended.
#[derive(Default)]
struct Ledger {
    rows: Vec<(String, String, bool)>,
}

impl Ledger {
    /// Records an attempt that must be refused: by RBAC (403) or by an
    /// admission rule whose message contains `expect` (any refusal when empty).
    fn refused<T>(&mut self, what: &str, expect: &str, result: Result<T, kube::Error>) {
        let (message, ok) = match result {
            Ok(_) => ("ADMITTED".to_string(), false),
            Err(kube::Error::Api(s)) => {
                let ok = expect.is_empty() || s.message.contains(expect);
                (format!("{} {}", s.code, s.message), ok)
            }
            Err(e) => (e.to_string(), false),
        };
        self.rows.push((what.to_string(), message, ok));
    }

    /// Records an attempt that must be refused, whoever refuses it: RBAC or
    /// any admission rule.
    fn refused_any<T>(&mut self, what: &str, result: Result<T, kube::Error>) {
        self.refused(what, "", result);
    }

    fn check(&mut self, what: &str, held: bool, detail: String) {
        self.rows.push((what.to_string(), detail, held));
    }

    fn report(&self) -> String {
        let mut text = String::new();
        for (i, (what, message, ok)) in self.rows.iter().enumerate() {
            let short: String = message.chars().take(160).collect();
            let _ = writeln!(
                text,
                "{:>2} {} {what}: {short}",
                i + 1,
                if *ok { "refused" } else { "FAILED " }
            );
        }
        text
    }
}

/// A client that authenticates with `token` only (no certificate, no impersonation).
async fn token_client(token: &str) -> kube::Client {
    install_crypto_provider();
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    kube::Client::try_from(config).expect("token client")
}

#[tokio::test]
async fn tenant_owners_cannot_escalate_or_undo_isolation() {
    let env = TestEnv::new().await;
    let a = unique_name("tnesa");
    let b = unique_name("tnesb");
    // The built-in admin role does not add ephemeral containers; the owner of
    // the first tenant gets a role that does, so that the tenant's rule on
    // them is what refuses.
    let debugger = debugger_role(&env, &format!("{a}-debugger"), &format!("{a}-owner")).await;
    ready_tenant(&env, &a, &format!("{}{debugger}", tenant_yaml(&a, "hipaa"))).await;
    ready_tenant(&env, &b, &tenant_yaml(&b, "none")).await;
    let (ns_a, ns_b) = (format!("{a}-app"), format!("{b}-app"));
    let alice = env.impersonated_client(&format!("{a}-owner"), &[]);
    let bob = env.impersonated_client(&format!("{b}-owner"), &[]);
    let good_image = format!("ghcr.io/{a}/web:1");
    let pp = PostParams::default();

    // Both policies in force for alice before the attempts start.
    let pods_a: Api<Pod> = Api::namespaced(alice.clone(), &ns_a);
    let deployments_a: Api<Deployment> = Api::namespaced(alice.clone(), &ns_a);
    let evil = "docker.io/evil/x:1";
    assert_pod_and_deployment_refused(&pods_a, &deployments_a, evil, "allowedRegistries").await;

    let mut ledger = Ledger::default();

    // RBAC: cluster-admin, namespaces, the Tenant, quotas, limits, policies, bindings.
    let crb: ClusterRoleBinding = typed(
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": format!("{a}-takeover") },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("{a}-owner") }] }),
    );
    ledger.refused_any(
        "bind cluster-admin cluster-wide",
        Api::<ClusterRoleBinding>::all(alice.clone())
            .create(&pp, &crb)
            .await,
    );
    let rb: RoleBinding = typed(
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "takeover" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("{a}-owner") }] }),
    );
    let rbs_a: Api<RoleBinding> = Api::namespaced(alice.clone(), &ns_a);
    ledger.refused_any(
        "bind cluster-admin in its own namespace",
        rbs_a.create(&pp, &rb).await,
    );
    let namespaces: Api<Namespace> = Api::all(alice.clone());
    ledger.refused_any(
        "create a namespace outside the prefix",
        namespaces.create(&pp, &typed(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": format!("x{a}") } }))).await,
    );
    ledger.refused_any(
        "relabel its namespace out of the tenant",
        merge_patch(&namespaces, &ns_a, json!({ "metadata": { "labels": { "aleph.dev/tenant": null, "pod-security.kubernetes.io/enforce": "privileged" } } })).await,
    );
    let tenants: Api<Tenant> = Api::all(alice.clone());
    ledger.refused_any(
        "raise its Tenant's GPU quota",
        merge_patch(&tenants, &a, json!({ "spec": { "quota": { "gpus": 64 } } })).await,
    );
    let quotas: Api<ResourceQuota> = Api::namespaced(alice.clone(), &ns_a);
    ledger.refused_any(
        "raise its namespace's ResourceQuota",
        merge_patch(
            &quotas,
            "aleph-tenant-quota",
            json!({ "spec": { "hard": { "requests.nvidia.com/gpu": "64" } } }),
        )
        .await,
    );
    ledger.refused_any(
        "delete its ResourceQuota",
        delete(&quotas, "aleph-tenant-quota").await,
    );
    let limits: Api<LimitRange> = Api::namespaced(alice.clone(), &ns_a);
    ledger.refused_any(
        "delete its LimitRange",
        delete(&limits, "aleph-tenant-defaults").await,
    );
    let vaps: Api<ValidatingAdmissionPolicy> = Api::all(alice.clone());
    ledger.refused_any(
        "empty the tenants' admission policy",
        merge_patch(
            &vaps,
            "aleph-tenants",
            json!({ "spec": { "validations": [{ "expression": "true" }] } }),
        )
        .await,
    );
    let vapbs: Api<ValidatingAdmissionPolicyBinding> = Api::all(alice.clone());
    ledger.refused_any(
        "delete its admission binding",
        delete(&vapbs, &format!("aleph-tenant-{a}")).await,
    );
    ledger.refused(
        "delete its owners' binding",
        "made by the operator",
        delete(&rbs_a, "aleph-owners-admin").await,
    );
    ledger.refused(
        "add a subject to its owners' binding",
        "made by the operator",
        merge_patch(&rbs_a, "aleph-owners-admin", json!({ "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated" }] })).await,
    );

    // The other tenant.
    let secrets_b: Api<Secret> = Api::namespaced(alice.clone(), &ns_b);
    ledger.refused_any(
        "read the other tenant's Secrets",
        secrets_b.list(&ListParams::default()).await,
    );
    let pods_b: Api<Pod> = Api::namespaced(alice.clone(), &ns_b);
    ledger.refused_any(
        "create a pod in the other tenant",
        pods_b
            .create(&pp, &typed(pod("intruder", &good_image)))
            .await,
    );
    let policies_a_by_bob: Api<NetworkPolicy> = Api::namespaced(bob.clone(), &ns_a);
    ledger.refused_any(
        "delete the other tenant's isolation policy",
        delete(&policies_a_by_bob, "aleph-tenant-isolation").await,
    );
    ledger.refused_any(
        "edit the other tenant's Tenant",
        Api::<Tenant>::all(bob.clone()).patch(&a, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "owners": [{ "kind": "User", "name": format!("{b}-owner"), "role": "admin" }] } }))).await,
    );

    // Pod Security `restricted` under hipaa.
    for (what, field, value) in [
        (
            "a privileged pod",
            "containers",
            json!([{ "name": "main", "image": good_image, "securityContext": { "privileged": true } }]),
        ),
        (
            "a hostPath pod",
            "volumes",
            json!([{ "name": "root", "hostPath": { "path": "/" } }]),
        ),
        ("a hostNetwork pod", "hostNetwork", json!(true)),
        ("a hostPID pod", "hostPID", json!(true)),
    ] {
        let mut p = pod("host", &good_image);
        p["spec"][field] = value;
        ledger.refused(
            &format!("{what} under hipaa"),
            "restricted",
            pods_a.create(&pp, &typed(p)).await,
        );
    }

    // Images through UPDATE and ephemeral containers; GPU products through affinity.
    pods_a
        .create(&pp, &typed(pod("running", &good_image)))
        .await
        .expect("an allowed pod");
    ledger.refused(
        "change a running pod's image (kubectl set image)",
        "allowedRegistries",
        pods_a.patch("running", &PatchParams::default(), &Patch::Strategic(json!({ "spec": { "containers": [{ "name": "main", "image": "docker.io/evil/x:1" }] } }))).await,
    );
    ledger.refused(
        "add an ephemeral container (kubectl debug)",
        "allowedRegistries",
        pods_a
            .patch_subresource("ephemeralcontainers", "running", &PatchParams::default(), &Patch::Strategic(json!({ "spec": { "ephemeralContainers": [container("dbg", "docker.io/evil/x:1")] } })))
            .await,
    );
    let mut init = pod("init", &good_image);
    init["spec"]["initContainers"] = json!([container("init", "docker.io/evil/x:1")]);
    ledger.refused(
        "an init container from another registry",
        "allowedRegistries",
        pods_a.create(&pp, &typed(init)).await,
    );
    ledger.refused(
        "a Deployment from another registry",
        "allowedRegistries",
        deployments_a
            .create(
                &pp,
                &typed(deployment("evil", &pod("p", "docker.io/evil/x:1"))),
            )
            .await,
    );
    let mut a100 = gpu_pod("a100", &good_image, 1);
    a100["spec"]["affinity"] = affinity(&[A100]);
    ledger.refused(
        "a GPU pod steered to an A100 by affinity",
        "allowedGpuProducts",
        pods_a.create(&pp, &typed(a100)).await,
    );
    ledger.refused(
        "a GPU pod pinned to nothing",
        "not pinned",
        pods_a
            .create(&pp, &typed(gpu_pod("any", &good_image, 1)))
            .await,
    );

    // Network: widening, the operator's policy, NodePorts, foreign hosts.
    let policies_a: Api<NetworkPolicy> = Api::namespaced(alice.clone(), &ns_a);
    let np = |spec: serde_json::Value| -> NetworkPolicy {
        typed(
            json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": { "name": "wide" }, "spec": spec }),
        )
    };
    let allow_all_egress =
        np(json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{}] }));
    ledger.refused(
        "a NetworkPolicy allowing all egress",
        "compliance hipaa",
        policies_a.create(&pp, &allow_all_egress).await,
    );
    ledger.refused(
        "a NetworkPolicy allowing ingress from the other tenant",
        "compliance hipaa",
        policies_a
            .create(&pp, &np(json!({ "podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "aleph.dev/tenant": b } } }] }] })))
            .await,
    );
    ledger.refused(
        "delete its isolation policy",
        "made by the operator",
        delete(&policies_a, "aleph-tenant-isolation").await,
    );
    let services_a: Api<Service> = Api::namespaced(alice.clone(), &ns_a);
    let node_port: Service = typed(
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "np" },
        "spec": { "type": "NodePort", "selector": { "app": "x" }, "ports": [{ "port": 80 }] } }),
    );
    ledger.refused(
        "a NodePort Service",
        "allowNodePorts",
        services_a.create(&pp, &node_port).await,
    );
    let ingresses_a: Api<Ingress> = Api::namespaced(alice.clone(), &ns_a);
    let foreign_host: Ingress = typed(
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": "steal" },
        "spec": { "rules": [{ "host": format!("www.{b}.example.com"), "http": { "paths": [{ "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": "web", "port": { "number": 80 } } } }] } }] } }),
    );
    ledger.refused(
        "an Ingress for the other tenant's host",
        "allowedDomains",
        ingresses_a.create(&pp, &foreign_host).await,
    );

    // A ServiceAccount the owner made, bound to admin in its namespace, used through a real token.
    let sas: Api<ServiceAccount> = Api::namespaced(alice.clone(), &ns_a);
    sas.create(
        &pp,
        &typed(
            json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "ci" } }),
        ),
    )
    .await
    .expect("the owner makes a ServiceAccount");
    rbs_a
        .create(&pp, &typed(json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": { "name": "ci-admin" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin" },
            "subjects": [{ "kind": "ServiceAccount", "name": "ci", "namespace": ns_a }] })))
        .await
        .expect("the owner binds admin to it in its namespace");
    let token = Api::<ServiceAccount>::namespaced(env.client(), &ns_a)
        .create_token_request("ci", &pp, &TokenRequest::default())
        .await
        .expect("a token")
        .status
        .map(|s| s.token)
        .unwrap_or_default();
    let ci = token_client(&token).await;
    let ci_pods: Api<Pod> = Api::namespaced(ci.clone(), &ns_a);
    let ci_policies: Api<NetworkPolicy> = Api::namespaced(ci.clone(), &ns_a);
    let ci_bindings: Api<RoleBinding> = Api::namespaced(ci.clone(), &ns_a);
    let ci_secrets_b: Api<Secret> = Api::namespaced(ci.clone(), &ns_b);
    // The API server's authorizer reads RoleBindings from an informer: the
    // binding takes effect a moment after it is created.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(e) = ci_pods.list(&ListParams::default()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token does not work in its namespace 30 s after admin was bound to it: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    ledger.refused(
        "token: a pod from another registry",
        "allowedRegistries",
        ci_pods
            .create(&pp, &typed(pod("ci", "docker.io/evil/x:1")))
            .await,
    );
    ledger.refused(
        "token: a NetworkPolicy allowing all egress",
        "compliance hipaa",
        ci_policies.create(&pp, &allow_all_egress).await,
    );
    ledger.refused_any(
        "token: bind cluster-admin",
        ci_bindings.create(&pp, &rb).await,
    );
    ledger.refused_any(
        "token: read the other tenant's Secrets",
        ci_secrets_b.list(&ListParams::default()).await,
    );
    ledger.refused(
        "token: delete the isolation policy",
        "made by the operator",
        delete(&ci_policies, "aleph-tenant-isolation").await,
    );

    // What stood is still in place.
    let admin_policies: Api<NetworkPolicy> = Api::namespaced(env.client(), &ns_a);
    let held = admin_policies
        .get_opt("aleph-tenant-isolation")
        .await
        .ok()
        .flatten()
        .is_some();
    ledger.check("the isolation policy is still there", held, String::new());

    let report = ledger.report();
    println!(
        "{} checks as the owners of {a} and {b}:\n{report}",
        ledger.rows.len()
    );
    assert!(
        ledger.rows.len() >= 25,
        "only {} attempts",
        ledger.rows.len()
    );
    assert!(
        ledger.rows.iter().all(|(_, _, ok)| *ok),
        "not every attempt was refused:\n{report}"
    );
    env.cleanup().await;
}
