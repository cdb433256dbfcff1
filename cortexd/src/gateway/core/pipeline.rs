//! The dialect-neutral request pipeline: authorise, read the body (bounded), parse the envelope
//! (`model`, `stream`), route (ready replica, or wait for a cold load, with SSE keep-alives for a
//! waiting stream), forward, record metrics and render errors in the route's dialect.
//!
//! Each dialect is a thin adapter (`dialects::openai` for Chat/Completions/Embeddings,
//! `dialects::anthropic` for Messages, `dialects::responses` for OpenAI Responses): a function that, given the target the
//! pipeline resolved, decides once from the target's harness capabilities whether the request
//! passes through natively or is translated, and describes the upstream call as an [`Upstream`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cortex_listener::BodyFailure;
use futures_util::Stream;
use plans::wire::HarnessInfo;
use serde_json::{Map, Value};

use crate::control::poller::now_unix_ms;
use crate::gateway::core::admission::Admitted;
use crate::gateway::core::affinity;
use crate::gateway::core::error::{ApiError, Dialect};
use crate::gateway::core::forward::{self, Exchange, StreamEdit};
use crate::gateway::core::keys::Grant;
use crate::gateway::core::request_metrics::{self, InFlightGuard};
use crate::gateway::core::routing::{self, Queued, Resolution};
use crate::gateway::core::scheduler::machine::Tag;
use crate::gateway::core::state::AppState;
use crate::gateway::core::target::Target;
use crate::gateway::core::timeline::{CopySeen, LoadSeen, REQUEST_ID_HEADER, Recording};

/// The part of a request body the gateway reads; the rest is forwarded untouched.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Envelope {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Responses: the response this one continues (routes to the replica that made it).
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Responses: `false` asks the engine not to keep the response.
    #[serde(default)]
    pub store: Option<bool>,
    /// Messages: the client's output limit (any JSON: judging it is the engine's business).
    #[serde(default)]
    pub max_tokens: Option<Value>,
    /// Chat Completions' newer output limit.
    #[serde(default)]
    pub max_completion_tokens: Option<Value>,
    /// Responses' output limit.
    #[serde(default)]
    pub max_output_tokens: Option<Value>,
    /// Affinity routing (`core/affinity`): the session ids a body names and the digests of
    /// its stable prefix, computed as it is parsed; [`Envelope::session`] is their key.
    #[serde(default)]
    metadata: Option<affinity::Metadata>,
    #[serde(default)]
    prompt_cache_key: Option<affinity::SessionId>,
    #[serde(default)]
    system: Option<affinity::Digest>,
    #[serde(default)]
    instructions: Option<affinity::Digest>,
    #[serde(default)]
    tools: Option<affinity::Digest>,
    #[serde(default)]
    messages: Option<affinity::FirstTurn>,
    #[serde(default)]
    input: Option<affinity::FirstTurn>,
    #[serde(skip)]
    pub session: Option<affinity::Key>,
}

impl Envelope {
    /// An envelope with nothing in it (requests without a body).
    pub fn empty() -> Self {
        Envelope::default()
    }

    /// The request's session key (its headers and what its body names).
    fn session_key(&self, headers: &HeaderMap) -> Option<affinity::Key> {
        let prefix = [
            self.system.map(|d| d.0),
            self.instructions.map(|d| d.0),
            self.tools.map(|d| d.0),
            self.messages.map(|t| t.0),
            self.input.map(|t| t.0),
        ];
        affinity::key(headers, self.metadata.as_ref(), self.prompt_cache_key.as_ref(), &prefix)
    }

    /// The least output limit the request sets, in any of the fields the dialects use.
    fn output_limit(&self) -> Option<u64> {
        [&self.max_tokens, &self.max_completion_tokens, &self.max_output_tokens]
            .into_iter()
            .filter_map(|limit| limit.as_ref().and_then(Value::as_u64))
            .min()
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Which route a request came in on: its metrics label and its error dialect.
#[derive(Clone, Copy, Debug)]
pub struct RouteInfo {
    pub name: &'static str,
    pub dialect: Dialect,
}

/// A request that passed the common checks: authorised, within the size limit, valid JSON
/// with a model name.
pub struct Checked {
    pub body: Bytes,
    pub envelope: Envelope,
    pub model: String,
    pub started: Instant,
    /// Client headers the engine may need (Anthropic version and betas).
    pub forward_headers: HeaderMap,
    pub route: RouteInfo,
    /// Holds the request's place under `max_in_flight` (shared with the response body).
    pub admitted: Option<Arc<Admitted>>,
    /// The caller's passage: its key, in flight and with its tokens reserved until the
    /// response body settles them (shared with the response body).
    pub grant: Arc<Grant>,
    /// The tokens the request may cost (its output limit and prompt estimate): its weight in
    /// its model's queue.
    pub cost: u64,
    /// The request's timeline, stamped at each stage (shared with the response body).
    pub timeline: Recording,
}

impl Checked {
    /// The request's place in its model's queue: its caller's priority and key, its cost.
    fn queue_tag(&self) -> Tag {
        let (priority, key) = (self.grant.priority().0, Arc::from(self.grant.label()));
        Tag { priority, key, cost: self.cost, session: self.envelope.session }
    }
}

/// Client request headers forwarded to the engine on native pass-through.
const FORWARDED_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta"];

/// Authorise, read (bounded) and parse the envelope, stamping `timeline` as it goes.
pub async fn check(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    route: RouteInfo,
    timeline: Recording,
) -> Result<Checked, ApiError> {
    let started = timeline.started();
    let fleet = state.fleet();
    // The caller's key and its limits, from the head: a refused key costs no body read.
    let grant = state.keys.admit(&fleet, headers, now_unix_ms())?;
    // Shed before reading the body: an overload must not become buffered memory. The listener
    // sends `100 Continue` only now, when the body is first read.
    let admitted = state.admission.admit()?;
    timeline.admitted(grant.label());
    let limit = state.limits.max_body_bytes;
    // A declared length over the limit is refused from the head, its body never read.
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(ApiError::TooLarge { limit_bytes: limit });
    }
    let body = axum::body::to_bytes(body, limit).await.map_err(|error| unreadable(&error, limit))?;
    let mut envelope: Envelope = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON for this route: {e}")))?;
    envelope.session = envelope.session_key(headers);
    let model = envelope
        .model
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::BadRequest("\"model\" is required".into()))?;
    timeline.model(&model);
    let spec = fleet.model(&model);
    grant.scope(&model, spec)?;
    let output = reservation(route, &envelope, spec);
    let prompt = prompt_estimate(body.len());
    if let Some(output) = output {
        grant.reserve(output, prompt, now_unix_ms())?;
    }
    let cost = output.unwrap_or(0).saturating_add(prompt);
    let mut forward_headers = HeaderMap::new();
    for name in FORWARDED_HEADERS {
        if let Some(value) = headers.get(*name) {
            forward_headers.insert(*name, value.clone());
        }
    }
    Ok(Checked {
        body,
        envelope,
        model,
        started,
        forward_headers,
        route,
        admitted: Some(admitted),
        grant,
        cost,
        timeline,
    })
}

/// What a request whose output is not limited otherwise is assumed to generate, for its
/// reservation (docs/gateway.md, "Budgets and their bound").
const DEFAULT_OUTPUT_RESERVATION: u64 = 4_096;

/// The output tokens a request on `route` reserves against its key's budgets: its own limit,
/// clamped by the model's `max_output_tokens` (which the adapters enforce) and context window;
/// without a limit, the model's cap, else its window, else [`DEFAULT_OUTPUT_RESERVATION`].
/// `None` for routes that generate nothing (token counting).
fn reservation(
    route: RouteInfo,
    envelope: &Envelope,
    model: Option<&plans::fleet::ModelSpec>,
) -> Option<u64> {
    match route.name {
        "count_tokens" | "responses_input_tokens" => None,
        "embeddings" => Some(0),
        _ => {
            let cap = model.and_then(|m| m.max_output_tokens);
            let window = model.and_then(|m| m.profile.ctx_size).map(u64::from);
            let limit = match (envelope.output_limit(), cap) {
                (Some(asked), Some(cap)) => asked.min(cap),
                (asked, cap) => asked.or(cap).or(window).unwrap_or(DEFAULT_OUTPUT_RESERVATION),
            };
            Some(window.map_or(limit, |window| limit.min(window)))
        }
    }
}

/// A prompt's tokens estimated from its body: four bytes a token, the usual rule for text (a
/// JSON body's keys and quotes make it an overestimate for short prompts). Only charged for a
/// request whose engine never reported its usage.
pub fn prompt_estimate(body_bytes: usize) -> u64 {
    u64::try_from(body_bytes.div_ceil(4)).unwrap_or(u64::MAX)
}

/// Why a request body could not be read whole: over the limit (413), too slow (408), or not
/// framed as it says (400; also a client that closed its connection mid-body, which reads no
/// answer).
fn unreadable(error: &axum::Error, limit: usize) -> ApiError {
    match cortex_listener::BodyFailure::find(error) {
        Some(BodyFailure::TimedOut(timed_out)) => ApiError::RequestTimeout(timed_out.to_string()),
        Some(BodyFailure::Malformed(reason)) => {
            ApiError::BadRequest(format!("the request body cannot be read: {reason}"))
        }
        None => ApiError::TooLarge { limit_bytes: limit },
    }
}

/// Run the whole pipeline for one request; `adapter` builds and sends the upstream call once
/// the target is known.
pub async fn run<F, Fut>(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    route: RouteInfo,
    adapter: F,
) -> Response
where
    F: FnOnce(AppState, Target, Checked) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let mut pending = Unanswered { route: Some(route.name) };
    let timeline = state.timelines.start(route.name);
    let outcome = async {
        let checked = check(&state, &headers, body, route, timeline.clone()).await?;
        dispatch(state, checked, adapter).await
    };
    let response = outcome.await.unwrap_or_else(|e| rejected_on(e, route, &timeline));
    pending.route = None;
    identified(response, &timeline)
}

/// The answer with its request's id (`x-request-id`); its status noted in the timeline when
/// nothing more precise was.
pub fn identified(mut response: Response, timeline: &Recording) -> Response {
    timeline.responded(response.status().as_u16());
    response.headers_mut().insert(REQUEST_ID_HEADER, timeline.id().header());
    response
}

/// [`rejected`], with the refusal noted in the request's timeline.
pub fn rejected_on(error: ApiError, route: RouteInfo, timeline: &Recording) -> Response {
    timeline.failed(error.status().as_u16(), &error.to_string());
    rejected(error, route.name, route.dialect)
}

/// A request whose client left before its answer began (the listener drops the request's
/// future then), counted on drop in `cortex_requests_total{status="client_closed"}` with empty
/// model and neuron labels. A stream that breaks off later is counted where the proxy records
/// it.
struct Unanswered {
    /// The route's metric label; `None` once the request was answered.
    route: Option<&'static str>,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(route) = self.route {
            metrics::counter!("cortex_requests_total", "model" => "", "neuron" => "", "route" => route, "status" => "client_closed")
                .increment(1);
        }
    }
}

/// Route a checked request and hand it to `adapter` (after a cold load if need be). A request
/// that fails on the fleet's side is counted in its model's traffic window (see [`count_failure`]).
pub async fn dispatch<F, Fut>(state: AppState, checked: Checked, adapter: F) -> Result<Response, ApiError>
where
    F: FnOnce(AppState, Target, Checked) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let (name, started) = (checked.model.clone(), checked.started);
    let result = route_and_call(state.clone(), checked, adapter).await;
    if let Err(error) = &result {
        count_failure(&state, &name, started, error);
    }
    result
}

async fn route_and_call<F, Fut>(state: AppState, checked: Checked, adapter: F) -> Result<Response, ApiError>
where
    F: FnOnce(AppState, Target, Checked) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let stream = checked.envelope.stream;
    let resolution = routing::resolve_as(&state, &checked.model, checked.queue_tag())?;
    match resolution {
        Resolution::Ready(target) => {
            checked.timeline.placed(None);
            adapter(state, target, checked).await
        }
        Resolution::Waiting(ticket) if !stream => {
            checked.timeline.queued();
            let target = wait(&state, ticket, &checked).await?;
            adapter(state, target, checked).await
        }
        Resolution::Waiting(ticket) => {
            checked.timeline.queued();
            Ok(waiting_stream(state, ticket, checked, adapter))
        }
    }
}

/// Add a request that failed on the fleet's side to its model's traffic window (the fleet
/// page's errors chart): refused by its queue (full, timed out, unplaceable, load failed), an
/// engine's error status, a neuron that did not answer (502, 503, 504, 500). Client mistakes
/// (4xx) and capability gaps (501) are not failures of the model, and a name the fleet does
/// not know gets no chart (clients must not fill the window with made-up names). Streams that
/// break off midway are counted where the proxy records them.
pub fn count_failure(state: &AppState, name: &str, started: Instant, error: &ApiError) {
    let fleet_side = matches!(
        error,
        ApiError::Overloaded { .. }
            | ApiError::Upstream(_)
            | ApiError::UpstreamTimeout(_)
            | ApiError::Internal(_)
    );
    if !fleet_side {
        return;
    }
    let id = match state.fleet().model(name) {
        Some(spec) => spec.id.clone(),
        None if state.observed().topology.neurons.iter().any(|n| n.model(name).is_some()) => name.to_owned(),
        None => return,
    };
    state.traffic.add(&id, started, None, None, true);
}

/// The error response for a request that did not get a response from an engine, counted in
/// `cortex_requests_total` with its status (model and neuron labels empty: they may be unknown,
/// and arbitrary names from clients must not create series).
pub fn rejected(error: ApiError, route: &'static str, dialect: Dialect) -> Response {
    let status = error.status().as_u16().to_string();
    metrics::counter!("cortex_requests_total", "model" => "", "neuron" => "", "route" => route, "status" => status, "key" => "")
        .increment(1);
    error.in_dialect(dialect).into_response()
}

/// Wait for a cold load, recording how long the request queued (and, in its timeline, the
/// load it waited behind).
pub async fn wait(state: &AppState, ticket: Queued, checked: &Checked) -> Result<Target, ApiError> {
    let result = ticket.wait().await;
    metrics::histogram!("cortex_queue_wait_seconds", "model" => checked.model.clone())
        .record(checked.started.elapsed().as_secs_f64());
    if let Ok(target) = &result {
        checked.timeline.placed(waited_behind(state, target, checked.started));
    }
    result
}

/// The load of `target`'s copy that ended after `since` (the request waited behind it).
fn waited_behind(state: &AppState, target: &Target, since: Instant) -> Option<LoadSeen> {
    let load = state.scheduler.last_load(&target.model, &target.neuron.name)?;
    load.ready.is_some_and(|ready| ready >= since).then_some(load)
}

/// What the engine serving `target` can do natively (nothing known: translate everything).
pub fn capabilities(state: &AppState, target: &Target) -> HarnessInfo {
    state.observed().harness(&target.neuron.name, &target.harness).cloned().unwrap_or_default()
}

/// The fleet's context window for `model`, when it sets `ctx_size`.
pub fn ctx_size(state: &AppState, model: &str) -> Option<u64> {
    state.fleet().model(model).and_then(|m| m.profile.ctx_size).map(u64::from)
}

/// The fleet's output cap for `model`, when it sets `max_output_tokens`.
pub fn output_cap(state: &AppState, model: &str) -> Option<u64> {
    state.fleet().model(model).and_then(|m| m.max_output_tokens)
}

/// The fleet's output cap and the request fields that carry an output limit (the first one is
/// set when the request has none).
#[derive(Clone, Copy, Debug)]
pub struct OutputCap {
    pub cap: u64,
    pub fields: &'static [&'static str],
}

impl OutputCap {
    pub fn new(cap: u64, fields: &'static [&'static str]) -> Self {
        OutputCap { cap, fields }
    }

    /// Whether the cap is below the client's own limit (or the client set none).
    pub fn binds(&self, asked: Option<&Value>) -> bool {
        asked.and_then(Value::as_u64).is_none_or(|asked| asked > self.cap)
    }

    /// Clamp every output-limit field of `object` to the cap; set the first when none is there.
    pub fn apply(&self, object: &mut Map<String, Value>) {
        let mut present = false;
        for field in self.fields {
            if let Some(value) = object.get_mut(*field).filter(|v| !v.is_null()) {
                present = true;
                let asked = value.as_u64().unwrap_or(u64::MAX);
                *value = asked.min(self.cap).into();
            }
        }
        if !present && let Some(first) = self.fields.first() {
            object.insert((*first).to_owned(), self.cap.into());
        }
    }
}

/// One call to the engine, as an adapter describes it.
pub struct Upstream {
    pub method: reqwest::Method,
    pub path: String,
    pub body: Bytes,
    pub stream: bool,
    pub edit: StreamEdit,
    /// Also send the client's forwarded headers (native pass-through only).
    pub native: bool,
    /// Called with the engine's response id once it is seen (Responses routing).
    pub on_response_id: Option<forward::IdSink>,
}

impl Upstream {
    pub fn post(path: impl Into<String>, body: Bytes, stream: bool, edit: StreamEdit, native: bool) -> Self {
        Upstream {
            method: reqwest::Method::POST,
            path: path.into(),
            body,
            stream,
            edit,
            native,
            on_response_id: None,
        }
    }
}

/// Send `upstream` to the target and stream the answer back; an engine's refusal becomes an
/// error in the route's dialect (context overflows in the form agents act on).
pub async fn forward(
    state: &AppState,
    target: Target,
    checked: &Checked,
    upstream: Upstream,
) -> Result<Response, ApiError> {
    let headers = if upstream.native { checked.forward_headers.clone() } else { HeaderMap::new() };
    // Through the router: a request that raced an unload is queued again, not failed.
    let call =
        routing::Resend { method: upstream.method, path: &upstream.path, body: upstream.body, headers };
    checked.timeline.forwarded(CopySeen {
        model: &target.model,
        neuron: &target.neuron.name,
        address: &target.neuron.endpoint,
        harness: &target.harness,
        path: &upstream.path,
        native: upstream.native,
    });
    let (target, response) = routing::send(state, target, call).await?;
    checked.timeline.answered(response.status().as_u16(), &target.neuron.name);
    if !response.status().is_success() {
        return Err(forward::upstream_error(response, ctx_size(state, &target.model)).await);
    }
    let handles = request_metrics::handles(
        &target.model,
        &target.neuron.name,
        checked.route.name,
        checked.grant.label(),
    );
    let guard = InFlightGuard::enter(handles);
    let exchange = Exchange {
        dialect: checked.route.dialect,
        target,
        started: checked.started,
        guard,
        on_response_id: upstream.on_response_id,
        admitted: checked.admitted.clone(),
        traffic: state.traffic.clone(),
        grant: checked.grant.clone(),
        timeline: checked.timeline.clone(),
    };
    Ok(forward::respond(response, exchange, upstream.stream, upstream.edit))
}

/// Read a whole (non-streaming) response body, up to `limit` bytes.
async fn read_bounded(response: Response, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(response.into_body(), limit).await.map_err(|e| {
        ApiError::Upstream(format!("the engine's answer broke off or exceeded {limit} bytes: {e}"))
    })
}

/// The largest non-streaming engine answer a translating adapter reads into memory.
const MAX_TRANSLATED_BODY: usize = 16 * 1024 * 1024;

/// Read a whole (non-streaming) engine answer as JSON, bounded.
pub async fn read_json(response: Response) -> Result<serde_json::Value, ApiError> {
    let bytes = read_bounded(response, MAX_TRANSLATED_BODY).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Upstream(format!("the engine answered invalid JSON: {e}")))
}

/// A streaming response for a request that must wait for a cold load: SSE comment
/// keep-alives go out while it waits, so clients do not time out, then the upstream stream
/// follows (or an error event in the route's dialect). One body stream, no relay task: once
/// the engine's answer is there its chunks go straight to the client.
fn waiting_stream<F, Fut>(state: AppState, ticket: Queued, checked: Checked, adapter: F) -> Response
where
    F: FnOnce(AppState, Target, Checked) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let every = state.limits.keepalive_interval;
    let (dialect, route) = (checked.route.dialect, checked.route.name);
    let answer = Box::pin(async move {
        let (model, started, timeline) = (checked.model.clone(), checked.started, checked.timeline.clone());
        let answered = match wait(&state, ticket, &checked).await {
            Ok(target) => adapter(state.clone(), target, checked).await,
            Err(error) => Err(error),
        };
        if let Err(error) = &answered {
            count_failure(&state, &model, started, error);
            timeline.failed(error.status().as_u16(), &error.to_string());
        }
        answered
    });
    let body = WaitingBody {
        phase: Phase::Waiting(answer),
        ticks: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        dialect,
        route,
    };
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send>>;

enum Phase {
    Waiting(Answer),
    Streaming(axum::body::BodyDataStream),
    Done,
}

struct WaitingBody {
    phase: Phase,
    ticks: tokio::time::Interval,
    dialect: Dialect,
    /// The route's metrics label.
    route: &'static str,
}

const LOADING_COMMENT: &[u8] = b": cortex: loading model\n\n";

impl Stream for WaitingBody {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Streaming(body) => {
                    let next = Pin::new(body).poll_next(cx);
                    if matches!(next, Poll::Ready(None)) {
                        this.phase = Phase::Done;
                    }
                    return next;
                }
                Phase::Waiting(answer) => match answer.as_mut().poll(cx) {
                    Poll::Ready(Ok(response)) => {
                        this.phase = Phase::Streaming(response.into_body().into_data_stream());
                    }
                    Poll::Ready(Err(error)) => {
                        this.phase = Phase::Done;
                        // The 200 is out: count the failure here, as `rejected` does otherwise.
                        let status = error.status().as_u16().to_string();
                        metrics::counter!("cortex_requests_total", "model" => "", "neuron" => "", "route" => this.route, "status" => status, "key" => "")
                            .increment(1);
                        return Poll::Ready(Some(Ok(Bytes::from(error.sse_event(this.dialect)))));
                    }
                    Poll::Pending => {
                        return match this.ticks.poll_tick(cx) {
                            Poll::Ready(_) => Poll::Ready(Some(Ok(Bytes::from_static(LOADING_COMMENT)))),
                            Poll::Pending => Poll::Pending,
                        };
                    }
                },
            }
        }
    }
}
