//! The Anthropic routes: `/v1/messages` and `/v1/messages/count_tokens`. When the serving
//! engine speaks the Messages API natively the request passes through (with known deviations
//! fixed on the way back); otherwise it is translated to Chat Completions and back, streams
//! included.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::gateway::core::error::{ApiError, Dialect};
use crate::gateway::core::forward::{RawFix, StreamEdit};
use crate::gateway::core::pipeline::{self, Checked, OutputCap, RouteInfo, Upstream};
use crate::gateway::core::state::AppState;
use crate::gateway::core::target::Target;
use crate::gateway::dialects::anthropic;
use crate::gateway::dialects::chat::body::{chat_body, edit_body};
use crate::gateway::dialects::chat::translate::Translate;

const MESSAGES: RouteInfo = RouteInfo { name: "messages", dialect: Dialect::Anthropic };
const COUNT_TOKENS: RouteInfo = RouteInfo { name: "count_tokens", dialect: Dialect::Anthropic };

pub async fn messages(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    pipeline::run(state, headers, body, MESSAGES, messages_adapter).await
}

pub async fn count_tokens(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    pipeline::run(state, headers, body, COUNT_TOKENS, count_tokens_adapter).await
}

/// The Messages adapter: native pass-through when the engine speaks Messages (only the envelope
/// was validated; the engine judges the rest), else translation to Chat Completions.
async fn messages_adapter(state: AppState, target: Target, checked: Checked) -> Result<Response, ApiError> {
    let stream = checked.envelope.stream;
    let cap = pipeline::output_cap(&state, &target.model).map(|cap| OutputCap::new(cap, &["max_tokens"]));
    let cap_binds = cap.is_some_and(|cap| cap.binds(checked.envelope.max_tokens.as_ref()));
    if pipeline::capabilities(&state, &target).anthropic_messages {
        let body = edit_body(&checked.body, &checked.model, &target.model, cap, false)?;
        let edit = if stream {
            StreamEdit::FixRaw(Box::new(NativeFix { cap_binds, stream: Default::default() }))
        } else {
            StreamEdit::None
        };
        let upstream = Upstream::post("/v1/messages", body, stream, edit, true);
        let response = pipeline::forward(&state, target, &checked, upstream).await?;
        return if stream { Ok(response) } else { fix_native_body(response, cap_binds).await };
    }
    let request: Value = serde_json::from_slice(&checked.body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let chat = anthropic::request_to_chat(&request)?;
    let body = chat_body(chat, &target.model, cap.map(|cap| cap.cap))?;
    let edit = if stream {
        let translator = anthropic::StreamTranslator::new(&checked.model).cap_binds(cap_binds);
        StreamEdit::Transform(Box::new(Translate::new(translator)))
    } else {
        StreamEdit::None
    };
    let upstream = Upstream::post("/v1/chat/completions", body, stream, edit, false);
    let response = pipeline::forward(&state, target, &checked, upstream).await?;
    if stream { Ok(response) } else { translate_body(response, &checked.model, cap_binds).await }
}

async fn count_tokens_adapter(
    state: AppState,
    target: Target,
    checked: Checked,
) -> Result<Response, ApiError> {
    // Exact counts come from the engine's own `/v1/messages/count_tokens`: it must both speak
    // the Messages API and say it counts tokens.
    let capabilities = pipeline::capabilities(&state, &target);
    if !(capabilities.anthropic_messages && capabilities.count_tokens) {
        return Err(ApiError::Unsupported(format!(
            "the engine serving {} cannot count tokens exactly (harness {})",
            target.model, target.harness
        )));
    }
    let body = edit_body(&checked.body, &checked.model, &target.model, None, false)?;
    let upstream = Upstream::post("/v1/messages/count_tokens", body, false, StreamEdit::None, true);
    pipeline::forward(&state, target, &checked, upstream).await
}

/// A native engine's complete (non-streaming) Message, with known deviations fixed.
async fn fix_native_body(response: Response, cap_binds: bool) -> Result<Response, ApiError> {
    let mut message = pipeline::read_json(response).await?;
    anthropic::fix_native_message(&mut message);
    cap_is_not_a_stop(&mut message, cap_binds);
    Ok(axum::Json(message).into_response())
}

/// Translate a complete (non-streaming) Chat Completions answer into a Message.
async fn translate_body(response: Response, requested: &str, cap_binds: bool) -> Result<Response, ApiError> {
    let chat = pipeline::read_json(response).await?;
    let mut message = anthropic::chat_to_message(&chat, requested)?;
    cap_is_not_a_stop(&mut message, cap_binds);
    Ok(axum::Json(message).into_response())
}

/// When the fleet's cap, not the client's `max_tokens`, ended the answer, it ended as the
/// operator's limit: `end_turn`. Claude Code treats `max_tokens` as a failed turn (it retries to
/// continue, then gives up with "response exceeded the output token maximum").
fn cap_is_not_a_stop(message: &mut Value, cap_binds: bool) {
    if cap_binds && message["stop_reason"] == "max_tokens" {
        message["stop_reason"] = "end_turn".into();
    }
}

/// Pass-through of a native Anthropic stream, fixing known engine deviations on the raw events
/// (only events with a `tool_use` block, `message_start` and `message_delta` are parsed), and reporting a stop at the fleet's cap as
/// `end_turn` (see [`cap_is_not_a_stop`]).
struct NativeFix {
    cap_binds: bool,
    stream: anthropic::NativeStreamFix,
}

const MAX_TOKENS_STOP: &str = r#""stop_reason":"max_tokens""#;

impl RawFix for NativeFix {
    fn fix(&mut self, events: &[u8]) -> Option<Bytes> {
        let fixed = self.stream.raw(events);
        let capped =
            self.cap_binds && events.windows(MAX_TOKENS_STOP.len()).any(|w| w == MAX_TOKENS_STOP.as_bytes());
        if !capped {
            return fixed.map(Bytes::from);
        }
        let text = fixed.unwrap_or_else(|| String::from_utf8_lossy(events).into_owned());
        Some(Bytes::from(text.replace(MAX_TOKENS_STOP, r#""stop_reason":"end_turn""#)))
    }
}
