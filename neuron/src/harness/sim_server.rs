//! The SIMULATED engine's HTTP server: OpenAI-compatible `/v1/chat/completions`,
//! `/v1/completions` (streaming and not, with `usage` and `stream_options.include_usage`),
//! `/v1/embeddings`, `/v1/models` and `/health`, answering deterministic filler text with a
//! configured time to first token and token rate. Prompts go through the prompt cache
//! (`sim_cache`): the time to first token grows with the uncached prompt tokens, and the cached
//! ones are reported as llama-server reports them (`usage.prompt_tokens_details.cached_tokens`,
//! `timings.cache_n`). Every answer is marked `cortex-sim`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::sim_cache::{PromptCache, Reuse};

/// How one simulated engine behaves; fixed at load.
pub struct SimSettings {
    /// The fleet id it serves (what `--alias` is for llama.cpp).
    pub model: String,
    /// `/health` answers 503 (and every route refuses) until then.
    pub ready_at: Instant,
    /// The time to first token of a prompt wholly cached.
    pub ttft: Duration,
    /// Added to the time to first token for each uncached prompt token.
    pub prefill_per_token: Duration,
    pub token_interval: Duration,
    /// Its slots' prompts.
    pub cache: PromptCache,
}

/// The label in every simulated answer.
const FINGERPRINT: &str = "cortex-sim";

/// The filler the simulated model "generates", one entry per token.
const FILLER: &[&str] =
    &[" This", " is", " simulated", " output", " from", " the", " cortex", " sim", " engine", "."];

/// Completions without `max_tokens` get this many tokens and finish with `stop`.
const DEFAULT_TOKENS: u64 = 16;
const MAX_TOKENS: u64 = 4096;
const EMBEDDING_WIDTH: usize = 8;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn router(settings: Arc<SimSettings>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .with_state(settings)
}

fn engine_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "type": kind}});
    (status, axum::Json(body)).into_response()
}

/// While "loading", every route answers like llama-server does.
fn refuse_while_loading(settings: &SimSettings) -> Option<Response> {
    (Instant::now() < settings.ready_at)
        .then(|| engine_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "Loading model"))
}

async fn health(State(settings): State<Arc<SimSettings>>) -> Response {
    match refuse_while_loading(&settings) {
        Some(refusal) => refusal,
        None => axum::Json(json!({"status": "ok", "simulated": true})).into_response(),
    }
}

async fn models(State(settings): State<Arc<SimSettings>>) -> Response {
    let body = json!({"object": "list", "data": [
        {"id": settings.model, "object": "model", "created": 0, "owned_by": FINGERPRINT}
    ]});
    axum::Json(body).into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Chat,
    Completion,
}

async fn chat_completions(State(settings): State<Arc<SimSettings>>, body: Bytes) -> Response {
    generate(&settings, Dialect::Chat, &body).await
}

async fn completions(State(settings): State<Arc<SimSettings>>, body: Bytes) -> Response {
    generate(&settings, Dialect::Completion, &body).await
}

fn parse(body: &[u8]) -> Result<Value, Box<Response>> {
    let bad =
        |message: &str| Box::new(engine_error(StatusCode::BAD_REQUEST, "invalid_request_error", message));
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err(bad("body must be a JSON object")),
        Err(err) => Err(bad(&err.to_string())),
    }
}

/// The prompt as the simulated engine reads it: each message's text between role markers
/// (after the tools, when there are any), like a chat template; a completion's prompt as is.
/// Its token count is a token per four characters (`sim_cache::tokens`).
fn render_prompt(request: &Value, dialect: Dialect) -> String {
    let mut out = String::new();
    match dialect {
        Dialect::Chat => {
            if let Some(tools) = request.get("tools").filter(|t| !t.is_null()) {
                push_turn(&mut out, "tools", &tools.to_string());
            }
            for message in request.get("messages").and_then(Value::as_array).into_iter().flatten() {
                let role = message.get("role").and_then(Value::as_str).unwrap_or("user");
                let mut text = String::new();
                if let Some(content) = message.get("content") {
                    push_text(content, &mut text);
                }
                if let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
                    text.push_str(&calls.to_string());
                }
                push_turn(&mut out, role, &text);
            }
        }
        Dialect::Completion => {
            if let Some(prompt) = request.get("prompt") {
                push_text(prompt, &mut out);
            }
        }
    }
    out
}

/// The text of a content value: a string, or the `text`/`content` of its parts.
fn push_text(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Array(items) => items.iter().for_each(|item| push_text(item, out)),
        Value::Object(map) => {
            if let Some(inner) = map.get("text").or_else(|| map.get("content")) {
                push_text(inner, out);
            }
        }
        _ => {}
    }
}

fn push_turn(out: &mut String, role: &str, text: &str) {
    out.push_str("<|");
    out.push_str(role);
    out.push_str("|>");
    out.push_str(text);
    out.push_str("<|end|>");
}

/// What the slot keeps after the answer: the answer as the next turn will resend it.
fn render_answer(text: &str, dialect: Dialect) -> String {
    match dialect {
        Dialect::Chat => {
            let mut out = String::new();
            push_turn(&mut out, "assistant", text);
            out
        }
        Dialect::Completion => text.to_owned(),
    }
}

/// The prefill of the prompt tokens `reuse` did not find cached.
fn prefill_time(settings: &SimSettings, reuse: Reuse) -> Duration {
    let uncached = u32::try_from(reuse.prompt_tokens - reuse.cached_tokens).unwrap_or(u32::MAX);
    settings.prefill_per_token.saturating_mul(uncached)
}

/// llama-server's `usage` and `timings` for a request that found `reuse` in the cache.
fn usage_and_timings(reuse: Reuse, completion: u64, prefill: Duration, interval: Duration) -> (Value, Value) {
    let (prompt, cached) = (reuse.prompt_tokens, reuse.cached_tokens);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                       "total_tokens": prompt + completion,
                       "prompt_tokens_details": {"cached_tokens": cached}});
    let evaluated = prompt - cached;
    let prompt_ms = prefill.as_secs_f64() * 1000.0;
    let predicted_ms = interval.as_secs_f64() * 1000.0 * completion as f64;
    let per = |n: u64, ms: f64| {
        if n > 0 && ms > 0.0 { (ms / n as f64, 1000.0 * n as f64 / ms) } else { (0.0, 0.0) }
    };
    let (prompt_per_token_ms, prompt_per_second) = per(evaluated, prompt_ms);
    let (predicted_per_token_ms, predicted_per_second) = per(completion, predicted_ms);
    let timings = json!({"cache_n": cached, "prompt_n": evaluated, "prompt_ms": prompt_ms,
                         "prompt_per_token_ms": prompt_per_token_ms, "prompt_per_second": prompt_per_second,
                         "predicted_n": completion, "predicted_ms": predicted_ms,
                         "predicted_per_token_ms": predicted_per_token_ms,
                         "predicted_per_second": predicted_per_second});
    (usage, timings)
}

fn token(i: u64) -> &'static str {
    let word = FILLER[usize::try_from(i).unwrap_or(0) % FILLER.len()];
    if i == 0 { word.trim_start() } else { word }
}

async fn generate(settings: &SimSettings, dialect: Dialect, body: &[u8]) -> Response {
    if let Some(refusal) = refuse_while_loading(settings) {
        return refusal;
    }
    let request = match parse(body) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let started = Instant::now();
    let asked =
        request.get("max_tokens").or_else(|| request.get("max_completion_tokens")).and_then(Value::as_u64);
    let (count, finish) = match asked {
        Some(n) => (n.min(MAX_TOKENS), "length"),
        None => (DEFAULT_TOKENS, "stop"),
    };
    let text: String = (0..count).map(token).collect();
    let reuse = settings.cache.serve(&render_prompt(&request, dialect), &render_answer(&text, dialect));
    let prefill = prefill_time(settings, reuse);
    let ttft = settings.ttft + prefill;
    let (usage, timings) = usage_and_timings(reuse, count, prefill, settings.token_interval);
    let id = format!(
        "{}-sim-{}",
        if dialect == Dialect::Chat { "chatcmpl" } else { "cmpl" },
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let due = |i: u64| ttft + settings.token_interval * u32::try_from(i).unwrap_or(u32::MAX);
    let (object, chunk_object) = match dialect {
        Dialect::Chat => ("chat.completion", "chat.completion.chunk"),
        Dialect::Completion => ("text_completion", "text_completion"),
    };
    let envelope = |object: &str, choices: Value| {
        json!({"id": id, "object": object, "created": created, "model": settings.model,
               "system_fingerprint": FINGERPRINT, "choices": choices})
    };

    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        tokio::time::sleep_until(started + due(count.saturating_sub(1))).await;
        let choice = match dialect {
            Dialect::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                   "logprobs": null, "finish_reason": finish}),
            Dialect::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut response = envelope(object, json!([choice]));
        response["usage"] = usage;
        response["timings"] = timings;
        return axum::Json(response).into_response();
    }

    let include_usage =
        request.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let mut events: Vec<(Duration, String)> = Vec::new();
    for i in 0..count {
        let choice = match dialect {
            Dialect::Chat if i == 0 => {
                json!({"index": 0, "delta": {"role": "assistant", "content": token(i)},
                                              "logprobs": null, "finish_reason": null})
            }
            Dialect::Chat => {
                json!({"index": 0, "delta": {"content": token(i)}, "logprobs": null, "finish_reason": null})
            }
            Dialect::Completion => {
                json!({"index": 0, "text": token(i), "logprobs": null, "finish_reason": null})
            }
        };
        events.push((due(i), envelope(chunk_object, json!([choice])).to_string()));
    }
    let last = due(count.saturating_sub(1));
    let final_choice = match dialect {
        Dialect::Chat => json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish}),
        Dialect::Completion => json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish}),
    };
    // llama-server puts `timings` on its last chunk: the usage chunk when there is one.
    let mut last_chunk = envelope(chunk_object, json!([final_choice]));
    if include_usage {
        events.push((last, last_chunk.to_string()));
        last_chunk = envelope(chunk_object, json!([]));
        last_chunk["usage"] = usage;
    }
    last_chunk["timings"] = timings;
    events.push((last, last_chunk.to_string()));
    events.push((last, "[DONE]".to_owned()));
    let body = futures_util::stream::iter(events).then(move |(at, data)| async move {
        tokio::time::sleep_until(started + at).await;
        Ok::<_, Infallible>(Bytes::from(format!("data: {data}\n\n")))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn embeddings(State(settings): State<Arc<SimSettings>>, body: Bytes) -> Response {
    if let Some(refusal) = refuse_while_loading(&settings) {
        return refusal;
    }
    let request = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Some(Value::Array(items)) => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect()
        }
        _ => return engine_error(StatusCode::BAD_REQUEST, "invalid_request_error", "`input` is required"),
    };
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            tokens += u64::try_from(text.len().div_ceil(4)).unwrap_or(0).max(1);
            let vector = embed(text);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data, "model": settings.model,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

/// A deterministic unit vector derived from the text (FNV-1a seeds per component).
fn embed(text: &str) -> Vec<f32> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let raw: Vec<f32> = (0..EMBEDDING_WIDTH)
        .map(|i| {
            let mixed =
                hash.rotate_left(u32::try_from(i * 8).unwrap_or(0)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            f32::from(u16::try_from(mixed >> 48).unwrap_or(0)) / 32768.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::EPSILON);
    raw.iter().map(|v| v / norm).collect()
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[usize::try_from((n >> shift) & 63).unwrap_or(0)]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim_settings(prefill_per_token: Duration) -> SimSettings {
        SimSettings {
            model: "m".to_owned(),
            ready_at: Instant::now(),
            ttft: Duration::ZERO,
            prefill_per_token,
            token_interval: Duration::ZERO,
            cache: PromptCache::new(2),
        }
    }

    async fn answer(settings: &SimSettings, dialect: Dialect, request: &Value) -> Vec<Value> {
        let response = generate(settings, dialect, request.to_string().as_bytes()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        match text.strip_prefix("data: ") {
            None => vec![serde_json::from_str(&text).expect("json")],
            Some(_) => text
                .split("\n\n")
                .filter_map(|event| event.strip_prefix("data: "))
                .filter(|data| *data != "[DONE]")
                .map(|data| serde_json::from_str(data).expect("json event"))
                .collect(),
        }
    }

    fn system() -> Value {
        json!({"role": "system", "content": "You are a careful coding agent. ".repeat(40)})
    }

    #[tokio::test]
    async fn a_conversations_next_turn_reports_its_cached_prompt_like_llama_server() {
        let settings = sim_settings(Duration::ZERO);
        let mut messages = vec![system(), json!({"role": "user", "content": "Fix the failing test."})];
        let first = answer(&settings, Dialect::Chat, &json!({"messages": messages, "max_tokens": 8})).await;
        let usage = &first[0]["usage"];
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0, "{usage}");
        assert_eq!(first[0]["timings"]["cache_n"], 0);
        assert_eq!(first[0]["timings"]["prompt_n"], usage["prompt_tokens"]);
        let reply = first[0]["choices"][0]["message"]["content"].clone();
        messages.push(json!({"role": "assistant", "content": reply}));
        messages.push(json!({"role": "user", "content": [{"type": "text", "text": "Now run it."}]}));
        let request = json!({"messages": messages, "max_tokens": 8, "stream": true,
                             "stream_options": {"include_usage": true}});
        let second = answer(&settings, Dialect::Chat, &request).await;
        let last = second.last().expect("a usage chunk");
        let (prompt, cached) = (
            last["usage"]["prompt_tokens"].as_u64().expect("prompt"),
            last["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached"),
        );
        let previous = usage["prompt_tokens"].as_u64().expect("prompt") + 8;
        assert!(cached >= previous && cached < prompt, "the earlier turn and its answer: {last}");
        assert_eq!(last["timings"]["cache_n"], cached);
        assert_eq!(last["timings"]["prompt_n"], prompt - cached);
        assert!(second[..second.len() - 1].iter().all(|c| c.get("timings").is_none()), "only the last chunk");
    }

    #[tokio::test]
    async fn completions_are_cached_and_streams_without_usage_carry_timings_last() {
        let settings = sim_settings(Duration::ZERO);
        let prompt = "Once upon a time ".repeat(30);
        answer(&settings, Dialect::Completion, &json!({"prompt": prompt, "max_tokens": 4})).await;
        let request =
            json!({"prompt": format!("{prompt}This is simulated"), "max_tokens": 4, "stream": true});
        let chunks = answer(&settings, Dialect::Completion, &request).await;
        let last = chunks.last().expect("chunks");
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(
            last["timings"]["cache_n"], 131,
            "the first prompt and the part of the answer resent: {last}"
        );
    }

    #[test]
    fn the_prefill_grows_with_the_uncached_tokens_only() {
        let settings = sim_settings(Duration::from_millis(2));
        let reuse = |prompt_tokens, cached_tokens| Reuse { slot: 0, cached_tokens, prompt_tokens };
        assert_eq!(prefill_time(&settings, reuse(1000, 0)), Duration::from_secs(2));
        assert_eq!(prefill_time(&settings, reuse(1000, 990)), Duration::from_millis(20));
        assert_eq!(
            prefill_time(&sim_settings(Duration::ZERO), reuse(1000, 0)),
            Duration::ZERO,
            "the default"
        );
    }

    #[test]
    fn a_chat_prompt_renders_tools_and_every_turn_and_the_answer_as_resent() {
        let request = json!({"tools": [{"type": "function", "function": {"name": "read"}}],
            "messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]},
                         {"role": "tool", "content": [{"type": "text", "text": "file"}]}]});
        let text = render_prompt(&request, Dialect::Chat);
        assert!(text.starts_with("<|tools|>[{\"function\""), "{text}");
        assert!(
            text.ends_with("<|user|>hi<|end|><|assistant|>[{\"id\":\"1\"}]<|end|><|tool|>file<|end|>"),
            "{text}"
        );
        let next =
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]});
        let first = render_prompt(&json!({"messages": [{"role": "user", "content": "hi"}]}), Dialect::Chat);
        assert_eq!(
            render_prompt(&next, Dialect::Chat),
            format!("{first}{}", render_answer("ok", Dialect::Chat))
        );
        assert_eq!(render_prompt(&json!({"messages": "not a list"}), Dialect::Chat), "");
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn filler_is_deterministic_and_embeddings_are_unit_vectors() {
        let text: String = (0..4).map(token).collect();
        assert_eq!(text, "This is simulated output");
        let v = embed("hello");
        assert_eq!(v, embed("hello"));
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
