//! The model cache on the real node: the download Job, run from the project's
//! model-cache image, really fetches a model's files from the S3 emulator
//! (moto, listening where the node's pods reach this machine) into a real
//! PersistentVolume of the local StorageClass; a second AIModel with the same
//! source reuses the files without downloading again; a missing object turns
//! the model `ModelDownloadFailed` with the downloader's own words.

use std::time::Duration;

use aleph_crds::aimodel::AIModel;
use aleph_e2e::real_node::{pin_namespace, require, volume_dir};
use aleph_e2e::s3::{s3_model_yaml, s3_put, s3_secret};
use aleph_e2e::{TestEnv, find_condition, unique_name, wait_for};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use sha2::{Digest, Sha256};

const TIMEOUT: Duration = Duration::from_secs(240);

fn model(name: &str, uri: &str) -> String {
    s3_model_yaml(
        name,
        uri,
        "  runtime: {engine: vllm}\n  resources: {cpu: 100m, memory: 256Mi}\n  cache: {size: 1Gi, downloadTimeoutSeconds: 300}\n",
    )
}

/// The download pods that match `selector`.
async fn download_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .expect("list download pods")
        .items
}

fn cache_phase(model: &AIModel) -> Option<&str> {
    model
        .status
        .as_ref()?
        .cache
        .as_ref()
        .map(|c| c.phase.as_str())
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn the_model_cache_downloads_from_s3_once_and_names_a_missing_object() {
    let env = TestEnv::new().await;
    require(&env.client()).await;
    pin_namespace(&env.client(), env.namespace()).await;

    let bucket = unique_name("models");
    let weights: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
    let config = br#"{"architectures": ["LlamaForCausalLM"], "layers": 2}"#;
    s3_put(
        &bucket,
        &[("tiny/model.bin", &weights), ("tiny/config.json", config)],
    );
    // Credentials and the endpoint, as a user would give them for any S3.
    env.apply_yaml(&s3_secret()).await;

    let uri = format!("s3://{bucket}/tiny/");
    env.apply_yaml(&model("first", &uri)).await;
    let models: Api<AIModel> = env.api();
    let first = wait_for(&models, "first", TIMEOUT, |m| {
        cache_phase(m) == Some("Ready")
    })
    .await;
    let claim = aleph_e2e::serving::cache_claim(&first).expect("status.cache.claimName");

    // The files are really in the volume, whole.
    let dir = volume_dir(&env.client(), env.namespace(), &claim).await;
    let got = std::fs::read(dir.join("model.bin"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join("model.bin").display()));
    assert_eq!(sha256_hex(&got), sha256_hex(&weights), "model.bin differs");
    assert_eq!(
        std::fs::read(dir.join("config.json")).expect("config.json"),
        config.to_vec()
    );

    let pods: Api<Pod> = env.api();
    let selector = format!(
        "aleph.dev/cache={}",
        claim.trim_start_matches("aleph-cache-")
    );
    let downloads = download_pods(&pods, &selector).await;
    assert_eq!(downloads.len(), 1, "one download pod");
    let on_real_node = downloads[0]
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        == Some(aleph_e2e::real_node::REAL_NODE_NAME);
    assert!(on_real_node, "the download ran on the real node");

    // The same source again: the same claim, no second download.
    env.apply_yaml(&model("second", &uri)).await;
    let second = wait_for(&models, "second", TIMEOUT, |m| {
        cache_phase(m) == Some("Ready")
    })
    .await;
    assert_eq!(
        second
            .status
            .as_ref()
            .and_then(|s| s.cache.as_ref())
            .map(|c| c.claim_name.as_str()),
        Some(claim.as_str()),
        "the second model uses the first one's cache"
    );
    let jobs: Api<Job> = env.api();
    let job = jobs.get(&claim).await.expect("the download Job");
    assert_eq!(
        job.status.as_ref().and_then(|s| s.succeeded),
        Some(1),
        "the download ran once"
    );
    let downloads = download_pods(&pods, &selector).await;
    assert_eq!(downloads.len(), 1, "no second download pod");

    // A missing object: the downloader's own message in the model's status.
    let missing = format!("s3://{bucket}/absent/model.gguf");
    env.apply_yaml(&model("missing", &missing)).await;
    let failed = wait_for(&models, "missing", TIMEOUT, |m| {
        m.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "ModelDownloadFailed")
        })
    })
    .await;
    let object = serde_json::json!({ "status": failed.status });
    let ready = find_condition(&object, "Ready").expect("Ready condition");
    let message = ready.message.unwrap_or_default();
    assert!(
        message.contains(&missing) && message.contains("no such object"),
        "the Ready message does not carry the downloader's words: {message}"
    );
    println!("model cache: {message}");
    env.cleanup().await;
}
