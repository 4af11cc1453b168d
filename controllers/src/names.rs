//! Names of made objects: bounded to what Kubernetes accepts, and still apart
//! when long names are cut.

use sha2::{Digest, Sha256};

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// `name` if it has at most `max` characters; otherwise its start, cut so
/// that `-` and an 8-character hash of the whole name fit, which keeps
/// different long names apart. The result ends with a letter or digit.
pub fn bounded_name(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let keep = max.saturating_sub(9);
    let mut prefix: String = name.chars().take(keep).collect();
    while prefix.len() > keep || prefix.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        prefix.pop();
    }
    let hash = short_hash(name);
    if prefix.is_empty() {
        hash.chars().take(max).collect()
    } else {
        format!("{prefix}-{hash}")
    }
}
