//! One reconcile of one PipelineRun, as the run's lifecycle (`run.rs`) and
//! the step drivers (`steps/`) share it: the run as last read, the events
//! to publish, when to look again, the finalizer, and the run's pods.

use std::time::Duration;

use aleph_crds::keys::FINALIZER;
use aleph_crds::pipeline::PipelineRun;
use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::context::Context;
use crate::error::Result;

/// The longest a running run goes without a look, events or not.
const RESYNC: Duration = Duration::from_secs(300);

/// A time difference as a duration, nothing when negative.
pub(super) fn to_std(delta: TimeDelta) -> Duration {
    delta.to_std().unwrap_or(Duration::ZERO)
}

/// One reconcile of one run. The step drivers (`steps`) start, observe and
/// stop steps through it: they read the run, raise events and ask for the
/// next look, and leave the step statuses to this module.
pub(super) struct Pass<'a> {
    pub(super) ctx: &'a Context,
    pub(super) api: Api<PipelineRun>,
    /// The run as last read or written.
    pub(super) run: PipelineRun,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) now: DateTime<Utc>,
    pub(super) events: Vec<(EventType, &'static str, String)>,
    recheck: Option<Duration>,
    /// The run's pods, listed once per pass when a Job step needs them.
    pub(super) pods: Option<Vec<Pod>>,
}

impl Pass<'_> {
    pub(super) fn recheck_in(&mut self, after: Duration) {
        self.recheck = Some(self.recheck.map_or(after, |r| r.min(after)));
    }

    pub(super) fn recheck_at(&mut self, time: DateTime<Utc>) {
        // A little after, so that the time has surely come.
        self.recheck_in(to_std(time - self.now) + Duration::from_millis(200));
    }

    pub(super) fn action(&self) -> Action {
        Action::requeue(self.recheck.map_or(RESYNC, |r| r.min(RESYNC)))
    }

    pub(super) fn event(
        &mut self,
        type_: EventType,
        reason: &'static str,
        note: impl Into<String>,
    ) {
        self.events.push((type_, reason, note.into()));
    }

    pub(super) async fn publish(&mut self) {
        for (type_, reason, note) in std::mem::take(&mut self.events) {
            self.ctx.event(&self.run, type_, reason, note).await;
        }
    }

    pub(super) fn has_finalizer(&self) -> bool {
        self.run.finalizers().iter().any(|f| f == FINALIZER)
    }

    /// Adds or removes the finalizer, with the resourceVersion read as a precondition.
    pub(super) async fn set_finalizer(&mut self, present: bool) -> Result<()> {
        if let Some(run) = crate::apply::set_finalizer(&self.api, &self.run, present).await? {
            self.run = run;
        }
        Ok(())
    }
    /// A pass over `run` at this moment, nothing yet to publish.
    pub(super) fn new<'a>(
        ctx: &'a Context,
        api: Api<PipelineRun>,
        run: PipelineRun,
        namespace: &str,
        name: &str,
        uid: String,
    ) -> Pass<'a> {
        Pass {
            ctx,
            api,
            run,
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid,
            now: Utc::now(),
            events: Vec::new(),
            recheck: None,
            pods: None,
        }
    }
}
