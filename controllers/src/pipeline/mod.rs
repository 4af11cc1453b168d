//! Pipeline and PipelineRun, in the stages every kind goes through:
//!
//! - validate: `validate` (a Pipeline's graph and schedule, and its `Ready`
//!   condition), on the graph (`graph`) and the params (`params`);
//! - build: `build` (the Job that runs a container or plugin step, and the
//!   outputs it reports back);
//! - apply: `apply` (Pipelines: schedules, their runs, history) and `run`
//!   (PipelineRuns: execution), which starts, observes and stops each step
//!   through its kind's driver in `steps`;
//! - status: `status` (what became of a step's Job) and `scheduler` (the one
//!   place step statuses change: what to do next, and its record).
//!
//! `retry` (the steps' retry policy) and `schedule` (cron schedules) are
//! pure too; `controller` sets up both controllers.
//!
//! Step templates: `templates` expands the steps that use a StepTemplate or
//! ClusterStepTemplate (pure), for the Pipeline's `Ready` and at a run's
//! start; `steptemplate` reads the templates a pipeline uses and runs the
//! templates' own controllers (their `Ready`).

pub mod apply;
pub mod approvals;
pub mod artifacts;
pub mod build;
pub mod controller;
pub mod graph;
pub mod memo;
pub mod notify;
pub mod params;
mod pass;
pub mod retry;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod status;
pub mod steps;
pub mod steptemplate;
pub mod template_index;
pub mod templates;
#[cfg(test)]
mod test_support;
pub mod validate;
pub mod workspaces;
