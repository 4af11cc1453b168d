//! Training jobs: CreateTrainingJob, DescribeTrainingJob (which moves a job
//! along its lifecycle) and StopTrainingJob.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::http::{ApiError, ApiResult};
use super::operations::{str_field, tags_of, valid_name};
use super::state::{Inner, Job, epoch};
use super::{FAILURE_REASON_TAG, OUTCOME_TAG};

impl Inner {
    pub(super) fn create_training_job(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "TrainingJobName")?;
        valid_name("trainingJobName", name)?;
        str_field(input, "RoleArn")?;
        let image = input
            .pointer("/AlgorithmSpecification/TrainingImage")
            .and_then(Value::as_str);
        if image.is_none_or(str::is_empty) {
            return Err(ApiError::validation(
                "AlgorithmSpecification.TrainingImage is required",
            ));
        }
        for (pointer, message) in [
            (
                "/OutputDataConfig/S3OutputPath",
                "OutputDataConfig.S3OutputPath is required",
            ),
            (
                "/ResourceConfig/InstanceType",
                "ResourceConfig.InstanceType is required",
            ),
        ] {
            if input.pointer(pointer).and_then(Value::as_str).is_none() {
                return Err(ApiError::validation(message));
            }
        }
        let arn = self.arn("training-job", name);
        if self.jobs.contains_key(name) {
            self.counters.duplicate_creates += 1;
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "ResourceInUse",
                format!(
                    "Training job names must be unique within an AWS account and region, and a training job with this name already exists ({arn})"
                ),
            ));
        }
        let tags = tags_of(input);
        let hyper = |key: &str| {
            input
                .get("HyperParameters")
                .and_then(|h| h.get(key))
                .and_then(Value::as_str)
        };
        let outcome = tags
            .get(OUTCOME_TAG)
            .map(String::as_str)
            .or_else(|| hyper(OUTCOME_TAG));
        let reason = tags
            .get(FAILURE_REASON_TAG)
            .map(String::as_str)
            .or_else(|| hyper(FAILURE_REASON_TAG));
        let fail = outcome == Some("fail");
        let failure_reason = fail.then(|| {
            reason.map_or_else(
                || "AlgorithmError: the training script exited with status 1".to_string(),
                str::to_string,
            )
        });
        self.jobs.insert(
            name.to_string(),
            Job {
                arn: arn.clone(),
                request: input.clone(),
                status: "InProgress",
                secondary: "Starting",
                describes: 0,
                stop_describes: 0,
                created: epoch(),
                started: Instant::now(),
                ended: None,
                fail,
                failure_reason,
                tags,
            },
        );
        self.counters.training_jobs_created += 1;
        Ok(json!({"TrainingJobArn": arn}))
    }

    pub(super) fn describe_training_job(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "TrainingJobName")?;
        let training_describes = self.config.training_describes;
        let min = Duration::from_millis(self.config.training_min_millis);
        let stopping_describes = self.config.stopping_describes;
        let Some(job) = self.jobs.get_mut(name) else {
            return Err(ApiError::validation("Requested resource not found."));
        };
        match job.status {
            "InProgress" => {
                job.describes += 1;
                job.secondary = "Training";
                if job.describes > training_describes && job.started.elapsed() >= min {
                    job.ended = Some(epoch());
                    if job.fail {
                        job.status = "Failed";
                        job.secondary = "Failed";
                    } else {
                        job.status = "Completed";
                        job.secondary = "Completed";
                    }
                }
            }
            "Stopping" => {
                job.stop_describes += 1;
                if job.stop_describes > stopping_describes {
                    job.status = "Stopped";
                    job.secondary = "Stopped";
                    job.ended = Some(epoch());
                }
            }
            _ => {}
        }
        let request = &job.request;
        let mut out = json!({
            "TrainingJobName": name,
            "TrainingJobArn": job.arn,
            "TrainingJobStatus": job.status,
            "SecondaryStatus": job.secondary,
            "AlgorithmSpecification": request.get("AlgorithmSpecification").cloned().unwrap_or(Value::Null),
            "RoleArn": request.get("RoleArn").cloned().unwrap_or(Value::Null),
            "OutputDataConfig": request.get("OutputDataConfig").cloned().unwrap_or(Value::Null),
            "ResourceConfig": request.get("ResourceConfig").cloned().unwrap_or(Value::Null),
            "StoppingCondition": request.get("StoppingCondition").cloned().unwrap_or(Value::Null),
            "CreationTime": job.created,
            "TrainingStartTime": job.created,
            "LastModifiedTime": epoch(),
        });
        if let Some(map) = out.as_object_mut() {
            map.retain(|_, v| !v.is_null());
            for key in ["HyperParameters", "InputDataConfig", "VpcConfig"] {
                if let Some(v) = request.get(key) {
                    map.insert(key.into(), v.clone());
                }
            }
            if job.status == "Completed" {
                let output = request
                    .pointer("/OutputDataConfig/S3OutputPath")
                    .and_then(Value::as_str)
                    .unwrap_or("s3://fake")
                    .trim_end_matches('/');
                map.insert(
                    "ModelArtifacts".into(),
                    json!({"S3ModelArtifacts": format!("{output}/{name}/output/model.tar.gz")}),
                );
            }
            if job.status == "Failed"
                && let Some(reason) = &job.failure_reason
            {
                map.insert("FailureReason".into(), json!(reason));
            }
            if let Some(ended) = job.ended {
                map.insert("TrainingEndTime".into(), json!(ended));
            }
        }
        Ok(out)
    }

    pub(super) fn stop_training_job(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "TrainingJobName")?;
        let Some(job) = self.jobs.get_mut(name) else {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "ResourceNotFound",
                "Requested resource not found.".into(),
            ));
        };
        if job.status != "InProgress" {
            return Err(ApiError::validation(format!(
                "The request was rejected because the training job is in status {}.",
                job.status
            )));
        }
        job.status = "Stopping";
        job.secondary = "Stopping";
        self.counters.training_jobs_stopped += 1;
        Ok(json!({}))
    }
}
