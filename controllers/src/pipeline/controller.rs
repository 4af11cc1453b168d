//! The Pipeline (schedules) and PipelineRun (execution) reconcilers.

use std::sync::Arc;

use aleph_crds::pipeline::{Pipeline, PipelineRun};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use crate::context::Context;
use crate::error::Result;
use crate::runner::{Reconcile, scoped_api};

/// The Pipeline controller (schedules) for one namespace (all when `None`).
pub fn pipeline_controller(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Controller<DeserializeGuard<Pipeline>> {
    Controller::new(
        scoped_api(client, namespace),
        watcher::Config::default().any_semantic(),
    )
}

/// The PipelineRun controller for one namespace (all when `None`), watching its Jobs.
pub fn run_controller(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Controller<DeserializeGuard<PipelineRun>> {
    Controller::new(
        scoped_api(client, namespace),
        watcher::Config::default().any_semantic(),
    )
}

impl Reconcile for Pipeline {
    const CONTROLLER: &'static str = "pipeline";

    async fn reconcile(_obj: Arc<Self>, _ctx: Arc<Context>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

impl Reconcile for PipelineRun {
    const CONTROLLER: &'static str = "pipelinerun";

    async fn reconcile(_obj: Arc<Self>, _ctx: Arc<Context>) -> Result<Action> {
        Ok(Action::await_change())
    }
}
