//! The neuron's API listener against hostile clients over raw sockets, with neuron.toml's
//! `[listener]` timeouts set short: trickled and silent heads closed by the head timeout while
//! other clients are served, idle kept-alive connections by the idle timeout, a body that never
//! comes by the body timeout, and a request without the token answered from its head, its body
//! unread.

mod common;

use std::time::{Duration, Instant};

use common::{TOKEN, TestNeuron};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const DEADLINE: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"
[harness.sim]
kind = "sim"
load_ms = 200
ttft_ms = 10
tokens_per_second = 1000
devices = [{ name = "SimGPU 24G", vram_mb = 24000 }]

[listener]
head_timeout = "1s"
idle_timeout = "2s"
body_read_timeout = "1s"
"#;

fn address(node: &TestNeuron) -> String {
    node.url.trim_start_matches("http://").to_owned()
}

/// Everything read until the neuron closes the connection (a reset counts as a close).
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(DEADLINE, tcp.read(&mut buffer)).await.expect("closed in time") {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(read) => seen.extend_from_slice(&buffer[..read]),
        }
    }
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or(answer)
}

fn discovery(extra: &str) -> String {
    format!("GET /discovery HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {TOKEN}\r\n{extra}\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_silent_and_idle_connections_are_closed_while_others_are_served() {
    let node = TestNeuron::start((43200, 43219), CONFIG, None, None).await;
    let address = address(&node);
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for n in 0..60 {
        let mut tcp = TcpStream::connect(&address).await.expect("connect");
        let kind = ["trickled", "silent", "idle"][n % 3];
        if kind == "idle" {
            tcp.write_all(discovery("").as_bytes()).await.expect("send");
            let mut buffer = [0u8; 4096];
            let read = tcp.read(&mut buffer).await.expect("an answer");
            assert!(buffer[..read].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buffer));
        }
        let opened = Instant::now();
        clients.spawn(async move {
            if kind == "trickled" {
                for byte in b"GET /discovery HTTP/1.1\r\nhost: t\r\nx-slow: yes\r\n".iter().cycle() {
                    let mut probe = [0u8; 256];
                    if tcp.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    if let Ok(Ok(0) | Err(_)) =
                        tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut probe)).await
                    {
                        break;
                    }
                    assert!(opened.elapsed() < DEADLINE, "a trickled head is still open");
                }
                return (kind, opened.elapsed(), String::new());
            }
            let answer = read_to_close(&mut tcp).await;
            (kind, opened.elapsed(), answer)
        });
    }
    // Meanwhile, other clients are served at once.
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let asked = Instant::now();
        let mut tcp = TcpStream::connect(&address).await.expect("connect");
        tcp.write_all(discovery("connection: close\r\n").as_bytes()).await.expect("send");
        let answer = read_to_close(&mut tcp).await;
        assert_eq!(status(&answer), "200", "{answer}");
        assert!(asked.elapsed() < Duration::from_secs(2), "served in {:?}", asked.elapsed());
        served += 1;
    }
    assert!(served > 0);
    while let Some(done) = clients.join_next().await {
        let (kind, after, answer) = done.expect("client task");
        let (least, most) = if kind == "idle" { (1.9, 6.0) } else { (0.9, 5.0) };
        let seconds = after.as_secs_f64();
        assert!((least..most).contains(&seconds), "a {kind} connection closed after {seconds:.2} s");
        assert!(kind != "silent" || answer.is_empty(), "a silent connection gets no answer: {answer}");
        assert!(kind != "idle" || answer.is_empty(), "an idle connection gets no answer: {answer}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_never_comes_is_refused_at_the_body_timeout_and_closed() {
    let node = TestNeuron::start((43220, 43239), CONFIG, None, None).await;
    let mut tcp = TcpStream::connect(address(&node)).await.expect("connect");
    let head = format!(
        "POST /models/load HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"model\""
    );
    let sent = Instant::now();
    tcp.write_all(head.as_bytes()).await.expect("send");
    let answer = read_to_close(&mut tcp).await;
    let waited = sent.elapsed();
    assert!(["400", "408"].contains(&status(&answer)), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_the_token_is_refused_from_its_head_with_its_body_unread() {
    let node = TestNeuron::start((43240, 43259), CONFIG, None, None).await;
    let declared = 32 << 20;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         expect: 100-continue\r\ncontent-length: {declared}\r\n\r\n"
    );
    let mut tcp = TcpStream::connect(address(&node)).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("send");
    let answer = read_to_close(&mut tcp).await;
    assert_eq!(status(&answer), "401", "{answer}");
    assert!(!answer.contains("100 Continue") && answer.contains("connection: close\r\n"), "{answer}");

    // Sent at once, the body is not read: the connection closes long before it could be sent.
    let tcp = TcpStream::connect(address(&node)).await.expect("connect");
    let (mut reader, mut writer) = tcp.into_split();
    let sender = tokio::spawn(async move {
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        let head = head.replace("expect: 100-continue\r\n", "");
        if writer.write_all(head.as_bytes()).await.is_ok() {
            while sent < declared && writer.write_all(&piece).await.is_ok() {
                sent += piece.len();
            }
        }
        sent
    });
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, reader.read_to_end(&mut seen)).await.expect("closed in time");
    let answer = String::from_utf8_lossy(&seen);
    assert_eq!(status(&answer), "401", "{answer}");
    let sent = tokio::time::timeout(DEADLINE, sender).await.expect("the sender stops").expect("sender");
    assert!(sent < declared / 2, "the connection closed under the body ({sent} bytes sent)");
    node.stop().await;
}
