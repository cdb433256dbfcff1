//! The mock engine: a minimal, deterministic OpenAI Chat Completions server (streaming and not)
//! with a fixed time to first token and inter-token delay, so that a benchmark measures only
//! what sits between the client and it. It also answers the few neuron API routes cortex polls
//! (`/health`, `/discovery`, `/models`, `/models/wait`), so cortex can use it as a neuron whose
//! models are "loaded outside cortex" and forward to it with no neuron process in between.
//!
//! Timing comes from the model name, `m-<ttft_ms>-<itl_ms>` (e.g. `m-20-10`), so every path
//! (direct, cortex, LiteLLM) gets the same behaviour from the same request. `max_tokens` sets
//! the number of tokens (default 16). A non-streaming answer comes after
//! `ttft + (tokens - 1) × itl` (at once for `m-0-0`: no timer); stream events are scheduled on
//! absolute times (no drift). Each streamed token's text is `@<µs>`, the wall-clock microsecond
//! it was written, and the first one's `@<µs>:<µs>` adds when the request arrived: per-chunk
//! delivery latency that survives any proxy or translation, free of the mock's timer jitter.
//!
//! It speaks HTTP/1.1 itself (httparse for request heads; one task per connection writes each
//! event straight to its socket as one chunk), because it shares the machine's cores with the
//! proxy measured: a general server's per-event machinery would be CPU the proxy's tail waits
//! for. Request bodies need a content-length; connections are kept alive.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const DEFAULT_TOKENS: u64 = 16;
const MAX_TOKENS: u64 = 100_000;
/// The longest request (head and body) accepted.
const MAX_REQUEST: usize = 1 << 20;

struct Mock {
    name: String,
    models: Vec<String>,
    next_id: AtomicU64,
}

/// Serve the mock on 127.0.0.1:`port` until killed. `models` are the names listed as loaded.
pub async fn run(port: u16, name: String, models: Vec<String>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let mock = Arc::new(Mock { name, models, next_id: AtomicU64::new(1) });
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let _ = socket.set_nodelay(true);
        tokio::spawn(connection(socket, mock.clone()));
    }
}

/// `m-<ttft_ms>-<itl_ms>` → (ttft, itl).
pub fn timing(model: &str) -> Option<(Duration, Duration)> {
    let mut parts = model.strip_prefix("m-")?.split('-');
    let ttft = parts.next()?.parse().ok()?;
    let itl = parts.next()?.parse().ok()?;
    Some((Duration::from_millis(ttft), Duration::from_millis(itl)))
}

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

/// A request head as parsed: its length, and its body's.
struct Head {
    len: usize,
    body_len: usize,
    method: String,
    target: String,
    close: bool,
}

/// One request as read off a connection.
struct Incoming {
    method: String,
    /// The path, query included.
    target: String,
    body: Vec<u8>,
    close: bool,
}

/// Serve one connection's requests, one after another, until it closes or a write fails.
async fn connection(mut socket: TcpStream, mock: Arc<Mock>) {
    let mut buf = Vec::with_capacity(4096);
    while let Ok(Some(request)) = read_request(&mut socket, &mut buf).await {
        let served = match (request.method.as_str(), request.target.split('?').next()) {
            ("POST", Some("/v1/chat/completions")) => chat(&mut socket, &mock, &request.body).await,
            ("GET", Some(path)) => write_json(&mut socket, 200, &get(&mock, path, &request.target)).await,
            _ => write_json(&mut socket, 404, &error_body("no such route on the mock")).await,
        };
        if served.is_err() || request.close {
            return;
        }
    }
}

/// The next request on `socket` (`buf` keeps what was read past it); `None` once the peer
/// closes between requests.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Incoming>> {
    loop {
        if let Some(head) = parse_request(buf)?
            && buf.len() >= head.len + head.body_len
        {
            let body = buf.drain(..head.len + head.body_len).skip(head.len).collect();
            return Ok(Some(Incoming { method: head.method, target: head.target, body, close: head.close }));
        }
        if buf.len() > MAX_REQUEST {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "request too large"));
        }
        buf.reserve(4096);
        if socket.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// The request's head once `buf` holds all of it.
fn parse_request(buf: &[u8]) -> std::io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidData, message);
    let len = match request.parse(buf).map_err(|e| invalid(e.to_string()))? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let (mut length, mut close) = (0, request.version == Some(0));
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| invalid(format!("bad content-length {value:?}")))?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid("the mock takes bodies with a content-length only".into()));
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if length > MAX_REQUEST {
        return Err(invalid("request body too large".into()));
    }
    let method = request.method.unwrap_or("").to_owned();
    let target = request.path.unwrap_or("/").to_owned();
    Ok(Some(Head { len, body_len: length, method, target, close }))
}

/// The GET routes: the neuron API cortex polls and `/v1/models`.
fn get(mock: &Mock, path: &str, target: &str) -> Value {
    let loaded = |id: &str| {
        json!({"id": id, "harness": "mock", "status": "loaded", "devices": [], "vram_mb": 0, "ram_mb": 0,
               "last_used_unix_ms": 0, "in_flight": 0})
    };
    match path {
        "/livez" => json!("ok"),
        "/health" => json!({"boot_id": "mock-boot", "generation": 1, "devices": [],
                            "ram_total_mb": 1024, "ram_free_mb": 1024}),
        "/discovery" => {
            json!({"name": mock.name, "boot_id": "mock-boot", "version": "mock", "simulated": true,
                               "devices": [], "ram_total_mb": 1024,
                               "harnesses": [{"name": "mock", "kind": "sim", "anthropic_messages": false,
                                              "count_tokens": false, "embeddings": false}]})
        }
        "/models" => json!({"boot_id": "mock-boot", "generation": 1,
                            "models": mock.models.iter().map(|m| loaded(m)).collect::<Vec<_>>()}),
        "/models/wait" => loaded(query_value(target, "model").unwrap_or("")),
        "/v1/models" => json!({"object": "list", "data": mock.models.iter()
            .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "mock"}))
            .collect::<Vec<_>>()}),
        _ => error_body("no such route on the mock"),
    }
}

/// The value of `key` in `target`'s query (names and values here need no decoding).
fn query_value<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

fn error_body(message: &str) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error"}})
}

async fn write_json(socket: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let reason = if status == 200 { "OK" } else { "Error" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(format!("{head}{body}").as_bytes()).await
}

#[derive(serde::Deserialize)]
struct Request {
    model: String,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stream_options: Option<StreamOptions>,
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What one chat completion is to produce.
struct Plan {
    id: u64,
    model: String,
    started: Instant,
    arrived_us: u128,
    ttft: Duration,
    itl: Duration,
    count: u64,
    finish: &'static str,
    include_usage: bool,
}

impl Plan {
    /// When token `i` (0-based) is due.
    fn due(&self, i: u64) -> Instant {
        self.started + self.ttft + self.itl * u32::try_from(i).unwrap_or(u32::MAX)
    }

    fn usage(&self) -> String {
        format!(
            r#"{{"prompt_tokens":8,"completion_tokens":{},"total_tokens":{}}}"#,
            self.count,
            self.count + 8
        )
    }
}

async fn chat(socket: &mut TcpStream, mock: &Mock, body: &[u8]) -> std::io::Result<()> {
    let (started, arrived_us) = (Instant::now(), now_us());
    let request: Request = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return write_json(socket, 400, &error_body(&e.to_string())).await,
    };
    let Some((ttft, itl)) = timing(&request.model) else {
        return write_json(socket, 404, &error_body("unknown model: the mock serves m-<ttft_ms>-<itl_ms>"))
            .await;
    };
    let (count, finish) = match request.max_tokens.or(request.max_completion_tokens) {
        Some(n) => (n.clamp(1, MAX_TOKENS), "length"),
        None => (DEFAULT_TOKENS, "stop"),
    };
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    let id = mock.next_id.fetch_add(1, Ordering::Relaxed);
    let plan =
        Plan { id, model: request.model, started, arrived_us, ttft, itl, count, finish, include_usage };
    if request.stream { stream(socket, &plan).await } else { complete(socket, &plan).await }
}

/// A non-streaming answer, at the last token's time.
async fn complete(socket: &mut TcpStream, plan: &Plan) -> std::io::Result<()> {
    if !plan.ttft.is_zero() || !plan.itl.is_zero() {
        tokio::time::sleep_until(plan.due(plan.count - 1)).await;
    }
    let text = "tok ".repeat(usize::try_from(plan.count).unwrap_or(0));
    let answer = json!({"id": format!("mock-{}", plan.id), "object": "chat.completion", "created": 0,
        "model": plan.model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text.trim_end()},
        "finish_reason": plan.finish}],
        "usage": {"prompt_tokens": 8, "completion_tokens": plan.count, "total_tokens": plan.count + 8}});
    write_json(socket, 200, &answer).await
}

/// A stream: `count` tokens on their times, then the finish chunk, the usage chunk if asked,
/// and `[DONE]`, all at the last token's time; each event one chunk of one write.
async fn stream(socket: &mut TcpStream, plan: &Plan) -> std::io::Result<()> {
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    socket.write_all(head).await?;
    let start = format!(
        r#"data: {{"id":"mock-{}","object":"chat.completion.chunk","created":0,"model":"{}""#,
        plan.id, plan.model
    );
    let events = plan.count + 2 + u64::from(plan.include_usage);
    let mut out = Vec::with_capacity(512);
    for i in 0..events {
        tokio::time::sleep_until(plan.due(i.min(plan.count - 1))).await;
        let event = if i < plan.count {
            // The text is the write time (and for the first token, the request's arrival), so
            // it survives any proxy and translation: `@<write µs>[:<arrival µs>] `.
            let (role, arrival) = if i == 0 {
                (r#""role":"assistant","#, format!(":{}", plan.arrived_us))
            } else {
                ("", String::new())
            };
            format!(
                "{start},\"choices\":[{{\"index\":0,\"delta\":{{{role}\"content\":\"@{}{arrival} \"}},\"finish_reason\":null}}]}}\n\n",
                now_us()
            )
        } else if i == plan.count {
            format!(
                "{start},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{}\"}}]}}\n\n",
                plan.finish
            )
        } else if plan.include_usage && i == plan.count + 1 {
            format!("{start},\"choices\":[],\"usage\":{}}}\n\n", plan.usage())
        } else {
            "data: [DONE]\n\n".to_owned()
        };
        out.clear();
        write!(out, "{:x}\r\n", event.len())?;
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(b"\r\n");
        if i + 1 == events {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        socket.write_all(&out).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_comes_from_the_model_name() {
        assert_eq!(timing("m-20-10"), Some((Duration::from_millis(20), Duration::from_millis(10))));
        assert_eq!(timing("gpt-4"), None);
    }

    #[test]
    fn requests_are_read_with_their_bodies_and_queries() {
        let wire = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
        let head = parse_request(wire).expect("valid").expect("whole head");
        assert_eq!((head.len, head.method.as_str(), head.body_len), (wire.len() - 2, "POST", 2));
        assert!(!head.close);
        assert!(parse_request(b"GET / HTTP/1.1\r\nhost").expect("valid so far").is_none());
        let chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse_request(chunked).is_err(), "a chunked body is refused, not misread");
        assert_eq!(query_value("/models/wait?model=m-0-0&timeout_ms=5", "model"), Some("m-0-0"));
        assert_eq!(query_value("/models/wait?timeout_ms=5", "model"), None);
    }

    #[tokio::test]
    async fn streams_arrive_whole_and_the_connection_serves_the_next_request() {
        let port = crate::procs::free_port().expect("a port");
        tokio::spawn(run(port, "mock".into(), vec!["m-0-0".into()]));
        let client = crate::stream_client::Streamer::new(Duration::from_secs(10));
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let body = bytes::Bytes::from_static(br#"{"model":"m-1-1","max_tokens":3,"stream":true}"#);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut response = loop {
            match client.post(&url, &body).await {
                Ok(response) => break response,
                Err(_) if std::time::Instant::now() < deadline => tokio::task::yield_now().await,
                Err(e) => panic!("the mock never answered: {e}"),
            }
        };
        assert_eq!(response.status, 200);
        let mut text = Vec::new();
        while response.next(&mut text).await.expect("a whole stream") {}
        let text = String::from_utf8(text).expect("utf-8");
        assert_eq!(text.matches("\"content\":\"@").count(), 3, "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let again = client.post(&url.replace("chat/completions", "models"), &body).await.expect("answered");
        assert_eq!(again.status, 404, "a POST to a GET route");
    }
}
