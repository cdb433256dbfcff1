//! The listener's HTTP/1.1 connections against raw sockets: keep-alive and pipelining, both
//! request framings, `100 Continue`, HTTP/1.0, bodiless answers, bodies over the limit, bad
//! heads and bodies, and clients that leave before their answer has ended.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::{get, post};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::server::{self, Drain};

const DEADLINE: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 1024;

/// Sends a message on drop: tells a test that the router dropped a request's work.
struct Dropped(mpsc::UnboundedSender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Routes: `/echo` answers the body it read (413 over the limit), `/big` a 1 MiB body,
/// `/stream` an endless stream of events, `/pending` never answers; the last two report the
/// drop of their work on `dropped`.
fn app(dropped: mpsc::UnboundedSender<()>) -> Router {
    let pending_drop = dropped.clone();
    Router::new()
        .route(
            "/echo",
            post(|body: Body| async move {
                match axum::body::to_bytes(body, MAX_BODY).await {
                    Ok(bytes) => (StatusCode::OK, bytes),
                    Err(_) => (StatusCode::PAYLOAD_TOO_LARGE, Bytes::from_static(b"too large")),
                }
            }),
        )
        .route("/big", get(|| async { vec![b'x'; 1 << 20] }))
        .route(
            "/stream",
            get(move || {
                let guard = Dropped(dropped.clone());
                async move {
                    let events = futures_util::stream::unfold(guard, |guard| async move {
                        tokio::task::yield_now().await;
                        Some((Ok::<_, std::io::Error>(Bytes::from_static(b"data: x\n\n")), guard))
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

/// A listener serving `app` connection by connection; its address and the drop reports.
async fn start() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<()>) {
    let (dropped, reports) = mpsc::unbounded_channel();
    let router = app(dropped);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("its address");
    let drain = Arc::new(Drain::default());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(server::serve(tcp, router.clone(), drain.clone(), MAX_BODY));
        }
    });
    (address, reports)
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut seen)).await.expect("closed in time").expect("read");
    String::from_utf8_lossy(&seen).into_owned()
}

/// Read until what has arrived contains `needle` `times` times.
async fn read_until(tcp: &mut TcpStream, needle: &str, times: usize) -> String {
    let mut seen = Vec::new();
    while String::from_utf8_lossy(&seen).matches(needle).count() < times {
        let mut buffer = [0u8; 65536];
        let read =
            tokio::time::timeout(DEADLINE, tcp.read(&mut buffer)).await.expect("in time").expect("read");
        assert!(read > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (address, _) = start().await;
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let requests = "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nfirstPOST /echo HTTP/1.1\r\n\
                    host: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nsec\r\n3;x=1\r\nond\r\n0\r\n\r\n";
    tcp.write_all(requests.as_bytes()).await.expect("send");
    let seen = read_until(&mut tcp, "second", 1).await;
    assert_eq!(seen.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{seen}");
    let first = seen.find("first").expect("the first body");
    let second = seen.find("second").expect("the chunked body, whole");
    assert!(first < second, "{seen}");
    assert!(seen.contains("content-length: 5\r\n") && seen.contains("content-length: 6\r\n"), "{seen}");
    tcp.write_all(b"GET /big HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await.expect("send");
    let big = read_to_close(&mut tcp).await;
    assert!(
        big.contains("content-length: 1048576\r\nconnection: close\r\n\r\n"),
        "{}",
        &big[..200.min(big.len())]
    );
    assert_eq!(big.matches('x').count(), 1 << 20, "a large body arrives whole");
}

#[tokio::test]
async fn a_client_expecting_continue_is_told_to_send_its_body() {
    let (address, _) = start().await;
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        .await
        .expect("send the head");
    read_until(&mut tcp, "HTTP/1.1 100 Continue\r\n\r\n", 1).await;
    tcp.write_all(b"ping").await.expect("send the body");
    let answer = read_until(&mut tcp, "ping", 1).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn http10_clients_get_lengths_or_a_close_and_no_chunks() {
    let (address, mut dropped) = start().await;
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    tcp.write_all(b"POST /echo HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi").await.expect("send");
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.contains("content-length: 2\r\nconnection: close\r\n\r\nhi"), "{answer}");
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    tcp.write_all(b"GET /stream HTTP/1.0\r\n\r\n").await.expect("send");
    let events = read_until(&mut tcp, "data: x\n\n", 3).await;
    assert!(!events.contains("transfer-encoding") && events.contains("connection: close\r\n"), "{events}");
    drop(tcp);
    tokio::time::timeout(DEADLINE, dropped.recv()).await.expect("the stream is dropped").expect("a report");
}

#[tokio::test]
async fn head_requests_get_no_body() {
    let (address, _) = start().await;
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    tcp.write_all(
        b"HEAD /big HTTP/1.1\r\nhost: t\r\n\r\nGET /big HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    )
    .await
    .expect("send");
    let seen = read_to_close(&mut tcp).await;
    assert_eq!(seen.matches("HTTP/1.1 200 OK").count(), 2, "{}", &seen[..300.min(seen.len())]);
    assert_eq!(seen.matches('x').count(), 1 << 20, "only the GET has a body");
}

#[tokio::test]
async fn a_body_over_the_limit_is_answered_413_and_the_connection_closes() {
    let (address, _) = start().await;
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let head = format!("POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n", 1 << 20);
    tcp.write_all(head.as_bytes()).await.expect("send the head");
    // The client goes on sending what it announced, as a client that did not ask first does.
    let (mut reader, mut writer) = tcp.into_split();
    let sender = tokio::spawn(async move {
        let _ = writer.write_all(&vec![b'y'; 1 << 20]).await;
    });
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, reader.read_to_end(&mut seen))
        .await
        .expect("closed in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&seen);
    assert!(answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n") && answer.ends_with("too large"), "{answer}");
    sender.await.expect("the sender");

    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let body = "a".repeat(MAX_BODY + 1);
    let chunked = format!(
        "POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    tcp.write_all(chunked.as_bytes()).await.expect("send");
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "a chunked body over the limit too: {answer}");
}

#[tokio::test]
async fn bad_heads_and_bodies_are_answered_in_the_openai_error_shape_and_closed() {
    let (address, _) = start().await;
    for wire in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nab\r\n",
    ] {
        let mut tcp = TcpStream::connect(address).await.expect("connect");
        tcp.write_all(wire).await.expect("send");
        let answer = read_to_close(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
        assert!(answer.contains("\"type\":\"invalid_request_error\""), "{answer}");
    }
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let many: String = (0..200).map(|i| format!("x-{i}: y\r\n")).collect();
    tcp.write_all(format!("GET /big HTTP/1.1\r\n{many}\r\n").as_bytes()).await.expect("send");
    assert!(read_to_close(&mut tcp).await.starts_with("HTTP/1.1 431 "));
}

#[tokio::test]
async fn a_client_that_leaves_has_its_request_dropped_pending_or_streaming() {
    let (address, mut dropped) = start().await;
    for path in ["/pending", "/stream"] {
        let mut tcp = TcpStream::connect(address).await.expect("connect");
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes()).await.expect("send");
        if path == "/stream" {
            read_until(&mut tcp, "data: x\n\n", 2).await;
        }
        drop(tcp);
        let report = tokio::time::timeout(DEADLINE, dropped.recv()).await;
        assert!(report.is_ok_and(|r| r.is_some()), "{path}: the work is dropped once the client has left");
    }
}
