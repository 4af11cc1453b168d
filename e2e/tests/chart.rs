//! The Helm chart in `charts/aleph-operator`: `helm lint`, and what `helm template` renders —
//! a Deployment that meets the restricted Pod Security Standard, RBAC without wildcards,
//! leader election forced on with more than one replica — plus the chart's CRDs being the
//! generated ones, byte for byte.
//!
//! Needs `helm`: `HELM` names it, else `helm` on `PATH`, else the one `e2e/cluster/build.sh`
//! builds under `$ALEPH_CACHE/bin` (`~/.cache/aleph/bin/helm-*/helm`). Without it the tests
//! that render fail rather than skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use aleph_e2e::helm::helm_binary;
use aleph_e2e::repo_root;
use serde_json::Value;

const NAMESPACE: &str = "aleph-system";
const RELEASE: &str = "aleph";

fn chart_dir() -> PathBuf {
    repo_root().join("charts/aleph-operator")
}

/// Runs helm; its standard output, or its standard error as the error.
fn run_helm(args: &[&str]) -> Result<String, String> {
    let helm = helm_binary();
    let out = Command::new(&helm)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "helm {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `helm template` with `--set` arguments: the rendered objects.
fn try_render(sets: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart_dir();
    let chart = chart.to_str().expect("a UTF-8 path");
    let mut args = vec![
        "template",
        RELEASE,
        chart,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.35.0",
        "--include-crds",
    ];
    for set in sets {
        args.push("--set");
        args.push(set);
    }
    let out = run_helm(&args)?;
    Ok(parse_documents(&out))
}

fn render(sets: &[&str]) -> Vec<Value> {
    try_render(sets).unwrap_or_else(|e| panic!("{e}"))
}

/// The objects of a multi-document YAML stream; empty and comment-only documents are dropped.
fn parse_documents(stream: &str) -> Vec<Value> {
    let mut objects = Vec::new();
    for document in stream.split("\n---") {
        let document = document.strip_prefix("---").unwrap_or(document);
        let has_content = document
            .lines()
            .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'));
        if !has_content {
            continue;
        }
        let value: Value = serde_saphyr::from_str(document)
            .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{document}"));
        if !value.is_null() {
            objects.push(value);
        }
    }
    objects
}

/// The operator's objects of `kind` (the gateway's are `gateway_of_kind`'s).
fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind && !is_gateway(o))
        .collect()
}

fn is_gateway(object: &Value) -> bool {
    object["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
}

fn gateway_of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind && is_gateway(o))
        .collect()
}

/// The one object of `found`, which are the rendered `what`s.
fn exactly_one<'a>(found: Vec<&'a Value>, what: &str) -> &'a Value {
    assert_eq!(
        found.len(),
        1,
        "want exactly one {what}, rendered {}",
        found.len()
    );
    found[0]
}

fn only_gateway<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    exactly_one(gateway_of_kind(objects, kind), &format!("gateway {kind}"))
}

fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    exactly_one(of_kind(objects, kind), kind)
}

/// Asserts that the container's args include each of `expected`.
fn assert_has_args(container: &Value, expected: &[&str]) {
    let args = strings(&container["args"], "args");
    for arg in expected {
        assert!(args.contains(arg), "{arg} missing from {args:?}");
    }
}

/// The strings of the array `value`, which `what` names.
fn strings<'a>(value: &'a Value, what: &str) -> Vec<&'a str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is not an array: {value}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn operator_container(objects: &[Value]) -> &Value {
    let containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("the Deployment has containers");
    containers
        .iter()
        .find(|c| c["name"] == "operator")
        .expect("a container named operator")
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
}

#[test]
fn helm_lint_passes() {
    let chart = chart_dir();
    let chart = chart.to_str().expect("a UTF-8 path");
    for extra in [
        &[][..],
        &["--set", "replicaCount=3,podDisruptionBudget.enabled=true"][..],
        &[
            "--set",
            "serviceMonitor.enabled=true,networkPolicy.enabled=false",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", chart, "--namespace", NAMESPACE];
        args.extend_from_slice(extra);
        if let Err(e) = run_helm(&args) {
            panic!("{e}");
        }
    }
}

#[test]
fn deployment_meets_restricted_pod_security() {
    let objects = render(&[]);
    let deployment = only(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let uid = pod["securityContext"]["runAsUser"].as_i64().unwrap_or(0);
    assert!(uid > 0, "runs as uid {uid}");
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host], true, "{host} is on");
    }
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        assert!(volume.get("hostPath").is_none(), "hostPath volume {volume}");
    }

    let containers = pod["containers"].as_array().expect("containers");
    let init = pod["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for container in containers.iter().chain(init.iter()) {
        let name = &container["name"];
        let sc = &container["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}: runAsNonRoot");
        assert_eq!(
            sc["readOnlyRootFilesystem"], true,
            "{name}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{name}: allowPrivilegeEscalation"
        );
        assert_ne!(sc["privileged"], true, "{name}: privileged");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}: capabilities.drop"
        );
        assert!(
            sc["capabilities"].get("add").is_none(),
            "{name}: capabilities.add"
        );
        assert_eq!(
            sc["seccompProfile"]["type"], "RuntimeDefault",
            "{name}: seccomp"
        );
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !container["resources"][kind][resource].is_null(),
                    "{name}: no {kind}.{resource}"
                );
            }
        }
        for port in container["ports"].as_array().into_iter().flatten() {
            assert!(port.get("hostPort").is_none(), "{name}: hostPort");
        }
    }

    let operator = operator_container(&objects);
    assert_eq!(operator["args"], serde_json::json!(["run"]));
    let metrics_port = operator["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "metrics"))
        .expect("a metrics port");
    assert_eq!(metrics_port["containerPort"], 8080);
    assert_eq!(
        env_value(operator, "ALEPH_METRICS_ADDR"),
        Some("0.0.0.0:8080")
    );
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &operator[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} path");
        assert_eq!(get["port"], "metrics", "{probe} port");
    }
}

#[test]
fn rbac_has_no_wildcards_and_least_privilege() {
    let objects = render(&["serviceMonitor.enabled=true"]);
    let mut roles = of_kind(&objects, "ClusterRole");
    roles.extend(of_kind(&objects, "Role"));
    assert!(roles.len() >= 2, "want a ClusterRole and a Role");
    for role in &roles {
        let name = &role["metadata"]["name"];
        for rule in role["rules"].as_array().expect("rules") {
            for field in [
                "apiGroups",
                "resources",
                "verbs",
                "resourceNames",
                "nonResourceURLs",
            ] {
                for item in rule[field].as_array().into_iter().flatten() {
                    let item = item.as_str().unwrap_or_default();
                    assert!(
                        !item.contains('*'),
                        "{name}: {field} holds {item:?} in {rule}"
                    );
                }
            }
        }
    }

    let operator = format!("{RELEASE}-aleph-operator");
    let cluster_role = of_kind(&objects, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == operator.as_str())
        .expect("the operator's ClusterRole");
    let grants = |group: &str, resource: &str, verb: &str| {
        cluster_role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                let has = |field: &str, wanted: &str| {
                    rule[field]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|i| i == wanted))
                };
                has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
            })
    };
    // What the operator needs, and what it must not be granted.
    let needed = [
        "watch tenants.aleph.dev",
        "patch aimodels/status.aleph.dev",
        "create pipelineruns.aleph.dev",
        "update pipelineruns/finalizers.aleph.dev",
        // Step templates: read where pipelines use them, Ready written.
        "watch steptemplates.aleph.dev",
        "watch clustersteptemplates.aleph.dev",
        "patch steptemplates/status.aleph.dev",
        "patch clustersteptemplates/status.aleph.dev",
        "delete namespaces",
        "list pods",
        "create events",
        "create events.events.k8s.io",
        "patch deployments.apps",
        "create jobs.batch",
        "patch horizontalpodautoscalers.autoscaling",
        "patch networkpolicies.networking.k8s.io",
        "patch rolebindings.rbac.authorization.k8s.io",
        "bind clusterroles.rbac.authorization.k8s.io",
        // Each Tenant's ClusterRole and binding for its admin owners' namespaces.
        "create clusterroles.rbac.authorization.k8s.io",
        "create clusterrolebindings.rbac.authorization.k8s.io",
        "watch clusterrolebindings.rbac.authorization.k8s.io",
        "own tenants.aleph.dev",
        "create tenantnamespaces.aleph.dev",
        "patch validatingadmissionpolicybindings.admissionregistration.k8s.io",
        "patch httproutes.gateway.networking.k8s.io",
        "watch customresourcedefinitions.apiextensions.k8s.io",
        "get secrets",
    ];
    let not_needed = [
        // A pipeline's webhook URLs are read by name (`get`); nothing lists them.
        "list secrets",
        "watch secrets",
        "delete pods",
        "update leases.coordination.k8s.io",
        "escalate clusterroles.rbac.authorization.k8s.io",
        "update customresourcedefinitions.apiextensions.k8s.io",
        "delete tenants.aleph.dev",
        // Templates are the platform's and the tenants' to write, not the operator's.
        "update steptemplates.aleph.dev",
        "create clustersteptemplates.aleph.dev",
        // Only with rbac.pluginRoleEscalation: plugins get what the operator holds.
        "escalate roles.rbac.authorization.k8s.io",
        "bind roles.rbac.authorization.k8s.io",
    ];
    for (table, needed) in [(&needed[..], true), (&not_needed[..], false)] {
        for grant in table {
            // `verb resource.group`, as `kubectl auth can-i` takes it.
            let (verb, resource) = grant.split_once(' ').expect("verb and resource");
            let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
            let what = if needed {
                "lacks"
            } else {
                "grants, needlessly,"
            };
            assert_eq!(
                grants(group, resource, verb),
                needed,
                "{operator} {what} {verb} {group}/{resource}"
            );
        }
    }

    let escalating = render(&["rbac.pluginRoleEscalation=true"]);
    let escalating_role = of_kind(&escalating, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == operator.as_str())
        .expect("the operator's ClusterRole");
    assert!(
        escalating_role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["resources"] == serde_json::json!(["roles"])
                && r["verbs"] == serde_json::json!(["bind", "escalate"])),
        "rbac.pluginRoleEscalation=true grants no escalate on Roles"
    );

    let lease_role = only(&objects, "Role");
    assert_eq!(lease_role["metadata"]["namespace"], NAMESPACE);
    let rules = lease_role["rules"].as_array().expect("rules");
    assert!(
        rules.iter().all(
            |r| r["apiGroups"] == serde_json::json!(["coordination.k8s.io"])
                && r["resources"] == serde_json::json!(["leases"])
        ),
        "the namespaced Role is for leases only: {rules:?}"
    );
    assert_eq!(
        rules[0]["verbs"],
        serde_json::json!(["get", "create", "update"]),
        "leader election reads, creates and renews its Lease, nothing more"
    );
    let binding = only(&objects, "RoleBinding");
    assert_eq!(binding["roleRef"]["name"], lease_role["metadata"]["name"]);

    let service_account = only(&objects, "ServiceAccount");
    let cluster_binding = only(&objects, "ClusterRoleBinding");
    assert_eq!(cluster_binding["roleRef"]["name"], operator.as_str());
    for subject_of in [cluster_binding, binding] {
        assert_eq!(
            subject_of["subjects"][0]["name"],
            service_account["metadata"]["name"]
        );
        assert_eq!(subject_of["subjects"][0]["namespace"], NAMESPACE);
    }
    let pod = &only(&objects, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["serviceAccountName"],
        service_account["metadata"]["name"]
    );
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let yaml_files = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml"))
            .collect();
        names.sort();
        names
    };
    let generated = repo_root().join("crds");
    let chart = chart_dir().join("crds");
    let generated_files = yaml_files(&generated);
    assert_eq!(
        generated_files.len(),
        aleph_crds::all_crds().len(),
        "one CRD file per kind in crds/"
    );
    let chart_entries: Vec<String> = fs::read_dir(&chart)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", chart.display()))
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let mut chart_entries = chart_entries;
    chart_entries.sort();
    assert_eq!(
        chart_entries, generated_files,
        "charts/aleph-operator/crds must hold exactly crds/*.yaml (run `make crds`)"
    );
    for name in &generated_files {
        let want = fs::read(generated.join(name)).expect("read a generated CRD");
        let got = fs::read(chart.join(name)).expect("read a chart CRD");
        assert!(
            want == got,
            "charts/aleph-operator/crds/{name} differs from crds/{name} (run `make crds`)"
        );
    }
}

#[test]
fn rendered_crds_are_every_kind() {
    let objects = render(&[]);
    let mut names: Vec<&str> = of_kind(&objects, "CustomResourceDefinition")
        .iter()
        .filter_map(|crd| crd["metadata"]["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "aimodels.aleph.dev",
            "clustersteptemplates.aleph.dev",
            "pipelineruns.aleph.dev",
            "pipelines.aleph.dev",
            "plugins.aleph.dev",
            "steptemplates.aleph.dev",
            "tenants.aleph.dev",
        ]
    );
}

#[test]
fn more_than_one_replica_turns_leader_election_on() {
    let leader_elect = |sets: &[&str]| {
        let objects = render(sets);
        let replicas = only(&objects, "Deployment")["spec"]["replicas"].clone();
        let container = operator_container(&objects);
        (
            replicas,
            env_value(container, "ALEPH_LEADER_ELECT").map(str::to_string),
        )
    };
    let (replicas, on) = leader_elect(&["replicaCount=2", "operator.leaderElection.enabled=false"]);
    assert_eq!(replicas, 2);
    assert_eq!(
        on.as_deref(),
        Some("true"),
        "2 replicas must elect a leader"
    );

    let (replicas, on) = leader_elect(&["replicaCount=1", "operator.leaderElection.enabled=false"]);
    assert_eq!(replicas, 1);
    assert_eq!(on.as_deref(), Some("false"));

    let (_, on) = leader_elect(&[]);
    assert_eq!(
        on.as_deref(),
        Some("true"),
        "leader election is on by default"
    );

    let objects = render(&["replicaCount=2"]);
    let container = operator_container(&objects);
    assert_eq!(
        env_value(container, "ALEPH_LEASE_NAMESPACE"),
        Some(NAMESPACE)
    );
    assert_eq!(
        env_value(container, "ALEPH_LEASE_NAME"),
        Some(format!("{RELEASE}-aleph-operator").as_str())
    );
}

#[test]
fn values_become_the_operator_flags() {
    let objects = render(&[
        "operator.namespaces={team-a,team-b}",
        "operator.concurrency=8",
        "operator.kubeQps=20",
        "operator.kubeBurst=40",
        "operator.logLevel=debug",
        "operator.logFormat=text",
        "operator.metricsPort=9090",
        "operator.aws.region=eu-west-1",
        "operator.leaderElection.leaseDurationSeconds=30",
        "operator.leaderElection.retrySeconds=5",
        "operator.stepTemplateAdmission=false",
    ]);
    let container = operator_container(&objects);
    for (name, value) in [
        ("ALEPH_NAMESPACES", "team-a,team-b"),
        ("ALEPH_CONCURRENCY", "8"),
        ("ALEPH_KUBE_QPS", "20"),
        ("ALEPH_KUBE_BURST", "40"),
        ("ALEPH_LOG_LEVEL", "debug"),
        ("ALEPH_LOG_FORMAT", "text"),
        ("ALEPH_METRICS_ADDR", "0.0.0.0:9090"),
        ("AWS_REGION", "eu-west-1"),
        ("ALEPH_LEASE_DURATION", "30"),
        ("ALEPH_LEASE_RETRY", "5"),
        ("ALEPH_STEP_TEMPLATE_ADMISSION", "false"),
        // The allocator setting the benchmark's memory figures are made with.
        ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2"),
    ] {
        assert_eq!(env_value(container, name), Some(value), "{name}");
    }
    let pod_namespace = container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "POD_NAMESPACE"))
        .expect("POD_NAMESPACE");
    assert_eq!(
        pod_namespace["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let service = only(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 9090);

    let defaults = render(&[]);
    let container = operator_container(&defaults);
    assert_eq!(env_value(container, "ALEPH_NAMESPACES"), Some(""));
    assert_eq!(env_value(container, "AWS_REGION"), None);
    assert_eq!(
        env_value(container, "ALEPH_STEP_TEMPLATE_ADMISSION"),
        Some("true"),
        "the step template check is on by default"
    );
}

#[test]
fn optional_objects_follow_their_switches() {
    let defaults = render(&[]);
    assert!(of_kind(&defaults, "ServiceMonitor").is_empty());
    assert!(of_kind(&defaults, "PodDisruptionBudget").is_empty());
    let policy = only(&defaults, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );

    let enabled = render(&[
        "serviceMonitor.enabled=true",
        "podDisruptionBudget.enabled=true",
        "networkPolicy.enabled=false",
        "replicaCount=2",
    ]);
    let monitor = only(&enabled, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let budget = only(&enabled, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert!(of_kind(&enabled, "NetworkPolicy").is_empty());
}

#[test]
fn sync_waves_put_rbac_before_the_deployment() {
    let objects = render(&["serviceMonitor.enabled=true"]);
    let wave = |object: &Value| -> i64 {
        object["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    };
    let deployment = wave(only(&objects, "Deployment"));
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ] {
        for object in of_kind(&objects, kind) {
            assert!(
                wave(object) < deployment,
                "{kind} syncs after the Deployment"
            );
        }
    }
    assert!(wave(only(&objects, "ServiceMonitor")) > deployment);
}

/// `resource:verb,verb` of each resource the gateway's ClusterRole grants, sorted.
fn gateway_grants(objects: &[Value]) -> Vec<String> {
    let role = only_gateway(objects, "ClusterRole");
    let mut grants = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        let verbs = strings(&rule["verbs"], "verbs");
        for r in rule["resources"].as_array().expect("resources") {
            grants.push(format!(
                "{}:{}",
                r.as_str().unwrap_or_default(),
                verbs.join(",")
            ));
        }
    }
    grants.sort();
    grants
}

/// OIDC values become the gateway's flags, and a CA ConfigMap is mounted
/// where `--oidc-ca-file` points.
#[test]
fn oidc_values_become_the_gateway_flags() {
    let objects = render(&[
        "gateway.oidc.issuerUrl=https://sso.example.com/realms/acme",
        "gateway.oidc.audience=aleph",
        "gateway.oidc.usernameClaim=preferred_username",
        "gateway.oidc.caConfigMap.name=sso-ca",
        "gateway.tokenReview.audiences={aleph,vault}",
    ]);
    let pod = &only_gateway(&objects, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_has_args(
        container,
        &[
            "--oidc-issuer-url=https://sso.example.com/realms/acme",
            "--oidc-audience=aleph",
            "--oidc-username-claim=preferred_username",
            "--oidc-groups-claim=groups",
            "--oidc-ca-file=/etc/aleph-gateway/oidc-ca/ca.crt",
            "--token-review-audiences=aleph,vault",
            "--token-review-cache-seconds=30",
        ],
    );
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        "/etc/aleph-gateway/oidc-ca"
    );
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "sso-ca");
}

#[test]
fn schema_rejects_bad_values() {
    for bad in [
        "operator.logFormat=xml",
        "operator.concurrency=0",
        "securityContext.runAsUser=0",
        "image.pullPolicy=Sometimes",
        "replicaCount=-1",
        "no.such.value=1",
        "gateway.routing=random",
        "gateway.replicaCount=0",
        "gateway.port=0",
        "gateway.coldStartQueue=0",
        "gateway.drainSeconds=-1",
        // The drain must leave the requests in flight some of the grace period.
        "gateway.drainSeconds=60",
        "gateway.oidc.issuerUrl=https://sso.example.com",
        "gateway.oidc.issuerUrl=sso.example.com",
        "gateway.tokenReview.cacheSeconds=-1",
        "gateway.oidc.usernameClaim=",
    ] {
        assert!(try_render(&[bad]).is_err(), "--set {bad} was accepted");
    }
}

/// The gateway is on by default: its own Deployment (restricted, probes on
/// /healthz and /readyz, each replica told its share of the limits, a drain
/// shorter than the grace period), Service,
/// PodDisruptionBudget, and read-only RBAC; selected by labels the operator's
/// selectors never match. Off, none of it renders.
#[test]
fn the_gateway_is_on_by_default_with_read_only_rbac() {
    let objects = render(&[]);
    let deployment = only_gateway(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(selector["app.kubernetes.io/name"], "aleph-gateway");
    let operator_selector = &only(&objects, "Deployment")["spec"]["selector"]["matchLabels"];
    assert_ne!(selector, operator_selector);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert!(
        container["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("ghcr.io/aleph-dev/aleph-gateway:")),
        "{}",
        container["image"]
    );
    assert_has_args(
        container,
        &[
            "run",
            "--listen=0.0.0.0:8080",
            "--replicas-share=2",
            "--routing=least-in-flight",
            "--cold-start-timeout=300",
            "--cold-start-queue=256",
            "--drain-seconds=5",
        ],
    );
    assert_eq!(
        pod["terminationGracePeriodSeconds"], 60,
        "the drain and then the requests in flight"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // It reads, and creates TokenReviews (which write nothing) to check
    // Kubernetes tokens; without TokenReview, it only reads.
    assert_eq!(
        gateway_grants(&objects),
        [
            "aimodels:get,list,watch",
            "endpointslices:get,list,watch",
            "secrets:get,list,watch",
            "tenants:get,list,watch",
            "tokenreviews:create",
        ]
    );
    let args = container["args"].to_string();
    assert!(!args.contains("oidc"), "OIDC is off by default: {args}");
    let without = render(&["gateway.tokenReview.enabled=false"]);
    assert_eq!(
        gateway_grants(&without),
        [
            "aimodels:get,list,watch",
            "endpointslices:get,list,watch",
            "secrets:get,list,watch",
            "tenants:get,list,watch",
        ]
    );
    let off = &only_gateway(&without, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        off["args"]
            .as_array()
            .expect("args")
            .contains(&Value::from("--token-review=false")),
        "{}",
        off["args"]
    );
    let binding = only_gateway(&objects, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], pod["serviceAccountName"]);
    let service = only_gateway(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(&service["spec"]["selector"], selector);
    let budget = only_gateway(&objects, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);

    let off = render(&["gateway.enabled=false"]);
    assert!(
        off.iter().all(|o| !is_gateway(o)),
        "gateway objects rendered with gateway.enabled=false"
    );
}
