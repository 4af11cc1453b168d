use super::*;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn for_each() -> ForEach {
    ForEach {
        items: None,
        param: None,
        from_output: None,
        parallelism: None,
        allowed_failures: 0,
    }
}

#[test]
fn items_come_from_a_literal_a_param_or_an_output() {
    let params = BTreeMap::from([
        ("langs".to_string(), r#"["en", "fr", 3]"#.to_string()),
        ("region".to_string(), "eu".to_string()),
        ("bad".to_string(), "en,fr".to_string()),
    ]);
    let outputs: StepOutputs = BTreeMap::from([(
        "evaluate".to_string(),
        BTreeMap::from([
            ("metrics".to_string(), r#"["accuracy","f1"]"#.to_string()),
            ("score".to_string(), r#"{"a": 1}"#.to_string()),
        ]),
    )]);
    let literal = ForEach {
        items: Some(strings(&["a-$(params.region)", "b"])),
        ..for_each()
    };
    assert_eq!(
        items(&literal, &params, &outputs).unwrap(),
        strings(&["a-eu", "b"])
    );
    let param = ForEach {
        param: Some("langs".into()),
        ..for_each()
    };
    assert_eq!(
        items(&param, &params, &outputs).unwrap(),
        strings(&["en", "fr", "3"])
    );
    let output = ForEach {
        from_output: Some("steps.evaluate.outputs.metrics".into()),
        ..for_each()
    };
    assert_eq!(
        items(&output, &params, &outputs).unwrap(),
        strings(&["accuracy", "f1"])
    );
    // Not a list: refused with what it is.
    let not_list = ForEach {
        param: Some("bad".into()),
        ..for_each()
    };
    assert!(
        items(&not_list, &params, &outputs)
            .unwrap_err()
            .contains("is not a JSON array")
    );
    let object = ForEach {
        from_output: Some("steps.evaluate.outputs.score".into()),
        ..for_each()
    };
    assert!(
        items(&object, &params, &outputs)
            .unwrap_err()
            .contains("is not a JSON array")
    );
    let missing = ForEach {
        from_output: Some("steps.evaluate.outputs.nope".into()),
        ..for_each()
    };
    assert_eq!(
        items(&missing, &params, &outputs).unwrap_err(),
        "forEach.fromOutput: step evaluate wrote no output nope"
    );
}

#[test]
fn too_many_items_are_refused() {
    let many: Vec<String> = (0..=MAX_ITEMS).map(|i| i.to_string()).collect();
    let params = BTreeMap::from([("all".to_string(), serde_json::to_string(&many).unwrap())]);
    let f = ForEach {
        param: Some("all".into()),
        ..for_each()
    };
    assert!(
        items(&f, &params, &BTreeMap::new())
            .unwrap_err()
            .contains("at most 128")
    );
}

#[test]
fn instances_start_within_the_cap() {
    let items = strings(&["a", "b", "c", "d"]);
    let all_new = vec![Instance::NotStarted; 4];
    assert_eq!(
        verdict(&items, &all_new, 0, Some(2)),
        Verdict::Going {
            start: vec![0, 1],
            message: "0 of 4 items succeeded, 2 running".into()
        }
    );
    let some = vec![
        Instance::Succeeded(BTreeMap::new()),
        Instance::Running,
        Instance::NotStarted,
        Instance::NotStarted,
    ];
    assert_eq!(
        verdict(&items, &some, 0, Some(2)),
        Verdict::Going {
            start: vec![2],
            message: "1 of 4 items succeeded, 2 running".into()
        }
    );
    // No cap: everything at once.
    assert!(matches!(
        verdict(&items, &all_new, 0, None),
        Verdict::Going { start, .. } if start == vec![0, 1, 2, 3]
    ));
}

#[test]
fn results_are_collected_in_item_order() {
    let items = strings(&["x", "y"]);
    let done = vec![
        Instance::Succeeded(BTreeMap::from([("score".into(), "1".into())])),
        Instance::Succeeded(BTreeMap::from([("score".into(), "2".into())])),
    ];
    let Verdict::Succeeded(outputs) = verdict(&items, &done, 0, None) else {
        panic!("succeeded");
    };
    assert_eq!(outputs[RESULTS_OUTPUT], r#"[{"score":"1"},{"score":"2"}]"#);
    assert_eq!(outputs["count"], "2");
    assert_eq!(outputs["failed"], "0");
}

#[test]
fn failures_fail_the_step_beyond_the_allowance() {
    let items = strings(&["x", "y", "z"]);
    let one_failed = vec![
        Instance::Failed("exit 1".into()),
        Instance::Running,
        Instance::Succeeded(BTreeMap::new()),
    ];
    assert_eq!(
        verdict(&items, &one_failed, 0, None),
        Verdict::Failed(
            "1 of 3 instances failed (at most 0 may): items 0; item 0 (\"x\"): exit 1".into()
        )
    );
    // Allowed: it goes on, then succeeds with a null result for the failure.
    assert!(matches!(
        verdict(&items, &one_failed, 1, None),
        Verdict::Going { .. }
    ));
    let finished = vec![
        Instance::Failed("exit 1".into()),
        Instance::Succeeded(BTreeMap::new()),
        Instance::Succeeded(BTreeMap::new()),
    ];
    let Verdict::Succeeded(outputs) = verdict(&items, &finished, 1, None) else {
        panic!("succeeded within the allowance");
    };
    assert_eq!(outputs[RESULTS_OUTPUT], "[null,{},{}]");
    assert_eq!(outputs["failed"], "1");
}

#[test]
fn instance_names_stay_valid() {
    assert_eq!(instance_job_name("run", "score", 1, 7), "run-score-1-7");
    let long = instance_job_name(&"r".repeat(80), "score", 2, 127);
    assert!(long.len() <= 63, "{long}");
    assert!(long.ends_with("-score-2-127"), "{long}");
}
