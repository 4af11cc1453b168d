//! Pipeline and PipelineRun: the graph and its scheduler (`dag`), params and
//! substitutions (`params`), cron schedules (`schedule`), the Jobs that run
//! steps (`jobs`) and what became of them (`observe`), all pure; `controller`
//! (Pipelines: validity, schedules) and `run` (PipelineRuns: execution) run
//! them against the cluster.

pub mod controller;
pub mod dag;
pub mod jobs;
pub mod observe;
pub mod params;
pub mod run;
pub mod schedule;
