//! The DAG of a Pipeline: pure functions, no client.
//!
//! [`validate`] turns a [`PipelineSpec`] into a [`Graph`] or a [`GraphError`]
//! naming the culprits. A [`Graph`] answers what the scheduler of its runs
//! (`scheduler`) asks: the steps in the order they may run, their
//! dependencies, which are finally steps, the parallelism and the deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use aleph_crds::pipeline::{PipelineSpec, PipelineStep, StepStatus};
use chrono::{DateTime, TimeDelta, Utc};

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
            Reference::Item => return Err("a when cannot use $(item)".into()),
        };
        Ok((actual == &self.value) == (self.op == WhenOp::Equals))
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = match &self.subject {
            Reference::Param(name) => format!("params.{name}"),
            Reference::StepOutput { step, key } => format!("steps.{step}.outputs.{key}"),
            Reference::Item => "item".into(),
        };
        let op = match self.op {
            WhenOp::Equals => "==",
            WhenOp::NotEquals => "!=",
        };
        write!(f, "{subject} {op} '{}'", self.value)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) step: PipelineStep,
    pub(super) finally: bool,
    pub(super) deps: Vec<usize>,
    pub(super) when: Option<When>,
}

/// A validated pipeline: steps and finally steps, their dependencies and a
/// topological order. Made by [`validate`].
#[derive(Debug, Clone)]
pub struct Graph {
    pub(super) nodes: Vec<Node>,
    index: BTreeMap<String, usize>,
    /// Regular steps in a topological order (ties in spec order), then finally steps likewise.
    pub(super) order: Vec<usize>,
    pub(super) parallelism: Option<usize>,
    pub(super) deadline_seconds: Option<i64>,
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
    if let Some(a) = &step.approval {
        fields.extend(a.message.as_deref());
    }
    if let Some(n) = &step.notify {
        fields.push(n.message.as_str());
    }
    if let Some(items) = step.for_each.as_ref().and_then(|f| f.items.as_ref()) {
        fields.extend(items.iter().map(String::as_str));
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
                Reference::Item if step.for_each.is_none() => {
                    "only a step with forEach has an item"
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
    if let Some(from) = step
        .for_each
        .as_ref()
        .and_then(|f| f.from_output.as_deref())
    {
        let source = from
            .strip_prefix("steps.")
            .and_then(|rest| rest.split_once(".outputs."))
            .map(|(s, _)| s);
        if !source.is_some_and(runs_before) {
            return Err(GraphError::UnknownReference {
                step: step.name.clone(),
                reference: format!("forEach.fromOutput {from}"),
                why: "that step does not run before this one: add it to dependsOn".into(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "graph_tests.rs"]
mod tests;
