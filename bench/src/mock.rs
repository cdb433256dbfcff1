//! The mock engine: a minimal, deterministic OpenAI Chat Completions server (streaming and not)
//! with a fixed time to first token and inter-token delay, so that a benchmark measures only
//! what sits between the client and it. It also answers the few neuron API routes cortex polls
//! (`/health`, `/discovery`, `/models`, `/models/wait`), so cortex can use it as a neuron whose
//! models are "loaded outside cortex" and forward to it with no neuron process in between.
//!
//! Timing comes from the model name, `m-<ttft_ms>-<itl_ms>` (e.g. `m-20-10`), so every path
//! (direct, cortex, LiteLLM) gets the same behaviour from the same request. `max_tokens` sets
//! the number of tokens (default 16). A non-streaming answer comes after
//! `ttft + (tokens - 1) × itl` (at once for `m-0-0`: no timer); stream events are scheduled on
//! absolute times (no drift). Each streamed token's text is `@<µs>`, the wall-clock microsecond
//! it was written, and the first one's `@<µs>:<µs>` adds when the request arrived: per-chunk
//! delivery latency that survives any proxy or translation, free of the mock's timer jitter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use tokio::time::Instant;

const DEFAULT_TOKENS: u64 = 16;
const MAX_TOKENS: u64 = 100_000;

struct Mock {
    name: String,
    models: Vec<String>,
    next_id: AtomicU64,
}

/// Serve the mock on 127.0.0.1:`port` until killed. `models` are the names listed as loaded.
pub async fn run(port: u16, name: String, models: Vec<String>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let mock = Arc::new(Mock { name, models, next_id: AtomicU64::new(1) });
    let app = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/health", get(health))
        .route("/discovery", get(discovery))
        .route("/models", get(models_route))
        .route("/models/wait", get(wait))
        .route("/v1/models", get(v1_models))
        .route("/v1/chat/completions", post(chat))
        .with_state(mock);
    axum::serve(listener, app).await?;
    Ok(())
}

/// `m-<ttft_ms>-<itl_ms>` → (ttft, itl).
pub fn timing(model: &str) -> Option<(Duration, Duration)> {
    let mut parts = model.strip_prefix("m-")?.split('-');
    let ttft = parts.next()?.parse().ok()?;
    let itl = parts.next()?.parse().ok()?;
    Some((Duration::from_millis(ttft), Duration::from_millis(itl)))
}

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

async fn health() -> Response {
    axum::Json(json!({"boot_id": "mock-boot", "generation": 1, "devices": [],
                      "ram_total_mb": 1024, "ram_free_mb": 1024}))
    .into_response()
}

async fn discovery(State(mock): State<Arc<Mock>>) -> Response {
    axum::Json(json!({"name": mock.name, "boot_id": "mock-boot", "version": "mock", "simulated": true,
                      "devices": [], "ram_total_mb": 1024,
                      "harnesses": [{"name": "mock", "kind": "sim", "anthropic_messages": false,
                                     "count_tokens": false, "embeddings": false}]}))
    .into_response()
}

fn loaded(id: &str) -> Value {
    json!({"id": id, "harness": "mock", "status": "loaded", "devices": [], "vram_mb": 0, "ram_mb": 0,
           "last_used_unix_ms": 0, "in_flight": 0})
}

async fn models_route(State(mock): State<Arc<Mock>>) -> Response {
    let models: Vec<Value> = mock.models.iter().map(|m| loaded(m)).collect();
    axum::Json(json!({"boot_id": "mock-boot", "generation": 1, "models": models})).into_response()
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    model: String,
}

async fn wait(Query(query): Query<WaitQuery>) -> Response {
    axum::Json(loaded(&query.model)).into_response()
}

async fn v1_models(State(mock): State<Arc<Mock>>) -> Response {
    let data: Vec<Value> = mock
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "mock"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(serde::Deserialize)]
struct Request {
    model: String,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stream_options: Option<StreamOptions>,
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"message": message, "type": "invalid_request_error"}})))
        .into_response()
}

async fn chat(State(mock): State<Arc<Mock>>, body: Bytes) -> Response {
    let started = Instant::now();
    let arrived_us = now_us();
    let request: Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some((ttft, itl)) = timing(&request.model) else {
        return error(StatusCode::NOT_FOUND, "unknown model: the mock serves m-<ttft_ms>-<itl_ms>");
    };
    let asked = request.max_tokens.or(request.max_completion_tokens);
    let (count, finish) = match asked {
        Some(n) => (n.clamp(1, MAX_TOKENS), "length"),
        None => (DEFAULT_TOKENS, "stop"),
    };
    let id = mock.next_id.fetch_add(1, Ordering::Relaxed);
    let model = request.model;
    let due = move |i: u64| ttft + itl * u32::try_from(i).unwrap_or(u32::MAX);
    let usage = format!(r#"{{"prompt_tokens":8,"completion_tokens":{count},"total_tokens":{}}}"#, count + 8);
    if !request.stream {
        if !ttft.is_zero() || !itl.is_zero() {
            tokio::time::sleep_until(started + due(count - 1)).await;
        }
        let text = "tok ".repeat(usize::try_from(count).unwrap_or(0));
        let body = format!(
            r#"{{"id":"mock-{id}","object":"chat.completion","created":0,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"{finish}"}}],"usage":{usage}}}"#,
            text.trim_end()
        );
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    // Events: `count` tokens, then the finish chunk, the usage chunk if asked, and [DONE], all
    // written at the last token's time.
    let events = count + 2 + u64::from(include_usage);
    // Every event's beginning, made once per stream (no per-event copies of the model's name).
    let head: Arc<str> =
        format!(r#"data: {{"id":"mock-{id}","object":"chat.completion.chunk","created":0,"model":"{model}""#)
            .into();
    let usage: Arc<str> = usage.into();
    let stream = futures_util::stream::unfold(0u64, move |i| {
        let (head, usage) = (head.clone(), usage.clone());
        async move {
            if i >= events {
                return None;
            }
            tokio::time::sleep_until(started + due(i.min(count - 1))).await;
            let event = if i < count {
                // The text is the write time (and for the first token, the request's arrival),
                // so it survives any proxy and translation: `@<write µs>[:<arrival µs>] `.
                let (role, arrival) = if i == 0 {
                    (r#""role":"assistant","#, format!(":{arrived_us}"))
                } else {
                    ("", String::new())
                };
                format!(
                    "{head},\"choices\":[{{\"index\":0,\"delta\":{{{role}\"content\":\"@{}{arrival} \"}},\"finish_reason\":null}}]}}\n\n",
                    now_us()
                )
            } else if i == count {
                format!(
                    "{head},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{finish}\"}}]}}\n\n"
                )
            } else if include_usage && i == count + 1 {
                format!("{head},\"choices\":[],\"usage\":{usage}}}\n\n")
            } else {
                "data: [DONE]\n\n".to_owned()
            };
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(event)), i + 1))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_comes_from_the_model_name() {
        assert_eq!(timing("m-20-10"), Some((Duration::from_millis(20), Duration::from_millis(10))));
        assert_eq!(timing("gpt-4"), None);
    }
}
