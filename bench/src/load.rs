//! The load generators: open-loop constant-rate non-streaming requests (latency measured from
//! each request's *scheduled* send time, so a slow server cannot hide its tail by slowing the
//! client: no coordinated omission), and streaming clients that timestamp every SSE event.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::stream_client::Streamer;

/// A client tuned like a load generator: no proxy, no Nagle, an unbounded keep-alive pool.
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(300))
        .timeout(timeout)
        .build()?)
}

/// [`client`], presenting `key` as a bearer token on every request when there is one.
pub fn keyed_client(timeout: Duration, key: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let Some(key) = key else { return client(timeout) };
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse()?);
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(300))
        .timeout(timeout)
        .default_headers(headers)
        .build()?)
}

/// `streamer`, presenting `key` as a bearer token when there is one.
pub fn keyed(streamer: Streamer, key: Option<&str>) -> Streamer {
    match key {
        Some(key) => streamer.with_header("authorization", &format!("Bearer {key}")),
        None => streamer,
    }
}

/// The streaming client: what [`streams`] and [`hold`] use, with the header the Anthropic
/// route asks for (the OpenAI ones ignore it).
pub fn streamer(timeout: Duration) -> Streamer {
    Streamer::new(timeout).with_header("anthropic-version", "2023-06-01")
}

/// Percentile `p` (0–100) of sorted values (nearest rank).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn dist(mut values: Vec<u64>) -> Value {
    values.sort_unstable();
    json!({
        "n": values.len(),
        "p50": percentile(&values, 50.0),
        "p90": percentile(&values, 90.0),
        "p99": percentile(&values, 99.0),
        "max": values.last().copied().unwrap_or(0),
    })
}

/// One open-loop run at a constant rate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpenLoop {
    pub target_rps: f64,
    pub achieved_rps: f64,
    pub sent: usize,
    pub ok: usize,
    pub errors: usize,
    /// Of the errors: answered 429 or 503 (shed by an overloaded gateway, as it should be).
    pub shed: usize,
    /// Of the errors: no HTTP answer at all (connection refused, reset or timed out).
    pub transport_errors: usize,
    /// Latency from the scheduled send time (µs): p50, p90, p99, max.
    pub latency_us: Value,
    /// Latency from the actual send time (µs): differs from the above when the client lags.
    pub service_us: Value,
    /// How late the generator sent, at the 99th percentile (µs).
    pub send_lag_p99_us: u64,
}

/// Send `body` to `url` at `rate` per second for `duration`, open loop.
pub async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    rate: f64,
    duration: Duration,
) -> OpenLoop {
    let n = (rate * duration.as_secs_f64()).round().max(1.0) as usize;
    let start = Instant::now() + Duration::from_millis(20);
    // A thread paces the sends: its sleep is precise to tens of µs where tokio's timer wheel
    // rounds to the next millisecond. Each request runs as a task on the runtime.
    let handle = tokio::runtime::Handle::current();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let (client, url) = (client.clone(), url.to_owned());
    std::thread::spawn(move || {
        for i in 0..n {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            let task = handle.spawn(async move {
                let sent = Instant::now();
                let result = async {
                    let response = client
                        .post(url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body)
                        .send()
                        .await?;
                    let status = response.status().as_u16();
                    let _ = response.bytes().await?;
                    Ok::<_, reqwest::Error>(status)
                }
                .await;
                let done = Instant::now();
                (result.map_err(drop), done - at, done - sent, sent - at, done)
            });
            if sender.send(task).is_err() {
                return;
            }
        }
    });
    let mut tasks = Vec::with_capacity(n);
    while let Some(task) = receiver.recv().await {
        tasks.push(task);
    }
    let (mut latency, mut service, mut lag) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::new());
    let (mut errors, mut shed, mut transport_errors, mut last) = (0, 0, 0, start);
    for task in tasks {
        let Ok((status, total, serve, late, done)) = task.await else {
            errors += 1;
            continue;
        };
        lag.push(late.as_micros() as u64);
        match status {
            Ok(200..=299) => {
                latency.push(total.as_micros() as u64);
                service.push(serve.as_micros() as u64);
                last = last.max(done);
                continue;
            }
            Ok(429 | 503) => shed += 1,
            Ok(_) => {}
            Err(()) => transport_errors += 1,
        }
        errors += 1;
    }
    lag.sort_unstable();
    let ok = latency.len();
    let elapsed = (last - start).as_secs_f64().max(duration.as_secs_f64());
    OpenLoop {
        target_rps: rate,
        achieved_rps: ok as f64 / elapsed,
        sent: n,
        ok,
        errors,
        shed,
        transport_errors,
        latency_us: dist(latency),
        service_us: dist(service),
        send_lag_p99_us: percentile(&lag, 99.0),
    }
}

/// What one stream looked like to the client.
#[derive(Default)]
struct StreamSample {
    ok: bool,
    ttft_us: Option<u64>,
    /// Gaps between consecutive token events (µs).
    gaps_us: Vec<u64>,
    /// Per token event: receive wall time minus the mock's write time (µs), when present.
    delivery_us: Vec<u64>,
    /// Time to first token without the mock's own delay: request send → mock arrival, plus
    /// first token written → received (µs).
    ttft_net_us: Option<u64>,
    /// The request's part of that: send → the mock's arrival (µs).
    request_us: Option<u64>,
    tokens: u64,
    events: u64,
    reads: u64,
}

/// Whether an SSE event carries generated text (OpenAI delta content or Anthropic text_delta).
fn is_token(event: &[u8]) -> bool {
    if find(event, b"\"text_delta\"").is_some() {
        return true;
    }
    let Some(at) = find(event, b"\"content\":") else { return false };
    event[at + 10..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'"')
}

/// The mock's stamps in a token's text: `@<write µs>` and, on the first, `:<arrival µs>`.
fn stamps(event: &[u8]) -> Option<(u64, Option<u64>)> {
    let at = event.iter().position(|&b| b == b'@')? + 1;
    let number = |from: usize| -> Option<(u64, usize)> {
        let digits = event[from..].iter().take_while(|b| b.is_ascii_digit()).count();
        let value = std::str::from_utf8(&event[from..from + digits]).ok()?.parse().ok()?;
        Some((value, from + digits))
    };
    let (written, end) = number(at)?;
    let arrived = (event.get(end) == Some(&b':')).then(|| number(end + 1).map(|(v, _)| v)).flatten();
    Some((written, arrived))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Run one stream scheduled at `at`; `started` (if given) counts streams that got a token.
async fn one_stream(
    client: Streamer,
    url: String,
    body: Bytes,
    at: Instant,
    started: Option<Arc<AtomicUsize>>,
) -> StreamSample {
    tokio::time::sleep_until(at).await;
    let mut sample = StreamSample::default();
    let _ = tokio::time::timeout(client.timeout, read_stream(&client, &url, &body, at, started, &mut sample))
        .await;
    sample
}

/// Send the request and read its events into `sample`; `sample.ok` once the body ends cleanly
/// with a token in it.
async fn read_stream(
    client: &Streamer,
    url: &str,
    body: &Bytes,
    at: Instant,
    started: Option<Arc<AtomicUsize>>,
    sample: &mut StreamSample,
) -> std::io::Result<()> {
    let sent_wall = wall_us();
    let mut response = client.post(url, body).await?;
    if !(200..300).contains(&response.status) {
        return Ok(());
    }
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    let mut last_token: Option<Instant> = None;
    while response.next(&mut buffer).await? {
        let now = Instant::now();
        let wall = wall_us();
        sample.reads += 1;
        let mut from = 0;
        while let Some(end) = find(&buffer[from..], b"\n\n") {
            let event = &buffer[from..from + end + 2];
            from += end + 2;
            if event.starts_with(b":") {
                continue; // a keep-alive comment
            }
            sample.events += 1;
            if !is_token(event) {
                continue;
            }
            sample.tokens += 1;
            match last_token {
                None => {
                    sample.ttft_us = Some((now - at).as_micros() as u64);
                    if let Some(counter) = &started {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(previous) => sample.gaps_us.push((now - previous).as_micros() as u64),
            }
            last_token = Some(now);
            if let Some((written, arrived)) = stamps(event) {
                let delivery = wall.saturating_sub(written);
                sample.delivery_us.push(delivery);
                if let Some(arrived) = arrived {
                    let request = arrived.saturating_sub(sent_wall);
                    sample.request_us = Some(request);
                    sample.ttft_net_us = Some(request + delivery);
                }
            }
        }
        buffer.drain(..from);
    }
    sample.ok = sample.tokens > 0;
    Ok(())
}

/// `streams` streams, started evenly over `ramp` (all at once when `ramp` is zero), or one
/// after another when `sequential`. Returns the summary.
pub async fn streams(
    client: &Streamer,
    url: &str,
    body: Bytes,
    streams: usize,
    ramp: Duration,
    sequential: bool,
) -> Value {
    let mut samples = Vec::with_capacity(streams);
    if sequential {
        for _ in 0..streams {
            samples
                .push(one_stream(client.clone(), url.to_owned(), body.clone(), Instant::now(), None).await);
        }
    } else {
        let start = Instant::now() + Duration::from_millis(20);
        let mut tasks = JoinSet::new();
        for i in 0..streams {
            let at = start + ramp.mul_f64(i as f64 / streams as f64);
            tasks.spawn(one_stream(client.clone(), url.to_owned(), body.clone(), at, None));
        }
        while let Some(sample) = tasks.join_next().await {
            samples.push(sample.unwrap_or_default());
        }
    }
    summarize(samples)
}

fn summarize(samples: Vec<StreamSample>) -> Value {
    let ok: Vec<&StreamSample> = samples.iter().filter(|s| s.ok).collect();
    let ttft: Vec<u64> = ok.iter().filter_map(|s| s.ttft_us).collect();
    let ttft_net: Vec<u64> = ok.iter().filter_map(|s| s.ttft_net_us).collect();
    let request: Vec<u64> = ok.iter().filter_map(|s| s.request_us).collect();
    let gaps: Vec<u64> = ok.iter().flat_map(|s| s.gaps_us.iter().copied()).collect();
    let delivery: Vec<u64> = ok.iter().flat_map(|s| s.delivery_us.iter().copied()).collect();
    let tokens: Vec<u64> = ok.iter().map(|s| s.tokens).collect();
    let per_stream = |f: fn(&StreamSample) -> u64| {
        if ok.is_empty() { 0.0 } else { ok.iter().map(|s| f(s)).sum::<u64>() as f64 / ok.len() as f64 }
    };
    json!({
        "streams": samples.len(),
        "ok": ok.len(),
        "errors": samples.len() - ok.len(),
        "ttft_us": dist(ttft),
        "ttft_net_us": if ttft_net.is_empty() { Value::Null } else { dist(ttft_net) },
        "request_us": if request.is_empty() { Value::Null } else { dist(request) },
        "gap_us": dist(gaps),
        "delivery_us": if delivery.is_empty() { Value::Null } else { dist(delivery) },
        "tokens_min": tokens.iter().min().copied().unwrap_or(0),
        "tokens_max": tokens.iter().max().copied().unwrap_or(0),
        "events_per_stream": per_stream(|s| s.events),
        "reads_per_stream": per_stream(|s| s.reads),
    })
}

/// Streams held open (for memory): each task reads until the end or until aborted.
pub struct Held {
    pub tasks: JoinSet<()>,
    pub started: Arc<AtomicUsize>,
}

/// Open `n` more streams over `ramp`, adding them to `held`.
pub fn hold(held: &mut Held, client: &Streamer, url: &str, body: &Bytes, n: usize, ramp: Duration) {
    let start = Instant::now() + Duration::from_millis(10);
    for i in 0..n {
        let at = start + ramp.mul_f64(i as f64 / n as f64);
        let stream = one_stream(client.clone(), url.to_owned(), body.clone(), at, Some(held.started.clone()));
        held.tasks.spawn(async move {
            stream.await;
        });
    }
}

/// Wait until `count` held streams got their first token, or `deadline` passes.
pub async fn wait_started(held: &Held, count: usize, deadline: Duration) -> usize {
    let until = Instant::now() + deadline;
    while held.started.load(Ordering::Relaxed) < count && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.started.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_events_are_recognised_in_both_dialects() {
        assert!(is_token(br#"data: {"choices":[{"delta":{"content":"tok "}}]}"#));
        assert!(is_token(br#"data: {"choices": [{"delta": {"content": "tok"}}]}"#));
        assert!(!is_token(br#"data: {"choices":[{"delta":{"content":null}}]}"#));
        assert!(!is_token(br#"data: {"choices":[{"delta":{},"finish_reason":"stop"}]}"#));
        assert!(is_token(
            b"event: content_block_delta\ndata: {\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}"
        ));
        assert!(!is_token(b"event: message_start\ndata: {\"message\":{\"content\":[]}}"));
        assert_eq!(stamps(br#"data: {"delta":{"content":"@1234 "}}"#), Some((1234, None)));
        assert_eq!(stamps(br#"data: {"delta":{"text":"@1234:1200 "}}"#), Some((1234, Some(1200))));
        assert_eq!(stamps(br#"data: {"delta":{"content":"tok"}}"#), None);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
