//! The run's `spec.notifications`: a delivery is queued in
//! `status.notifications` when its event happens (the run succeeds, fails,
//! or an approval step starts waiting), then posted, and retried with
//! backoff (`notify::next_attempt`) until the webhook takes it or
//! `notify::MAX_ATTEMPTS` were made. Each delivery is tried once per event:
//! a pass that dies after the POST but before the status write posts it
//! again (at least once, never silently dropped).

use aleph_crds::conditions::SUCCEEDED;
use aleph_crds::pipeline::PipelineRunStatus;
use aleph_crds::pipeline_data::{DeliveryPhase, NotificationStatus, RunEvent};
use kube::runtime::events::EventType;

use super::Pass;
use crate::conditions::{find, parse_time};
use crate::error::Result;
use crate::pipeline::notify;
use crate::pipeline::scheduler::format_time;

/// The event and (for an approval) step a delivery's name tells, and the
/// index of its entry in `spec.notifications`.
fn parse_name(name: &str) -> Option<(&str, Option<&str>, usize)> {
    let mut parts: Vec<&str> = name.split('/').collect();
    let index = parts.pop()?.parse().ok()?;
    match parts.as_slice() {
        [event] => Some((event, None, index)),
        [event, step] => Some((event, Some(step), index)),
        _ => None,
    }
}

impl Pass<'_> {
    /// Queues the deliveries of `event` (of approval step `step`).
    pub(super) fn queue_notifications(
        &mut self,
        status: &mut PipelineRunStatus,
        event: RunEvent,
        step: Option<&str>,
    ) {
        let Some(spec) = status.pipeline_spec.as_ref() else {
            return;
        };
        for (i, n) in spec.notifications.iter().enumerate() {
            if !n.on.contains(&event) {
                continue;
            }
            let name = match step {
                Some(step) => format!("{}/{step}/{i}", event.as_str()),
                None => format!("{}/{i}", event.as_str()),
            };
            if !status.notifications.iter().any(|d| d.name == name) {
                status.notifications.push(NotificationStatus {
                    name,
                    ..NotificationStatus::default()
                });
            }
        }
    }

    fn notification_text(
        &self,
        status: &PipelineRunStatus,
        event: &str,
        step: Option<&str>,
    ) -> String {
        let what = format!(
            "Pipeline run {}/{} (pipeline {})",
            self.namespace, self.name, self.run.spec.pipeline_ref.name
        );
        let outcome = find(&status.conditions, SUCCEEDED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let took = status
            .duration
            .as_deref()
            .map(|d| format!(" in {d}"))
            .unwrap_or_default();
        match (event, step) {
            ("ApprovalNeeded", Some(step)) => format!(
                "{what} waits for approval at step {step}: add {{step: {step}, decision: Approve or Reject, user: <you>}} to its spec.approvals"
            ),
            ("Succeeded", _) => format!("{what} succeeded{took}: {outcome}"),
            _ => format!("{what} did not succeed{took}: {outcome}"),
        }
    }

    /// Posts the deliveries that are due; asks for a look when the next retry is.
    pub(super) async fn deliver_notifications(
        &mut self,
        status: &mut PipelineRunStatus,
    ) -> Result<()> {
        let Some(spec) = status.pipeline_spec.clone() else {
            return Ok(());
        };
        for i in 0..status.notifications.len() {
            let d = &status.notifications[i];
            if d.phase != DeliveryPhase::Pending {
                continue;
            }
            if let Some(at) = parse_time(d.next_attempt_time.as_deref()).filter(|t| *t > self.now) {
                self.recheck_at(at);
                continue;
            }
            let name = d.name.clone();
            let Some((event, step, index)) = parse_name(&name) else {
                continue;
            };
            let Some(target) = spec.notifications.get(index) else {
                let d = &mut status.notifications[i];
                d.phase = DeliveryPhase::Failed;
                d.message = Some("spec.notifications has no such entry".into());
                continue;
            };
            let text = self.notification_text(status, event, step);
            let body = notify::message(
                &text,
                &self.namespace,
                &self.name,
                &self.run.spec.pipeline_ref.name,
                event,
            );
            let outcome =
                match notify::webhook_url(&self.ctx.client, &self.namespace, &target.webhook)
                    .await?
                {
                    Ok(url) => notify::post(&url, &body).await,
                    Err(why) => Err(why),
                };
            let now = self.now;
            let d = &mut status.notifications[i];
            d.attempts += 1;
            d.last_attempt_time = Some(format_time(now));
            match outcome {
                Ok(()) => {
                    d.phase = DeliveryPhase::Delivered;
                    d.next_attempt_time = None;
                    d.message = Some("the webhook took the message".into());
                }
                Err(why) => match notify::next_attempt(d.attempts, now) {
                    Some(next) => {
                        d.next_attempt_time = Some(format_time(next));
                        d.message = Some(format!("{why}; retrying"));
                        self.recheck_at(next);
                    }
                    None => {
                        d.phase = DeliveryPhase::Failed;
                        d.next_attempt_time = None;
                        let attempts = d.attempts;
                        d.message = Some(format!("{why}; gave up after {attempts} attempts"));
                        self.event(
                            EventType::Warning,
                            "NotificationFailed",
                            format!(
                                "notification {name}: {why}; gave up after {attempts} attempts"
                            ),
                        );
                    }
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn delivery_names_tell_their_event_step_and_entry() {
        assert_eq!(parse_name("Succeeded/0"), Some(("Succeeded", None, 0)));
        assert_eq!(
            parse_name("ApprovalNeeded/gate/2"),
            Some(("ApprovalNeeded", Some("gate"), 2))
        );
        assert_eq!(parse_name("Failed/x"), None);
    }
}
