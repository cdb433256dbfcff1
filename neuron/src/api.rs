//! The neuron's HTTP API (spec §8): `app(neuron)` builds the router (testable without a socket),
//! `serve(listener, neuron, shutdown)` runs it and stops every engine on shutdown. Handlers are
//! thin: parse, call one `Neuron` method, map the result.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plans::wire::{ErrorBody, ErrorDetail, FenceRequest, LoadRequest, UnloadRequest};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::lifecycle::LoadOutcome;
use crate::proxy;
use crate::state::Neuron;

/// The one route that needs no token.
const LIVENESS_PATH: &str = "/livez";
/// Inference bodies may carry images.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The longest a `/models/wait` long-poll is held.
const MAX_WAIT: Duration = Duration::from_secs(600);
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

pub fn app(neuron: Neuron) -> Router {
    Router::new()
        .route(LIVENESS_PATH, get(livez))
        .route("/discovery", get(discovery))
        .route("/health", get(health))
        .route("/models", get(models))
        .route("/models/load", post(load))
        .route("/models/unload", post(unload))
        .route("/models/wait", get(wait))
        .route("/fence", post(fence))
        .route("/actions", get(actions))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(proxy::forward))
        .route("/v1/completions", post(proxy::forward))
        .route("/v1/embeddings", post(proxy::forward))
        .route("/v1/messages", post(proxy::forward))
        .route("/v1/messages/count_tokens", post(proxy::forward))
        .route("/v1/responses", post(proxy::forward))
        .route("/v1/responses/input_tokens", post(proxy::forward))
        .route("/v1/responses/{id}", get(proxy::forward))
        .route("/v1/responses/{id}/cancel", post(proxy::forward))
        .route("/tokenize", post(proxy::forward))
        .route("/detokenize", post(proxy::forward))
        .route("/apply-template", post(proxy::forward))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(neuron.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(neuron)
}

/// Serve on an already-bound `listener` until `shutdown` is cancelled; then let running requests
/// finish (up to drain_timeout) and stop every engine this neuron started.
pub async fn serve(
    listener: tokio::net::TcpListener,
    neuron: Neuron,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let drain_timeout = neuron.config().drain_timeout;
    let limits = neuron.config().listener;
    let server = cortex_listener::serve(listener, app(neuron.clone()), limits, shutdown.clone());
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown.cancelled() => match tokio::time::timeout(drain_timeout, &mut server).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("requests still open after {drain_timeout:?}: closing them");
                Ok(())
            }
        },
    };
    neuron.shutdown_engines().await;
    result
}

async fn require_token(State(neuron): State<Neuron>, request: Request, next: Next) -> Response {
    if request.uri().path() == LIVENESS_PATH {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if neuron.token_matches(token.trim()) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

async fn livez() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let detail = ErrorDetail {
        code: "not_found".to_owned(),
        message: format!("no route {}", uri.path()),
        generation: None,
        term: None,
    };
    (StatusCode::NOT_FOUND, Json(ErrorBody { error: detail })).into_response()
}

async fn discovery(State(neuron): State<Neuron>) -> Response {
    Json(neuron.discovery().await).into_response()
}

async fn health(State(neuron): State<Neuron>) -> Response {
    Json(neuron.health().await).into_response()
}

async fn models(State(neuron): State<Neuron>) -> Response {
    Json(neuron.models()).into_response()
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| ApiError::BadRequest(format!("invalid request body: {err}")))
}

async fn load(State(neuron): State<Neuron>, body: Bytes) -> Result<Response, ApiError> {
    let request: LoadRequest = parse_body(&body)?;
    Ok(match neuron.load(request)? {
        LoadOutcome::Started(response) => (StatusCode::ACCEPTED, Json(response)).into_response(),
        LoadOutcome::Unchanged(response) => (StatusCode::OK, Json(response)).into_response(),
    })
}

async fn unload(State(neuron): State<Neuron>, body: Bytes) -> Result<Response, ApiError> {
    let request: UnloadRequest = parse_body(&body)?;
    Ok(Json(neuron.unload(request).await?).into_response())
}

async fn fence(State(neuron): State<Neuron>, body: Bytes) -> Result<Response, ApiError> {
    let request: FenceRequest = parse_body(&body)?;
    Ok(Json(neuron.fence(request.term)?).into_response())
}

async fn actions(State(neuron): State<Neuron>) -> Response {
    Json(neuron.actions()).into_response()
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    model: String,
    timeout_ms: Option<u64>,
}

async fn wait(
    State(neuron): State<Neuron>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    let timeout = query.timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis).min(MAX_WAIT);
    Ok(Json(neuron.wait(&query.model, timeout).await?).into_response())
}

async fn metrics(State(neuron): State<Neuron>) -> Response {
    let text = neuron.metrics_text().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
