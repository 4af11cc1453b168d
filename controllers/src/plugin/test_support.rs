//! Fixtures of the Plugin stages' tests.

use aleph_crds::plugin::{Plugin, PluginSpec};

/// The spec of a Plugin named `p` made of `fields`: YAML lines indented under
/// `spec:`.
pub fn spec(fields: &str) -> PluginSpec {
    let yaml = format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: Plugin\nmetadata: {{ name: p }}\nspec:\n{fields}\n"
    );
    let p: Plugin = serde_saphyr::from_str(&yaml).expect("fixture parses");
    p.spec
}
