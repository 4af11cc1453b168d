//! The DAG of a Pipeline and the scheduler of its runs: pure functions, no client.
//!
//! [`validate`] turns a [`PipelineSpec`] into a [`Graph`] or a [`GraphError`]
//! naming the culprits. [`plan`] looks at a run's step statuses and says what
//! to do next as a list of [`Action`]s; the reconciler carries them out (creates
//! or deletes Jobs) and records them with [`apply`], [`record_succeeded`] and
//! [`record_failed`], then calls [`plan`] again on its next pass. `plan` is
//! idempotent: the same statuses give the same actions, so a pass that dies
//! half-way is simply redone.
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

use aleph_crds::pipeline::{
    PipelineSpec, PipelineStep, RetryPolicy, RunPhase, StepPhase, StepStatus,
};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use super::params::{self, Reference, StepOutputs};

/// Why a pipeline's graph cannot run. Every variant names the steps at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Two steps (finally steps included) share a name.
    #[error("two steps are named {name}: give every step, finally steps included, its own name")]
    DuplicateStep {
        /// The name.
        name: String,
    },
    /// A step lists itself in `dependsOn`.
    #[error("step {step} depends on itself: remove {step} from its dependsOn")]
    SelfDependency {
        /// The step.
        step: String,
    },
    /// A `dependsOn` entry names no step.
    #[error("step {step} depends on {missing}, which is not a step of this pipeline")]
    UnknownDependency {
        /// The step.
        step: String,
        /// The name it lists.
        missing: String,
    },
    /// A finally step depends on a regular step: finally steps run after all
    /// of them anyway, whatever happened.
    #[error(
        "finally step {step} depends on step {dependency}: finally steps always run after every step; they may depend only on other finally steps"
    )]
    FinallyDependsOnStep {
        /// The finally step.
        step: String,
        /// The regular step it lists.
        dependency: String,
    },
    /// A regular step depends on a finally step, which only runs at the end.
    #[error(
        "step {step} depends on finally step {dependency}, which only runs after every step has finished"
    )]
    DependsOnFinally {
        /// The step.
        step: String,
        /// The finally step it lists.
        dependency: String,
    },
    /// The steps depend on each other in a circle.
    #[error("the steps {} form a dependency cycle (each depends on the next, the last on the first): break it", .steps.join(" -> "))]
    Cycle {
        /// The steps on the cycle, each depending on the next and the last on the first.
        steps: Vec<String>,
    },
    /// A `when` that does not parse.
    #[error("step {step} has an invalid when {when:?}: {why}")]
    InvalidWhen {
        /// The step.
        step: String,
        /// The expression.
        when: String,
        /// What is wrong.
        why: String,
    },
    /// A `when` uses a param the pipeline does not declare.
    #[error("the when of step {step} uses params.{param}, which the pipeline does not declare")]
    UnknownWhenParam {
        /// The step.
        step: String,
        /// The param.
        param: String,
    },
    /// A `when` uses the outputs of a step that does not run before it.
    #[error(
        "the when of step {step} uses the outputs of {referenced}, which is not a step it depends on (directly or not)"
    )]
    UnknownWhenStep {
        /// The step.
        step: String,
        /// The step whose outputs it reads.
        referenced: String,
    },
    /// A `$(...)` reference or `fromStep` in a step's fields that cannot resolve.
    #[error("step {step} uses {reference}: {why}")]
    UnknownReference {
        /// The step.
        step: String,
        /// The reference, as written.
        reference: String,
        /// Why it cannot resolve.
        why: String,
    },
}

impl GraphError {
    /// The CamelCase reason for conditions: always `InvalidGraph`.
    pub fn reason(&self) -> &'static str {
        "InvalidGraph"
    }
}

/// A `when` comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenOp {
    /// `==`.
    Equals,
    /// `!=`.
    NotEquals,
}

/// A parsed `when`: `params.X == 'v'`, `steps.S.outputs.K != 'v'`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    /// What is compared: a param or a step output.
    pub subject: Reference,
    /// The comparison.
    pub op: WhenOp,
    /// The literal it is compared with.
    pub value: String,
}

impl When {
    /// Parses the grammar of the CRD's pattern:
    /// `(params.NAME|steps.STEP.outputs.KEY) (==|!=) 'VALUE'`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (lhs, rest) = text.split_once(' ').ok_or_else(|| {
            "expected `<subject> == '<value>'` or `<subject> != '<value>'`".to_string()
        })?;
        let (op, quoted) = if let Some(q) = rest.strip_prefix("== ") {
            (WhenOp::Equals, q)
        } else if let Some(q) = rest.strip_prefix("!= ") {
            (WhenOp::NotEquals, q)
        } else {
            return Err("the operator must be == or != with one space on each side".into());
        };
        let value = quoted
            .strip_prefix('\'')
            .and_then(|q| q.strip_suffix('\''))
            .filter(|v| !v.contains('\''))
            .ok_or_else(|| {
                "the value must be one single-quoted string, for example 'true'".to_string()
            })?;
        let subject = params::parse_reference(lhs)
            .ok_or_else(|| format!("{lhs:?} is neither params.NAME nor steps.STEP.outputs.KEY"))?;
        Ok(Self {
            subject,
            op,
            value: value.to_string(),
        })
    }

    /// Evaluates against the run's params and the outputs of finished steps;
    /// `Err` says what is not available.
    pub fn evaluate(
        &self,
        params: &BTreeMap<String, String>,
        outputs: &StepOutputs,
    ) -> Result<bool, String> {
        let actual = match &self.subject {
            Reference::Param(name) => params
                .get(name)
                .ok_or_else(|| format!("params.{name} has no value"))?,
            Reference::StepOutput { step, key } => outputs
                .get(step)
                .and_then(|o| o.get(key))
                .ok_or_else(|| format!("step {step} has no output {key}"))?,
        };
        Ok((actual == &self.value) == (self.op == WhenOp::Equals))
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = match &self.subject {
            Reference::Param(name) => format!("params.{name}"),
            Reference::StepOutput { step, key } => format!("steps.{step}.outputs.{key}"),
        };
        let op = match self.op {
            WhenOp::Equals => "==",
            WhenOp::NotEquals => "!=",
        };
        write!(f, "{subject} {op} '{}'", self.value)
    }
}

#[derive(Debug, Clone)]
struct Node {
    step: PipelineStep,
    finally: bool,
    deps: Vec<usize>,
    when: Option<When>,
}

/// A validated pipeline: steps and finally steps, their dependencies and a
/// topological order. Made by [`validate`].
#[derive(Debug, Clone)]
pub struct Graph {
    nodes: Vec<Node>,
    index: BTreeMap<String, usize>,
    /// Regular steps in a topological order (ties in spec order), then finally steps likewise.
    order: Vec<usize>,
    parallelism: Option<usize>,
    deadline_seconds: Option<i64>,
}

impl Graph {
    /// Steps, finally steps included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no step at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A step (or finally step) by name.
    pub fn step(&self, name: &str) -> Option<&PipelineStep> {
        self.index.get(name).map(|&i| &self.nodes[i].step)
    }

    /// Whether `name` is a finally step.
    pub fn is_finally(&self, name: &str) -> bool {
        self.index.get(name).is_some_and(|&i| self.nodes[i].finally)
    }

    /// Step names in the order they may run: regular steps topologically
    /// (ties in spec order), then finally steps.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|&i| self.nodes[i].step.name.as_str())
    }

    /// The direct dependencies of a step.
    pub fn dependencies(&self, name: &str) -> Vec<&str> {
        self.index
            .get(name)
            .map(|&i| {
                self.nodes[i]
                    .deps
                    .iter()
                    .map(|&d| self.nodes[d].step.name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The most steps running at once, if capped.
    pub fn parallelism(&self) -> Option<usize> {
        self.parallelism
    }

    /// When a run that started at `start` passes its deadline, if it has one.
    pub fn deadline(&self, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.deadline_seconds
            .and_then(TimeDelta::try_seconds)
            .and_then(|d| start.checked_add_signed(d))
    }

    /// Fresh statuses for a run: every step Pending, in spec order (steps,
    /// then finally steps).
    pub fn initial_statuses(&self) -> Vec<StepStatus> {
        self.nodes
            .iter()
            .map(|node| StepStatus {
                name: node.step.name.clone(),
                ..StepStatus::default()
            })
            .collect()
    }
}

/// Checks a pipeline's graph: unique names, known dependencies, no cycle,
/// finally steps depending only on finally steps, `when`s and `$(...)`
/// references that can resolve. The first problem found is returned.
pub fn validate(spec: &PipelineSpec) -> Result<Graph, GraphError> {
    let mut index = BTreeMap::new();
    let all = spec
        .steps
        .iter()
        .map(|s| (s, false))
        .chain(spec.finally.iter().map(|s| (s, true)));
    let mut nodes = Vec::new();
    for (i, (step, finally)) in all.enumerate() {
        if index.insert(step.name.clone(), i).is_some() {
            return Err(GraphError::DuplicateStep {
                name: step.name.clone(),
            });
        }
        nodes.push(Node {
            step: step.clone(),
            finally,
            deps: Vec::new(),
            when: None,
        });
    }
    for i in 0..nodes.len() {
        let mut deps = Vec::new();
        for dep in &nodes[i].step.depends_on {
            let name = &nodes[i].step.name;
            if dep == name {
                return Err(GraphError::SelfDependency { step: name.clone() });
            }
            let Some(&d) = index.get(dep) else {
                return Err(GraphError::UnknownDependency {
                    step: name.clone(),
                    missing: dep.clone(),
                });
            };
            match (nodes[i].finally, nodes[d].finally) {
                (true, false) => {
                    return Err(GraphError::FinallyDependsOnStep {
                        step: name.clone(),
                        dependency: dep.clone(),
                    });
                }
                (false, true) => {
                    return Err(GraphError::DependsOnFinally {
                        step: name.clone(),
                        dependency: dep.clone(),
                    });
                }
                _ => {}
            }
            if !deps.contains(&d) {
                deps.push(d);
            }
        }
        nodes[i].deps = deps;
    }
    if let Some(cycle) = find_cycle(&nodes) {
        return Err(GraphError::Cycle {
            steps: cycle
                .into_iter()
                .map(|i| nodes[i].step.name.clone())
                .collect(),
        });
    }
    let order = topological_order(&nodes);
    let upstream = upstream_sets(&nodes, &order);
    let declared: BTreeSet<&str> = spec.params.iter().map(|p| p.name.as_str()).collect();
    for i in 0..nodes.len() {
        let when = check_references(&nodes, i, &index, &upstream[i], &declared)?;
        nodes[i].when = when;
    }
    Ok(Graph {
        nodes,
        index,
        order,
        parallelism: spec
            .parallelism
            .map(|p| usize::try_from(p.max(1)).unwrap_or(1)),
        deadline_seconds: spec.deadline_seconds,
    })
}

/// A cycle, if any: node indices, each depending on the next and the last on
/// the first, rotated to start at the smallest name so messages are stable.
fn find_cycle(nodes: &[Node]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; nodes.len()];
    for root in 0..nodes.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative depth-first search: (node, next dependency to look at).
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&dep) = nodes[node].deps.get(*next) {
                *next += 1;
                match mark[dep] {
                    Mark::New => {
                        mark[dep] = Mark::OnPath;
                        path.push((dep, 0));
                    }
                    Mark::OnPath => {
                        let start = path.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[start..].iter().map(|&(n, _)| n).collect();
                        let smallest = (0..cycle.len())
                            .min_by(|&a, &b| {
                                nodes[cycle[a]].step.name.cmp(&nodes[cycle[b]].step.name)
                            })
                            .unwrap_or(0);
                        cycle.rotate_left(smallest);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}

/// Kahn's algorithm, ties broken by spec order; regular steps first. The
/// graph is known to be acyclic.
fn topological_order(nodes: &[Node]) -> Vec<usize> {
    let mut order = Vec::with_capacity(nodes.len());
    for finally in [false, true] {
        let members: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].finally == finally)
            .collect();
        let mut waiting: BTreeMap<usize, usize> =
            members.iter().map(|&i| (i, nodes[i].deps.len())).collect();
        let mut ready: BTreeSet<usize> = waiting
            .iter()
            .filter(|&(_, &n)| n == 0)
            .map(|(&i, _)| i)
            .collect();
        while let Some(i) = ready.pop_first() {
            order.push(i);
            waiting.remove(&i);
            for (&j, count) in waiting.iter_mut() {
                if nodes[j].deps.contains(&i) {
                    *count -= 1;
                    if *count == 0 {
                        ready.insert(j);
                    }
                }
            }
        }
    }
    order
}

/// For each node, the steps that have finished before it starts: its
/// ancestors, and for a finally step every regular step as well.
fn upstream_sets(nodes: &[Node], order: &[usize]) -> Vec<BTreeSet<usize>> {
    let mut upstream = vec![BTreeSet::new(); nodes.len()];
    let regular: BTreeSet<usize> = (0..nodes.len()).filter(|&i| !nodes[i].finally).collect();
    for &i in order {
        let mut set = if nodes[i].finally {
            regular.clone()
        } else {
            BTreeSet::new()
        };
        for &d in &nodes[i].deps {
            set.insert(d);
            set.extend(upstream[d].iter().copied());
        }
        upstream[i] = set;
    }
    upstream
}

/// The fields of a step where `$(...)` references are substituted.
fn substituted_fields(step: &PipelineStep) -> Vec<&str> {
    let mut fields = Vec::new();
    if let Some(c) = &step.container {
        fields.push(c.image.as_str());
        fields.extend(c.command.iter().map(String::as_str));
        fields.extend(c.args.iter().map(String::as_str));
        fields.extend(c.env.iter().filter_map(|e| e.value.as_deref()));
    }
    if let Some(p) = &step.plugin {
        fields.extend(p.args.iter().map(String::as_str));
    }
    if let Some(t) = &step.training {
        fields.extend(t.hyperparameters.values().map(String::as_str));
    }
    if let Some(r) = &step.rollout {
        fields.extend(r.source.as_deref());
    }
    if step.container.is_some() || step.plugin.is_some() {
        fields.extend(step.pod_annotations.values().map(String::as_str));
    }
    fields
}

fn check_references(
    nodes: &[Node],
    i: usize,
    index: &BTreeMap<String, usize>,
    upstream: &BTreeSet<usize>,
    declared: &BTreeSet<&str>,
) -> Result<Option<When>, GraphError> {
    let step = &nodes[i].step;
    let runs_before = |name: &str| index.get(name).is_some_and(|j| upstream.contains(j));
    let when = match &step.when {
        None => None,
        Some(text) => {
            let when = When::parse(text).map_err(|why| GraphError::InvalidWhen {
                step: step.name.clone(),
                when: text.clone(),
                why,
            })?;
            match &when.subject {
                Reference::Param(name) if !declared.contains(name.as_str()) => {
                    return Err(GraphError::UnknownWhenParam {
                        step: step.name.clone(),
                        param: name.clone(),
                    });
                }
                Reference::StepOutput { step: other, .. } if !runs_before(other) => {
                    return Err(GraphError::UnknownWhenStep {
                        step: step.name.clone(),
                        referenced: other.clone(),
                    });
                }
                _ => {}
            }
            Some(when)
        }
    };
    for field in substituted_fields(step) {
        let refs = params::references(field).map_err(|e| GraphError::UnknownReference {
            step: step.name.clone(),
            reference: field.to_string(),
            why: e.to_string(),
        })?;
        for reference in refs {
            let why = match &reference {
                Reference::Param(name) if !declared.contains(name.as_str()) => {
                    "the pipeline declares no such param"
                }
                Reference::StepOutput { step: other, .. } if !runs_before(other) => {
                    "that step does not run before this one: add it to dependsOn"
                }
                _ => continue,
            };
            return Err(GraphError::UnknownReference {
                step: step.name.clone(),
                reference: reference.to_string(),
                why: why.into(),
            });
        }
    }
    if let Some(from) = step.rollout.as_ref().and_then(|r| r.from_step.as_deref())
        && !runs_before(from)
    {
        return Err(GraphError::UnknownReference {
            step: step.name.clone(),
            reference: format!("fromStep {from}"),
            why: "that step does not run before this one: add it to dependsOn".into(),
        });
    }
    Ok(when)
}

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
            Self::Cancelled => write!(f, "skipped: the run was cancelled"),
            Self::DeadlinePassed => write!(f, "skipped: the run's deadline passed"),
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

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cancelled => write!(f, "stopped: the run was cancelled"),
            Self::DeadlinePassed => write!(f, "stopped: the run's deadline passed"),
        }
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

/// Attempts a step may make: 1 plus its retries.
pub fn max_attempts(step: &PipelineStep) -> i32 {
    step.retries.as_ref().map_or(0, |r| r.limit.clamp(0, 1000)) + 1
}

fn parse_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    text.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
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
    let mut running = state.iter().filter(|&&s| s == State::Running).count();
    let cap = graph.parallelism.unwrap_or(usize::MAX);
    let mut actions = Vec::new();

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
                State::Running => actions.push(Action::Stop { step: name, why }),
                State::Waiting | State::Retrying => {
                    state[i] = State::Skipped;
                    actions.push(Action::Skip {
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
        let mut pass = Pass {
            graph,
            run,
            status: &status,
            outputs: &outputs,
            now,
            running: &mut running,
            cap,
            actions: &mut actions,
        };
        pass.advance(regular, &mut state);
    }
    if regular.iter().all(|&i| state[i].is_done()) {
        let mut pass = Pass {
            graph,
            run,
            status: &status,
            outputs: &outputs,
            now,
            running: &mut running,
            cap,
            actions: &mut actions,
        };
        pass.advance(finally, &mut state);
        if state.iter().all(|s| s.is_done()) {
            actions.push(finish(graph, &state, stop, run));
        }
    }
    actions
}

/// One pass of the scheduler over a group of steps.
struct Pass<'p, 'r> {
    graph: &'p Graph,
    run: &'p RunState<'r>,
    status: &'p BTreeMap<&'r str, &'r StepStatus>,
    outputs: &'p StepOutputs,
    now: DateTime<Utc>,
    running: &'p mut usize,
    cap: usize,
    actions: &'p mut Vec<Action>,
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
                    let delay = node
                        .step
                        .retries
                        .as_ref()
                        .map_or(TimeDelta::zero(), |r| backoff(r, attempts));
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
        if *self.running >= self.cap {
            return;
        }
        *self.running += 1;
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
/// leaves `jobName` to the caller (see `jobs::job_name`); `Finish` changes no
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
mod tests {
    use super::*;
    use aleph_crds::pipeline::{ContainerAction, ParamSpec, RolloutAction};
    use proptest::prelude::*;

    fn step(name: &str, deps: &[&str]) -> PipelineStep {
        PipelineStep {
            name: name.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            when: None,
            retries: None,
            timeout_seconds: None,
            container: Some(ContainerAction {
                image: "busybox".into(),
                command: vec![],
                args: vec![],
                env: vec![],
                resources: Default::default(),
            }),
            plugin: None,
            training: None,
            rollout: None,
            pod_annotations: BTreeMap::new(),
        }
    }

    fn spec(steps: Vec<PipelineStep>, finally: Vec<PipelineStep>) -> PipelineSpec {
        PipelineSpec {
            params: vec![],
            steps,
            finally,
            parallelism: None,
            deadline_seconds: None,
            schedule: None,
            ttl_seconds_after_finished: None,
        }
    }

    fn param(name: &str) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            type_: Default::default(),
            default: Some("x".into()),
            values: vec![],
            description: None,
        }
    }

    fn retries(limit: i32, initial: i64, factor: i32, max: i64) -> Option<RetryPolicy> {
        Some(RetryPolicy {
            limit,
            initial_delay_seconds: initial,
            factor,
            max_delay_seconds: max,
        })
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn diamond() -> PipelineSpec {
        spec(
            vec![
                step("a", &[]),
                step("b", &["a"]),
                step("c", &["a"]),
                step("d", &["b", "c"]),
            ],
            vec![step("cleanup", &[])],
        )
    }

    /// Drives a run by hand: `pass` plans and applies what it planned.
    struct Run {
        graph: Graph,
        steps: Vec<StepStatus>,
        params: BTreeMap<String, String>,
        cancelled: bool,
        deadline_passed: bool,
        now: DateTime<Utc>,
        finished: Option<Action>,
    }

    impl Run {
        fn new(spec: &PipelineSpec) -> Self {
            let graph = validate(spec).unwrap();
            let steps = graph.initial_statuses();
            Self {
                graph,
                steps,
                params: BTreeMap::new(),
                cancelled: false,
                deadline_passed: false,
                now: t0(),
                finished: None,
            }
        }

        fn plan(&self) -> Vec<Action> {
            let state = RunState {
                steps: &self.steps,
                params: &self.params,
                cancelled: self.cancelled,
                deadline_passed: self.deadline_passed,
            };
            plan(&self.graph, &state, self.now)
        }

        fn progress(&self) -> String {
            let state = RunState {
                steps: &self.steps,
                params: &self.params,
                cancelled: self.cancelled,
                deadline_passed: self.deadline_passed,
            };
            progress(&self.graph, &state)
        }

        fn pass(&mut self) -> Vec<Action> {
            let actions = self.plan();
            assert_eq!(actions, self.plan(), "plan is deterministic");
            for action in &actions {
                apply(&mut self.steps, action, self.now);
                if matches!(action, Action::Finish { .. }) {
                    self.finished = Some(action.clone());
                }
            }
            actions
        }

        fn started(&mut self) -> Vec<String> {
            self.pass()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Start { step, .. } | Action::StartFinally { step, .. } => Some(step),
                    _ => None,
                })
                .collect()
        }

        fn succeed(&mut self, name: &str) {
            record_succeeded(&mut self.steps, name, BTreeMap::new(), self.now);
        }

        fn fail(&mut self, name: &str) {
            record_failed(&mut self.steps, name, "exit code 1", self.now);
        }

        fn phase(&self, name: &str) -> StepPhase {
            self.steps.iter().find(|s| s.name == name).unwrap().phase
        }

        fn at(&mut self, seconds: i64) {
            self.now = t0() + TimeDelta::seconds(seconds);
        }
    }

    #[test]
    fn a_diamond_runs_in_dependency_order() {
        let mut run = Run::new(&diamond());
        assert_eq!(run.started(), ["a"]);
        assert!(run.pass().is_empty(), "nothing to do while a runs");
        run.succeed("a");
        assert_eq!(run.started(), ["b", "c"]);
        run.succeed("b");
        assert!(run.started().is_empty(), "d waits for c");
        run.succeed("c");
        assert_eq!(run.started(), ["d"]);
        run.succeed("d");
        assert_eq!(run.started(), ["cleanup"]);
        assert_eq!(run.progress(), "4/5");
        run.succeed("cleanup");
        let actions = run.pass();
        assert_eq!(
            actions,
            [Action::Finish {
                phase: RunPhase::Succeeded,
                reason: FinishReason::Succeeded,
                message: "all 5 steps succeeded".into()
            }]
        );
        assert_eq!(run.progress(), "5/5");
    }

    #[test]
    fn parallelism_caps_running_steps_finally_included() {
        let mut s = spec(
            vec![step("a", &[]), step("b", &[]), step("c", &[])],
            vec![step("f1", &[]), step("f2", &[])],
        );
        s.parallelism = Some(2);
        let mut run = Run::new(&s);
        assert_eq!(run.started(), ["a", "b"]);
        run.succeed("a");
        assert_eq!(run.started(), ["c"]);
        run.succeed("b");
        run.succeed("c");
        assert_eq!(run.started(), ["f1", "f2"]);
        s.parallelism = Some(1);
        let mut run = Run::new(&s);
        assert_eq!(run.started(), ["a"]);
        run.succeed("a");
        assert_eq!(run.started(), ["b"]);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let mut s = spec(vec![step("train", &[])], vec![]);
        s.steps[0].retries = retries(3, 10, 2, 25);
        let mut run = Run::new(&s);
        assert_eq!(
            run.pass(),
            [Action::Start {
                step: "train".into(),
                attempt: 1
            }]
        );
        let mut failed_at = 0;
        for (attempt, delay) in [(2, 10), (3, 20), (4, 25)] {
            run.fail("train");
            let actions = run.pass();
            assert_eq!(
                actions,
                [Action::Retry {
                    step: "train".into(),
                    attempt,
                    not_before: t0() + TimeDelta::seconds(failed_at + delay)
                }]
            );
            assert_eq!(run.phase("train"), StepPhase::Retrying);
            assert_eq!(
                next_retry_time(&run.steps),
                Some(t0() + TimeDelta::seconds(failed_at + delay))
            );
            run.at(failed_at + delay - 1);
            assert!(run.pass().is_empty(), "not before the backoff is over");
            run.at(failed_at + delay);
            assert_eq!(
                run.pass(),
                [Action::Start {
                    step: "train".into(),
                    attempt
                }]
            );
            failed_at += delay + 5;
            run.at(failed_at);
        }
        let s = run.steps.iter().find(|s| s.name == "train").unwrap();
        assert_eq!(s.attempts, 4);
        assert_eq!(s.attempt_times.len(), 4);
        run.fail("train");
        let actions = run.pass();
        assert!(
            matches!(&actions[..], [Action::Finish { phase: RunPhase::Failed, reason: FinishReason::StepFailed, message }] if message.contains("train") && message.contains("attempt 4 failed")),
            "{actions:?}"
        );
    }

    #[test]
    fn backoff_formula() {
        let p = RetryPolicy {
            limit: 20,
            initial_delay_seconds: 10,
            factor: 3,
            max_delay_seconds: 1000,
        };
        let secs: Vec<i64> = (1..=7).map(|a| backoff(&p, a).num_seconds()).collect();
        assert_eq!(secs, [10, 30, 90, 270, 810, 1000, 1000]);
        assert_eq!(backoff(&p, i32::MAX).num_seconds(), 1000);
        assert_eq!(backoff(&p, 0).num_seconds(), 10);
    }

    #[test]
    fn a_failure_skips_dependents_transitively_then_finally_runs() {
        let s = spec(
            vec![
                step("a", &[]),
                step("b", &["a"]),
                step("c", &["b"]),
                step("other", &[]),
            ],
            vec![step("notify", &[])],
        );
        let mut run = Run::new(&s);
        assert_eq!(run.started(), ["a", "other"]);
        run.fail("a");
        let actions = run.pass();
        assert_eq!(
            actions,
            [
                Action::Skip {
                    step: "b".into(),
                    why: SkipReason::DependencyFailed {
                        dependency: "a".into()
                    }
                },
                Action::Skip {
                    step: "c".into(),
                    why: SkipReason::DependencySkipped {
                        dependency: "b".into()
                    }
                },
            ],
            "finally waits for other"
        );
        run.succeed("other");
        assert_eq!(run.started(), ["notify"]);
        run.succeed("notify");
        let actions = run.pass();
        assert!(
            matches!(&actions[..], [Action::Finish { phase: RunPhase::Failed, reason: FinishReason::StepFailed, message }] if message.starts_with("step a failed")),
            "{actions:?}"
        );
        assert_eq!(run.phase("c"), StepPhase::Skipped);
    }

    #[test]
    fn a_failed_finally_step_fails_the_run() {
        let mut run = Run::new(&spec(vec![step("a", &[])], vec![step("f", &[])]));
        run.started();
        run.succeed("a");
        run.started();
        run.fail("f");
        let actions = run.pass();
        assert!(
            matches!(&actions[..], [Action::Finish { reason: FinishReason::StepFailed, message, .. }] if message.contains("step f"))
        );
    }

    #[test]
    fn cancel_stops_running_steps_skips_the_rest_and_runs_finally() {
        let mut s = diamond();
        s.steps[1].retries = retries(5, 1, 1, 1);
        let mut run = Run::new(&s);
        run.started();
        run.succeed("a");
        run.started();
        run.fail("b");
        run.pass(); // b waits for its retry
        run.cancelled = true;
        let actions = run.pass();
        assert_eq!(
            actions,
            [
                Action::Skip {
                    step: "b".into(),
                    why: SkipReason::Cancelled
                },
                Action::Stop {
                    step: "c".into(),
                    why: StopReason::Cancelled
                },
                Action::Skip {
                    step: "d".into(),
                    why: SkipReason::Cancelled
                },
            ]
        );
        assert_eq!(run.phase("c"), StepPhase::Failed);
        assert_eq!(run.started(), ["cleanup"], "finally still runs");
        assert_eq!(run.progress(), "4/5", "the stopped step is finished");
        run.succeed("cleanup");
        let actions = run.pass();
        assert!(
            matches!(&actions[..], [Action::Finish { phase: RunPhase::Cancelled, reason: FinishReason::Cancelled, message }] if message.contains("c")),
            "{actions:?}"
        );
    }

    #[test]
    fn a_stop_is_said_again_until_the_step_stops() {
        let mut run = Run::new(&diamond());
        run.started();
        run.cancelled = true;
        let stop = [Action::Stop {
            step: "a".into(),
            why: StopReason::Cancelled,
        }];
        let skips = 3;
        assert_eq!(run.plan().len(), 1 + skips);
        assert_eq!(run.plan()[0], stop[0]);
    }

    #[test]
    fn the_deadline_stops_the_run_with_timeout() {
        let mut s = diamond();
        s.deadline_seconds = Some(600);
        let mut run = Run::new(&s);
        assert_eq!(
            run.graph.deadline(t0()),
            Some(t0() + TimeDelta::seconds(600))
        );
        run.started();
        run.succeed("a");
        run.started();
        run.succeed("b");
        run.at(601);
        run.deadline_passed = true;
        let actions = run.pass();
        assert_eq!(
            actions,
            [
                Action::Stop {
                    step: "c".into(),
                    why: StopReason::DeadlinePassed
                },
                Action::Skip {
                    step: "d".into(),
                    why: SkipReason::DeadlinePassed
                },
            ]
        );
        assert_eq!(run.started(), ["cleanup"]);
        run.succeed("cleanup");
        let actions = run.pass();
        assert!(
            matches!(&actions[..], [Action::Finish { phase: RunPhase::Failed, reason: FinishReason::Timeout, message }] if message.contains("600s")),
            "{actions:?}"
        );
    }

    #[test]
    fn finally_steps_are_not_stopped_and_still_retry() {
        let mut s = spec(vec![step("a", &[])], vec![step("f", &[])]);
        s.finally[0].retries = retries(1, 0, 1, 0);
        let mut run = Run::new(&s);
        run.started();
        run.succeed("a");
        run.started();
        run.cancelled = true;
        assert!(run.pass().is_empty());
        run.fail("f");
        assert!(matches!(
            &run.pass()[..],
            [Action::Retry { attempt: 2, .. }]
        ));
        assert_eq!(
            run.pass(),
            [Action::StartFinally {
                step: "f".into(),
                attempt: 2
            }]
        );
    }

    #[test]
    fn when_skips_a_step_and_its_dependents_but_the_run_succeeds() {
        let mut s = spec(
            vec![
                step("eval", &[]),
                step("deploy", &["eval"]),
                step("announce", &["deploy"]),
                step("report", &["eval"]),
            ],
            vec![],
        );
        s.params = vec![param("target")];
        s.steps[1].when = Some("steps.eval.outputs.accuracy != '0'".into());
        s.steps[3].when = Some("params.target == 'prod'".into());
        let mut run = Run::new(&s);
        run.params.insert("target".into(), "dev".into());
        run.started();
        record_succeeded(
            &mut run.steps,
            "eval",
            BTreeMap::from([("accuracy".to_string(), "0".to_string())]),
            run.now,
        );
        let actions = run.pass();
        assert_eq!(
            actions[..3],
            [
                Action::Skip {
                    step: "deploy".into(),
                    why: SkipReason::WhenFalse {
                        when: "steps.eval.outputs.accuracy != '0'".into()
                    }
                },
                Action::Skip {
                    step: "announce".into(),
                    why: SkipReason::DependencySkipped {
                        dependency: "deploy".into()
                    }
                },
                Action::Skip {
                    step: "report".into(),
                    why: SkipReason::WhenFalse {
                        when: "params.target == 'prod'".into()
                    }
                },
            ]
        );
        assert!(
            matches!(&actions[3], Action::Finish { phase: RunPhase::Succeeded, message, .. } if message.contains("3 skipped")),
            "{actions:?}"
        );
    }

    #[test]
    fn when_holds_and_missing_outputs_skip() {
        let mut s = spec(vec![step("eval", &[]), step("deploy", &["eval"])], vec![]);
        s.steps[1].when = Some("steps.eval.outputs.ok == 'true'".into());
        let mut run = Run::new(&s);
        run.started();
        record_succeeded(
            &mut run.steps,
            "eval",
            BTreeMap::from([("ok".to_string(), "true".to_string())]),
            run.now,
        );
        assert_eq!(run.started(), ["deploy"]);
        let mut run = Run::new(&s);
        run.started();
        run.succeed("eval");
        assert!(matches!(
            &run.pass()[0],
            Action::Skip {
                why: SkipReason::WhenUnavailable { .. },
                ..
            }
        ));
    }

    #[test]
    fn when_parses_the_crd_grammar() {
        let w = When::parse("params.deploy == 'true'").unwrap();
        assert_eq!(w.subject, Reference::Param("deploy".into()));
        assert_eq!(w.op, WhenOp::Equals);
        assert_eq!(w.value, "true");
        assert_eq!(w.to_string(), "params.deploy == 'true'");
        let w = When::parse("steps.eval-1.outputs.acc_top1 != ''").unwrap();
        assert_eq!(
            w.subject,
            Reference::StepOutput {
                step: "eval-1".into(),
                key: "acc_top1".into()
            }
        );
        assert_eq!(w.value, "");
        for bad in [
            "",
            "params.x",
            "params.x = 'a'",
            "params.x == a",
            "params.x == 'a'b'",
            "params.x  == 'a'",
            "steps.a.b == 'c'",
            "foo.x == 'a'",
            "params.x) == 'a'",
        ] {
            assert!(When::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_names_the_culprits() {
        let err = |s: &PipelineSpec| validate(s).unwrap_err();
        assert_eq!(
            err(&spec(vec![step("a", &[]), step("a", &[])], vec![])),
            GraphError::DuplicateStep { name: "a".into() }
        );
        assert_eq!(
            err(&spec(vec![step("a", &[])], vec![step("a", &[])])),
            GraphError::DuplicateStep { name: "a".into() }
        );
        assert_eq!(
            err(&spec(vec![step("a", &["a"])], vec![])),
            GraphError::SelfDependency { step: "a".into() }
        );
        assert_eq!(
            err(&spec(vec![step("a", &["zz"])], vec![])),
            GraphError::UnknownDependency {
                step: "a".into(),
                missing: "zz".into()
            }
        );
        assert_eq!(
            err(&spec(vec![step("a", &[])], vec![step("f", &["a"])])),
            GraphError::FinallyDependsOnStep {
                step: "f".into(),
                dependency: "a".into()
            }
        );
        assert_eq!(
            err(&spec(vec![step("a", &["f"])], vec![step("f", &[])])),
            GraphError::DependsOnFinally {
                step: "a".into(),
                dependency: "f".into()
            }
        );
        let e = err(&spec(
            vec![
                step("ok", &[]),
                step("b", &["a"]),
                step("c", &["b", "ok"]),
                step("a", &["c"]),
            ],
            vec![],
        ));
        assert_eq!(
            e,
            GraphError::Cycle {
                steps: vec!["a".into(), "c".into(), "b".into()]
            }
        );
        assert!(e.to_string().contains("a -> c -> b"), "{e}");
        assert_eq!(e.reason(), "InvalidGraph");
        assert!(matches!(
            err(&spec(vec![step("a", &["b"]), step("b", &["a"])], vec![])),
            GraphError::Cycle { steps } if steps == ["a", "b"]
        ));
        assert!(matches!(
            err(&spec(
                vec![step("a", &[])],
                vec![step("f", &["g"]), step("g", &["f"])]
            )),
            GraphError::Cycle { .. }
        ));
    }

    #[test]
    fn validate_checks_whens_and_references() {
        let mut s = spec(
            vec![step("a", &[]), step("b", &["a"]), step("c", &[])],
            vec![step("f", &[])],
        );
        s.params = vec![param("p")];
        let with = |f: &dyn Fn(&mut PipelineSpec)| {
            let mut s = s.clone();
            f(&mut s);
            validate(&s)
        };
        assert!(with(&|_| {}).is_ok());
        assert!(with(&|s| s.steps[1].when = Some("steps.a.outputs.k == 'v'".into())).is_ok());
        assert!(with(&|s| s.finally[0].when = Some("steps.c.outputs.k == 'v'".into())).is_ok());
        assert!(matches!(
            with(&|s| s.steps[1].when = Some("params.q == 'v'".into())),
            Err(GraphError::UnknownWhenParam { step, param }) if step == "b" && param == "q"
        ));
        assert!(matches!(
            with(&|s| s.steps[1].when = Some("steps.c.outputs.k == 'v'".into())),
            Err(GraphError::UnknownWhenStep { step, referenced }) if step == "b" && referenced == "c"
        ));
        assert!(matches!(
            with(&|s| s.steps[0].when = Some("steps.a.outputs.k == 'v'".into())),
            Err(GraphError::UnknownWhenStep { .. })
        ));
        assert!(matches!(
            with(&|s| s.steps[0].when = Some("params.p = 'v'".into())),
            Err(GraphError::InvalidWhen { step, .. }) if step == "a"
        ));
        let args = |s: &mut PipelineSpec, i: usize, arg: &str| {
            if let Some(c) = s.steps[i].container.as_mut() {
                c.args = vec![arg.to_string()];
            }
        };
        assert!(with(&|s| args(s, 1, "--in=$(steps.a.outputs.uri) $(params.p) $(date)")).is_ok());
        assert!(matches!(
            with(&|s| args(s, 1, "$(params.nope)")),
            Err(GraphError::UnknownReference { step, reference, .. }) if step == "b" && reference == "$(params.nope)"
        ));
        assert!(matches!(
            with(&|s| args(s, 2, "$(steps.a.outputs.uri)")),
            Err(GraphError::UnknownReference { step, why, .. }) if step == "c" && why.contains("dependsOn")
        ));
        assert!(matches!(
            with(&|s| args(s, 2, "$(params.p")),
            Err(GraphError::UnknownReference { .. })
        ));
        assert!(with(&|s| rollout_from(s, "a")).is_ok());
        assert!(matches!(
            with(&|s| rollout_from(s, "c")),
            Err(GraphError::UnknownReference { reference, .. }) if reference == "fromStep c"
        ));
    }

    fn rollout_from(s: &mut PipelineSpec, from: &str) {
        s.steps[1].container = None;
        s.steps[1].rollout = Some(RolloutAction {
            model: "m".into(),
            source: None,
            from_step: Some(from.into()),
            ready_timeout_seconds: 60,
        });
    }

    #[test]
    fn topological_order_keeps_spec_order_for_ties() {
        let s = spec(
            vec![step("z", &["y"]), step("y", &[]), step("x", &[])],
            vec![step("f2", &["f1"]), step("f1", &[])],
        );
        let g = validate(&s).unwrap();
        assert_eq!(g.names().collect::<Vec<_>>(), ["y", "z", "x", "f1", "f2"]);
        assert_eq!(g.dependencies("z"), ["y"]);
        assert!(g.is_finally("f1") && !g.is_finally("z"));
        assert_eq!(g.len(), 5);
    }

    #[test]
    fn resume_reuses_what_succeeded_and_reruns_the_rest() {
        let s = spec(
            vec![
                step("fetch", &[]),
                step("train", &["fetch"]),
                step("eval", &["train"]),
                step("lint", &[]),
                step("docs", &["lint"]),
            ],
            vec![step("cleanup", &[])],
        );
        let previous = vec![
            StepStatus {
                name: "fetch".into(),
                phase: StepPhase::Succeeded,
                outputs: BTreeMap::from([("uri".to_string(), "s3://b/d".to_string())]),
                ..StepStatus::default()
            },
            StepStatus {
                name: "train".into(),
                phase: StepPhase::Failed,
                ..StepStatus::default()
            },
            StepStatus {
                name: "eval".into(),
                phase: StepPhase::Succeeded,
                ..StepStatus::default()
            },
            StepStatus {
                name: "lint".into(),
                phase: StepPhase::Reused,
                ..StepStatus::default()
            },
            StepStatus {
                name: "docs".into(),
                phase: StepPhase::Succeeded,
                ..StepStatus::default()
            },
            StepStatus {
                name: "cleanup".into(),
                phase: StepPhase::Succeeded,
                ..StepStatus::default()
            },
        ];
        let resumed = resume_plan(&s, &previous);
        let phases: Vec<(&str, StepPhase)> =
            resumed.iter().map(|s| (s.name.as_str(), s.phase)).collect();
        assert_eq!(
            phases,
            [
                ("fetch", StepPhase::Reused),
                ("train", StepPhase::Pending),
                ("eval", StepPhase::Pending),
                ("lint", StepPhase::Reused),
                ("docs", StepPhase::Reused),
                ("cleanup", StepPhase::Pending),
            ]
        );
        assert_eq!(resumed[0].outputs["uri"], "s3://b/d");
        // The resumed run starts with train, fed by fetch's outputs.
        let mut run = Run::new(&s);
        run.steps = resumed;
        assert_eq!(run.started(), ["train"]);
        assert_eq!(run.progress(), "3/6");
        // Nothing is reused from an unknown or empty run, nor on a cycle.
        assert!(
            resume_plan(&s, &[])
                .iter()
                .all(|s| s.phase == StepPhase::Pending)
        );
        let cyclic = spec(vec![step("a", &["b"]), step("b", &["a"])], vec![]);
        let all_ok = [
            StepStatus {
                name: "a".into(),
                phase: StepPhase::Succeeded,
                ..StepStatus::default()
            },
            StepStatus {
                name: "b".into(),
                phase: StepPhase::Succeeded,
                ..StepStatus::default()
            },
        ];
        assert!(
            resume_plan(&cyclic, &all_ok)
                .iter()
                .all(|s| s.phase == StepPhase::Pending)
        );
    }

    #[test]
    fn progress_counts_finished_steps() {
        let mut s = diamond();
        s.steps[0].retries = retries(1, 0, 1, 0);
        let mut run = Run::new(&s);
        assert_eq!(run.progress(), "0/5");
        run.started();
        run.fail("a");
        assert_eq!(run.progress(), "0/5", "a retry is left");
        run.pass();
        run.pass();
        run.fail("a");
        assert_eq!(run.progress(), "1/5");
    }

    #[test]
    fn apply_keeps_the_bookkeeping() {
        let mut steps = Vec::new();
        let now = t0();
        apply(
            &mut steps,
            &Action::Start {
                step: "a".into(),
                attempt: 1,
            },
            now,
        );
        record_failed(&mut steps, "a", "OOMKilled", now + TimeDelta::seconds(5));
        assert_eq!(
            steps[0].message.as_deref(),
            Some("attempt 1 failed: OOMKilled")
        );
        let at = now + TimeDelta::seconds(15);
        apply(
            &mut steps,
            &Action::Retry {
                step: "a".into(),
                attempt: 2,
                not_before: at,
            },
            now,
        );
        assert_eq!(
            steps[0].next_attempt_time.as_deref(),
            Some("2026-01-01T00:00:15Z")
        );
        assert!(
            steps[0]
                .message
                .as_deref()
                .unwrap()
                .contains("attempt 2 starts at")
        );
        apply(
            &mut steps,
            &Action::Start {
                step: "a".into(),
                attempt: 2,
            },
            at,
        );
        assert_eq!(steps[0].start_time.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(
            steps[0].attempt_times,
            ["2026-01-01T00:00:00Z", "2026-01-01T00:00:15Z"]
        );
        assert_eq!(steps[0].next_attempt_time, None);
        record_succeeded(
            &mut steps,
            "a",
            BTreeMap::from([("k".into(), "v".into())]),
            at,
        );
        assert_eq!(steps[0].phase, StepPhase::Succeeded);
        assert_eq!(step_outputs(&steps)["a"]["k"], "v");
    }

    #[test]
    fn an_empty_pipeline_finishes_at_once() {
        let g = validate(&spec(vec![], vec![])).unwrap();
        let actions = plan(
            &g,
            &RunState {
                steps: &[],
                params: &BTreeMap::new(),
                cancelled: false,
                deadline_passed: false,
            },
            t0(),
        );
        assert!(matches!(
            &actions[..],
            [Action::Finish {
                phase: RunPhase::Succeeded,
                ..
            }]
        ));
    }

    /// A random pipeline: regular step j may depend on any i < j (so the
    /// graph is acyclic), finally steps likewise among themselves.
    #[derive(Debug, Clone)]
    struct Scenario {
        spec: PipelineSpec,
        /// Per step, the outcome of each attempt (true = success); past the
        /// end, attempts succeed.
        outcomes: BTreeMap<String, Vec<bool>>,
        /// Per pass, which running steps finish (bit i of the byte for the
        /// i-th running step, at least one always does).
        finishes: Vec<u8>,
        cancel_at: Option<usize>,
        deadline_at: Option<usize>,
        flag: bool,
        /// Resume from an earlier run in which these regular steps succeeded.
        resumed: Option<Vec<bool>>,
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        (1usize..=10, 0usize..=3)
            .prop_flat_map(|(n, f)| {
                (
                    Just(n),
                    Just(f),
                    proptest::collection::vec(proptest::bool::weighted(0.35), n * n + f * f),
                    proptest::collection::vec(
                        proptest::collection::vec(proptest::bool::weighted(0.7), 0..4),
                        n + f,
                    ),
                    proptest::collection::vec(0i32..4, n + f),
                    proptest::collection::vec(0u8..4, n + f),
                    proptest::option::of(1i32..4),
                    proptest::collection::vec(any::<u8>(), 1..8),
                    (
                        proptest::option::of(0usize..30),
                        proptest::option::of(0usize..30),
                        any::<bool>(),
                        proptest::option::of(proptest::collection::vec(any::<bool>(), n)),
                    ),
                )
            })
            .prop_map(
                |(
                    n,
                    f,
                    edges,
                    outcomes,
                    limits,
                    whens,
                    parallelism,
                    finishes,
                    (cancel_at, deadline_at, flag, resumed),
                )| {
                    let mut steps: Vec<PipelineStep> =
                        (0..n).map(|j| step(&format!("s{j}"), &[])).collect();
                    let mut finally: Vec<PipelineStep> =
                        (0..f).map(|j| step(&format!("f{j}"), &[])).collect();
                    for j in 0..n {
                        for i in 0..j {
                            if edges[i * n + j] {
                                steps[j].depends_on.push(format!("s{i}"));
                            }
                        }
                    }
                    for j in 0..f {
                        for i in 0..j {
                            if edges[n * n + i * f + j] {
                                finally[j].depends_on.push(format!("f{i}"));
                            }
                        }
                    }
                    let all = steps.iter_mut().chain(finally.iter_mut());
                    for (k, s) in all.enumerate() {
                        if limits[k] > 0 {
                            s.retries = retries(limits[k], 5, 2, 20);
                        }
                        s.when = match whens[k] {
                            1 => Some("params.flag == 'yes'".into()),
                            2 => s
                                .depends_on
                                .first()
                                .map(|d| format!("steps.{d}.outputs.ok != 'no'")),
                            _ => None,
                        };
                    }
                    let names = (0..n)
                        .map(|j| format!("s{j}"))
                        .chain((0..f).map(|j| format!("f{j}")));
                    let mut s = spec(steps, finally);
                    s.params = vec![param("flag")];
                    s.parallelism = parallelism;
                    Scenario {
                        spec: s,
                        outcomes: names.zip(outcomes).collect(),
                        finishes,
                        cancel_at,
                        deadline_at,
                        flag,
                        resumed,
                    }
                },
            )
    }

    fn done(phase: StepPhase) -> bool {
        matches!(
            phase,
            StepPhase::Succeeded | StepPhase::Reused | StepPhase::Failed | StepPhase::Skipped
        )
    }

    /// Runs a scenario to its end, checking the scheduler's promises on
    /// every pass; returns the Finish action.
    fn simulate(sc: &Scenario) -> Result<Action, TestCaseError> {
        let graph = validate(&sc.spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut steps = match &sc.resumed {
            None => graph.initial_statuses(),
            Some(succeeded) => {
                let previous: Vec<StepStatus> = sc
                    .spec
                    .steps
                    .iter()
                    .zip(succeeded)
                    .map(|(step, &ok)| StepStatus {
                        name: step.name.clone(),
                        phase: if ok {
                            StepPhase::Succeeded
                        } else {
                            StepPhase::Failed
                        },
                        outputs: BTreeMap::from([("ok".to_string(), "yes".to_string())]),
                        ..StepStatus::default()
                    })
                    .collect();
                let resumed = resume_plan(&sc.spec, &previous);
                for status in &resumed {
                    let reused = status.phase == StepPhase::Reused;
                    let deps_reused = graph.dependencies(&status.name).iter().all(|d| {
                        resumed
                            .iter()
                            .any(|r| &r.name == d && r.phase == StepPhase::Reused)
                    });
                    prop_assert!(
                        !reused || deps_reused,
                        "{} reused without its dependencies",
                        status.name
                    );
                }
                resumed
            }
        };
        let params = BTreeMap::from([(
            "flag".to_string(),
            if sc.flag { "yes" } else { "no" }.to_string(),
        )]);
        let cap = graph.parallelism().unwrap_or(usize::MAX);
        let mut now = t0();
        let attempts_total: usize = graph
            .names()
            .map(|n| usize::try_from(max_attempts(graph.step(n).unwrap())).unwrap())
            .sum();
        let bound = 4 * attempts_total + 8;
        for pass in 0..bound {
            let observed = steps.clone();
            let state = RunState {
                steps: &observed,
                params: &params,
                cancelled: sc.cancel_at.is_some_and(|c| pass >= c),
                deadline_passed: sc.deadline_at.is_some_and(|d| pass >= d),
            };
            let stopping = state.cancelled || state.deadline_passed;
            let actions = plan(&graph, &state, now);
            prop_assert_eq!(
                &actions,
                &plan(&graph, &state, now),
                "plan is deterministic"
            );
            // Skips take effect within the pass that says them.
            let skipped_now: BTreeSet<&str> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Skip { step, .. } => Some(step.as_str()),
                    _ => None,
                })
                .collect();
            let phase_of = |name: &str| {
                if skipped_now.contains(name) {
                    return StepPhase::Skipped;
                }
                observed
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.phase)
                    .unwrap_or_default()
            };
            let succeeded =
                |name: &str| matches!(phase_of(name), StepPhase::Succeeded | StepPhase::Reused);
            for action in &actions {
                match action {
                    Action::Start { step, attempt } => {
                        prop_assert!(!stopping, "started {} while stopping", step);
                        prop_assert_ne!(phase_of(step), StepPhase::Reused, "reran a reused step");
                        prop_assert!(!graph.is_finally(step));
                        for dep in graph.dependencies(step) {
                            prop_assert!(
                                succeeded(dep),
                                "{} started before {} succeeded",
                                step,
                                dep
                            );
                        }
                        prop_assert!(*attempt <= max_attempts(graph.step(step).unwrap()));
                    }
                    Action::StartFinally { step, attempt } => {
                        prop_assert!(graph.is_finally(step));
                        for name in graph.names().filter(|n| !graph.is_finally(n)) {
                            prop_assert!(
                                done(phase_of(name)),
                                "{} started before {} finished",
                                step,
                                name
                            );
                        }
                        for dep in graph.dependencies(step) {
                            prop_assert!(succeeded(dep));
                        }
                        prop_assert!(*attempt <= max_attempts(graph.step(step).unwrap()));
                    }
                    Action::Stop { step, .. } => {
                        prop_assert!(stopping && !graph.is_finally(step));
                        prop_assert_eq!(phase_of(step), StepPhase::Running);
                    }
                    Action::Finish { phase, reason, .. } => {
                        for name in graph.names() {
                            prop_assert!(done(phase_of(name)), "finished with {} not done", name);
                        }
                        let any_failed = observed.iter().any(|s| s.phase == StepPhase::Failed);
                        let expected = if state.cancelled {
                            (RunPhase::Cancelled, FinishReason::Cancelled)
                        } else if state.deadline_passed {
                            (RunPhase::Failed, FinishReason::Timeout)
                        } else if any_failed {
                            (RunPhase::Failed, FinishReason::StepFailed)
                        } else {
                            (RunPhase::Succeeded, FinishReason::Succeeded)
                        };
                        prop_assert_eq!((*phase, *reason), expected);
                        return Ok(action.clone());
                    }
                    Action::Retry { not_before, .. } => {
                        prop_assert!(*not_before >= now - TimeDelta::days(1))
                    }
                    Action::Skip { .. } => {}
                }
                apply(&mut steps, action, now);
            }
            let running: Vec<String> = steps
                .iter()
                .filter(|s| s.phase == StepPhase::Running)
                .map(|s| s.name.clone())
                .collect();
            prop_assert!(
                running.len() <= cap,
                "{} running, cap {}",
                running.len(),
                cap
            );
            // Some running steps finish, by their scripted outcome.
            let mask = sc.finishes[pass % sc.finishes.len()];
            for (k, name) in running.iter().enumerate() {
                if k > 0 && mask & (1 << (k % 8)) == 0 {
                    continue;
                }
                let attempt = steps
                    .iter()
                    .find(|s| &s.name == name)
                    .map_or(1, |s| s.attempts);
                let ok = sc.outcomes[name]
                    .get(usize::try_from(attempt - 1).unwrap_or(0))
                    .copied()
                    .unwrap_or(true);
                now += TimeDelta::seconds(3);
                if ok {
                    let outputs = BTreeMap::from([(
                        "ok".to_string(),
                        if attempt % 2 == 0 { "no" } else { "yes" }.to_string(),
                    )]);
                    record_succeeded(&mut steps, name, outputs, now);
                } else {
                    record_failed(&mut steps, name, "exit code 1", now);
                }
            }
            if running.is_empty() {
                now = next_retry_time(&steps).unwrap_or(now).max(now) + TimeDelta::seconds(1);
            }
        }
        Err(TestCaseError::fail(format!(
            "no Finish within {bound} passes"
        )))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn the_scheduler_keeps_its_promises(sc in scenario()) {
            simulate(&sc)?;
        }

        #[test]
        fn validate_finds_every_injected_cycle(
            n in 2usize..12,
            edges in proptest::collection::vec(proptest::bool::weighted(0.3), 144),
            injected in proptest::collection::vec((0usize..12, 0usize..12), 1..4),
        ) {
            let mut steps: Vec<PipelineStep> = (0..n).map(|j| step(&format!("s{j:02}"), &[])).collect();
            let depend = |steps: &mut Vec<PipelineStep>, from: usize, on: usize| {
                let name = format!("s{on:02}");
                if !steps[from].depends_on.contains(&name) {
                    steps[from].depends_on.push(name);
                }
            };
            for j in 0..n {
                for i in 0..j {
                    if edges[i * 12 + j] {
                        depend(&mut steps, j, i);
                    }
                }
            }
            prop_assert!(validate(&spec(steps.clone(), vec![])).is_ok());
            // Each injection: i < j, j depends on i, and i on j: a cycle.
            let mut back_edges = BTreeSet::new();
            for (a, b) in injected {
                let (i, j) = (a % n, b % n);
                if i == j {
                    continue;
                }
                let (i, j) = (i.min(j), i.max(j));
                depend(&mut steps, j, i);
                depend(&mut steps, i, j);
                back_edges.insert((i, j));
            }
            let index = |name: &str| name[1..].parse::<usize>().unwrap();
            let mut removed = 0;
            loop {
                match validate(&spec(steps.clone(), vec![])) {
                    Ok(_) => break,
                    Err(GraphError::Cycle { steps: cycle }) => {
                        prop_assert!(!cycle.is_empty());
                        // A real cycle: each depends on the next, the last on the first.
                        let mut back = None;
                        for k in 0..cycle.len() {
                            let (x, y) = (index(&cycle[k]), index(&cycle[(k + 1) % cycle.len()]));
                            prop_assert!(steps[x].depends_on.contains(&cycle[(k + 1) % cycle.len()]));
                            if x < y {
                                back = Some((x, y));
                            }
                        }
                        // Any cycle uses an injected back edge; remove it and look again.
                        let (x, y) = back.ok_or_else(|| TestCaseError::fail("a cycle without a back edge"))?;
                        prop_assert!(back_edges.contains(&(x, y)));
                        let name = format!("s{y:02}");
                        steps[x].depends_on.retain(|d| d != &name);
                        removed += 1;
                        prop_assert!(removed <= back_edges.len());
                    }
                    Err(other) => prop_assert!(false, "unexpected {}", other),
                }
            }
            prop_assert_eq!(removed, back_edges.len(), "every injected cycle was found");
        }

        #[test]
        fn backoff_grows_and_stays_capped(
            initial in 0i64..3600, factor in 1i32..=10, extra in 0i64..86400, attempt in 1i32..30,
        ) {
            let p = RetryPolicy { limit: 20, initial_delay_seconds: initial, factor, max_delay_seconds: initial + extra };
            let d = backoff(&p, attempt);
            prop_assert!(d <= TimeDelta::seconds(initial + extra));
            prop_assert!(d >= TimeDelta::seconds(initial));
            prop_assert!(backoff(&p, attempt + 1) >= d);
        }

        #[test]
        fn plan_never_panics_on_odd_statuses(
            phases in proptest::collection::vec((0u8..7, -3i32..30, proptest::option::of("[0-9TZ:-]{0,25}")), 0..8),
            cancelled in any::<bool>(),
            deadline_passed in any::<bool>(),
        ) {
            let g = validate(&diamond()).unwrap();
            let names = ["a", "b", "c", "d", "cleanup", "ghost", "a", "b"];
            let steps: Vec<StepStatus> = phases
                .into_iter()
                .enumerate()
                .map(|(k, (p, attempts, time))| StepStatus {
                    name: names[k].into(),
                    phase: [
                        StepPhase::Pending,
                        StepPhase::Running,
                        StepPhase::Retrying,
                        StepPhase::Succeeded,
                        StepPhase::Failed,
                        StepPhase::Skipped,
                        StepPhase::Reused,
                    ][usize::from(p)],
                    attempts,
                    next_attempt_time: time.clone(),
                    finish_time: time,
                    ..StepStatus::default()
                })
                .collect();
            let state = RunState { steps: &steps, params: &BTreeMap::new(), cancelled, deadline_passed };
            let _ = plan(&g, &state, t0());
            let _ = progress(&g, &state);
            let _ = resume_plan(&diamond(), &steps);
        }
    }
}
