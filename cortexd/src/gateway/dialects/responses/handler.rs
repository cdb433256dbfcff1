//! The Responses adapter over the pipeline: native pass-through or translation, decided once
//! per request from the target's `responses` capability; replica affinity for
//! `previous_response_id` and `GET /v1/responses/{id}`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use plans::topology::ModelState;
use serde_json::Value;

use crate::gateway::core::error::{ApiError, Dialect};
use crate::gateway::core::forward::{self, EventTransform, IdSink, StreamEdit};
use crate::gateway::core::pipeline::{self, Checked, Envelope, OutputCap, RouteInfo, Upstream};
use crate::gateway::core::request_metrics::Tokens;
use crate::gateway::core::response_index::{Replica, ResponseIndex};
use crate::gateway::core::routing;
use crate::gateway::core::state::AppState;
use crate::gateway::core::target::Target;
use crate::gateway::dialects::chat::body::{chat_body, edit_body};
use crate::gateway::dialects::chat::translate::Translate;
use crate::gateway::dialects::responses::native::{NativeFix, ResponseFix};
use crate::gateway::dialects::responses::request;
use crate::gateway::dialects::responses::response;
use crate::gateway::dialects::responses::stream::StreamTranslator;
use crate::gateway::transport::sse::{self, SseParser};

const CREATE: RouteInfo = RouteInfo { name: "responses", dialect: Dialect::Responses };
const INPUT_TOKENS: RouteInfo = RouteInfo { name: "responses_input_tokens", dialect: Dialect::OpenAi };
const RETRIEVE: RouteInfo = RouteInfo { name: "responses_retrieve", dialect: Dialect::OpenAi };

pub async fn create(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let timeline = state.timelines.start(CREATE.name);
    let outcome = async {
        let checked = pipeline::check(&state, &headers, body, CREATE, timeline.clone()).await?;
        match checked.envelope.previous_response_id.clone() {
            Some(previous) => {
                let (name, started) = (checked.model.clone(), checked.started);
                let answered = match remembered_target(&state, &previous, Admit::Yes) {
                    Ok(target) => {
                        checked.timeline.placed(None);
                        create_adapter(state.clone(), target, checked).await
                    }
                    Err(error) => Err(error),
                };
                if let Err(error) = &answered {
                    pipeline::count_failure(&state, &name, started, error);
                }
                answered
            }
            None => pipeline::dispatch(state, checked, create_adapter).await,
        }
    };
    let response = outcome.await.unwrap_or_else(|e| pipeline::rejected_on(e, CREATE, &timeline));
    pipeline::identified(response, &timeline)
}

pub async fn input_tokens(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    pipeline::run(state, headers, body, INPUT_TOKENS, |state, target, checked| async move {
        if !pipeline::capabilities(&state, &target).responses {
            return Err(ApiError::Unsupported(format!(
                "the engine serving {} cannot count Responses input tokens (harness {} has no native /v1/responses)",
                target.model, target.harness
            )));
        }
        let body = edit_body(&checked.body, &checked.model, &target.model, None, false)?;
        let upstream = Upstream::post("/v1/responses/input_tokens", body, false, StreamEdit::None, true);
        pipeline::forward(&state, target, &checked, upstream).await
    })
    .await
}

pub async fn retrieve(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    by_id(state, headers, reqwest::Method::GET, format!("/v1/responses/{id}"), id).await
}

pub async fn cancel(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    by_id(state, headers, reqwest::Method::POST, format!("/v1/responses/{id}/cancel"), id).await
}

/// A call about a stored response, sent to the replica that made it.
async fn by_id(
    state: AppState,
    headers: HeaderMap,
    method: reqwest::Method,
    path: String,
    id: String,
) -> Response {
    let timeline = state.timelines.start(RETRIEVE.name);
    let outcome = async {
        let grant = state.keys.admit(&state.fleet(), &headers, crate::control::poller::now_unix_ms())?;
        timeline.admitted(grant.label());
        let target = remembered_target(&state, &id, Admit::No).map_err(|_| {
            ApiError::NotFound(format!(
                "no response with id {id:?} is known (only stored, native responses are)"
            ))
        })?;
        let checked = Checked {
            body: Bytes::new(),
            envelope: Envelope::empty(),
            model: target.model.clone(),
            started: timeline.started(),
            forward_headers: HeaderMap::new(),
            route: RETRIEVE,
            admitted: None,
            grant,
            cost: 0,
            timeline: timeline.clone(),
        };
        checked.timeline.model(&checked.model);
        checked.timeline.placed(None);
        let mut upstream = Upstream::post(path, Bytes::new(), false, StreamEdit::None, true);
        upstream.method = method;
        pipeline::forward(&state, target, &checked, upstream).await
    };
    let response = outcome.await.unwrap_or_else(|e| pipeline::rejected_on(e, RETRIEVE, &timeline));
    pipeline::identified(response, &timeline)
}

/// Whether a call about a stored response is admitted by the scheduler like a generation.
enum Admit {
    /// A generation (`previous_response_id`): it counts against its copy, so no swap evicts the
    /// copy under it, and a copy chosen for eviction refuses it.
    Yes,
    /// A retrieval or a cancel: quick, and a cancel must reach a copy that is draining.
    No,
}

/// The replica that produced response `id`, if this gateway remembers it and it still serves
/// the model.
fn remembered_target(state: &AppState, id: &str, admit: Admit) -> Result<Target, ApiError> {
    let replica = state.response_index.find(id).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "previous response {id:?} is not known to this gateway (it remembers stored responses of native engines for {} h); \
             send the whole conversation in input instead",
            ResponseIndex::MAX_AGE.as_secs() / 3600
        ))
    })?;
    let target = match admit {
        Admit::Yes => routing::resolve_on(state, &replica.model, &replica.neuron)?,
        Admit::No => serving(state, &replica),
    };
    target.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "previous response {id:?} was made by {} on neuron {}, which no longer serves it; send the whole conversation in input instead",
            replica.model, replica.neuron
        ))
    })
}

/// `replica` as a target outside the scheduler, if its neuron reports the model loaded.
fn serving(state: &AppState, replica: &Replica) -> Option<Target> {
    let observed = state.observed();
    let neuron = observed.topology.neurons.iter().find(|n| n.name == replica.neuron && n.reachable)?;
    let model = neuron.model(&replica.model).filter(|m| m.status == ModelState::Loaded)?;
    Some(Target {
        model: replica.model.clone(),
        neuron: observed.clients.get(&replica.neuron)?.clone(),
        harness: model.harness.clone(),
        permit: None,
        pinned: true,
    })
}

async fn create_adapter(state: AppState, target: Target, checked: Checked) -> Result<Response, ApiError> {
    let cap =
        pipeline::output_cap(&state, &target.model).map(|cap| OutputCap::new(cap, &["max_output_tokens"]));
    if pipeline::capabilities(&state, &target).responses {
        return native(state, target, checked, cap).await;
    }
    if checked.envelope.previous_response_id.is_some() {
        return Err(ApiError::BadRequest(format!(
            "previous_response_id needs an engine that stores responses; the engine serving {} does not (send the whole conversation with store: false)",
            target.model
        )));
    }
    translated(state, target, checked, cap).await
}

async fn native(
    state: AppState,
    target: Target,
    checked: Checked,
    cap: Option<OutputCap>,
) -> Result<Response, ApiError> {
    let stream = checked.envelope.stream;
    let body = edit_body(&checked.body, &checked.model, &target.model, cap, false)?;
    let remember: Option<IdSink> = (checked.envelope.store != Some(false)).then(|| {
        let index = state.response_index.clone();
        let replica = Replica { neuron: target.neuron.name.clone(), model: target.model.clone() };
        Box::new(move |id: &str| index.remember(id, replica)) as IdSink
    });
    let fix = response_fix(&checked, &target.model, cap);
    if stream {
        let fix = NativeStream { parser: SseParser::new(), fix: NativeFix::new(fix), remember, usage: None };
        let upstream =
            Upstream::post("/v1/responses", body, true, StreamEdit::Transform(Box::new(fix)), true);
        return pipeline::forward(&state, target, &checked, upstream).await;
    }
    let mut upstream = Upstream::post("/v1/responses", body, false, StreamEdit::None, true);
    upstream.on_response_id = remember;
    let mut response =
        pipeline::read_json(pipeline::forward(&state, target, &checked, upstream).await?).await?;
    if let Some(object) = response.as_object_mut() {
        fix.apply(object);
    }
    Ok(axum::Json(response).into_response())
}

/// What a native answer to `checked` gets where the engine leaves it out; the client's own
/// `max_output_tokens` marks a cut answer only where it, not the fleet's `cap`, bounds it.
fn response_fix(checked: &Checked, model: &str, cap: Option<OutputCap>) -> ResponseFix {
    let asked = checked.envelope.max_output_tokens.as_ref();
    let binds = cap.is_some_and(|cap| cap.binds(asked));
    let limit = asked.and_then(Value::as_u64).filter(|_| !binds);
    let created_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    ResponseFix::from_body(&checked.body, model, created_at, limit)
}

/// Pass-through of a native Responses stream: fixes the engine's known deviations, notes the
/// response id (for `previous_response_id`) and the usage.
struct NativeStream {
    parser: SseParser,
    fix: NativeFix,
    remember: Option<IdSink>,
    usage: Option<Tokens>,
}

impl NativeStream {
    fn event(&mut self, name: &str, data: &str, out: &mut BytesMut) {
        if self.remember.is_some() && name == "response.created" {
            let id = serde_json::from_str::<Value>(data).ok().and_then(|event| {
                event.get("response").and_then(|r| r.get("id")).and_then(Value::as_str).map(str::to_owned)
            });
            if let (Some(id), Some(remember)) = (id, self.remember.take()) {
                remember(&id);
            }
        }
        if forward::has_usage(data.as_bytes()) {
            forward::record_usage(data.as_bytes(), &mut self.usage);
        }
        let fixed = self.fix.event(data);
        sse::write_event(out, name, fixed.as_deref().unwrap_or(data));
    }
}

impl EventTransform for NativeStream {
    fn chunk(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let mut parser = std::mem::take(&mut self.parser);
        let _ = parser.feed(chunk, |event| {
            self.event(event.event, event.data, out);
            Ok::<(), ()>(())
        });
        self.parser = parser;
    }

    fn finish(&mut self, out: &mut BytesMut) {
        let mut parser = std::mem::take(&mut self.parser);
        let _ = parser.finish(|event| {
            self.event(event.event, event.data, out);
            Ok::<(), ()>(())
        });
    }

    fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        out.extend_from_slice(error.sse_event(Dialect::Responses).as_bytes());
    }

    fn usage(&self) -> Option<Tokens> {
        self.usage
    }
}

async fn translated(
    state: AppState,
    target: Target,
    checked: Checked,
    cap: Option<OutputCap>,
) -> Result<Response, ApiError> {
    let stream = checked.envelope.stream;
    let cap_binds = cap.is_some_and(|cap| cap.binds(checked.envelope.max_output_tokens.as_ref()));
    let request: Value = serde_json::from_slice(&checked.body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let request::Translated { chat, names } = request::request_to_chat(&request)?;
    let body = chat_body(chat, &target.model, cap.map(|cap| cap.cap))?;
    let created_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let requested = checked.model.clone();
    let skeleton_of = move |id: &str| response::skeleton(&request, id, &requested, created_at);
    let edit = if stream {
        let fallback = format!("cortex{created_at}");
        let translator =
            StreamTranslator::new(skeleton_of(""), names.clone(), &fallback).cap_binds(cap_binds);
        StreamEdit::Transform(Box::new(Translate::new(translator)))
    } else {
        StreamEdit::None
    };
    let upstream = Upstream::post("/v1/chat/completions", body, stream, edit, false);
    let answer = pipeline::forward(&state, target, &checked, upstream).await?;
    if stream {
        return Ok(answer);
    }
    let chat = pipeline::read_json(answer).await?;
    let response = response::chat_to_response(&chat, skeleton_of, &names, cap_binds)?;
    Ok(axum::Json(response).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_a_translated_stream_is_reported() {
        let skeleton = response::skeleton(&serde_json::json!({}), "", "m", 0);
        let names = request::ToolNames::default();
        let mut translate = Translate::new(StreamTranslator::new(skeleton, names, "x"));
        let mut out = BytesMut::new();
        translate.chunk(b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n", &mut out);
        assert_eq!(translate.usage(), Some(Tokens { prompt: 3, completion: 4, cached: 2 }));
    }
}
