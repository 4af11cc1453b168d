//! Quantities, CIDRs and default requests against their limits are checked at
//! `kubectl apply` by the CRDs' CEL rules (`isQuantity`, `quantity`, `isCIDR`),
//! against a real API server: each bad value is refused with a message naming the field and giving a good value,
//! and the good values (strings and plain integers) are accepted. Everything is
//! a server-side apply with `dryRun=All`: the API server runs every check and
//! stores nothing, so the operator never sees these objects.

use aleph_e2e::TestEnv;

/// A manifest of `kind` named `name`, whose spec's body is `spec`.
macro_rules! manifest {
    ($kind:literal, $name:literal, $spec:literal) => {
        concat!(
            "\napiVersion: aleph.dev/v1alpha1\nkind: ",
            $kind,
            "\nmetadata: { name: ",
            $name,
            " }\nspec:\n",
            $spec
        )
    };
}

/// A Tenant with every checked field set to a good value.
const TENANT: &str = manifest!(
    "Tenant",
    "e2e-apply-validation",
    r#"  owners: [{ kind: User, name: alice }]
  namespaces: [one]
  quota: { cpu: 64, memory: 256Gi, storage: 1Ti }
  limitRange:
    defaultCpuRequest: 100m
    defaultCpuLimit: 1
    defaultMemoryRequest: 128Mi
    defaultMemoryLimit: 1Gi
  network:
    egress: Restricted
    allowedEgress: [{ cidr: 10.20.0.0/16 }, { cidr: "fd00:10::/32" }]
"#
);

/// A Plugin with every checked field set to a good value.
const PLUGIN: &str = manifest!(
    "Plugin",
    "apply-validation",
    r#"  version: 1.0.0
  image: ghcr.io/acme/p:1
  port: 8080
  resources: { cpu: 500m, memory: 256Mi }
  sandbox:
    allowedEgress: [{ cidr: 10.0.0.0/8, ports: [443] }, { cidr: "2001:db8::/32" }]
"#
);

/// An AIModel with every checked field set to a good value.
const AIMODEL: &str = manifest!(
    "AIModel",
    "apply-validation",
    r#"  source: { uri: "hf://org/model" }
  resources: { cpu: 2, memory: 16Gi }
  cache: { size: 50Gi }
"#
);

/// A Pipeline with every checked field set to a good value.
const PIPELINE: &str = manifest!(
    "Pipeline",
    "apply-validation",
    r#"  steps:
    - name: train
      container: { image: busybox, resources: { cpu: "2", memory: 8Gi } }
  finally:
    - name: notify
      container: { image: busybox, resources: { cpu: 100m, memory: 64Mi } }
"#
);

/// One bad value: which manifest, what to replace in it and by what, and the
/// field path and message the refusal must carry.
struct Bad {
    base: &'static str,
    good: &'static str,
    bad: &'static str,
    path: &'static str,
    message: &'static str,
}

const fn bad(
    base: &'static str,
    good: &'static str,
    bad: &'static str,
    path: &'static str,
    message: &'static str,
) -> Bad {
    Bad {
        base,
        good,
        bad,
        path,
        message,
    }
}

const CIDR: &str =
    "cidr must be an IP block in CIDR notation, for example 10.0.0.0/8 or 2001:db8::/32";

const TENANT_CASES: &[Bad] = &[
    bad(
        TENANT,
        "memory: 256Gi",
        "memory: lots",
        "spec.quota.memory",
        "quota.memory must be a Kubernetes quantity of at least 0, for example 256Gi",
    ),
    bad(
        TENANT,
        "cpu: 64",
        "cpu: -1",
        "spec.quota.cpu",
        "quota.cpu must be a Kubernetes quantity of at least 0, for example 64",
    ),
    bad(
        TENANT,
        "storage: 1Ti",
        "storage: -1Ti",
        "spec.quota.storage",
        "quota.storage must be",
    ),
    bad(
        TENANT,
        "defaultCpuRequest: 100m",
        "defaultCpuRequest: 100 millicores",
        "spec.limitRange.defaultCpuRequest",
        "limitRange.defaultCpuRequest must be",
    ),
    bad(
        TENANT,
        "defaultCpuLimit: 1",
        "defaultCpuLimit: one",
        "spec.limitRange.defaultCpuLimit",
        "limitRange.defaultCpuLimit must be",
    ),
    bad(
        TENANT,
        "defaultMemoryRequest: 128Mi",
        "defaultMemoryRequest: 128MB",
        "spec.limitRange.defaultMemoryRequest",
        "limitRange.defaultMemoryRequest must be",
    ),
    bad(
        TENANT,
        "defaultMemoryLimit: 1Gi",
        "defaultMemoryLimit: 1GB",
        "spec.limitRange.defaultMemoryLimit",
        "limitRange.defaultMemoryLimit must be",
    ),
    // Each value valid alone, the pair not: a LimitRange the API server refuses.
    bad(
        TENANT,
        "defaultCpuRequest: 100m",
        "defaultCpuRequest: 2",
        "spec.limitRange",
        "limitRange.defaultCpuRequest must not be greater than limitRange.defaultCpuLimit",
    ),
    bad(
        TENANT,
        "defaultMemoryRequest: 128Mi",
        "defaultMemoryRequest: 2Gi",
        "spec.limitRange",
        "limitRange.defaultMemoryRequest must not be greater than limitRange.defaultMemoryLimit",
    ),
    bad(
        TENANT,
        "cidr: 10.20.0.0/16",
        "cidr: 10.20.0.0/33",
        "spec.network.allowedEgress[0].cidr",
        CIDR,
    ),
];

const PLUGIN_CASES: &[Bad] = &[
    // The case users met: stored, then the NetworkPolicy write failed with 422.
    bad(
        PLUGIN,
        "cidr: 10.0.0.0/8",
        "cidr: 10.0.0.0/33",
        "spec.sandbox.allowedEgress[0].cidr",
        CIDR,
    ),
    bad(
        PLUGIN,
        "cidr: 10.0.0.0/8",
        "cidr: 256.0.0.0/8",
        "spec.sandbox.allowedEgress[0].cidr",
        CIDR,
    ),
    bad(
        PLUGIN,
        "cidr: \"2001:db8::/32\"",
        "cidr: \"2001:db8::/129\"",
        "spec.sandbox.allowedEgress[1].cidr",
        CIDR,
    ),
    bad(
        PLUGIN,
        "cpu: 500m",
        "cpu: 2 cores",
        "spec.resources.cpu",
        "resources.cpu must be a Kubernetes quantity of at least 0, for example 500m",
    ),
    bad(
        PLUGIN,
        "memory: 256Mi",
        "memory: 256MB",
        "spec.resources.memory",
        "resources.memory must be a Kubernetes quantity of at least 0, for example 16Gi",
    ),
];

const AIMODEL_CASES: &[Bad] = &[
    bad(
        AIMODEL,
        "cpu: 2",
        "cpu: \"-500m\"",
        "spec.resources.cpu",
        "resources.cpu must be",
    ),
    bad(
        AIMODEL,
        "memory: 16Gi",
        "memory: lots",
        "spec.resources.memory",
        "resources.memory must be",
    ),
    bad(
        AIMODEL,
        "size: 50Gi",
        "size: 50 gigs",
        "spec.cache.size",
        "cache.size must be a Kubernetes quantity greater than 0, for example 50Gi",
    ),
    // A PersistentVolumeClaim of size 0 is refused: so is the cache's.
    bad(
        AIMODEL,
        "size: 50Gi",
        "size: 0",
        "spec.cache.size",
        "cache.size must be a Kubernetes quantity greater than 0",
    ),
];

const PIPELINE_CASES: &[Bad] = &[
    bad(
        PIPELINE,
        "memory: 8Gi",
        "memory: 8GB",
        "spec.steps[0].container.resources.memory",
        "resources.memory must be",
    ),
    bad(
        PIPELINE,
        "cpu: \"2\"",
        "cpu: two",
        "spec.steps[0].container.resources.cpu",
        "resources.cpu must be",
    ),
    bad(
        PIPELINE,
        "cpu: 100m",
        "cpu: -100m",
        "spec.finally[0].container.resources.cpu",
        "resources.cpu must be",
    ),
];

/// The good manifest is accepted; each bad variant is refused with its field
/// path and message.
async fn check(good: &str, cases: &[Bad]) {
    let env = TestEnv::new().await;
    if let Err(e) = env.try_dry_run_yaml(good).await {
        panic!("the good manifest is refused: {e}\n{good}");
    }
    let mut failures = Vec::new();
    for case in cases {
        assert_eq!(
            case.base.matches(case.good).count(),
            1,
            "`{}` must occur once in the manifest",
            case.good
        );
        let manifest = case.base.replacen(case.good, case.bad, 1);
        let what = format!("{} -> {}", case.good, case.bad);
        match env.try_dry_run_yaml(&manifest).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(e) => {
                let Some(status) = e.api_status() else {
                    failures.push(format!("{what}: not a refusal of the API server: {e}"));
                    continue;
                };
                let text = &status.message;
                if status.code != 422
                    || !text.contains(&format!("{}: Invalid value", case.path))
                    || !text.contains(case.message)
                {
                    failures.push(format!(
                        "{what}: expected 422 naming `{}` with `{}`, got {}: {text}",
                        case.path, case.message, status.code
                    ));
                } else {
                    println!("{what}: {text}");
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    env.cleanup().await;
}

/// One test per kind: `test_name: (MANIFEST, CASES)`.
macro_rules! refusal_tests {
    ($($test:ident: ($manifest:ident, $cases:ident),)*) => {
        $(
            #[tokio::test]
            async fn $test() {
                check($manifest, $cases).await;
            }
        )*
    };
}

refusal_tests! {
    tenant_quantities_and_cidrs_are_checked_at_apply: (TENANT, TENANT_CASES),
    plugin_quantities_and_cidrs_are_checked_at_apply: (PLUGIN, PLUGIN_CASES),
    aimodel_quantities_are_checked_at_apply: (AIMODEL, AIMODEL_CASES),
    pipeline_step_quantities_are_checked_at_apply: (PIPELINE, PIPELINE_CASES),
}

/// Good values in each form the API server takes: plain integers, decimal and
/// binary suffixes, exponents, fractions, IPv4 and IPv6 blocks. (IPv6 blocks
/// shorter than 9 characters, `::/0` or `fd00::/8`, are still refused by the
/// field's older `minLength: 9`.)
#[tokio::test]
async fn good_quantities_and_cidrs_in_every_form_are_accepted() {
    let env = TestEnv::new().await;
    let mut failures = Vec::new();
    for (base, good, others) in [
        (
            TENANT,
            "memory: 256Gi",
            &[
                "memory: 0",
                "memory: 274877906944",
                "memory: 256G",
                "memory: \"1e9\"",
                "memory: 1.5Ti",
            ][..],
        ),
        (
            TENANT,
            "cidr: 10.20.0.0/16",
            &[
                "cidr: 0.0.0.0/0",
                "cidr: 192.168.1.7/32",
                "cidr: \"fd00:1::/64\"",
            ][..],
        ),
        (
            PLUGIN,
            "cpu: 500m",
            &["cpu: 0", "cpu: 2", "cpu: \"0.5\"", "cpu: 1500m"][..],
        ),
        (
            AIMODEL,
            "size: 50Gi",
            &["size: 1", "size: 500M", "size: 1Ti"][..],
        ),
        (
            PIPELINE,
            "memory: 8Gi",
            &["memory: 8589934592", "memory: 512Ki"][..],
        ),
    ] {
        for other in others {
            let manifest = base.replacen(good, other, 1);
            if let Err(e) = env.try_dry_run_yaml(&manifest).await {
                failures.push(format!("{other}: refused: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    env.cleanup().await;
}
