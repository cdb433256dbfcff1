//! The Anthropic routes: `/v1/messages` and `/v1/messages/count_tokens`. When the serving
//! engine speaks the Messages API natively the request passes through (with known deviations
//! fixed on the way back); otherwise it is translated to Chat Completions and back, streams
//! included.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};

use crate::gateway::AppState;
use crate::gateway::anthropic;
use crate::gateway::error::{ApiError, Dialect};
use crate::gateway::proxy::{self, EventTransform, StreamEdit};
use crate::gateway::route::{self, Resolution, Target};
use crate::gateway::routes::{self, Checked};
use crate::gateway::sse::{self, SseParser};

pub async fn messages(state: AppState, headers: HeaderMap, body: Body) -> Response {
    messages_inner(state, headers, body)
        .await
        .unwrap_or_else(|e| routes::rejected(e, "messages", Dialect::Anthropic))
}

pub async fn count_tokens(state: AppState, headers: HeaderMap, body: Body) -> Response {
    count_tokens_inner(state, headers, body)
        .await
        .unwrap_or_else(|e| routes::rejected(e, "count_tokens", Dialect::Anthropic))
}

/// Whether the engine behind `target` serves `/v1/messages` itself.
fn native(state: &AppState, target: &Target) -> bool {
    state.observed().harness(&target.neuron.name, &target.harness).is_some_and(|h| h.anthropic_messages)
}

async fn messages_inner(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let checked = routes::check(&state, &headers, body).await?;
    // Validate before any load starts: a bad request must not cost a cold start.
    let request: serde_json::Value = serde_json::from_slice(&checked.body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    anthropic::request_to_chat(&request).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let stream = checked.envelope.stream;
    let forward = move |state: AppState, target: Target, checked: Checked| async move {
        let requested = checked.model.clone();
        let native = native(&state, &target);
        let (path, body, edit) = if native {
            let edit =
                if stream { StreamEdit::Transform(Box::<NativeFix>::default()) } else { StreamEdit::None };
            ("/v1/messages", with_model(&checked.body, &requested, &target.model)?, edit)
        } else {
            let mut chat =
                anthropic::request_to_chat(&request).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            chat["model"] = target.model.clone().into();
            let body = Bytes::from(serde_json::to_vec(&chat).map_err(|e| ApiError::Internal(e.to_string()))?);
            let edit = if stream {
                let translator = anthropic::StreamTranslator::new(&requested);
                StreamEdit::Transform(Box::new(Translate {
                    parser: SseParser::new(),
                    translator,
                    usage: None,
                }))
            } else {
                StreamEdit::None
            };
            ("/v1/chat/completions", body, edit)
        };
        let response = routes::forward(
            &state,
            target,
            path,
            body,
            "messages",
            Dialect::Anthropic,
            stream,
            checked.started,
            edit,
        )
        .await?;
        match (stream, native) {
            (true, _) => Ok(response),
            (false, true) => fix_native_body(response).await,
            (false, false) => translate_body(response, &requested).await,
        }
    };
    match route::resolve(&state, &checked.model)? {
        Resolution::Ready(target) => forward(state, target, checked).await,
        Resolution::Waiting(ticket) if !stream => {
            let target = routes::wait(ticket, checked.started, &checked.model).await?;
            forward(state, target, checked).await
        }
        Resolution::Waiting(ticket) => {
            Ok(routes::waiting_stream(state, ticket, checked, ("messages", Dialect::Anthropic), forward))
        }
    }
}

async fn count_tokens_inner(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let checked = routes::check(&state, &headers, body).await?;
    let target = match route::resolve(&state, &checked.model)? {
        Resolution::Ready(target) => target,
        Resolution::Waiting(ticket) => routes::wait(ticket, checked.started, &checked.model).await?,
    };
    // Exact counts come from the engine's own `/v1/messages/count_tokens`: it must both speak
    // the Messages API and say it counts tokens.
    let counts = state
        .observed()
        .harness(&target.neuron.name, &target.harness)
        .is_some_and(|h| h.anthropic_messages && h.count_tokens);
    if !counts {
        return Err(ApiError::Unsupported(format!(
            "the engine serving {} cannot count tokens exactly (harness {})",
            target.model, target.harness
        )));
    }
    let body = with_model(&checked.body, &checked.model, &target.model)?;
    routes::forward(
        &state,
        target,
        "/v1/messages/count_tokens",
        body,
        "count_tokens",
        Dialect::Anthropic,
        false,
        checked.started,
        StreamEdit::None,
    )
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

/// A native engine's complete (small, non-streaming) Message, with known deviations fixed.
async fn fix_native_body(response: Response) -> Result<Response, ApiError> {
    let message = read_json(response).await?;
    let mut message = message;
    anthropic::fix_native_message(&mut message);
    Ok(axum::Json(message).into_response())
}

async fn read_json(response: Response) -> Result<serde_json::Value, ApiError> {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::Upstream(format!("the engine's answer broke off: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Upstream(format!("the engine answered invalid JSON: {e}")))
}

/// Translate a complete (small, non-streaming) Chat Completions answer into a Message.
async fn translate_body(response: Response, requested: &str) -> Result<Response, ApiError> {
    let chat = read_json(response).await?;
    let message =
        anthropic::chat_to_message(&chat, requested).map_err(|e| ApiError::Upstream(e.to_string()))?;
    Ok(axum::Json(message).into_response())
}

/// Pass-through of a native Anthropic stream, fixing known engine deviations.
#[derive(Default)]
struct NativeFix {
    parser: SseParser,
    usage: Option<(u64, u64)>,
}

impl EventTransform for NativeFix {
    fn chunk(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let mut text = String::new();
        let usage = &mut self.usage;
        let _ = self.parser.feed(chunk, |event| {
            if event.data.contains("\"usage\"") {
                proxy::record_usage(event.data.as_bytes(), usage);
            }
            match anthropic::fix_native_event(event.event, event.data) {
                Some(fixed) => sse::write_event(&mut text, event.event, &fixed),
                None => sse::write_event(&mut text, event.event, event.data),
            }
            Ok::<(), ()>(())
        });
        out.extend_from_slice(text.as_bytes());
    }

    fn finish(&mut self, _out: &mut BytesMut) {}

    fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        out.extend_from_slice(error.sse_event(Dialect::Anthropic).as_bytes());
    }

    fn usage(&self) -> Option<(u64, u64)> {
        self.usage
    }
}

/// Translation of a Chat Completions stream into Anthropic events.
struct Translate {
    parser: SseParser,
    translator: anthropic::StreamTranslator,
    usage: Option<(u64, u64)>,
}

impl EventTransform for Translate {
    fn chunk(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let mut text = String::new();
        let translator = &mut self.translator;
        let usage = &mut self.usage;
        // An Err means the translator already wrote `event: error`: the rest is dropped.
        let _ = self.parser.feed(chunk, |event| {
            if event.data.contains("\"usage\"") {
                proxy::record_usage(event.data.as_bytes(), usage);
            }
            translator.push(event.data, &mut text)
        });
        out.extend_from_slice(text.as_bytes());
    }

    fn finish(&mut self, out: &mut BytesMut) {
        let mut text = String::new();
        let _ = self.translator.finish(&mut text);
        out.extend_from_slice(text.as_bytes());
    }

    fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        let mut text = String::new();
        self.translator.fail(&error.to_string(), &mut text);
        out.extend_from_slice(text.as_bytes());
    }

    fn usage(&self) -> Option<(u64, u64)> {
        self.usage
    }
}
