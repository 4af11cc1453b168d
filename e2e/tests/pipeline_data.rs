//! Pipelines that carry data and talk to people, end to end: a workspace that
//! one step writes and the next reads, a fan-out over an earlier step's JSON
//! list, run on the real node (`e2e/src/real_node.rs`) where the containers
//! really run; approval gates decided through the API server's RBAC and the
//! operator's admission policy; notifications posted to a webhook receiver
//! running in the cluster.

use std::time::Duration;

use aleph_crds::pipeline::{PipelineRun, RunPhase, StepPhase};
use aleph_crds::pipeline_data::DeliveryPhase;
use aleph_e2e::pipelines::{finished_run, label_values, phase, run_manifest, run_pods, step};
use aleph_e2e::real_node::{self, BUSYBOX_IMAGE, REAL_NODE_NAME, pin_namespace, pod_ip};
use aleph_e2e::{TestEnv, events_about, find_condition, kubectl, node_of, poll, wait_for};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(180);

/// A test's environment whose namespace's pods run on the real node.
async fn pinned_env() -> TestEnv {
    let env = TestEnv::new().await;
    real_node::require(&env.client()).await;
    pin_namespace(&env.client(), env.namespace()).await;
    env
}

/// The JSON value of a step output; panics when it is not JSON.
fn json_output(run: &PipelineRun, step_name: &str, key: &str) -> Value {
    let text = step(run, step_name)
        .outputs
        .get(key)
        .unwrap_or_else(|| panic!("step {step_name} has no output {key}: {:#?}", run.status));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("output {key} is not JSON ({e}): {text}"))
}

#[tokio::test]
async fn a_workspace_carries_a_dataset_to_the_next_step_and_a_fan_out_runs_once_per_metric() {
    let env = pinned_env().await;
    // prepare writes a dataset into the run's workspace; train reads it
    // (mounted read-only, which it checks) and emits a JSON list of metrics;
    // evaluate runs once per metric, two at a time, and each instance reads
    // the dataset too.
    env.apply_yaml(&format!(
        r#"apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: {{ name: carry }}
spec:
  workspaces:
    - name: data
      volumeClaimTemplate: {{ storage: 16Mi }}
  steps:
    - name: prepare
      workspaces: [{{ name: data }}]
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'printf "a,1\nb,2\nc,3\n" >/workspace/data/dataset.csv && echo "wrote=$HOSTNAME" >>"$ALEPH_OUTPUTS_FILE"']
    - name: train
      dependsOn: [prepare]
      workspaces: [{{ name: data, mountPath: /in, readOnly: true }}]
      container:
        image: {BUSYBOX_IMAGE}
        command:
          - sh
          - -c
          - |
            rows=$(wc -l </in/dataset.csv)
            if touch /in/other 2>/dev/null; then w=yes; else w=no; fi
            echo "rows=$rows" >>"$ALEPH_OUTPUTS_FILE"
            echo "writable=$w" >>"$ALEPH_OUTPUTS_FILE"
            echo 'metrics=["accuracy","loss","f1"]' >>"$ALEPH_OUTPUTS_FILE"
    - name: evaluate
      dependsOn: [train]
      forEach: {{ fromOutput: steps.train.outputs.metrics, parallelism: 2 }}
      workspaces: [{{ name: data, readOnly: true }}]
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'echo "metric=$1" >>"$ALEPH_OUTPUTS_FILE"; echo "index=$ALEPH_ITEM_INDEX" >>"$ALEPH_OUTPUTS_FILE"; echo "rows=$(wc -l </workspace/data/dataset.csv)" >>"$ALEPH_OUTPUTS_FILE"', evaluate]
        args: ["$(item)"]
"#
    ))
    .await;
    env.apply_yaml(&run_manifest("carry-1", "carry", "")).await;
    let started = tokio::time::Instant::now();
    let run = finished_run(&env, "carry-1", TIMEOUT).await;
    println!(
        "run carry-1 finished in {:.1}s",
        started.elapsed().as_secs_f32()
    );
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);

    // The workspace: one claim made for the run, named in status.
    let status = run.status.clone().unwrap_or_default();
    assert_eq!(status.workspaces.len(), 1, "{:#?}", status.workspaces);
    let workspace = &status.workspaces[0];
    assert_eq!(workspace.name, "data");
    assert!(workspace.owned, "the run made the claim: {workspace:?}");
    assert_eq!(workspace.access_modes, ["ReadWriteOnce"]);
    assert_eq!(workspace.node.as_deref(), Some(REAL_NODE_NAME));
    let claims: Api<PersistentVolumeClaim> = env.api();
    let claim = claims
        .get(&workspace.claim_name)
        .await
        .unwrap_or_else(|e| panic!("the claim {}: {e}", workspace.claim_name));
    assert!(
        claim
            .owner_references()
            .iter()
            .any(|o| o.kind == "PipelineRun" && o.name == "carry-1"),
        "the claim is the run's: {:?}",
        claim.owner_references()
    );

    // What went through it: train read the three rows prepare wrote, and could
    // not write where it mounted the workspace read-only.
    let prepare = step(&run, "prepare");
    assert!(prepare.outputs.contains_key("wrote"), "{prepare:#?}");
    let train = step(&run, "train");
    assert_eq!(train.outputs.get("rows").map(String::as_str), Some("3"));
    assert_eq!(
        train.outputs.get("writable").map(String::as_str),
        Some("no"),
        "a read-only mount was writable"
    );

    // The fan-out: one instance per metric, each with its item and index and
    // the dataset; the results in item order.
    let evaluate = step(&run, "evaluate");
    assert_eq!(evaluate.phase, StepPhase::Succeeded, "{evaluate:#?}");
    assert_eq!(evaluate.outputs.get("count").map(String::as_str), Some("3"));
    assert_eq!(
        evaluate.outputs.get("failed").map(String::as_str),
        Some("0")
    );
    let results = json_output(&run, "evaluate", "results");
    let expected: Value = json!([
        { "metric": "accuracy", "index": "0", "rows": "3" },
        { "metric": "loss", "index": "1", "rows": "3" },
        { "metric": "f1", "index": "2", "rows": "3" },
    ]);
    assert_eq!(results, expected);

    // Every step ran as a pod on the real node (where the claim is), one per
    // instance for the fan-out, and each container exited 0.
    let pods = run_pods(&env, "carry-1").await;
    assert_eq!(
        label_values(&pods, "aleph.dev/step"),
        ["evaluate", "evaluate", "evaluate", "prepare", "train"]
    );
    for pod in &pods {
        assert_eq!(node_of(pod), Some(REAL_NODE_NAME), "{}", pod.name_any());
    }
    let mut items = label_values(&pods, "aleph.dev/item");
    items.retain(|i| !i.is_empty());
    assert_eq!(items, ["0", "1", "2"]);

    // Deleting the run deletes the claim it made.
    kubectl(["delete", "pipelinerun", "-n", env.namespace(), "carry-1"])
        .await
        .expect_success();
    aleph_e2e::wait_for_deletion(&claims, &workspace.claim_name, TIMEOUT).await;
    env.cleanup().await;
}

/// Adds a decision to the run `name`'s `spec.approvals` as `client`'s user
/// (who writes `user` into it); `dry_run` only asks whether it would be
/// admitted.
async fn decide(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    decision: &str,
    user: &str,
    dry_run: bool,
) -> Result<PipelineRun, kube::Error> {
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams {
        dry_run,
        ..PatchParams::default()
    };
    let patch = json!({ "spec": { "approvals": [
        { "step": "gate", "decision": decision, "user": user, "message": "checked the metrics" }
    ] } });
    runs.patch(name, &params, &Patch::Merge(&patch)).await
}

fn api_error(result: Result<PipelineRun, kube::Error>) -> (u16, String) {
    match result {
        Ok(run) => panic!("the decision was admitted: {:?}", run.spec.approvals),
        Err(kube::Error::Api(status)) => (status.code, status.message),
        Err(e) => panic!("the request failed before the API server answered: {e}"),
    }
}

#[tokio::test]
async fn an_approval_gate_waits_for_a_decision_only_a_user_allowed_to_update_the_run_can_make() {
    let env = TestEnv::new().await;
    let ns = env.namespace().to_string();
    // viewer may read runs, approver may also update them.
    env.apply_yaml(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: run-viewer }
rules: [{ apiGroups: [aleph.dev], resources: [pipelineruns], verbs: [get, list, watch] }]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: run-approver }
rules: [{ apiGroups: [aleph.dev], resources: [pipelineruns], verbs: [get, list, watch, patch, update] }]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: run-viewer }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: run-viewer }
subjects: [{ apiGroup: rbac.authorization.k8s.io, kind: User, name: viewer }]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: run-approver }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: run-approver }
subjects: [{ apiGroup: rbac.authorization.k8s.io, kind: User, name: approver }]
---
apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: { name: gated }
spec:
  steps:
    - name: gate
      approval: { message: "deploy model $(params.model)?", timeoutSeconds: 600 }
    - name: deploy
      dependsOn: [gate]
      podAnnotations: { aleph.dev/test-run-duration: 1s }
      container: { image: registry.k8s.io/pause:3.10, args: ["$(steps.gate.outputs.decidedBy)"] }
  params: [{ name: model, default: tiny }]
"#,
    )
    .await;
    let runs: Api<PipelineRun> = env.api();

    // Run 1 waits at the gate, says so, and deploy does not start.
    env.apply_yaml(&run_manifest("gated-1", "gated", "")).await;
    let waiting = wait_for(&runs, "gated-1", TIMEOUT, |r| {
        r.status.is_some() && step(r, "gate").phase == StepPhase::Running
    })
    .await;
    assert_eq!(phase(&waiting), RunPhase::Running);
    let events = env.api();
    let asked = poll(
        Duration::from_secs(30),
        Duration::from_millis(500),
        async || {
            events_about(&events, "PipelineRun", "gated-1", "ApprovalNeeded")
                .await
                .into_iter()
                .next()
                .ok_or_else(|| "no ApprovalNeeded event about gated-1".to_string())
        },
    )
    .await;
    assert_eq!(
        asked.message.as_deref(),
        Some("step gate waits for a decision: deploy model tiny?")
    );

    // viewer may not decide: adding a decision is an update of the run.
    let viewer = env.impersonated_client("viewer", &[]);
    let (code, why) = api_error(decide(&viewer, &ns, "gated-1", "Approve", "viewer", false).await);
    assert_eq!(code, 403, "{why}");
    assert!(why.contains("User \"viewer\" cannot patch"), "{why}");

    // approver may, but only in their own name: the admission policy refuses
    // a decision naming someone else. The policy is applied when the first
    // gate starts waiting, and the API server takes a moment to load it.
    let approver = env.impersonated_client("approver", &[]);
    let refusal = poll(
        Duration::from_secs(30),
        Duration::from_millis(500),
        async || match decide(&approver, &ns, "gated-1", "Approve", "someone-else", true).await {
            Ok(_) => Err("a decision naming another user is still admitted".to_string()),
            Err(kube::Error::Api(status)) => Ok((status.code, status.message)),
            Err(e) => Err(format!("the dry run failed: {e}")),
        },
    )
    .await;
    assert_eq!(refusal.0, 403, "{}", refusal.1);
    assert!(
        refusal.1.contains(
            "a decision added to spec.approvals must name who sends it: set user to approver"
        ),
        "{}",
        refusal.1
    );
    let (code, why) =
        api_error(decide(&approver, &ns, "gated-1", "Approve", "someone-else", false).await);
    assert_eq!(code, 403, "{why}");
    assert!(
        why.contains("ValidatingAdmissionPolicy 'aleph-pipelinerun-approvals'"),
        "{why}"
    );
    let still = runs.get("gated-1").await.expect("get gated-1");
    assert_eq!(step(&still, "gate").phase, StepPhase::Running);
    assert_eq!(step(&still, "deploy").phase, StepPhase::Pending);

    // approver approves in their own name: the gate succeeds with who decided,
    // and deploy runs with that as its argument.
    decide(&approver, &ns, "gated-1", "Approve", "approver", false)
        .await
        .unwrap_or_else(|e| panic!("approver's own decision was refused: {e}"));
    let run = finished_run(&env, "gated-1", TIMEOUT).await;
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);
    let gate = step(&run, "gate");
    assert_eq!(gate.phase, StepPhase::Succeeded, "{gate:#?}");
    assert_eq!(
        gate.outputs.get("decision").map(String::as_str),
        Some("Approve")
    );
    assert_eq!(
        gate.outputs.get("decidedBy").map(String::as_str),
        Some("approver")
    );
    assert!(gate.outputs.contains_key("decidedAt"), "{gate:#?}");
    assert_eq!(step(&run, "deploy").phase, StepPhase::Succeeded);
    let deploy_job: k8s_openapi::api::batch::v1::Job = env
        .api()
        .get("gated-1-deploy-1")
        .await
        .expect("the deploy Job");
    let args = deploy_job
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers[0].args.clone())
        .unwrap_or_default();
    assert_eq!(args, ["approver"]);
    assert_eq!(
        events_about(&events, "PipelineRun", "gated-1", "Approved")
            .await
            .len(),
        1
    );

    // Run 2 is rejected: the gate and the run fail, saying who rejected it,
    // and deploy never runs.
    env.apply_yaml(&run_manifest("gated-2", "gated", "")).await;
    wait_for(&runs, "gated-2", TIMEOUT, |r| {
        r.status.is_some() && step(r, "gate").phase == StepPhase::Running
    })
    .await;
    decide(&approver, &ns, "gated-2", "Reject", "approver", false)
        .await
        .unwrap_or_else(|e| panic!("approver's rejection was refused: {e}"));
    let run = finished_run(&env, "gated-2", TIMEOUT).await;
    assert_eq!(phase(&run), RunPhase::Failed, "{:#?}", run.status);
    let gate = step(&run, "gate");
    assert_eq!(gate.phase, StepPhase::Failed);
    let why = gate.message.clone().unwrap_or_default();
    assert!(
        why.contains("rejected by approver: checked the metrics"),
        "{gate:#?}"
    );
    let condition = find_condition(&run, "Succeeded").unwrap_or_else(|| panic!("no condition"));
    assert!(
        condition
            .message
            .unwrap_or_default()
            .contains("rejected by approver"),
        "{:#?}",
        run.status
    );
    assert_ne!(step(&run, "deploy").phase, StepPhase::Succeeded);
    assert!(
        run_pods(&env, "gated-2").await.is_empty(),
        "a step ran after the rejection"
    );
    env.cleanup().await;
}

/// A webhook receiver on the real node (python's http.server in the
/// model-cache image): it prints each body it is posted on one line after
/// `HOOK `, and answers GETs (its readiness probe).
fn receiver_pod() -> String {
    let script = r#"
import http.server, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        print("HOOK " + body.decode(), flush=True)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("", 8080), Hook).serve_forever()
"#;
    let script = serde_json::to_string(script).unwrap_or_default();
    real_node::restricted_pod(
        "receiver",
        "  labels: { app: receiver }\n",
        &format!(
            "  - name: main\n    image: aleph.local/model-cache:dev\n    imagePullPolicy: Never\n    command: [/usr/bin/python3, -c, {script}]\n"
        ),
        &real_node::readiness_probe_http(8080),
    )
}

/// The bodies the receiver was posted, parsed.
async fn received(namespace: &str) -> Vec<Value> {
    let logs = kubectl(["logs", "-n", namespace, "receiver"])
        .await
        .expect_success();
    logs.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("HOOK "))
        .map(|body| serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
        .collect()
}

#[tokio::test]
async fn notifications_reach_a_webhook_receiver_in_the_cluster_and_failed_deliveries_say_why() {
    let env = pinned_env().await;
    let ns = env.namespace().to_string();
    let pods = real_node::run_pods(&env.client(), &ns, &[receiver_pod()]).await;
    let ip = pod_ip(&pods["receiver"]);
    // Port 9 of the receiver's pod: nothing listens there.
    env.apply_yaml(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{ name: hook }}
stringData: {{ url: "http://{ip}:8080/hook" }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: dead-hook }}
stringData: {{ url: "http://{ip}:9/hook" }}
---
apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: {{ name: told }}
spec:
  params: [{{ name: model, default: tiny }}]
  notifications:
    - on: [Succeeded, Failed]
      webhook: {{ name: hook, key: url }}
    - on: [Succeeded]
      webhook: {{ name: dead-hook, key: url }}
  steps:
    - name: announce
      notify: {{ webhook: {{ name: hook, key: url }}, message: "training of $(params.model) starts" }}
"#
    ))
    .await;
    env.apply_yaml(&run_manifest("told-1", "told", "")).await;
    let run = finished_run(&env, "told-1", TIMEOUT).await;
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);
    let announce = step(&run, "announce");
    assert_eq!(announce.phase, StepPhase::Succeeded, "{announce:#?}");
    assert_eq!(announce.attempts, 1);

    // The run's notifications: the live webhook got it once; the dead one
    // is retried with backoff, and its status says why without the URL
    // (which is a secret).
    let runs: Api<PipelineRun> = env.api();
    let run = wait_for(&runs, "told-1", TIMEOUT, |r| {
        let notes = &r
            .status
            .as_ref()
            .map(|s| s.notifications.clone())
            .unwrap_or_default();
        notes.len() == 2 && notes[0].phase == DeliveryPhase::Delivered && notes[1].attempts >= 2
    })
    .await;
    let notes = run.status.clone().unwrap_or_default().notifications;
    assert_eq!(notes[0].name, "Succeeded/0");
    assert_eq!(notes[0].attempts, 1, "{notes:#?}");
    assert_eq!(notes[1].name, "Succeeded/1");
    assert_eq!(notes[1].phase, DeliveryPhase::Pending, "{notes:#?}");
    assert!(notes[1].next_attempt_time.is_some(), "{notes:#?}");
    let why = notes[1].message.clone().unwrap_or_default();
    assert!(!why.is_empty(), "{notes:#?}");
    assert!(
        !why.contains(&ip),
        "the message shows the webhook's URL: {why}"
    );

    // What the receiver got: the step's message, then the run's success, each
    // once, as Slack-compatible JSON with the run's coordinates.
    let bodies = received(&ns).await;
    let texts: Vec<(&str, &str)> = bodies
        .iter()
        .map(|b| {
            (
                b["event"].as_str().unwrap_or_default(),
                b["text"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(texts.len(), 2, "{bodies:#?}");
    assert_eq!(
        texts[0],
        ("step/announce", "training of tiny starts"),
        "{bodies:#?}"
    );
    assert_eq!(texts[1].0, "Succeeded", "{bodies:#?}");
    assert!(texts[1].1.contains("told-1"), "{bodies:#?}");
    for body in &bodies {
        assert_eq!(body["pipelineRun"], "told-1");
        assert_eq!(body["pipeline"], "told");
        assert_eq!(body["namespace"], ns.as_str());
    }
    env.cleanup().await;
}
