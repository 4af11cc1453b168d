use super::*;
use aleph_crds::pipeline::{PipelineRun, StepPhase};
use std::collections::BTreeMap;

use crate::pipeline::build::build_step_job;
use crate::pipeline::params::StepOutputs;

const RUN: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: PipelineRun
metadata: { name: r1, namespace: team-a, uid: 0b7c5c3e-1111-2222-3333-444455556666 }
spec: { pipelineRef: { name: p } }
"#;

const STEP: &str = r#"
name: evaluate
dependsOn: [train]
container:
  image: ghcr.io/acme/eval:1
  args: ["--model=/in/model.bin", "--threshold=$(params.t)"]
artifacts:
  inputs:
    - { name: model, from: steps.train.artifacts.model, path: /in/model.bin }
  outputs:
    - { name: report, path: /out/report.json }
    - { name: plot, path: /out/roc.png }
    - { name: log, path: /var/log/eval.txt }
"#;

fn store(prefix: Option<&str>) -> ArtifactStore {
    ArtifactStore {
        bucket: "ml".into(),
        prefix: prefix.map(Into::into),
        credentials_secret: Some(SecretRef { name: "s3".into() }),
        retention: Default::default(),
    }
}

fn step() -> PipelineStep {
    serde_saphyr::from_str(STEP).unwrap()
}

fn trained() -> Vec<StepStatus> {
    vec![StepStatus {
        name: "train".into(),
        phase: StepPhase::Succeeded,
        artifacts: vec![ArtifactRef {
            name: "model".into(),
            uri: "s3://ml/team-a/r1/train/1/model/model.bin".into(),
            sha256: "ab".repeat(32),
            size: 12,
        }],
        ..StepStatus::default()
    }]
}

fn job(threshold: &str) -> Job {
    let run: PipelineRun = serde_saphyr::from_str(RUN).unwrap();
    let params = BTreeMap::from([("t".to_string(), threshold.to_string())]);
    build_step_job(&run, &step(), 1, &params, &StepOutputs::new(), None).unwrap()
}

#[test]
fn inputs_resolve_to_the_producers_artifacts_or_say_which_is_missing() {
    let inputs = resolve_inputs(&step(), &trained()).unwrap();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].path, "/in/model.bin");
    assert_eq!(inputs[0].artifact, trained()[0].artifacts[0]);
    let err = resolve_inputs(&step(), &[]).unwrap_err();
    assert_eq!(err, "input model: step train left no artifact model");
}

#[test]
fn keys_are_under_the_prefix_namespace_and_run_or_the_cache() {
    let s = store(Some("pipelines/"));
    assert_eq!(run_prefix(&s, "team-a", "r1"), "pipelines/team-a/r1/");
    assert_eq!(
        destination(&s, "team-a", "r1", "train", 2, None),
        "pipelines/team-a/r1/train/2/"
    );
    assert_eq!(
        destination(&store(None), "team-a", "r1", "train", 2, Some("k")),
        "team-a/cache/k/"
    );
}

#[test]
fn the_step_runs_between_the_fetch_and_the_upload_with_its_files_mounted() {
    let mut job = job("0.9");
    let inputs = resolve_inputs(&step(), &trained()).unwrap();
    let outputs = step().artifacts.unwrap().outputs;
    attach(
        &mut job,
        &inputs,
        &outputs,
        &store(None),
        "team-a/r1/evaluate/1/",
        "img:1",
    );
    let pod = job.spec.unwrap().template.spec.unwrap();
    let init: Vec<&str> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, [FETCH_CONTAINER, STEP_CONTAINER]);
    let main: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(main, [UPLOAD_CONTAINER]);

    let step = &pod.init_containers.as_ref().unwrap()[1];
    let mounts: Vec<(String, Option<String>, Option<bool>)> = step
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name == VOLUME)
        .map(|m| (m.mount_path.clone(), m.sub_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/in/model.bin".into(), Some("in/0".into()), Some(true)),
            ("/out".into(), Some("out/0".into()), None),
            ("/var/log".into(), Some("out/1".into()), None),
        ]
    );

    let plan = |c: &Container| -> serde_json::Value {
        let env = c.env.as_ref().unwrap();
        let value = env.iter().find(|e| e.name == "ALEPH_ARTIFACTS").unwrap();
        serde_json::from_str(value.value.as_deref().unwrap()).unwrap()
    };
    let fetch = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        plan(fetch),
        json!({
            "dirs": ["/aleph/artifacts/out/0", "/aleph/artifacts/out/1"],
            "inputs": [{
                "name": "model",
                "uri": "s3://ml/team-a/r1/train/1/model/model.bin",
                "sha256": "ab".repeat(32),
                "file": "/aleph/artifacts/in/0",
            }],
        })
    );
    let upload = &pod.containers[0];
    assert_eq!(
        plan(upload)["outputs"][2],
        json!({
            "name": "log",
            "path": "/var/log/eval.txt",
            "file": "/aleph/artifacts/out/1/eval.txt",
            "bucket": "ml",
            "key": "team-a/r1/evaluate/1/log/eval.txt",
        })
    );
    for (c, mode) in [(fetch, "fetch"), (upload, "upload")] {
        assert_eq!(
            c.command
                .as_ref()
                .and_then(|c| c.last())
                .map(String::as_str),
            Some(mode)
        );
        assert_eq!(c.image.as_deref(), Some("img:1"));
        let from = c.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap();
        assert_eq!(from.name, "s3");
    }
    assert!(
        upload.volume_mounts.as_ref().unwrap()[0].read_only == Some(true),
        "the uploader only reads"
    );
}

#[test]
fn a_step_with_inputs_only_stays_the_pods_container() {
    let mut job = job("0.9");
    let inputs = resolve_inputs(&step(), &trained()).unwrap();
    attach(&mut job, &inputs, &[], &store(None), "x/", "img:1");
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers[0].name, STEP_CONTAINER);
    assert_eq!(pod.init_containers.unwrap().len(), 1);
}

#[test]
fn the_memo_key_follows_what_the_step_runs_and_takes_not_the_run() {
    let inputs = resolve_inputs(&step(), &trained()).unwrap();
    let outputs = step().artifacts.unwrap().outputs;
    let key = memo_key(&job("0.9"), &inputs, &outputs);
    assert_eq!(key.len(), 64);
    // The same step in another run (ALEPH_PIPELINERUN differs): same key.
    let mut other = job("0.9");
    if let Some(pod) = other.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        let env = pod.containers[0].env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != "ALEPH_PIPELINERUN");
        env.push(plain_env("ALEPH_PIPELINERUN", "r2"));
    }
    assert_eq!(memo_key(&other, &inputs, &outputs), key);
    // Another argument, another input digest or another output: another key.
    assert_ne!(memo_key(&job("0.8"), &inputs, &outputs), key);
    let mut changed = inputs.clone();
    changed[0].artifact.sha256 = "cd".repeat(32);
    assert_ne!(memo_key(&job("0.9"), &changed, &outputs), key);
    assert_ne!(memo_key(&job("0.9"), &inputs, &outputs[..1]), key);
}

#[test]
fn references_travel_among_outputs_and_come_out_sorted() {
    let refs = vec![
        ArtifactRef {
            name: "report".into(),
            uri: "s3://ml/a".into(),
            sha256: "00".repeat(32),
            size: 3,
        },
        ArtifactRef {
            name: "model".into(),
            uri: "s3://ml/b".into(),
            sha256: "11".repeat(32),
            size: 4,
        },
    ];
    let outputs = BTreeMap::from([("accuracy".to_string(), "0.93".to_string())]);
    let joined = join_refs(&outputs, &refs);
    assert_eq!(joined.len(), 3);
    let (rest, back) = split_refs(joined);
    assert_eq!(rest, outputs);
    assert_eq!(back, [refs[1].clone(), refs[0].clone()]);
}
