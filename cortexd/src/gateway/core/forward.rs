//! Forwarding to a neuron's inference routes: the response streams through as it arrives,
//! event by event, without re-serialising what the engine sent. Streams are watched on the way
//! for the first token and the usage chunk (for metrics), and the usage chunk cortex asked for
//! on the client's behalf is removed again.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Frame;
use memchr::memmem::Finder;
use plans::wire::MODEL_HEADER;

use crate::control::neuron_client::error_message;
use crate::gateway::core::admission::Admitted;
use crate::gateway::core::error::{ApiError, Dialect};
use crate::gateway::core::request_metrics::{InFlightGuard, Outcome, Tokens};
use crate::gateway::core::target::Target;
use crate::gateway::core::timeline::{self, Recording};
use crate::gateway::core::traffic::Traffic;
use crate::gateway::transport::upstream::{self, InferenceClient};

/// What to do with a streamed response on its way to the client.
pub enum StreamEdit {
    /// Forward every event unchanged.
    None,
    /// Drop the usage-only chunk (`"choices":[]`): cortex asked for it, the client did not.
    StripUsageChunk,
    /// Forward whole events as they are unless `fix` rewrites them (native pass-through with
    /// known engine deviations): the common event is only scanned, never parsed or copied.
    FixRaw(Box<dyn RawFix>),
    /// Hand each complete event to a transformer (translation, stream fix-ups).
    Transform(Box<dyn EventTransform>),
}

/// Fixes whole raw SSE events on their way through.
pub trait RawFix: Send {
    /// `events` holds one or more complete events; `None` forwards them unchanged.
    fn fix(&mut self, events: &[u8]) -> Option<Bytes>;
    /// Also drop the usage-only chunk, as [`StreamEdit::StripUsageChunk`] does.
    fn strips_usage_chunk(&self) -> bool {
        false
    }
}

impl StreamEdit {
    fn strips_usage_chunk(&self) -> bool {
        match self {
            StreamEdit::StripUsageChunk => true,
            StreamEdit::FixRaw(fix) => fix.strips_usage_chunk(),
            StreamEdit::None | StreamEdit::Transform(_) => false,
        }
    }
}

/// Rewrites a stream on its way to the client (the Anthropic routes): gets every upstream
/// chunk as it arrives and writes what the client should get.
pub trait EventTransform: Send {
    /// Handle one upstream chunk (any size; events may span chunks).
    fn chunk(&mut self, chunk: &[u8], out: &mut BytesMut);
    /// The upstream ended cleanly; append any closing events.
    fn finish(&mut self, out: &mut BytesMut);
    /// The upstream failed midway; append an error event the client will raise.
    fn fail(&mut self, error: &ApiError, out: &mut BytesMut);
    /// The tokens seen so far, for metrics.
    fn usage(&self) -> Option<Tokens>;
}

/// Receives the engine's response id once the stream (or body) shows it.
pub type IdSink = Box<dyn FnOnce(&str) + Send>;

/// Labels and context of one forwarded request, for metrics.
pub struct Exchange {
    pub dialect: Dialect,
    pub target: Target,
    pub started: Instant,
    pub guard: InFlightGuard,
    pub on_response_id: Option<IdSink>,
    /// The request's place under the gateway's in-flight bound, held until the body ends.
    #[allow(dead_code, reason = "held, never read: dropping it gives the place back")]
    pub admitted: Option<Arc<Admitted>>,
    /// The window the request is added to when it ends.
    pub traffic: Arc<Traffic>,
    /// The caller's key: the body settles its reservation with the engine's usage at the end.
    pub grant: Arc<crate::gateway::core::keys::Grant>,
    /// The request's timeline: the body stamps its first byte, its end and its usage.
    pub timeline: Recording,
}

/// One request to a neuron's inference routes.
pub struct Call<'a> {
    pub method: reqwest::Method,
    pub path: &'a str,
    pub body: Bytes,
    /// Extra headers for the engine (Anthropic version and betas on native pass-through).
    pub headers: axum::http::HeaderMap,
    /// The fleet id, named in a header for requests without a body.
    pub model: &'a str,
}

/// Send `call` to the target's neuron and return the upstream response, or an error if it
/// could not be reached.
pub async fn send(
    client: &InferenceClient,
    target: &Target,
    call: Call<'_>,
) -> Result<upstream::Response, ApiError> {
    let neuron = &target.neuron.name;
    let (host, path_and_query) = target.neuron.http_address(call.path).map_err(|e| {
        ApiError::Upstream(format!("cannot address neuron {neuron} at {}: {e}", target.neuron.endpoint))
    })?;
    let mut headers = call.headers;
    if call.body.is_empty() {
        headers.insert(
            MODEL_HEADER,
            HeaderValue::from_str(call.model).map_err(|e| ApiError::BadRequest(e.to_string()))?,
        );
    } else {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(authorization) = target.neuron.authorization() {
        headers.insert(header::AUTHORIZATION, authorization.clone());
    }
    let request = upstream::Request {
        method: call.method,
        host: &host,
        target: &path_and_query,
        headers,
        body: call.body,
    };
    client.send(request).await.map_err(|error| {
        let message = format!("neuron {neuron} did not answer: {error}");
        if error.timed_out { ApiError::UpstreamTimeout(message) } else { ApiError::Upstream(message) }
    })
}

/// The most of an engine's error body cortex reads.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Map a non-success upstream answer to the client's error, keeping the engine's message and,
/// for client mistakes (4xx), its status. A prompt over the context window becomes
/// [`ApiError::ContextOverflow`] (`ctx_size`: the fleet's window, when it sets one).
pub async fn upstream_error(response: upstream::Response, ctx_size: Option<u64>) -> ApiError {
    let status = response.status();
    let body = error_body(response).await;
    upstream_error_from(status, &body, ctx_size)
}

/// The body of a refusal, bounded.
pub async fn error_body(response: upstream::Response) -> Bytes {
    read_limited(response, ERROR_BODY_LIMIT).await
}

/// [`upstream_error`] for a refusal whose body was already read.
pub fn upstream_error_from(status: StatusCode, body: &[u8], ctx_size: Option<u64>) -> ApiError {
    let message = error_message(body);
    if let Some(overflow) = crate::gateway::core::overflow::detect(status.as_u16(), body, &message, ctx_size)
    {
        return overflow;
    }
    match status.as_u16() {
        404 => ApiError::Upstream(format!("the engine does not serve this: {message}")),
        400..=499 if status != StatusCode::TOO_MANY_REQUESTS => ApiError::BadRequest(message),
        429 | 503 => ApiError::Overloaded { message, retry_after_s: 1 },
        504 => ApiError::UpstreamTimeout(message),
        _ => ApiError::Upstream(format!("the engine failed: {message}")),
    }
}

/// Up to `limit` bytes of a response body (an engine's error page is never read whole).
async fn read_limited(response: upstream::Response, limit: usize) -> Bytes {
    let mut body = BytesMut::new();
    let mut incoming = response.into_body();
    while let Some(Ok(frame)) = incoming.frame().await {
        let Ok(chunk) = frame.into_data() else { continue };
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body.freeze()
}

/// Turn a successful upstream response into the client's response, streaming its body.
pub fn respond(upstream: upstream::Response, exchange: Exchange, stream: bool, edit: StreamEdit) -> Response {
    let status = upstream.status();
    let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
    let watcher = Watcher {
        upstream: upstream.into_body(),
        buffer: BytesMut::new(),
        stream,
        edit,
        exchange,
        first_event_at: None,
        usage: None,
        events: 0,
        copy: BytesMut::new(),
        finished: false,
        failed: false,
    };
    let mut response = Response::new(Body::new(watcher));
    *response.status_mut() = status;
    let content_type = if stream {
        HeaderValue::from_static("text/event-stream")
    } else {
        content_type.unwrap_or_else(|| HeaderValue::from_static("application/json"))
    };
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    if stream {
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

// Pass-through streams are split at event boundaries by hand (`event_end`) rather than through
// `crate::gateway::transport::sse::SseParser`: forwarding needs the raw bytes of each event, untouched, and the
// parser yields decoded fields. Transforms (the Anthropic routes) use the parser.

/// The response body: forwards upstream bytes, event by event for streams, and records the
/// request's metrics when it ends (completed, failed or dropped by the client).
struct Watcher {
    upstream: upstream::Body,
    /// Bytes of an incomplete SSE event carried to the next read.
    buffer: BytesMut,
    stream: bool,
    edit: StreamEdit,
    exchange: Exchange,
    first_event_at: Option<Instant>,
    /// The engine's usage.
    usage: Option<Tokens>,
    /// Streamed events seen with content (about one token each): what a stream cut short
    /// before its usage is charged (with its prompt's estimate).
    events: u64,
    /// A copy of a non-streaming body (bounded), to read its usage at the end.
    copy: BytesMut,
    finished: bool,
    failed: bool,
}

/// Non-streaming bodies larger than this are not inspected for usage.
const COPY_LIMIT: usize = 4 * 1024 * 1024;

impl Watcher {
    /// Handle one upstream chunk; returns what to send to the client now (maybe nothing).
    fn chunk(&mut self, chunk: Bytes) -> Bytes {
        if !self.stream {
            if self.copy.len() + chunk.len() <= COPY_LIMIT {
                self.copy.extend_from_slice(&chunk);
            }
            self.first_event_at.get_or_insert_with(Instant::now);
            return chunk;
        }
        // The common case: the chunk is exactly whole events and nothing needs rewriting.
        // Forward the very same bytes (no copy), only looking into them; each event is
        // inspected once, and only a chunk that loses an event is copied.
        if self.buffer.is_empty() && ends_event(&chunk) && !matches!(self.edit, StreamEdit::Transform(_)) {
            let events = kept_events(chunk, |event| self.inspect(event));
            return self.fix_raw(events);
        }
        let mut out = BytesMut::new();
        if let StreamEdit::Transform(transform) = &mut self.edit {
            self.first_event_at.get_or_insert_with(Instant::now);
            // The transform parses the events; a chunk is counted as one (engines send a
            // token's event per chunk), for a stream cut short before its usage.
            self.events += 1;
            transform.chunk(&chunk, &mut out);
            return out.freeze();
        }
        self.buffer.extend_from_slice(&chunk);
        while let Some(end) = event_end(&self.buffer) {
            let event = self.buffer.split_to(end).freeze();
            if self.inspect(&event) {
                out.extend_from_slice(&event);
            }
        }
        self.fix_raw(out.freeze())
    }

    /// Whole events after the raw fix, if the stream has one.
    fn fix_raw(&mut self, events: Bytes) -> Bytes {
        match &mut self.edit {
            StreamEdit::FixRaw(fix) if !events.is_empty() => fix.fix(&events).unwrap_or(events),
            _ => events,
        }
    }

    /// Look at one complete event: note the first token and the usage; returns whether to
    /// forward it.
    fn inspect(&mut self, event: &[u8]) -> bool {
        if self.exchange.on_response_id.is_some() && contains(event, &CREATED) {
            if let (Some(sink), Some(id)) = (self.exchange.on_response_id.take(), created_id(event)) {
                sink(&id);
            }
        }
        // One scan for the common event (no usage); the usage-only test only when it has usage.
        let has_usage = contains(event, &USAGE);
        let usage_only = has_usage && contains(event, &NO_CHOICES);
        if !usage_only {
            self.first_event_at.get_or_insert_with(Instant::now);
            self.events += 1;
        }
        if has_usage {
            record_usage(event, &mut self.usage);
        }
        !(usage_only && self.edit.strips_usage_chunk())
    }

    fn end(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if let StreamEdit::Transform(transform) = &mut self.edit {
            transform.finish(&mut out);
            self.usage = transform.usage().or(self.usage);
        } else if self.stream && !self.buffer.is_empty() {
            // The engine closed right after its last event without the blank line: the event
            // still goes out, terminated, rather than being lost.
            let mut last = std::mem::take(&mut self.buffer);
            last.extend_from_slice(b"\n\n");
            let last = last.freeze();
            if self.inspect(&last) {
                let last = self.fix_raw(last);
                out.extend_from_slice(&last);
            }
        }
        if !self.stream {
            record_usage(&self.copy, &mut self.usage);
            if let Some(sink) = self.exchange.on_response_id.take()
                && let Some(id) = response_id(&self.copy)
            {
                sink(&id);
            }
        }
        out.freeze()
    }

    fn fail(&mut self, error: &std::io::Error) -> Bytes {
        self.failed = true;
        let error = ApiError::Upstream(format!("the engine's stream broke off: {error}"));
        tracing::warn!(model = %self.exchange.target.model, neuron = %self.exchange.target.neuron.name, %error, "stream failed");
        let mut out = BytesMut::new();
        match &mut self.edit {
            StreamEdit::Transform(transform) => transform.fail(&error, &mut out),
            _ => out.extend_from_slice(error.sse_event(self.exchange.dialect).as_bytes()),
        }
        out.freeze()
    }
}

impl HttpBody for Watcher {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            let next = match Pin::new(&mut self.upstream).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            };
            let out = match next {
                // Trailers: engines send none, and the client's body is plain.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => self.chunk(chunk),
                    Err(_) => continue,
                },
                Some(Err(error)) if self.stream => {
                    self.finished = true;
                    self.fail(&error)
                }
                Some(Err(error)) => {
                    // Headers are sent: all we can do for a plain body is to cut it, which the
                    // client sees as a broken response rather than a silently short one.
                    self.finished = true;
                    self.failed = true;
                    return Poll::Ready(Some(Err(std::io::Error::other(error))));
                }
                None => {
                    self.finished = true;
                    self.end()
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let exchange = &self.exchange;
        exchange.traffic.add(
            &exchange.target.model,
            exchange.started,
            self.first_event_at,
            self.usage,
            self.failed,
        );
        let outcome = if self.failed {
            Outcome::UpstreamError
        } else if self.finished {
            Outcome::Ok
        } else {
            Outcome::ClientClosed
        };
        let handles = exchange.guard.handles();
        handles.requests(outcome).increment(1);
        let elapsed = exchange.started.elapsed();
        handles.duration.record(elapsed.as_secs_f64());
        if let Some(first) = self.first_event_at {
            let to_first = first.duration_since(exchange.started);
            handles.time_to_first_token.record(to_first.as_secs_f64());
            let generating = elapsed.saturating_sub(to_first);
            if let Some(Tokens { completion, .. }) = self.usage
                && completion > 0
                && self.stream
                && !generating.is_zero()
            {
                handles.tokens_per_second.record(completion as f64 / generating.as_secs_f64());
            }
        }
        if let Some(tokens) = self.usage {
            handles.prompt_tokens.increment(tokens.prompt);
            handles.completion_tokens.increment(tokens.completion);
            handles.cached_prompt_tokens.increment(tokens.cached);
        }
        // A non-streaming body is one event; a stream's are counted as they pass.
        let events = if self.stream { self.events } else { 0 };
        let used = self.usage.map(|tokens| (tokens.prompt, tokens.completion));
        exchange.grant.settle(used, events, crate::control::poller::now_unix_ms());
        let tokens = self.usage.map(|tokens| timeline::Tokens {
            prompt: tokens.prompt,
            cached: Some(tokens.cached),
            completion: tokens.completion,
        });
        exchange.timeline.finished(outcome.label(), self.first_event_at, tokens);
    }
}

/// The JSON object inside a body or an SSE event (from its first `{` to its last `}`).
fn json_of(bytes: &[u8]) -> Option<&[u8]> {
    let start = bytes.iter().position(|&b| b == b'{')?;
    let json = &bytes[start..];
    let end = json.iter().rposition(|&b| b == b'}').map_or(json.len(), |i| i + 1);
    Some(&json[..end])
}

/// The top-level `id` of a (non-streaming) Responses body.
fn response_id(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Top {
        id: Option<String>,
    }
    serde_json::from_slice::<Top>(json_of(bytes)?).ok()?.id
}

/// The `response.id` of a `response.created` event.
fn created_id(event: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Created {
        response: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        id: Option<String>,
    }
    serde_json::from_slice::<Created>(json_of(event)?).ok()?.response?.id
}

/// Read `usage` from a JSON body or an SSE event (OpenAI, Anthropic or Responses names), over
/// what earlier events of the same answer said: a count the event leaves out keeps its value.
/// The prompt is the whole prompt in every dialect (Anthropic's `input_tokens` leaves out the
/// cache reads and writes, which are added back); the cached count is OpenAI's
/// `prompt_tokens_details.cached_tokens`, Responses' `input_tokens_details.cached_tokens`,
/// Anthropic's `cache_read_input_tokens`, or llama.cpp's `timings.cache_n`.
pub fn record_usage(bytes: &[u8], usage: &mut Option<Tokens>) {
    /// Only the fields that may hold usage are read, into typed fields; the rest of the
    /// document (choices, content) is skipped without building a tree: this runs once per
    /// response, on the path every request takes.
    #[derive(serde::Deserialize)]
    struct Top {
        #[serde(default)]
        usage: Option<Counts>,
        #[serde(default)]
        message: Option<Holder>,
        #[serde(default)]
        response: Option<Holder>,
        /// llama.cpp's, beside `usage`: `cache_n` is the cached part of the prompt.
        #[serde(default)]
        timings: Option<Timings>,
    }
    #[derive(serde::Deserialize)]
    struct Timings {
        cache_n: Option<u64>,
    }
    /// Anthropic's `message_start.message` and Responses' `response.completed.response`.
    #[derive(serde::Deserialize)]
    struct Holder {
        #[serde(default)]
        usage: Option<Counts>,
    }
    /// OpenAI's names and Anthropic's (and Responses') for the same counts.
    #[derive(serde::Deserialize)]
    struct Counts {
        prompt_tokens: Option<u64>,
        input_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        output_tokens: Option<u64>,
        cache_read_input_tokens: Option<u64>,
        cache_creation_input_tokens: Option<u64>,
        prompt_tokens_details: Option<Details>,
        input_tokens_details: Option<Details>,
    }
    #[derive(serde::Deserialize)]
    struct Details {
        cached_tokens: Option<u64>,
    }
    let Some(json) = json_of(bytes) else { return };
    let Ok(top) = serde_json::from_slice::<Top>(json) else { return };
    let nested = |holder: Option<Holder>| holder.and_then(|h| h.usage);
    let Some(found) = top.usage.or_else(|| nested(top.message)).or_else(|| nested(top.response)) else {
        return;
    };
    let anthropic = found.cache_read_input_tokens.is_some() || found.cache_creation_input_tokens.is_some();
    let prompt = match found.prompt_tokens {
        Some(prompt) => Some(prompt),
        None if anthropic => Some(
            [found.input_tokens, found.cache_read_input_tokens, found.cache_creation_input_tokens]
                .into_iter()
                .flatten()
                .fold(0, u64::saturating_add),
        ),
        None => found.input_tokens,
    };
    let details = found.prompt_tokens_details.or(found.input_tokens_details);
    let cached = details
        .and_then(|details| details.cached_tokens)
        .or(found.cache_read_input_tokens)
        .or(top.timings.and_then(|timings| timings.cache_n));
    let completion = found.completion_tokens.or(found.output_tokens);
    let old = usage.unwrap_or_default();
    *usage = Some(Tokens {
        prompt: prompt.unwrap_or(old.prompt),
        completion: completion.unwrap_or(old.completion),
        cached: cached.unwrap_or(old.cached),
    });
}

/// Whether `chunk` ends at an event boundary.
fn ends_event(chunk: &[u8]) -> bool {
    chunk.ends_with(b"\n\n") || chunk.ends_with(b"\n\r\n")
}

/// The length of the first complete event in `buffer` (separator included), if any: one
/// SIMD scan for line feeds, each checked for the blank line that follows (`\n\n`, or
/// `\n\r\n` when lines end in CRLF).
fn event_end(buffer: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buffer).find_map(|at| match buffer.get(at + 1..) {
        Some([b'\n', ..]) => Some(at + 2),
        Some([b'\r', b'\n', ..]) => Some(at + 3),
        _ => None,
    })
}

/// Call `f` on each complete event of `chunk`.
fn for_each_event(mut chunk: &[u8], mut f: impl FnMut(&[u8])) {
    while let Some(end) = event_end(chunk) {
        f(&chunk[..end]);
        chunk = &chunk[end..];
    }
}

/// The events of `chunk` (whole events only) that `keep` accepts, each event passed to it once:
/// the very same bytes when it accepts all, a copy of the kept ones otherwise.
fn kept_events(chunk: Bytes, mut keep: impl FnMut(&[u8]) -> bool) -> Bytes {
    let mut kept: Option<BytesMut> = None;
    let mut at = 0;
    for_each_event(&chunk, |event| {
        match (keep(event), &mut kept) {
            (true, Some(kept)) => kept.extend_from_slice(event),
            (false, None) => kept = Some(BytesMut::from(&chunk[..at])),
            _ => {}
        }
        at += event.len();
    });
    kept.map_or(chunk, BytesMut::freeze)
}

/// The needles looked for in every streamed event, each searcher built once.
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static NO_CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":[]"));
static CREATED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"response.created\""));

/// Whether an event or body mentions `"usage"` (the one scan before parsing for it).
pub fn has_usage(bytes: &[u8]) -> bool {
    contains(bytes, &USAGE)
}

fn contains(haystack: &[u8], needle: &Finder<'_>) -> bool {
    needle.find(haystack).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_a_blank_line_in_either_line_ending() {
        assert_eq!(event_end(b"data: a\n\ndata: b\n\n"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\ndata: b"), Some(11));
        assert_eq!(event_end(b"event: x\ndata: a\n\n"), Some(18));
        assert_eq!(event_end(b"data: a\ndata: b\n"), None);
        assert_eq!(event_end(b"data: a\r\n"), None);
        assert_eq!(event_end(b""), None);
        let mut events = Vec::new();
        for_each_event(b"data: 1\n\ndata: 2\r\n\r\ndata: 3", |e| events.push(e.to_vec()));
        assert_eq!(events, [b"data: 1\n\n".to_vec(), b"data: 2\r\n\r\n".to_vec()]);
        assert!(ends_event(b"data: 2\r\n\r\n") && ends_event(b"data: 1\n\n") && !ends_event(b"data: 1\n"));
        assert!(contains(br#"data: {"choices":[],"usage":{}}"#, &USAGE));
        assert!(contains(br#"data: {"choices":[],"usage":{}}"#, &NO_CHOICES));
        assert!(!contains(br#"data: {"choices":[{}]}"#, &NO_CHOICES));
    }

    #[test]
    fn a_chunk_keeps_its_bytes_unless_an_event_is_dropped_and_each_event_is_looked_at_once() {
        let chunk = Bytes::from_static(b"data: 1\n\ndata: {\"choices\":[],\"usage\":{}}\n\ndata: [DONE]\n\n");
        let mut seen = Vec::new();
        let all = kept_events(chunk.clone(), |event| {
            seen.push(event.to_vec());
            true
        });
        assert_eq!(all.as_ptr(), chunk.as_ptr(), "all kept: the same bytes, not a copy");
        assert_eq!(seen.len(), 3);
        let mut looked = 0;
        let kept = kept_events(chunk.clone(), |event| {
            looked += 1;
            !contains(event, &NO_CHOICES)
        });
        assert_eq!((&kept[..], looked), (&b"data: 1\n\ndata: [DONE]\n\n"[..], 3));
        let first_dropped = kept_events(chunk, |event| !event.starts_with(b"data: 1"));
        assert_eq!(&first_dropped[..], &b"data: {\"choices\":[],\"usage\":{}}\n\ndata: [DONE]\n\n"[..]);
        assert!(kept_events(Bytes::from_static(b"data: x\n\n"), |_| false).is_empty());
    }

    #[test]
    fn usage_is_read_in_both_dialects() {
        let tokens = |prompt, completion, cached| Some(Tokens { prompt, completion, cached });
        let mut usage = None;
        record_usage(br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#, &mut usage);
        assert_eq!(usage, tokens(3, 5, 0));
        let mut usage = None;
        record_usage(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n", &mut usage);
        assert_eq!(usage, tokens(7, 1, 0));
        record_usage(br#"data: {"type":"message_delta","usage":{"output_tokens":9}}"#, &mut usage);
        assert_eq!(usage, tokens(7, 9, 0));
        let mut usage = None;
        record_usage(br#"{"message":"not an object","usage":null}"#, &mut usage);
        assert_eq!(usage, None);
        record_usage(br#"data: {"type":"response.completed","response":{"id":"r","usage":{"input_tokens":4,"output_tokens":2,"output_tokens_details":{"reasoning_tokens":0}}}}"#, &mut usage);
        assert_eq!(usage, tokens(4, 2, 0), "Responses' usage, with the details it carries");
    }

    #[test]
    fn the_cached_part_of_the_prompt_is_read_in_every_dialect() {
        let tokens = |prompt, completion, cached| Some(Tokens { prompt, completion, cached });
        let read = |bytes: &[u8]| {
            let mut usage = None;
            record_usage(bytes, &mut usage);
            usage
        };
        // Chat Completions, as llama-server sends it (a chunk's usage, or a whole answer).
        let chat = br#"data: {"choices":[],"usage":{"completion_tokens":4,"prompt_tokens":60,"total_tokens":64,"prompt_tokens_details":{"cached_tokens":48}},"timings":{"cache_n":48,"prompt_n":12}}"#;
        assert_eq!(read(chat), tokens(60, 4, 48));
        // A build without prompt details: the cached count from its timings.
        let old = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"completion_tokens":4,"prompt_tokens":60},"timings":{"cache_n":40,"prompt_n":20}}"#;
        assert_eq!(read(old), tokens(60, 4, 40));
        // Responses.
        let responses = br#"data: {"type":"response.completed","response":{"usage":{"input_tokens":60,"output_tokens":4,"input_tokens_details":{"cached_tokens":48}}}}"#;
        assert_eq!(read(responses), tokens(60, 4, 48));
        // Anthropic: `input_tokens` is the uncached part; the prompt counts the cache reads too.
        let mut usage = None;
        record_usage(br#"data: {"type":"message_start","message":{"usage":{"cache_read_input_tokens":48,"input_tokens":12,"output_tokens":0}}}"#, &mut usage);
        assert_eq!(usage, tokens(60, 0, 48));
        record_usage(br#"data: {"type":"message_delta","usage":{"output_tokens":4}}"#, &mut usage);
        assert_eq!(usage, tokens(60, 4, 48), "the closing event keeps the counts it leaves out");
        let message = br#"{"type":"message","usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":48,"output_tokens":4}}"#;
        assert_eq!(read(message), tokens(60, 4, 48));
    }
}
