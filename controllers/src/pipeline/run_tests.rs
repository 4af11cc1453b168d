use super::*;
use crate::pipeline::test_support::step_status;

#[test]
fn durations_read_like_kubectl_ages() {
    assert_eq!(format_duration(TimeDelta::seconds(0)), "0s");
    assert_eq!(format_duration(TimeDelta::seconds(45)), "45s");
    assert_eq!(format_duration(TimeDelta::seconds(252)), "4m12s");
    assert_eq!(format_duration(TimeDelta::seconds(7384)), "2h3m4s");
    assert_eq!(format_duration(TimeDelta::seconds(273_600)), "3d4h");
    assert_eq!(format_duration(TimeDelta::seconds(-5)), "0s");
}

#[test]
fn the_running_message_names_running_and_retrying_steps() {
    let spec: aleph_crds::pipeline::PipelineSpec = serde_json::from_value(json!({
        "steps": [
            {"name": "a", "container": {"image": "x"}},
            {"name": "b", "container": {"image": "x"}},
            {"name": "c", "container": {"image": "x"}},
        ]
    }))
    .unwrap();
    let graph = graph::validate(&spec).unwrap();
    let steps = vec![
        step_status("a", StepPhase::Succeeded),
        step_status("b", StepPhase::Running),
        step_status("c", StepPhase::Retrying),
    ];
    assert_eq!(
        running_message(&graph, &steps, "1/3"),
        "1/3 steps finished; running: b; waiting to retry: c"
    );
    let mut blocked = steps.clone();
    blocked[1].message = Some("no AWS region; retrying".into());
    assert_eq!(
        running_message(&graph, &blocked, "1/3"),
        "1/3 steps finished; running: b (no AWS region; retrying); waiting to retry: c"
    );
    blocked[1].phase = StepPhase::Pending;
    assert_eq!(
        running_message(&graph, &blocked, "1/3"),
        "1/3 steps finished; cannot start: b (no AWS region; retrying); waiting to retry: c"
    );
}
