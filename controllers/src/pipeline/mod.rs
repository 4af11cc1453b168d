//! Pipeline and PipelineRun reconcilers.

pub mod dag;
