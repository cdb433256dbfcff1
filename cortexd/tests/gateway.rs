//! The gateway against fake neurons: routing, single-flight cold loads, bounded queues,
//! eviction, streaming edits and errors in both dialects.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::fake_neuron::FakeNeuron;
use support::gateway::{Gateway, limits, start};

fn fleet(endpoint: &str, models: &str) -> String {
    format!("[[neuron]]\nname = \"fake\"\nendpoint = \"{endpoint}\"\n\n{models}")
}

const ONE_MODEL: &str = r#"
[[model]]
id = "m"
aliases = ["m-alias"]
harness = "llamacpp"
source = "m.gguf"
vram_mb = 1000
min_devices = 1
"#;

fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

async fn post(url: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new().post(url).json(body).send().await.expect("request sent")
}

#[tokio::test]
async fn concurrent_requests_for_a_cold_model_share_one_load() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::from_millis(300));
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, ONE_MODEL), &[], limits()).await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let body = chat("m", false);
    let requests = (0..6).map(|_| post(&url, &body));
    let responses = futures_util::future::join_all(requests).await;
    for response in responses {
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello from the fake engine.");
    }
    assert_eq!(fake.load_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::from_secs(2));
    let endpoint = fake.start().await;
    let mut limits = limits();
    limits.max_waiting_per_model = 2;
    let gateway = start(&fleet(&endpoint, ONE_MODEL), &[], limits).await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let body = chat("m", false);
    let responses = futures_util::future::join_all((0..5).map(|_| post(&url, &body))).await;
    let refused: Vec<_> = responses.iter().filter(|r| r.status() == 503).collect();
    assert_eq!(refused.len(), 3, "two wait, three are turned away");
    assert!(refused.iter().all(|r| r.headers().contains_key("retry-after")));
    assert_eq!(responses.iter().filter(|r| r.status() == 200).count(), 2);
}

#[tokio::test]
async fn errors_come_in_the_dialect_of_the_route() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::ZERO);
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, ONE_MODEL), &["sekrit"], limits()).await;
    let client = reqwest::Client::new();
    let openai = format!("{}/v1/chat/completions", gateway.url);
    let anthropic = format!("{}/v1/messages", gateway.url);
    let messages = serde_json::json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});

    let response =
        client.post(&openai).bearer_auth("sekrit").json(&chat("nope", false)).send().await.expect("sent");
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "not_found_error");

    let response =
        client.post(&anthropic).header("x-api-key", "sekrit").json(&messages).send().await.expect("sent");
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");

    let response = client.post(&openai).bearer_auth("sekrit").body("{not json").send().await.expect("sent");
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let response =
        client.post(&anthropic).header("x-api-key", "sekrit").body("{not json").send().await.expect("sent");
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let response =
        client.post(&openai).bearer_auth("wrong").json(&chat("m", false)).send().await.expect("sent");
    assert_eq!(response.status(), 401);
    let response = client.post(&anthropic).json(&messages).send().await.expect("sent");
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "authentication_error");

    let huge =
        serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let response = client.post(&openai).bearer_auth("sekrit").json(&huge).send().await.expect("sent");
    assert_eq!(response.status(), 413);
    assert_eq!(fake.load_calls.load(Ordering::SeqCst), 0, "no bad request reached a neuron");
}

#[tokio::test]
async fn a_stream_that_breaks_off_ends_with_an_error_event() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::ZERO);
    fake.preload("m", "m.gguf", 1000, 1);
    fake.break_streams.store(true, Ordering::SeqCst);
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, ONE_MODEL), &[], limits()).await;
    let response = post(&format!("{}/v1/chat/completions", gateway.url), &chat("m", true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let last = text.trim_end().rsplit("\n\n").next().expect("an event");
    assert!(last.starts_with("data: {\"error\""), "last event is an error: {text}");
}

#[tokio::test]
async fn usage_is_asked_for_and_removed_unless_the_client_wanted_it() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::ZERO);
    fake.preload("m", "m.gguf", 1000, 1);
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, ONE_MODEL), &[], limits()).await;
    let url = format!("{}/v1/chat/completions", gateway.url);

    let text = post(&url, &chat("m-alias", true)).await.text().await.expect("body");
    assert!(!text.contains("\"choices\":[]"), "usage chunk removed: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(text.matches("data: ").count(), 7, "six content chunks and [DONE], none coalesced");
    {
        let seen = fake.requests.lock().expect("lock");
        let upstream = seen.last().expect("a request");
        assert_eq!(upstream["model"], "m", "the alias is resolved to the fleet id");
        assert_eq!(upstream["stream_options"]["include_usage"], true);
    }

    let mut asked = chat("m", true);
    asked["stream_options"] = serde_json::json!({"include_usage": true});
    let text = post(&url, &asked).await.text().await.expect("body");
    assert!(text.contains("\"choices\":[]"), "usage chunk kept when asked for: {text}");
}

#[tokio::test]
async fn a_streaming_request_that_waits_gets_keepalives() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::from_millis(500));
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, ONE_MODEL), &[], limits()).await;
    let response = post(&format!("{}/v1/chat/completions", gateway.url), &chat("m", true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.starts_with(": cortex: loading model\n\n"), "keep-alive first: {text}");
    assert!(text.contains("\"content\":\"Hello\""));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_cold_load_evicts_the_least_recently_used_model_but_never_a_pinned_one() {
    let fake = FakeNeuron::new("fake", 10_000, Duration::from_millis(50));
    // `p` is the least recently used, but pinned here; `a` must go instead.
    fake.preload("p", "p.gguf", 4000, 1);
    fake.preload("a", "a.gguf", 4000, 2);
    let endpoint = fake.start().await;
    let models = r#"
[[model]]
id = "p"
harness = "llamacpp"
source = "p.gguf"
vram_mb = 4000
min_devices = 1
pinned_on = ["fake"]

[[model]]
id = "a"
harness = "llamacpp"
source = "a.gguf"
vram_mb = 4000
min_devices = 1

[[model]]
id = "b"
harness = "llamacpp"
source = "b.gguf"
vram_mb = 4000
min_devices = 1
"#;
    let gateway = start(&fleet(&endpoint, models), &[], limits()).await;
    let response = post(&format!("{}/v1/chat/completions", gateway.url), &chat("b", false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(*fake.unload_calls.lock().expect("lock"), vec!["a".to_owned()]);
    let loaded: Vec<String> = fake.models.lock().expect("lock").iter().map(|m| m.id.clone()).collect();
    assert_eq!(loaded, ["p", "b"]);
}

#[tokio::test]
async fn models_lists_declared_and_loaded_models() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::ZERO);
    fake.preload("m", "m.gguf", 1000, 1);
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, ONE_MODEL), &[], limits()).await;
    let body: serde_json::Value =
        reqwest::get(format!("{}/v1/models", gateway.url)).await.expect("sent").json().await.expect("json");
    assert_eq!(body["object"], "list");
    let entry = &body["data"][0];
    assert_eq!(entry["id"], "m");
    assert_eq!(entry["loaded"], true);
    assert_eq!(entry["locations"], serde_json::json!(["fake"]));
    assert_eq!(entry["feasible_on"], serde_json::json!(["fake"]));
    assert_eq!(entry["estimated_cold_start_ms"], 100);
}

/// The `event:` names of an SSE body, in order.
fn event_names(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.strip_prefix("event: ")).collect()
}

#[tokio::test]
async fn anthropic_requests_are_translated_for_engines_without_the_messages_api() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::ZERO);
    fake.preload("m", "m.gguf", 1000, 1);
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, ONE_MODEL), &[], limits()).await;
    let request = serde_json::json!({"model": "m-alias", "max_tokens": 16, "stream": true, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}]});
    let text = post(&format!("{}/v1/messages", gateway.url), &request).await.text().await.expect("body");
    assert_eq!(
        event_names(&text),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{text}"
    );
    assert!(text.contains(r#""output_tokens":6"#), "usage mapped from the engine's usage chunk: {text}");
    let seen = fake.requests.lock().expect("lock").last().cloned().expect("a request");
    assert_eq!(seen["model"], "m");
    assert_eq!(seen["messages"][0], serde_json::json!({"role": "system", "content": "Be brief."}));

    let request =
        serde_json::json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let message: serde_json::Value =
        post(&format!("{}/v1/messages", gateway.url), &request).await.json().await.expect("json");
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"][0]["text"], "Hello from the fake engine.");
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["model"], "m");
}

#[tokio::test]
async fn anthropic_requests_pass_through_to_native_engines_with_tool_use_fixed() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::ZERO);
    fake.anthropic_native.store(true, Ordering::SeqCst);
    fake.preload("m", "m.gguf", 1000, 1);
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, ONE_MODEL), &[], limits()).await;
    let request = serde_json::json!({"model": "m", "max_tokens": 16, "stream": true,
        "messages": [{"role": "user", "content": "weather?"}]});
    let text = post(&format!("{}/v1/messages", gateway.url), &request).await.text().await.expect("body");
    assert_eq!(
        event_names(&text),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start =
        text.lines().find(|l| l.contains("content_block_start") && l.starts_with("data:")).expect("start");
    assert!(start.contains(r#""input":{}"#), "the missing input was added: {start}");
    assert!(
        fake.requests.lock().expect("lock").last().is_some_and(|r| r.get("messages").is_some()),
        "forwarded as is"
    );
}

/// `(requests, errors)` in the traffic window for `model`, once `done` holds of them (polled,
/// with a deadline: a request is added when its response ends on the gateway's side).
async fn traffic_until(gateway: &Gateway, model: &str, done: impl Fn(u32, u32) -> bool) -> (u32, u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let window = gateway.traffic.window(cortexd::now_unix_ms());
        let counts = window
            .models
            .iter()
            .find(|s| s.model == model)
            .map_or((0, 0), |s| (s.requests.iter().sum::<u32>(), s.errors.iter().sum::<u32>()));
        if done(counts.0, counts.1) || tokio::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const COUNTED_MODEL: &str = r#"
[[model]]
id = "counted"
aliases = ["counted-alias"]
harness = "llamacpp"
source = "counted.gguf"
vram_mb = 1000
min_devices = 1
"#;

#[tokio::test]
async fn an_engine_error_status_counts_as_an_error_of_its_model_but_a_client_mistake_does_not() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::ZERO);
    fake.preload("counted", "counted.gguf", 1000, 1);
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, COUNTED_MODEL), &[], limits()).await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let refuse = |status: u16| {
        *fake.refuse_with.lock().expect("lock") =
            Some((status, serde_json::json!({"error": {"message": "refused by the fake engine"}})));
    };
    refuse(500);
    assert_eq!(post(&url, &chat("counted", false)).await.status(), 502);
    assert_eq!(post(&url, &chat("counted-alias", true)).await.status(), 502, "an alias counts for its model");
    refuse(400);
    assert_eq!(post(&url, &chat("counted", false)).await.status(), 400);
    assert_eq!(post(&url, &chat("made-up-model", false)).await.status(), 404);
    *fake.refuse_with.lock().expect("lock") = None;
    assert_eq!(post(&url, &chat("counted", false)).await.status(), 200);
    let counts = traffic_until(&gateway, "counted", |requests, _| requests >= 3).await;
    assert_eq!(counts, (3, 2), "two engine failures and one answer; the 400 is the client's mistake");
    let window = gateway.traffic.window(cortexd::now_unix_ms());
    assert!(!window.models.iter().any(|s| s.model == "made-up-model"), "an unknown name gets no chart");
}

const REFUSED_MODEL: &str = r#"
[[model]]
id = "refused"
harness = "llamacpp"
source = "refused.gguf"
vram_mb = 1000
min_devices = 1
"#;

#[tokio::test]
async fn requests_a_full_queue_turns_away_count_as_errors_of_their_model() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::from_secs(1));
    let endpoint = fake.start().await;
    let mut limits = limits();
    limits.max_waiting_per_model = 2;
    let gateway = start(&fleet(&endpoint, REFUSED_MODEL), &[], limits).await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let body = chat("refused", false);
    let responses = futures_util::future::join_all((0..5).map(|_| post(&url, &body))).await;
    let refused = responses.iter().filter(|r| r.status() == 503).count() as u32;
    assert_eq!(refused, 3, "two wait, three are turned away");
    let counts = traffic_until(&gateway, "refused", |requests, _| requests >= 5).await;
    assert_eq!(counts, (5, 3), "five requests, the three refused are errors");
}
