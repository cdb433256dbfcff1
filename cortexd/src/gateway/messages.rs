//! The Anthropic routes: `/v1/messages` and `/v1/messages/count_tokens`. When the serving
//! engine speaks the Messages API natively the request passes through (with known deviations
//! fixed on the way back); otherwise it is translated to Chat Completions and back, streams
//! included.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};

use crate::anthropic;
use crate::gateway::AppState;
use crate::gateway::error::{ApiError, Dialect};
use crate::gateway::proxy::{EventTransform, StreamEdit};
use crate::gateway::route::{self, Resolution, Target};
use crate::gateway::routes::{self, Checked};

pub async fn messages(state: AppState, headers: HeaderMap, body: Body) -> Response {
    messages_inner(state, headers, body).await.unwrap_or_else(|e| e.in_dialect(Dialect::Anthropic).into_response())
}

pub async fn count_tokens(state: AppState, headers: HeaderMap, body: Body) -> Response {
    count_tokens_inner(state, headers, body).await.unwrap_or_else(|e| e.in_dialect(Dialect::Anthropic).into_response())
}

/// Whether the engine behind `target` serves `/v1/messages` itself.
fn native(state: &AppState, target: &Target) -> bool {
    state.observed().harness(&target.neuron.name, &target.harness).is_some_and(|h| h.anthropic_messages)
}

async fn messages_inner(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let checked = routes::check(&state, &headers, body).await?;
    // Validate before any load starts: a bad request must not cost a cold start.
    let request: serde_json::Value =
        serde_json::from_slice(&checked.body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    anthropic::request_to_chat(&request).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let stream = checked.envelope.stream;
    let forward = move |state: AppState, target: Target, checked: Checked| async move {
        let requested = checked.model.clone();
        if native(&state, &target) {
            let body = with_model(&checked.body, &requested, &target.model)?;
            let edit = if stream { StreamEdit::Transform(Box::new(NativeFix)) } else { StreamEdit::None };
            return routes::forward(&state, target, "/v1/messages", body, "messages", Dialect::Anthropic, stream, checked.started, edit)
                .await;
        }
        let mut chat = anthropic::request_to_chat(&request).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        chat["model"] = target.model.clone().into();
        let body = Bytes::from(serde_json::to_vec(&chat).map_err(|e| ApiError::Internal(e.to_string()))?);
        if stream {
            let edit = StreamEdit::Transform(Box::new(Translate(anthropic::StreamTranslator::new(&requested))));
            return routes::forward(&state, target, "/v1/chat/completions", body, "messages", Dialect::Anthropic, true, checked.started, edit)
                .await;
        }
        let response = routes::forward(&state, target, "/v1/chat/completions", body, "messages", Dialect::Anthropic, false, checked.started, StreamEdit::None)
            .await?;
        translate_body(response, &requested).await
    };
    match route::resolve(&state, &checked.model)? {
        Resolution::Ready(target) => forward(state, target, checked).await,
        Resolution::Waiting(ticket) if !stream => {
            let target = routes::wait(ticket, checked.started, &checked.model).await?;
            forward(state, target, checked).await
        }
        Resolution::Waiting(ticket) => Ok(routes::waiting_stream(state, ticket, checked, Dialect::Anthropic, forward)),
    }
}

async fn count_tokens_inner(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let checked = routes::check(&state, &headers, body).await?;
    let target = match route::resolve(&state, &checked.model)? {
        Resolution::Ready(target) => target,
        Resolution::Waiting(ticket) => routes::wait(ticket, checked.started, &checked.model).await?,
    };
    if !native(&state, &target) {
        return Err(ApiError::Unsupported(format!(
            "the engine serving {} cannot count tokens exactly (harness {})",
            target.model, target.harness
        )));
    }
    let body = with_model(&checked.body, &checked.model, &target.model)?;
    routes::forward(&state, target, "/v1/messages/count_tokens", body, "count_tokens", Dialect::Anthropic, false, checked.started, StreamEdit::None)
        .await
}

/// The body with `model` set to the fleet id when the client used an alias.
fn with_model(body: &Bytes, requested: &str, id: &str) -> Result<Bytes, ApiError> {
    if requested == id {
        return Ok(body.clone());
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    value["model"] = id.into();
    serde_json::to_vec(&value).map(Bytes::from).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Translate a complete (small, non-streaming) Chat Completions answer into a Message.
async fn translate_body(response: Response, requested: &str) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::Upstream(format!("the engine's answer broke off: {e}")))?;
    let chat: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Upstream(format!("the engine answered invalid JSON: {e}")))?;
    let message = anthropic::chat_to_message(&chat, requested).map_err(|e| ApiError::Upstream(e.to_string()))?;
    Ok(axum::Json(message).into_response())
}

/// Pass-through of a native Anthropic stream, fixing known engine deviations.
struct NativeFix;

impl EventTransform for NativeFix {
    fn event(&mut self, event: &[u8], out: &mut BytesMut) {
        match anthropic::fix_native_event(event) {
            Some(fixed) => out.extend_from_slice(fixed.as_bytes()),
            None => out.extend_from_slice(event),
        }
    }

    fn finish(&mut self, _out: &mut BytesMut) {}

    fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        out.extend_from_slice(error.sse_event(Dialect::Anthropic).as_bytes());
    }
}

/// Translation of a Chat Completions stream into Anthropic events.
struct Translate(anthropic::StreamTranslator);

impl EventTransform for Translate {
    fn event(&mut self, event: &[u8], out: &mut BytesMut) {
        self.0.push_event(event, out);
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.0.finish(out);
    }

    fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        self.0.fail(&error.to_string(), out);
    }
}

