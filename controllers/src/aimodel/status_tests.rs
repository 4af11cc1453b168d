use super::*;
use serde_json::json;

fn deployment(generation: i64, observed: i64, desired: i32, ready: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": "m", "generation": generation },
        "spec": { "replicas": desired, "selector": {}, "template": {} },
        "status": {
            "observedGeneration": observed,
            "replicas": desired,
            "updatedReplicas": desired,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }))
    .unwrap_or_default()
}

fn observe<'a>(
    d: Option<&'a Deployment>,
    pods: &'a [ServingPod],
    cache: Option<CacheState>,
) -> Observation<'a> {
    Observation {
        gpus: 2,
        gpu_product: Some("NVIDIA-H100-80GB-HBM3"),
        tracks: vec![TrackObservation {
            track: Track::Stable,
            deployment: d,
            cache,
            up_to_date: true,
        }],
        pods,
        url: "http://m.ns.svc.cluster.local:8000/v1",
        scales_to_zero: false,
    }
}

/// The assessment of `d` with one pod, `m-abc`, written as JSON and decoded
/// as the watch decodes it. The pod as the controller's watch cache keeps it
/// (trimmed) must tell the same.
fn assess_with_pod(d: &Deployment, mut pod: serde_json::Value) -> Assessment {
    pod["metadata"] = json!({ "name": "m-abc", "annotations": { "a": "b" } });
    pod["spec"]["volumes"] = json!([{ "name": "weights", "emptyDir": {} }]);
    if pod["spec"]["containers"].is_null() {
        pod["spec"]["containers"] = json!([{ "name": "llama-server", "image": "engine" }]);
    }
    let pods: [ServingPod; 1] = [serde_json::from_value(pod).expect("a pod")];
    let whole = assess(&observe(Some(d), &pods, None));
    let mut trimmed = pods.clone();
    crate::aimodel::observe::trim_pod(&mut trimmed[0]);
    assert_ne!(trimmed, pods, "the pod is trimmed");
    assert_eq!(assess(&observe(Some(d), &trimmed, None)), whole);
    whole
}

#[test]
fn zero_replicas_are_ready_only_when_the_autoscaler_put_them_there() {
    let d = deployment(1, 1, 0, 0);
    let by_hand = assess(&observe(Some(&d), &[], None));
    assert_eq!(by_hand.ready.status, ConditionStatus::False);
    assert_eq!(by_hand.ready.reason, "ScaledToZero");
    let autoscaled = assess(&Observation {
        scales_to_zero: true,
        ..observe(Some(&d), &[], None)
    });
    assert_eq!(autoscaled.ready.status, ConditionStatus::True);
    assert_eq!(autoscaled.ready.reason, "ScaledToZero");
    assert_eq!((autoscaled.replicas, autoscaled.ready_replicas), (0, 0));
}

#[test]
fn a_complete_rollout_is_ready() {
    let d = deployment(2, 2, 2, 2);
    let a = assess(&observe(Some(&d), &[], Some(CacheState::Ready)));
    assert_eq!(a.ready.status, ConditionStatus::True);
    assert_eq!(a.ready.reason, "Serving");
    assert_eq!(a.progressing.status, ConditionStatus::False);
    assert_eq!(a.degraded.status, ConditionStatus::False);
    assert_eq!((a.replicas, a.ready_replicas), (2, 2));
}

#[test]
fn an_unobserved_generation_is_still_rolling_out() {
    let d = deployment(3, 2, 2, 2);
    let a = assess(&observe(Some(&d), &[], None));
    assert_eq!(a.ready.reason, "RollingOut");
    assert_eq!(a.progressing.status, ConditionStatus::True);
}

#[test]
fn an_unschedulable_pod_says_which_gpus_are_missing() {
    let d = deployment(1, 1, 1, 0);
    let a = assess_with_pod(
        &d,
        json!({
            "status": { "phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/5 nodes are available: 2 Insufficient nvidia.com/gpu, 3 node(s) didn't match Pod's node affinity/selector.",
            }]},
        }),
    );
    assert_eq!(a.degraded.status, ConditionStatus::True);
    assert_eq!(a.degraded.reason, "Unschedulable");
    let message = &a.degraded.message;
    assert!(
        message.starts_with("needs 2 x NVIDIA-H100-80GB-HBM3 GPUs; no node has them free"),
        "{message}"
    );
    assert_eq!(a.ready.reason, "Unschedulable");
}

#[test]
fn quota_refusals_and_crash_loops_are_named() {
    let mut d = deployment(1, 1, 1, 0);
    if let Some(status) = d.status.as_mut() {
        status.conditions = serde_json::from_value(json!([{
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "pods \"m-x\" is forbidden: exceeded quota: aleph-tenant-quota, requested: requests.nvidia.com/gpu=2",
        }]))
        .ok();
    }
    let a = assess(&observe(Some(&d), &[], None));
    assert_eq!(a.degraded.reason, "QuotaExceeded");
    assert!(a.ready.message.contains("exceeded quota"));

    let d = deployment(1, 1, 1, 0);
    let a = assess_with_pod(
        &d,
        json!({
            "status": { "phase": "Running", "containerStatuses": [{
                "name": "vllm", "image": "vllm", "imageID": "", "ready": false, "restartCount": 4,
                "state": { "waiting": { "reason": "CrashLoopBackOff" } },
                "lastState": { "terminated": { "exitCode": 1 } },
            }]},
        }),
    );
    assert_eq!(a.degraded.reason, "RuntimeCrashLooping");
    assert!(a.degraded.message.contains("last exit code 1"));

    // The log's end (FallbackToLogsOnError) and the kubelet's reason.
    let a = assess_with_pod(
        &d,
        json!({
            "status": { "phase": "Running", "containerStatuses": [{
                "name": "llama-server", "image": "x", "imageID": "", "ready": false, "restartCount": 2,
                "state": { "running": {} },
                "lastState": { "terminated": { "exitCode": 1, "reason": "Error",
                    "message": "main: loading model\n\ngguf_init_from_file_impl: invalid magic characters: 'junk'\nmain: exiting due to model loading error\n" } },
            }]},
        }),
    );
    assert_eq!(a.degraded.reason, "RuntimeCrashLooping");
    let message = &a.ready.message;
    let crash = "keeps crashing (last exit code 1, Error, restarted 2 times); the end of its log: main: loading model | gguf_init_from_file_impl: invalid magic characters: 'junk' | main: exiting due to model loading error";
    assert!(message.contains(crash), "{message}");

    let a = assess_with_pod(
        &d,
        json!({
            "spec": { "containers": [{ "name": "llama-server", "resources": { "limits": { "memory": "32Mi" } } }] },
            "status": { "phase": "Running", "containerStatuses": [{
                "name": "llama-server", "image": "x", "imageID": "", "ready": false, "restartCount": 1,
                "state": { "waiting": { "reason": "CrashLoopBackOff" } },
                "lastState": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } },
            }]},
        }),
    );
    assert_eq!(a.ready.reason, "RuntimeOOMKilled");
    assert!(
        a.ready.message.contains("exit code 137"),
        "{}",
        a.ready.message
    );
    assert!(
        a.ready.message.contains("memory limit of 32Mi"),
        "{}",
        a.ready.message
    );
}

#[test]
fn the_log_tail_keeps_the_last_lines() {
    let log: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    assert_eq!(
        log_tail(&log),
        "line 13 | line 14 | line 15 | line 16 | line 17 | line 18 | line 19 | line 20"
    );
    let long = "x".repeat(5000);
    let tail = log_tail(&long);
    assert!(tail.starts_with('…') && tail.chars().count() <= LOG_TAIL_CHARS + 2);
}

#[test]
fn downloads_progress_and_failures_degrade() {
    let a = assess(&observe(
        None,
        &[],
        Some(CacheState::Downloading("downloading".into())),
    ));
    assert_eq!(a.progressing.reason, "DownloadingModel");
    assert_eq!(a.ready.reason, "DownloadingModel");
    assert_eq!(a.degraded.status, ConditionStatus::False);
    let a = assess(&observe(None, &[], Some(CacheState::Failed("boom".into()))));
    assert_eq!(a.degraded.reason, "ModelDownloadFailed");
    assert_eq!(a.ready.reason, "ModelDownloadFailed");
    assert_eq!(a.progressing.status, ConditionStatus::False);
}

#[test]
fn a_download_pod_that_cannot_start_says_why() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "aleph-cache-x-abcde" },
        "status": { "containerStatuses": [{
            "name": "download", "image": "aleph.local/model-cache:dev", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": { "waiting": {
                "reason": "CreateContainerConfigError",
                "message": "secret \"hf-token\" not found",
            }},
        }]},
    }))
    .expect("a pod");
    let problem = start_problem(&pod).expect("a problem");
    assert!(
        problem.contains("secret \"hf-token\" not found")
            && problem.contains("aleph-cache-x-abcde"),
        "{problem}"
    );
    let running: Pod = serde_json::from_value(json!({
        "metadata": { "name": "p" },
        "status": { "containerStatuses": [{
            "name": "download", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
            "state": { "running": {} },
        }]},
    }))
    .expect("a pod");
    assert_eq!(start_problem(&running), None);
}
