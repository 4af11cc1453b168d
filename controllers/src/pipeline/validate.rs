//! The validate stage of Pipelines and PipelineRuns: whether a Pipeline's
//! spec can run. The graph is checked by [`graph::validate`] (which also
//! checks every `$(params.X)` and `$(steps.S.outputs.K)` reference), a run's
//! params by [`params::resolve_params`](super::params::resolve_params) and
//! the schedule by [`Schedule::parse`]; [`validate_pipeline`] runs a
//! Pipeline's checks and [`ready_condition`] says what they mean for its
//! `Ready` condition. A run is checked again when it starts (see
//! [`run`](super::run)), against the spec it snapshots.

use aleph_crds::conditions::READY;
use aleph_crds::pipeline::PipelineSpec;

use super::graph::{self, Graph, GraphError};
use super::schedule::{Schedule, ScheduleError};
use crate::conditions::NewCondition;

/// A Pipeline's graph, and its schedule when it has one, each valid or not.
pub fn validate_pipeline(
    spec: &PipelineSpec,
) -> (
    Result<Graph, GraphError>,
    Option<Result<Schedule, ScheduleError>>,
) {
    let graph = graph::validate(spec);
    let parsed = spec
        .schedule
        .as_ref()
        .map(|s| Schedule::parse(&s.cron, s.time_zone.as_deref()));
    (graph, parsed)
}

/// The Pipeline's `Ready` condition: the first error, or what it runs and when.
pub fn ready_condition(
    spec: &PipelineSpec,
    graph: &Result<Graph, GraphError>,
    parsed: Option<&Result<Schedule, ScheduleError>>,
) -> NewCondition {
    match (graph, parsed) {
        (Err(e), _) => NewCondition::no(READY, e.reason(), e.to_string()),
        (_, Some(Err(e))) => NewCondition::no(READY, e.reason(), e.to_string()),
        (Ok(g), Some(Ok(_))) => {
            let s = spec.schedule.as_ref();
            let cron = s.map(|s| s.cron.as_str()).unwrap_or_default();
            let zone = s.and_then(|s| s.time_zone.as_deref()).unwrap_or("UTC");
            let suspended = if s.is_some_and(|s| s.suspend) {
                " (suspended)"
            } else {
                ""
            };
            NewCondition::yes(
                READY,
                "Valid",
                format!(
                    "{} steps; runs on schedule {cron:?} in {zone}{suspended}",
                    g.len()
                ),
            )
        }
        (Ok(g), None) => NewCondition::yes(
            READY,
            "Valid",
            format!("{} steps; start it with a PipelineRun", g.len()),
        ),
    }
}
