//! The `mistralrs` harness end to end with a real `neuron` process: against a fake mistral.rs
//! that follows the documented lifecycle protocol (load/unload/status/readiness through the
//! neuron API, the fleet id mapped to mistral.rs's model id, chat through the neuron and through
//! `cortex serve`, a failed reload reported with the engine's error, a model unloaded behind the
//! neuron's back, 0.8.1's reload bug), and against the real mistral.rs 0.8.1 that
//! `bash tests/install.sh` builds (the last test, which fails without it).

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::time::Duration;

use cortex_e2e::fake_mistralrs::FakeMistralrs;
use cortex_e2e::{Daemon, Neuron, cortex_config, eventually, neuron_table, write_atomic};
use serde_json::{Value, json};

fn harness(url: &str) -> String {
    format!(
        "[harness.mrs]\nkind = \"mistralrs\"\nurl = \"{url}\"\nmodel_ids = {{ other = \"/models/other-llama\" }}\n"
    )
}

/// Load `model` from mistral.rs's `source` and long-poll until it is no longer loading.
async fn load(neuron: &Neuron, model: &str, source: &str) -> Value {
    let body = json!({"model": model, "profile": {"harness": "mrs", "source": source}});
    let (status, answer) = neuron.call("/models/load", &body).await;
    assert_eq!(status, 202, "{answer}");
    neuron.get(&format!("/models/wait?model={model}&timeout_ms=30000")).await
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_neuron_drives_mistralrs_through_its_lifecycle_api() {
    // `/models/other-llama` is loaded already: loading it must not reload it (0.8.1's bug).
    let fake = FakeMistralrs::start(
        &["tiny", "/models/other-llama"],
        &["/models/other-llama"],
        &[("broken", "cannot load weights: tensor blk.0.attn_q.weight is truncated")],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let neuron = Neuron::start(dir.path(), "mrs-node", &harness(&fake.url)).await;

    let discovery = neuron.get("/discovery").await;
    let info = &discovery["harnesses"][0];
    assert_eq!(info["kind"], "mistralrs", "{discovery}");
    assert_eq!(info["anthropic_messages"], false, "mistral.rs 0.8.1 has no /v1/messages");

    // Load = reload in mistral.rs; ready once /v1/models says loaded.
    let ready = load(&neuron, "tiny-chat", "tiny").await;
    assert_eq!(ready["status"], "loaded", "{ready}\n{}", neuron.process.log_text());
    assert_eq!(fake.status("tiny").as_deref(), Some("loaded"));
    assert!(ready["load_duration_ms"].as_u64().is_some_and(|ms| ms >= 300), "waited for the reload: {ready}");

    // The fleet id is mapped to mistral.rs's model id in what is forwarded.
    let (status, answer) = neuron.call("/v1/chat/completions", &chat("tiny-chat")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello from the fake mistral.rs.");
    assert_eq!(fake.chats(), ["tiny"]);

    // `model_ids` maps a source to an id that is not a relative path.
    let ready = load(&neuron, "other-chat", "other").await;
    assert_eq!(ready["status"], "loaded", "{ready}");
    assert_eq!(fake.status("/models/other-llama").as_deref(), Some("loaded"));

    // Unload = unload in mistral.rs.
    let (status, answer) = neuron.call("/models/unload", &json!({"model": "tiny-chat"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(fake.status("tiny").as_deref(), Some("unloaded"));
    let ids: Vec<Value> =
        neuron.get("/models").await["models"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, [json!("other-chat")]);

    // A failed reload is reported with the engine's own error; an unknown model as not_found.
    let failed = load(&neuron, "broken-chat", "broken").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("internal_error") && error.contains("blk.0.attn_q.weight is truncated"),
        "{error}"
    );
    let ghost = load(&neuron, "ghost-chat", "ghost").await;
    assert_eq!(ghost["status"], "failed", "{ghost}");
    assert!(ghost["error"].as_str().unwrap().contains("not_found"), "{ghost}");

    // Unloaded behind the neuron's back: reported failed, like a crash.
    fake.set_status("/models/other-llama", "unloaded");
    let gone = eventually("the lost model to be reported", Duration::from_secs(15), async || {
        let models = neuron.get("/models").await;
        let entry = models["models"].as_array()?.iter().find(|m| m["id"] == "other-chat")?.clone();
        (entry["status"] == "failed").then_some(entry)
    })
    .await;
    assert!(gone["error"].as_str().unwrap().contains("unloaded"), "{gone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mistralrs_model_is_served_through_cortex_with_anthropic_translated() {
    let fake = FakeMistralrs::start(&["tiny"], &[], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let neuron = Neuron::start(dir.path(), "mrs-node", &harness(&fake.url)).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    write_atomic(
        &fleet.join("fleet.toml"),
        &format!(
            "{}[[model]]\nid = \"tiny-chat\"\nharness = \"mrs\"\nsource = \"tiny\"\nmin_devices = 0\nram_mb = 100\n\
             pinned_on = [\"mrs-node\"]\n",
            neuron_table(&neuron)
        ),
    );
    let (config, port) = cortex_config(dir.path());
    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
    eventually("cortex to load the pinned model", Duration::from_secs(30), async || {
        (neuron.loaded().await == ["tiny-chat"]).then_some(())
    })
    .await;
    assert_eq!(fake.status("tiny").as_deref(), Some("loaded"));

    let client = reqwest::Client::new();
    let gateway = format!("http://127.0.0.1:{}", daemon.port);
    let response =
        client.post(format!("{gateway}/v1/chat/completions")).json(&chat("tiny-chat")).send().await;
    let answer: Value = response.unwrap().json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello from the fake mistral.rs.", "{answer}");

    // The harness says no native /v1/messages: cortex translates to Chat Completions and back.
    let messages =
        json!({"model": "tiny-chat", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]});
    let response = client
        .post(format!("{gateway}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&messages)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["type"], "message", "{answer}");
    assert_eq!(answer["content"][0]["text"], "Hello from the fake mistral.rs.", "{answer}");
    assert!(
        fake.chats().iter().all(|m| m == "tiny"),
        "mistral.rs only ever saw its own id: {:?}",
        fake.chats()
    );
}

/// The real mistral.rs binary and the tiny llama GGUF, or a failure saying how to install them.
fn installed_mistralrs() -> (std::path::PathBuf, std::path::PathBuf) {
    let cache = cortex_e2e::cache_dir();
    let binary = std::env::var_os("MISTRALRS_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache.join("mistralrs/bin/mistralrs"));
    let models = std::env::var_os("CORTEX_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache.join("models"));
    let gguf = models.join("tiny-llama/tiny-llama.gguf");
    assert!(
        binary.is_file(),
        "mistral.rs is not installed at {} (set MISTRALRS_BIN): run `bash tests/install.sh` first",
        binary.display()
    );
    assert!(gguf.is_file(), "{} is missing: run `bash tests/install.sh` first", gguf.display());
    (binary, gguf)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_mistralrs_is_started_driven_through_its_lifecycle_and_reports_a_failed_reload() {
    let (binary, gguf) = installed_mistralrs();
    let dir = tempfile::tempdir().unwrap();
    // mistral.rs knows the model by its folder (`-m`); the test owns a copy it can break.
    let folder = dir.path().join("mistral-models/tiny");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(&gguf, folder.join("tiny-llama.gguf")).unwrap();
    let folder = folder.display().to_string();
    let port = cortex_e2e::free_port();
    // `serve` (one model): in 0.8.1 only it can unload and reload (from-config answers
    // no_loader_config, see docs/neuron.md).
    let harness = format!(
        "[harness.mrs]\nkind = \"mistralrs\"\nurl = \"http://127.0.0.1:{port}\"\n\
         command = [{binary:?}, \"--token-source\", \"none\", \"serve\", \"--host\", \"127.0.0.1\", \"-p\", \"{{port}}\", \
                    \"--cpu\", \"--max-seq-len\", \"512\", \"--format\", \"gguf\", \"-m\", {folder:?}, \"-f\", \"tiny-llama.gguf\"]\n\
         env = {{ HF_HUB_OFFLINE = \"1\" }}\nmodel_ids = {{ tiny = {folder:?} }}\n",
        binary = binary.display().to_string(),
    );
    let neuron = Neuron::start(dir.path(), "mrs-real", &harness).await;
    let engine = format!("http://127.0.0.1:{port}");
    let status_of = async || -> String {
        let answer: Value = reqwest::Client::new()
            .post(format!("{engine}/v1/models/status"))
            .json(&json!({"model_id": folder}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["status"].as_str().unwrap_or_default().to_owned()
    };
    let server_log =
        || std::fs::read_to_string(dir.path().join("mrs-real/logs/mistralrs-mrs.log")).unwrap_or_default();

    // The first load starts the server (which loads its model); the reload then answers loaded.
    let body = json!({"model": "tiny-chat", "profile": {"harness": "mrs", "source": "tiny"}});
    let (status, answer) = neuron.call("/models/load", &body).await;
    assert_eq!(status, 202, "{answer}");
    let ready = neuron.get("/models/wait?model=tiny-chat&timeout_ms=300000").await;
    assert_eq!(ready["status"], "loaded", "{ready}\n{}", server_log());
    eprintln!("real mistral.rs: server start + load → ready in {} ms", ready["load_duration_ms"]);
    assert_eq!(status_of().await, "loaded");
    let (status, answer) = neuron.call("/v1/chat/completions", &chat("tiny-chat")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["choices"][0]["message"]["content"].is_string(), "{answer}");

    // Unload and load again: mistral.rs's unload and reload.
    let (status, answer) = neuron.call("/models/unload", &json!({"model": "tiny-chat"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(status_of().await, "unloaded");
    let ready = load(&neuron, "tiny-chat", "tiny").await;
    assert_eq!(ready["status"], "loaded", "{ready}\n{}", server_log());
    eprintln!("real mistral.rs: reload → ready in {} ms", ready["load_duration_ms"]);
    assert_eq!(status_of().await, "loaded");

    // A reload that fails in the engine is reported with the engine's words (no backtrace).
    neuron.call("/models/unload", &json!({"model": "tiny-chat"})).await;
    let file = std::path::Path::new(&folder).join("tiny-llama.gguf");
    std::fs::write(&file, b"GGUF but truncated").unwrap();
    let failed = load(&neuron, "tiny-chat", "tiny").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("internal_error") && error.contains("unsupported magic"), "{error}");
    assert!(!error.contains("candle_core::error::Error::bt"), "backtraces are cut: {error}");
    eprintln!("real mistral.rs: failed reload reported as: {error}");

    // Fixed, it loads again, and cortex serves it.
    std::fs::copy(&gguf, &file).unwrap();
    let ready = load(&neuron, "tiny-chat", "tiny").await;
    assert_eq!(ready["status"], "loaded", "{ready}\n{}", server_log());
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    write_atomic(
        &fleet.join("fleet.toml"),
        &format!(
            "{}[[model]]\nid = \"tiny-chat\"\nharness = \"mrs\"\nsource = \"tiny\"\nmin_devices = 0\nram_mb = 100\n\
             pinned_on = [\"mrs-real\"]\n",
            neuron_table(&neuron)
        ),
    );
    let (config, cortex_port) = cortex_config(dir.path());
    let daemon = Daemon::start(&fleet, &config, cortex_port, dir.path().join("cortex.log")).await;
    eventually("cortex to be in sync", Duration::from_secs(30), async || {
        (daemon.status().await["sync"] == "Synced").then_some(())
    })
    .await;
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{cortex_port}/v1/chat/completions"))
        .json(&chat("tiny-chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["choices"][0]["message"]["content"].is_string(), "{answer}");
    drop(daemon);

    // The server dies: the model it held is failed, with how.
    let pid = cortex_e2e::find_process("mistralrs", "-m", &folder).expect("server pid");
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let gone = eventually("the crash to be reported", Duration::from_secs(20), async || {
        let models = neuron.get("/models").await;
        let entry = models["models"].as_array()?.iter().find(|m| m["id"] == "tiny-chat")?.clone();
        (entry["status"] == "failed").then_some(entry)
    })
    .await;
    assert!(gone["error"].as_str().unwrap().contains("signal 9"), "{gone}");
}
