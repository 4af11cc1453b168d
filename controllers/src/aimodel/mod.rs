//! The AIModel reconciler.

pub mod sagemaker;

use std::sync::Arc;

use aleph_crds::aimodel::AIModel;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};

use crate::context::Context;
use crate::error::Result;
use crate::runner::{Reconcile, Watch};

/// The AIModel controller for what `watch` names, watching what it makes.
pub fn controller(
    client: &kube::Client,
    watch: &Watch<'_>,
) -> Controller<DeserializeGuard<AIModel>> {
    Controller::new(watch.api(client), watch.primary())
}

impl Reconcile for AIModel {
    const CONTROLLER: &'static str = "aimodel";

    async fn reconcile(_obj: Arc<Self>, _ctx: Arc<Context>) -> Result<Action> {
        Ok(Action::await_change())
    }
}
