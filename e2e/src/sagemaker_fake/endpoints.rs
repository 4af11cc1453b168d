//! Models, EndpointConfigs and endpoints: create, describe (which moves an
//! endpoint along its lifecycle), update and delete.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::http::{ApiError, ApiResult};
use super::operations::{str_field, valid_name};
use super::state::{EndpointRec, Inner, Record, epoch};

/// SageMaker's answer about the missing `what` (`endpoint configuration`, say) `arn`.
fn missing(what: &str, arn: &str) -> ApiError {
    ApiError::validation(format!("Could not find {what} \"{arn}\"."))
}

/// The two kinds the fake keeps as [`Record`]s.
#[derive(Clone, Copy)]
enum Kind {
    Model,
    EndpointConfig,
}

impl Kind {
    /// The kind's part of an ARN.
    fn arn_kind(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::EndpointConfig => "endpoint-config",
        }
    }
}

impl Inner {
    /// The Records of `kind`.
    fn records(&self, kind: Kind) -> &BTreeMap<String, Record> {
        match kind {
            Kind::Model => &self.models,
            Kind::EndpointConfig => &self.configs,
        }
    }

    /// The Record `name` of `kind`, or SageMaker's answer that it is missing.
    fn record(&self, kind: Kind, name: &str) -> Result<&Record, ApiError> {
        self.records(kind)
            .get(name)
            .ok_or_else(|| self.not_found(kind.arn_kind(), name))
    }

    /// Stores the `kind` `name` that `input` creates, counts the create, and
    /// answers with its ARN under `arn_key`.
    fn insert_record(
        &mut self,
        kind: Kind,
        name: &str,
        arn: String,
        input: &Value,
        arn_key: &str,
    ) -> ApiResult {
        let (records, created) = match kind {
            Kind::Model => (&mut self.models, &mut self.counters.models_created),
            Kind::EndpointConfig => (
                &mut self.configs,
                &mut self.counters.endpoint_configs_created,
            ),
        };
        records.insert(name.to_string(), Record::new(arn.clone(), input));
        *created += 1;
        Ok(json!({ arn_key: arn }))
    }

    /// Deletes the `kind` named by the field `name_field` of `input`.
    fn delete_record(&mut self, kind: Kind, input: &Value, name_field: &str) -> ApiResult {
        let name = str_field(input, name_field)?;
        let records = match kind {
            Kind::Model => &mut self.models,
            Kind::EndpointConfig => &mut self.configs,
        };
        if records.remove(name).is_none() {
            return Err(self.not_found(kind.arn_kind(), name));
        }
        Ok(json!({}))
    }

    /// SageMaker's answer about the missing object `name` of the ARN kind
    /// `kind` (`model`, `endpoint-config` or `endpoint`).
    fn not_found(&self, kind: &str, name: &str) -> ApiError {
        let what = match kind {
            "endpoint-config" => "endpoint configuration",
            other => other,
        };
        missing(what, &self.arn(kind, name))
    }

    /// SageMaker's answer to a second create of `what` `arn`, counted.
    fn duplicate(&mut self, what: &str, arn: &str) -> ApiError {
        self.counters.duplicate_creates += 1;
        ApiError::validation(format!("Cannot create already existing {what} \"{arn}\"."))
    }

    pub(super) fn create_model(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "ModelName")?;
        valid_name("modelName", name)?;
        str_field(input, "ExecutionRoleArn")?;
        let arn = self.arn("model", name);
        if self.models.contains_key(name) {
            return Err(self.duplicate("model", &arn));
        }
        self.insert_record(Kind::Model, name, arn, input, "ModelArn")
    }

    pub(super) fn describe_model(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "ModelName")?;
        let model = self.record(Kind::Model, name)?;
        let mut out = json!({
            "ModelName": name,
            "ModelArn": model.arn,
            "CreationTime": model.created,
        });
        if let Some(map) = out.as_object_mut() {
            for key in [
                "PrimaryContainer",
                "Containers",
                "ExecutionRoleArn",
                "VpcConfig",
            ] {
                if let Some(v) = model.request.get(key) {
                    map.insert(key.into(), v.clone());
                }
            }
        }
        Ok(out)
    }

    pub(super) fn delete_model(&mut self, input: &Value) -> ApiResult {
        self.delete_record(Kind::Model, input, "ModelName")
    }

    // EndpointConfigs.

    pub(super) fn create_endpoint_config(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointConfigName")?;
        valid_name("endpointConfigName", name)?;
        let arn = self.arn("endpoint-config", name);
        if self.configs.contains_key(name) {
            return Err(self.duplicate("endpoint configuration", &arn));
        }
        let variants = input
            .get("ProductionVariants")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if variants.is_empty() {
            return Err(ApiError::validation(
                "ProductionVariants must have at least one element",
            ));
        }
        for variant in &variants {
            let model = variant
                .get("ModelName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !self.models.contains_key(model) {
                return Err(self.not_found("model", model));
            }
        }
        self.insert_record(Kind::EndpointConfig, name, arn, input, "EndpointConfigArn")
    }

    pub(super) fn describe_endpoint_config(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointConfigName")?;
        let config = self.record(Kind::EndpointConfig, name)?;
        Ok(json!({
            "EndpointConfigName": name,
            "EndpointConfigArn": config.arn,
            "ProductionVariants": config.request.get("ProductionVariants").cloned().unwrap_or(json!([])),
            "CreationTime": config.created,
        }))
    }

    pub(super) fn delete_endpoint_config(&mut self, input: &Value) -> ApiResult {
        self.delete_record(Kind::EndpointConfig, input, "EndpointConfigName")
    }

    /// Whether a config's Models carry the failure marker.
    fn config_fails(&self, config: &str) -> bool {
        let marker = &self.config.failure_marker;
        let Some(config) = self.configs.get(config) else {
            return false;
        };
        let variants = config
            .request
            .get("ProductionVariants")
            .and_then(Value::as_array);
        variants.into_iter().flatten().any(|v| {
            let model = v
                .get("ModelName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.models
                .get(model)
                .and_then(|m| {
                    m.request
                        .pointer("/PrimaryContainer/Image")
                        .and_then(Value::as_str)
                })
                .is_some_and(|image| !marker.is_empty() && image.contains(marker.as_str()))
        })
    }

    // Endpoints.

    pub(super) fn create_endpoint(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointName")?;
        valid_name("endpointName", name)?;
        let config = str_field(input, "EndpointConfigName")?;
        let arn = self.arn("endpoint", name);
        if self.endpoints.contains_key(name) {
            return Err(self.duplicate("endpoint", &arn));
        }
        if !self.configs.contains_key(config) {
            return Err(self.not_found("endpoint-config", config));
        }
        let now = epoch();
        self.endpoints.insert(
            name.to_string(),
            EndpointRec {
                arn: arn.clone(),
                config: config.to_string(),
                pending: None,
                status: "Creating",
                describes: 0,
                failure_reason: None,
                created: now,
                modified: now,
            },
        );
        self.counters.endpoints_created += 1;
        Ok(json!({"EndpointArn": arn}))
    }

    pub(super) fn describe_endpoint(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointName")?;
        let creating = self.config.endpoint_creating_describes;
        let updating = self.config.endpoint_updating_describes;
        let deleting = self.config.endpoint_deleting_describes;
        let Some(status) = self.endpoints.get(name).map(|e| e.status) else {
            return Err(self.not_found("endpoint", name));
        };
        let (config, pending) = match self.endpoints.get(name) {
            Some(e) => (e.config.clone(), e.pending.clone()),
            None => return Err(ApiError::validation("Requested resource not found.")),
        };
        let fails_now = self.config_fails(pending.as_deref().unwrap_or(&config));
        let mut gone = false;
        if let Some(e) = self.endpoints.get_mut(name) {
            match status {
                "Creating" => {
                    e.describes += 1;
                    if e.describes > creating {
                        e.modified = epoch();
                        if fails_now {
                            e.status = "Failed";
                            e.failure_reason = Some(
                                "The primary container for production variant AllTraffic did not pass the ping health check."
                                    .into(),
                            );
                        } else {
                            e.status = "InService";
                        }
                    }
                }
                "Updating" => {
                    e.describes += 1;
                    if e.describes > updating {
                        e.modified = epoch();
                        e.status = "InService";
                        if fails_now {
                            e.failure_reason = Some(
                                "Failed to update endpoint: the new production variant did not pass the ping health check; rolled back."
                                    .into(),
                            );
                        } else if let Some(p) = e.pending.clone() {
                            e.config = p;
                            e.failure_reason = None;
                        }
                        e.pending = None;
                    }
                }
                "Deleting" => {
                    e.describes += 1;
                    gone = e.describes > deleting;
                }
                _ => {}
            }
        }
        if gone {
            self.endpoints.remove(name);
            return Err(self.not_found("endpoint", name));
        }
        let Some(e) = self.endpoints.get(name) else {
            return Err(ApiError::validation("Requested resource not found."));
        };
        let mut out = json!({
            "EndpointName": name,
            "EndpointArn": e.arn,
            "EndpointConfigName": e.config,
            "EndpointStatus": e.status,
            "CreationTime": e.created,
            "LastModifiedTime": e.modified,
        });
        if let Some(map) = out.as_object_mut() {
            if let Some(reason) = &e.failure_reason {
                map.insert("FailureReason".into(), json!(reason));
            }
            if let Some(pending) = &e.pending {
                map.insert(
                    "PendingDeploymentSummary".into(),
                    json!({"EndpointConfigName": pending, "StartTime": e.modified}),
                );
            }
        }
        Ok(out)
    }

    pub(super) fn update_endpoint(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointName")?;
        let config = str_field(input, "EndpointConfigName")?;
        let endpoint_arn = self.arn("endpoint", name);
        let config_arn = self.arn("endpoint-config", config);
        let config_exists = self.configs.contains_key(config);
        let Some(e) = self.endpoints.get_mut(name) else {
            return Err(missing("endpoint", &endpoint_arn));
        };
        match e.status {
            "InService" | "OutOfService" => {}
            "Failed" => {
                return Err(ApiError::validation(format!(
                    "Cannot update failed endpoint \"{endpoint_arn}\"."
                )));
            }
            _ => {
                return Err(ApiError::validation(format!(
                    "Cannot update in-progress endpoint \"{endpoint_arn}\"."
                )));
            }
        }
        if !config_exists {
            return Err(missing("endpoint configuration", &config_arn));
        }
        e.status = "Updating";
        e.pending = Some(config.to_string());
        e.describes = 0;
        e.modified = epoch();
        let arn = e.arn.clone();
        self.counters.endpoint_updates += 1;
        Ok(json!({"EndpointArn": arn}))
    }

    pub(super) fn delete_endpoint(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointName")?;
        let immediate = self.config.endpoint_deleting_describes == 0;
        let arn = self.arn("endpoint", name);
        let Some(e) = self.endpoints.get_mut(name) else {
            return Err(missing("endpoint", &arn));
        };
        if immediate {
            self.endpoints.remove(name);
        } else {
            e.status = "Deleting";
            e.describes = 0;
        }
        Ok(json!({}))
    }
}
