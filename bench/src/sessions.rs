//! The agent-session scenario: coding-agent conversations (a shared ~3k-token system prompt, a
//! unique first message, a tool result added every turn) against several copies of one model,
//! routed by each routing policy in the same run, each on fresh engines and a fresh `cortex
//! serve`. `sessions`: a `neuron-swarm` of simulated neurons (one copy each; the sim engine's
//! prompt cache and per-token prefill cost), 200 sessions of 6 turns over 16 copies.
//! `sessions-llama` (only when named in `--only`): two neurons running llama-server with
//! gemma-3-270m, one copy each, 8 sessions of 6 turns. Printed per policy: cached prompt tokens
//! on turns ≥ 2 as a share of the ideal (the previous turn's prompt and answer), time to first
//! token p50/p95 (all turns, and per turn), and requests per copy against the fair share.
//! Figures, not assertions.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::load::percentile;
use crate::procs::{self, NEURON_TOKEN, Proc, free_port};

/// The routing policies compared, in the order they run.
const POLICIES: [&str; 2] = ["least_busy", "affinity"];
/// The model every session talks to.
const MODEL: &str = "agent";
/// The header that names a session to cortex's affinity routing.
const SESSION_HEADER: &str = "x-session-id";

/// The simulated engine: 20 ms to first token of a cached prompt, plus 0.1 ms per uncached
/// prompt token (10,000 tokens/s of prefill), then 100 tokens/s; 32 prompt cache slots.
const SIM_TTFT_MS: u64 = 20;
const SIM_PREFILL_MS_PER_TOKEN: f64 = 0.1;
const SIM_TOKENS_PER_SECOND: f64 = 100.0;
const SIM_SLOTS: usize = 32;

/// The size of one run.
#[derive(Clone, Copy, Debug)]
struct Shape {
    copies: usize,
    sessions: usize,
    turns: usize,
    /// Tokens each answer may have.
    max_tokens: u64,
    /// The sessions start evenly over this.
    ramp: Duration,
    /// The longest pause between a session's turns (the tool running); each pause is spread
    /// deterministically between a quarter of it and all of it.
    think: Duration,
}

fn sim_shape(smoke: bool) -> Shape {
    if smoke {
        Shape {
            copies: 4,
            sessions: 12,
            turns: 3,
            max_tokens: 8,
            ramp: Duration::from_millis(300),
            think: Duration::from_millis(100),
        }
    } else {
        Shape {
            copies: 16,
            sessions: 200,
            turns: 6,
            max_tokens: 32,
            ramp: Duration::from_secs(5),
            think: Duration::from_secs(2),
        }
    }
}

const LLAMA_SHAPE: Shape = Shape {
    copies: 2,
    sessions: 8,
    turns: 6,
    max_tokens: 16,
    ramp: Duration::from_secs(2),
    think: Duration::from_millis(500),
};

/// Words the prompts are made of (plain English: about 1.3 tokens a word for real tokenizers).
const WORDS: &[&str] = &[
    "the", "agent", "reads", "files", "before", "editing", "them", "and", "runs", "tests", "after", "every",
    "change", "keeps", "answers", "short", "never", "guesses", "paths", "asks", "when", "unsure", "module",
    "function", "error", "build", "commit", "branch", "review", "config", "request", "response", "cache",
    "latency", "token", "stream", "server", "client", "worker", "queue", "index", "schema", "value",
    "record", "field", "parser", "buffer", "limit", "retry", "timeout", "handler", "router", "layer",
    "policy", "session", "replica", "engine", "prompt",
];

/// `chars` characters of deterministic words, varied by `seed`.
fn words(seed: u64, chars: usize) -> String {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(chars + 16);
    while out.len() < chars {
        // xorshift64*: cheap, deterministic, spread enough for text.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let pick = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33;
        out.push_str(WORDS[usize::try_from(pick).unwrap_or(0) % WORDS.len()]);
        out.push(' ');
    }
    out
}

/// The system prompt every session shares: about 12,000 characters (~3k tokens).
fn system_prompt() -> String {
    let mut text =
        String::from("You are a coding agent working in a large repository. Follow these rules.\n");
    for rule in 1..=60 {
        text.push_str(&format!("Rule {rule}: {}\n", words(rule, 190)));
    }
    text
}

/// A session's first message: its own task and a file excerpt (~150 tokens).
fn first_message(session: usize) -> String {
    format!("Task {session}: fix the failing test in this file.\n{}", words(1_000 + session as u64, 560))
}

/// The tool result that opens turn `turn` (≥ 2) of a session (~300 tokens).
fn tool_result(session: usize, turn: usize) -> String {
    format!("Tool output {turn}:\n{}", words(100_000 + (session * 100 + turn) as u64, 1_200))
}

/// One answered turn.
#[derive(Clone, Debug, serde::Serialize)]
struct Turn {
    session: usize,
    turn: usize,
    ttft_ms: f64,
    prompt_tokens: u64,
    cached_tokens: u64,
    completion_tokens: u64,
}

/// Drive every session through `gateway`; returns the answered turns and the failures.
async fn drive(http: &reqwest::Client, gateway: &str, shape: Shape) -> (Vec<Turn>, Vec<String>) {
    let url = format!("{gateway}/v1/chat/completions");
    let system = std::sync::Arc::new(system_prompt());
    let mut tasks = JoinSet::new();
    for session in 0..shape.sessions {
        let (http, url, system) = (http.clone(), url.clone(), system.clone());
        tasks.spawn(async move { one_session(&http, &url, &system, shape, session).await });
    }
    let (mut turns, mut failures) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((mut t, f)) => {
                turns.append(&mut t);
                failures.extend(f);
            }
            Err(e) => failures.push(format!("a session task failed: {e}")),
        }
    }
    turns.sort_by_key(|t| (t.session, t.turn));
    (turns, failures)
}

async fn one_session(
    http: &reqwest::Client,
    url: &str,
    system: &str,
    shape: Shape,
    session: usize,
) -> (Vec<Turn>, Option<String>) {
    let offset = shape.ramp.mul_f64(session as f64 / shape.sessions.max(1) as f64);
    tokio::time::sleep(offset).await;
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": first_message(session)}),
    ];
    let mut turns = Vec::new();
    for turn in 1..=shape.turns {
        if turn > 1 {
            messages.push(json!({"role": "user", "content": tool_result(session, turn)}));
        }
        let body = json!({"model": MODEL, "messages": messages, "max_tokens": shape.max_tokens,
                          "stream": true, "stream_options": {"include_usage": true}});
        match one_turn(http, url, &format!("session-{session}"), &body).await {
            Ok((mut answered, text)) => {
                (answered.session, answered.turn) = (session, turn);
                turns.push(answered);
                messages.push(json!({"role": "assistant", "content": text}));
            }
            Err(e) => return (turns, Some(format!("session {session} turn {turn}: {e}"))),
        }
        // Between a quarter and all of `think`, spread over sessions and turns.
        let spread = ((session * 31 + turn * 17) % 100) as f64 / 100.0;
        tokio::time::sleep(shape.think.mul_f64(0.25 + 0.75 * spread)).await;
    }
    (turns, None)
}

/// One streamed turn: its time to first token, usage, and the answer's text.
async fn one_turn(
    http: &reqwest::Client,
    url: &str,
    session: &str,
    body: &Value,
) -> anyhow::Result<(Turn, String)> {
    let sent = Instant::now();
    let response = http.post(url).header(SESSION_HEADER, session).json(body).send().await?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!("{status}: {}", response.text().await.unwrap_or_default());
    }
    let mut stream = response.bytes_stream();
    let (mut buffer, mut text, mut ttft, mut usage) = (Vec::new(), String::new(), None, Value::Null);
    let (mut timings, mut head) = (Value::Null, String::new());
    while let Some(bytes) = stream.next().await {
        let bytes = bytes?;
        if head.len() < 300 {
            head.push_str(&String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
        }
        buffer.extend_from_slice(&bytes);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let Some(data) = std::str::from_utf8(&event).ok().and_then(|e| e.trim().strip_prefix("data:"))
            else {
                continue;
            };
            let Ok(chunk) = serde_json::from_str::<Value>(data.trim()) else { continue };
            if chunk["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                ttft.get_or_insert_with(|| sent.elapsed());
                text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
            }
            if chunk["usage"].is_object() {
                usage = chunk["usage"].clone();
            }
            if chunk["timings"].is_object() {
                timings = chunk["timings"].clone();
            }
        }
    }
    let ttft = ttft.with_context(|| format!("the stream carried no answer: {head}"))?;
    let count = |v: &Value| v.as_u64();
    let prompt_tokens = count(&usage["prompt_tokens"]).context("the stream carried no usage")?;
    let cached_tokens = count(&usage["prompt_tokens_details"]["cached_tokens"])
        .or_else(|| count(&timings["cache_n"]))
        .unwrap_or(0);
    let turn = Turn {
        session: 0,
        turn: 0,
        ttft_ms: ttft.as_secs_f64() * 1000.0,
        prompt_tokens,
        cached_tokens,
        completion_tokens: count(&usage["completion_tokens"]).unwrap_or(0),
    };
    Ok((turn, text))
}

/// The figures of one policy's run from its turns and requests per copy.
fn summarize(
    policy: &str,
    shape: Shape,
    turns: &[Turn],
    per_copy: &[(String, f64)],
    failures: &[String],
) -> Value {
    // The ideal cache of turn N ≥ 2: everything but the new turn, i.e. turn N−1's prompt and
    // answer as the engine counted them (at most the prompt less its last token).
    let (mut cached, mut ideal) = (0u64, 0u64);
    let mut by_turn: Vec<(Vec<u64>, u64, u64)> = vec![(Vec::new(), 0, 0); shape.turns + 1];
    for pair in turns.windows(2) {
        let (before, now) = (&pair[0], &pair[1]);
        if before.session != now.session || now.turn != before.turn + 1 {
            continue;
        }
        let best = (before.prompt_tokens + before.completion_tokens).min(now.prompt_tokens.saturating_sub(1));
        cached += now.cached_tokens.min(best);
        ideal += best;
        by_turn[now.turn].1 += now.cached_tokens.min(best);
        by_turn[now.turn].2 += best;
    }
    for t in turns {
        by_turn[t.turn].0.push((t.ttft_ms * 1000.0) as u64);
    }
    let mut all: Vec<u64> = turns.iter().map(|t| (t.ttft_ms * 1000.0) as u64).collect();
    all.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let per_turn: Vec<Value> = by_turn
        .iter_mut()
        .enumerate()
        .skip(1)
        .map(|(turn, (ttfts, cached, ideal))| {
            ttfts.sort_unstable();
            json!({"turn": turn, "requests": ttfts.len(),
                   "ttft_p50_ms": ms(percentile(ttfts, 50.0)), "ttft_p95_ms": ms(percentile(ttfts, 95.0)),
                   "cached_tokens": *cached, "ideal_tokens": *ideal,
                   "cached_share": if *ideal > 0 { *cached as f64 / *ideal as f64 } else { f64::NAN }})
        })
        .collect();
    let total: f64 = per_copy.iter().map(|(_, n)| n).sum();
    let fair = total / shape.copies.max(1) as f64;
    let busiest = per_copy.iter().map(|(_, n)| *n).fold(0.0, f64::max);
    json!({
        "policy": policy,
        "copies": shape.copies,
        "sessions": shape.sessions,
        "turns": shape.turns,
        "answered": turns.len(),
        "failed": failures.len(),
        "failure_sample": failures.first(),
        "cached_tokens": cached,
        "ideal_tokens": ideal,
        "cached_share": if ideal > 0 { cached as f64 / ideal as f64 } else { f64::NAN },
        "prompt_tokens": turns.iter().map(|t| t.prompt_tokens).sum::<u64>(),
        "ttft_p50_ms": ms(percentile(&all, 50.0)),
        "ttft_p95_ms": ms(percentile(&all, 95.0)),
        "per_turn": per_turn,
        "requests_per_copy": per_copy.iter().map(|(n, c)| json!({"neuron": n, "requests": c})).collect::<Vec<_>>(),
        "copies_serving": per_copy.iter().filter(|(_, n)| *n > 0.0).count(),
        "fair_share": fair,
        "max_over_fair": if fair > 0.0 { busiest / fair } else { f64::NAN },
    })
}

fn print_policy(engine: &str, row: &Value) {
    let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "sessions {engine:<5} {:<10} {} copies, {} sessions × {} turns: answered {} failed {}  cached {:.1}% of ideal (turns ≥ 2)  TTFT p50 {:.0} ms p95 {:.0} ms  busiest copy {:.2}× fair share ({} of {} copies served)",
        row["policy"].as_str().unwrap_or(""),
        row["copies"],
        row["sessions"],
        row["turns"],
        row["answered"],
        row["failed"],
        100.0 * f("cached_share"),
        f("ttft_p50_ms"),
        f("ttft_p95_ms"),
        f("max_over_fair"),
        row["copies_serving"],
        row["copies"],
    );
    for turn in row["per_turn"].as_array().into_iter().flatten() {
        println!(
            "    turn {}: TTFT p50 {:>7.1} ms p95 {:>7.1} ms  cached {:>5.1}% of ideal",
            turn["turn"],
            turn["ttft_p50_ms"].as_f64().unwrap_or(f64::NAN),
            turn["ttft_p95_ms"].as_f64().unwrap_or(f64::NAN),
            100.0 * turn["cached_share"].as_f64().unwrap_or(f64::NAN),
        );
    }
}

/// The goals, printed against the measured figures (never asserted).
fn goals(engine: &str, rows: &[Value]) -> Value {
    let find = |policy: &str| rows.iter().find(|r| r["policy"] == policy);
    let (Some(affinity), Some(least)) = (find("affinity"), find("least_busy")) else {
        println!("sessions {engine}: the goals compare affinity with least_busy; only one policy ran");
        return Value::Null;
    };
    let f = |row: &Value, k: &str| row[k].as_f64().unwrap_or(f64::NAN);
    let cached = f(affinity, "cached_share");
    let ttft_ratio = f(affinity, "ttft_p50_ms") / f(least, "ttft_p50_ms");
    let busiest = f(affinity, "max_over_fair");
    let verdict = |met: bool| if met { "MET   " } else { "MISSED" };
    println!("sessions {engine}: goals for affinity routing");
    println!(
        "  {}  cached prompt tokens ≥ 90% of ideal on turns ≥ 2: {:.1}%",
        verdict(cached >= 0.9),
        100.0 * cached
    );
    println!(
        "  {}  TTFT p50 ≤ 1/3 of least_busy's: {:.3}× ({:.0} ms against {:.0} ms)",
        verdict(ttft_ratio <= 1.0 / 3.0),
        ttft_ratio,
        f(affinity, "ttft_p50_ms"),
        f(least, "ttft_p50_ms")
    );
    println!("  {}  no copy above 1.25× its fair share: {busiest:.2}×", verdict(busiest <= 1.25));
    json!({"cached_share": cached, "cached_met": cached >= 0.9, "ttft_p50_ratio": ttft_ratio,
           "ttft_met": ttft_ratio <= 1.0 / 3.0, "max_over_fair": busiest, "fair_met": busiest <= 1.25})
}

/// The sim part: a fresh swarm and `cortex serve` per policy.
pub async fn sim(bin_dir: &Path, dir: &Path, smoke: bool) -> anyhow::Result<Value> {
    let shape = sim_shape(smoke);
    let mut rows = Vec::new();
    for policy in POLICIES {
        let work = dir.join(format!("sessions-sim-{policy}"));
        std::fs::create_dir_all(&work)?;
        let swarm = Swarm::start(bin_dir, &work, shape.copies).await?;
        let pins = swarm.names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        let model = format!(
            "[[model]]\nid = \"{MODEL}\"\nharness = \"sim\"\nsource = \"{MODEL}.bin\"\nvram_mb = 20000\nmin_devices = 1\npinned_on = [{pins}]\n"
        );
        let row = one_policy(bin_dir, &work, policy, shape, &swarm.tables, &model, Some(&swarm.proc))
            .await
            .with_context(|| format!("sessions (sim) with {policy}"))?;
        print_policy("sim", &row);
        rows.push(row);
    }
    let goals = goals("sim", &rows);
    Ok(json!({
        "engine": {"kind": "sim", "ttft_ms": SIM_TTFT_MS, "prefill_ms_per_token": SIM_PREFILL_MS_PER_TOKEN,
                   "tokens_per_second": SIM_TOKENS_PER_SECOND, "slots": SIM_SLOTS},
        "shape": shape_json(shape),
        "runs": rows,
        "goals": goals,
    }))
}

/// The real-engine part: two llama-server neurons, one copy each, fresh per policy.
pub async fn llama(
    bin_dir: &Path,
    dir: &Path,
    server: &Path,
    models: &Path,
    gguf: &str,
) -> anyhow::Result<Value> {
    let shape = LLAMA_SHAPE;
    let mut rows = Vec::new();
    let http = crate::load::client(Duration::from_secs(10))?;
    for policy in POLICIES {
        let work = dir.join(format!("sessions-llama-{policy}"));
        std::fs::create_dir_all(&work)?;
        let mut neurons = Vec::new();
        let mut tables = String::new();
        for index in 0..shape.copies {
            let name = format!("llama-{index}");
            let port = free_port()?;
            let neuron =
                procs::start_llama_neuron(&bin_dir.join("neuron"), &work, &name, port, server, models)?;
            let url = format!("http://127.0.0.1:{port}");
            procs::eventually("a llama neuron to listen", Duration::from_secs(30), Some(&neuron), || {
                procs::get_ok(&http, format!("{url}/livez"))
            })
            .await?;
            tables.push_str(&format!("[[neuron]]\nname = \"{name}\"\nendpoint = \"{url}\"\n\n"));
            neurons.push((name, neuron));
        }
        let pins = neurons.iter().map(|(n, _)| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        let model = format!(
            "[[model]]\nid = \"{MODEL}\"\nharness = \"llamacpp\"\nsource = \"{gguf}\"\nmin_devices = 0\nram_mb = 1000\nctx_size = 16384\npinned_on = [{pins}]\n"
        );
        let row = one_policy(bin_dir, &work, policy, shape, &tables, &model, neurons.first().map(|(_, p)| p))
            .await
            .with_context(|| format!("sessions (llama-server) with {policy}"))?;
        print_policy("llama", &row);
        rows.push(row);
    }
    let goals = goals("llama", &rows);
    Ok(json!({
        "engine": {"kind": "llama-server", "version": procs::version_of(server, &["--version"]), "model": gguf},
        "shape": shape_json(shape),
        "runs": rows,
        "goals": goals,
    }))
}

fn shape_json(shape: Shape) -> Value {
    json!({"copies": shape.copies, "sessions": shape.sessions, "turns": shape.turns,
           "max_tokens": shape.max_tokens, "ramp_s": shape.ramp.as_secs_f64(),
           "think_max_s": shape.think.as_secs_f64(), "system_prompt_chars": system_prompt().len(),
           "first_message_chars": first_message(0).len(), "tool_result_chars": tool_result(0, 2).len()})
}

/// One policy over neurons already listening: `cortex serve`, every copy loaded, the sessions.
async fn one_policy(
    bin_dir: &Path,
    dir: &Path,
    policy: &str,
    shape: Shape,
    neuron_tables: &str,
    model: &str,
    neuron: Option<&Proc>,
) -> anyhow::Result<Value> {
    let (port, metrics_port) = (free_port()?, free_port()?);
    let fleet = format!("{}{neuron_tables}{model}", policy_table(policy));
    let cortex = start_cortex(&bin_dir.join("cortex"), dir, port, metrics_port, &fleet)?;
    let gateway = format!("http://127.0.0.1:{port}");
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let http = crate::load::client(Duration::from_secs(600))?;
    let copies = shape.copies;
    let loaded = procs::eventually("every copy loaded", Duration::from_secs(300), Some(&cortex), || async {
        scrape(&http, &metrics).await.is_some_and(|text| loaded_copies(&text) >= copies)
    })
    .await;
    if let Err(e) = loaded {
        let tail = neuron.map(Proc::log_tail).unwrap_or_default();
        return Err(e.context(tail));
    }
    let before = requests_per_copy(&scrape(&http, &metrics).await.unwrap_or_default());
    let started = Instant::now();
    let (turns, failures) = drive(&http, &gateway, shape).await;
    let elapsed = started.elapsed();
    let after = requests_per_copy(&scrape(&http, &metrics).await.unwrap_or_default());
    let per_copy: Vec<(String, f64)> = after
        .iter()
        .map(|(name, n)| (name.clone(), n - before.iter().find(|(b, _)| b == name).map_or(0.0, |(_, v)| *v)))
        .collect();
    drop(cortex);
    let mut row = summarize(policy, shape, &turns, &per_copy, &failures);
    row["elapsed_s"] = json!(elapsed.as_secs_f64());
    row["loadavg_after"] = json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    Ok(row)
}

/// The fleet's `[policy]` table for `policy`.
fn policy_table(policy: &str) -> String {
    format!("[policy]\nrouting = \"{policy}\"\n\n")
}

async fn scrape(http: &reqwest::Client, url: &str) -> Option<String> {
    http.get(url).send().await.ok()?.text().await.ok()
}

/// The value of `label` in a Prometheus sample line.
fn label<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let start = line.find(&format!("{label}=\""))? + label.len() + 2;
    let rest = &line[start..];
    Some(&rest[..rest.find('"')?])
}

/// Copies of the model cortex sees loaded (`cortex_model_loaded`).
fn loaded_copies(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("cortex_model_loaded{") && label(l, "model") == Some(MODEL))
        .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0))
        .count()
}

/// Requests cortex forwarded to each neuron for the model, every outcome and route
/// (`cortex_requests_total`), by neuron name.
fn requests_per_copy(text: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("cortex_requests_total{")) {
        if label(line, "model") != Some(MODEL) {
            continue;
        }
        let (Some(neuron), Some(value)) =
            (label(line, "neuron"), line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        else {
            continue;
        };
        match out.iter_mut().find(|(n, _)| n == neuron) {
            Some((_, total)) => *total += value,
            None => out.push((neuron.to_owned(), value)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A `neuron-swarm` of simulated neurons, one simulated GPU each.
struct Swarm {
    proc: Proc,
    tables: String,
    names: Vec<String>,
}

impl Swarm {
    async fn start(bin_dir: &Path, dir: &Path, count: usize) -> anyhow::Result<Swarm> {
        let out = dir.join("swarm-neurons.toml");
        let engines = free_port()?;
        let proc = Proc::spawn(
            "neuron-swarm",
            Command::new(bin_dir.join("neuron-swarm"))
                .args(["--count", &count.to_string(), "--devices", "1", "--vram-mb", "24000"])
                .args(["--load-ms", "50", "--ttft-ms", &SIM_TTFT_MS.to_string()])
                .args(["--tokens-per-second", &SIM_TOKENS_PER_SECOND.to_string()])
                .args(["--slots", &SIM_SLOTS.to_string()])
                .args(["--prefill-ms-per-token", &SIM_PREFILL_MS_PER_TOKEN.to_string()])
                .args(["--engine-ports", &format!("{engines}-{}", engines.saturating_add(4 * count as u16))])
                .arg("--prefix")
                .arg("sim")
                .arg("--fleet-out")
                .arg(&out)
                .arg("--dir")
                .arg(dir.join("swarm"))
                .env("NEURON_TOKEN", NEURON_TOKEN),
            dir,
        )?;
        procs::eventually("neuron-swarm to listen", Duration::from_secs(60), Some(&proc), || async {
            out.is_file()
        })
        .await?;
        let tables = std::fs::read_to_string(&out)?;
        let names = tables
            .lines()
            .filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"').map(str::to_owned))
            .collect();
        Ok(Swarm { proc, tables, names })
    }
}

fn start_cortex(bin: &Path, dir: &Path, port: u16, metrics_port: u16, fleet: &str) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir.join("fleet"))?;
    std::fs::write(dir.join("fleet").join("fleet.toml"), fleet)?;
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nneuron_token = \"{NEURON_TOKEN}\"\n\n\
         [poll]\ninterval = \"1s\"\nunreachable_after = 10\n"
    );
    std::fs::write(dir.join("cortex.toml"), config)?;
    Proc::spawn(
        "cortex",
        Command::new(bin)
            .arg("serve")
            .arg("--fleet")
            .arg(dir.join("fleet"))
            .arg("--config")
            .arg(dir.join("cortex.toml"))
            .env("RUST_LOG", "warn"),
        dir,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(session: usize, turn: usize, prompt: u64, cached: u64, ttft_ms: f64) -> Turn {
        Turn { session, turn, ttft_ms, prompt_tokens: prompt, cached_tokens: cached, completion_tokens: 10 }
    }

    #[test]
    fn the_cached_share_counts_turns_after_the_first_against_the_previous_prompt_and_answer() {
        let shape = Shape {
            copies: 2,
            sessions: 2,
            turns: 2,
            max_tokens: 10,
            ramp: Duration::ZERO,
            think: Duration::ZERO,
        };
        let turns = [
            turn(0, 1, 1000, 0, 300.0),
            turn(0, 2, 1100, 1010, 30.0),
            turn(1, 1, 1000, 900, 100.0),
            turn(1, 2, 1100, 505, 200.0),
        ];
        let per_copy = [("a".to_owned(), 3.0), ("b".to_owned(), 1.0)];
        let row = summarize("affinity", shape, &turns, &per_copy, &[]);
        // Ideal: 1000 + 10 per session on turn 2; the first turns do not count.
        assert_eq!(row["ideal_tokens"], 2020);
        assert_eq!(row["cached_tokens"], 1010 + 505);
        assert_eq!(row["per_turn"][1]["requests"], 2);
        assert_eq!(row["fair_share"], 2.0);
        assert_eq!(row["max_over_fair"], 1.5);
        assert_eq!(row["copies_serving"], 2);
    }

    #[test]
    fn requests_and_loaded_copies_are_read_from_cortex_metrics() {
        let text = "cortex_model_loaded{neuron=\"sim-0\",model=\"agent\"} 1\n\
                    cortex_model_loaded{neuron=\"sim-1\",model=\"agent\"} 0\n\
                    cortex_model_loaded{neuron=\"sim-2\",model=\"other\"} 1\n\
                    cortex_requests_total{model=\"agent\",neuron=\"sim-1\",route=\"chat\",status=\"ok\",key=\"\"} 7\n\
                    cortex_requests_total{model=\"agent\",neuron=\"sim-1\",route=\"chat\",status=\"upstream_error\",key=\"\"} 1\n\
                    cortex_requests_total{model=\"agent\",neuron=\"sim-0\",route=\"chat\",status=\"ok\",key=\"\"} 2\n\
                    cortex_requests_total{model=\"other\",neuron=\"sim-0\",route=\"chat\",status=\"ok\",key=\"\"} 5\n";
        assert_eq!(loaded_copies(text), 1);
        assert_eq!(requests_per_copy(text), vec![("sim-0".to_owned(), 2.0), ("sim-1".to_owned(), 8.0)]);
    }

    #[test]
    fn the_prompts_are_deterministic_and_about_the_documented_size() {
        assert_eq!(system_prompt(), system_prompt());
        assert!((11_000..13_500).contains(&system_prompt().len()), "{}", system_prompt().len());
        assert_ne!(first_message(1), first_message(2));
        assert_ne!(tool_result(1, 2), tool_result(1, 3));
        assert!((1_150..1_300).contains(&tool_result(3, 4).len()));
    }
}
