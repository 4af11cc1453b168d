//! Pipeline and PipelineRun: the graph and its scheduler (`dag`), params and
//! substitutions (`params`), cron schedules (`schedule`) and the Jobs that run
//! steps (`jobs`), all pure; `controller` runs them against the cluster.

pub mod controller;
pub mod dag;
pub mod jobs;
pub mod params;
pub mod schedule;
