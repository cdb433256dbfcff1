//! The SIMULATED engine's HTTP server: OpenAI-compatible `/v1/chat/completions`,
//! `/v1/completions` (streaming and not, with `usage` and `stream_options.include_usage`),
//! `/v1/embeddings`, `/v1/models` and `/health`, answering deterministic filler text with a
//! configured time to first token and token rate. Every answer is marked `cortex-sim`.

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

/// How one simulated engine behaves; fixed at load.
pub struct SimSettings {
    /// The fleet id it serves (what `--alias` is for llama.cpp).
    pub model: String,
    /// `/health` answers 503 (and every route refuses) until then.
    pub ready_at: Instant,
    pub ttft: Duration,
    pub token_interval: Duration,
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

/// A rough, deterministic prompt token count: a token per four characters of text.
fn prompt_tokens(request: &Value, dialect: Dialect) -> u64 {
    fn text_len(value: &Value) -> usize {
        match value {
            Value::String(s) => s.chars().count(),
            Value::Array(items) => items.iter().map(text_len).sum(),
            Value::Object(map) => map.get("text").or_else(|| map.get("content")).map_or(0, text_len),
            _ => 0,
        }
    }
    let chars = match dialect {
        Dialect::Chat => request.get("messages").map_or(0, text_len),
        Dialect::Completion => request.get("prompt").map_or(0, text_len),
    };
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX).max(1)
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
    let prompt = prompt_tokens(&request, dialect);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": count, "total_tokens": prompt + count});
    let id = format!(
        "{}-sim-{}",
        if dialect == Dialect::Chat { "chatcmpl" } else { "cmpl" },
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let due = |i: u64| settings.ttft + settings.token_interval * u32::try_from(i).unwrap_or(u32::MAX);
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
        let text: String = (0..count).map(token).collect();
        let choice = match dialect {
            Dialect::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                   "logprobs": null, "finish_reason": finish}),
            Dialect::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut response = envelope(object, json!([choice]));
        response["usage"] = usage;
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
    events.push((last, envelope(chunk_object, json!([final_choice])).to_string()));
    if include_usage {
        let mut chunk = envelope(chunk_object, json!([]));
        chunk["usage"] = usage;
        events.push((last, chunk.to_string()));
    }
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
