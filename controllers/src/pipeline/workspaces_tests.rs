use super::*;
use crate::pipeline::build::build_step_job;

const PIPELINE: &str = r#"
steps:
  - name: prepare
    container: {image: busybox}
    workspaces: [{name: data}, {name: models, mountPath: /models, readOnly: true}]
workspaces:
  - name: data
    volumeClaimTemplate: {storage: 1Gi}
  - name: models
"#;

fn run(workspaces: &str) -> PipelineRun {
    serde_saphyr::from_str(&format!(
        r#"
apiVersion: aleph.dev/v1alpha1
kind: PipelineRun
metadata: {{name: run-1, namespace: team, uid: u-1}}
spec:
  pipelineRef: {{name: train}}
  workspaces: {workspaces}
"#
    ))
    .unwrap()
}

fn spec() -> PipelineSpec {
    serde_saphyr::from_str(PIPELINE).unwrap()
}

#[test]
fn a_run_binds_each_workspace_or_falls_back_on_the_pipelines_template() {
    let run = run(r#"[{name: models, persistentVolumeClaim: {claimName: shared}}]"#);
    let bound = bind(&run, &spec()).unwrap();
    assert_eq!(bound.len(), 2);
    assert_eq!(bound[0].name, "data");
    assert_eq!(bound[0].claim_name, "run-1-data");
    assert!(bound[0].template.is_some() && !bound[0].keep);
    assert_eq!(bound[1].claim_name, "shared");
    assert!(bound[1].template.is_none());
}

#[test]
fn an_unbound_or_undeclared_workspace_is_refused() {
    assert_eq!(
        bind(&run("[]"), &spec()).unwrap_err(),
        WorkspaceError::Unbound {
            name: "models".into()
        }
    );
    let extra = run(
        r#"[{name: models, persistentVolumeClaim: {claimName: s}}, {name: scratch, volumeClaimTemplate: {storage: 1Gi}}]"#,
    );
    assert!(
        bind(&extra, &spec())
            .unwrap_err()
            .to_string()
            .contains("binds scratch, which pipeline train does not declare")
    );
}

#[test]
fn the_runs_claim_is_owned_unless_kept() {
    let run = run(
        r#"[{name: data, keep: true, volumeClaimTemplate: {storage: 2Gi, accessMode: ReadWriteMany}}, {name: models, persistentVolumeClaim: {claimName: s}}]"#,
    );
    let bound = bind(&run, &spec()).unwrap();
    let template = bound[0].template.clone().unwrap();
    let kept = claim(&run, &bound[0], &template);
    assert!(kept.metadata.owner_references.is_none());
    assert!(made_by(&kept, "u-1") && !made_by(&kept, "u-2"));
    let spec = kept.spec.unwrap();
    assert_eq!(spec.access_modes.unwrap(), vec!["ReadWriteMany"]);
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"].0,
        "2Gi"
    );
    let owned = Bound {
        keep: false,
        ..bound[0].clone()
    };
    let owners = claim(&run, &owned, &template)
        .metadata
        .owner_references
        .unwrap();
    assert_eq!(owners[0].uid, "u-1");
    assert_eq!(owners[0].kind, "PipelineRun");
}

fn status(name: &str, mode: &str, node: Option<&str>) -> WorkspaceStatus {
    WorkspaceStatus {
        name: name.into(),
        claim_name: format!("c-{name}"),
        owned: true,
        access_modes: vec![mode.into()],
        node: node.map(String::from),
    }
}

#[test]
fn a_step_mounts_its_workspaces_and_follows_a_placed_read_write_once_one() {
    let run = run("[]");
    let step = spec().steps[0].clone();
    let mut job = build_step_job(&run, &step, 1, &BTreeMap::new(), &BTreeMap::new(), None).unwrap();
    let workspaces = [
        status("data", "ReadWriteOnce", Some("node-a")),
        status("models", "ReadOnlyMany", Some("node-b")),
    ];
    attach(&mut job, &step, &workspaces);
    let pod = job.spec.unwrap().template.spec.unwrap();
    let volumes = pod.volumes.unwrap();
    let claims: Vec<(String, bool)> = volumes
        .iter()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| (c.claim_name.clone(), c.read_only.unwrap_or(false)))
        .collect();
    assert_eq!(
        claims,
        vec![("c-data".into(), false), ("c-models".into(), true)]
    );
    let mounts = pod.containers[0].volume_mounts.clone().unwrap();
    let paths: Vec<(&str, bool)> = mounts
        .iter()
        .filter(|m| m.name.starts_with("ws-"))
        .map(|m| (m.mount_path.as_str(), m.read_only.unwrap_or(false)))
        .collect();
    assert_eq!(paths, vec![("/workspace/data", false), ("/models", true)]);
    // Only the ReadWriteOnce workspace pins the node.
    let terms = pod
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    let fields = terms[0].match_fields.clone().unwrap();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].key, "metadata.name");
    assert_eq!(fields[0].values.clone().unwrap(), vec!["node-a"]);
}

#[test]
fn read_write_once_workspaces_on_two_nodes_cannot_meet() {
    let mut step = spec().steps[0].clone();
    step.workspaces[1].read_only = false;
    let apart = [
        status("data", "ReadWriteOnce", Some("node-a")),
        status("models", "ReadWriteOnce", Some("node-b")),
    ];
    let why = placement_conflict(&step, &apart).unwrap();
    assert!(why.contains("data on node-a, models on node-b"), "{why}");
    let together = [
        status("data", "ReadWriteOnce", Some("node-a")),
        status("models", "ReadWriteOnce", Some("node-a")),
    ];
    assert_eq!(placement_conflict(&step, &together), None);
}

#[test]
fn the_first_scheduled_pod_places_its_read_write_once_workspaces() {
    let step = spec().steps[0].clone();
    let mut workspaces = vec![
        status("data", "ReadWriteOnce", None),
        status("models", "ReadWriteMany", None),
    ];
    let unscheduled = Pod::default();
    assert!(!record_nodes(
        &step,
        std::slice::from_ref(&unscheduled),
        &mut workspaces
    ));
    let mut scheduled = unscheduled;
    scheduled.spec = Some(k8s_openapi::api::core::v1::PodSpec {
        node_name: Some("node-a".into()),
        ..Default::default()
    });
    assert!(record_nodes(&step, &[scheduled.clone()], &mut workspaces));
    assert_eq!(workspaces[0].node.as_deref(), Some("node-a"));
    assert_eq!(workspaces[1].node, None);
    // Once placed, it stays.
    assert!(!record_nodes(&step, &[scheduled], &mut workspaces));
}
