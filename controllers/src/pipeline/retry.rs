//! The retry policy of a step: how many attempts it may make and how long
//! the scheduler waits before each retry. Pure functions, no client.

use aleph_crds::pipeline::{PipelineStep, RetryPolicy};
use chrono::TimeDelta;

/// The delay before the retry that follows failed attempt `failed_attempt`
/// (from 1): `initialDelaySeconds * factor^(failed_attempt-1)`, at most
/// `maxDelaySeconds`.
pub fn backoff(policy: &RetryPolicy, failed_attempt: i32) -> TimeDelta {
    let initial = policy.initial_delay_seconds.max(0);
    let max = policy.max_delay_seconds.max(0);
    let factor = i64::from(policy.factor.max(1));
    let exponent = u32::try_from(failed_attempt.saturating_sub(1).clamp(0, 64)).unwrap_or(0);
    let seconds = factor
        .checked_pow(exponent)
        .and_then(|f| initial.checked_mul(f))
        .map_or(max, |d| d.min(max));
    TimeDelta::try_seconds(seconds).unwrap_or(TimeDelta::MAX)
}

/// The retries of a notify step that sets none: a webhook that is down for
/// a moment should not lose the message.
fn notify_default() -> RetryPolicy {
    RetryPolicy {
        limit: 3,
        initial_delay_seconds: 5,
        factor: 2,
        max_delay_seconds: 60,
    }
}

/// The step's retry policy: its own, or a notify step's default.
fn policy(step: &PipelineStep) -> Option<std::borrow::Cow<'_, RetryPolicy>> {
    match (&step.retries, &step.notify) {
        (Some(r), _) => Some(std::borrow::Cow::Borrowed(r)),
        (None, Some(_)) => Some(std::borrow::Cow::Owned(notify_default())),
        (None, None) => None,
    }
}

/// Attempts a step may make: 1 plus its retries.
pub fn max_attempts(step: &PipelineStep) -> i32 {
    policy(step).map_or(0, |r| r.limit.clamp(0, 1000)) + 1
}

/// The delay before the retry that follows failed attempt `failed_attempt`
/// of `step` (none without a policy).
pub fn delay(step: &PipelineStep, failed_attempt: i32) -> TimeDelta {
    policy(step).map_or(TimeDelta::zero(), |r| backoff(&r, failed_attempt))
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
