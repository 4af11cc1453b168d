//! The Pipeline reconciler: reports whether the step templates the steps use
//! exist and expand, and whether the graph and the schedule are valid
//! (`Ready`), creates a PipelineRun for each due slot of the schedule
//! (named after the slot, so a retry or a second replica finds the run made
//! before), applies the concurrency policy, prunes the oldest finished
//! scheduled runs beyond the history limits, and records the last schedule
//! time and the active runs. Scheduled runs are owned by their Pipeline;
//! runs created by hand are not, and neither count towards the concurrency
//! policy nor are pruned.

use aleph_crds::conditions::READY;
use std::time::Duration;

use aleph_crds::common::ConditionStatus;
use aleph_crds::keys::{SCHEDULED_AT_ANNOTATION, TENANT_LABEL};
use aleph_crds::pipeline::{Pipeline, PipelineRef, PipelineRun, PipelineRunSpec, RunPhase};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::build::label_value;
use super::run::is_finished;
use super::schedule::{self, FinishedRun, SlotDecision};
use super::scheduler;
use super::steptemplate;
use super::validate;
use crate::apply::{ignore_missing, patch_status_if_changed, standard_labels};
use crate::conditions::{NewCondition, find, parse_time, set_condition};
use crate::context::Context;
use crate::error::{Result, uid_of};

/// Whether `run` was made by `pipeline`'s schedule (its controller owner).
fn scheduled_by(run: &PipelineRun, pipeline_uid: &str) -> bool {
    run.owner_references()
        .iter()
        .any(|o| o.uid == pipeline_uid && o.controller == Some(true))
}

fn phase(run: &PipelineRun) -> RunPhase {
    run.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// The run of a slot.
fn scheduled_run(pipeline: &Pipeline, name: &str, slot: DateTime<Utc>) -> Option<PipelineRun> {
    let schedule = pipeline.spec.schedule.as_ref()?;
    let pipeline_name = pipeline.name_any();
    let mut labels = standard_labels("pipeline", &label_value(&pipeline_name));
    if let Some(tenant) = pipeline.labels().get(TENANT_LABEL) {
        labels.insert(TENANT_LABEL.to_string(), tenant.clone());
    }
    Some(PipelineRun {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: pipeline.namespace(),
            labels: Some(labels),
            annotations: Some(
                [(
                    SCHEDULED_AT_ANNOTATION.to_string(),
                    scheduler::format_time(slot),
                )]
                .into_iter()
                .collect(),
            ),
            owner_references: Some(vec![pipeline.controller_owner_ref(&())?]),
            ..ObjectMeta::default()
        },
        spec: PipelineRunSpec {
            pipeline_ref: PipelineRef {
                name: pipeline_name,
            },
            params: schedule.params.clone(),
            cancel: false,
            resume_from: None,
            // The pipeline's default claim templates bind its workspaces.
            workspaces: Vec::new(),
            approvals: Vec::new(),
        },
        status: None,
    })
}

/// Reconciles one Pipeline.
pub async fn reconcile_pipeline(name: &str, namespace: &str, ctx: &Context) -> Result<Action> {
    let api: Api<Pipeline> = Api::namespaced(ctx.client.clone(), namespace);
    // Fresh: a stale lastScheduleTime would schedule a slot twice.
    let Some(pipeline) = api.get_opt(name).await? else {
        return Ok(Action::await_change());
    };
    if pipeline.metadata.deletion_timestamp.is_some() {
        return super::memo::finish_deletion(&api, &pipeline, namespace, ctx).await;
    }
    super::memo::ensure_finalizer(&api, &pipeline).await?;
    let uid = uid_of(&pipeline)?;
    let now = Utc::now();
    let generation = pipeline.metadata.generation;
    let spec = &pipeline.spec;
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.step_count = i32::try_from(spec.steps.len() + spec.finally.len()).unwrap_or(i32::MAX);
    let mut events: Vec<(EventType, &'static str, String)> = Vec::new();
    let mut requeue: Option<Duration> = None;

    // Validity: the step templates the steps use, then the graph they make.
    let expanded = steptemplate::expand(&ctx.client, namespace, spec).await?;
    let (graph, parsed) = validate::validate_pipeline(expanded.as_ref().unwrap_or(spec));
    let ready = match &expanded {
        Ok(expanded) => validate::ready_condition(expanded, &graph, parsed.as_ref()),
        Err(e) => NewCondition::no(READY, e.reason(), e.to_string()),
    };
    let was = find(&status.conditions, READY).map(|c| (c.status, c.reason.clone()));
    if ready.status == ConditionStatus::False
        && was.as_ref() != Some(&(ConditionStatus::False, ready.reason.clone()))
    {
        let reason: &'static str = match (&expanded, &graph) {
            (Err(e), _) => e.reason(),
            (Ok(_), Err(_)) => "InvalidGraph",
            (Ok(_), Ok(_)) => "InvalidSchedule",
        };
        events.push((EventType::Warning, reason, ready.message.clone()));
    }
    set_condition(&mut status.conditions, ready, generation);

    // The pipeline's runs.
    let runs_api: Api<PipelineRun> = Api::namespaced(ctx.client.clone(), namespace);
    let runs: Vec<PipelineRun> = runs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.spec.pipeline_ref.name == name)
        .collect();
    let mut newest = runs
        .iter()
        .max_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
                .then_with(|| a.name_any().cmp(&b.name_any()))
        })
        .map(|r| r.name_any());
    let scheduled: Vec<&PipelineRun> = runs.iter().filter(|r| scheduled_by(r, &uid)).collect();
    let mut active: Vec<String> = scheduled
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none() && !is_finished(phase(r)))
        .map(|r| r.name_any())
        .collect();
    active.sort();

    // The schedule.
    if let (Some(schedule_spec), Some(Ok(schedule)), Ok(_), Ok(_)) =
        (&spec.schedule, &parsed, &graph, &expanded)
        && !schedule_spec.suspend
    {
        let created = pipeline
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
            .unwrap_or(now);
        let last = parse_time(status.last_schedule_time.as_deref());
        let due = schedule.due(last, created, now);
        if let Some(slot) = due.missed {
            let run_name = schedule::run_name(name, slot);
            let slot_text = scheduler::format_time(slot);
            match schedule::decide_slot(schedule_spec.concurrency_policy, &active) {
                SlotDecision::Skip { active: going } => {
                    events.push((
                        EventType::Normal,
                        "RunSkipped",
                        format!(
                            "skipped the run of {slot_text}: {} still running and concurrencyPolicy is Forbid",
                            going.join(", ")
                        ),
                    ));
                }
                decision => {
                    if let SlotDecision::CancelThenCreate { active: going } = &decision {
                        for old in going {
                            runs_api
                                .patch(
                                    old,
                                    &PatchParams::default(),
                                    &Patch::Merge(&json!({"spec": {"cancel": true}})),
                                )
                                .await?;
                        }
                        events.push((
                            EventType::Normal,
                            "RunReplaced",
                            format!(
                                "cancelled {} for the run of {slot_text} (concurrencyPolicy Replace)",
                                going.join(", ")
                            ),
                        ));
                    }
                    if let Some(run) = scheduled_run(&pipeline, &run_name, slot) {
                        match runs_api.create(&PostParams::default(), &run).await {
                            Ok(_) => events.push((
                                EventType::Normal,
                                "RunCreated",
                                format!("created run {run_name} for {slot_text}"),
                            )),
                            Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => {}
                            Err(e) => return Err(e.into()),
                        }
                        if !active.contains(&run_name) {
                            active.push(run_name.clone());
                            active.sort();
                        }
                        newest = Some(run_name);
                    }
                }
            }
            status.last_schedule_time = Some(slot_text);
        }
        if let Some(next) = due.next {
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            requeue = Some(wait + Duration::from_millis(200));
        }
    }
    status.active = active;
    status.last_run = newest;

    // History: the oldest finished scheduled runs beyond the limits.
    if let Some(schedule_spec) = &spec.schedule {
        let finished: Vec<FinishedRun> = scheduled
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none() && is_finished(phase(r)))
            .map(|r| FinishedRun {
                name: r.name_any(),
                phase: phase(r),
                completion_time: parse_time(
                    r.status.as_ref().and_then(|s| s.completion_time.as_deref()),
                )
                .unwrap_or(now),
            })
            .collect();
        for old in schedule::runs_to_prune(
            &finished,
            schedule_spec.successful_runs_history_limit,
            schedule_spec.failed_runs_history_limit,
        ) {
            if ignore_missing(runs_api.delete(&old, &DeleteParams::background()).await)?.is_some() {
                tracing::info!(run = old, "pruned a finished scheduled run");
            }
        }
    }

    patch_status_if_changed(&api, &pipeline, pipeline.status.as_ref(), &status).await?;
    for (type_, reason, note) in events {
        ctx.event(&pipeline, type_, reason, note).await;
    }
    Ok(match requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use aleph_crds::keys::PIPELINE_LABEL;
    use aleph_crds::pipeline::PipelineStatus;

    fn pipeline() -> Pipeline {
        serde_saphyr::from_str(
            r#"
apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata:
  name: nightly
  namespace: team-a
  uid: 11111111-2222-3333-4444-555555555555
  labels: {aleph.dev/tenant: acme}
spec:
  steps:
    - name: a
      container: {image: busybox}
  schedule:
    cron: "0 2 * * *"
    params:
      - {name: date, value: today}
"#,
        )
        .unwrap()
    }

    #[test]
    fn a_scheduled_run_is_owned_labelled_and_named_after_its_slot() {
        let p = pipeline();
        let slot = parse_time(Some("2026-01-02T02:00:00Z")).unwrap();
        let name = schedule::run_name("nightly", slot);
        let run = scheduled_run(&p, &name, slot).unwrap();
        assert_eq!(run.metadata.name.as_deref(), Some("nightly-202601020200"));
        assert_eq!(run.metadata.namespace.as_deref(), Some("team-a"));
        let labels = run.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[PIPELINE_LABEL], "nightly");
        assert_eq!(labels[TENANT_LABEL], "acme");
        assert_eq!(
            run.metadata.annotations.as_ref().unwrap()[SCHEDULED_AT_ANNOTATION],
            "2026-01-02T02:00:00Z"
        );
        assert!(scheduled_by(&run, "11111111-2222-3333-4444-555555555555"));
        assert!(!scheduled_by(&run, "another"));
        assert_eq!(run.spec.pipeline_ref.name, "nightly");
        assert_eq!(run.spec.params[0].value, "today");
        assert!(!run.spec.cancel);
    }

    #[test]
    fn a_pipeline_without_a_schedule_makes_no_scheduled_run() {
        let mut p = pipeline();
        p.spec.schedule = None;
        assert!(scheduled_run(&p, "x", Utc::now()).is_none());
    }

    #[test]
    fn the_status_keeps_its_shape() {
        // The active list is omitted when empty, so a pipeline without a
        // schedule writes nothing new.
        let status = PipelineStatus::default();
        let json = serde_json::to_value(&status).unwrap();
        assert!(json.get("active").is_none());
    }
}
