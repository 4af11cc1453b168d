//! The scheduler of a Pipeline's runs: pure functions, no client, and the only
//! code that changes the steps' statuses.
//!
//! [`plan`] looks at a run's step statuses against its [`Graph`] (made by
//! [`validate`](super::graph::validate)) and says what to do next as a list of
//! [`Action`]s; the reconciler carries them out (creates or deletes Jobs) and
//! records them with [`apply`], [`record_succeeded`] and [`record_failed`],
//! then calls [`plan`] again on its next pass. `plan` is idempotent: the same
//! statuses give the same actions, so a pass that dies half-way is simply
//! redone.
//!
//! The rules:
//! - a step starts once every dependency has Succeeded (Reused counts too);
//! - a dependency that Failed or was Skipped skips its dependents, transitively;
//! - a `when` that is false skips the step;
//! - running steps, finally steps included, never exceed `parallelism`;
//! - a failed attempt is retried up to `retries.limit` times, the k-th retry
//!   waiting `initialDelaySeconds * factor^(k-1)`, at most `maxDelaySeconds`;
//! - cancel or a passed deadline stops the running steps and skips the rest;
//! - `finally` steps run once every other step has finished, whatever happened,
//!   and are neither stopped nor skipped by cancel or the deadline;
//! - the run finishes once every step has: Cancelled, Timeout, StepFailed
//!   (naming the failed steps) or Succeeded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use aleph_crds::pipeline::{PipelineSpec, RunPhase, StepPhase, StepStatus};
use chrono::{DateTime, SecondsFormat, Utc};

use super::graph::Graph;
use super::params::StepOutputs;
use super::retry::{delay as retry_delay, max_attempts};
use crate::conditions::parse_time;

/// What the scheduler knows of a run.
#[derive(Debug, Clone, Copy)]
pub struct RunState<'a> {
    /// The steps' statuses; a step without one is Pending.
    pub steps: &'a [StepStatus],
    /// The run's resolved params, for `when`.
    pub params: &'a BTreeMap<String, String>,
    /// The user asked to stop the run.
    pub cancelled: bool,
    /// The run's deadline has passed (see [`Graph::deadline`]).
    pub deadline_passed: bool,
}

/// Why a step is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// A dependency failed.
    DependencyFailed {
        /// The dependency.
        dependency: String,
    },
    /// A dependency was skipped.
    DependencySkipped {
        /// The dependency.
        dependency: String,
    },
    /// The step's `when` is false.
    WhenFalse {
        /// The expression.
        when: String,
    },
    /// The step's `when` cannot be evaluated.
    WhenUnavailable {
        /// The expression.
        when: String,
        /// What is missing.
        why: String,
    },
    /// The run was cancelled before the step could start.
    Cancelled,
    /// The run's deadline passed before the step could start.
    DeadlinePassed,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DependencyFailed { dependency } => {
                write!(f, "skipped: dependency {dependency} failed")
            }
            Self::DependencySkipped { dependency } => {
                write!(f, "skipped: dependency {dependency} was skipped")
            }
            Self::WhenFalse { when } => write!(f, "skipped: when {when} is false"),
            Self::WhenUnavailable { when, why } => {
                write!(f, "skipped: when {when} cannot be evaluated: {why}")
            }
            Self::Cancelled => write!(f, "skipped: {}", StopReason::Cancelled.why()),
            Self::DeadlinePassed => write!(f, "skipped: {}", StopReason::DeadlinePassed.why()),
        }
    }
}

/// Why a running step is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The run was cancelled.
    Cancelled,
    /// The run's deadline passed.
    DeadlinePassed,
}

impl StopReason {
    /// What happened to the run, as the steps it stops or skips say it.
    fn why(self) -> &'static str {
        match self {
            Self::Cancelled => "the run was cancelled",
            Self::DeadlinePassed => "the run's deadline passed",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stopped: {}", self.why())
    }
}

/// Why a run finished: the `reason` of its `Succeeded` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Every step succeeded, was reused or was skipped by a condition.
    Succeeded,
    /// A step failed after its retries.
    StepFailed,
    /// The run's deadline passed.
    Timeout,
    /// The user cancelled the run.
    Cancelled,
}

impl FinishReason {
    /// The CamelCase reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "Succeeded",
            Self::StepFailed => "StepFailed",
            Self::Timeout => "Timeout",
            Self::Cancelled => "Cancelled",
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the reconciler does next. Carry each out, then record it with [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the Job of this attempt of a step (`attempt` counts from 1).
    Start {
        /// The step.
        step: String,
        /// The attempt.
        attempt: i32,
    },
    /// An attempt failed and a retry is left: wait until `not_before`, then
    /// a later `plan` says [`Action::Start`] (or [`Action::StartFinally`]).
    Retry {
        /// The step.
        step: String,
        /// The attempt that will run.
        attempt: i32,
        /// The earliest it may start (requeue for then).
        not_before: DateTime<Utc>,
    },
    /// Mark the step Skipped.
    Skip {
        /// The step.
        step: String,
        /// Why.
        why: SkipReason,
    },
    /// Delete the step's Job and mark the step Failed. Said again on every
    /// pass until the step is no longer Running.
    Stop {
        /// The step.
        step: String,
        /// Why.
        why: StopReason,
    },
    /// Create the Job of this attempt of a finally step.
    StartFinally {
        /// The finally step.
        step: String,
        /// The attempt.
        attempt: i32,
    },
    /// Every step has finished: set the run's phase and `Succeeded` condition.
    Finish {
        /// Succeeded, Failed or Cancelled.
        phase: RunPhase,
        /// The condition's reason.
        reason: FinishReason,
        /// The condition's message.
        message: String,
    },
}

/// RFC 3339 with seconds and a `Z`, as status fields hold it.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The outputs of the steps that Succeeded or were Reused.
pub fn step_outputs(steps: &[StepStatus]) -> StepOutputs {
    steps
        .iter()
        .rev()
        .filter(|s| matches!(s.phase, StepPhase::Succeeded | StepPhase::Reused))
        .map(|s| (s.name.clone(), s.outputs.clone()))
        .collect()
}

/// Where a step stands, as the scheduler sees it in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    /// Failed, with a retry left (and the run not stopping, for regular steps).
    RetryLeft,
    Retrying,
    Succeeded,
    Failed,
    Skipped,
}

impl State {
    fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped)
    }
}

fn latest_statuses(steps: &[StepStatus]) -> BTreeMap<&str, &StepStatus> {
    // The first entry of a name wins, as in `apply`.
    steps.iter().rev().map(|s| (s.name.as_str(), s)).collect()
}

fn stop_reason(run: &RunState<'_>) -> Option<StopReason> {
    if run.cancelled {
        Some(StopReason::Cancelled)
    } else if run.deadline_passed {
        Some(StopReason::DeadlinePassed)
    } else {
        None
    }
}

/// Each node's state as observed, before this pass changes anything.
fn observe(
    graph: &Graph,
    status: &BTreeMap<&str, &StepStatus>,
    stop: Option<StopReason>,
) -> Vec<State> {
    graph
        .nodes
        .iter()
        .map(|node| {
            let s = status.get(node.step.name.as_str());
            match s.map(|s| s.phase).unwrap_or_default() {
                StepPhase::Pending => State::Waiting,
                StepPhase::Running => State::Running,
                StepPhase::Retrying => State::Retrying,
                StepPhase::Succeeded | StepPhase::Reused => State::Succeeded,
                StepPhase::Skipped => State::Skipped,
                StepPhase::Failed => {
                    let attempts = s.map_or(0, |s| s.attempts);
                    let may_retry = node.finally || stop.is_none();
                    if may_retry && attempts < max_attempts(&node.step) {
                        State::RetryLeft
                    } else {
                        State::Failed
                    }
                }
            }
        })
        .collect()
}

/// Says what to do next in a run; see the module docs for the rules.
pub fn plan(graph: &Graph, run: &RunState<'_>, now: DateTime<Utc>) -> Vec<Action> {
    let status = latest_statuses(run.steps);
    let stop = stop_reason(run);
    let mut state = observe(graph, &status, stop);
    let outputs = step_outputs(run.steps);
    let mut pass = Pass {
        graph,
        run,
        status: &status,
        outputs: &outputs,
        now,
        running: state.iter().filter(|&&s| s == State::Running).count(),
        cap: graph.parallelism.unwrap_or(usize::MAX),
        actions: Vec::new(),
    };

    let regular_count = graph
        .order
        .iter()
        .filter(|&&i| !graph.nodes[i].finally)
        .count();
    let (regular, finally) = graph.order.split_at(regular_count);
    if let Some(why) = stop {
        for &i in regular {
            let name = graph.nodes[i].step.name.clone();
            match state[i] {
                State::Running => pass.actions.push(Action::Stop { step: name, why }),
                State::Waiting | State::Retrying => {
                    state[i] = State::Skipped;
                    pass.actions.push(Action::Skip {
                        step: name,
                        why: match why {
                            StopReason::Cancelled => SkipReason::Cancelled,
                            StopReason::DeadlinePassed => SkipReason::DeadlinePassed,
                        },
                    });
                }
                _ => {}
            }
        }
    } else {
        pass.advance(regular, &mut state);
    }
    if regular.iter().all(|&i| state[i].is_done()) {
        pass.advance(finally, &mut state);
        if state.iter().all(|s| s.is_done()) {
            pass.actions.push(finish(graph, &state, stop, run));
        }
    }
    pass.actions
}

/// One pass of the scheduler over a group of steps.
struct Pass<'p, 'r> {
    graph: &'p Graph,
    run: &'p RunState<'r>,
    status: &'p BTreeMap<&'r str, &'r StepStatus>,
    outputs: &'p StepOutputs,
    now: DateTime<Utc>,
    /// The steps running, those this pass starts included.
    running: usize,
    cap: usize,
    actions: Vec<Action>,
}

impl Pass<'_, '_> {
    /// Moves the steps of `group` (in order) forward as far as this pass can.
    fn advance(&mut self, group: &[usize], state: &mut [State]) {
        for &i in group {
            let node = &self.graph.nodes[i];
            let name = node.step.name.clone();
            let current = self.status.get(name.as_str()).copied();
            let attempts = current.map_or(0, |s| s.attempts.max(0));
            match state[i] {
                State::Waiting => {
                    if let Some(why) = self.blocked(i, state) {
                        state[i] = State::Skipped;
                        self.actions.push(Action::Skip { step: name, why });
                    } else if node.deps.iter().all(|&d| state[d] == State::Succeeded) {
                        self.start(i, attempts + 1, state);
                    }
                }
                State::RetryLeft => {
                    let failed_at = parse_time(current.and_then(|s| s.finish_time.as_deref()))
                        .unwrap_or(self.now);
                    let delay = retry_delay(&node.step, attempts);
                    let not_before = failed_at
                        .checked_add_signed(delay)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    state[i] = State::Retrying;
                    self.actions.push(Action::Retry {
                        step: name,
                        attempt: attempts + 1,
                        not_before,
                    });
                }
                State::Retrying => {
                    let due = parse_time(current.and_then(|s| s.next_attempt_time.as_deref()))
                        .is_none_or(|t| t <= self.now);
                    if due {
                        self.start(i, attempts + 1, state);
                    }
                }
                State::Running | State::Succeeded | State::Failed | State::Skipped => {}
            }
        }
    }

    /// Why a waiting step can never run: a dependency failed or was skipped,
    /// or (once every dependency succeeded) its `when` does not hold.
    fn blocked(&self, i: usize, state: &[State]) -> Option<SkipReason> {
        let node = &self.graph.nodes[i];
        for &d in &node.deps {
            let dependency = self.graph.nodes[d].step.name.clone();
            match state[d] {
                State::Failed => return Some(SkipReason::DependencyFailed { dependency }),
                State::Skipped => return Some(SkipReason::DependencySkipped { dependency }),
                _ => {}
            }
        }
        if !node.deps.iter().all(|&d| state[d] == State::Succeeded) {
            return None;
        }
        let when = node.when.as_ref()?;
        match when.evaluate(self.run.params, self.outputs) {
            Ok(true) => None,
            Ok(false) => Some(SkipReason::WhenFalse {
                when: when.to_string(),
            }),
            Err(why) => Some(SkipReason::WhenUnavailable {
                when: when.to_string(),
                why,
            }),
        }
    }

    /// Starts step `i` if the parallelism cap leaves room.
    fn start(&mut self, i: usize, attempt: i32, state: &mut [State]) {
        if self.running >= self.cap {
            return;
        }
        self.running += 1;
        state[i] = State::Running;
        let step = self.graph.nodes[i].step.name.clone();
        self.actions.push(if self.graph.nodes[i].finally {
            Action::StartFinally { step, attempt }
        } else {
            Action::Start { step, attempt }
        });
    }
}

fn finish(graph: &Graph, state: &[State], stop: Option<StopReason>, run: &RunState<'_>) -> Action {
    let failed: Vec<&str> = graph
        .order
        .iter()
        .filter(|&&i| state[i] == State::Failed)
        .map(|&i| graph.nodes[i].step.name.as_str())
        .collect();
    let mut note = String::new();
    if graph.nodes.iter().any(|n| n.finally) {
        note.push_str("; finally steps ran");
    }
    if !failed.is_empty() {
        note.push_str(&format!("; failed or stopped: {}", failed.join(", ")));
    }
    match stop {
        Some(StopReason::Cancelled) => Action::Finish {
            phase: RunPhase::Cancelled,
            reason: FinishReason::Cancelled,
            message: format!("the run was cancelled{note}"),
        },
        Some(StopReason::DeadlinePassed) => Action::Finish {
            phase: RunPhase::Failed,
            reason: FinishReason::Timeout,
            message: format!(
                "the run did not finish within its deadline of {}s{note}",
                graph.deadline_seconds.unwrap_or_default()
            ),
        },
        None if !failed.is_empty() => {
            let first = failed[0];
            let detail = run
                .steps
                .iter()
                .find(|s| s.name == first)
                .and_then(|s| s.message.as_deref())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let message = if failed.len() == 1 {
                format!("step {first} failed{detail}")
            } else {
                format!("steps {} failed; {first}{detail}", failed.join(", "))
            };
            Action::Finish {
                phase: RunPhase::Failed,
                reason: FinishReason::StepFailed,
                message,
            }
        }
        None => {
            let skipped = state.iter().filter(|&&s| s == State::Skipped).count();
            let message = if skipped == 0 {
                format!("all {} steps succeeded", graph.len())
            } else {
                format!(
                    "{} of {} steps succeeded, {skipped} skipped by their conditions",
                    graph.len() - skipped,
                    graph.len()
                )
            };
            Action::Finish {
                phase: RunPhase::Succeeded,
                reason: FinishReason::Succeeded,
                message,
            }
        }
    }
}

/// The earliest time a waiting retry becomes due, for the reconciler's requeue.
pub fn next_retry_time(steps: &[StepStatus]) -> Option<DateTime<Utc>> {
    steps
        .iter()
        .filter(|s| s.phase == StepPhase::Retrying)
        .filter_map(|s| parse_time(s.next_attempt_time.as_deref()))
        .min()
}

/// Finished steps over all steps, for example `3/7`. A failed step that
/// will be retried is not finished.
pub fn progress(graph: &Graph, run: &RunState<'_>) -> String {
    let status = latest_statuses(run.steps);
    let finished = observe(graph, &status, stop_reason(run))
        .into_iter()
        .filter(|s| s.is_done())
        .count();
    format!("{finished}/{}", graph.len())
}

fn entry<'a>(steps: &'a mut Vec<StepStatus>, name: &str) -> &'a mut StepStatus {
    let position = match steps.iter().position(|s| s.name == name) {
        Some(p) => p,
        None => {
            steps.push(StepStatus {
                name: name.to_string(),
                ..StepStatus::default()
            });
            steps.len() - 1
        }
    };
    &mut steps[position]
}

/// Records an action in the steps' statuses once it was carried out. `Start`
/// leaves `jobName` to the caller (see `build::job_name`); `Finish` changes no
/// step.
pub fn apply(steps: &mut Vec<StepStatus>, action: &Action, now: DateTime<Utc>) {
    let now_text = format_time(now);
    match action {
        Action::Start { step, attempt } | Action::StartFinally { step, attempt } => {
            let s = entry(steps, step);
            s.phase = StepPhase::Running;
            s.attempts = *attempt;
            s.start_time.get_or_insert_with(|| now_text.clone());
            s.attempt_times.push(now_text);
            s.finish_time = None;
            s.next_attempt_time = None;
            s.message = None;
        }
        Action::Retry {
            step,
            attempt,
            not_before,
        } => {
            let s = entry(steps, step);
            s.phase = StepPhase::Retrying;
            let at = format_time(*not_before);
            let failure = s
                .message
                .take()
                .unwrap_or_else(|| "the attempt failed".into());
            s.message = Some(format!("{failure}; attempt {attempt} starts at {at}"));
            s.next_attempt_time = Some(at);
        }
        Action::Skip { step, why } => {
            let s = entry(steps, step);
            s.phase = StepPhase::Skipped;
            s.message = Some(why.to_string());
            s.finish_time = Some(now_text);
            s.next_attempt_time = None;
        }
        Action::Stop { step, why } => {
            let s = entry(steps, step);
            s.phase = StepPhase::Failed;
            s.message = Some(why.to_string());
            s.finish_time = Some(now_text);
        }
        Action::Finish { .. } => {}
    }
}

/// Records that the current attempt of a step succeeded with these outputs.
pub fn record_succeeded(
    steps: &mut Vec<StepStatus>,
    name: &str,
    outputs: BTreeMap<String, String>,
    now: DateTime<Utc>,
) {
    let s = entry(steps, name);
    s.phase = StepPhase::Succeeded;
    s.outputs = outputs;
    s.finish_time = Some(format_time(now));
    s.next_attempt_time = None;
    s.message = None;
}

/// Records that the current attempt of a step failed; [`plan`] then retries
/// it if a retry is left, or treats the step as failed.
pub fn record_failed(steps: &mut Vec<StepStatus>, name: &str, message: &str, now: DateTime<Utc>) {
    let s = entry(steps, name);
    s.phase = StepPhase::Failed;
    s.message = Some(format!("attempt {} failed: {message}", s.attempts.max(1)));
    s.finish_time = Some(format_time(now));
    s.next_attempt_time = None;
}

/// The starting statuses of a run that resumes an earlier one: a step that
/// Succeeded (or was Reused) there, and whose dependencies were all reused
/// too, is Reused with its outputs; every other step, finally steps included,
/// is Pending and runs again. Works on any spec (an invalid graph reuses
/// nothing on its cycles); the result is in spec order.
pub fn resume_plan(spec: &PipelineSpec, previous: &[StepStatus]) -> Vec<StepStatus> {
    let before: BTreeMap<&str, &StepStatus> = previous
        .iter()
        .rev()
        .filter(|s| matches!(s.phase, StepPhase::Succeeded | StepPhase::Reused))
        .map(|s| (s.name.as_str(), s))
        .collect();
    let finally: BTreeSet<&str> = spec.finally.iter().map(|s| s.name.as_str()).collect();
    let mut reused: BTreeSet<&str> = BTreeSet::new();
    loop {
        let grew = spec.steps.iter().fold(false, |grew, step| {
            let name = step.name.as_str();
            let ok = !reused.contains(name)
                && !finally.contains(name)
                && before.contains_key(name)
                && step
                    .depends_on
                    .iter()
                    .all(|d| d != name && reused.contains(d.as_str()));
            if ok {
                reused.insert(name);
            }
            grew || ok
        });
        if !grew {
            break;
        }
    }
    spec.steps
        .iter()
        .chain(spec.finally.iter())
        .map(|step| match before.get(step.name.as_str()) {
            Some(old) if reused.contains(step.name.as_str()) => StepStatus {
                name: step.name.clone(),
                phase: StepPhase::Reused,
                outputs: old.outputs.clone(),
                artifacts: old.artifacts.clone(),
                message: Some("reused: it succeeded in the run named in resumeFrom".into()),
                ..StepStatus::default()
            },
            _ => StepStatus {
                name: step.name.clone(),
                ..StepStatus::default()
            },
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "scheduler_tests.rs"]
mod tests;
