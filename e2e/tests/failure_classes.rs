//! An API refusal of a child shows on every kind: a ValidatingAdmissionPolicy
//! of the test's own refuses the writes of one kind of child, first as
//! invalid (422), then as forbidden (403). Each kind's condition carries the
//! refusal's reason and the API server's message, a Warning Event
//! `ReconcileFailed` quotes it, and once the policy is gone the object
//! recovers by itself. A PipelineRun, whose steps are its children, shows a
//! refused Job in its own condition: a 403 waits and retries, a 422 fails the
//! step and the run.

use std::time::Duration;

use aleph_crds::conditions::{READY, SUCCEEDED};
use aleph_e2e::dynamic::aleph_resource;
use aleph_e2e::{TestEnv, find_condition, unique_name, wait_for};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, PostParams};

const WAIT: Duration = Duration::from_secs(120);

/// A policy of the test's own that refuses writes of `resource` (in
/// `group`) labelled `key: value`, and of ConfigMaps so labelled: the probe
/// that tells the policy is in force.
struct Refusal<'a> {
    env: &'a TestEnv,
    name: String,
    group: &'static str,
    resource: &'static str,
    label: (&'static str, String),
}

impl Refusal<'_> {
    fn marker(&self) -> String {
        format!("refused by the test policy {}", self.name)
    }

    /// Puts the policy in force with `reason` (`Invalid`: 422, `Forbidden`:
    /// 403) and waits until a probe is refused with that code.
    async fn refuse(&self, reason: &str, code: u16) {
        let (key, value) = &self.label;
        self.env
            .apply_yaml(&format!(
                r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{ name: {name} }}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - {{ apiGroups: ["{group}"], apiVersions: ["*"], resources: ["{resource}"], operations: [CREATE, UPDATE] }}
      - {{ apiGroups: [""], apiVersions: ["*"], resources: [configmaps], operations: [CREATE, UPDATE] }}
  validations:
    - {{ expression: "false", message: "{marker}", reason: {reason} }}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{ name: {name} }}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    objectSelector: {{ matchLabels: {{ {key}: "{value}" }} }}
"#,
                name = self.name,
                group = self.group,
                resource = self.resource,
                marker = self.marker(),
            ))
            .await;
        let probes: Api<ConfigMap> = self.env.api();
        let probe = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("{}-probe", self.name)),
                labels: Some([(key.to_string(), value.clone())].into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match probes
                .create(
                    &PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    },
                    &probe,
                )
                .await
            {
                Err(kube::Error::Api(e))
                    if e.code == code && e.message.contains(&self.marker()) =>
                {
                    return;
                }
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "policy {} with reason {reason} not in force: {other:?}",
                    self.name
                ),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Takes the policy away.
    async fn allow(&self) {
        let client = self.env.client();
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(client);
        for result in [
            bindings
                .delete(&self.name, &DeleteParams::default())
                .await
                .map(|_| ()),
            policies
                .delete(&self.name, &DeleteParams::default())
                .await
                .map(|_| ()),
        ] {
            if let Err(error) = result {
                panic!("delete policy {}: {error}", self.name);
            }
        }
    }
}

fn condition(obj: &DynamicObject, type_: &str) -> (String, String, String) {
    let c = find_condition(obj, type_).unwrap_or_default();
    (
        c.status,
        c.reason.unwrap_or_default(),
        c.message.unwrap_or_default(),
    )
}

/// Waits until a Warning Event `ReconcileFailed` about the object quotes `needle`.
async fn wait_event(env: &TestEnv, kind: &str, name: &str, needle: &str) {
    let events: Api<Event> = Api::all(env.client());
    aleph_e2e::wait_reconcile_failed(&events, kind, name, needle, WAIT).await;
}

/// Changes an annotation of the object: a reconcile at once, instead of at the
/// end of the backoff the failures so far have earned.
async fn poke(api: &Api<DynamicObject>, name: &str, step: &str) {
    let patch = serde_json::json!({"metadata": {"annotations": {"e2e.aleph.dev/poke": step}}});
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap_or_else(|e| panic!("annotate {name}: {e}"));
}

/// One kind: the object, and the child whose writes are refused.
struct Case {
    kind: &'static str,
    plural: &'static str,
    cluster_scoped: bool,
    /// The object's name; a cluster-scoped one is made unique.
    name: &'static str,
    /// The body of its spec, where `{name}` stands for its name.
    spec: &'static str,
    group: &'static str,
    resource: &'static str,
    /// The label the operator puts on that child, valued with the object's name.
    label: &'static str,
}

const TENANT: Case = Case {
    kind: "Tenant",
    plural: "tenants",
    cluster_scoped: true,
    name: "refusals",
    spec: "  owners: [{ kind: Group, name: {name}-admins, role: admin }]\n  namespaces: [work]\n  quota: { cpu: \"1\", memory: 1Gi }\n",
    group: "",
    resource: "resourcequotas",
    label: "aleph.dev/tenant",
};

const MODEL: Case = Case {
    kind: "AIModel",
    plural: "aimodels",
    cluster_scoped: false,
    name: "refused-model",
    spec: "  source: { uri: hf://acme/refused-8b }\n  cache: { enabled: false }\n  resources: { gpus: 1, cpu: \"1\", memory: 1Gi }\n",
    group: "apps",
    resource: "deployments",
    label: "aleph.dev/model",
};

const PLUGIN: Case = Case {
    kind: "Plugin",
    plural: "plugins",
    cluster_scoped: false,
    name: "refused-plugin",
    spec: "  version: 1.0.0\n  image: ghcr.io/acme/{name}:1.0.0\n  port: 9000\n  replicas: 1\n",
    group: "apps",
    resource: "deployments",
    label: "aleph.dev/plugin",
};

const PIPELINE: Case = Case {
    kind: "Pipeline",
    plural: "pipelines",
    cluster_scoped: false,
    name: "refused-pipeline",
    spec: "  steps:\n    - name: a\n      container: { image: registry.k8s.io/pause:3.10 }\n  schedule:\n    cron: \"*/3 * * * * *\"\n    concurrencyPolicy: Forbid\n",
    group: "aleph.dev",
    resource: "pipelineruns",
    label: "aleph.dev/pipeline",
};

/// Refused as invalid, then as forbidden, then allowed: the kind's Ready
/// condition and its Events follow each step.
async fn refusals_show_and_clear(case: &Case) {
    let env = TestEnv::new().await;
    let name = if case.cluster_scoped {
        unique_name(case.name)
    } else {
        case.name.to_string()
    };
    let yaml = format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: {}\nmetadata: {{ name: {name} }}\nspec:\n{}",
        case.kind,
        case.spec.replace("{name}", &name)
    );
    let refusal = Refusal {
        env: &env,
        name: unique_name(&format!("refuse-{}", case.plural)),
        group: case.group,
        resource: case.resource,
        label: (case.label, name.clone()),
    };
    let marker = refusal.marker();
    let resource = aleph_resource(case.kind, case.plural);
    let api: Api<DynamicObject> = if case.cluster_scoped {
        Api::all_with(env.client(), &resource)
    } else {
        Api::namespaced_with(env.client(), env.namespace(), &resource)
    };

    refusal.refuse("Invalid", 422).await;
    env.apply_yaml(&yaml).await;
    if case.cluster_scoped {
        env.delete_on_cleanup(resource.clone(), &name);
    }
    for (reason, code) in [("Refused", 422), ("Forbidden", 403)] {
        if code == 403 {
            refusal.refuse("Forbidden", 403).await;
            poke(&api, &name, "forbidden").await;
        }
        let shown = wait_for(&api, &name, WAIT, |o| {
            let (_, r, m) = condition(o, READY);
            r == reason && m.contains(&marker)
        })
        .await;
        let (status, _, message) = condition(&shown, READY);
        assert_eq!(status, "False", "{} {name}: {message}", case.kind);
        assert!(
            message.contains("retries"),
            "{} says it retries: {message}",
            case.kind
        );
        wait_event(&env, case.kind, &name, &marker).await;
    }

    refusal.allow().await;
    poke(&api, &name, "allowed").await;
    wait_for(&api, &name, WAIT, |o| {
        let (_, r, m) = condition(o, READY);
        r != "Refused" && r != "Forbidden" && !m.contains(&marker)
    })
    .await;
    env.cleanup().await;
}

/// One test per kind: `test_name: CASE`.
macro_rules! refusal_tests {
    ($($test:ident: $case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $test() {
                refusals_show_and_clear(&$case).await;
            }
        )*
    };
}

refusal_tests! {
    a_tenant_shows_refusals_of_its_quota_and_recovers: TENANT,
    a_model_shows_refusals_of_its_deployment_and_recovers: MODEL,
    a_plugin_shows_refusals_of_its_deployment_and_recovers: PLUGIN,
    a_pipeline_shows_refusals_of_its_scheduled_runs_and_recovers: PIPELINE,
}

/// Puts in force a policy that refuses the Jobs of the run `run` with
/// `reason` and `code`, then applies the run (of the pipeline `once`).
async fn refused_run<'a>(env: &'a TestEnv, run: &str, reason: &str, code: u16) -> Refusal<'a> {
    let refusal = Refusal {
        env,
        name: unique_name(&format!("refuse-jobs-{code}")),
        group: "batch",
        resource: "jobs",
        label: ("aleph.dev/pipelinerun", run.into()),
    };
    refusal.refuse(reason, code).await;
    env.apply_yaml(&format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: PipelineRun\nmetadata: {{ name: {run} }}\nspec:\n  pipelineRef: {{ name: once }}\n"
    ))
    .await;
    refusal
}

/// A run's steps are its children: a Job refused as forbidden keeps the step
/// waiting and the run says why until the policy goes; a Job refused as
/// invalid fails the step and the run, quoting the API server.
#[tokio::test]
async fn a_run_shows_refusals_of_its_jobs() {
    let env = TestEnv::new().await;
    env.apply_yaml(
        "apiVersion: aleph.dev/v1alpha1\nkind: Pipeline\nmetadata: { name: once }\nspec:\n  steps:\n    - name: a\n      container: { image: registry.k8s.io/pause:3.10 }\n",
    )
    .await;
    let resource = aleph_resource("PipelineRun", "pipelineruns");
    let runs: Api<DynamicObject> = Api::namespaced_with(env.client(), env.namespace(), &resource);

    let waits = refused_run(&env, "waits", "Forbidden", 403).await;
    let marker = waits.marker();
    let waiting = wait_for(&runs, "waits", WAIT, |r| {
        condition(r, SUCCEEDED).2.contains(&marker)
    })
    .await;
    let (status, _, message) = condition(&waiting, SUCCEEDED);
    assert_eq!(status, "Unknown", "a forbidden Job waits: {message}");
    assert!(message.contains("cannot start: a"), "{message}");
    waits.allow().await;
    poke(&runs, "waits", "allowed").await;
    let started = wait_for(&runs, "waits", WAIT, |r| {
        !condition(r, SUCCEEDED).2.contains(&marker)
    })
    .await;
    assert_ne!(condition(&started, SUCCEEDED).0, "False");

    let fails = refused_run(&env, "fails", "Invalid", 422).await;
    let marker = fails.marker();
    let failed = wait_for(&runs, "fails", WAIT, |r| {
        condition(r, SUCCEEDED).0 == "False"
    })
    .await;
    let (_, _, message) = condition(&failed, SUCCEEDED);
    assert!(
        message.contains(&marker),
        "the refusal is quoted: {message}"
    );
    fails.allow().await;
    env.cleanup().await;
}
