//! The SageMaker operations: the dispatch by name, the lists, and what the
//! operations share in checking their input.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::http::{ApiError, ApiResult};
use super::state::Inner;

pub(super) fn str_field<'a>(input: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    input
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::validation(format!("1 validation error detected: Value null at '{key}' failed to satisfy constraint: Member must not be null")))
}

pub(super) fn valid_name(key: &str, name: &str) -> Result<(), ApiError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "1 validation error detected: Value '{name}' at '{key}' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,62}}"
        )))
    }
}

pub(super) fn tags_of(input: &Value) -> BTreeMap<String, String> {
    input
        .get("Tags")
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(|t| {
                    Some((
                        t.get("Key")?.as_str()?.to_string(),
                        t.get("Value")?.as_str().unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Inner {
    pub(super) fn dispatch(&mut self, operation: &str, input: &Value) -> ApiResult {
        match operation {
            "CreateTrainingJob" => self.create_training_job(input),
            "DescribeTrainingJob" => self.describe_training_job(input),
            "StopTrainingJob" => self.stop_training_job(input),
            "CreateModel" => self.create_model(input),
            "DescribeModel" => self.describe_model(input),
            "DeleteModel" => self.delete_model(input),
            "ListModels" => Ok(self.list("Models", "ModelName", "ModelArn", input)),
            "CreateEndpointConfig" => self.create_endpoint_config(input),
            "DescribeEndpointConfig" => self.describe_endpoint_config(input),
            "DeleteEndpointConfig" => self.delete_endpoint_config(input),
            "ListEndpointConfigs" => Ok(self.list(
                "EndpointConfigs",
                "EndpointConfigName",
                "EndpointConfigArn",
                input,
            )),
            "CreateEndpoint" => self.create_endpoint(input),
            "DescribeEndpoint" => self.describe_endpoint(input),
            "UpdateEndpoint" => self.update_endpoint(input),
            "DeleteEndpoint" => self.delete_endpoint(input),
            other => Err(ApiError(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                format!("the fake does not implement {other}"),
            )),
        }
    }

    /// ListModels and ListEndpointConfigs: every match in one page.
    fn list(&self, key: &str, name_key: &str, arn_key: &str, input: &Value) -> Value {
        let contains = input
            .get("NameContains")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let items: Vec<(&String, &String, f64)> = if key == "Models" {
            self.models
                .iter()
                .map(|(n, m)| (n, &m.arn, m.created))
                .collect()
        } else {
            self.configs
                .iter()
                .map(|(n, c)| (n, &c.arn, c.created))
                .collect()
        };
        let list: Vec<Value> = items
            .into_iter()
            .filter(|(name, _, _)| name.contains(contains))
            .map(|(name, arn, created)| json!({name_key: name, arn_key: arn, "CreationTime": created}))
            .collect();
        json!({ key: list })
    }
}
