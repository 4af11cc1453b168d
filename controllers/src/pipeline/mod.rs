//! Pipeline and PipelineRun: the graph (`graph`), its scheduler (`scheduler`)
//! and the steps' retry policy (`retry`), params and substitutions (`params`),
//! cron schedules (`schedule`), the Jobs that run steps (`jobs`) and what
//! became of them (`observe`), all pure; `controller` (Pipelines: validity,
//! schedules) and `run` (PipelineRuns: execution) run them against the
//! cluster.

pub mod controller;
pub mod graph;
pub mod jobs;
pub mod observe;
pub mod params;
pub mod retry;
pub mod run;
pub mod schedule;
pub mod scheduler;
#[cfg(test)]
mod test_support;
