//! The S3 emulator (moto's server, started per test run by
//! scripts/run-tests.sh): putting objects the way a user would upload them.

use std::path::PathBuf;
use std::process::Command;

use crate::unique_name;

/// The environment variable `name`, which scripts/run-tests.sh exports.
pub fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with `make test` (scripts/run-tests.sh exports it)"
        )
    })
}

/// The Python of moto's virtualenv (moto.sh), which has boto3.
pub fn moto_python() -> PathBuf {
    let cache = std::env::var("ALEPH_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/aleph", std::env::var("HOME").unwrap_or_default()));
    let script = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sagemaker/moto.sh"),
    )
    .expect("e2e/sagemaker/moto.sh");
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("MOTO_VERSION="))
        .expect("moto.sh sets MOTO_VERSION");
    let python = PathBuf::from(format!("{cache}/venv-moto-{version}/bin/python"));
    assert!(
        python.is_file(),
        "{} is missing: run e2e/sagemaker/moto.sh install",
        python.display()
    );
    python
}

/// Puts `objects` (key, contents) into a new bucket of the emulator.
pub fn s3_put(bucket: &str, objects: &[(&str, &[u8])]) {
    let dir = std::env::temp_dir().join(unique_name("s3-objects"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut pairs = Vec::new();
    for (i, (key, data)) in objects.iter().enumerate() {
        let file = dir.join(format!("object-{i}"));
        std::fs::write(&file, data).expect("write object");
        pairs.push(format!("{key}={}", file.display()));
    }
    let status = Command::new(moto_python())
        .args([
            "-c",
            "import sys, boto3\n\
             s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
                               aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             s3.create_bucket(Bucket=sys.argv[2])\n\
             for pair in sys.argv[3:]:\n\
             \x20   key, path = pair.split('=', 1)\n\
             \x20   s3.upload_file(path, sys.argv[2], key)\n",
            &env_var("ALEPH_MOTO_URL"),
            bucket,
        ])
        .args(&pairs)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .status()
        .expect("run boto3");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "uploading to the emulator's S3 failed");
}

/// Runs `script` (Python, with `s3` a boto3 client of the emulator and
/// `args` the rest of the arguments) and returns what it printed.
fn s3_script(script: &str, args: &[&str]) -> Vec<u8> {
    let prelude = "import sys, boto3\n\
                   s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
                   \x20                 aws_access_key_id='testing', aws_secret_access_key='testing')\n\
                   args = sys.argv[2:]\n";
    let output = Command::new(moto_python())
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .arg(env_var("ALEPH_MOTO_URL"))
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run boto3");
    assert!(
        output.status.success(),
        "boto3 against the emulator failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The contents of the object `key` of `bucket` in the emulator.
pub fn s3_get(bucket: &str, key: &str) -> Vec<u8> {
    s3_script(
        "sys.stdout.buffer.write(s3.get_object(Bucket=args[0], Key=args[1])['Body'].read())\n",
        &[bucket, key],
    )
}

/// The keys under `prefix` in `bucket` of the emulator, sorted.
pub fn s3_keys(bucket: &str, prefix: &str) -> Vec<String> {
    let out = s3_script(
        "for page in s3.get_paginator('list_objects_v2').paginate(Bucket=args[0], Prefix=args[1]):\n\
         \x20   for o in page.get('Contents', []):\n\
         \x20       print(o['Key'])\n",
        &[bucket, prefix],
    );
    let mut keys: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort();
    keys
}

/// The Secret with the emulator's endpoint and placeholder keys, as a user
/// gives them for any S3.
pub fn s3_secret() -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: s3}}
stringData:
  AWS_ENDPOINT_URL: "{}"
  AWS_ACCESS_KEY_ID: testing
  AWS_SECRET_ACCESS_KEY: testing
  AWS_REGION: us-east-1
"#,
        env_var("ALEPH_MOTO_URL")
    )
}

/// Puts a tiny one-layer llama, `tiny-chat`, at `tiny/chat.gguf` in `bucket`.
pub fn s3_put_tiny_chat(bucket: &str) {
    s3_put(
        bucket,
        &[(
            "tiny/chat.gguf",
            &tiny_gguf::tiny_llama("tiny-chat", 1, tiny_gguf::Shape::default()),
        )],
    );
}

/// An AIModel whose source is `uri` read with the `s3` Secret's credentials;
/// `rest` is the rest of its spec (YAML lines indented by two spaces).
pub fn s3_model_yaml(name: &str, uri: &str, rest: &str) -> String {
    format!(
        "\napiVersion: aleph.dev/v1alpha1\nkind: AIModel\nmetadata: {{name: {name}}}\nspec:\n  source:\n    uri: {uri}\n    credentialsSecret: {{name: s3}}\n{rest}"
    )
}
