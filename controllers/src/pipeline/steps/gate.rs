//! The drivers of the steps that run no workload: an approval gate waits for
//! a decision in the run's `spec.approvals`; a notify step posts a message to
//! a webhook.

use std::collections::BTreeMap;

use aleph_crds::pipeline::{PipelineStep, StepStatus};
use aleph_crds::pipeline_data::{Approval, ApprovalAction, Decision, NotifyAction};
use chrono::{DateTime, TimeDelta, Utc};
use kube::runtime::events::EventType;

use super::{Observed, StartOutcome, StepDriver, Values, attempt_started};
use crate::error::Result;
use crate::pipeline::notify;
use crate::pipeline::params;
use crate::pipeline::pass::{Pass, to_std};
use crate::pipeline::scheduler::format_time;

/// The outputs of a decided gate.
pub const DECISION_OUTPUT: &str = "decision";
/// Who decided.
pub const DECIDED_BY_OUTPUT: &str = "decidedBy";
/// When the operator saw the decision (RFC 3339).
pub const DECIDED_AT_OUTPUT: &str = "decidedAt";

/// The decision that counts for `step`: the latest in `approvals`.
pub fn decision_for<'a>(approvals: &'a [Approval], step: &str) -> Option<&'a Approval> {
    approvals.iter().rev().find(|a| a.step == step)
}

/// What a gate is at `now`: decided, timed out, or still waiting until its deadline.
pub(super) fn gate_state(
    step: &str,
    approvals: &[Approval],
    started: DateTime<Utc>,
    timeout_seconds: i64,
    now: DateTime<Utc>,
) -> Observed {
    if let Some(a) = decision_for(approvals, step) {
        let why = a
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return match a.decision {
            Decision::Approve => Observed::Succeeded(BTreeMap::from([
                (DECISION_OUTPUT.to_string(), "Approve".to_string()),
                (DECIDED_BY_OUTPUT.to_string(), a.user.clone()),
                (DECIDED_AT_OUTPUT.to_string(), format_time(now)),
            ])),
            Decision::Reject => Observed::Failed(format!("rejected by {}{why}", a.user)),
        };
    }
    let deadline = started + TimeDelta::try_seconds(timeout_seconds).unwrap_or(TimeDelta::MAX);
    if deadline <= now {
        return Observed::Failed(format!(
            "no decision within {timeout_seconds}s: approve or reject sooner, or raise approval.timeoutSeconds"
        ));
    }
    Observed::Running {
        message: Some(format!(
            "waiting for approval until {}: add {{step: {step}, decision: Approve or Reject, user: <you>}} to spec.approvals",
            format_time(deadline)
        )),
        recheck: Some(to_std(deadline - now) + std::time::Duration::from_millis(200)),
    }
}

/// An approval step, in one pass.
pub(in crate::pipeline) struct ApprovalStep<'p, 'c> {
    pub(in crate::pipeline) pass: &'p mut Pass<'c>,
    pub(in crate::pipeline) step: &'p PipelineStep,
    pub(in crate::pipeline) approval: &'p ApprovalAction,
}

impl ApprovalStep<'_, '_> {
    fn state(&self, started: DateTime<Utc>) -> Observed {
        gate_state(
            &self.step.name,
            &self.pass.run.spec.approvals,
            started,
            self.approval.timeout_seconds,
            self.pass.now,
        )
    }
}

impl StepDriver for ApprovalStep<'_, '_> {
    async fn start(&mut self, _attempt: i32, values: &Values<'_>) -> Result<StartOutcome> {
        if let Err(why) = crate::pipeline::approvals::ensure(&self.pass.ctx.client).await {
            return Ok(StartOutcome::Blocked(format!("{why}; retrying")));
        }
        let asked = match &self.approval.message {
            Some(m) => match params::substitute(m, values.params, &values.outputs) {
                Ok(text) => format!(": {text}"),
                Err(e) => return Ok(StartOutcome::Failed(e.to_string())),
            },
            None => String::new(),
        };
        let name = self.step.name.clone();
        self.pass.event(
            EventType::Normal,
            "ApprovalNeeded",
            format!("step {name} waits for a decision{asked}"),
        );
        let observed = self.state(self.pass.now);
        Ok(StartOutcome::Started {
            job_name: None,
            observed,
        })
    }

    async fn observe(&mut self, s: &StepStatus, _values: &Values<'_>) -> Result<Observed> {
        let observed = self.state(attempt_started(s, self.pass.now));
        let name = &self.step.name;
        match (&observed, decision_for(&self.pass.run.spec.approvals, name)) {
            (Observed::Succeeded(_), Some(a)) => {
                let note = format!("step {name} approved by {}", a.user);
                self.pass.event(EventType::Normal, "Approved", note);
            }
            (Observed::Failed(why), Some(_)) => {
                let note = format!("step {name} {why}");
                self.pass.event(EventType::Warning, "Rejected", note);
            }
            _ => {}
        }
        Ok(observed)
    }

    async fn stop(&mut self, _job_name: &str) -> Result<()> {
        Ok(())
    }
}

/// A notify step, in one pass: each attempt is one POST.
pub(in crate::pipeline) struct NotifyStep<'p, 'c> {
    pub(in crate::pipeline) pass: &'p mut Pass<'c>,
    pub(in crate::pipeline) step: &'p PipelineStep,
    pub(in crate::pipeline) notify: &'p NotifyAction,
}

impl StepDriver for NotifyStep<'_, '_> {
    async fn start(&mut self, _attempt: i32, values: &Values<'_>) -> Result<StartOutcome> {
        let text = match params::substitute(&self.notify.message, values.params, &values.outputs) {
            Ok(text) => text,
            Err(e) => return Ok(StartOutcome::Failed(e.to_string())),
        };
        let url = match notify::webhook_url(
            &self.pass.ctx.client,
            &self.pass.namespace,
            &self.notify.webhook,
        )
        .await?
        {
            Ok(url) => url,
            Err(why) => return Ok(StartOutcome::Failed(why)),
        };
        let body = notify::message(
            &text,
            &self.pass.namespace,
            &self.pass.name,
            &self.pass.run.spec.pipeline_ref.name,
            &format!("step/{}", self.step.name),
        );
        Ok(match notify::post(&url, &body).await {
            Ok(()) => StartOutcome::Started {
                job_name: None,
                observed: Observed::Succeeded(BTreeMap::from([(
                    "deliveredAt".to_string(),
                    format_time(self.pass.now),
                )])),
            },
            Err(why) => StartOutcome::Failed(why),
        })
    }

    async fn observe(&mut self, _s: &StepStatus, _values: &Values<'_>) -> Result<Observed> {
        // A notify step finishes within the pass that starts it.
        Ok(Observed::Failed(
            "the delivery's outcome was not recorded; trying again".into(),
        ))
    }

    async fn stop(&mut self, _job_name: &str) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(step: &str, decision: Decision, user: &str) -> Approval {
        Approval {
            step: step.into(),
            decision,
            user: user.into(),
            message: Some("looks good".into()),
        }
    }

    #[test]
    fn a_gate_waits_then_times_out() {
        let start = Utc::now();
        let waiting = gate_state("gate", &[], start, 60, start + TimeDelta::seconds(30));
        let Observed::Running { message, recheck } = waiting else {
            panic!("still waiting: {waiting:?}");
        };
        assert!(message.unwrap_or_default().contains("waiting for approval"));
        assert!(recheck.is_some_and(|r| r.as_secs() >= 29 && r.as_secs() <= 31));
        let late = gate_state("gate", &[], start, 60, start + TimeDelta::seconds(61));
        assert!(matches!(late, Observed::Failed(m) if m.starts_with("no decision within 60s")));
    }

    #[test]
    fn the_latest_decision_for_the_step_counts() {
        let now = Utc::now();
        let approvals = vec![
            approval("gate", Decision::Reject, "bob"),
            approval("other", Decision::Approve, "carol"),
            approval("gate", Decision::Approve, "alice"),
        ];
        let Observed::Succeeded(outputs) = gate_state("gate", &approvals, now, 60, now) else {
            panic!("approved");
        };
        assert_eq!(outputs[DECISION_OUTPUT], "Approve");
        assert_eq!(outputs[DECIDED_BY_OUTPUT], "alice");
        assert_eq!(outputs[DECIDED_AT_OUTPUT], format_time(now));
        let rejected = gate_state("gate", &approvals[..2], now, 60, now);
        assert_eq!(
            rejected,
            Observed::Failed("rejected by bob: looks good".into())
        );
        // A decision for another step decides nothing here.
        assert!(matches!(
            gate_state("third", &approvals, now, 60, now),
            Observed::Running { .. }
        ));
    }
}
