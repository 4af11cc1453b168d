//! Builders of pipeline specs and step statuses for the pipeline's tests.

use std::collections::BTreeMap;

use aleph_crds::pipeline::{
    ContainerAction, ParamSpec, PipelineSpec, PipelineStep, StepPhase, StepStatus,
};

pub fn step(name: &str, deps: &[&str]) -> PipelineStep {
    PipelineStep {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        when: None,
        retries: None,
        timeout_seconds: None,
        container: Some(ContainerAction {
            image: "busybox".into(),
            command: vec![],
            args: vec![],
            env: vec![],
            resources: Default::default(),
        }),
        plugin: None,
        training: None,
        rollout: None,
        pod_annotations: BTreeMap::new(),
        approval: None,
        notify: None,
        template: None,
        for_each: None,
        workspaces: vec![],
        artifacts: None,
        memoize: false,
    }
}

pub fn spec(steps: Vec<PipelineStep>, finally: Vec<PipelineStep>) -> PipelineSpec {
    PipelineSpec {
        params: vec![],
        steps,
        finally,
        parallelism: None,
        deadline_seconds: None,
        schedule: None,
        ttl_seconds_after_finished: None,
        workspaces: vec![],
        notifications: vec![],
        artifact_store: None,
        service_account_name: None,
    }
}

/// A spec of steps given as (name, dependencies), and finally steps by name.
pub fn dag(steps: &[(&str, &[&str])], finally: &[&str]) -> PipelineSpec {
    spec(
        steps.iter().map(|(name, deps)| step(name, deps)).collect(),
        finally.iter().map(|name| step(name, &[])).collect(),
    )
}

pub fn param(name: &str) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        type_: Default::default(),
        default: Some("x".into()),
        values: vec![],
        description: None,
    }
}

/// The status of step `name`, in `phase` and nothing else said.
pub fn step_status(name: &str, phase: StepPhase) -> StepStatus {
    StepStatus {
        name: name.into(),
        phase,
        ..StepStatus::default()
    }
}
