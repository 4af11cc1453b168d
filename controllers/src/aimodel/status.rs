//! The Ready, Progressing and Degraded conditions of a model served on the
//! cluster, from what was observed: its caches, Deployments and pods. No client.
//!
//! Reasons a user can act on, most specific first:
//! - Degraded: `ModelDownloadFailed`, `QuotaExceeded`, `AdmissionDenied`,
//!   `PodCreationFailed`, `Unschedulable`, `ImagePullFailed`,
//!   `ContainerConfigError`, `RuntimeCrashLooping` (with the exit code and the
//!   end of the container's log), `RuntimeOOMKilled`, `RolloutStalled`;
//! - Progressing: `DownloadingModel`, `RollingOut`;
//! - Ready: `Serving`, or False with the reason above (or `ScaledToZero`).

use aleph_crds::aimodel::AIModelStatus;
use aleph_crds::common::ConditionStatus;
use aleph_crds::conditions::{DEGRADED, PROGRESSING, READY};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::build::Track;
use super::cache::CacheState;
use crate::conditions::{NewCondition, set_condition};
use crate::lean::ServingPod;

/// What was observed of one serving track.
#[derive(Clone, Debug)]
pub struct TrackObservation<'a> {
    /// Stable or canary.
    pub track: Track,
    /// Its Deployment, as last read or applied.
    pub deployment: Option<&'a Deployment>,
    /// Its cache, when it has one.
    pub cache: Option<CacheState>,
    /// Whether the Deployment matches the spec (it waits for a download otherwise).
    pub up_to_date: bool,
}

/// What was observed of a model's serving side.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// GPUs per replica.
    pub gpus: i32,
    /// The GPU product asked for.
    pub gpu_product: Option<&'a str>,
    /// The tracks, stable first.
    pub tracks: Vec<TrackObservation<'a>>,
    /// The model's serving pods.
    pub pods: &'a [ServingPod],
    /// Where the model answers.
    pub url: &'a str,
    /// Whether the autoscaler stops the last replica when no request comes.
    pub scales_to_zero: bool,
}

/// The conditions and replica counts of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// Ready.
    pub ready: NewCondition,
    /// Progressing.
    pub progressing: NewCondition,
    /// Degraded.
    pub degraded: NewCondition,
    /// Desired serving replicas over all tracks.
    pub replicas: i32,
    /// Ready serving replicas over all tracks.
    pub ready_replicas: i32,
}

/// A Deployment's rollout: replicas wanted, ready, and whether it is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rollout {
    desired: i32,
    ready: i32,
    complete: bool,
}

fn rollout(deployment: &Deployment) -> Rollout {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let observed = match (status.observed_generation, deployment.metadata.generation) {
        (Some(seen), Some(generation)) => seen >= generation,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    let ready = status.ready_replicas.unwrap_or(0);
    let complete = observed
        && status.updated_replicas.unwrap_or(0) >= desired
        && status.replicas.unwrap_or(0) <= desired
        && status.available_replicas.unwrap_or(0) >= desired;
    Rollout {
        desired,
        ready,
        complete,
    }
}

fn deployment_condition<'a>(
    deployment: &'a Deployment,
    type_: &str,
    status: &str,
) -> Option<(&'a str, &'a str)> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| {
            (
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or(""),
            )
        })
}

/// Why the API server refused the Deployment's pods, from its ReplicaFailure condition.
fn refusal(deployment: &Deployment) -> Option<(&'static str, String)> {
    let (_, message) = deployment_condition(deployment, "ReplicaFailure", "True")?;
    let lower = message.to_ascii_lowercase();
    Some(
        if lower.contains("exceeded quota") || lower.contains("must specify limits") {
            (
                "QuotaExceeded",
                format!(
                    "the namespace's quota refuses the serving pods: {message}. Lower spec.resources or the replicas, or ask the tenant's owners to raise its quota"
                ),
            )
        } else if lower.contains("denied") || lower.contains("forbidden") {
            (
                "AdmissionDenied",
                format!(
                    "an admission policy refuses the serving pods: {message}. Change the spec to follow the policy"
                ),
            )
        } else {
            (
                "PodCreationFailed",
                format!("the serving pods cannot be created: {message}"),
            )
        },
    )
}

fn is_live(pod: &ServingPod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn pod_name(pod: &ServingPod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}

/// The scheduler's refusal of a pending pod, if any.
fn unschedulable(pod: &ServingPod) -> Option<&str> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.as_deref().unwrap_or(""))
}

/// The message of an unschedulable serving pod: what it needs, then the scheduler's words.
pub fn unschedulable_message(
    gpus: i32,
    gpu_product: Option<&str>,
    pod: &str,
    scheduler: &str,
) -> String {
    let about_gpus = scheduler.contains("nvidia.com/gpu")
        || scheduler.contains("node affinity/selector")
        || scheduler.contains("untolerated taint");
    if gpus > 0 && about_gpus {
        let what = match gpu_product {
            Some(product) => format!("{gpus} x {product}"),
            None => gpus.to_string(),
        };
        format!(
            "needs {what} GPUs; no node has them free (pod {pod}: {scheduler}). Lower spec.resources.gpus, free GPUs, or add nodes with them"
        )
    } else {
        format!("no node can run the serving pod {pod}: {scheduler}")
    }
}

/// How many of the log's last lines a message quotes.
const LOG_TAIL_LINES: usize = 8;
/// At most this many characters of them.
const LOG_TAIL_CHARS: usize = 1000;

/// The end of a termination message (with `FallbackToLogsOnError`, the last
/// lines of the container's log): its last non-empty lines, on one line.
pub fn log_tail(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ");
    match tail.char_indices().rev().nth(LOG_TAIL_CHARS) {
        // Keep the end, where the cause usually is.
        Some((cut, _)) => format!("…{}", &tail[cut..]),
        None => tail,
    }
}

/// The memory limit of container `name` in `pod`, if it has one.
fn memory_limit<'a>(pod: &'a ServingPod, name: &str) -> Option<&'a str> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)?
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")
        .map(|q| q.0.as_str())
}

/// A serving container that crashed, from how its last run ended: exit code,
/// the kubelet's reason and the end of its log. `None` while it has not
/// crashed, or runs ready again.
fn crash(pod: &ServingPod, status: &ContainerStatus) -> Option<(&'static str, String)> {
    let state = status.state.as_ref()?;
    let looping = state
        .waiting
        .as_ref()
        .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
    // The run that just ended (before the kubelet restarts it), or the one before.
    let just_failed = state.terminated.as_ref().filter(|t| t.exit_code != 0);
    // Between restarts a crashing container runs, not ready, for a while: its
    // last run still explains why the model is not serving.
    let restarted_unready = status.restart_count > 0 && !status.ready;
    if !(looping || just_failed.is_some() || restarted_unready) {
        return None;
    }
    let ended = just_failed.or_else(|| status.last_state.as_ref()?.terminated.as_ref())?;
    let name = &status.name;
    let pod_name = pod_name(pod);
    let restarts = status.restart_count;
    let times = match restarts {
        0 => String::new(),
        1 => ", restarted once".to_string(),
        n => format!(", restarted {n} times"),
    };
    let code = ended.exit_code;
    if ended.reason.as_deref() == Some("OOMKilled") {
        let limit = memory_limit(pod, name)
            .map(|l| format!(" of {l}"))
            .unwrap_or_default();
        return Some((
            "RuntimeOOMKilled",
            format!(
                "the {name} container of pod {pod_name} ran out of memory and was killed (OOMKilled, exit code {code}{times}) under its memory limit{limit}: raise spec.resources.memory, or make the engine allocate less (a smaller context or fewer parallel slots in runtime.args)"
            ),
        ));
    }
    let why = match ended.reason.as_deref() {
        Some(reason) if !reason.is_empty() => format!("exit code {code}, {reason}"),
        _ => format!("exit code {code}"),
    };
    let log = ended
        .message
        .as_deref()
        .map(log_tail)
        .filter(|t| !t.is_empty())
        .map(|t| format!("; the end of its log: {t}"))
        .unwrap_or_else(|| format!("; see `kubectl logs {pod_name} -c {name} --previous`"));
    let verb = if restarts == 0 {
        "crashed"
    } else {
        "keeps crashing"
    };
    Some((
        "RuntimeCrashLooping",
        format!("the {name} container of pod {pod_name} {verb} (last {why}{times}){log}"),
    ))
}

/// A container's problem that waiting will not fix: a reason and a message.
fn container_problem(
    pod: &ServingPod,
    status: &ContainerStatus,
    init: bool,
) -> Option<(&'static str, String)> {
    let name = &status.name;
    let pod_name = pod_name(pod);
    if !init && let Some(problem) = crash(pod, status) {
        return Some(problem);
    }
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or("");
    match reason {
        "CrashLoopBackOff" if init => {
            let exit = status
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| format!(", last exit code {}", t.exit_code))
                .unwrap_or_default();
            Some((
                "ModelDownloadFailed",
                format!(
                    "downloading the weights in pod {pod_name} keeps failing ({} restarts{exit}): see `kubectl logs {pod_name} -c {name}`; fix the source or its credentials",
                    status.restart_count
                ),
            ))
        }
        _ => crate::workload::waiting_problem(pod_name, status),
    }
}

/// Why `pod` cannot start its containers (an image it cannot pull, a Secret or
/// ConfigMap it names that does not exist), if that is why it waits.
pub fn start_problem(pod: &Pod) -> Option<String> {
    crate::workload::start_problem(pod).map(|(_, message)| message)
}

/// The first serving pod problem: unschedulable, then container problems.
fn pod_problem(obs: &Observation<'_>) -> Option<(&'static str, String)> {
    let live: Vec<&ServingPod> = obs.pods.iter().filter(|p| is_live(p)).collect();
    for pod in &live {
        if let Some(message) = unschedulable(pod) {
            return Some((
                "Unschedulable",
                unschedulable_message(obs.gpus, obs.gpu_product, pod_name(pod), message),
            ));
        }
    }
    for pod in &live {
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        let init = status.init_container_statuses.iter().flatten();
        for s in init {
            if let Some(problem) = container_problem(pod, s, true) {
                return Some(problem);
            }
        }
        for s in status.container_statuses.iter().flatten() {
            if let Some(problem) = container_problem(pod, s, false) {
                return Some(problem);
            }
        }
    }
    None
}

/// Judges the model from `obs`.
pub fn assess(obs: &Observation<'_>) -> Assessment {
    let mut replicas = 0;
    let mut ready_replicas = 0;
    let mut complete = true;
    let mut downloading: Option<String> = None;
    let mut degraded: Option<(&'static str, String)> = None;
    for track in &obs.tracks {
        match &track.cache {
            Some(CacheState::Failed(message)) if degraded.is_none() => {
                degraded = Some(("ModelDownloadFailed", message.clone()));
            }
            Some(CacheState::Pending(message) | CacheState::Downloading(message))
                if downloading.is_none() =>
            {
                downloading = Some(message.clone());
            }
            _ => {}
        }
        match track.deployment {
            Some(deployment) => {
                let r = rollout(deployment);
                replicas += r.desired;
                ready_replicas += r.ready;
                complete &= r.complete && track.up_to_date;
                if degraded.is_none() {
                    degraded = refusal(deployment);
                }
                if degraded.is_none()
                    && let Some((reason, message)) =
                        deployment_condition(deployment, "Progressing", "False")
                    && reason == "ProgressDeadlineExceeded"
                {
                    degraded = Some((
                        "RolloutStalled",
                        format!("the rollout of {} stalled: {message}", track.track.label()),
                    ));
                }
            }
            None => complete = false,
        }
    }
    if degraded.is_none()
        && let Some(problem) = pod_problem(obs)
    {
        degraded = Some(problem);
    }
    // A stalled rollout is explained better by a pod's problem.
    if let Some(("RolloutStalled", _)) = degraded
        && let Some(problem) = pod_problem(obs)
    {
        degraded = Some(problem);
    }

    let progressing = match (&downloading, complete) {
        (Some(message), _) => NewCondition::yes(PROGRESSING, "DownloadingModel", message.clone()),
        (None, false) => NewCondition::yes(
            PROGRESSING,
            "RollingOut",
            format!("{ready_replicas} of {replicas} serving replicas ready with the current spec"),
        ),
        (None, true) => NewCondition::no(
            PROGRESSING,
            "Deployed",
            "every serving replica runs the current spec",
        ),
    };
    let progressing = match &degraded {
        Some(("ModelDownloadFailed", _)) if downloading.is_none() => NewCondition::no(
            PROGRESSING,
            "ModelDownloadFailed",
            "waiting for the download to be fixed",
        ),
        _ => progressing,
    };
    let ready = match &degraded {
        Some((reason, message)) => NewCondition::no(READY, *reason, message.clone()),
        None if progressing.status == ConditionStatus::True => NewCondition::no(
            READY,
            progressing.reason.clone(),
            progressing.message.clone(),
        ),
        None if replicas == 0 && obs.scales_to_zero => NewCondition::yes(
            READY,
            "ScaledToZero",
            "no replica runs while no request comes: aleph-gateway holds the next request while one starts",
        ),
        None if replicas == 0 => NewCondition::no(
            READY,
            "ScaledToZero",
            "no serving replicas: scale up with `kubectl scale aimodel/<name> --replicas=1`",
        ),
        None => NewCondition::yes(
            READY,
            "Serving",
            format!(
                "serving at {} with {ready_replicas}/{replicas} replicas",
                obs.url
            ),
        ),
    };
    let degraded = match degraded {
        Some((reason, message)) => NewCondition::yes(DEGRADED, reason, message),
        None => NewCondition::no(DEGRADED, "Healthy", "no problem observed"),
    };
    Assessment {
        ready,
        progressing,
        degraded,
        replicas,
        ready_replicas,
    }
}

/// Records an invalid spec in the status: Ready False, reason InvalidSpec.
pub fn invalid_spec(status: &mut AIModelStatus, generation: Option<i64>, message: &str) {
    for condition in [
        NewCondition::no(READY, "InvalidSpec", message),
        NewCondition::no(
            PROGRESSING,
            "InvalidSpec",
            "waiting for the spec to be fixed",
        ),
        NewCondition::yes(DEGRADED, "InvalidSpec", message),
    ] {
        set_condition(&mut status.conditions, condition, generation);
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
