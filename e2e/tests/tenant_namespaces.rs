//! Namespaces a tenant's owners create themselves: named with the tenant's
//! prefix, labelled with the tenant, within its namespace count; the Tenant
//! adopts them at once (quota, limits, isolation, bindings). Owners act
//! through impersonation. Against the operator started by the test command.

mod tenant_support;

use std::time::{Duration, Instant};

use aleph_crds::tenant::Tenant;
use aleph_e2e::{TestEnv, has_condition, unique_name, wait_for, wait_for_deletion};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use tenant_support::*;

/// Applies the Tenant `name`, owned by alice (admin) and victor (view), with
/// the namespaces `one` and `two`, `quota` (its spec's quota line, or
/// nothing) and images from `ghcr.io/acme/` only; waits until it is Ready.
async fn ready_acme_tenant(env: &TestEnv, name: &str, quota: &str) -> Tenant {
    let rest = format!("{quota}\n  admission:\n    allowedRegistries: [\"ghcr.io/acme/\"]\n");
    let yaml = pro_tenant(
        name,
        &[("alice", "admin"), ("victor", "view")],
        "one, two",
        &rest,
    );
    ready_tenant(env, name, &yaml).await
}

fn namespace(name: &str, labels: Value) -> Namespace {
    typed(
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels } }),
    )
}

fn delete_dry() -> DeleteParams {
    DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    }
}

/// Retries `attempt` until it is admitted (the owners' ClusterRole and the
/// policies reach the API server's caches a moment after they are written).
async fn until_admitted<T>(what: &str, mut attempt: impl AsyncFnMut() -> Result<T, kube::Error>) {
    let mut last = String::new();
    for _ in 0..120 {
        match attempt().await {
            Ok(_) => return,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what} was never admitted: {last}");
}

#[tokio::test]
async fn owners_create_namespaces_that_the_tenant_adopts_within_its_count() {
    let env = TestEnv::new().await;
    let name = unique_name("tnself");
    let other = unique_name("tnothr");
    // Four namespaces in all: the two declared and two the owners may create.
    ready_acme_tenant(&env, &name, "  quota: { namespaces: 4 }").await;
    ready_acme_tenant(&env, &other, "").await;
    let alice = env.impersonated_client(&format!("{name}-alice"), &[]);
    let namespaces: Api<Namespace> = Api::all(alice.clone());
    let mine = json!({ "aleph.dev/tenant": name });
    let scratch = format!("{name}-scratch");
    until_admitted("the owner's first namespace (dry run)", async || {
        namespaces
            .create(&dry_run(), &namespace(&scratch, mine.clone()))
            .await
    })
    .await;

    // Refused: without the tenant's label, outside the prefix, in another
    // tenant, with the operator's labels.
    let mut with_quota_label = mine.clone();
    with_quota_label["aleph.dev/quota"] = json!("ready");
    let mut privileged = mine.clone();
    privileged["pod-security.kubernetes.io/enforce"] = json!("privileged");
    for (what, ns, rule) in [
        (
            "no tenant label",
            namespace(&format!("{name}-bare"), json!({})),
            "must be labelled aleph.dev/tenant",
        ),
        (
            "outside the prefix",
            namespace(&format!("x{name}"), mine.clone()),
            &format!("must be named {name}-<name>"),
        ),
        (
            "in a tenant the owner does not own",
            namespace(
                &format!("{other}-mine"),
                json!({ "aleph.dev/tenant": other }),
            ),
            "a tenant the user owns",
        ),
        (
            "the quota guard's label",
            namespace(&format!("{name}-early"), with_quota_label),
            "set by the operator",
        ),
        (
            "a Pod Security level",
            namespace(&format!("{name}-lax"), privileged),
            "set by the operator",
        ),
    ] {
        let message = outcome(namespaces.create(&PostParams::default(), &ns).await);
        assert!(refused_by(&message, rule), "{what}: {message}");
    }
    // An owner with the view role gets no such right (RBAC).
    let victor: Api<Namespace> = Api::all(env.impersonated_client(&format!("{name}-victor"), &[]));
    let message = outcome(
        victor
            .create(&dry_run(), &namespace(&format!("{name}-v"), mine.clone()))
            .await,
    );
    assert!(
        message.contains("forbidden"),
        "a viewer creates a namespace: {message}"
    );

    // Admitted, and adopted at once: the owner's binding, the quota, the
    // limits and the isolation policy follow, and the owner's pod runs there.
    let started = Instant::now();
    namespaces
        .create(&PostParams::default(), &namespace(&scratch, mine.clone()))
        .await
        .expect("the owner creates a namespace with the tenant's prefix and label");
    let pods: Api<Pod> = Api::namespaced(alice.clone(), &scratch);
    until_admitted("the owner's pod in its new namespace", async || {
        pods.create(
            &PostParams::default(),
            &typed(pod("web", "ghcr.io/acme/web:1")),
        )
        .await
    })
    .await;
    let adopted_in = started.elapsed();
    println!(
        "an owner's namespace was adopted and took the owner's pod {:.1}s after its creation",
        adopted_in.as_secs_f32()
    );
    let admin = env.client();
    let ns = Api::<Namespace>::all(admin.clone())
        .get(&scratch)
        .await
        .expect("the namespace");
    let labels = ns.labels();
    for (key, value) in [
        ("aleph.dev/tenant", name.as_str()),
        ("aleph.dev/origin", "owner"),
        ("aleph.dev/quota", "ready"),
    ] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(value),
            "{key} on {scratch}: {labels:?}"
        );
    }
    let (_, binding) = tenant_objects(&admin, &scratch).await;
    assert!(
        binding
            .subjects
            .unwrap_or_default()
            .iter()
            .any(|s| s.name == format!("{name}-alice")),
        "alice is not bound in {scratch}"
    );
    // The tenant's rules hold there: a foreign image is refused.
    let message = outcome(
        pods.create(&dry_run(), &typed(pod("evil", "docker.io/evil/x:1")))
            .await,
    );
    assert!(refused_by(&message, "allowedRegistries"), "{message}");
    let tenants: Api<Tenant> = env.cluster_api();
    let status = wait_for(&tenants, &name, TIMEOUT, |t| {
        has_condition(t, "Ready", "True")
            && t.status.as_ref().is_some_and(|s| s.namespace_count == 3)
    })
    .await
    .status
    .unwrap_or_default();
    assert_eq!(
        status.namespaces,
        vec![
            format!("{name}-one"),
            format!("{name}-two"),
            scratch.clone()
        ]
    );

    // The fourth fills the count; a fifth is refused, naming the count.
    let extra = format!("{name}-extra");
    namespaces
        .create(&PostParams::default(), &namespace(&extra, mine.clone()))
        .await
        .expect("the fourth namespace");
    let more = format!("{name}-more");
    let message = until_refused(async || {
        namespaces
            .create(&dry_run(), &namespace(&more, mine.clone()))
            .await
    })
    .await;
    assert!(
        refused_by(&message, "has 4 of its 4 namespaces"),
        "{message}"
    );

    // Deleting: not a declared namespace, not another tenant's, not one
    // outside any tenant; one the owners created, yes.
    // (Another tenant's declared namespace is refused by two policies, the
    // cluster-wide one and that tenant's owners' policy: either may answer.)
    let not_owned = "does not belong to a tenant the user owns";
    for (what, target, rules) in [
        (
            "a declared namespace",
            format!("{name}-one"),
            vec!["spec.namespaces"],
        ),
        (
            "another tenant's",
            format!("{other}-one"),
            vec![not_owned, "spec.namespaces"],
        ),
        (
            "one outside any tenant",
            env.namespace().to_string(),
            vec![not_owned],
        ),
    ] {
        let message = outcome(namespaces.delete(&target, &delete_dry()).await);
        assert!(
            rules.iter().any(|rule| refused_by(&message, rule)),
            "delete {what}: {message}"
        );
    }
    delete(&namespaces, &extra)
        .await
        .expect("the owner deletes a namespace it created");
    wait_for_deletion(&Api::<Namespace>::all(admin.clone()), &extra, TIMEOUT).await;
    until_admitted("a namespace in the room the deleted one left", async || {
        namespaces
            .create(&dry_run(), &namespace(&more, mine.clone()))
            .await
    })
    .await;

    // Beyond the count (two owners creating at once can both pass admission;
    // a cluster admin, exempt, stands in for the second): not adopted, and
    // the Tenant says so until it is gone.
    let over = [format!("{name}-race1"), format!("{name}-race2")];
    for ns in &over {
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &namespace(ns, mine.clone()))
            .await
            .expect("an unadopted namespace");
    }
    let t = wait_for(&tenants, &name, TIMEOUT, |t| {
        has_condition(t, "Ready", "False")
            && t.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "NamespaceLimitExceeded")
            })
    })
    .await;
    let ready = t
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    // scratch and race1 fill the two places (oldest first); race2 is over.
    assert!(
        ready.message.contains(&over[1]) && !ready.message.contains(&over[0]),
        "{}",
        ready.message
    );
    let rbs = Api::<RoleBinding>::namespaced(admin.clone(), &over[1])
        .list(&Default::default())
        .await
        .expect("bindings");
    assert!(
        rbs.items.is_empty(),
        "the namespace over the count got bindings: {:?}",
        rbs.items.iter().map(|r| r.name_any()).collect::<Vec<_>>()
    );
    Api::<Namespace>::all(admin.clone())
        .delete(&over[1], &DeleteParams::default())
        .await
        .expect("delete the namespace over the count");
    wait_ready(&env, &name).await;

    // The Tenant's deletion takes the owners' namespaces with it (Delete).
    delete_tenant(&env, &name).await;
    wait_for_deletion(&tenants, &name, TIMEOUT).await;
    assert_namespaces_went(&admin, &[scratch.clone(), over[0].clone()]).await;
    env.cleanup().await;
}
