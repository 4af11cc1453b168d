//! aleph-gateway in front of a real engine, on the real node: the chart's own
//! gateway objects (rendered with `helm template`) run in a platform
//! namespace; a Tenant's model is llama.cpp serving a tiny GGUF from the S3
//! emulator; a user's program calls the gateway with the official `openai`
//! Python client and the tenants' API keys (Secrets holding the keys' SHA-256),
//! ServiceAccount tokens minted with the TokenRequest API (checked by the
//! gateway with TokenReviews), and OIDC tokens of an issuer the test runs on
//! this machine's link address, which the gateway's pod reaches.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aleph_crds::aimodel::AIModel;
use aleph_crds::tenant::Tenant;
use aleph_e2e::gateway::{
    self, key_secret, platform_namespace, pod_ip, render_gateway, tenant, wait_for_gateway_pods,
};
use aleph_e2e::oidc::LocalIssuer;
use aleph_e2e::real_node::{host_ip, pin_namespace, require};
use aleph_e2e::s3::{s3_put_tiny_chat, s3_secret};
use aleph_e2e::serving::llamacpp_model;
use aleph_e2e::{
    TestEnv, apply_yaml, find_condition, has_condition, openai, unique_name, wait_for,
};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// The client id the gateway's OIDC tokens are for.
const OIDC_AUDIENCE: &str = "aleph-e2e";

async fn apply(env: &TestEnv, ns: &str, yaml: &str) {
    apply_yaml(&env.client(), yaml, Some(ns))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A token of the ServiceAccount `namespace/name` (made first), from the
/// TokenRequest API, for the API server's own audience.
async fn service_account_token(env: &TestEnv, namespace: &str, name: &str) -> String {
    apply(
        env,
        namespace,
        &format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}}}\n"),
    )
    .await;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(env.client(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token of {namespace}/{name}: {e}"))
        .status
        .map(|s| s.token)
        .unwrap_or_else(|| panic!("the TokenRequest of {namespace}/{name} has no token"))
}

fn number(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

#[tokio::test]
async fn tenants_call_their_models_through_the_gateway_with_the_openai_client() {
    let env = TestEnv::new().await;
    require(&env.client()).await;
    let a = unique_name("gwa");
    let b = unique_name("gwb");
    // Tenant a may spend 400 tokens a minute; b has no model of its own.
    env.apply_yaml(&tenant(&a, "  gateway: {tokensPerMinute: 400}\n"))
        .await;
    env.apply_yaml(&tenant(&b, "")).await;
    let tenants: Api<Tenant> = env.cluster_api();
    for t in [&a, &b] {
        wait_for(&tenants, t, READY_TIMEOUT, |t| {
            has_condition(t, "Ready", "True")
        })
        .await;
    }
    let (ns_a, ns_b) = (format!("{a}-apps"), format!("{b}-apps"));
    pin_namespace(&env.client(), &ns_a).await;

    // The model, served by llama.cpp from the S3 emulator.
    let bucket = unique_name("gw-models");
    s3_put_tiny_chat(&bucket);
    apply(&env, &ns_a, &s3_secret()).await;
    apply(
        &env,
        &ns_a,
        &llamacpp_model("chat", &format!("s3://{bucket}/tiny/chat.gguf"), ""),
    )
    .await;

    // The gateway, in a platform namespace (the tenants' isolation admits it).
    let platform = env.namespace().to_string();
    platform_namespace(&env.client(), &platform).await;
    // The identity provider, where the gateway's pod reaches this machine.
    let issuer = LocalIssuer::start(&host_ip()).await;
    let release = unique_name("gw");
    let oidc = [
        format!("gateway.oidc.issuerUrl={}", issuer.url),
        format!("gateway.oidc.audience={OIDC_AUDIENCE}"),
    ];
    let oidc: Vec<&str> = oidc.iter().map(String::as_str).collect();
    env.apply_yaml(&render_gateway(&release, &platform, 1, &oidc).await)
        .await;

    // Keys: one for each tenant, in its namespace.
    let (key_a, secret_a) = key_secret("team-key");
    let (key_b, secret_b) = key_secret("team-key");
    apply(&env, &ns_a, &secret_a).await;
    apply(&env, &ns_b, &secret_b).await;

    let started = Instant::now();
    let models: Api<AIModel> = Api::namespaced(env.client(), &ns_a);
    wait_for(&models, "chat", READY_TIMEOUT, |m| {
        let object = json!({ "status": m.status });
        find_condition(&object, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
    println!(
        "gateway: the model served {:.1}s after it was applied",
        started.elapsed().as_secs_f32()
    );
    let pods: Api<Pod> = env.api();
    let gateway_pods = wait_for_gateway_pods(&pods, 1, READY_TIMEOUT).await;
    let pod_ip = pod_ip(&gateway_pods[0]);
    // The client runs on this machine, outside the real node's network
    // namespace, where kube-proxy's Service addresses do not apply: it calls
    // the gateway's pod, as the Service would.
    let base = format!("http://{pod_ip}:8080/v1");
    let python = openai::python();
    let ask = async |token: &str, action: &str, args: &[&str]| {
        openai::call(&python, &base, token, action, args).await
    };

    // Each key lists its tenant's models: a's, once the gateway has seen it;
    // b has none.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = ask(&key_a, "models", &[]).await;
        if listed["ids"] == json!(["chat"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tenant a's models through the gateway: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed = ask(&key_b, "models", &[]).await;
    assert_eq!(listed["ids"], json!([]), "tenant b's models");

    // ServiceAccount tokens: a's acts for a, b's for b (no model, and 403 on
    // a's), one outside every tenant is refused (403), garbage is not a token (401).
    let sa_a = service_account_token(&env, &ns_a, "caller").await;
    let sa_b = service_account_token(&env, &ns_b, "caller").await;
    let outsider = service_account_token(&env, &platform, "outsider").await;
    // A caller of tenant a (`who`) lists a's one model and chats with it.
    let lists_and_chats = async |token: &str, who: &str, prompt: &str| {
        let listed = ask(token, "models", &[]).await;
        assert_eq!(listed["ids"], json!(["chat"]), "models of {who}");
        let answer = ask(token, "chat", &["chat", "8", prompt]).await;
        assert_eq!(answer["model"], "chat", "{who} calling chat: {answer}");
        answer
    };
    let sa_chat = lists_and_chats(&sa_a, "a's ServiceAccount", "Hi there").await;
    let sa_used = tokens_used(&sa_chat);
    let listed = ask(&sa_b, "models", &[]).await;
    assert_eq!(listed["ids"], json!([]), "models of b's ServiceAccount");
    let refused = ask(&sa_b, "chat", &["chat", "8", "hi"]).await;
    assert_eq!(
        refused["status"], 403,
        "b's ServiceAccount on a's model: {refused}"
    );
    let outside = ask(&outsider, "models", &[]).await;
    assert_eq!(
        outside["status"], 403,
        "a ServiceAccount of no tenant: {outside}"
    );
    assert!(
        outside["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("{platform}/outsider"))),
        "{outside}"
    );
    let garbage = ask("not-a-token", "models", &[]).await;
    assert_eq!(garbage["status"], 401, "a garbage token: {garbage}");

    // OIDC: a member of a's group lists and calls a's models; a user of no
    // tenant's owners gets 403; a token for another client 401.
    let user = unique_name("alice");
    let group_a = format!("{a}-ml");
    let member = issuer.token(OIDC_AUDIENCE, &user, &["staff", &group_a]);
    let who = format!("the OIDC user, a member of {group_a}");
    let oidc_chat = lists_and_chats(&member, &who, "Hello").await;
    let oidc_used = tokens_used(&oidc_chat);
    let stranger = issuer.token(OIDC_AUDIENCE, &user, &["staff"]);
    let refused = ask(&stranger, "models", &[]).await;
    assert_eq!(
        refused["status"], 403,
        "an OIDC user of no tenant: {refused}"
    );
    let elsewhere = issuer.token("another-client", &user, &[&group_a]);
    let refused = ask(&elsewhere, "models", &[]).await;
    assert_eq!(
        refused["status"], 401,
        "a token for another client: {refused}"
    );

    // Chat, a stream and a completion, each counted from the engine's usage.
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    let mut count = |answer: &Value| {
        *used.entry("prompt").or_default() += number(answer, "prompt_tokens");
        *used.entry("completion").or_default() += number(answer, "completion_tokens");
    };
    count(&sa_chat);
    count(&oidc_chat);
    let chat = ask(&key_a, "chat", &["chat", "8", "Say hello"]).await;
    assert_eq!(chat["model"], "chat", "{chat}");
    assert_has_content(&chat);
    count(&chat);
    let stream = ask(&key_a, "stream", &["chat", "8", "Count to five"]).await;
    assert!(number(&stream, "chunks") >= 2, "{stream}");
    assert_has_content(&stream);
    count(&stream);
    let completion = ask(&key_a, "completion", &["chat", "8", "Once upon a time"]).await;
    assert_has_content(&completion);
    count(&completion);

    // Refusals, in OpenAI's shape: another tenant's key, a bad key, an unknown model.
    let other = ask(&key_b, "chat", &["chat", "8", "hi"]).await;
    assert_eq!(
        other["status"], 403,
        "tenant b calling tenant a's model: {other}"
    );
    let bad = ask("sk-aleph-not-a-key", "chat", &["chat", "8", "hi"]).await;
    assert_eq!(bad["status"], 401, "a bad key: {bad}");
    let unknown = ask(&key_a, "chat", &["no-such-model", "8", "hi"]).await;
    assert_eq!(unknown["status"], 400, "an unknown model: {unknown}");

    // Tenant a's 400 tokens a minute run out: 429 with Retry-After.
    let mut limited = None;
    for _ in 0..60 {
        let answer = ask(&key_a, "chat", &["chat", "8", "Say hello again"]).await;
        if answer["status"] == 429 {
            limited = Some(answer);
            break;
        }
        count(&answer);
    }
    let limited = limited.expect("tenant a never reached its token limit");
    assert!(
        limited["retry_after"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)),
        "429 without a Retry-After: {limited}"
    );

    // The gateway's counters equal the engine's usage, exactly.
    let metrics = gateway::metrics(&pod_ip).await;
    for kind in ["prompt", "completion"] {
        assert_eq!(
            gateway::sum(
                &metrics,
                "aleph_gateway_tokens_total",
                &[("tenant", &a), ("kind", kind)]
            ),
            used[kind],
            "{kind} tokens counted by the gateway against the engine's usage"
        );
    }
    // The tokens' own credentials count theirs, under bounded names.
    assert_eq!(
        gateway::sum(
            &metrics,
            "aleph_gateway_tokens_total",
            &[("key", &format!("sa:{ns_a}/caller"))]
        ),
        sa_used
    );
    assert_eq!(
        gateway::sum(
            &metrics,
            "aleph_gateway_tokens_total",
            &[("key", &format!("oidc:{user}"))]
        ),
        oidc_used
    );
    println!(
        "gateway: tenant {a} used {} prompt and {} completion tokens, as the gateway counted",
        used["prompt"], used["completion"]
    );

    // The operator adds them up in the Tenant's status: today and this month.
    let requests = gateway::sum(&metrics, "aleph_gateway_requests_total", &[("tenant", &a)]);
    let want = json!({
        "requests": requests,
        "promptTokens": used["prompt"],
        "completionTokens": used["completion"],
    });
    let tenant = wait_for(&tenants, &a, Duration::from_secs(90), |t| {
        let usage = json!(t.status.as_ref().and_then(|s| s.gateway_usage.as_ref()));
        usage["today"] == want && usage["thisMonth"] == want
    })
    .await;
    let usage = tenant.status.and_then(|s| s.gateway_usage).expect("usage");
    assert_eq!(usage.day, chrono::Utc::now().format("%Y-%m-%d").to_string());
    println!(
        "gateway: the Tenant's status shows {want} for {}",
        usage.day
    );
    env.cleanup().await;
}

/// Asserts that the answer has some content.
fn assert_has_content(answer: &Value) {
    assert!(
        !answer["content"].as_str().unwrap_or_default().is_empty(),
        "{answer}"
    );
}

/// The prompt and completion tokens of an answer.
fn tokens_used(answer: &Value) -> u64 {
    number(answer, "prompt_tokens") + number(answer, "completion_tokens")
}
