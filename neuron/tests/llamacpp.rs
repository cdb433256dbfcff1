//! The `llamacpp` harness with the real `llama-server` and a real GGUF model (installed by
//! `bash tests/install.sh`): load, chat through the neuron (streaming and not), unload, crash
//! detection, draining a running stream, and two models side by side.
//!
//! These tests fail (never skip) when the engine or model is missing. They run one at a time,
//! so that the measured load time and token rate are not shared between engines.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{TOKEN, TestNeuron, load_body};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// The real-engine tests run one after another (they share two CPU cores).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    std::env::var_os("CORTEX_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("cortex")))
        .unwrap_or_else(|| home.join(".cache/cortex"))
}

/// `(llama-server, models_dir)`, or a failure telling how to install them.
fn installed() -> (PathBuf, PathBuf) {
    let server = std::env::var_os("LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("llama.cpp/11434.0.0/bin/llama-server"));
    let models = std::env::var_os("CORTEX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models"));
    assert!(
        server.is_file(),
        "llama-server not found at {} (set LLAMA_SERVER): run `bash tests/install.sh` first",
        server.display()
    );
    assert!(
        models.join(GEMMA).is_file(),
        "{GEMMA} not found in {} (set CORTEX_MODELS_DIR): run `bash tests/install.sh` first",
        models.display()
    );
    (server, models)
}

async fn start(ports: (u16, u16)) -> TestNeuron {
    let (server, models) = installed();
    let harness =
        format!("[harness.llamacpp]\nkind = \"llamacpp\"\nbinary = {:?}\n", server.display().to_string());
    TestNeuron::start(ports, &harness, Some(&models), None).await
}

fn gemma(model: &str) -> Value {
    let mut body = load_body(model, "llamacpp", GEMMA);
    body["profile"]["ctx_size"] = json!(4096);
    body
}

/// The pid of the llama-server serving `alias`, found through /proc.
fn engine_pid(alias: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serves = args.windows(2).any(|w| w[0] == b"--alias" && w[1] == alias.as_bytes());
        let is_server = args.first().is_some_and(|a| a.ends_with(b"llama-server"));
        (serves && is_server).then_some(pid)
    })
}

fn process_gone(pid: u32) -> bool {
    !PathBuf::from(format!("/proc/{pid}")).exists()
}

async fn load_and_wait(node: &TestNeuron, model: &str) -> Value {
    let (status, accepted) = node.call("/models/load", &gemma(model)).await;
    assert_eq!(status, 202, "{accepted}");
    let ready = node.wait_ready(model, Duration::from_secs(180)).await;
    assert_eq!(ready["status"], "loaded", "{ready}");
    ready
}

fn chat(model: &str, stream: bool, max_tokens: u32) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": max_tokens, "temperature": 0,
           "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "Write one sentence about the sea."}]})
}

/// Read an SSE body to its end: the `data:` payloads in order.
async fn read_events(response: reqwest::Response) -> Vec<String> {
    let mut text = String::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    text.split("\n\n").filter_map(|event| event.trim().strip_prefix("data: ").map(str::to_owned)).collect()
}

#[tokio::test]
async fn load_chat_stream_and_unload_a_real_engine() {
    let _serial = SERIAL.lock().await;
    let node = start((42000, 42019)).await;
    let model = "real/gemma-lifecycle";
    let ready = load_and_wait(&node, model).await;
    let load_ms = ready["load_duration_ms"].as_u64().expect("load duration");
    eprintln!("llama-server load time (request to /health 200): {load_ms} ms");
    let pid = engine_pid(model).expect("llama-server process");

    let (status, answer) = node.call("/v1/chat/completions", &chat(model, false, 32)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], model, "the engine serves the fleet id (--alias)");
    assert!(answer["choices"][0]["message"]["content"].as_str().is_some_and(|t| !t.is_empty()), "{answer}");
    assert!(answer["usage"]["completion_tokens"].as_u64().is_some_and(|n| n > 0), "{answer}");
    let rate = answer["timings"]["predicted_per_second"].as_f64().unwrap_or(0.0);
    eprintln!(
        "llama-server generation: {rate:.1} tokens/s ({} tokens, non-streaming)",
        answer["usage"]["completion_tokens"]
    );

    let response = node.post("/v1/chat/completions", &chat(model, true, 32)).send().await.expect("stream");
    assert_eq!(response.status(), 200);
    let events = read_events(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events.iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect::<Vec<_>>()
        .concat();
    assert!(!content.is_empty(), "{events:?}");
    let usage = chunks.iter().find(|c| c["choices"] == json!([])).expect("a usage chunk (include_usage)");
    assert!(usage["usage"]["completion_tokens"].as_u64().is_some_and(|n| n > 0), "{usage}");
    if let Some(rate) = chunks.iter().rev().find_map(|c| c["timings"]["predicted_per_second"].as_f64()) {
        eprintln!("llama-server generation: {rate:.1} tokens/s (streaming)");
    }
    assert_eq!(
        node.get_json("/models").await["models"][0]["in_flight"],
        0,
        "the finished stream is counted out"
    );

    let (status, unloaded) = node.call("/models/unload", &json!({"model": model})).await;
    assert_eq!(status, 200, "{unloaded}");
    assert!(process_gone(pid), "llama-server {pid} still runs after unload");
    assert_eq!(node.get_json("/models").await["models"], json!([]));
    node.stop().await;
}

#[tokio::test]
async fn a_killed_engine_is_reported_failed_with_its_log() {
    let _serial = SERIAL.lock().await;
    let node = start((42020, 42039)).await;
    let model = "real/gemma-crash";
    load_and_wait(&node, model).await;
    let generation = node.generation().await;
    let pid = engine_pid(model).expect("llama-server process");
    let raw = i32::try_from(pid).expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9");

    let failed = node.poll_model(model, Duration::from_secs(30), |m| m["status"] == "failed").await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("signal 9"), "{error}");
    assert!(error.lines().count() > 5, "the report carries the engine's last log lines: {error}");
    assert!(node.generation().await > generation, "a crash is a lifecycle change");
    let (status, refused) = node.call("/v1/chat/completions", &chat(model, false, 4)).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (503, Some("model_failed")));
    let metrics = node.get("/metrics").send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("neuron_engine_crashes_total{model=\"real/gemma-crash\"} 1"), "{metrics}");

    // A failed model can be loaded again.
    load_and_wait(&node, model).await;
    node.stop().await;
}

#[tokio::test]
async fn unloading_lets_a_running_stream_finish_then_stops_the_engine() {
    let _serial = SERIAL.lock().await;
    let node = start((42040, 42059)).await;
    let model = "real/gemma-drain";
    load_and_wait(&node, model).await;
    let pid = engine_pid(model).expect("llama-server process");

    // Long enough (and EOS ignored) that the unload surely starts while tokens still flow.
    let mut body = chat(model, true, 200);
    body["ignore_eos"] = json!(true);
    body["messages"][0]["content"] = json!("Count from one to one hundred in words.");
    let response = node.post("/v1/chat/completions", &body).send().await.expect("stream");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text =
        String::from_utf8_lossy(&stream.next().await.expect("first chunk").expect("bytes")).into_owned();

    let unloading = {
        let client = node.client.clone();
        let url = format!("{}/models/unload", node.url);
        tokio::spawn(async move {
            client.post(url).bearer_auth(TOKEN).json(&json!({"model": model})).send().await
        })
    };
    node.poll_model(model, Duration::from_secs(10), |m| m["status"] == "unloading").await;
    assert!(!unloading.is_finished(), "unload waits for the running stream");
    assert!(!process_gone(pid), "the engine runs while the stream does");

    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "the stream completed: {text}");
    let unloaded = unloading.await.expect("task").expect("unload");
    assert_eq!(unloaded.status(), 200);
    assert!(process_gone(pid), "llama-server {pid} stopped after the stream");
    node.stop().await;
}

#[tokio::test]
async fn two_models_from_one_file_run_side_by_side() {
    let _serial = SERIAL.lock().await;
    let node = start((42060, 42079)).await;
    let (first, second) = ("real/gemma-one", "real/gemma-two");
    node.call("/models/load", &gemma(first)).await;
    node.call("/models/load", &gemma(second)).await;
    for model in [first, second] {
        let ready = node.wait_ready(model, Duration::from_secs(180)).await;
        assert_eq!(ready["status"], "loaded", "{ready}");
    }
    let (one, two) = (engine_pid(first).expect("first"), engine_pid(second).expect("second"));
    assert_ne!(one, two, "one process per model");
    for model in [first, second] {
        let (status, answer) = node.call("/v1/chat/completions", &chat(model, false, 8)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model"], model);
    }
    node.stop().await;
    assert!(process_gone(one) && process_gone(two), "shutdown stops every engine it started");
}
