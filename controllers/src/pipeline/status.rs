//! What became of a step's Job: still running, succeeded with these outputs,
//! or failed for this reason. Pure: reads the Job and its pods as listed.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};

use super::artifacts::{FETCH_CONTAINER, REF_PREFIX, UPLOAD_CONTAINER};
use super::build::{STEP_CONTAINER, parse_outputs};
use crate::workload::job_condition;

/// The most of a container's message quoted in a step's status.
const MAX_QUOTED: usize = 256;

/// Where an attempt's Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Still running; the message says what it waits for, when something is
    /// worth saying (a pod that cannot be scheduled, an image that cannot be pulled).
    Running(Option<String>),
    /// Succeeded with these outputs.
    Succeeded(BTreeMap<String, String>),
    /// Failed; why.
    Failed(String),
}

/// The pod's container statuses, init containers first (a step with
/// artifacts runs its step container as an init container).
fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    pod.status.iter().flat_map(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
    })
}

fn terminated(c: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    c.state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
}

fn container_terminated<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStateTerminated> {
    statuses(pod).find(|c| c.name == name).and_then(terminated)
}

/// What a container of the pod other than the step's own did, in a failure.
fn helper_role(name: &str) -> &'static str {
    match name {
        FETCH_CONTAINER => "preparing the artifacts failed: ",
        UPLOAD_CONTAINER => "uploading the artifacts failed: ",
        _ => "",
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn quote(text: &str) -> String {
    let text = text.trim();
    if text.len() <= MAX_QUOTED {
        return text.to_string();
    }
    let mut cut = MAX_QUOTED;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Why a failed attempt failed, from its pods (the step container's exit
/// code, reason and message) or else from the Job's Failed condition.
fn failure(job_reason: &str, job_message: &str, pods: &[Pod], timeout: Option<i64>) -> String {
    if job_reason == "DeadlineExceeded" {
        return match timeout {
            Some(seconds) => format!("timed out after {seconds}s (the step's timeoutSeconds)"),
            None => "timed out (the Job's active deadline passed)".to_string(),
        };
    }
    let failed = pods
        .iter()
        .filter(|p| phase(p) == "Failed")
        .chain(pods.iter())
        .find_map(|p| {
            statuses(p).find_map(|c| {
                terminated(c)
                    .filter(|t| t.exit_code != 0)
                    .map(|t| (helper_role(&c.name), t))
            })
        });
    if let Some((role, t)) = failed {
        let mut text = format!("{role}exit code {}", t.exit_code);
        if let Some(reason) = t.reason.as_deref().filter(|r| !r.is_empty()) {
            text.push_str(&format!(" ({reason})"));
        }
        if let Some(message) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
            text.push_str(&format!(": {}", quote(message)));
        }
        return text;
    }
    // A pod that never started a container (evicted, deleted) says why in its status.
    if let Some(status) = pods
        .iter()
        .filter(|p| phase(p) == "Failed")
        .find_map(|p| p.status.as_ref())
        && let Some(reason) = status.reason.as_deref()
    {
        let message = status.message.as_deref().map(quote).unwrap_or_default();
        return format!("the pod failed ({reason}) {message}")
            .trim_end()
            .to_string();
    }
    match (job_reason.is_empty(), job_message.is_empty()) {
        (false, false) => format!("the Job failed ({job_reason}): {}", quote(job_message)),
        (false, true) => format!("the Job failed ({job_reason})"),
        _ => "the Job failed".to_string(),
    }
}

/// Why a running attempt is not making progress, if its pod says so.
fn waiting(pods: &[Pod]) -> Option<String> {
    for pod in pods {
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        {
            return Some(format!(
                "the pod cannot be scheduled ({}): {}",
                c.reason.as_deref().unwrap_or("Unschedulable"),
                quote(c.message.as_deref().unwrap_or_default())
            ));
        }
        let waiting = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
            .filter_map(|c| c.state.as_ref().and_then(|s| s.waiting.as_ref()))
            .find(|w| {
                matches!(
                    w.reason.as_deref(),
                    Some(
                        "ErrImagePull"
                            | "ImagePullBackOff"
                            | "InvalidImageName"
                            | "CreateContainerConfigError"
                            | "CreateContainerError"
                    )
                )
            });
        if let Some(w) = waiting {
            return Some(format!(
                "the container cannot start ({}): {}",
                w.reason.as_deref().unwrap_or_default(),
                quote(w.message.as_deref().unwrap_or_default())
            ));
        }
    }
    None
}

/// Reads an attempt's Job and its pods. `timeout` is the step's
/// `timeoutSeconds`, for the message of a Job that ran out of time.
pub fn job_outcome(job: &Job, pods: &[Pod], timeout: Option<i64>) -> JobOutcome {
    let succeeded = job_condition(job, "Complete").is_some()
        || (job_condition(job, "Failed").is_none()
            && job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0
            && job
                .status
                .as_ref()
                .is_some_and(|s| s.completion_time.is_some()));
    if succeeded {
        let done = pods.iter().find(|p| phase(p) == "Succeeded");
        let message = |name: &str| {
            done.and_then(|p| container_terminated(p, name))
                .and_then(|t| t.message.as_deref())
                .unwrap_or_default()
        };
        return match parse_outputs(message(STEP_CONTAINER)) {
            Ok(mut outputs) => {
                // Artifact references come from the uploader only.
                outputs.retain(|key, _| !key.starts_with(REF_PREFIX));
                let uploaded = parse_outputs(message(UPLOAD_CONTAINER)).unwrap_or_default();
                outputs.extend(
                    uploaded
                        .into_iter()
                        .filter(|(key, _)| key.starts_with(REF_PREFIX)),
                );
                JobOutcome::Succeeded(outputs)
            }
            Err(e) => JobOutcome::Failed(e.to_string()),
        };
    }
    if let Some((reason, message)) = job_condition(job, "Failed") {
        return JobOutcome::Failed(failure(reason, message, pods, timeout));
    }
    JobOutcome::Running(waiting(pods))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job(yaml: &str) -> Job {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const COMPLETE: &str = r#"
metadata: {name: r-a-1}
status:
  succeeded: 1
  completionTime: "2026-01-01T00:00:05Z"
  conditions:
    - {type: SuccessCriteriaMet, status: "True"}
    - {type: Complete, status: "True"}
"#;

    const FAILED: &str = r#"
metadata: {name: r-a-1}
status:
  failed: 1
  conditions:
    - {type: FailureTarget, status: "True", reason: BackoffLimitExceeded}
    - {type: Failed, status: "True", reason: BackoffLimitExceeded, message: Job has reached the specified backoff limit}
"#;

    fn terminated_pod(phase: &str, code: i32, reason: &str, message: &str) -> Pod {
        pod(&format!(
            r#"
metadata: {{name: p}}
status:
  phase: {phase}
  containerStatuses:
    - name: step
      image: busybox
      imageID: ""
      ready: false
      restartCount: 0
      state:
        terminated: {{exitCode: {code}, reason: {reason}, message: {message:?}}}
"#
        ))
    }

    #[test]
    fn a_complete_job_gives_the_outputs_of_its_pod() {
        let pods = [terminated_pod(
            "Succeeded",
            0,
            "Completed",
            "accuracy=0.93\nmodel=s3://b/m.tar.gz\n",
        )];
        assert_eq!(
            job_outcome(&job(COMPLETE), &pods, None),
            JobOutcome::Succeeded(BTreeMap::from([
                ("accuracy".into(), "0.93".into()),
                ("model".into(), "s3://b/m.tar.gz".into()),
            ]))
        );
        assert_eq!(
            job_outcome(&job(COMPLETE), &[], None),
            JobOutcome::Succeeded(BTreeMap::new()),
            "no pod left: no outputs"
        );
    }

    /// A pod of a step with artifacts: the step ran as an init container,
    /// then the uploader ended with `upload` (exit code, message).
    fn artifact_pod(phase: &str, step_message: &str, upload: (i32, &str)) -> Pod {
        let status = |name: &str, code: i32, message: &str| {
            format!(
                "    - {{name: {name}, image: i, imageID: \"\", ready: false, restartCount: 0, state: {{terminated: {{exitCode: {code}, message: {message:?}}}}}}}\n"
            )
        };
        pod(&format!(
            "metadata: {{name: p}}\nstatus:\n  phase: {phase}\n  initContainerStatuses:\n{}{}  containerStatuses:\n{}",
            status("aleph-fetch", 0, ""),
            status("step", 0, step_message),
            status("aleph-upload", upload.0, upload.1),
        ))
    }

    #[test]
    fn a_step_with_artifacts_gives_its_outputs_and_the_uploaders_references() {
        let reference = r#"{"name":"model","uri":"s3://b/k","sha256":"00","size":1}"#;
        let pods = [artifact_pod(
            "Succeeded",
            "rows=3\naleph-artifact-fake=forged\n",
            (0, &format!("aleph-artifact-model={reference}\nother=x\n")),
        )];
        assert_eq!(
            job_outcome(&job(COMPLETE), &pods, None),
            JobOutcome::Succeeded(BTreeMap::from([
                ("aleph-artifact-model".into(), reference.into()),
                ("rows".into(), "3".into()),
            ])),
            "references come from the uploader only, and only references from it"
        );
        let pods = [artifact_pod(
            "Failed",
            "rows=3\n",
            (1, "the step wrote no file /out/model.bin (artifact model)"),
        )];
        assert_eq!(
            job_outcome(&job(FAILED), &pods, None),
            JobOutcome::Failed(
                "uploading the artifacts failed: exit code 1: the step wrote no file /out/model.bin (artifact model)".into()
            )
        );
    }

    #[test]
    fn outputs_that_may_have_been_cut_fail_the_step() {
        let big = format!("k={}", "x".repeat(5000));
        let pods = [terminated_pod("Succeeded", 0, "Completed", &big)];
        match job_outcome(&job(COMPLETE), &pods, None) {
            JobOutcome::Failed(m) => assert!(m.contains("bytes of outputs"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_job_says_how_its_container_ended() {
        let pods = [terminated_pod(
            "Failed",
            137,
            "OOMKilled",
            "ran out of memory",
        )];
        assert_eq!(
            job_outcome(&job(FAILED), &pods, Some(60)),
            JobOutcome::Failed("exit code 137 (OOMKilled): ran out of memory".into())
        );
        assert_eq!(
            job_outcome(&job(FAILED), &[], None),
            JobOutcome::Failed(
                "the Job failed (BackoffLimitExceeded): Job has reached the specified backoff limit"
                    .into()
            )
        );
    }

    #[test]
    fn a_job_past_its_deadline_timed_out() {
        let timed_out = job(r#"
metadata: {name: r-a-1}
status:
  conditions:
    - {type: Failed, status: "True", reason: DeadlineExceeded, message: Job was active longer than specified deadline}
"#);
        assert_eq!(
            job_outcome(&timed_out, &[], Some(30)),
            JobOutcome::Failed("timed out after 30s (the step's timeoutSeconds)".into())
        );
    }

    #[test]
    fn a_running_job_says_what_blocks_it() {
        let running = job("metadata: {name: r-a-1}\nstatus: {active: 1}\n");
        assert_eq!(job_outcome(&running, &[], None), JobOutcome::Running(None));
        let unschedulable = pod(r#"
metadata: {name: p}
status:
  phase: Pending
  conditions:
    - {type: PodScheduled, status: "False", reason: Unschedulable, message: "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."}
"#);
        match job_outcome(&running, &[unschedulable], None) {
            JobOutcome::Running(Some(m)) => {
                assert!(
                    m.contains("cannot be scheduled") && m.contains("nvidia.com/gpu"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        let pull = pod(r#"
metadata: {name: p}
status:
  phase: Pending
  containerStatuses:
    - name: step
      image: nope
      imageID: ""
      ready: false
      restartCount: 0
      state:
        waiting: {reason: ImagePullBackOff, message: "Back-off pulling image nope"}
"#);
        match job_outcome(&running, &[pull], None) {
            JobOutcome::Running(Some(m)) => assert!(m.contains("ImagePullBackOff"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_messages_are_cut() {
        let pods = [terminated_pod("Failed", 1, "Error", &"e".repeat(2000))];
        match job_outcome(&job(FAILED), &pods, None) {
            JobOutcome::Failed(m) => assert!(m.len() < 300, "{}", m.len()),
            other => panic!("{other:?}"),
        }
    }
}
