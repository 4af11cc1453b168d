use super::*;

fn model(yaml: &str) -> AIModel {
    serde_saphyr::from_str(yaml).unwrap()
}

const MODEL: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: AIModel
metadata: {name: m, namespace: ns, generation: 3}
spec:
  source: {uri: "s3://b/new"}
"#;

#[test]
fn a_model_is_ready_only_at_the_generation_of_the_rollout() {
    let mut m = model(MODEL);
    let err = model_ready(&m, 3).unwrap_err();
    assert!(err.contains("not observed generation 3"), "{err}");
    m = model(&format!(
        "{MODEL}status:\n  observedGeneration: 2\n  conditions:\n    - {{type: Ready, status: \"True\", reason: Serving, message: ok, lastTransitionTime: \"2026-01-01T00:00:00Z\"}}\n"
    ));
    assert!(model_ready(&m, 3).is_err(), "Ready for an older generation");
    m = model(&format!(
        "{MODEL}status:\n  observedGeneration: 3\n  conditions:\n    - {{type: Ready, status: \"False\", reason: Progressing, message: rolling, lastTransitionTime: \"2026-01-01T00:00:00Z\"}}\n"
    ));
    let err = model_ready(&m, 3).unwrap_err();
    assert!(
        err.contains("Progressing") && err.contains("rolling"),
        "{err}"
    );
    m = model(&format!(
        "{MODEL}status:\n  observedGeneration: 3\n  conditions:\n    - {{type: Ready, status: \"True\", reason: Serving, message: ok, lastTransitionTime: \"2026-01-01T00:00:00Z\", observedGeneration: 2}}\n"
    ));
    assert!(
        model_ready(&m, 3).is_err(),
        "a condition of an older generation"
    );
    m = model(&format!(
        "{MODEL}status:\n  observedGeneration: 4\n  conditions:\n    - {{type: Ready, status: \"True\", reason: Serving, message: ok, lastTransitionTime: \"2026-01-01T00:00:00Z\", observedGeneration: 4}}\n"
    ));
    assert_eq!(model_ready(&m, 3), Ok(()));
}

#[test]
fn rollout_sources_come_from_the_literal_or_the_training_output() {
    let params = BTreeMap::from([("v".to_string(), "7".to_string())]);
    let outputs = StepOutputs::from([(
        "train".to_string(),
        BTreeMap::from([(
            ARTIFACT_OUTPUT.to_string(),
            "s3://b/out/model.tar.gz".to_string(),
        )]),
    )]);
    let literal = RolloutAction {
        model: "m".into(),
        source: Some("hf://acme/model@v$(params.v)".into()),
        from_step: None,
        ready_timeout_seconds: 60,
    };
    assert_eq!(
        rollout_source(&literal, &params, &outputs).unwrap(),
        "hf://acme/model@v7"
    );
    let from = RolloutAction {
        source: None,
        from_step: Some("train".into()),
        ..literal.clone()
    };
    assert_eq!(
        rollout_source(&from, &params, &outputs).unwrap(),
        "s3://b/out/model.tar.gz"
    );
    let missing = RolloutAction {
        from_step: Some("prep".into()),
        ..from
    };
    let err = rollout_source(&missing, &params, &outputs).unwrap_err();
    assert!(err.contains("step prep has no artifactUri"), "{err}");
}

#[test]
fn rollouts_are_polled_often_then_less() {
    assert_eq!(rollout_poll(TimeDelta::seconds(0)), Duration::from_secs(2));
    assert_eq!(
        rollout_poll(TimeDelta::seconds(100)),
        Duration::from_secs(10)
    );
    assert_eq!(
        rollout_poll(TimeDelta::seconds(3600)),
        Duration::from_secs(30)
    );
}
