//! The HTTP/1.1 client for inference requests to neurons: keep-alive connections from a pool,
//! the request written in one go, and a response whose body reads the connection itself.
//!
//! The control plane keeps reqwest (discovery, lifecycle: a few calls a second). The gateway
//! forwards every event of every stream: with a general client, each stream has a connection
//! task that reads the socket and hands every chunk to the task writing to the client, two
//! wake-ups per event. Here the client's task polls the engine's socket directly
//! ([`body::Body`]), one wake-up per event (docs/benchmarks.md). What this client speaks is
//! what the neurons answer: HTTP/1.1 over TCP, no upgrades, no `Expect`.

mod body;
mod pool;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, header};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub use body::Body;
use pool::{Pool, Return};

use crate::gateway::transport::http1::{Framing, Spans, chunked_last, content_length, has_token};

/// An engine's answer as it arrives: status, headers, and the body still on the connection.
pub type Response = axum::http::Response<Body>;

/// How long connecting to a neuron may take before the request fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a response head (status line and headers) this client reads.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers in a response head.
const MAX_HEADERS: usize = 64;

/// One request: where, what, and the body (sent with its length).
pub struct Request<'a> {
    pub method: Method,
    /// `host:port`, as connected to and sent in `Host`.
    pub host: &'a str,
    /// Path and query, already percent-encoded.
    pub target: &'a str,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A pooled HTTP/1.1 client for the neurons' inference routes. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct InferenceClient {
    pool: Arc<Pool>,
    timeouts: Timeouts,
}

/// How long a neuron may keep an exchange waiting. Both are generous: a non-streaming answer's
/// head comes only once the whole answer is generated, and a stream can be silent for as long
/// as a long prompt takes to process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the request written to the answer's head.
    pub head: Duration,
    /// The longest gap between two reads of the answer's body.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { head: Duration::from_secs(600), read: Duration::from_secs(600) }
    }
}

/// Why a request got no answer; the message names every cause (`connection refused`, not
/// only `connect`).
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    /// The neuron did not begin its answer within the head timeout.
    pub timed_out: bool,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for SendError {
    fn from(message: String) -> Self {
        SendError { message, timed_out: false }
    }
}

/// Why an exchange failed, and whether it may be retried on a fresh connection.
struct Failure {
    error: SendError,
    /// The connection failed before any byte of an answer: on a reused connection this is an
    /// engine that closed it while idle, which a fresh connection does not meet.
    unanswered: bool,
}

impl Failure {
    fn new(message: String, unanswered: bool) -> Self {
        Failure { error: message.into(), unanswered }
    }
}

impl InferenceClient {
    pub fn new(timeouts: Timeouts) -> Self {
        InferenceClient { pool: Arc::default(), timeouts }
    }

    /// Send `request`.
    pub async fn send(&self, request: Request<'_>) -> Result<Response, SendError> {
        let message = encode(&request)?;
        if let Some(io) = self.pool.checkout(request.host) {
            match self.exchange(io, &request, &message).await {
                Ok(response) => return Ok(response),
                Err(failure) if failure.unanswered => {
                    tracing::debug!(
                        host = request.host,
                        error = failure.error.message,
                        "a kept-alive connection was closed; reconnecting"
                    );
                }
                Err(failure) => return Err(failure.error),
            }
        }
        let io = connect(request.host).await?;
        self.exchange(io, &request, &message).await.map_err(|failure| failure.error)
    }

    /// Write the request on `io` and read the answer's head, within the head timeout.
    async fn exchange(
        &self,
        io: TcpStream,
        request: &Request<'_>,
        message: &[u8],
    ) -> Result<Response, Failure> {
        let limit = self.timeouts.head;
        tokio::time::timeout(limit, self.exchange_untimed(io, request, message)).await.unwrap_or_else(|_| {
            let message = format!("no answer within {limit:?}");
            Err(Failure { error: SendError { message, timed_out: true }, unanswered: false })
        })
    }

    async fn exchange_untimed(
        &self,
        mut io: TcpStream,
        request: &Request<'_>,
        message: &[u8],
    ) -> Result<Response, Failure> {
        let failed = |error: std::io::Error, unanswered| Failure::new(causes(&error), unanswered);
        io.write_all(message).await.map_err(|e| failed(e, true))?;
        let mut buffer = BytesMut::with_capacity(8 * 1024);
        loop {
            if let Some(head) = parse_head(&mut buffer).map_err(|message| Failure::new(message, false))? {
                if head.status.is_informational() {
                    continue;
                }
                return Ok(self.respond(io, buffer, head, request));
            }
            if buffer.len() >= MAX_HEAD {
                return Err(Failure::new(format!("the answer's head is over {MAX_HEAD} bytes"), false));
            }
            buffer.reserve(8 * 1024);
            match tokio::io::AsyncReadExt::read_buf(&mut io, &mut buffer).await {
                Ok(0) => {
                    let unanswered = buffer.is_empty();
                    return Err(Failure::new("the connection closed before an answer".into(), unanswered));
                }
                Ok(_) => {}
                Err(error) => return Err(failed(error, buffer.is_empty())),
            }
        }
    }

    /// The response for a parsed head, its body framed and bound to return the connection.
    fn respond(&self, io: TcpStream, buffer: BytesMut, head: Head, request: &Request<'_>) -> Response {
        let framing = if request.method == Method::HEAD
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else {
            head.framing
        };
        let reuse =
            head.keep_alive.then(|| Return { pool: self.pool.clone(), host: request.host.to_owned() });
        let mut response = Response::new(Body::new(io, buffer, framing, reuse, self.timeouts.read));
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        response
    }
}

/// Connect to `host` (`name:port`), Nagle off: small events leave as they are written.
async fn connect(host: &str) -> Result<TcpStream, String> {
    let io = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(host)).await {
        Ok(connected) => connected.map_err(|e| format!("cannot connect to {host}: {}", causes(&e)))?,
        Err(_) => {
            return Err(format!("cannot connect to {host}: no answer in {}s", CONNECT_TIMEOUT.as_secs()));
        }
    };
    if let Err(error) = io.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    Ok(io)
}

/// The request line, headers and body, as written on the wire.
fn encode(request: &Request<'_>) -> Result<Bytes, String> {
    let valid = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
    if !valid(request.target) || !valid(request.host) {
        return Err(format!(
            "cannot send {:?} to {:?}: not a valid request target",
            request.target, request.host
        ));
    }
    let mut out = BytesMut::with_capacity(256 + request.body.len());
    for part in [request.method.as_str(), " ", request.target, " HTTP/1.1\r\nhost: ", request.host, "\r\n"] {
        out.put_slice(part.as_bytes());
    }
    for (name, value) in &request.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let bodiless = matches!(request.method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS);
    if !(bodiless && request.body.is_empty()) {
        out.put_slice(format!("content-length: {}\r\n", request.body.len()).as_bytes());
    }
    out.put_slice(b"\r\n");
    out.put_slice(&request.body);
    Ok(out.freeze())
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    /// The connection may carry another request once this body has ended.
    keep_alive: bool,
}

/// The response head at the start of `buffer`, taken from it once it is all there; its
/// header values are views of the head's bytes, not copies.
fn parse_head(buffer: &mut BytesMut) -> Result<Option<Head>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let length = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("the engine's answer is not HTTP/1.1: {error}")),
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| format!("the engine answered status {code}"))?;
    let http10 = parsed.version == Some(0);
    let spans = Spans::of(buffer, parsed.headers);
    let head = buffer.split_to(length).freeze();
    let headers =
        spans.header_map(&head).map_err(|name| format!("the engine sent an invalid header {name:?}"))?;
    let content_length =
        content_length(&headers).map_err(|reason| format!("the engine's answer is malformed: {reason}"))?;
    let codings = chunked_last(&headers);
    if http10 && codings.is_some() {
        return Err("the engine's answer is malformed: transfer-encoding on HTTP/1.0".into());
    }
    let connection =
        |token| headers.get_all(header::CONNECTION).iter().any(|v| has_token(v.as_bytes(), token));
    // Both framings, or a coding list that does not end in chunked (read until the close, RFC
    // 9112 §6.3): the body is read as the RFC says, and the connection not reused.
    let ambiguous = codings.is_some() && content_length.is_some();
    let close = connection("close") || (http10 && !connection("keep-alive")) || ambiguous;
    let framing = match (codings, content_length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) | (None, None) => Framing::Close,
        (None, Some(length)) => Framing::Length(length),
    };
    Ok(Some(Head { status, headers, framing, keep_alive: !close }))
}

/// An error and its sources, joined with `: `.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
