use super::*;
use crate::pipeline::test_support::{param, spec, step};
use aleph_crds::pipeline::RolloutAction;
use proptest::prelude::*;

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

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
}
