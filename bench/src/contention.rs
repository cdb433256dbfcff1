//! The contention scenario: a sim neuron with a realistic load time that cannot hold every model
//! its clients need, driven through `cortex serve` twice in the same run — with cortex's swap
//! schedule (`swap_schedule = "elevator"`, the default) and with scheduling switched off
//! (`"arrival"`: swap on demand in arrival order, what llama-swap does). Two workloads:
//! (a) 200 closed-loop clients, half on `od-a`, half on `od-b`, next to a pinned model, where
//! the neuron has room for the pinned model and one of the two; (b) agents each cycling through
//! three models (four calls per model, think time between calls), on a neuron that fits one. Printed per run: failed requests,
//! swaps per minute, p50/p95/p99 end-to-end latency and throughput (figures, not assertions).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::load::{client, percentile};
use crate::procs::{self, NEURON_TOKEN, Proc, free_port};

const ADMIN_KEY: &str = "bench-admin-key";
/// The simulated engine: a 3 s cold load, 50 ms to first token, 50 tokens/s.
const LOAD_MS: u64 = 3_000;
const TTFT_MS: u64 = 50;
const TOKENS_PER_SECOND: f64 = 50.0;

/// One workload: its fleet models (after the neuron table) and how its clients behave.
struct Workload {
    name: &'static str,
    models: String,
    /// Model a client needs for its `step`-th request, and the think time after it.
    plan: fn(client: usize, step: usize) -> (&'static str, Duration),
    clients: usize,
    max_tokens: u64,
    /// Wait for this model to be loaded before the clients start.
    pinned: Option<&'static str>,
}

fn model(id: &str, vram_mb: u64, pinned: bool) -> String {
    let pin = if pinned { "pinned_on = [\"gpu\"]\n" } else { "" };
    format!(
        "[[model]]\nid = \"{id}\"\nharness = \"sim\"\nsource = \"{id}.bin\"\nvram_mb = {vram_mb}\n{pin}\n"
    )
}

fn halves(client: usize, _step: usize) -> (&'static str, Duration) {
    (if client % 2 == 0 { "od-a" } else { "od-b" }, Duration::ZERO)
}

/// An agent works in turns: four calls to one model (a tool runs between them: the think
/// time), then the next model, cycling orchestrator → coder → explorer.
fn agents(client: usize, step: usize) -> (&'static str, Duration) {
    const MODELS: [&str; 3] = ["orchestrator", "coder", "explorer"];
    const CALLS_PER_TURN: usize = 4;
    // Think time 0.5–1.5 s, spread deterministically over agents and steps.
    let think_ms = 500 + ((client * 37 + step * 91) % 1000) as u64;
    (MODELS[(client + step / CALLS_PER_TURN) % 3], Duration::from_millis(think_ms))
}

fn workloads(smoke: bool) -> Vec<Workload> {
    vec![
        Workload {
            name: "alternating",
            models: format!(
                "{}{}{}",
                model("pin", 8_000, true),
                model("od-a", 12_000, false),
                model("od-b", 12_000, false)
            ),
            plan: halves,
            clients: if smoke { 10 } else { 200 },
            max_tokens: 16,
            pinned: Some("pin"),
        },
        Workload {
            name: "agents",
            models: ["orchestrator", "coder", "explorer"].iter().map(|m| model(m, 16_000, false)).collect(),
            plan: agents,
            clients: if smoke { 3 } else { 12 },
            max_tokens: 32,
            pinned: None,
        },
    ]
}

/// Run every workload with both schedules; prints a table and returns the rows.
pub async fn run(bin_dir: &Path, dir: &Path, smoke: bool) -> anyhow::Result<Value> {
    let duration = if smoke { Duration::from_secs(4) } else { Duration::from_secs(60) };
    let mut rows = Vec::new();
    for workload in workloads(smoke) {
        for schedule in ["elevator", "arrival"] {
            let work = dir.join(format!("contention-{}-{schedule}", workload.name));
            std::fs::create_dir_all(&work)?;
            let row = one(bin_dir, &work, &workload, schedule, duration)
                .await
                .with_context(|| format!("contention {} with {schedule}", workload.name))?;
            print_row(&row);
            rows.push(row);
        }
    }
    Ok(json!({
        "engine": {"load_ms": LOAD_MS, "ttft_ms": TTFT_MS, "tokens_per_second": TOKENS_PER_SECOND},
        "duration_s": duration.as_secs_f64(),
        "runs": rows,
    }))
}

fn print_row(row: &Value) {
    println!(
        "contention {:<12} {:<9} clients {:>3}  ok {:>6}  failed {:>4}  swaps {:>3} ({:>5.1}/min)  p50 {:>6.0} ms  p95 {:>6.0} ms  p99 {:>6.0} ms  {:>6.1} req/s",
        row["workload"].as_str().unwrap_or(""),
        row["schedule"].as_str().unwrap_or(""),
        row["clients"],
        row["ok"],
        row["failed"],
        row["swaps"],
        row["swaps_per_min"].as_f64().unwrap_or(0.0),
        row["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        row["latency_ms"]["p95"].as_f64().unwrap_or(0.0),
        row["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        row["throughput_rps"].as_f64().unwrap_or(0.0),
    );
}

/// One workload with one schedule on a fresh neuron and daemon.
async fn one(
    bin_dir: &Path,
    dir: &Path,
    workload: &Workload,
    schedule: &str,
    duration: Duration,
) -> anyhow::Result<Value> {
    let neuron_port = free_port()?;
    let neuron = start_neuron(&bin_dir.join("neuron"), dir, neuron_port)?;
    let http = client(Duration::from_secs(300))?;
    let endpoint = format!("http://127.0.0.1:{neuron_port}");
    procs::eventually("the neuron to listen", Duration::from_secs(30), Some(&neuron), || {
        procs::get_ok(&http, format!("{endpoint}/livez"))
    })
    .await?;
    let port = free_port()?;
    let fleet = format!("[[neuron]]\nname = \"gpu\"\nendpoint = \"{endpoint}\"\n\n{}", workload.models);
    let cortex = start_cortex(&bin_dir.join("cortex"), dir, port, &fleet, schedule)?;
    let gateway = format!("http://127.0.0.1:{port}");
    procs::eventually("cortex to listen", Duration::from_secs(30), Some(&cortex), || {
        procs::get_ok(&http, format!("{gateway}/health"))
    })
    .await?;
    if let Some(pinned) = workload.pinned {
        procs::eventually("the pinned model", Duration::from_secs(60), Some(&cortex), || {
            procs::chat_ok(&http, &gateway, pinned)
        })
        .await?;
    }
    let started = Instant::now();
    let (latencies, failed, sample) = drive(&http, &gateway, workload, duration).await;
    let elapsed = started.elapsed().as_secs_f64();
    let status: Value =
        http.get(format!("{gateway}/admin/status")).bearer_auth(ADMIN_KEY).send().await?.json().await?;
    let swaps = status["contention"]["swaps"]["gpu"].as_u64().unwrap_or(0);
    let mut sorted = latencies;
    sorted.sort_unstable();
    drop((cortex, neuron));
    Ok(json!({
        "workload": workload.name,
        "schedule": schedule,
        "clients": workload.clients,
        "ok": sorted.len(),
        "failed": failed,
        "failure_sample": sample,
        "swaps": swaps,
        "swaps_per_min": swaps as f64 / (elapsed / 60.0),
        "latency_ms": {
            "p50": percentile(&sorted, 50.0),
            "p95": percentile(&sorted, 95.0),
            "p99": percentile(&sorted, 99.0),
            "max": sorted.last().copied().unwrap_or(0),
        },
        "throughput_rps": sorted.len() as f64 / elapsed,
        "elapsed_s": elapsed,
        "rejections": status["contention"]["rejections"],
    }))
}

/// The clients: each follows the workload's plan until `duration` has passed. Returns the
/// latency (ms) of every answered request, the failure count and one failure's text.
async fn drive(
    http: &reqwest::Client,
    gateway: &str,
    workload: &Workload,
    duration: Duration,
) -> (Vec<u64>, usize, Option<String>) {
    let until = Instant::now() + duration;
    let url = format!("{gateway}/v1/chat/completions");
    let mut tasks = JoinSet::new();
    for client in 0..workload.clients {
        let (http, url, plan, max_tokens) = (http.clone(), url.clone(), workload.plan, workload.max_tokens);
        tasks.spawn(async move {
            let (mut latencies, mut failed, mut sample) = (Vec::new(), 0, None);
            let mut step = 0;
            while Instant::now() < until {
                let (model, think) = plan(client, step);
                step += 1;
                let body = json!({"model": model, "max_tokens": max_tokens,
                                  "messages": [{"role": "user", "content": "Work on the task."}]});
                let sent = Instant::now();
                match request(&http, &url, &body).await {
                    Ok(()) => latencies.push(u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX)),
                    Err(failure) => {
                        failed += 1;
                        sample.get_or_insert(failure);
                    }
                }
                tokio::time::sleep(think).await;
            }
            (latencies, failed, sample)
        });
    }
    let (mut latencies, mut failed, mut sample) = (Vec::new(), 0, None);
    while let Some(Ok((mut l, f, s))) = tasks.join_next().await {
        latencies.append(&mut l);
        failed += f;
        sample = sample.or(s);
    }
    (latencies, failed, sample)
}

/// One request read to its end; `Err` says what went wrong.
async fn request(http: &reqwest::Client, url: &str, body: &Value) -> Result<(), String> {
    let response = http.post(url).json(body).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("{status}: body broke off: {e}"))?;
    if status.is_success() { Ok(()) } else { Err(format!("{status} {text}")) }
}

fn start_neuron(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir.join("models"))?;
    std::fs::write(dir.join("token"), NEURON_TOKEN)?;
    let engines = free_port()?;
    let config = format!(
        "name = \"gpu\"\nlisten = \"127.0.0.1:{port}\"\nmodels_dir = \"{models}\"\ntoken_file = \"{token}\"\n\
         log_dir = \"{logs}\"\nport_range = \"{engines}-{end}\"\ndrain_timeout = \"30s\"\n\n\
         [harness.sim]\nkind = \"sim\"\nload_ms = {LOAD_MS}\nttft_ms = {TTFT_MS}\ntokens_per_second = {TOKENS_PER_SECOND}\n\
         devices = [{{ name = \"SimGPU\", vram_mb = 24000 }}]\n",
        models = dir.join("models").display(),
        token = dir.join("token").display(),
        logs = dir.join("logs").display(),
        end = engines.saturating_add(20),
    );
    std::fs::write(dir.join("neuron.toml"), config)?;
    Proc::spawn("neuron", Command::new(bin).arg("--config").arg(dir.join("neuron.toml")), dir)
}

fn start_cortex(bin: &Path, dir: &Path, port: u16, fleet: &str, schedule: &str) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir.join("fleet"))?;
    std::fs::write(dir.join("fleet").join("fleet.toml"), fleet)?;
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{}\"\nneuron_token = \"{NEURON_TOKEN}\"\n\
         admin_key = \"{ADMIN_KEY}\"\n\n[gateway]\nswap_schedule = \"{schedule}\"\nmax_waiting_per_model = 1000\n\n\
         [poll]\ninterval = \"500ms\"\n",
        free_port()?
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
