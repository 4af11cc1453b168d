//! Every failure is visible: whatever stops a reconcile shows in the object's
//! condition (reason and message) and as a Warning Event, whatever the kind and
//! the class of error. Each class is provoked for real against the API server:
//! a child's name taken by someone else's object (Plugin, AIModel, Tenant), missing AWS
//! configuration (AIModel, PipelineRun), and a per-resource SageMaker region
//! that works without an operator-wide one. API refusals of children, for
//! every kind, are in `failure_classes.rs`.

use std::time::Duration;

use aleph_crds::tenant::Tenant;
use aleph_crds::{AIModel, Plugin};
use aleph_e2e::sagemaker_fake::{FakeConfig, SageMakerFake};
use aleph_e2e::{
    PRIVATE_OPERATOR_LABEL, TestEnv, aws, find_condition, unique_name, wait_for, wait_for_deletion,
};
use k8s_openapi::api::core::v1::{Event, Service, ServiceAccount, ServicePort, ServiceSpec};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Resource;
use kube::api::{Api, ApiResource, DeleteParams, PostParams};

const WAIT: Duration = Duration::from_secs(90);

fn condition(obj: &impl serde::Serialize, type_: &str) -> (String, String, String) {
    let c = find_condition(obj, type_).unwrap_or_default();
    (
        c.status,
        c.reason.unwrap_or_default(),
        c.message.unwrap_or_default(),
    )
}

/// Waits until the object's Ready condition has `reason`; returns its
/// `(status, reason, message)`.
async fn ready_with_reason<K>(api: &Api<K>, name: &str, reason: &str) -> (String, String, String)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object = wait_for(api, name, WAIT, |o: &K| condition(o, "Ready").1 == reason).await;
    condition(&object, "Ready")
}

/// Waits until a `ReconcileFailed` Event about the object says `needle`.
async fn wait_event(events: &Api<Event>, kind: &str, name: &str, needle: &str) -> String {
    aleph_e2e::wait_reconcile_failed(events, kind, name, needle, WAIT).await
}

/// A child's name taken, before its owner is applied, by an object that is
/// not the owner's: Ready=False NameConflict naming the child, an Event, the
/// foreign object untouched (its label kept, no owner reference added); once
/// it is gone, the owner makes its own child of that name and recovers.
struct Taken<'a, O> {
    /// The owners' API, the owner's name and its manifest.
    owners: Api<O>,
    name: &'a str,
    manifest: String,
}

impl<'a, O> Taken<'a, O>
where
    O: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    /// The owner `name`, made through `owners`; `spec` is the body of its
    /// spec, YAML lines indented by two spaces.
    fn new(owners: Api<O>, name: &'a str, spec: &str) -> Self {
        let manifest = format!(
            "apiVersion: {}\nkind: {}\nmetadata: {{ name: {name} }}\nspec:\n{spec}",
            O::api_version(&()),
            O::kind(&())
        );
        Taken {
            owners,
            name,
            manifest,
        }
    }

    /// `child`, in `children`, is the owner's child whose name is taken
    /// first. Cleans `env` up at the end.
    async fn says_so_and_recovers<C>(self, children: Api<C>, child: C, env: TestEnv)
    where
        C: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    {
        let kind = O::kind(&());
        // How a message names the owner's kind.
        let noun = match kind.as_ref() {
            "AIModel" => "model".to_string(),
            other => other.to_lowercase(),
        };
        let child_name = child.meta().name.clone().expect("the child's name");
        let mut foreign = child;
        foreign.meta_mut().labels =
            Some([("owner".to_string(), "someone-else".to_string())].into());
        children
            .create(&PostParams::default(), &foreign)
            .await
            .expect("create the foreign object");
        env.apply_yaml(&self.manifest).await;

        let (status, _, message) = ready_with_reason(&self.owners, self.name, "NameConflict").await;
        assert_eq!(status, "False");
        let belongs = format!("does not belong to this {noun}");
        assert!(
            message.contains(&format!(" named {child_name} ")) && message.contains(&belongs),
            "{message}"
        );
        // Anywhere: a cluster-scoped owner's Events go to the default namespace.
        let events = Api::<Event>::all(env.client());
        wait_event(&events, &kind, self.name, &belongs).await;
        let still = children.get(&child_name).await.expect("the foreign object");
        assert_eq!(
            still.meta().labels.clone().unwrap_or_default().get("owner"),
            Some(&"someone-else".to_string()),
            "the foreign object is left alone"
        );
        assert!(still.meta().owner_references.is_none());

        children
            .delete(&child_name, &DeleteParams::default())
            .await
            .expect("delete the foreign object");
        let owner = wait_for(&self.owners, self.name, WAIT, |o: &O| {
            condition(o, "Ready").1 != "NameConflict"
        })
        .await;
        let uid = owner.meta().uid.clone().expect("the owner's UID");
        let own = wait_for(&children, &child_name, WAIT, |c: &C| {
            c.meta()
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
        .await;
        assert_eq!(
            own.meta().labels.clone().unwrap_or_default().get("owner"),
            None
        );
    }
}

fn named<K: Resource + Default>(name: &str) -> K {
    let mut object = K::default();
    object.meta_mut().name = Some(name.to_string());
    object
}

#[tokio::test]
async fn a_plugin_whose_child_name_is_taken_says_so_and_recovers() {
    let env = TestEnv::new().await;
    let name = "taken";
    let spec = format!(
        "  version: 1.0.0\n  image: ghcr.io/acme/{name}:1.0.0\n  port: 9000\n  replicas: 1\n"
    );
    // The plugin's ServiceAccount has the plugin's name.
    let taken = Taken::new(env.api::<Plugin>(), name, &spec);
    taken
        .says_so_and_recovers(env.api::<ServiceAccount>(), named(name), env)
        .await;
}

#[tokio::test]
async fn a_model_whose_service_name_is_taken_says_so_and_recovers() {
    let env = TestEnv::new().await;
    let name = "taken-model";
    let spec = "  source: { uri: hf://acme/taken-1b }\n  cache: { enabled: false }\n  resources: { cpu: \"1\" }\n";
    // The model's Service has the model's name.
    let mut service: Service = named(name);
    let port = ServicePort {
        port: 80,
        ..ServicePort::default()
    };
    service.spec = Some(ServiceSpec {
        ports: Some(vec![port]),
        ..ServiceSpec::default()
    });
    let taken = Taken::new(env.api::<AIModel>(), name, spec);
    taken
        .says_so_and_recovers(env.api::<Service>(), service, env)
        .await;
}

#[tokio::test]
async fn a_tenant_whose_cluster_role_name_is_taken_says_so_and_recovers() {
    let env = TestEnv::new().await;
    let name = unique_name("taken");
    let spec = format!(
        "  owners: [{{ kind: User, name: {name}-alice, role: admin }}]\n  namespaces: [one]\n"
    );
    // The admin owners' ClusterRole, for creating namespaces while there is room.
    let role = format!("aleph-tenant-{name}-owners");
    env.delete_on_cleanup(ApiResource::erase::<ClusterRole>(&()), &role);
    let taken = Taken::new(env.cluster_api::<Tenant>(), &name, &spec);
    let roles = env.cluster_api::<ClusterRole>();
    taken.says_so_and_recovers(roles, named(&role), env).await;
}

fn sagemaker_model(name: &str, label: &str, region: Option<&str>) -> String {
    let region = region.map_or(String::new(), |r| format!("\n    region: {r}"));
    let spec = format!(
        r#"  backend: SageMaker
  training:
    image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost:1.7
    roleArn: arn:aws:iam::123456789012:role/aleph-training
    instanceType: ml.m5.xlarge
    outputS3Uri: s3://aleph-e2e/models/{name}{region}
    inputs:
      - name: train
        s3Uri: s3://aleph-e2e/data/train
  sagemaker:
    image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost-serve:1.7
    roleArn: arn:aws:iam::123456789012:role/aleph-serving
    instanceType: ml.m5.large{region}
"#
    );
    aws::labelled_model(name, label, &spec)
}

/// An operator with no AWS region at all: a model that names its region
/// trains and serves there; one that does not says so in Ready and an Event
/// (and goes away when deleted, since nothing was made); the same for a
/// PipelineRun's training step, in the run's own condition.
#[tokio::test]
async fn the_resources_region_serves_without_the_operators_and_none_at_all_is_shown() {
    let env = TestEnv::new().await;
    let sm = SageMakerFake::start(FakeConfig::default())
        .await
        .expect("start the SageMaker fake");
    let label = unique_name("region");
    let mut options =
        aws::operator_options(env.namespace(), &sm.endpoint_url(), &label, "no-region");
    // No region: an empty AWS_REGION and AWS_DEFAULT_REGION, no config file.
    options.env = aws::operator_env(&sm.endpoint_url(), "");
    options.env.splice(
        2..2,
        [
            ("AWS_DEFAULT_REGION".into(), String::new()),
            ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
        ],
    );
    let _op = aws::start_operator(options).await;
    let models: Api<AIModel> = env.api();

    env.apply_yaml(&sagemaker_model("regional", &label, Some("eu-west-1")))
        .await;
    env.apply_yaml(&sagemaker_model("nowhere", &label, None))
        .await;

    let regional = wait_for(&models, "regional", WAIT, |m: &AIModel| {
        m.status
            .as_ref()
            .and_then(|s| s.training.as_ref())
            .is_some_and(|t| !t.job_name.is_empty())
    })
    .await;
    assert_eq!(
        regional.status.as_ref().and_then(|s| s.runtime.as_deref()),
        Some("sagemaker"),
        "the Runtime column says what serves the model"
    );
    assert_eq!(sm.counters().training_jobs_created, 1);

    let (status, _, message) = ready_with_reason(&models, "nowhere", "AWSNotConfigured").await;
    assert_eq!(status, "False");
    assert!(
        message.contains("no AWS region") && message.contains("region"),
        "{message}"
    );
    wait_event(&env.api(), "AIModel", "nowhere", "no AWS region").await;
    assert_eq!(
        sm.counters().training_jobs_created,
        1,
        "nothing was made for the model without a region"
    );

    // A PipelineRun's training step without a region: the run's own condition says it.
    env.apply_yaml(&format!(
        r#"
apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata:
  name: train
  labels: {{ {PRIVATE_OPERATOR_LABEL}: "{label}" }}
spec:
  steps:
    - name: fit
      training:
        image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost:1.7
        roleArn: arn:aws:iam::123456789012:role/aleph-training
        instanceType: ml.m5.xlarge
        outputS3Uri: s3://aleph-e2e/models/pipeline
        inputs:
          - name: train
            s3Uri: s3://aleph-e2e/data/train
---
apiVersion: aleph.dev/v1alpha1
kind: PipelineRun
metadata:
  name: train-1
  labels: {{ {PRIVATE_OPERATOR_LABEL}: "{label}" }}
spec:
  pipelineRef: {{ name: train }}
"#
    ))
    .await;
    let runs: Api<aleph_crds::PipelineRun> = env.api();
    let run = wait_for(&runs, "train-1", WAIT, |r: &aleph_crds::PipelineRun| {
        condition(r, "Succeeded").2.contains("no AWS region")
    })
    .await;
    let (status, _, message) = condition(&run, "Succeeded");
    assert_eq!(
        status, "Unknown",
        "the run waits, it has not failed: {message}"
    );
    assert!(message.contains("fit ("), "the step is named: {message}");

    for name in ["regional", "nowhere"] {
        models
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete model");
    }
    wait_for_deletion(&models, "nowhere", WAIT).await;
    wait_for_deletion(&models, "regional", WAIT).await;
    env.cleanup().await;
}

/// The Events (events.k8s.io) in `api` about the object with `uid`.
async fn new_events_about(
    api: &Api<k8s_openapi::api::events::v1::Event>,
    uid: &Option<String>,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let listed = api.list(&Default::default()).await.expect("Events listed");
    listed
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_ref()) == uid.as_ref())
        .collect()
}

/// The operator's Event recorder against the API server: a repeat of an Event
/// within the window counts in the first one's series (one object, its count
/// and time), a different note makes a second Event, a repeat whose Event
/// was deleted meanwhile makes a new one, and an Event about a
/// cluster-scoped object goes to `default`.
#[tokio::test]
async fn a_repeated_event_counts_in_its_series_and_a_new_note_makes_another() {
    use aleph_controllers::events::{Note, Recorder};
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use k8s_openapi::api::events::v1::Event as NewEvent;
    use kube::runtime::events::EventType;
    let env = TestEnv::new().await;
    let configs: Api<ConfigMap> = Api::namespaced(env.client(), env.namespace());
    let mut config: ConfigMap = named("events-about-me");
    config.metadata.namespace = Some(env.namespace().to_string());
    let config = configs
        .create(&PostParams::default(), &config)
        .await
        .expect("a ConfigMap");
    let regarding = config.object_ref(&());
    let recorder = Recorder::new(env.client(), "aleph-operator", Some("e2e".into()));
    let note = |text| Note {
        type_: EventType::Warning,
        reason: "Repeated",
        action: "Repeated",
        note: text,
    };
    for _ in 0..3 {
        recorder
            .publish(&note("the same words"), &regarding)
            .await
            .expect("published");
    }
    recorder
        .publish(&note("other words"), &regarding)
        .await
        .expect("published");

    let events: Api<NewEvent> = Api::namespaced(env.client(), env.namespace());
    let uid = config.metadata.uid.clone();
    let mut about = new_events_about(&events, &uid).await;
    about.sort_by_key(|e| e.note.clone());
    let seen: Vec<(Option<String>, Option<i32>, Option<String>)> = about
        .iter()
        .map(|e| {
            (
                e.note.clone(),
                e.series.as_ref().map(|s| s.count),
                e.reporting_instance.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some("other words".into()), None, Some("e2e".into())),
            (Some("the same words".into()), Some(3), Some("e2e".into())),
        ]
    );
    let series = about[1].series.as_ref().expect("a series");
    assert!(Some(&series.last_observed_time) >= about[1].event_time.as_ref());
    assert_eq!(about[1].type_.as_deref(), Some("Warning"));
    assert_eq!(
        about[1].reporting_controller.as_deref(),
        Some("aleph-operator")
    );

    // The series' Event deleted meanwhile: the next repeat publishes a new one.
    let counted = about[1].metadata.name.clone().expect("a name");
    events
        .delete(&counted, &Default::default())
        .await
        .expect("Event deleted");
    recorder
        .publish(&note("the same words"), &regarding)
        .await
        .expect("published again");
    let mut again = new_events_about(&events, &uid).await;
    again.retain(|e| e.note.as_deref() == Some("the same words"));
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].metadata.name.as_ref(), Some(&counted));
    assert!(again[0].series.is_none());

    // A cluster-scoped object's Event is published in `default`.
    let namespace: Api<Namespace> = Api::all(env.client());
    let own = namespace
        .get(env.namespace())
        .await
        .expect("the test's namespace");
    recorder
        .publish(&note("about a namespace"), &own.object_ref(&()))
        .await
        .expect("published");
    let defaults: Api<NewEvent> = Api::namespaced(env.client(), "default");
    assert_eq!(
        new_events_about(&defaults, &own.metadata.uid).await.len(),
        1
    );
}
