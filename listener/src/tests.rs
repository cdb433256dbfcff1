//! The listener against raw sockets, as a hostile or broken client meets it: the answer decided
//! from the head before the body is read, every timeout, the connection bound, framing that two
//! hops could read differently, and the drain.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 1024;
const KEY: &str = "authorization: Bearer k\r\n";

/// Short timeouts, so that every test of one ends in well under a second or two.
fn quick() -> Limits {
    Limits {
        max_connections: 64,
        head_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(1200),
        body_read_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(900),
        send_timeout: Duration::from_millis(400),
    }
}

/// Sends a message on drop: tells a test that the router dropped a request's work.
struct Dropped(mpsc::UnboundedSender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// `/echo` answers 401 from the head when the key is missing (its body unread), else the
/// body it read (413 over `MAX_BODY`, 408 or 400 when the body failed); `/stream` is an endless
/// stream and `/pending` never answers, both reporting the drop of their work.
fn app(dropped: mpsc::UnboundedSender<()>) -> Router {
    let pending_drop = dropped.clone();
    Router::new()
        .route("/echo", post(echo))
        .route(
            "/stream",
            get(move || {
                let guard = Dropped(dropped.clone());
                async move {
                    let events = futures_util::stream::unfold(guard, |guard| async move {
                        tokio::task::yield_now().await;
                        Some((Ok::<_, std::io::Error>(Bytes::from_static(&[b'x'; 4096])), guard))
                    });
                    Body::from_stream(events)
                }
            }),
        )
        .route(
            "/pending",
            get(move || {
                let guard = Dropped(pending_drop.clone());
                async move {
                    std::future::pending::<()>().await;
                    drop(guard);
                }
            }),
        )
}

async fn echo(headers: HeaderMap, body: Body) -> (StatusCode, Bytes) {
    if !headers.contains_key("authorization") {
        return (StatusCode::UNAUTHORIZED, Bytes::from_static(b"no key"));
    }
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => (StatusCode::OK, bytes),
        Err(error) => match BodyFailure::find(&error) {
            Some(BodyFailure::TimedOut(timed_out)) => {
                (StatusCode::REQUEST_TIMEOUT, timed_out.to_string().into())
            }
            Some(BodyFailure::Malformed(reason)) => (StatusCode::BAD_REQUEST, reason.into()),
            None => (StatusCode::PAYLOAD_TOO_LARGE, Bytes::from_static(b"too large")),
        },
    }
}

struct Server {
    address: SocketAddr,
    dropped: mpsc::UnboundedReceiver<()>,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<io::Result<()>>,
}

async fn start(limits: Limits) -> Server {
    let (dropped, reports) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("its address");
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(serve(listener, app(dropped), limits, shutdown.clone()));
    Server { address, dropped: reports, shutdown, served }
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.address).await.expect("connect")
}

/// Everything the server sends until it closes the connection (a reset counts as a close).
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 65536];
    loop {
        let read = tokio::time::timeout(DEADLINE, tcp.read(&mut buffer)).await.expect("closed in time");
        match read {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Read until what has arrived contains `needle`.
async fn read_until(tcp: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let mut buffer = [0u8; 65536];
        let read =
            tokio::time::timeout(DEADLINE, tcp.read(&mut buffer)).await.expect("in time").expect("read");
        assert!(read > 0, "closed before {needle:?}: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Send `request` on a fresh connection; all the server answers until it closes.
async fn exchange(server: &Server, request: &[u8]) -> String {
    let mut tcp = connect(server).await;
    tcp.write_all(request).await.expect("send");
    read_to_close(&mut tcp).await
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or(answer)
}

#[tokio::test]
async fn a_request_refused_from_its_head_gets_no_100_continue_and_its_body_is_not_read() {
    let server = start(quick()).await;
    let declared = 32 << 20;
    let mut tcp = connect(&server).await;
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: {declared}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("send");
    let answer = read_to_close(&mut tcp).await;
    assert_eq!(status(&answer), "401", "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");

    // Without `expect`, the client sends its body at once: the answer still comes from the
    // head, and the connection closes long before the body could be sent.
    let mut tcp = connect(&server).await;
    let head = format!("POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: {declared}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("send");
    let (mut reader, mut writer) = tcp.into_split();
    let sender = tokio::spawn(async move {
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while sent < declared && writer.write_all(&piece).await.is_ok() {
            sent += piece.len();
        }
        sent
    });
    let mut seen = Vec::new();
    let read = tokio::time::timeout(DEADLINE, reader.read_to_end(&mut seen)).await.expect("closed in time");
    let answer = String::from_utf8_lossy(&seen);
    assert!(read.is_ok() && status(&answer) == "401", "the client reads its answer, not a reset: {answer}");
    let sent = tokio::time::timeout(DEADLINE, sender).await.expect("the sender stops").expect("sender");
    assert!(sent < declared, "the server closed the connection before the body was sent ({sent} bytes)");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_without_reading_the_rest() {
    let server = start(quick()).await;
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\n{KEY}transfer-encoding: chunked\r\n\r\n800\r\n{}\r\n800\r\n",
        "x".repeat(0x800)
    );
    let mut tcp = connect(&server).await;
    tcp.write_all(chunked.as_bytes()).await.expect("send");
    let answer = read_to_close(&mut tcp).await;
    assert_eq!(status(&answer), "413", "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
}

#[tokio::test]
async fn a_declared_length_never_sent_times_out_with_408() {
    let server = start(quick()).await;
    let started = Instant::now();
    let answer = exchange(
        &server,
        format!("POST /echo HTTP/1.1\r\nhost: t\r\n{KEY}content-length: 1000\r\n\r\nab").as_bytes(),
    )
    .await;
    assert_eq!(status(&answer), "408", "{answer}");
    assert!(answer.contains("no byte of the request body arrived for 300ms"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_trickled_body_times_out_as_a_whole() {
    let server = start(quick()).await;
    let mut tcp = connect(&server).await;
    tcp.write_all(format!("POST /echo HTTP/1.1\r\nhost: t\r\n{KEY}content-length: 1000\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let started = Instant::now();
    // A byte every 100 ms keeps within the gap between reads, never within the whole.
    let mut seen = Vec::new();
    for _ in 0..40 {
        if tcp.write_all(b"x").await.is_err() {
            break;
        }
        let mut buffer = [0u8; 1024];
        if let Ok(Ok(read)) = tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buffer)).await {
            seen.extend_from_slice(&buffer[..read]);
            break;
        }
    }
    seen.extend_from_slice(read_to_close(&mut tcp).await.as_bytes());
    let answer = String::from_utf8_lossy(&seen);
    assert_eq!(status(&answer), "408", "{answer}");
    assert!(answer.contains("did not arrive whole within 900ms"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn slowloris_heads_are_closed_by_the_head_timeout_while_others_are_served() {
    let server = start(quick()).await;
    let started = Instant::now();
    let mut trickling = Vec::new();
    for _ in 0..50 {
        trickling.push(connect(&server).await);
    }
    let mut silent = connect(&server).await;
    let head = b"GET /echo HTTP/1.1\r\nhost: t\r\nx-slow: ";
    let mut closed_at = vec![None; trickling.len()];
    let mut at = 0;
    while closed_at.iter().any(Option::is_none) {
        assert!(started.elapsed() < DEADLINE, "the trickled heads are still open");
        // Meanwhile, another client is served at once.
        let answer = exchange(
            &server,
            format!(
                "POST /echo HTTP/1.1\r\nhost: t\r\n{KEY}connection: close\r\ncontent-length: 2\r\n\r\nok"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status(&answer), "200", "{answer}");
        for (tcp, closed) in trickling.iter_mut().zip(closed_at.iter_mut()) {
            if closed.is_none() && tcp.write_all(&head[at % head.len()..][..1]).await.is_err() {
                *closed = Some(started.elapsed());
            }
            let mut buffer = [0u8; 512];
            if closed.is_none()
                && let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buffer)).await
            {
                *closed = Some(started.elapsed());
            }
        }
        at += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = closed_at.iter().flatten().max().copied().unwrap_or_default();
    assert!(last < Duration::from_secs(2), "closed by the 400 ms head timeout, the last after {last:?}");
    assert_eq!(read_to_close(&mut silent).await, "", "a silent connection is closed without an answer");
}

#[tokio::test]
async fn a_cut_short_head_is_answered_408() {
    let server = start(quick()).await;
    let answer = exchange(&server, b"GET /echo HTTP/1.1\r\nhost: t\r\n").await;
    assert_eq!(status(&answer), "408", "{answer}");
}

#[tokio::test]
async fn idle_and_head_deadlines_are_separate() {
    let server = start(quick()).await;
    let mut tcp = connect(&server).await;
    let request = format!("POST /echo HTTP/1.1\r\nhost: t\r\n{KEY}content-length: 2\r\n\r\nok");
    tcp.write_all(request.as_bytes()).await.expect("send");
    read_until(&mut tcp, "\r\n\r\nok").await;
    // Idle for longer than the head timeout, shorter than the idle one: still served.
    tokio::time::sleep(Duration::from_millis(700)).await;
    tcp.write_all(request.as_bytes()).await.expect("send");
    read_until(&mut tcp, "\r\n\r\nok").await;
    let idle = Instant::now();
    assert_eq!(read_to_close(&mut tcp).await, "", "an idle connection is closed without an answer");
    let waited = idle.elapsed();
    assert!(waited >= Duration::from_millis(1100) && waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_by_the_send_timeout() {
    let mut server = start(quick()).await;
    let mut tcp = connect(&server).await;
    tcp.write_all(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n").await.expect("send");
    let report = tokio::time::timeout(DEADLINE, server.dropped.recv()).await;
    assert!(report.is_ok(), "the stream is dropped once the client has not read for 400 ms");
}

#[tokio::test]
async fn a_client_that_leaves_has_its_work_dropped() {
    let mut server = start(quick()).await;
    for path in ["/pending", "/stream"] {
        let mut tcp = connect(&server).await;
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes()).await.expect("send");
        if path == "/stream" {
            read_until(&mut tcp, "xxxx").await;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(tcp);
        let report = tokio::time::timeout(DEADLINE, server.dropped.recv()).await;
        assert!(report.is_ok(), "{path}: the work is dropped when the client leaves");
    }
}

#[tokio::test]
async fn connections_past_the_bound_are_answered_503_and_closed() {
    let server = start(Limits { max_connections: 2, ..quick() }).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = connect(&server).await;
        tcp.write_all(b"GET /pending HTTP/1.1\r\nhost: t\r\n\r\n").await.expect("send");
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = exchange(&server, b"GET /pending HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status(&answer), "503", "{answer}");
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    drop(held.pop());
    let started = Instant::now();
    loop {
        let answer = exchange(
            &server,
            format!(
                "POST /echo HTTP/1.1\r\nhost: t\r\n{KEY}connection: close\r\ncontent-length: 2\r\n\r\nok"
            )
            .as_bytes(),
        )
        .await;
        if status(&answer) == "200" {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "a freed place is not taken: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Framing that another hop could read differently is refused (400) and the connection closed;
/// what RFC 9112 allows is read as it says.
#[tokio::test]
async fn framing_is_read_as_rfc_9112_says() {
    let server = start(quick()).await;
    let post =
        |headers: &str, body: &str| format!("POST /echo HTTP/1.1\r\nhost: t\r\n{KEY}{headers}\r\n{body}");
    let refused = [
        (
            "two transfer-encoding lines, chunked not last",
            post("transfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n", "2\r\nok\r\n0\r\n\r\n"),
        ),
        ("a signed content-length", post("content-length: +2\r\n", "ok")),
        ("conflicting content-lengths", post("content-length: 2\r\ncontent-length: 3\r\n", "ok")),
        ("a signed chunk size", post("transfer-encoding: chunked\r\n", "+2\r\nok\r\n0\r\n\r\n")),
        ("a chunk size after a space", post("transfer-encoding: chunked\r\n", " 2\r\nok\r\n0\r\n\r\n")),
        ("a bare LF after a chunk size", post("transfer-encoding: chunked\r\n", "2\nok\r\n0\r\n\r\n")),
        (
            "chunk extensions over 16 KiB",
            post("transfer-encoding: chunked\r\n", &format!("2;{}\r\nok\r\n0\r\n\r\n", "e".repeat(20_000))),
        ),
        (
            "trailers over 64 KiB",
            post(
                "transfer-encoding: chunked\r\n",
                &format!("2\r\nok\r\n0\r\nx: {}\r\n\r\n", "t".repeat(70_000)),
            ),
        ),
        (
            "over 100 trailer fields",
            post(
                "transfer-encoding: chunked\r\n",
                &format!("2\r\nok\r\n0\r\n{}\r\n", "x: y\r\n".repeat(101)),
            ),
        ),
        (
            "transfer-encoding on HTTP/1.0",
            format!(
                "POST /echo HTTP/1.0\r\nhost: t\r\n{KEY}transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            ),
        ),
    ];
    for (case, request) in refused {
        let answer =
            exchange(&server, format!("{request}GET /pending HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes()).await;
        assert_eq!(status(&answer), "400", "{case}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.").count(),
            1,
            "{case}: nothing after the 400 is answered: {answer}"
        );
    }
    let accepted = [
        ("leading zeros in a chunk size", post("transfer-encoding: chunked\r\n", "0002\r\nok\r\n0\r\n\r\n")),
        (
            "chunk extensions and trailers within bounds",
            post("transfer-encoding: chunked\r\n", "2;a=b\r\nok\r\n0\r\nx: y\r\n\r\n"),
        ),
    ];
    for (case, request) in accepted {
        let answer =
            exchange(&server, request.replacen("\r\n\r\n", "\r\nconnection: close\r\n\r\n", 1).as_bytes())
                .await;
        assert_eq!(status(&answer), "200", "{case}: {answer}");
        assert!(answer.ends_with("ok"), "{case}: {answer}");
    }
    // A coding before `chunked`, on one line or two, or `chunked` twice: 501 from the head (no
    // route decodes a coding), the body unread, and the connection closed after the answer.
    let codings = [
        ("gzip, chunked", "transfer-encoding: gzip, chunked\r\n"),
        ("gzip then chunked", "transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n"),
        ("chunked twice", "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n"),
    ];
    for (case, headers) in codings {
        let request = post(headers, "2\r\nok\r\n0\r\n\r\n");
        let answer =
            exchange(&server, format!("{request}GET /pending HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes()).await;
        assert_eq!(status(&answer), "501", "{case}: {answer}");
        assert!(
            answer.contains("transfer coding") && answer.contains("connection: close\r\n"),
            "{case}: {answer}"
        );
        assert_eq!(answer.matches("HTTP/1.").count(), 1, "{case}: nothing after the 501: {answer}");
    }
    // Both framings: read as chunked (RFC 9112 §6.3), and the connection closes after it.
    let both = post("content-length: 100\r\ntransfer-encoding: chunked\r\n", "2\r\nok\r\n0\r\n\r\n");
    let answer =
        exchange(&server, format!("{both}GET /pending HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes()).await;
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(answer.ends_with("ok") && answer.contains("connection: close\r\n"), "{answer}");
}

/// Each kind of malformed head gets its own status, and the connection closes: a bad request
/// line or header 400, a head over 64 KiB or 100 headers 431, a head cut short 408 (at the head
/// timeout); an HTTP/2 preface is closed without an HTTP/1.1 answer.
#[tokio::test]
async fn malformed_heads_get_their_own_status_and_are_closed() {
    let server = start(quick()).await;
    let cases: [(&str, String, &str); 7] = [
        ("a request line without a version", "GET /echo\r\nhost: t\r\n\r\n".into(), "400"),
        ("an unknown HTTP version", "GET /echo HTTP/3.0\r\nhost: t\r\n\r\n".into(), "400"),
        ("a header without a colon", "GET /echo HTTP/1.1\r\nhost t\r\n\r\n".into(), "400"),
        ("a space before a header's colon", "GET /echo HTTP/1.1\r\nhost : t\r\n\r\n".into(), "400"),
        ("a head over 64 KiB", format!("GET /echo HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(70_000)), "431"),
        ("over 100 headers", format!("GET /echo HTTP/1.1\r\n{}\r\n", "x: y\r\n".repeat(101)), "431"),
        ("a head cut short", "GET /echo HTTP/1.1\r\nhost: t\r\n".into(), "408"),
    ];
    for (case, head, expected) in cases {
        let answer = exchange(&server, head.as_bytes()).await;
        assert_eq!(status(&answer), expected, "{case}: {answer}");
        assert!(!answer.contains("not HTTP/1.1"), "{case}: {answer}");
    }
    let answer = exchange(&server, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert_eq!(answer, "", "an HTTP/2 preface is closed unanswered");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = start(quick()).await;
    let requests = format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\n{KEY}content-length: 5\r\n\r\nfirstPOST /echo HTTP/1.1\r\nhost: t\r\n\
         {KEY}transfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nsec\r\n3\r\nond\r\n0\r\n\r\n"
    );
    let answer = exchange(&server, requests.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answer}");
    let (first, second) = (answer.find("first"), answer.find("second"));
    assert!(first.is_some() && first < second, "{answer}");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_keeps_a_stream_in_flight_until_it_ends() {
    let server = start(quick()).await;
    let mut streaming = connect(&server).await;
    streaming.write_all(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n").await.expect("send");
    read_until(&mut streaming, "xxxx").await;
    let mut idle = connect(&server).await;
    idle.write_all(format!("POST /echo HTTP/1.1\r\nhost: t\r\n{KEY}content-length: 2\r\n\r\nok").as_bytes())
        .await
        .expect("send");
    read_until(&mut idle, "\r\n\r\nok").await;

    server.shutdown.cancel();
    assert_eq!(read_to_close(&mut idle).await, "", "an idle kept-alive connection is closed on shutdown");
    assert!(!server.served.is_finished(), "the server waits for the stream in flight");
    read_until(&mut streaming, "xxxx").await;
    drop(streaming);
    let served = tokio::time::timeout(DEADLINE, server.served).await.expect("the server stops once drained");
    served.expect("the server task").expect("serve returns Ok");
    assert!(TcpStream::connect(server.address).await.is_err(), "no new connections after shutdown");
}

#[test]
fn limits_are_read_from_toml_and_zero_is_refused_with_its_line() {
    #[derive(serde::Deserialize)]
    struct File {
        listener: Limits,
    }
    let file: File =
        toml::from_str("[listener]\nhead_timeout = \"10s\"\nmax_connections = 5\n").expect("valid");
    assert_eq!(file.listener.head_timeout, Duration::from_secs(10));
    assert_eq!(file.listener.max_connections, 5);
    assert_eq!(file.listener.idle_timeout, Limits::default().idle_timeout);
    for zero in ["body_timeout = \"0s\"", "max_connections = 0"] {
        let error = toml::from_str::<File>(&format!("[listener]\n{zero}\n")).err().map(|e| e.to_string());
        assert!(error.as_ref().is_some_and(|e| e.contains("line 2") && e.contains("zero")), "{error:?}");
    }
}
