//! Engines users actually run, end to end with real processes: the `command` harness starting
//! the installed `llama-server` from an argv template (chat through the neuron and through
//! `cortex serve`, crash detection, unload), and the `mistralrs` harness (see `mistralrs.rs`).
//!
//! The real-engine tests fail (never skip) when `bash tests/install.sh` has not run. They run
//! one at a time: they share two CPU cores.

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::time::Duration;

use cortex_e2e::{
    Daemon, GEMMA_GGUF, Neuron, cortex_config, eventually, find_process, installed_llama_server,
    neuron_table, process_gone, write_atomic,
};
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `command` harness that starts llama-server the way a user would write it in neuron.toml.
fn template_harness() -> (String, std::path::PathBuf) {
    let (server, models) = installed_llama_server();
    let table = format!(
        "[harness.tmpl]\nkind = \"command\"\n\
         command = [{server:?}, \"-m\", \"{{source}}\", \"--alias\", \"{{model}}\", \"-ngl\", \"0\", \
                    \"--host\", \"127.0.0.1\", \"--port\", \"{{port}}\"]\n\
         ctx_size_args = [\"-c\", \"{{ctx_size}}\"]\n\
         env = {{ LLAMA_ARG_N_PARALLEL = \"1\", CORTEX_TEST_MODEL = \"{{model}}\" }}\n\
         health_path = \"/health\"\nhealth_status = 200\n\
         anthropic_messages = true\ncount_tokens = true\n",
        server = server.display().to_string(),
    );
    (table, models)
}

/// Load `model` from the gemma GGUF and long-poll until it is no longer loading.
async fn load_gemma(neuron: &Neuron, model: &str) -> Value {
    let body =
        json!({"model": model, "profile": {"harness": "tmpl", "source": GEMMA_GGUF, "ctx_size": 2048}});
    let (status, answer) = neuron.call("/models/load", &body).await;
    assert_eq!(status, 202, "{answer}");
    let ready = neuron.get(&format!("/models/wait?model={model}&timeout_ms=180000")).await;
    assert_eq!(ready["status"], "loaded", "{ready}\n{}", neuron.process.log_text());
    ready
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8})
}

fn environ(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_template_runs_llama_server_chats_detects_a_crash_and_unloads() {
    let _serial = SERIAL.lock().await;
    let (harness, models) = template_harness();
    let dir = tempfile::tempdir().unwrap();
    let neuron = Neuron::start_in(dir.path(), "tmpl-node", &harness, Some(&models)).await;

    let discovery = neuron.get("/discovery").await;
    let info = &discovery["harnesses"][0];
    assert_eq!(info["kind"], "command", "{discovery}");
    assert_eq!(
        (info["anthropic_messages"].as_bool(), info["count_tokens"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(info["embeddings"], false);

    let model = "tmpl/gemma";
    let ready = load_gemma(&neuron, model).await;
    eprintln!("command harness: load → ready in {} ms", ready["load_duration_ms"]);
    let pid = find_process("llama-server", "--alias", model).expect("the engine process runs");
    let env = environ(pid);
    assert!(env.contains(&"CUDA_VISIBLE_DEVICES=".to_owned()), "a CPU model sees no GPU");
    assert!(env.contains(&format!("CORTEX_TEST_MODEL={model}")), "env placeholders are filled");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap().replace('\0', " ");
    assert!(cmdline.contains(" -c 2048 "), "ctx_size_args follow the profile: {cmdline}");

    let (status, answer) = neuron.call("/v1/chat/completions", &chat(model)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], model);
    assert!(answer["choices"][0]["message"]["content"].is_string(), "{answer}");
    let messages = json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]});
    let (status, answer) = neuron.call("/v1/messages", &messages).await;
    assert_eq!((status, &answer["type"]), (200, &json!("message")), "{answer}");

    // kill -9 behind the neuron's back: the model becomes failed, with how and the log's tail.
    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let failed = eventually("the crash to be reported", Duration::from_secs(20), async || {
        let models = neuron.get("/models").await;
        let entry = models["models"].as_array()?.iter().find(|m| m["id"] == model)?.clone();
        (entry["status"] == "failed").then_some(entry)
    })
    .await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("signal 9"), "{error}");
    assert!(error.contains("last log lines"), "{error}");
    let (status, answer) = neuron.call("/v1/chat/completions", &chat(model)).await;
    assert_eq!((status, &answer["error"]["code"]), (503, &json!("model_failed")));

    // A new load replaces the failed one; unload stops its process.
    load_gemma(&neuron, model).await;
    let pid = find_process("llama-server", "--alias", model).expect("the engine runs again");
    let (status, answer) = neuron.call("/models/unload", &json!({"model": model})).await;
    assert_eq!(status, 200, "{answer}");
    eventually("the engine process to end", Duration::from_secs(15), async || {
        process_gone(pid).then_some(())
    })
    .await;
    assert_eq!(neuron.get("/models").await["models"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_template_model_is_served_through_cortex() {
    let _serial = SERIAL.lock().await;
    let (harness, models) = template_harness();
    let dir = tempfile::tempdir().unwrap();
    let neuron = Neuron::start_in(dir.path(), "tmpl-node", &harness, Some(&models)).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    write_atomic(
        &fleet.join("fleet.toml"),
        &format!(
            "{}[[model]]\nid = \"gemma-tmpl\"\nharness = \"tmpl\"\nsource = \"{GEMMA_GGUF}\"\nmin_devices = 0\n\
             ram_mb = 600\nctx_size = 2048\npinned_on = [\"tmpl-node\"]\n",
            neuron_table(&neuron)
        ),
    );
    let (config, port) = cortex_config(dir.path());
    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
    eventually("cortex to load the pinned model", Duration::from_secs(180), async || {
        (neuron.loaded().await == ["gemma-tmpl"]).then_some(())
    })
    .await;

    let client = reqwest::Client::new();
    let gateway = format!("http://127.0.0.1:{}", daemon.port);
    let response =
        client.post(format!("{gateway}/v1/chat/completions")).json(&chat("gemma-tmpl")).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["choices"][0]["message"]["content"].is_string(), "{answer}");

    // The harness says the engine speaks Anthropic natively: cortex passes it through.
    let messages =
        json!({"model": "gemma-tmpl", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]});
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
    assert_eq!(answer["content"][0]["type"], "text", "{answer}");
    let counted = client
        .post(format!("{gateway}/v1/messages/count_tokens"))
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "gemma-tmpl", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 200);
    let counted: Value = counted.json().await.unwrap();
    assert!(counted["input_tokens"].as_u64().is_some_and(|n| n > 0), "{counted}");
}
