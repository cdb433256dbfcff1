//! The inference handlers: thin functions that check the key, read the envelope (`model`,
//! `stream`), resolve where the request goes and hand it to the proxy.

use std::convert::Infallible;
use std::future::Future;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::gateway::AppState;
use crate::gateway::error::{ApiError, Dialect};
use crate::gateway::proxy::{self, Exchange, StreamEdit};
use crate::gateway::route::{self, LoadTicket, Resolution, Target};

/// The part of a request body the gateway reads; the rest is forwarded untouched.
#[derive(Debug, serde::Deserialize)]
pub struct Envelope {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A request that passed the common checks: authorised, within the size limit, valid JSON
/// with a model name.
pub struct Checked {
    pub body: Bytes,
    pub envelope: Envelope,
    pub model: String,
    pub started: Instant,
}

/// Authorise, read (bounded) and parse the envelope.
pub async fn check(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Checked, ApiError> {
    let started = Instant::now();
    if !state.keys.allows(headers) {
        return Err(ApiError::Unauthorized);
    }
    let limit = state.limits.max_body_bytes;
    let body =
        axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::TooLarge { limit_bytes: limit })?;
    let envelope: Envelope = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON for this route: {e}")))?;
    let model = envelope
        .model
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::BadRequest("\"model\" is required".into()))?;
    Ok(Checked { body, envelope, model, started })
}

pub async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body, "/v1/chat/completions", "chat_completions").await
}

pub async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body, "/v1/completions", "completions").await
}

pub async fn embeddings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body, "/v1/embeddings", "embeddings").await
}

pub async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn openai(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    path: &'static str,
    route: &'static str,
) -> Response {
    openai_inner(state, headers, body, path, route)
        .await
        .unwrap_or_else(|e| rejected(e, route, Dialect::OpenAi))
}

/// The error response for a request that did not get a response from an engine, counted in
/// `cortex_requests_total` with its status (model and neuron labels empty: they may be unknown,
/// and arbitrary names from clients must not create series).
pub fn rejected(error: ApiError, route: &'static str, dialect: Dialect) -> Response {
    let status = error.status().as_u16().to_string();
    metrics::counter!("cortex_requests_total", "model" => "", "neuron" => "", "route" => route, "status" => status)
        .increment(1);
    error.in_dialect(dialect).into_response()
}

async fn openai_inner(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    path: &'static str,
    route: &'static str,
) -> Result<Response, ApiError> {
    let checked = check(&state, &headers, body).await?;
    let stream = checked.envelope.stream;
    // cortex always wants usage for its metrics; when the client did not ask for it, ask on its
    // behalf and remove that chunk again on the way back.
    let add_usage = stream
        && route != "embeddings"
        && !checked.envelope.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let edit = move || if add_usage { StreamEdit::StripUsageChunk } else { StreamEdit::None };
    let forward = move |state: AppState, target: Target, checked: Checked| async move {
        let body = rewrite(checked.body, &checked.model, &target.model, add_usage)?;
        forward(&state, target, path, body, route, Dialect::OpenAi, stream, checked.started, edit()).await
    };
    match route::resolve(&state, &checked.model)? {
        Resolution::Ready(target) => forward(state, target, checked).await,
        Resolution::Waiting(ticket) if !stream => {
            let target = wait(ticket, checked.started, &checked.model).await?;
            forward(state, target, checked).await
        }
        Resolution::Waiting(ticket) => {
            Ok(waiting_stream(state, ticket, checked, (route, Dialect::OpenAi), forward))
        }
    }
}

/// Wait for a cold load, recording how long the request queued.
pub async fn wait(ticket: LoadTicket, started: Instant, model: &str) -> Result<Target, ApiError> {
    let result = ticket.wait().await;
    metrics::histogram!("cortex_queue_wait_seconds", "model" => model.to_owned())
        .record(started.elapsed().as_secs_f64());
    result
}

/// Forward `body` to `path` on the target and stream the answer back.
#[expect(clippy::too_many_arguments, reason = "one call site per dialect; a struct would only rename them")]
pub async fn forward(
    state: &AppState,
    target: Target,
    path: &str,
    body: Bytes,
    route: &'static str,
    dialect: Dialect,
    stream: bool,
    started: Instant,
    edit: StreamEdit,
) -> Result<Response, ApiError> {
    // Through the router: a request that raced an unload is queued again, not failed.
    let (target, upstream) = route::send(state, target, path, body).await?;
    let guard = state.inflight.enter(&target.model, &target.neuron.name);
    if !upstream.status().is_success() {
        return Err(proxy::upstream_error(upstream).await);
    }
    let exchange = Exchange { route, dialect, target, started, guard };
    Ok(proxy::respond(upstream, exchange, stream, edit))
}

/// The body to send upstream: the client's own bytes, unless the model was named by an alias
/// (the engine knows the fleet id) or usage must be requested.
fn rewrite(body: Bytes, requested: &str, id: &str, add_usage: bool) -> Result<Bytes, ApiError> {
    if requested == id && !add_usage {
        return Ok(body);
    }
    // Only usage to ask for, and no `stream_options` key at all: splice the field in after the
    // opening brace (a copy of the bytes) rather than parse and re-serialise the whole body,
    // which for a long conversation costs milliseconds of time to first token.
    if requested == id && !contains_bytes(&body, b"\"stream_options\"") {
        let open = body.iter().position(|b| !b.is_ascii_whitespace());
        if let Some(open) = open.filter(|&i| body[i] == b'{') {
            const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
            let mut spliced = Vec::with_capacity(body.len() + FIELD.len());
            spliced.extend_from_slice(&body[..=open]);
            spliced.extend_from_slice(FIELD);
            spliced.extend_from_slice(&body[open + 1..]);
            return Ok(Bytes::from(spliced));
        }
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::BadRequest("request body must be a JSON object".into()));
    };
    object.insert("model".into(), id.into());
    if add_usage {
        let options = object.entry("stream_options").or_insert_with(|| serde_json::json!({}));
        if options.is_null() {
            *options = serde_json::json!({});
        }
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".into(), true.into());
        }
    }
    serde_json::to_vec(&value).map(Bytes::from).map_err(|e| ApiError::Internal(e.to_string()))
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A streaming response for a request that must wait for a cold load: SSE comment
/// keep-alives go out while it waits, so clients do not time out, then the upstream stream
/// follows (or an error event in the route's dialect).
pub fn waiting_stream<F, Fut>(
    state: AppState,
    ticket: LoadTicket,
    checked: Checked,
    (route, dialect): (&'static str, Dialect),
    forward: F,
) -> Response
where
    F: FnOnce(AppState, Target, Checked) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send,
{
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    let every = state.limits.keepalive_interval;
    let model = checked.model.clone();
    let started = checked.started;
    tokio::spawn(async move {
        let waiting = wait(ticket, started, &model);
        tokio::pin!(waiting);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let target = loop {
            tokio::select! {
                target = &mut waiting => break target,
                _ = ticks.tick() => {
                    if sender.send(Bytes::from_static(b": cortex: loading model\n\n")).await.is_err() {
                        return; // the client left
                    }
                }
            }
        };
        let response = match target {
            Ok(target) => forward(state, target, checked).await,
            Err(error) => Err(error),
        };
        match response {
            Ok(response) => {
                let mut body = response.into_body().into_data_stream();
                while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                    let Ok(chunk) = chunk else { break };
                    if sender.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                // The 200 is out: count the failure here, as `rejected` does for the others.
                let status = error.status().as_u16().to_string();
                metrics::counter!("cortex_requests_total", "model" => "", "neuron" => "", "route" => route, "status" => status)
                    .increment(1);
                let _ = sender.send(Bytes::from(error.sse_event(dialect))).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), receiver))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub async fn messages(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    crate::gateway::messages::messages(state, headers, body).await
}

pub async fn count_tokens(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    crate::gateway::messages::count_tokens(state, headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(body: &str, requested: &str, id: &str, add_usage: bool) -> serde_json::Value {
        let bytes = rewrite(Bytes::from(body.to_owned()), requested, id, add_usage).expect("rewrite");
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    #[test]
    fn usage_is_requested_without_touching_the_rest() {
        let body = r#" {"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let value = rewritten(body, "m", "m", true);
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["messages"][0]["content"], "hi");
        // An explicit stream_options (here null) is rewritten through the parser instead.
        let value = rewritten(r#"{"model":"m","stream_options":null}"#, "m", "m", true);
        assert_eq!(value["stream_options"]["include_usage"], true);
        let value = rewritten(r#"{"model":"alias","stream":true}"#, "alias", "m", true);
        assert_eq!(
            (value["model"].as_str(), value["stream_options"]["include_usage"].as_bool()),
            (Some("m"), Some(true))
        );
        let untouched = rewrite(Bytes::from_static(b"{\"model\":\"m\"}"), "m", "m", false).expect("rewrite");
        assert_eq!(untouched, Bytes::from_static(b"{\"model\":\"m\"}"));
    }
}
