//! Hostile and broken clients against the real `cortex serve` (a sim neuron behind it), over raw
//! sockets: requests refused from their head with their bodies unread, bodies that never come,
//! heads trickled byte by byte, silent and idle connections, framing another hop could read
//! differently, a client that leaves before its answer, and more connections than the bound. Each
//! checks what the client is answered, when its connection closes, and what cortex kept in memory.

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::time::{Duration, Instant};

use cortex_e2e::{
    ADMIN_KEY, Daemon, NEURON_TOKEN, Neuron, eventually, free_port, neuron_table, write_atomic,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const KEY: &str = "hostile-test-key";
const DEADLINE: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;
/// The gateway's default body limit, declared by the requests that test it.
const DECLARED: usize = 32 * MIB;

/// A sim neuron whose model `slow` takes `ttft_ms` to its first token, and `cortex serve` with
/// the client key `KEY` and the given `[gateway]` and `[listener]` settings.
struct Stack {
    daemon: Daemon,
    metrics_port: u16,
    _neuron: Neuron,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(ttft_ms: u64, gateway: &str, listener: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let harness = format!(
            "[harness.sim]\nkind = \"sim\"\nload_ms = 10\nttft_ms = {ttft_ms}\ntokens_per_second = 500\n\
             devices = [{{ name = \"SimGPU\", vram_mb = 8000 }}]\n"
        );
        let neuron = Neuron::start(dir.path(), "n1", &harness).await;
        let fleet = dir.path().join("fleet");
        std::fs::create_dir_all(&fleet).unwrap();
        let model = "[[model]]\nid = \"slow\"\nharness = \"sim\"\nsource = \"slow.bin\"\nvram_mb = 1000\npinned_on = [\"n1\"]\n";
        write_atomic(&fleet.join("fleet.toml"), &format!("{}{model}", neuron_table(&neuron)));
        let (port, metrics_port) = (free_port(), free_port());
        let config = dir.path().join("cortex.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nadmin_key = \"{ADMIN_KEY}\"\n\
                 neuron_token = \"{NEURON_TOKEN}\"\napi_keys = [\"{KEY}\"]\n\n[poll]\ninterval = \"200ms\"\n\n\
                 [gateway]\n{gateway}\n\n[listener]\n{listener}\n"
            ),
        )
        .unwrap();
        let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
        let stack = Stack { daemon, metrics_port, _neuron: neuron, _dir: dir };
        eventually("the model to be served", Duration::from_secs(60), async || {
            let answer = stack.exchange(&chat("connection: close\r\n")).await;
            answer.starts_with("HTTP/1.1 200").then_some(())
        })
        .await;
        stack
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.daemon.port)).await.unwrap()
    }

    /// Send `request` on a fresh connection: everything cortex answers until it closes.
    async fn exchange(&self, request: &str) -> String {
        let mut tcp = self.connect().await;
        tcp.write_all(request.as_bytes()).await.unwrap();
        read_to_close(&mut tcp).await.0
    }

    /// cortex's resident and virtual memory, in KiB.
    fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.daemon.process.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        (field("VmRSS:").unwrap_or(0), field("VmSize:").unwrap_or(0))
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A chat completion for `slow` with the key, `extra` header lines, and its body.
fn chat(extra: &str) -> String {
    let body = r#"{"model":"slow","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#;
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\n\
         {extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A chat completion head declaring a body of `length` bytes, with `extra` header lines.
fn declaring(length: usize, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n{extra}content-length: {length}\r\n\r\n"
    )
}

/// Everything read until the server closes the connection (a reset counts as a close), and
/// when it closed.
async fn read_to_close(tcp: &mut TcpStream) -> (String, Instant) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(DEADLINE, tcp.read(&mut buffer))
            .await
            .expect("the connection closes in time")
        {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), Instant::now()),
            Ok(read) => seen.extend_from_slice(&buffer[..read]),
        }
    }
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or(answer)
}

/// Send the head of a request declaring `DECLARED` bytes, then as much of the body as the
/// connection takes (up to `send` bytes): what was sent, what was answered and when it closed.
async fn send_body(tcp: TcpStream, head: String, send: usize) -> (usize, String, Instant) {
    send_pieces(tcp, head, vec![b'x'; 64 * 1024], send).await
}

/// Send `head`, then `piece` again and again until `send` bytes are sent or the connection
/// takes no more: what was sent after the head, what was answered and when it closed.
async fn send_pieces(tcp: TcpStream, head: String, piece: Vec<u8>, send: usize) -> (usize, String, Instant) {
    let (mut reader, mut writer) = tcp.into_split();
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        if writer.write_all(head.as_bytes()).await.is_err() {
            return 0;
        }
        while sent < send && writer.write_all(&piece).await.is_ok() {
            sent += piece.len();
        }
        sent
    });
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, reader.read_to_end(&mut seen)).await.expect("closed in time");
    let closed = Instant::now();
    let sent = tokio::time::timeout(DEADLINE, sender).await.expect("the sender stops").unwrap();
    (sent, String::from_utf8_lossy(&seen).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_refused_from_their_head_with_their_bodies_unread() {
    let stack = Stack::start(3_000, "max_in_flight = 1", "").await;

    // No key, `Expect: 100-continue`, 10 MB declared: 401 without `100 Continue`, and closed.
    let answer = stack.exchange(&declaring(10_000_000, "expect: 100-continue\r\n")).await;
    assert_eq!(status(&answer), "401", "{answer}");
    assert!(!answer.contains("100 Continue") && answer.contains("connection: close\r\n"), "{answer}");

    // No key and the body sent at once: the answer is the 401, not a reset, and the connection
    // closes long before the body could have been sent.
    let (sent, answer, _) = send_body(stack.connect().await, declaring(DECLARED, ""), DECLARED).await;
    assert_eq!(status(&answer), "401", "{answer}");
    assert!(sent < DECLARED / 2, "the connection closed under the body ({sent} bytes sent)");

    // Over the body limit by its declared length: 413 from the head, its body unread.
    let over = declaring(DECLARED + 1, &format!("authorization: Bearer {KEY}\r\nexpect: 100-continue\r\n"));
    let answer = stack.exchange(&over).await;
    assert_eq!(status(&answer), "413", "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");

    // The one place taken by a slow request: the next is shed with 503 before its body.
    let mut held = stack.connect().await;
    held.write_all(chat("").as_bytes()).await.unwrap();
    let shed = declaring(30_000_000, &format!("authorization: Bearer {KEY}\r\nexpect: 100-continue\r\n"));
    let answer = eventually("the held request to take the place", DEADLINE, async || {
        // Until the held request is counted (a loaded machine), this one is admitted and waits
        // for its body: that try is given up and the next one sent.
        let answer = tokio::time::timeout(Duration::from_secs(2), stack.exchange(&shed)).await.ok()?;
        (status(&answer) == "503").then_some(answer)
    })
    .await;
    assert!(answer.contains("retry-after:") && !answer.contains("100 Continue"), "{answer}");
    let answer = read_answer(&mut held).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "the held request is answered: {answer}");
}

/// Read one answer off a kept-alive connection: until its (chunked) body has ended.
async fn read_answer(tcp: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    while !seen.ends_with(b"\r\n0\r\n\r\n") {
        let read = tokio::time::timeout(DEADLINE, tcp.read(&mut buffer)).await.expect("in time").unwrap();
        assert!(read > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The figures docs/gateway.md states: 100 keyless connections each declaring 32 MiB and
/// sending 1 MiB of it, and 200 keyed heads declaring 32 MiB and sending none, raise cortex's
/// resident memory by less than 32 MiB, and every connection is closed by the answer's linger
/// (2 s) or the body timeout (here 1 s).
#[tokio::test(flavor = "multi_thread")]
async fn bodies_cost_no_memory_before_they_are_read_and_unsent_ones_time_out() {
    let stack = Stack::start(5, "", "body_read_timeout = \"1s\"").await;
    let (rss_before, size_before) = stack.memory();

    let mut keyless = JoinSet::new();
    for _ in 0..100 {
        let tcp = stack.connect().await;
        keyless.spawn(send_body(tcp, declaring(DECLARED, ""), MIB));
    }
    let started = Instant::now();
    let mut peak = 0;
    while !keyless.is_empty() {
        peak = peak.max(stack.memory().0);
        if let Ok(Some(done)) = tokio::time::timeout(Duration::from_millis(20), keyless.join_next()).await {
            let (_, answer, closed) = done.unwrap();
            assert_eq!(status(&answer), "401", "{answer}");
            assert!(closed - started < Duration::from_secs(8), "closed after {:?}", closed - started);
        }
    }
    let keyless = peak.saturating_sub(rss_before);
    assert!(keyless < 32 * 1024, "100 keyless 32 MiB bodies grew cortex by {keyless} KiB");

    let mut unsent = JoinSet::new();
    let head = declaring(DECLARED, &format!("authorization: Bearer {KEY}\r\n"));
    for _ in 0..200 {
        let mut tcp = stack.connect().await;
        tcp.write_all(head.as_bytes()).await.unwrap();
        unsent.spawn(async move { read_to_close(&mut tcp).await });
    }
    let started = Instant::now();
    let mut peak = (0, 0);
    while !unsent.is_empty() {
        let (rss, size) = stack.memory();
        peak = (peak.0.max(rss), peak.1.max(size));
        if let Ok(Some(done)) = tokio::time::timeout(Duration::from_millis(20), unsent.join_next()).await {
            let (answer, closed) = done.unwrap();
            assert_eq!(status(&answer), "408", "{answer}");
            assert!(closed - started < Duration::from_secs(8), "closed after {:?}", closed - started);
        }
    }
    let grown = (peak.0.saturating_sub(rss_before), peak.1.saturating_sub(size_before));
    assert!(grown.0 < 32 * 1024, "200 unsent 32 MiB bodies grew cortex's RSS by {} KiB", grown.0);
    assert!(grown.1 < 1024 * 1024, "and its address space by {} KiB (nothing reserved)", grown.1);
    println!(
        "cortex grew by: keyless {keyless} KiB; unsent {} KiB resident, {} KiB virtual",
        grown.0, grown.1
    );
}

/// Trickled heads (one byte every 100 ms) and silent connections are closed by the head
/// timeout (here 1 s), idle kept-alive ones by the idle timeout (here 2 s), and other clients
/// are served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn slow_silent_and_idle_connections_are_closed_while_others_are_served() {
    let stack = Stack::start(5, "", "head_timeout = \"1s\"\nidle_timeout = \"2s\"").await;
    let mut clients = JoinSet::new();
    let started = Instant::now();
    for n in 0..450 {
        let mut tcp = stack.connect().await;
        let kind = ["trickled", "silent", "idle"][n % 3];
        if kind == "idle" {
            tcp.write_all(chat("").as_bytes()).await.unwrap();
            read_answer(&mut tcp).await;
        }
        let opened = Instant::now();
        clients.spawn(async move {
            if kind == "trickled" {
                for byte in b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nx-slow: yes\r\n".iter().cycle()
                {
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
            let (answer, closed) = read_to_close(&mut tcp).await;
            (kind, closed - opened, answer)
        });
    }
    // Meanwhile, other clients are served at once: at least one while the last of those
    // connections are still open, however long opening them took on a loaded machine.
    let mut served = 0;
    while served == 0 || started.elapsed() < Duration::from_secs(3) {
        let asked = Instant::now();
        let answer = stack.exchange(&chat("connection: close\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(asked.elapsed() < Duration::from_secs(2), "served in {:?}", asked.elapsed());
        served += 1;
    }
    assert!(served > 0);
    while let Some(done) = clients.join_next().await {
        let (kind, after, answer) = done.unwrap();
        let (least, most) = if kind == "idle" { (1.9, 6.0) } else { (0.9, 5.0) };
        let seconds = after.as_secs_f64();
        assert!((least..most).contains(&seconds), "a {kind} connection closed after {seconds:.2} s");
        assert!(
            kind == "trickled" || answer.is_empty(),
            "a {kind} connection is closed without an answer: {answer}"
        );
    }
}

/// Framing that another hop could read differently (RFC 9112 §6) is refused with 400, and
/// nothing after it on the connection is answered.
#[tokio::test(flavor = "multi_thread")]
async fn framing_another_hop_could_read_differently_is_refused() {
    let stack = Stack::start(5, "", "").await;
    let body = r#"{"model":"slow","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#;
    let post = |headers: &str, framed: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n{headers}\r\n{framed}"
        )
    };
    let chunked = |size: &str, end: &str| format!("{size}{end}{body}\r\n0\r\n\r\n");
    let hex = format!("{:x}", body.len());
    let follow = "GET /v1/models HTTP/1.1\r\nhost: t\r\n\r\n";
    let refused = [
        (
            "chunked, then gzip on a second line",
            post("transfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n", &chunked(&hex, "\r\n")),
        ),
        ("a signed content-length", post(&format!("content-length: +{}\r\n", body.len()), body)),
        (
            "transfer-encoding on HTTP/1.0",
            post("transfer-encoding: chunked\r\n", &chunked(&hex, "\r\n"))
                .replacen("HTTP/1.1", "HTTP/1.0", 1),
        ),
        ("a signed chunk size", post("transfer-encoding: chunked\r\n", &chunked(&format!("+{hex}"), "\r\n"))),
        ("a bare LF after a chunk size", post("transfer-encoding: chunked\r\n", &chunked(&hex, "\n"))),
        (
            "a chunk size after spaces",
            post("transfer-encoding: chunked\r\n", &chunked(&format!("  {hex}"), "\r\n")),
        ),
        (
            "chunk extensions over 16 KiB",
            post(
                "transfer-encoding: chunked\r\n",
                &chunked(&format!("{hex};{}", "e".repeat(20_000)), "\r\n"),
            ),
        ),
    ];
    for (case, request) in refused {
        let answer = stack.exchange(&format!("{request}{follow}")).await;
        assert_eq!(status(&answer), "400", "{case}: {answer}");
        assert_eq!(answer.matches("HTTP/1.").count(), 1, "{case}: nothing after the 400: {answer}");
    }
    // A coding before `chunked` (on one line or two): no route decodes one, so 501 from the
    // head, the body unread, and nothing after it answered.
    for (case, headers) in [
        ("gzip then chunked on two lines", "transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n"),
        ("gzip, chunked", "transfer-encoding: gzip, chunked\r\n"),
    ] {
        let answer = stack.exchange(&format!("{}{follow}", post(headers, &chunked(&hex, "\r\n")))).await;
        assert_eq!(status(&answer), "501", "{case}: {answer}");
        assert_eq!(answer.matches("HTTP/1.").count(), 1, "{case}: nothing after the 501: {answer}");
    }
    let zeros = post(
        "transfer-encoding: chunked\r\nconnection: close\r\n",
        &chunked(&format!("{}{hex}", "0".repeat(64)), "\r\n"),
    );
    let answer = stack.exchange(&zeros).await;
    assert_eq!(status(&answer), "200", "64 leading zeros in a chunk size: {answer}");

    // Each malformed head gets its own status (not one message for all), and is closed.
    for (case, head, expected) in [
        ("a request line without a version", "GET /v1/models\r\nhost: t\r\n\r\n".to_owned(), "400"),
        ("a header without a colon", "GET /v1/models HTTP/1.1\r\nhost t\r\n\r\n".to_owned(), "400"),
        (
            "a head over 64 KiB",
            format!("GET /v1/models HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(70_000)),
            "431",
        ),
        ("over 100 headers", format!("GET /v1/models HTTP/1.1\r\n{}\r\n", "x: y\r\n".repeat(101)), "431"),
    ] {
        let answer = stack.exchange(&head).await;
        assert_eq!(status(&answer), expected, "{case}: {answer}");
        assert!(!answer.contains("not HTTP/1.1"), "{case}: {answer}");
    }
}

/// 64 MiB of trailer fields and 20 MB of chunk extensions on one request: refused with 400 once
/// past their bounds (64 KiB of trailers, 16 KiB of extensions per body), the connection closed
/// long before the client has sent them, and cortex's memory unmoved.
#[tokio::test(flavor = "multi_thread")]
async fn unbounded_trailers_and_chunk_extensions_are_refused_early() {
    let stack = Stack::start(5, "", "").await;
    let (rss_before, _) = stack.memory();
    let head = |first: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n\
             content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{first}"
        )
    };
    let trailer = [b"x-trailer: ".as_slice(), &[b't'; 1000], b"\r\n"].concat();
    let cases = [
        ("64 MiB of trailers", head("1\r\n{\r\n0\r\n"), trailer, 64 * MIB),
        ("20 MB of chunk extensions", head("1;"), vec![b'e'; 64 * 1024], 20_000_000),
    ];
    for (case, head, piece, total) in cases {
        let (sent, answer, _) = send_pieces(stack.connect().await, head, piece, total).await;
        assert_eq!(status(&answer), "400", "{case}: {answer}");
        assert!(answer.contains("over limit"), "{case}: the reason is given: {answer}");
        assert!(sent < total * 3 / 4, "{case}: the connection closed under them ({sent} bytes sent)");
        let grown = stack.memory().0.saturating_sub(rss_before);
        assert!(grown < 16 * 1024, "{case}: cortex grew by {grown} KiB");
        println!("{case}: {sent} bytes sent before the close, cortex +{grown} KiB");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_before_its_answer_is_counted() {
    let stack = Stack::start(3_000, "", "").await;
    let mut tcp = stack.connect().await;
    tcp.write_all(chat("").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);
    let series =
        r#"cortex_requests_total{model="",neuron="",route="chat_completions",status="client_closed"} 1"#;
    eventually("the request counted as client_closed", DEADLINE, async || {
        stack.metrics().await.contains(series).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_bound_are_answered_503_and_the_freed_place_is_taken() {
    let stack = Stack::start(5, "", "max_connections = 20").await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(stack.connect().await);
    }
    let answer = eventually("the bound to be reached", DEADLINE, async || {
        let answer = stack.exchange(&chat("connection: close\r\n")).await;
        (status(&answer) == "503").then_some(answer)
    })
    .await;
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    held.clear();
    eventually("a freed place to be taken", DEADLINE, async || {
        let answer = stack.exchange(&chat("connection: close\r\n")).await;
        (status(&answer) == "200").then_some(())
    })
    .await;
}
