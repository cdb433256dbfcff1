//! The OpenAI adapter (Chat Completions, Completions, Embeddings) over the pipeline: always
//! native, only the model name, the output cap and the usage request are touched, and a stop at
//! the fleet's cap is reported as `stop` ([`native`]).

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::gateway::core::error::{ApiError, Dialect};
use crate::gateway::core::forward::StreamEdit;
use crate::gateway::core::pipeline::{self, Checked, OutputCap, RouteInfo, Upstream};
use crate::gateway::core::state::AppState;
use crate::gateway::core::target::Target;
use crate::gateway::dialects::chat::body::edit_body;
use crate::gateway::dialects::openai::native::{self, CapIsNotAStop};

pub async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body, "/v1/chat/completions", "chat_completions").await
}

pub async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body, "/v1/completions", "completions").await
}

pub async fn embeddings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body, "/v1/embeddings", "embeddings").await
}

async fn openai(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    path: &'static str,
    route: &'static str,
) -> Response {
    let info = RouteInfo { name: route, dialect: Dialect::OpenAi };
    pipeline::run(state, headers, body, info, move |state, target, checked| async move {
        forward_openai(state, target, checked, path).await
    })
    .await
}

/// The OpenAI adapter: always native (every engine speaks Chat Completions); only the model
/// name, the output cap and the usage request are touched.
async fn forward_openai(
    state: AppState,
    target: Target,
    checked: Checked,
    path: &'static str,
) -> Result<Response, ApiError> {
    let stream = checked.envelope.stream;
    // cortex always wants usage for its metrics; when the client did not ask for it, ask on its
    // behalf and remove that chunk again on the way back.
    let add_usage = stream
        && checked.route.name != "embeddings"
        && !checked.envelope.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let cap = match checked.route.name {
        "embeddings" => None,
        "completions" => {
            pipeline::output_cap(&state, &target.model).map(|cap| OutputCap::new(cap, &["max_tokens"]))
        }
        _ => pipeline::output_cap(&state, &target.model)
            .map(|cap| OutputCap::new(cap, &["max_tokens", "max_completion_tokens"])),
    };
    let envelope = &checked.envelope;
    let limits = [envelope.max_tokens.as_ref(), envelope.max_completion_tokens.as_ref()];
    let cap_binds = native::cap_binds(cap.map(|cap| cap.cap), &limits);
    let body = edit_body(&checked.body, &checked.model, &target.model, cap, add_usage)?;
    let edit = match (cap_binds, add_usage) {
        (true, strip_usage) => StreamEdit::FixRaw(Box::new(CapIsNotAStop { strip_usage })),
        (false, true) => StreamEdit::StripUsageChunk,
        (false, false) => StreamEdit::None,
    };
    let upstream = Upstream::post(path, body, stream, edit, true);
    let answer = pipeline::forward(&state, target, &checked, upstream).await?;
    if stream || !cap_binds {
        return Ok(answer);
    }
    let mut answer = pipeline::read_json(answer).await?;
    native::cap_is_not_a_stop(&mut answer);
    Ok(axum::Json(answer).into_response())
}
