//! The SageMaker side of an AIModel: its training job and its SageMaker
//! endpoint, and their removal when the model is deleted.

use std::time::Duration;

use aleph_crds::aimodel::{AIModel, AIModelStatus};

use crate::context::Context;
use crate::error::Result;

/// Whether `model` has anything on SageMaker: a training job or SageMaker serving.
pub fn uses_sagemaker(model: &AIModel) -> bool {
    model.spec.training.is_some() || model.spec.sagemaker.is_some()
}

/// Drives the training job and the SageMaker endpoint toward `model`'s spec,
/// writing what it observes (training and endpoint status, the Trained and
/// Serving conditions) into `status`. Returns when to look again.
pub async fn reconcile(
    _model: &AIModel,
    _ctx: &Context,
    _status: &mut AIModelStatus,
) -> Result<Option<Duration>> {
    Ok(None)
}

/// Stops or deletes what `model` has on SageMaker (unless its deletion policy
/// is Retain). `Ok(None)` when nothing is left; `Ok(Some(d))` to look again.
pub async fn cleanup(_model: &AIModel, _ctx: &Context) -> Result<Option<Duration>> {
    Ok(None)
}

/// The model artifact a finished training job produced: the source of serving
/// when the spec names none.
pub fn trained_artifact(status: Option<&AIModelStatus>) -> Option<String> {
    status?.training.as_ref()?.artifact_uri.clone()
}
