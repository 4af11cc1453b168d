//! The condition types Aleph's kinds report in `status.conditions`: one name
//! for each, shared by the operator that writes them and whatever reads them.

/// Every kind but PipelineRun: the object does what its spec asks. A failed
/// reconcile shows here (`False`, with the error's reason and message).
pub const READY: &str = "Ready";
/// AIModel, Plugin: work toward the spec is under way (a rollout, a download).
pub const PROGRESSING: &str = "Progressing";
/// AIModel, Plugin, Tenant: something is wrong, though the object may still serve.
pub const DEGRADED: &str = "Degraded";
/// PipelineRun: the run's outcome (`Unknown` while it runs).
pub const SUCCEEDED: &str = "Succeeded";
/// AIModel with SageMaker serving: the endpoint's state.
pub const SERVING: &str = "Serving";
/// AIModel with SageMaker training: the training job's outcome.
pub const TRAINED: &str = "Trained";
