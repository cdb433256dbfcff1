//! The requests Claude Code and Codex really send (shared/reference/agents.md), through the
//! gateway to a fake neuron: native pass-through forwards them untouched, translation handles
//! them; output caps, context overflows, client disconnects and the API's edges.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fake_neuron::FakeNeuron;
use support::gateway::{Gateway, limits, start};

const FLEET_MODEL: &str = r#"
[[model]]
id = "m"
aliases = ["m-alias"]
harness = "llamacpp"
source = "m.gguf"
vram_mb = 1000
ctx_size = 4096
"#;

async fn setup(
    native_messages: bool,
    native_responses: bool,
    extra: &str,
) -> (std::sync::Arc<FakeNeuron>, Gateway) {
    let fake = FakeNeuron::new("fake", 24_000, Duration::ZERO);
    fake.anthropic_native.store(native_messages, Ordering::SeqCst);
    fake.responses_native.store(native_responses, Ordering::SeqCst);
    fake.preload("m", "m.gguf", 1000, 1);
    let endpoint = fake.start().await;
    let fleet = format!("[[neuron]]\nname = \"fake\"\nendpoint = \"{endpoint}\"\n\n{FLEET_MODEL}{extra}");
    let gateway = start(&fleet, &["sekrit"], limits()).await;
    (fake, gateway)
}

/// Claude Code 2.1.328's first turn, field for field.
fn claude_code_request() -> Value {
    json!({
        "model": "m",
        "max_tokens": 32000,
        "stream": true,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"}, {"type": "text", "text": "say hi"}]},
            {"role": "system", "content": [{"type": "text", "text": "Environment: linux, cwd /tmp/x"}]}
        ],
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be concise.", "cache_control": {"type": "ephemeral"}}
        ],
        "tools": [
            {"name": "Read", "description": "Read a file", "input_schema": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}},
            {"name": "DeferredToolPlaceholder", "description": "deferred", "input_schema": {"type": "object"}, "defer_loading": true},
            {"name": "ToolSearch", "description": "search tools", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
        ],
        "metadata": {"user_id": "{\"device_id\":\"d\",\"session_id\":\"s\"}"},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"}
    })
}

/// Codex CLI 0.169.0's first turn, field for field.
fn codex_request() -> Value {
    json!({
        "model": "m",
        "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>sandboxed</permissions>"}]},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<collaboration_mode>default</collaboration_mode>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>cwd</environment_context>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "say hi"}]}
        ],
        "tools": [
            {"type": "function", "name": "shell_command", "description": "Run a command", "strict": false,
             "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"], "additionalProperties": false}},
            {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
                {"type": "function", "name": "spawn_agent", "description": "spawn", "strict": false, "parameters": {"type": "object", "properties": {}}}
            ]},
            {"type": "web_search", "external_web_access": false}
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "reasoning": {"summary": "auto"},
        "store": false,
        "stream": true,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "019a-session",
        "client_metadata": {"originator": "codex_exec"}
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(gateway: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", gateway.url))
        .bearer_auth("sekrit")
        .json(body)
        .send()
        .await
        .expect("sent")
}

fn last_request(fake: &FakeNeuron) -> Value {
    fake.requests.lock().expect("lock").last().cloned().expect("the engine got a request")
}

/// The `data:` payloads of an SSE body, parsed.
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap_or_else(|e| panic!("event {data:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn claude_codes_request_passes_through_untouched_with_its_headers() {
    let (fake, gateway) = setup(true, false, "").await;
    let request = claude_code_request();
    let response = client()
        .post(format!("{}/v1/messages?beta=true", gateway.url))
        .header("x-api-key", "sekrit")
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14,effort-2025-11-24")
        .json(&request)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.contains("event: message_stop"), "{text}");
    assert_eq!(last_request(&fake), request, "every field reaches the engine as sent");
    let seen = fake.seen.lock().expect("lock");
    let (path, headers) = seen.last().expect("seen");
    assert_eq!(path, "/v1/messages");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(headers["anthropic-beta"].to_str().is_ok_and(|b| b.contains("effort-2025-11-24")));
}

#[tokio::test]
async fn claude_codes_request_is_translated_for_a_chat_only_engine() {
    let (fake, gateway) = setup(false, false, "").await;
    let response = post(&gateway, "/v1/messages?beta=true", &claude_code_request()).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.contains("event: message_stop"), "{text}");
    let chat = last_request(&fake);
    let messages = chat["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["role"], "system");
    let system = messages[0]["content"].as_str().expect("one system string");
    assert!(
        system.starts_with("x-anthropic-billing-header")
            && system.ends_with("Environment: linux, cwd /tmp/x"),
        "{system}"
    );
    assert_eq!(messages.iter().filter(|m| m["role"] == "system").count(), 1, "folded into one");
    assert_eq!(messages[1]["role"], "user");
    let tools: Vec<&str> = chat["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(tools, ["Read", "DeferredToolPlaceholder", "ToolSearch"], "the server tool is dropped");
    assert_eq!(
        (chat["reasoning_effort"].as_str(), chat["chat_template_kwargs"]["enable_thinking"].as_bool()),
        (Some("high"), Some(true))
    );
    for dropped in ["metadata", "context_management", "output_config", "thinking"] {
        assert!(chat.get(dropped).is_none(), "{dropped} is not sent to a chat engine");
    }
}

#[tokio::test]
async fn codexs_request_passes_through_natively_and_its_last_event_arrives() {
    let (fake, gateway) = setup(false, true, "").await;
    let request = codex_request();
    let response = post(&gateway, "/v1/responses", &request).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let types: Vec<Value> = events(&text).iter().map(|e| e["type"].clone()).collect();
    assert_eq!(
        types,
        ["response.created", "response.completed"],
        "the unterminated last event is flushed: {text}"
    );
    assert_eq!(last_request(&fake), request, "forwarded untouched");
}

/// Codex's request, stored (`store: true`) and not streamed, sent once: the engine answers
/// with `resp_native1`. Returns the request for the continuation to reuse.
async fn store_one(gateway: &Gateway) -> Value {
    let mut request = codex_request();
    request["store"] = json!(true);
    request["stream"] = json!(false);
    let response: Value = post(gateway, "/v1/responses", &request).await.json().await.expect("json");
    assert_eq!(response["id"], "resp_native1");
    request
}

#[tokio::test]
async fn stored_native_responses_route_back_to_their_replica() {
    let (_fake, gateway) = setup(false, true, "").await;
    let mut request = store_one(&gateway).await;
    request["previous_response_id"] = json!("resp_native1");
    assert_eq!(post(&gateway, "/v1/responses", &request).await.status(), 200);
    let retrieved = client()
        .get(format!("{}/v1/responses/resp_native1", gateway.url))
        .bearer_auth("sekrit")
        .send()
        .await
        .expect("sent");
    assert_eq!(retrieved.status(), 200);
    let retrieved: Value = retrieved.json().await.expect("json");
    assert_eq!(retrieved["id"], "resp_native1");
    let cancelled = client()
        .post(format!("{}/v1/responses/resp_native1/cancel", gateway.url))
        .bearer_auth("sekrit")
        .send()
        .await
        .expect("sent");
    assert_eq!(cancelled.status(), 200);

    request["previous_response_id"] = json!("resp_unknown");
    let refused = post(&gateway, "/v1/responses", &request).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.expect("json");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("resp_unknown")), "{body}");
    let missing = client()
        .get(format!("{}/v1/responses/resp_unknown", gateway.url))
        .bearer_auth("sekrit")
        .send()
        .await
        .expect("sent");
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_continuation_whose_copy_went_away_is_refused_not_sent_elsewhere() {
    let (fake, gateway) = setup(false, true, "").await;
    let mut request = store_one(&gateway).await;
    // The copy is unloaded behind cortex's back: the neuron still listed it at the last poll,
    // but now answers that it does not serve the model.
    *fake.refuse_with.lock().expect("lock") =
        Some((404, json!({"error": {"code": "model_not_found", "message": "m is not loaded"}})));
    request["previous_response_id"] = json!("resp_native1");
    let started = Instant::now();
    let refused = post(&gateway, "/v1/responses", &request).await;
    assert_eq!(refused.status(), 400, "the response it continues is on that copy only");
    let body: Value = refused.json().await.expect("json");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("send the whole conversation"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not queued for a load");
}

#[tokio::test]
async fn codexs_request_is_translated_for_a_chat_only_engine() {
    let (fake, gateway) = setup(false, false, "").await;
    let response = post(&gateway, "/v1/responses", &codex_request()).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let events = events(&text);
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types.first(), Some(&"response.created"));
    assert_eq!(types.last(), Some(&"response.completed"), "{text}");
    let numbers: Vec<u64> = events.iter().filter_map(|e| e["sequence_number"].as_u64()).collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    // A base URL without `/v1` reaches the same route.
    let unprefixed = post(&gateway, "/responses", &codex_request()).await;
    assert_eq!(unprefixed.status(), 200);
    assert!(unprefixed.text().await.expect("body").contains("response.completed"));
    let completed = events.last().expect("completed");
    assert_eq!(completed["response"]["output"][0]["content"][0]["text"], "Hello from the fake engine.");
    assert_eq!(completed["response"]["usage"]["output_tokens"], 6);
    let chat = last_request(&fake);
    let tools: Vec<&str> = chat["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(tools, ["shell_command", "multi_agent_v1__spawn_agent"]);
    let messages = chat["messages"].as_array().expect("messages");
    assert_eq!(
        messages.iter().map(|m| m["role"].as_str().unwrap_or("?")).collect::<Vec<_>>(),
        ["system", "user", "user"]
    );
    assert!(
        messages[0]["content"]
            .as_str()
            .is_some_and(|s| s.starts_with("You are Codex.") && s.contains("collaboration_mode"))
    );
}

#[tokio::test]
async fn the_fleets_output_cap_clamps_and_fills_every_route() {
    let (fake, gateway) = setup(false, false, "max_output_tokens = 64\n").await;
    let chat = json!({"model": "m", "max_tokens": 32000, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&gateway, "/v1/chat/completions", &chat).await.status(), 200);
    assert_eq!(last_request(&fake)["max_tokens"], 64);
    let uncapped = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&gateway, "/v1/chat/completions", &uncapped).await.status(), 200);
    assert_eq!(last_request(&fake)["max_tokens"], 64, "set when the request has none");
    let small = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&gateway, "/v1/chat/completions", &small).await.status(), 200);
    assert_eq!(last_request(&fake)["max_tokens"], 8, "a smaller limit stays");
    assert_eq!(post(&gateway, "/v1/messages", &claude_code_request()).await.status(), 200);
    assert_eq!(last_request(&fake)["max_tokens"], 64);
    assert_eq!(post(&gateway, "/v1/responses", &codex_request()).await.status(), 200);
    assert_eq!(last_request(&fake)["max_tokens"], 64, "Codex sends no limit at all");
}

#[tokio::test]
async fn native_requests_get_the_cap_too() {
    let (fake, gateway) = setup(true, true, "max_output_tokens = 64\n").await;
    assert_eq!(post(&gateway, "/v1/messages", &claude_code_request()).await.status(), 200);
    assert_eq!(last_request(&fake)["max_tokens"], 64);
    assert_eq!(post(&gateway, "/v1/responses", &codex_request()).await.status(), 200);
    assert_eq!(last_request(&fake)["max_output_tokens"], 64);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_frees_the_engine() {
    let (fake, gateway) = setup(false, false, "").await;
    fake.endless_streams.store(true, Ordering::SeqCst);
    let chat =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "go on forever"}]});
    let mut response = post(&gateway, "/v1/chat/completions", &chat).await;
    let first = response.chunk().await.expect("read").expect("a first chunk");
    assert!(!first.is_empty());
    assert_eq!(fake.active_streams.load(Ordering::SeqCst), 1);
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.active_streams.load(Ordering::SeqCst) != 0 {
        assert!(Instant::now() < deadline, "the engine still streams 5 s after the client left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_prompt_over_the_context_window_is_the_error_agents_understand() {
    let (fake, gateway) = setup(true, true, "").await;
    let llama = json!({"error": {"code": 400, "message": "request (5000 tokens) exceeds the available context size (4096 tokens), try increasing it",
        "type": "exceed_context_size_error", "n_prompt_tokens": 5000, "n_ctx": 4096}});
    *fake.refuse_with.lock().expect("lock") = Some((400, llama));
    let anthropic: Value =
        post(&gateway, "/v1/messages", &claude_code_request()).await.json().await.expect("json");
    assert_eq!(
        anthropic,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 5000 tokens > 4096 maximum"}})
    );
    for (path, body) in [
        ("/v1/responses", codex_request()),
        ("/v1/chat/completions", json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
    ] {
        let response = post(&gateway, path, &body).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "context_length_exceeded", "{path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    // Any other refusal of the engine keeps its status and message, in the route's dialect.
    *fake.refuse_with.lock().expect("lock") =
        Some((400, json!({"error": {"code": 400, "message": "bad thing", "type": "invalid_request_error"}})));
    let anthropic: Value =
        post(&gateway, "/v1/messages", &claude_code_request()).await.json().await.expect("json");
    assert_eq!(anthropic["error"], json!({"type": "invalid_request_error", "message": "bad thing"}));
}

#[tokio::test]
async fn api_edges_models_auth_scheme_and_unknown_routes() {
    let (_fake, gateway) = setup(false, false, "").await;
    let model = client()
        .get(format!("{}/v1/models/m-alias", gateway.url))
        .header("authorization", "bearer sekrit")
        .send()
        .await
        .expect("sent");
    assert_eq!(model.status(), 200, "the auth scheme is case-insensitive");
    let model: Value = model.json().await.expect("json");
    assert_eq!((model["id"].as_str(), model["context_length"].as_u64()), (Some("m"), Some(4096)));
    let list: Value = client()
        .get(format!("{}/v1/models", gateway.url))
        .bearer_auth("sekrit")
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(list["data"][0]["context_length"], 4096);
    let missing = client()
        .get(format!("{}/v1/models/nope", gateway.url))
        .bearer_auth("sekrit")
        .send()
        .await
        .expect("sent");
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"]["code"], "model_not_found");

    let unknown = client().post(format!("{}/v1/nothing", gateway.url)).send().await.expect("sent");
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.expect("json");
    assert!(body["error"]["message"].is_string() && body["error"]["code"].is_string(), "{body}");
    let wrong = client().get(format!("{}/v1/chat/completions", gateway.url)).send().await.expect("sent");
    assert_eq!(wrong.status(), 405);
    let body: Value = wrong.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn past_max_in_flight_requests_are_shed_with_503_until_room_frees() {
    let fake = FakeNeuron::new("fake", 24_000, Duration::ZERO);
    fake.preload("m", "m.gguf", 1000, 1);
    fake.endless_streams.store(true, Ordering::SeqCst);
    let endpoint = fake.start().await;
    let mut limits = limits();
    limits.max_in_flight = 1;
    let fleet = format!("[[neuron]]\nname = \"fake\"\nendpoint = \"{endpoint}\"\n\n{FLEET_MODEL}");
    let gateway = start(&fleet, &["sekrit"], limits).await;
    let stream = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "go"}]});
    let mut open = post(&gateway, "/v1/chat/completions", &stream).await;
    assert!(open.chunk().await.expect("read").is_some());
    let shed = post(&gateway, "/v1/chat/completions", &stream).await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: Value = shed.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded");
    drop(open);
    fake.endless_streams.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = post(
            &gateway,
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} 5 s after the stream ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_engine_that_closes_right_after_its_last_event_loses_nothing() {
    let (fake, gateway) = setup(false, false, "").await;
    fake.unterminated_done.store(true, Ordering::SeqCst);
    let chat = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let text = post(&gateway, "/v1/chat/completions", &chat).await.text().await.expect("body");
    assert!(text.ends_with("data: [DONE]\n\n"), "passed through, terminated: {text:?}");
    let text = post(&gateway, "/v1/messages", &claude_code_request()).await.text().await.expect("body");
    assert!(
        text.contains("event: message_stop") && !text.contains("event: error"),
        "translated to the end: {text}"
    );
    let text = post(&gateway, "/v1/responses", &codex_request()).await.text().await.expect("body");
    assert!(
        text.contains("response.completed") && !text.contains("response.failed"),
        "translated to the end: {text}"
    );
}

#[tokio::test]
async fn a_stop_at_the_fleets_cap_is_an_end_turn_for_claude_code_but_a_clients_own_limit_is_not() {
    for native in [true, false] {
        let (fake, gateway) = setup(native, false, "max_output_tokens = 64\n").await;
        fake.length_finish.store(true, Ordering::SeqCst);
        let text = post(&gateway, "/v1/messages", &claude_code_request()).await.text().await.expect("body");
        assert!(
            text.contains(r#""stop_reason":"end_turn""#) && !text.contains("max_tokens\""),
            "native={native}: {text}"
        );
        let mut own_limit = claude_code_request();
        own_limit["max_tokens"] = json!(8);
        let text = post(&gateway, "/v1/messages", &own_limit).await.text().await.expect("body");
        assert!(text.contains(r#""stop_reason":"max_tokens""#), "native={native}: {text}");
        if !native {
            // Non-streaming too (the fake's native engine only streams).
            own_limit["stream"] = json!(false);
            let message: Value = post(&gateway, "/v1/messages", &own_limit).await.json().await.expect("json");
            assert_eq!(message["stop_reason"], "max_tokens", "{message}");
            let mut capped = claude_code_request();
            capped["stream"] = json!(false);
            let message: Value = post(&gateway, "/v1/messages", &capped).await.json().await.expect("json");
            assert_eq!(message["stop_reason"], "end_turn", "{message}");
        }
    }
}

#[tokio::test]
async fn a_stop_at_the_fleets_cap_is_a_natural_end_on_chat_and_responses_but_a_clients_own_limit_is_not() {
    let (fake, gateway) = setup(false, false, "max_output_tokens = 64\n").await;
    fake.length_finish.store(true, Ordering::SeqCst);
    for (limit, finish) in [(None, "stop"), (Some(4096), "stop"), (Some(8), "length")] {
        let mut chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let Some(limit) = limit {
            chat["max_completion_tokens"] = json!(limit);
        }
        let answer: Value = post(&gateway, "/v1/chat/completions", &chat).await.json().await.expect("json");
        assert_eq!(answer["choices"][0]["finish_reason"], finish, "{limit:?}: {answer}");
        chat["stream"] = json!(true);
        let text = post(&gateway, "/v1/chat/completions", &chat).await.text().await.expect("body");
        assert!(text.contains(&format!(r#""finish_reason":"{finish}""#)), "{limit:?}: {text}");
        assert!(!text.contains(r#""choices":[]"#), "no usage chunk the client did not ask for: {text}");

        let mut codex = codex_request();
        if let Some(limit) = limit {
            codex["max_output_tokens"] = json!(limit);
        }
        let status = if finish == "stop" { r#""status":"completed""# } else { r#""status":"incomplete""# };
        let text = post(&gateway, "/v1/responses", &codex).await.text().await.expect("body");
        let completed =
            text.lines().find(|line| line.contains(r#""type":"response.completed""#)).unwrap_or_default();
        assert!(completed.contains(status), "{limit:?}: {text}");
        codex["stream"] = json!(false);
        let response: Value = post(&gateway, "/v1/responses", &codex).await.json().await.expect("json");
        let incomplete = if finish == "stop" { Value::Null } else { json!({"reason": "max_output_tokens"}) };
        assert_eq!(response["incomplete_details"], incomplete, "{limit:?}: {response}");
    }
}
