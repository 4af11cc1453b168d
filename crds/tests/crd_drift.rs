//! The YAML under `crds/` must be exactly what the Rust types generate:
//! run `make crds` after changing a type.

use std::path::PathBuf;

/// The crate's directory: where `cargo test` says it is when it runs the
/// test, so that a test binary built in another checkout (a shared build
/// cache) still reads this one's files.
fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = crate_dir();
    let mut stale = Vec::new();
    for (file, crd) in aleph_crds::all_crds() {
        let generated = aleph_crds::crd_yaml(&crd).expect("a CRD serializes to YAML");
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if committed != generated {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/{stale:?} differ from what the types generate: run `make crds` and commit the result"
    );
}

#[test]
fn crds_directory_holds_exactly_every_kind() {
    let dir = crate_dir();
    let mut yaml: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json"))
        .collect();
    yaml.sort();
    let mut expected: Vec<String> = aleph_crds::all_crds()
        .into_iter()
        .map(|(f, _)| f.to_string())
        .collect();
    expected.sort();
    assert_eq!(yaml, expected);
}
