//! The neuron API in-process (bound to port 0) with the simulated engine and a fake GPU probe:
//! auth, the generation precondition, load/unload semantics, source confinement, draining and
//! the readiness long-poll.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TOKEN, TestNeuron, load_body};
use futures_util::StreamExt;
use neuron::{DriverInfo, StaticProbe};
use plans::topology::DeviceStatus;
use serde_json::{Value, json};

const SIM: &str = r#"
[harness.sim]
kind = "sim"
load_ms = 200
ttft_ms = 10
tokens_per_second = 1000
devices = [{ name = "SimGPU 24G", vram_mb = 24000 }, { name = "SimGPU 24G", vram_mb = 24000 }]
"#;

#[tokio::test]
async fn the_token_is_required_everywhere_but_liveness() {
    let node = TestNeuron::start((41000, 41019), SIM, None, None).await;
    let livez = node.client.get(format!("{}/livez", node.url)).send().await.expect("livez");
    assert_eq!(livez.status(), 200);
    for path in ["/discovery", "/health", "/models", "/metrics", "/nope"] {
        let anonymous = node.client.get(format!("{}{path}", node.url)).send().await.expect("request");
        assert_eq!(anonymous.status(), 401, "{path} without token");
        let body: Value = anonymous.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unauthorized");
        let wrong =
            node.client.get(format!("{}{path}", node.url)).bearer_auth("nope").send().await.expect("request");
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
    }
    let load = node.client.post(format!("{}/models/load", node.url)).json(&load_body("m", "sim", "m.gguf"));
    assert_eq!(load.send().await.expect("load").status(), 401);
    let chat = node.client.post(format!("{}/v1/chat/completions", node.url)).json(&json!({"model": "m"}));
    assert_eq!(chat.send().await.expect("chat").status(), 401);
    assert_eq!(node.get("/discovery").send().await.expect("discovery").status(), 200);
    node.stop().await;
}

#[tokio::test]
async fn load_wait_chat_unload_and_every_change_bumps_the_generation() {
    let node = TestNeuron::start((41020, 41039), SIM, None, None).await;
    let discovery = node.get_json("/discovery").await;
    assert_eq!(discovery["simulated"], true);
    assert_eq!(discovery["devices"].as_array().map(Vec::len), Some(2));
    assert_eq!(discovery["harnesses"][0]["kind"], "sim");
    let boot_id = discovery["boot_id"].as_str().expect("boot id").to_owned();

    let g0 = node.generation().await;
    let mut body = load_body("org/model-a", "sim", "a.gguf");
    body["devices"] = json!([0, 1]);
    body["vram_mb"] = json!(10000);
    let (status, loading) = node.call("/models/load", &body).await;
    assert_eq!(status, 202, "{loading}");
    assert_eq!(loading["generation"], g0 + 1);
    assert_eq!(loading["model"]["status"], "loading");

    let ready = node.wait_ready("org/model-a", Duration::from_secs(30)).await;
    assert_eq!(ready["status"], "loaded", "{ready}");
    assert!(ready["load_duration_ms"].as_u64().is_some_and(|ms| ms >= 200), "{ready}");
    assert_eq!(ready["profile"]["source"], "a.gguf");
    let models = node.get_json("/models").await;
    assert_eq!(models["generation"], g0 + 2);
    assert_eq!(models["boot_id"], boot_id.as_str());

    let health = node.get_json("/health").await;
    assert_eq!(health["devices"][0]["vram_free_mb"], 19000, "5000 MB accounted on each device: {health}");

    let (status, chat) = node
        .call(
            "/v1/chat/completions",
            &json!({"model": "org/model-a", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["model"], "org/model-a");
    assert_eq!(chat["usage"]["completion_tokens"], 5);
    assert_eq!(chat["system_fingerprint"], "cortex-sim");
    let used = node.get_json("/models").await["models"][0]["last_used_unix_ms"].as_u64().unwrap_or(0);
    assert!(used > 0, "last use is recorded");

    let metrics = node.get("/metrics").send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("neuron_model_loaded{model=\"org/model-a\"} 1"), "{metrics}");
    assert!(metrics.contains("neuron_device_vram_used_bytes"), "{metrics}");
    assert!(metrics.contains("neuron_load_duration_seconds"), "{metrics}");

    let (status, unloaded) = node.call("/models/unload", &json!({"model": "org/model-a"})).await;
    assert_eq!(status, 200, "{unloaded}");
    assert_eq!(unloaded["generation"], g0 + 4, "unload started and unloaded are two changes");
    assert_eq!(node.get_json("/models").await["models"], json!([]));
    let (status, missing) = node.call("/models/unload", &json!({"model": "org/model-a"})).await;
    assert_eq!((status, missing["error"]["code"].as_str()), (404, Some("model_not_found")));
    node.stop().await;
}

#[tokio::test]
async fn a_stale_if_generation_is_refused_with_the_current_one() {
    let node = TestNeuron::start((41040, 41059), SIM, None, None).await;
    let current = node.generation().await;
    let mut body = load_body("m", "sim", "m.gguf");
    body["if_generation"] = json!(current + 7);
    let (status, refused) = node.call("/models/load", &body).await;
    assert_eq!(status, 409);
    assert_eq!(refused["error"]["code"], "generation_mismatch");
    assert_eq!(refused["error"]["generation"], current);

    body["if_generation"] = json!(current);
    let (status, _) = node.call("/models/load", &body).await;
    assert_eq!(status, 202);
    let (status, refused) =
        node.call("/models/unload", &json!({"model": "m", "if_generation": current})).await;
    assert_eq!(status, 409, "the load moved the generation on");
    assert_eq!(refused["error"]["generation"], current + 1);
    node.stop().await;
}

#[tokio::test]
async fn the_same_load_is_a_noop_and_a_different_profile_conflicts() {
    let node = TestNeuron::start((41060, 41079), SIM, None, None).await;
    let (status, _) = node.call("/models/load", &load_body("m", "sim", "m.gguf")).await;
    assert_eq!(status, 202);
    let generation = node.generation().await;
    let (status, again) = node.call("/models/load", &load_body("m", "sim", "m.gguf")).await;
    assert_eq!(status, 200, "same profile while loading: no-op");
    assert_eq!(again["generation"], generation);
    node.wait_ready("m", Duration::from_secs(30)).await;
    let generation = node.generation().await;
    let (status, _) = node.call("/models/load", &load_body("m", "sim", "m.gguf")).await;
    assert_eq!(status, 200, "same profile while loaded: no-op");
    assert_eq!(node.generation().await, generation);
    let (status, conflict) = node.call("/models/load", &load_body("m", "sim", "other.gguf")).await;
    assert_eq!((status, conflict["error"]["code"].as_str()), (409, Some("profile_conflict")));
    node.stop().await;
}

#[tokio::test]
async fn sources_outside_models_dir_unknown_harnesses_and_args_are_refused() {
    let llamacpp = "[harness.llamacpp]\nkind = \"llamacpp\"\nbinary = \"/nonexistent/llama-server\"\n";
    let node = TestNeuron::start((41080, 41099), &format!("{SIM}{llamacpp}"), None, None).await;
    let models = node.models_dir();
    let outside = node.dir.path().join("secret.gguf");
    std::fs::write(&outside, b"not a model").expect("write");
    std::os::unix::fs::symlink(&outside, models.join("escape.gguf")).expect("symlink");
    std::fs::write(models.join("real.gguf"), b"x").expect("write");

    let refused = |body: Value| {
        let node = &node;
        async move {
            let (status, error) = node.call("/models/load", &body).await;
            (status, error["error"]["code"].as_str().unwrap_or_default().to_owned())
        }
    };
    let outside_code = (400, "path_outside_models_dir".to_owned());
    assert_eq!(refused(load_body("m", "llamacpp", "../secret.gguf")).await, outside_code);
    assert_eq!(refused(load_body("m", "llamacpp", "/etc/passwd")).await, outside_code);
    assert_eq!(refused(load_body("m", "llamacpp", "escape.gguf")).await, outside_code);
    assert_eq!(refused(load_body("m", "sim", "escape.gguf")).await, outside_code);
    assert_eq!(
        refused(load_body("m", "llamacpp", "missing.gguf")).await,
        (400, "source_not_found".to_owned())
    );
    assert_eq!(refused(load_body("m", "vllm", "real.gguf")).await, (400, "unknown_harness".to_owned()));
    let mut with_args = load_body("m", "llamacpp", "real.gguf");
    with_args["profile"]["args"] = json!(["--jinja"]);
    assert_eq!(refused(with_args).await, (400, "args_not_allowed".to_owned()));
    let mut bad_device = load_body("m", "sim", "real.gguf");
    bad_device["devices"] = json!([5]);
    assert_eq!(refused(bad_device).await, (400, "unknown_device".to_owned()));
    assert_eq!(refused(json!({"model": "m"})).await, (400, "bad_request".to_owned()));
    assert_eq!(node.generation().await, 0, "refusals change nothing");

    // A load that passes validation but whose engine cannot start is reported as failed.
    let (status, _) = node.call("/models/load", &load_body("m", "llamacpp", "real.gguf")).await;
    assert_eq!(status, 202);
    let failed = node.wait_ready("m", Duration::from_secs(30)).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().unwrap_or_default().contains("/nonexistent/llama-server"), "{failed}");
    node.stop().await;
}

#[tokio::test]
async fn inference_needs_a_loaded_model() {
    let slow = SIM.replace("load_ms = 200", "load_ms = 60000");
    let node = TestNeuron::start((41100, 41119), &slow, None, None).await;
    let (status, error) = node.call("/v1/chat/completions", &json!({"model": "nope", "messages": []})).await;
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("model_not_found")));
    let (status, error) = node.call("/v1/chat/completions", &json!({"messages": []})).await;
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("bad_request")));
    node.call("/models/load", &load_body("m", "sim", "m.gguf")).await;
    let (status, error) = node.call("/v1/chat/completions", &json!({"model": "m", "messages": []})).await;
    assert_eq!((status, error["error"]["code"].as_str()), (503, Some("model_loading")));

    // The long-poll gives up at its timeout and reports the model still loading.
    let started = Instant::now();
    let still = node.wait_ready("m", Duration::from_millis(100)).await;
    assert_eq!(still["status"], "loading");
    assert!(started.elapsed() < Duration::from_secs(10));
    let unknown = node.get("/models/wait").query(&[("model", "nope")]).send().await.expect("wait");
    assert_eq!(unknown.status(), 404);

    // Unloading a model that is still loading stops it at once.
    let (status, _) = node.call("/models/unload", &json!({"model": "m"})).await;
    assert_eq!(status, 200);
    node.stop().await;
}

#[tokio::test]
async fn the_long_poll_returns_as_soon_as_the_model_is_ready() {
    let slow = SIM.replace("load_ms = 200", "load_ms = 700");
    let node = TestNeuron::start((41120, 41139), &slow, None, None).await;
    node.call("/models/load", &load_body("m", "sim", "m.gguf")).await;
    let started = Instant::now();
    let ready = node.wait_ready("m", Duration::from_secs(60)).await;
    let waited = started.elapsed();
    assert_eq!(ready["status"], "loaded");
    assert!(waited < Duration::from_secs(30), "returned at readiness, not at the timeout: {waited:?}");
    node.stop().await;
}

#[tokio::test]
async fn unload_drains_a_running_stream_then_stops_the_engine() {
    let slow_tokens = SIM.replace("tokens_per_second = 1000", "tokens_per_second = 40");
    let node = TestNeuron::start((41140, 41159), &slow_tokens, None, None).await;
    node.call("/models/load", &load_body("m", "sim", "m.gguf")).await;
    node.wait_ready("m", Duration::from_secs(30)).await;

    let body = json!({"model": "m", "stream": true, "max_tokens": 60,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let response = node.post("/v1/chat/completions", &body).send().await.expect("stream");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut text =
        String::from_utf8_lossy(&stream.next().await.expect("first chunk").expect("bytes")).into_owned();
    assert_eq!(node.get_json("/models").await["models"][0]["in_flight"], 1);

    let unloading = {
        let client = node.client.clone();
        let url = format!("{}/models/unload", node.url);
        tokio::spawn(
            async move { client.post(url).bearer_auth(TOKEN).json(&json!({"model": "m"})).send().await },
        )
    };
    node.poll_model("m", Duration::from_secs(10), |m| m["status"] == "unloading").await;
    let (status, refused) = node.call("/v1/chat/completions", &json!({"model": "m", "messages": []})).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (503, Some("model_unloading")),
        "no new requests"
    );
    assert!(!unloading.is_finished(), "unload waits for the stream");

    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "the stream completed: {text}");
    assert!(
        text.contains("\"choices\":[]") && text.contains("\"completion_tokens\":60"),
        "usage chunk: {text}"
    );
    let unloaded = unloading.await.expect("task").expect("unload");
    assert_eq!(unloaded.status(), 200);
    assert_eq!(node.get_json("/models").await["models"], json!([]));
    node.stop().await;
}

#[tokio::test]
async fn a_fake_probe_and_capacity_overrides_are_reported() {
    let probe = StaticProbe {
        devices: vec![
            DeviceStatus {
                index: 0,
                name: "Fake 80G".to_owned(),
                vram_total_mb: 81920,
                vram_free_mb: 80000,
                ..Default::default()
            },
            DeviceStatus {
                index: 1,
                name: "Fake 80G".to_owned(),
                vram_total_mb: 81920,
                vram_free_mb: 70000,
                ..Default::default()
            },
        ],
        driver: DriverInfo {
            driver_version: Some("999.1".to_owned()),
            cuda_version: Some("12.9".to_owned()),
        },
        simulated: false,
    };
    let config =
        "[capacity]\nram_mb = 4000\ndevice_vram_mb = [40000]\n[harness.sim]\nkind = \"sim\"\nload_ms = 0\n";
    let node = TestNeuron::start((41160, 41179), config, None, Some(Arc::new(probe))).await;
    let discovery = node.get_json("/discovery").await;
    assert_eq!(discovery["driver_version"], "999.1");
    assert_eq!(discovery["ram_total_mb"], 4000);
    let mut body = load_body("m", "sim", "m.gguf");
    body["devices"] = json!([0, 1]);
    body["vram_mb"] = json!(2000);
    body["ram_mb"] = json!(500);
    node.call("/models/load", &body).await;
    let health = node.get_json("/health").await;
    assert_eq!(health["devices"][0]["vram_total_mb"], 40000, "overridden");
    assert_eq!(health["devices"][0]["vram_free_mb"], 39000, "override minus what models account for");
    assert_eq!(health["devices"][1]["vram_free_mb"], 70000, "real figures where not overridden");
    assert_eq!(health["ram_free_mb"], 3500);
    node.stop().await;
}

#[tokio::test]
async fn responses_routes_reach_the_model_named_in_the_body_or_the_header() {
    let slow = SIM.replace("load_ms = 200", "load_ms = 60000");
    let node = TestNeuron::start((41180, 41199), &slow, None, None).await;
    node.call("/models/load", &load_body("m", "sim", "m.gguf")).await;
    let code = |body: &Value| body["error"]["code"].as_str().map(str::to_owned);
    let (status, error) = node.call("/v1/responses", &json!({"model": "m", "input": "hi"})).await;
    assert_eq!((status, code(&error)), (503, Some("model_loading".to_owned())), "routed by the body's model");
    let (status, error) =
        node.call("/v1/responses/input_tokens", &json!({"model": "m", "input": "hi"})).await;
    assert_eq!((status, code(&error)), (503, Some("model_loading".to_owned())));
    let by_header = |model: Option<&'static str>| {
        let request = node.get("/v1/responses/resp_1");
        let request = match model {
            Some(model) => request.header(plans::wire::MODEL_HEADER, model),
            None => request,
        };
        async move {
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            (status, code(&response.json::<Value>().await.expect("json")))
        }
    };
    assert_eq!(
        by_header(Some("m")).await,
        (503, Some("model_loading".to_owned())),
        "a bodiless GET names its model in the header"
    );
    assert_eq!(by_header(Some("nope")).await, (404, Some("model_not_found".to_owned())));
    assert_eq!(by_header(None).await, (400, Some("bad_request".to_owned())));
    node.stop().await;
}
