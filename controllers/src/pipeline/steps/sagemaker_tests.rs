use super::*;
use serde_json::json;

#[test]
fn training_hyperparameters_are_substituted() {
    let spec: SageMakerTraining = serde_json::from_value(json!({
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/xgb:1",
        "roleArn": "arn:aws:iam::123456789012:role/sm",
        "instanceType": "ml.m5.large",
        "outputS3Uri": "s3://b/out",
        "hyperparameters": {"rounds": "$(params.rounds)", "eta": "0.1"},
    }))
    .unwrap();
    let params = BTreeMap::from([("rounds".to_string(), "50".to_string())]);
    let done = substituted_training(&spec, &params, &StepOutputs::new()).unwrap();
    assert_eq!(done.hyperparameters["rounds"], "50");
    assert_eq!(done.hyperparameters["eta"], "0.1");
    assert!(substituted_training(&spec, &BTreeMap::new(), &StepOutputs::new()).is_err());
}
