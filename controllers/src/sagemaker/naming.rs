//! SageMaker names, derived deterministically so that a retry, a restart or a
//! conflict finds the resource made before instead of making another.
//!
//! Every name matches SageMaker's pattern `^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$`:
//!
//! - training job: `aleph-<name>-<10 hex>`, the hex a hash of the owner's UID and
//!   of the training spec's fields that define the job;
//! - Model and EndpointConfig: `aleph-<name>-<owner 8 hex>-<8 hex>`, the first
//!   hex a hash of the owner's UID (so that [`is_owned`] recognises what this
//!   owner made), the second a hash of what defines the resource;
//! - endpoint: `spec.sagemaker.endpointName`, or `aleph-<namespace>-<name>-<6 hex>`.

use aleph_crds::{SageMakerServing, SageMakerTraining};
use sha2::{Digest, Sha256};

/// The longest SageMaker name.
pub const MAX_NAME: usize = 63;

/// The prefix of every name the operator derives.
const PREFIX: &str = "aleph-";

/// A hash over a sequence of fields, each length-prefixed so that no two
/// different sequences hash alike.
struct FieldHasher(Sha256);

impl FieldHasher {
    fn new(domain: &str) -> Self {
        let mut h = Self(Sha256::new());
        h.field(domain);
        h
    }

    fn field(&mut self, value: &str) -> &mut Self {
        self.0.update((value.len() as u64).to_be_bytes());
        self.0.update(value.as_bytes());
        self
    }

    fn opt(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.field("some").field(v),
            None => self.field("none"),
        }
    }

    fn hex(&mut self, len: usize) -> String {
        let digest = std::mem::take(&mut self.0).finalize();
        let mut out = String::with_capacity(64);
        for byte in digest {
            out.push_str(&format!("{byte:02x}"));
        }
        out.truncate(len);
        out
    }
}

/// Keeps ASCII letters and digits, turns everything else into `-`, trims `-`
/// from both ends and cuts to `max` characters.
pub fn sanitize(value: &str, max: usize) -> String {
    let mapped: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut out: String = mapped.trim_matches('-').chars().take(max).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// `aleph-<part>-<suffix>`, with `part` sanitised and cut so the whole fits.
fn compose(part: &str, suffix: &str) -> String {
    let room = MAX_NAME - PREFIX.len() - 1 - suffix.len();
    let part = sanitize(part, room);
    if part.is_empty() {
        format!("{PREFIX}{suffix}")
    } else {
        format!("{PREFIX}{part}-{suffix}")
    }
}

/// The 8-hex tag of an owner, part of every Model and EndpointConfig name it makes.
pub fn owner_tag(owner_uid: &str) -> String {
    FieldHasher::new("aleph.dev/owner").field(owner_uid).hex(8)
}

/// Whether `resource` (a Model or EndpointConfig name) was made for this owner.
pub fn is_owned(resource: &str, owner_uid: &str) -> bool {
    let Some(rest) = resource.strip_prefix(PREFIX) else {
        return false;
    };
    let tag = owner_tag(owner_uid);
    // ...-<owner 8 hex>-<8 hex>
    let Some((head, hash)) = rest.rsplit_once('-') else {
        return false;
    };
    let is_hex8 = hash.len() == 8
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    is_hex8 && (head == tag || head.ends_with(&format!("-{tag}")))
}

/// The training job's name: the same owner and training spec always give the
/// same name, a change to the job's definition a new one.
///
/// Tags are not part of the hash: changing them does not retrain (they apply
/// to the next job).
pub fn training_job_name(owner_uid: &str, name: &str, spec: &SageMakerTraining) -> String {
    let mut h = FieldHasher::new("aleph.dev/training-job");
    h.field(owner_uid)
        .field(&spec.image)
        .field(&spec.role_arn)
        .field(&spec.instance_type)
        .field(&spec.instance_count.to_string())
        .field(&spec.volume_size_gb.to_string())
        .field(&spec.max_runtime_seconds.to_string())
        .opt(
            spec.spot
                .as_ref()
                .map(|s| s.max_wait_seconds.to_string())
                .as_deref(),
        )
        .field(&spec.hyperparameters.len().to_string());
    for (k, v) in &spec.hyperparameters {
        h.field(k).field(v);
    }
    h.field(&spec.inputs.len().to_string());
    for input in &spec.inputs {
        h.field(&input.name)
            .field(&input.s3_uri)
            .opt(input.content_type.as_deref());
    }
    h.field(&spec.output_s3_uri).opt(spec.kms_key_id.as_deref());
    match &spec.vpc {
        Some(vpc) => {
            h.field("vpc")
                .field(&vpc.security_group_ids.join(","))
                .field(&vpc.subnets.join(","));
        }
        None => {
            h.field("novpc");
        }
    }
    h.opt(spec.region.as_deref());
    compose(name, &h.hex(10))
}

/// The Model's name: a hash of the image, the artifact and the role (and the owner).
pub fn model_name(
    owner_uid: &str,
    name: &str,
    image: &str,
    model_data_url: &str,
    role_arn: &str,
) -> String {
    let hash = FieldHasher::new("aleph.dev/model")
        .field(owner_uid)
        .field(image)
        .field(model_data_url)
        .field(role_arn)
        .hex(8);
    compose(name, &format!("{}-{hash}", owner_tag(owner_uid)))
}

/// The EndpointConfig's name: a hash of the Model and the variant's shape.
pub fn endpoint_config_name(
    owner_uid: &str,
    name: &str,
    model_name: &str,
    serving: &SageMakerServing,
) -> String {
    let hash = FieldHasher::new("aleph.dev/endpoint-config")
        .field(owner_uid)
        .field(model_name)
        .field(&serving.variant_name)
        .field(&serving.instance_type)
        .field(&serving.initial_instance_count.to_string())
        .hex(8);
    compose(name, &format!("{}-{hash}", owner_tag(owner_uid)))
}

/// The endpoint's name: `spec.sagemaker.endpointName`, or one derived from the
/// namespace and name.
pub fn endpoint_name(namespace: &str, name: &str, serving: &SageMakerServing) -> String {
    if let Some(explicit) = &serving.endpoint_name {
        return explicit.clone();
    }
    let hash = FieldHasher::new("aleph.dev/endpoint")
        .field(namespace)
        .field(name)
        .hex(6);
    compose(&format!("{namespace}-{name}"), &hash)
}

/// Whether `name` is a valid SageMaker resource name.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sagemaker::memory::fixtures::{serving_spec, training_spec};

    #[test]
    fn training_job_name_is_stable_and_valid() {
        let spec = training_spec();
        let a = training_job_name("uid-1", "fraud-model", &spec);
        assert_eq!(a, training_job_name("uid-1", "fraud-model", &spec));
        assert!(a.starts_with("aleph-fraud-model-"), "{a}");
        assert_eq!(a.len(), "aleph-fraud-model-".len() + 10);
        assert!(is_valid_name(&a));
    }

    #[test]
    fn training_job_name_changes_with_the_job_and_the_owner() {
        let spec = training_spec();
        let base = training_job_name("uid-1", "m", &spec);
        assert_ne!(base, training_job_name("uid-2", "m", &spec));
        let mut other = spec.clone();
        other.hyperparameters.insert("eta".into(), "0.2".into());
        assert_ne!(base, training_job_name("uid-1", "m", &other));
        let mut other = spec.clone();
        other.instance_count = 2;
        assert_ne!(base, training_job_name("uid-1", "m", &other));
        // Tags apply to the next job; they do not start one.
        let mut tagged = spec.clone();
        tagged.tags.insert("cost-center".into(), "ml".into());
        assert_eq!(base, training_job_name("uid-1", "m", &tagged));
    }

    #[test]
    fn long_and_odd_names_are_cut_to_valid_ones() {
        let long = "a".repeat(52);
        let job = training_job_name("uid", &long, &training_spec());
        assert!(job.len() <= MAX_NAME && is_valid_name(&job), "{job}");
        let model = model_name("uid", &format!("{long}.x-"), "img", "s3://b/m", "role");
        assert!(model.len() <= MAX_NAME && is_valid_name(&model), "{model}");
        let ep = endpoint_name(&"n".repeat(63), &long, &serving_spec());
        assert!(ep.len() <= MAX_NAME && is_valid_name(&ep), "{ep}");
        let weird = training_job_name("uid", "---", &training_spec());
        assert!(is_valid_name(&weird), "{weird}");
    }

    #[test]
    fn sanitize_keeps_letters_and_digits() {
        assert_eq!(sanitize("my.model_v2", 63), "my-model-v2");
        assert_eq!(sanitize("-abc-", 63), "abc");
        assert_eq!(sanitize("abcdef", 4), "abcd");
        assert_eq!(sanitize("ab-cd", 3), "ab");
    }

    #[test]
    fn models_and_configs_are_recognised_by_owner() {
        let serving = serving_spec();
        let model = model_name(
            "uid-1",
            "m",
            &serving.image,
            "s3://b/model.tar.gz",
            &serving.role_arn,
        );
        let config = endpoint_config_name("uid-1", "m", &model, &serving);
        assert_ne!(model, config);
        assert!(is_owned(&model, "uid-1"));
        assert!(is_owned(&config, "uid-1"));
        assert!(!is_owned(&model, "uid-2"));
        assert!(!is_owned("someone-elses-config", "uid-1"));
        assert!(!is_owned(&format!("{model}x"), "uid-1"));
        let long = model_name("uid-1", &"z".repeat(60), "i", "d", "r");
        assert!(is_owned(&long, "uid-1") && is_valid_name(&long), "{long}");
    }

    #[test]
    fn model_and_config_names_follow_their_inputs() {
        let s = serving_spec();
        let m1 = model_name("u", "m", &s.image, "s3://b/1", &s.role_arn);
        let m2 = model_name("u", "m", &s.image, "s3://b/2", &s.role_arn);
        assert_ne!(m1, m2);
        let mut bigger = s.clone();
        bigger.initial_instance_count = 2;
        assert_ne!(
            endpoint_config_name("u", "m", &m1, &s),
            endpoint_config_name("u", "m", &m1, &bigger)
        );
        assert_eq!(
            endpoint_config_name("u", "m", &m1, &s),
            endpoint_config_name("u", "m", &m1, &s)
        );
    }

    #[test]
    fn endpoint_name_is_explicit_or_derived() {
        let mut s = serving_spec();
        let derived = endpoint_name("team-a", "fraud", &s);
        assert!(
            derived.starts_with("aleph-team-a-fraud-") && is_valid_name(&derived),
            "{derived}"
        );
        assert_ne!(derived, endpoint_name("team-a-fraud", "x", &s));
        s.endpoint_name = Some("prod-fraud".into());
        assert_eq!(endpoint_name("team-a", "fraud", &s), "prod-fraud");
    }

    #[test]
    fn name_validation() {
        assert!(is_valid_name("a"));
        assert!(is_valid_name("a--b"));
        assert!(!is_valid_name("-a"));
        assert!(!is_valid_name("a-"));
        assert!(!is_valid_name("a_b"));
        assert!(!is_valid_name(&"a".repeat(64)));
    }
}
