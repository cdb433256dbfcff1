//! The inference client against raw TCP servers that answer exactly the bytes a test gives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;

/// A server on a free port; `answer` gets each connection (numbered from 0) after its request.
async fn server<F, Fut>(answer: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(usize, TcpStream, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = listener.local_addr().expect("address").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let request = read_request(&mut io).await;
                answer(n, io, request).await;
            });
        }
    });
    (host, accepted)
}

/// One request off `io`: head and `content-length` body.
async fn read_request(io: &mut TcpStream) -> Vec<u8> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        if io.read(&mut byte).await.unwrap_or(0) == 0 {
            return request;
        }
        request.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&request).to_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    io.read_exact(&mut body).await.expect("request body");
    request.extend_from_slice(&body);
    request
}

fn post<'a>(host: &'a str, target: &'a str, body: &'static str) -> Request<'a> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    Request { method: Method::POST, host, target, headers, body: Bytes::from_static(body.as_bytes()) }
}

async fn read_all(response: Response) -> Result<Vec<u8>, std::io::Error> {
    Ok(response.into_body().collect().await?.to_bytes().to_vec())
}

/// Poll `check` every few milliseconds until it holds or `within` has passed.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check()
}

const CHUNKED_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

#[tokio::test]
async fn the_request_goes_out_as_http_1_1_with_host_length_and_headers() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (host, _) = server(move |_, mut io, request| {
        let seen = seen_tx.clone();
        async move {
            seen.send(request).expect("test waits");
            io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("answer");
        }
    })
    .await;
    let client = InferenceClient::default();
    let response =
        client.send(post(&host, "/v1/chat/completions?beta=true", "{\"a\":1}")).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(read_all(response).await.expect("body"), b"ok");
    let request = String::from_utf8(seen_rx.recv().await.expect("request")).expect("text");
    assert_eq!(
        request,
        format!(
            "POST /v1/chat/completions?beta=true HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
        )
    );
}

#[tokio::test]
async fn a_chunked_stream_arrives_event_by_event_and_its_connection_is_reused() {
    let (go_tx, go_rx) = mpsc::unbounded_channel::<()>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let (host, accepted) = server(move |_, mut io, _| {
        let go = go_rx.clone();
        async move {
            io.write_all(CHUNKED_OK).await.expect("head");
            io.write_all(b"9\r\ndata: 1\n\n\r\n").await.expect("first");
            go.lock().await.recv().await;
            io.write_all(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n").await.expect("rest");
            // A second request on the same connection.
            read_request(&mut io).await;
            io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nagain").await.expect("second");
        }
    })
    .await;
    let client = InferenceClient::default();
    let response = client.send(post(&host, "/v1/chat/completions", "{}")).await.expect("answer");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("data").into_data().expect("data");
    assert_eq!(&first[..], b"data: 1\n\n", "the first event comes before the engine writes the second");
    go_tx.send(()).expect("server waits");
    let second = body.frame().await.expect("a frame").expect("data").into_data().expect("data");
    assert_eq!(&second[..], b"data: 2\n\n");
    assert!(body.frame().await.is_none(), "the terminal chunk ends the body");
    assert_eq!(client.pool.idle(&host), 1, "the connection went back to the pool");
    let again = client.send(post(&host, "/v1/chat/completions", "{}")).await.expect("answer");
    assert_eq!(read_all(again).await.expect("body"), b"agai");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection carried both requests");
}

#[tokio::test]
async fn a_kept_alive_connection_the_engine_closed_is_replaced_without_failing_the_request() {
    let (host, accepted) = server(|_, mut io, _| async move {
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("answer");
        // Then the engine closes the idle connection, as llama-server does after its timeout.
    })
    .await;
    let client = InferenceClient::default();
    for _ in 0..3 {
        let response = client.send(post(&host, "/v1/completions", "{}")).await.expect("answer");
        assert_eq!(read_all(response).await.expect("body"), b"ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_reused_connection_closed_under_the_request_is_retried_once() {
    // Connection 0 answers and stays open for a second request, which it reads and then closes
    // without answering (the engine's idle timeout raced the request); connection 1 answers.
    let (host, accepted) = server(|n, mut io, _| async move {
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("answer");
        if n == 0 {
            read_request(&mut io).await;
        }
    })
    .await;
    let client = InferenceClient::default();
    for _ in 0..2 {
        let response = client.send(post(&host, "/v1/completions", "{}")).await.expect("answer");
        assert_eq!(read_all(response).await.expect("body"), b"ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A body of `len` bytes that says where each byte is (a misplaced read shows).
fn numbered(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i % 251) ^ (i / 251 % 256)) as u8).collect()
}

#[tokio::test]
async fn bodies_larger_than_the_read_buffer_arrive_whole_in_every_framing() {
    const LEN: usize = 1 << 20;
    let (host, _) = server(|n, mut io, _| async move {
        let body = numbered(LEN);
        let answer = match n {
            0 => [
                format!("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {LEN}\r\n\r\n").as_bytes(),
                &body,
            ]
            .concat(),
            1 => {
                let mut answer =
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                // Chunks many times the read buffer, then thousands of 5-byte ones.
                let (large, small) = body.split_at(1_000_000);
                for piece in large.chunks(77_777).chain(small.chunks(5)) {
                    answer.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    answer.extend_from_slice(piece);
                    answer.extend_from_slice(b"\r\n");
                }
                answer.extend_from_slice(b"0\r\n\r\n");
                answer
            }
            _ => [&b"HTTP/1.1 200 OK\r\n\r\n"[..], &body].concat(),
        };
        io.write_all(&answer).await.expect("answer");
    })
    .await;
    let client = InferenceClient::default();
    // Each answer closes its connection, so the three requests take connections 0, 1 and 2.
    for framing in ["content-length", "chunked", "close"] {
        let response = client.send(post(&host, "/v1/completions", "{}")).await.expect("answer");
        let body = read_all(response).await.expect("body");
        assert_eq!(body.len(), LEN, "{framing}");
        assert!(body == numbered(LEN), "{framing}: the bytes arrive in order, none lost or repeated");
    }
}

#[tokio::test]
async fn close_delimited_and_connection_close_answers_are_read_and_not_pooled() {
    let (host, _) = server(|n, mut io, _| async move {
        let answer: &[u8] = if n == 0 {
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
        } else {
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbad"
        };
        io.write_all(answer).await.expect("answer");
    })
    .await;
    let client = InferenceClient::default();
    let response = client.send(post(&host, "/v1/completions", "{}")).await.expect("answer");
    assert_eq!(read_all(response).await.expect("body"), b"until the end");
    let response = client.send(post(&host, "/v1/completions", "{}")).await.expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(read_all(response).await.expect("body"), b"bad");
    assert_eq!(client.pool.idle(&host), 0);
}

#[tokio::test]
async fn dropping_a_body_mid_stream_closes_the_engines_connection() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let (host, _) = server(move |_, mut io, _| {
        let closed = closed_tx.clone();
        async move {
            io.write_all(CHUNKED_OK).await.expect("head");
            io.write_all(b"9\r\ndata: 1\n\n\r\n").await.expect("first");
            let mut rest = Vec::new();
            let _ = io.read_to_end(&mut rest).await;
            closed.send(()).expect("test waits");
        }
    })
    .await;
    let client = InferenceClient::default();
    let response = client.send(post(&host, "/v1/chat/completions", "{}")).await.expect("answer");
    let mut body = response.into_body();
    body.frame().await.expect("a frame").expect("data");
    drop(body);
    let seen = tokio::time::timeout(Duration::from_secs(5), closed_rx.recv()).await;
    assert!(matches!(seen, Ok(Some(()))), "the engine sees the connection close");
    assert!(eventually(Duration::from_secs(1), || client.pool.idle(&host) == 0).await);
}

#[tokio::test]
async fn broken_answers_are_errors_that_say_what_broke() {
    let (host, _) = server(|n, mut io, _| async move {
        let answer: &[u8] = match n {
            0 => b"SMTP ready\r\n\r\n",
            1 => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        };
        io.write_all(answer).await.expect("answer");
    })
    .await;
    let client = InferenceClient::default();
    let error = client.send(post(&host, "/", "{}")).await.expect_err("not HTTP").message;
    assert!(error.contains("not HTTP/1.1"), "{error}");
    for _ in 0..2 {
        let response = client.send(post(&host, "/", "{}")).await.expect("a head");
        let error = read_all(response).await.expect_err("cut short");
        assert!(error.to_string().contains("mid-body"), "{error}");
    }
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gone = closed.local_addr().expect("address").to_string();
    drop(closed);
    let error = client.send(post(&gone, "/", "{}")).await.expect_err("refused").message;
    assert!(error.contains("cannot connect") && error.to_lowercase().contains("refused"), "{error}");
    let error = client.send(post(&host, "/a path", "{}")).await.expect_err("invalid target").message;
    assert!(error.contains("not a valid request target"), "{error}");
}

#[tokio::test]
async fn idle_connections_expire_for_every_host_as_the_pool_is_used() {
    let (host, _) = server(|_, mut io, _| async move {
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("answer");
        read_request(&mut io).await;
    })
    .await;
    let pool = Arc::new(Pool::with_idle_timeout(Duration::from_millis(60)));
    let client = InferenceClient { pool, timeouts: Timeouts::default() };
    let response = client.send(post(&host, "/v1/completions", "{}")).await.expect("answer");
    assert_eq!(read_all(response).await.expect("body"), b"ok");
    assert_eq!(client.pool.idle(&host), 1);
    // Only another host is used from now on: the idle connection still goes, and its host too.
    let gone = eventually(Duration::from_secs(5), || {
        client.pool.checkout("127.0.0.1:1");
        client.pool.hosts() == 0
    })
    .await;
    assert!(gone, "the expired connection was dropped");
}

#[tokio::test]
async fn an_answer_that_does_not_begin_in_time_is_a_timeout_and_a_silent_one_breaks_off() {
    let (host, _) = server(|n, mut io, _| async move {
        if n == 1 {
            io.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
                .await
                .expect("answer");
        }
        // Keep the connection open, silent.
        let mut rest = Vec::new();
        let _ = io.read_to_end(&mut rest).await;
    })
    .await;
    let client =
        InferenceClient::new(Timeouts { head: Duration::from_millis(200), read: Duration::from_millis(200) });
    let started = Instant::now();
    let error = client.send(post(&host, "/", "{}")).await.expect_err("no head in time");
    assert!(error.timed_out && error.message.contains("no answer within 200ms"), "{error}");
    let response = client.send(post(&host, "/", "{}")).await.expect("a head");
    let error = read_all(response).await.expect_err("silent after its first chunk");
    assert!(error.to_string().contains("the engine sent nothing for 200ms"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn answers_are_framed_as_rfc_9112_says_and_ambiguous_ones_not_reused() {
    let (host, accepted) = server(|n, mut io, _| async move {
        let answer: &[u8] = match n {
            0 => b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            1 => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nraw until close",
            2 => b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
        };
        io.write_all(answer).await.expect("answer");
    })
    .await;
    let client = InferenceClient::default();
    let response = client.send(post(&host, "/", "{}")).await.expect("both framings");
    assert_eq!(read_all(response).await.expect("read as chunked"), b"ok");
    assert_eq!(client.pool.idle(&host), 0, "a connection whose answer had both framings is not reused");
    let response = client.send(post(&host, "/", "{}")).await.expect("codings not ending in chunked");
    assert_eq!(read_all(response).await.expect("read until the close"), b"raw until close");
    for expected in ["transfer-encoding on HTTP/1.0", "the content-length is not digits"] {
        let error = client.send(post(&host, "/", "{}")).await.expect_err("malformed").message;
        assert!(error.contains(expected), "{error}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}
