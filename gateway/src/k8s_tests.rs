use super::*;

fn runtime(engine: RuntimeEngine, args: &[&str]) -> ModelRuntime {
    ModelRuntime {
        engine,
        args: args.iter().map(|a| a.to_string()).collect(),
        ..ModelRuntime::default()
    }
}

#[test]
fn served_names_follow_what_each_engine_is_started_with() {
    let hf = Some("hf://org/model");
    let served = |engine, args: &[&str], uri| served_name_of(&runtime(engine, args), uri, "m");
    // vLLM: --served-model-name <aimodel>; the spec's own comes last and wins.
    assert_eq!(served(RuntimeEngine::Vllm, &[], hf), "m");
    assert_eq!(
        served(
            RuntimeEngine::Vllm,
            &["--served-model-name", "chat", "alias"],
            hf
        ),
        "chat"
    );
    assert_eq!(
        served(RuntimeEngine::Vllm, &["--served-model-name=chat"], hf),
        "chat"
    );
    // llama.cpp: --alias <aimodel> unless the spec sets --alias or -a.
    let gguf = Some("s3://b/x.gguf");
    assert_eq!(served(RuntimeEngine::Llamacpp, &[], gguf), "m");
    assert_eq!(served(RuntimeEngine::Llamacpp, &["-a", "c2"], gguf), "c2");
    assert_eq!(served(RuntimeEngine::Llamacpp, &["--alias=c3"], gguf), "c3");
    assert_eq!(
        served(RuntimeEngine::Llamacpp, &["--alias-other", "x"], gguf),
        "m"
    );
    // Ollama: the pulled name; a model store on a volume has none to read.
    let ollama = Some("ollama://llama3.2:1b");
    assert_eq!(served(RuntimeEngine::Ollama, &[], ollama), "llama3.2:1b");
    assert_eq!(
        served(RuntimeEngine::Ollama, &[], Some("ollama://qwen")),
        "qwen"
    );
    assert_eq!(served(RuntimeEngine::Ollama, &[], Some("pvc://store")), "m");
    assert_eq!(served(RuntimeEngine::Ollama, &[], None), "m");
    // The others: the AIModel's name, whatever the arguments.
    assert_eq!(served(RuntimeEngine::Tgi, &["--alias", "x"], hf), "m");
    assert_eq!(served(RuntimeEngine::Triton, &[], hf), "m");
    assert_eq!(
        served(RuntimeEngine::Custom, &["--served-model-name", "x"], hf),
        "m"
    );
    // A flag without its value changes nothing.
    assert_eq!(
        served(RuntimeEngine::Vllm, &["--served-model-name"], hf),
        "m"
    );
}

#[test]
fn trimming_keeps_only_the_key_hash_of_a_secret() {
    let mut secret = Secret {
        data: Some(BTreeMap::from([
            (
                KEY_HASH_FIELD.to_string(),
                k8s_openapi::ByteString(b"ab".to_vec()),
            ),
            (
                "key".to_string(),
                k8s_openapi::ByteString(b"sk-aleph-x".to_vec()),
            ),
        ])),
        ..Secret::default()
    };
    trim_secret(&mut secret);
    let fields: Vec<&String> = secret.data.iter().flat_map(|d| d.keys()).collect();
    assert_eq!(fields, [KEY_HASH_FIELD]);
}
