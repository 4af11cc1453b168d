use super::*;
use crate::pipeline::graph::validate;
use crate::pipeline::test_support::{dag, param, spec, step, step_status};
use aleph_crds::pipeline::{PipelineStep, RetryPolicy};
use chrono::TimeDelta;
use proptest::prelude::*;

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
    dag(
        &[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])],
        &["cleanup"],
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

    fn state(&self) -> RunState<'_> {
        RunState {
            steps: &self.steps,
            params: &self.params,
            cancelled: self.cancelled,
            deadline_passed: self.deadline_passed,
        }
    }

    fn plan(&self) -> Vec<Action> {
        plan(&self.graph, &self.state(), self.now)
    }

    fn progress(&self) -> String {
        progress(&self.graph, &self.state())
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

    /// The next pass, which must finish the run with `phase` and `reason`:
    /// its message.
    fn finish_as(&mut self, phase: RunPhase, reason: FinishReason) -> String {
        let actions = self.pass();
        match &actions[..] {
            [
                Action::Finish {
                    phase: p,
                    reason: r,
                    message,
                },
            ] => {
                assert_eq!((*p, *r), (phase, reason), "{message}");
                message.clone()
            }
            _ => panic!("the run does not finish: {actions:?}"),
        }
    }

    /// Starts what is ready, lets `step` succeed and starts what that frees.
    fn start_past(&mut self, step: &str) {
        self.started();
        self.succeed(step);
        self.started();
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
    let message = run.finish_as(RunPhase::Failed, FinishReason::StepFailed);
    assert!(
        message.contains("train") && message.contains("attempt 4 failed"),
        "{message}"
    );
}

#[test]
fn a_failure_skips_dependents_transitively_then_finally_runs() {
    let s = dag(
        &[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("other", &[])],
        &["notify"],
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
    let message = run.finish_as(RunPhase::Failed, FinishReason::StepFailed);
    assert!(message.starts_with("step a failed"), "{message}");
    assert_eq!(run.phase("c"), StepPhase::Skipped);
}

#[test]
fn a_failed_finally_step_fails_the_run() {
    let mut run = Run::new(&spec(vec![step("a", &[])], vec![step("f", &[])]));
    run.start_past("a");
    run.fail("f");
    let message = run.finish_as(RunPhase::Failed, FinishReason::StepFailed);
    assert!(message.contains("step f"), "{message}");
}

#[test]
fn cancel_stops_running_steps_skips_the_rest_and_runs_finally() {
    let mut s = diamond();
    s.steps[1].retries = retries(5, 1, 1, 1);
    let mut run = Run::new(&s);
    run.start_past("a");
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
    let message = run.finish_as(RunPhase::Cancelled, FinishReason::Cancelled);
    assert!(message.contains("c"), "{message}");
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
    run.start_past("a");
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
    let message = run.finish_as(RunPhase::Failed, FinishReason::Timeout);
    assert!(message.contains("600s"), "{message}");
}

#[test]
fn finally_steps_are_not_stopped_and_still_retry() {
    let mut s = spec(vec![step("a", &[])], vec![step("f", &[])]);
    s.finally[0].retries = retries(1, 0, 1, 0);
    let mut run = Run::new(&s);
    run.start_past("a");
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
    let mut s = dag(
        &[
            ("eval", &[]),
            ("deploy", &["eval"]),
            ("announce", &["deploy"]),
            ("report", &["eval"]),
        ],
        &[],
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
fn resume_reuses_what_succeeded_and_reruns_the_rest() {
    let s = dag(
        &[
            ("fetch", &[]),
            ("train", &["fetch"]),
            ("eval", &["train"]),
            ("lint", &[]),
            ("docs", &["lint"]),
        ],
        &["cleanup"],
    );
    let previous = vec![
        StepStatus {
            name: "fetch".into(),
            phase: StepPhase::Succeeded,
            outputs: BTreeMap::from([("uri".to_string(), "s3://b/d".to_string())]),
            ..StepStatus::default()
        },
        step_status("train", StepPhase::Failed),
        step_status("eval", StepPhase::Succeeded),
        step_status("lint", StepPhase::Reused),
        step_status("docs", StepPhase::Succeeded),
        step_status("cleanup", StepPhase::Succeeded),
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
        step_status("a", StepPhase::Succeeded),
        step_status("b", StepPhase::Succeeded),
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
                        prop_assert!(succeeded(dep), "{} started before {} succeeded", step, dep);
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
