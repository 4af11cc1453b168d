//! The AIModel reconciler.

use std::sync::Arc;

use aleph_crds::aimodel::AIModel;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use crate::context::Context;
use crate::error::Result;
use crate::runner::{Reconcile, scoped_api};

/// The AIModel controller for one namespace (all when `None`), watching what it makes.
pub fn controller(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Controller<DeserializeGuard<AIModel>> {
    Controller::new(
        scoped_api(client, namespace),
        watcher::Config::default().any_semantic(),
    )
}

impl Reconcile for AIModel {
    const CONTROLLER: &'static str = "aimodel";

    async fn reconcile(_obj: Arc<Self>, _ctx: Arc<Context>) -> Result<Action> {
        Ok(Action::await_change())
    }
}
