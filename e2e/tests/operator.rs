//! The operator as an operator team runs it: the chart installs into the
//! cluster; the operator reconciles every example with exactly the chart's
//! ServiceAccount permissions; two replicas elect one writer and hand over when
//! the leader dies or stops; `/metrics`, `/livez` and `/readyz` tell the truth;
//! an object that does not decode is skipped without stopping its controller.
//!
//! Each test starts its own operator processes (`aleph_e2e::operator`), which
//! reconcile only the objects carrying the test's private label.

use std::time::{Duration, Instant};

use aleph_e2e::helm::{Release, apply_examples};
use aleph_e2e::operator::{KUBE_REQUESTS, metric_sum};
use aleph_e2e::sagemaker_fake::{FakeConfig, SageMakerFake};
use aleph_e2e::{
    Applied, OperatorOptions, OperatorProcess, PRIVATE_OPERATOR_LABEL, TestEnv, find_condition,
    unique_name, wait_for, wait_for_deletion,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);
/// Lease timing of the leader-election tests: short, so takeovers are quick.
const LEASE_SECONDS: u64 = 4;

/// A Tenant with one namespace, labelled for the operator of `label`.
fn small_tenant(name: &str, label: &str) -> String {
    format!(
        r#"
apiVersion: aleph.dev/v1alpha1
kind: Tenant
metadata:
  name: {name}
  labels: {{ {PRIVATE_OPERATOR_LABEL}: {label} }}
spec:
  owners: [{{ kind: User, name: {name}-owner, role: admin }}]
  namespaces: [a]
  plan: free
"#
    )
}

/// Whether an object of any kind has a status its reconciler wrote.
fn status_written(object: &DynamicObject) -> bool {
    let status = &object.data["status"];
    status
        .get("observedGeneration")
        .is_some_and(|g| !g.is_null())
        || status["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
}

/// Whether the Tenant's status describes its current generation.
fn tenant_reconciled(object: &DynamicObject) -> bool {
    let generation = object.metadata.generation;
    generation.is_some() && object.data["status"]["observedGeneration"].as_i64() == generation
}

fn api_for(env: &TestEnv, applied: &Applied) -> Api<DynamicObject> {
    if applied.namespaced {
        Api::namespaced_with(env.client(), env.namespace(), &applied.resource)
    } else {
        Api::all_with(env.client(), &applied.resource)
    }
}

/// Deletes what was applied and waits until each is gone, while the operator
/// that holds their finalizers still runs.
async fn delete_and_wait(env: &TestEnv, applied: &[Applied]) {
    for item in applied.iter().rev() {
        let api = api_for(env, item);
        let name = item.object.metadata.name.clone().unwrap_or_default();
        let _ = api.delete(&name, &DeleteParams::background()).await;
    }
    for item in applied.iter().rev() {
        let api = api_for(env, item);
        let name = item.object.metadata.name.clone().unwrap_or_default();
        wait_for_deletion(&api, &name, TIMEOUT).await;
    }
}

async fn apply(env: &TestEnv, yaml: &str) -> Vec<Applied> {
    env.try_apply_yaml(yaml)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `replica` says it leads; `what` names the wait.
async fn wait_leads(replica: &OperatorProcess, what: &str) {
    replica
        .wait_for_metrics(what, TIMEOUT, |m| {
            m.lines().any(|l| l.trim() == "aleph_leader 1")
        })
        .await;
}

/// Waits until exactly one of `operators` says it leads, and returns its index.
async fn sole_leader(operators: &[&OperatorProcess], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leading = Vec::new();
        for (i, op) in operators.iter().enumerate() {
            if op.is_leader().await {
                leading.push(i);
            }
        }
        if let [one] = leading.as_slice() {
            return *one;
        }
        assert!(
            Instant::now() < deadline,
            "want exactly one leader within {timeout:?}, have {leading:?}; logs:\n{}",
            operators
                .iter()
                .map(|op| op.log_tail(20))
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A private operator with leader election on a Lease of the test's
/// namespace, watching `namespaces` (all when `None`).
fn leader_options(
    name: &str,
    lease_namespace: &str,
    lease: &str,
    label: &str,
    namespaces: Option<&str>,
) -> OperatorOptions {
    let mut args: Vec<String> = [
        "--leader-elect",
        "true",
        "--lease-namespace",
        lease_namespace,
        "--lease-name",
        lease,
        "--lease-duration-seconds",
        &LEASE_SECONDS.to_string(),
        "--lease-retry-seconds",
        "1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(namespaces) = namespaces {
        args.extend(["--namespaces".to_owned(), namespaces.to_owned()]);
    }
    OperatorOptions {
        args,
        private_label: Some(label.to_owned()),
        name: name.to_owned(),
        ..OperatorOptions::default()
    }
}

#[tokio::test]
async fn chart_installs_into_the_cluster_under_restricted_pod_security() {
    let env = TestEnv::new().await;
    // The API server's Pod Security admission refuses the operator's pods
    // unless they meet the restricted profile.
    env.kubectl([
        "label",
        "namespace",
        env.namespace(),
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .await
    .expect_success();
    let release = Release::install(&env, &["--wait", "--timeout", "3m"]).await;
    let full = release.fullname();

    let deployment = env
        .api::<Deployment>()
        .get(&full)
        .await
        .expect("Deployment");
    let status = deployment.status.unwrap_or_default();
    assert_eq!(status.ready_replicas, Some(1), "helm --wait returned early");
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=operator",
            release.name
        )))
        .await
        .expect("pods");
    assert_eq!(pods.items.len(), 1, "one operator pod");
    let pod_spec = pods.items[0].spec.clone().unwrap_or_default();
    assert_eq!(
        pod_spec.service_account_name.as_deref(),
        Some(full.as_str())
    );

    env.api::<ServiceAccount>()
        .get(&full)
        .await
        .expect("ServiceAccount");
    env.api::<Service>()
        .get(&format!("{full}-metrics"))
        .await
        .expect("metrics Service");
    let lease_role = env
        .api::<Role>()
        .get(&format!("{full}-leader-election"))
        .await
        .expect("leader-election Role");
    let lease_rules = lease_role.rules.unwrap_or_default();
    assert!(
        lease_rules
            .iter()
            .all(|r| r.resources.as_deref() == Some(&["leases".to_owned()][..])),
        "the namespaced Role grants only Leases: {lease_rules:?}"
    );
    env.api::<RoleBinding>()
        .get(&format!("{full}-leader-election"))
        .await
        .expect("leader-election RoleBinding");
    let cluster_role = Api::<ClusterRole>::all(env.client())
        .get(&full)
        .await
        .expect("ClusterRole, named after the release");
    for rule in cluster_role.rules.unwrap_or_default() {
        for list in [
            rule.verbs.clone(),
            rule.resources.clone().unwrap_or_default(),
            rule.api_groups.clone().unwrap_or_default(),
        ] {
            assert!(!list.iter().any(|v| v == "*"), "a wildcard in {rule:?}");
        }
    }
    let binding = Api::<ClusterRoleBinding>::all(env.client())
        .get(&full)
        .await
        .expect("ClusterRoleBinding");
    let subjects = binding.subjects.unwrap_or_default();
    let subject = &subjects[0];
    assert_eq!(subject.namespace.as_deref(), Some(env.namespace()));
    assert_eq!(subject.name, full);

    release.uninstall().await;
    assert!(
        Api::<ClusterRole>::all(env.client())
            .get_opt(&full)
            .await
            .expect("get ClusterRole")
            .is_none(),
        "helm uninstall leaves the ClusterRole behind"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_charts_service_account_is_enough_to_reconcile_every_example() {
    let env = TestEnv::new().await;
    let release = Release::install(&env, &[]).await;
    let fake = SageMakerFake::start(FakeConfig::default())
        .await
        .expect("SageMaker fake");
    let label = unique_name("rbac");
    // Every namespace, as the chart's Deployment watches: the ClusterRole must allow it.
    let mut options = leader_options("rbac", env.namespace(), &unique_name("lease"), &label, None);
    options.args.extend([
        "--impersonate".to_owned(),
        release.service_account_user(),
        "--sagemaker-max-poll-seconds".to_owned(),
        "2".to_owned(),
    ]);
    options.env = vec![
        ("AWS_ENDPOINT_URL_SAGEMAKER".into(), fake.endpoint_url()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "AKIDALEPHE2E".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "e2e-secret".into()),
    ];
    let mut op = OperatorProcess::start(options).await;
    op.wait_ready(TIMEOUT).await;
    sole_leader(&[&op], Duration::from_secs(30)).await;

    let applied = apply_examples(&env, &label).await;
    for item in &applied {
        let name = item.object.metadata.name.clone().unwrap_or_default();
        let object = wait_for(&api_for(&env, item), &name, TIMEOUT, status_written).await;
        let ready = find_condition(&object.data, "Ready");
        eprintln!(
            "{} {name}: Ready={} ({})",
            item.resource.kind,
            ready.as_ref().map_or("-", |c| c.status.as_str()),
            ready
                .as_ref()
                .and_then(|c| c.reason.clone())
                .unwrap_or_default()
        );
    }
    delete_and_wait(&env, &applied).await;

    let forbidden = op.metric(KUBE_REQUESTS, &[("code", "403")]).await;
    let log = op.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Forbidden") || l.contains("forbidden"))
        .collect();
    assert!(
        forbidden == 0.0 && lines.is_empty(),
        "the chart's ServiceAccount lacks permissions: {forbidden} requests refused\n{}",
        lines.join("\n")
    );
    assert!(
        op.metric(KUBE_REQUESTS, &[("code", "200")]).await > 0.0,
        "the operator's client counted no request"
    );
    op.kill().await;
    fake.shutdown().await;
    release.uninstall().await;
    env.cleanup().await;
}

#[tokio::test]
async fn only_the_leader_writes_and_another_takes_over_when_it_dies_or_stops() {
    let env = TestEnv::new().await;
    let ns = env.namespace().to_owned();
    let label = unique_name("le");
    let lease = unique_name("lease");
    let mut first =
        OperatorProcess::start(leader_options("leader-a", &ns, &lease, &label, Some(&ns))).await;
    first.wait_ready(TIMEOUT).await;
    let mut second =
        OperatorProcess::start(leader_options("leader-b", &ns, &lease, &label, Some(&ns))).await;
    second.wait_ready(TIMEOUT).await;
    let leading = sole_leader(&[&first, &second], Duration::from_secs(30)).await;
    // Watch for a while: never two leaders at once.
    for _ in 0..10 {
        assert_eq!(sole_leader(&[&first, &second], TIMEOUT).await, leading);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut leader, mut follower) = if leading == 0 {
        (first, second)
    } else {
        (second, first)
    };

    let tenants: Api<DynamicObject> = Api::all_with(
        env.client(),
        &ApiResource::erase::<aleph_crds::tenant::Tenant>(&()),
    );
    let mut applied = Vec::new();
    let one = unique_name("le-one");
    applied.extend(apply(&env, &small_tenant(&one, &label)).await);
    wait_for(&tenants, &one, TIMEOUT, tenant_reconciled).await;

    let leader_writes = leader.writes_besides_the_lease().await;
    let follower_writes = follower.writes_besides_the_lease().await;
    let follower_reconciles = follower.metric("aleph_reconcile_total", &[]).await;
    eprintln!("writes besides the lease: leader {leader_writes}, follower {follower_writes}");
    assert!(leader_writes > 0.0, "the leader wrote nothing");
    assert_eq!(
        follower_writes,
        0.0,
        "the follower wrote; its metrics:\n{}",
        follower.metrics().await
    );
    assert_eq!(follower_reconciles, 0.0, "the follower reconciled");

    // A crash: the lease expires and the follower takes over.
    leader.kill().await;
    let killed = Instant::now();
    let two = unique_name("le-two");
    applied.extend(apply(&env, &small_tenant(&two, &label)).await);
    wait_leads(&follower, "the follower leads").await;
    let leads_after = killed.elapsed();
    wait_for(&tenants, &two, TIMEOUT, tenant_reconciled).await;
    let takeover = killed.elapsed();
    println!("takeover: {takeover:.2?} (leader after {leads_after:.2?}, lease {LEASE_SECONDS} s)");
    assert!(
        leads_after >= Duration::from_secs(LEASE_SECONDS / 2),
        "took over after {leads_after:?}, before the lease of the killed leader expired"
    );
    // The lease expires, then the follower's next try (every second) takes it.
    assert!(
        leads_after < Duration::from_secs(LEASE_SECONDS * 3),
        "the follower led only after {leads_after:?}"
    );
    assert!(takeover < TIMEOUT, "takeover took {takeover:?}");

    // The killed replica comes back as a follower.
    leader.restart().await;
    leader.wait_ready(TIMEOUT).await;
    assert_eq!(sole_leader(&[&follower, &leader], TIMEOUT).await, 0);
    std::mem::swap(&mut leader, &mut follower);

    // A graceful stop: the leader releases the lease on SIGTERM, so the other
    // takes over at its next retry, well before the lease would expire.
    let leases: Api<Lease> = Api::namespaced(env.client(), &ns);
    let holder = |lease: Lease| lease.spec.and_then(|s| s.holder_identity);
    let stopped_holder = holder(leases.get(&lease).await.expect("the Lease"));
    assert!(stopped_holder.is_some(), "the leader holds the Lease");
    let stopping = Instant::now();
    let exited = leader.terminate(Duration::from_secs(10)).await;
    let exit_time = stopping.elapsed();
    assert!(
        exited,
        "SIGTERM: still running after 10 s; its log:\n{}",
        leader.log_tail(30)
    );
    assert!(
        leader.log().contains("controllers stopped"),
        "no graceful shutdown in the log:\n{}",
        leader.log_tail(30)
    );
    // Released on the way out (or already taken by the other): an unreleased
    // Lease would still name the stopped replica until it expired.
    let after_exit = holder(leases.get(&lease).await.expect("the Lease"));
    assert_ne!(
        after_exit, stopped_holder,
        "the stopped leader did not release the Lease"
    );
    wait_leads(&follower, "the follower leads after SIGTERM").await;
    let handover = stopping.elapsed();
    println!(
        "SIGTERM: exited in {exit_time:.2?}, handover: {handover:.2?} (lease {LEASE_SECONDS} s)"
    );
    assert!(
        handover < Duration::from_secs(LEASE_SECONDS * 2),
        "handover took {handover:?}"
    );
    let three = unique_name("le-three");
    applied.extend(apply(&env, &small_tenant(&three, &label)).await);
    wait_for(&tenants, &three, TIMEOUT, tenant_reconciled).await;
    let new_holder = holder(leases.get(&lease).await.expect("the Lease"));
    assert!(
        new_holder.is_some() && new_holder != stopped_holder,
        "the new leader holds the Lease: {new_holder:?}"
    );

    delete_and_wait(&env, &applied).await;
    follower.kill().await;
    env.cleanup().await;
}

/// A ClusterRoleBinding `<user>-<suffix>` that gives the user `user` the ClusterRole `role`.
fn user_binding_yaml(user: &str, suffix: &str, role: &str) -> String {
    format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{ name: {user}-{suffix} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role} }}
subjects: [{{ apiGroup: rbac.authorization.k8s.io, kind: User, name: {user} }}]
"#
    )
}

/// A ClusterRole `<user>-<suffix>` with `rules`, bound to the user `user`.
fn user_role_yaml(user: &str, suffix: &str, rules: &str) -> String {
    format!(
        "\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{ name: {user}-{suffix} }}\nrules:\n{rules}---{}",
        user_binding_yaml(user, suffix, &format!("{user}-{suffix}"))
    )
}

/// Waits until the operator's metrics count a list the API server refused.
async fn wait_refused_list(op: &OperatorProcess) {
    op.wait_for_metrics("a refused list", TIMEOUT, |m| {
        metric_sum(m, KUBE_REQUESTS, &[("verb", "list"), ("code", "403")]) > 0.0
    })
    .await;
}

#[tokio::test]
async fn readyz_waits_for_the_caches_and_metrics_count_reconciles() {
    let env = TestEnv::new().await;
    let user = unique_name("aleph-e2e-reader");
    let label = unique_name("obs");
    // The user may find the CRDs but list nothing else: the caches cannot sync.
    apply(
        &env,
        &user_role_yaml(
            &user,
            "crds",
            "  - apiGroups: [apiextensions.k8s.io]\n    resources: [customresourcedefinitions]\n    verbs: [get, list, watch]\n",
        ),
    )
    .await;
    // Operators that act as the user, for this namespace and label.
    let impersonating = |name: &str| OperatorOptions {
        args: [
            "--leader-elect",
            "false",
            "--impersonate",
            &user,
            "--namespaces",
            env.namespace(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        private_label: Some(label.clone()),
        name: name.into(),
        ..OperatorOptions::default()
    };
    let op = OperatorProcess::start(impersonating("observability")).await;
    // Alive at once; not ready while the watches are refused.
    let deadline = Instant::now() + TIMEOUT;
    while op.get("/livez").await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "/livez never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_refused_list(&op).await;
    for _ in 0..20 {
        assert_eq!(op.get("/livez").await.map(|r| r.0), Some(200));
        let (code, body) = op.get("/readyz").await.unwrap_or_default();
        assert_eq!(code, 503, "/readyz before the caches synced: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A SIGTERM stops an operator whose caches never synced, too.
    let mut unsynced = OperatorProcess::start(impersonating("unsynced")).await;
    wait_refused_list(&unsynced).await;
    let stopping = Instant::now();
    assert!(
        unsynced.terminate(Duration::from_secs(10)).await,
        "SIGTERM did not stop an operator whose caches never synced; its log:\n{}",
        unsynced.log_tail(20)
    );
    println!(
        "SIGTERM before the caches synced: exited in {:.2} s",
        stopping.elapsed().as_secs_f64()
    );

    // Read access everywhere: the caches sync, but every write is refused.
    apply(
        &env,
        &user_role_yaml(
            &user,
            "read",
            "  - apiGroups: [\"*\"]\n    resources: [\"*\"]\n    verbs: [get, list, watch]\n",
        ),
    )
    .await;
    let granted = Instant::now();
    let deadline = granted + TIMEOUT;
    loop {
        assert_eq!(op.get("/livez").await.map(|r| r.0), Some(200));
        if op.get("/readyz").await.map(|r| r.0) == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz not 200 within {TIMEOUT:?} of the grant; log:\n{}",
            op.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "ready {:.2} s after the list permission was granted",
        granted.elapsed().as_secs_f64()
    );

    let name = unique_name("obs");
    let applied = apply(&env, &small_tenant(&name, &label)).await;
    // A failed pass shows in all three series: its error kind, its result,
    // and the refused write that failed it.
    op.wait_for_metrics("a failed tenant reconcile", TIMEOUT, |m| {
        metric_sum(
            m,
            "aleph_reconcile_errors_total",
            &[("controller", "tenant")],
        ) > 0.0
            && metric_sum(
                m,
                "aleph_reconcile_total",
                &[("controller", "tenant"), ("result", "error")],
            ) > 0.0
            && metric_sum(m, KUBE_REQUESTS, &[("verb", "patch"), ("code", "403")]) > 0.0
    })
    .await;

    // Write access: the retry, after backoff, succeeds.
    apply(&env, &user_binding_yaml(&user, "admin", "cluster-admin")).await;
    let tenants: Api<DynamicObject> = Api::all_with(
        env.client(),
        &ApiResource::erase::<aleph_crds::tenant::Tenant>(&()),
    );
    wait_for(&tenants, &name, TIMEOUT, tenant_reconciled).await;
    let metrics = op
        .wait_for_metrics("a successful tenant reconcile", TIMEOUT, |m| {
            metric_sum(
                m,
                "aleph_reconcile_total",
                &[("controller", "tenant"), ("result", "success")],
            ) > 0.0
        })
        .await;
    let durations = metric_sum(
        &metrics,
        "aleph_reconcile_duration_seconds_count",
        &[("controller", "tenant")],
    );
    assert!(durations >= 2.0, "{durations} reconcile durations recorded");
    assert!(
        metric_sum(
            &metrics,
            "aleph_reconcile_duration_seconds_bucket",
            &[("controller", "tenant"), ("le", "+Inf")]
        ) >= 2.0
    );
    assert!(metrics.lines().any(|l| l.trim() == "aleph_leader 1"));
    // The tenant's namespace, made by server-side apply (a PATCH) or a POST.
    let namespace_writes: f64 = ["patch", "create"]
        .iter()
        .map(|verb| {
            metric_sum(
                &metrics,
                KUBE_REQUESTS,
                &[("verb", verb), ("resource", "namespaces")],
            )
        })
        .sum();
    assert!(
        namespace_writes > 0.0,
        "no counted namespace write:\n{metrics}"
    );
    assert!(metric_sum(&metrics, KUBE_REQUESTS, &[("verb", "watch")]) > 0.0);

    delete_and_wait(&env, &applied).await;
    drop(op);
    env.cleanup().await;
}

#[tokio::test]
async fn an_object_that_does_not_decode_is_skipped_and_the_controller_goes_on() {
    let env = TestEnv::new().await;
    let label = unique_name("dec");
    let pipeline = |name: &str, namespace: Option<&str>| {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipeline.yaml"),
        )
        .expect("examples/pipeline.yaml");
        let mut doc: Value = serde_saphyr::from_str(&text).expect("the example parses");
        doc["metadata"]["name"] = json!(name);
        doc["metadata"]["labels"][PRIVATE_OPERATOR_LABEL] = json!(label);
        if let Some(namespace) = namespace {
            doc["metadata"]["namespace"] = json!(namespace);
        }
        doc.to_string()
    };
    // The schema says int32 but does not bound it, and the API server stores
    // any integer: another writer's status can hold what the types cannot.
    let mut applied = apply(&env, &pipeline("undecodable", None)).await;
    let pipelines = api_for(&env, &applied[0]);
    pipelines
        .patch_status(
            "undecodable",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "stepCount": 99_999_999_999_i64 } })),
        )
        .await
        .expect("the API server stores the status");

    let mut op = OperatorProcess::start(OperatorOptions {
        args: ["--leader-elect", "false", "--namespaces", env.namespace()]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        private_label: Some(label.clone()),
        name: "undecodable".into(),
        ..OperatorOptions::default()
    })
    .await;
    op.wait_ready(TIMEOUT).await;
    op.wait_for_metrics("the undecodable object counted", TIMEOUT, |m| {
        metric_sum(
            m,
            "aleph_undecodable_objects_total",
            &[("controller", "pipeline")],
        ) > 0.0
    })
    .await;
    let log = op.log();
    let skipped = log
        .lines()
        .find(|l| l.contains("does not match the schema") && l.contains("undecodable"));
    let skipped = skipped.unwrap_or_else(|| panic!("no log line for the skipped object:\n{log}"));
    let line: Value = serde_json::from_str(skipped).expect("a JSON log line");
    assert_eq!(line["kind"], "Pipeline");
    assert_eq!(line["namespace"], env.namespace());
    assert!(line["error"].as_str().is_some_and(|e| !e.is_empty()));

    // The same controller still reconciles the objects that decode; with
    // --namespaces, only in the namespaces named.
    let unwatched = unique_name("e2e-unwatched");
    env.apply_yaml(&format!(
        "{{apiVersion: v1, kind: Namespace, metadata: {{name: {unwatched}, labels: {{aleph.dev/e2e: 'true'}}}}}}"
    ))
    .await;
    let elsewhere = apply(&env, &pipeline("elsewhere", Some(&unwatched))).await;
    applied.extend(apply(&env, &pipeline("decodable", None)).await);
    wait_for(&pipelines, "decodable", TIMEOUT, status_written).await;
    op.wait_for_metrics("a pipeline reconcile", TIMEOUT, |m| {
        metric_sum(m, "aleph_reconcile_total", &[("controller", "pipeline")]) > 0.0
    })
    .await;
    assert!(!op.has_exited(), "the operator stopped");
    assert_eq!(op.get("/readyz").await.map(|r| r.0), Some(200));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other =
        Api::<DynamicObject>::namespaced_with(env.client(), &unwatched, &elsewhere[0].resource)
            .get("elsewhere")
            .await
            .expect("the Pipeline outside the watched namespace");
    assert!(
        !status_written(&other),
        "a Pipeline outside --namespaces was reconciled: {:?}",
        other.data["status"]
    );

    delete_and_wait(&env, &applied).await;
    op.kill().await;
    env.cleanup().await;
}

/// The GPU products of a node list's GPU nodes, and whether each is tainted.
fn gpu_nodes(nodes: &[(Value, Vec<Value>)]) -> Vec<(String, bool)> {
    let mut found: Vec<(String, bool)> = nodes
        .iter()
        .filter_map(|(labels, taints)| {
            let product = labels["nvidia.com/gpu.product"].as_str()?.to_owned();
            let tainted = taints
                .iter()
                .any(|t| t["key"] == "nvidia.com/gpu" && t["effect"] == "NoSchedule");
            Some((product, tainted))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn kind_config_has_the_local_control_planes_nodes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let local: Vec<Value> =
        serde_saphyr::from_multiple(&read("e2e/cluster/manifests/nodes.yaml")).expect("nodes");
    let local: Vec<(Value, Vec<Value>)> = local
        .iter()
        .filter(|n| !n.is_null())
        .map(|n| {
            (
                n["metadata"]["labels"].clone(),
                n["spec"]["taints"].as_array().cloned().unwrap_or_default(),
            )
        })
        .collect();
    let kind: Value = serde_saphyr::from_str(&read("kind-config.yaml")).expect("kind config");
    let workers: Vec<(Value, Vec<Value>)> = kind["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"] == "worker")
        .map(|n| {
            // Taints come from the kubeadm JoinConfiguration patch.
            let taints = n["kubeadmConfigPatches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .filter_map(|p| serde_saphyr::from_str::<Value>(p).ok())
                .flat_map(|p| {
                    p["nodeRegistration"]["taints"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            (n["labels"].clone(), taints)
        })
        .collect();
    assert_eq!(workers.len(), local.len(), "one kind worker per local node");
    let kind_gpus = gpu_nodes(&workers);
    assert_eq!(kind_gpus, gpu_nodes(&local), "GPU products and taints");
    assert!(kind_gpus.iter().all(|(_, tainted)| *tainted));
    for (labels, _) in &workers {
        let pool = labels["aleph.dev/node-pool"].as_str().unwrap_or_default();
        let gpu = labels.get("nvidia.com/gpu.product").is_some();
        assert_eq!(pool, if gpu { "gpu" } else { "cpu" }, "{labels}");
    }
}

/// A port already in use for `/metrics`, `/livez` and `/readyz` stops the
/// operator at once, non-zero, with the address in the error: it does not go
/// on reconciling with probes that can never pass.
#[tokio::test]
async fn a_taken_metrics_port_stops_the_operator_at_once_saying_which() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let addr = taken.local_addr().expect("its address").to_string();
    let run = tokio::process::Command::new(aleph_e2e::operator::operator_binary())
        .args(["run", "--metrics-addr", &addr, "--leader-elect", "false"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the operator went on running with its port taken")
        .expect("the operator binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    let said = stderr
        .lines()
        .find(|l| l.starts_with("aleph-operator: "))
        .unwrap_or_else(|| panic!("no error line on stderr:\n{stderr}"));
    assert!(
        said.contains(&addr) && said.contains(aleph_e2e::operator::PORT_TAKEN),
        "{said}"
    );
    drop(taken);
}
