//! Pipeline and PipelineRun: the graph and its scheduler (`dag`), params and
//! substitutions (`params`), cron schedules (`schedule`) and the Jobs that run
//! steps (`jobs`). Everything here is pure: no client.

pub mod dag;
pub mod jobs;
pub mod params;
pub mod schedule;
