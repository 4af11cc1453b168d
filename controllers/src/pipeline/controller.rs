//! The Pipeline (schedules) and PipelineRun (execution) reconcilers.

use std::sync::Arc;

use aleph_crds::pipeline::{Pipeline, PipelineRun};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};

use crate::context::Context;
use crate::error::Result;
use crate::runner::{Reconcile, Watch};

/// The Pipeline controller (schedules) for what `watch` names.
pub fn pipeline_controller(
    client: &kube::Client,
    watch: &Watch<'_>,
) -> Controller<DeserializeGuard<Pipeline>> {
    Controller::new(watch.api(client), watch.primary())
}

/// The PipelineRun controller for what `watch` names, watching its Jobs.
pub fn run_controller(
    client: &kube::Client,
    watch: &Watch<'_>,
) -> Controller<DeserializeGuard<PipelineRun>> {
    Controller::new(watch.api(client), watch.primary())
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
