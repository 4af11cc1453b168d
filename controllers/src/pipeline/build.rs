//! The build stage of PipelineRuns: the Job that runs one attempt of a
//! container or plugin step, built (pure, no client) from the run, the step
//! and its plugin. The builder and its pod parts live in
//! [`jobs`](super::jobs), with the names and labels it gives Jobs and the
//! protocol by which a step reports its outputs; these are its entry points.
//! Training and rollout steps build nothing: their drivers in
//! [`steps`](super::steps) call SageMaker or patch an AIModel.

pub use super::jobs::{JobError, build_step_job, job_name, step_labels};
