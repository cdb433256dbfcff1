//! The scenarios: open-loop non-streaming latency, streaming (OpenAI pass-through and Anthropic
//! translation) at 1, 100 and 1,000 concurrent streams, memory per open stream, cold load with
//! the real llama.cpp engine, and the planner figures; each path measured in the same run,
//! alternating the order every round.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::load::{self, Held};
use crate::procs::{self, Proc};

/// Mock model for non-streaming requests: answers at once (no timer jitter in the figures).
const NONSTREAM_MODEL: &str = "m-0-0";
/// Mock model for streams: first token after 20 ms, then one every 10 ms (100 tokens/s).
const STREAM_MODEL: &str = "m-20-10";
/// The same at 1,000 streams, at 20 tokens/s each: 20,000 tokens/s in all, about what one
/// large engine batch produces (100 tokens/s × 1,000 would saturate this 2-core machine's
/// client and mock before any gateway).
const STREAM_MODEL_MANY: &str = "m-20-50";
/// Mock model for memory: slow streams (a token every 2 s) held open.
const SLOW_MODEL: &str = "m-10-2000";
/// The sim engine behind the real neuron: 20 ms to first token, 100 tokens/s.
const SIM_TTFT_MS: u64 = 20;
const SIM_TOKENS_PER_SECOND: f64 = 100.0;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Tiny scale: every scenario runs for a moment (checks that the suite works).
    #[arg(long)]
    pub smoke: bool,
    /// Where the JSON report goes.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Folder with the `cortex` and `neuron` binaries (release builds for real figures).
    #[arg(long, env = "CORTEX_BENCH_BIN_DIR")]
    pub bin_dir: PathBuf,
    /// LiteLLM's virtual environment; skipped when absent.
    #[arg(long, env = "LITELLM_VENV")]
    pub litellm_venv: Option<PathBuf>,
    /// nginx, measured as a streaming reverse proxy in front of the same mock (the reference
    /// for what any proxy adds on this machine); skipped when absent.
    #[arg(long, env = "NGINX")]
    pub nginx: Option<PathBuf>,
    /// llama-server for the cold-load scenario; skipped when absent.
    #[arg(long, env = "LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// The folder holding the GGUF model for the cold-load scenario.
    #[arg(long, env = "CORTEX_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// The GGUF file in `models_dir`.
    #[arg(long, env = "GEMMA_GGUF", default_value = "gemma-3-270m-q4_k_m.gguf")]
    pub gguf: String,
    /// Output of `cargo bench -p plans --bench planner`, included in the report.
    #[arg(long)]
    pub planner_log: Option<PathBuf>,
    /// Comma-separated subset of scenarios: nonstream, stream, memory, cold, contention,
    /// sessions; and sessions-llama (the agent sessions on two real llama-server copies), which
    /// runs only when named here.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Non-streaming rates to measure instead of the scale's (comma-separated req/s).
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Concurrent-stream levels to measure instead of the scale's (comma-separated; 1 runs eight
    /// streams one after another, any other level that many at once).
    #[arg(long, value_delimiter = ',')]
    pub streams: Vec<usize>,
    /// Rounds per measurement (paths alternate within each round); default 3 (1 with --smoke).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// The client key cortex asks for: `none`; `api-keys` (cortex.toml's `api_keys`: the
    /// digest looked up, no limits); `fleet` (a fleet `[[key]]` with an rpm, a tpm and a daily
    /// budget, high enough never to refuse: the key check, reservation and accounting all run).
    /// The requests to cortex carry it; the direct paths ignore it.
    #[arg(long, value_enum, default_value = "none")]
    pub keys: KeyMode,
}

/// How cortex's clients are keyed in a run (`--keys`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    None,
    ApiKeys,
    Fleet,
}

/// The secret the bench's clients present when cortex asks for a key.
const BENCH_KEY: &str = "ck-bench";
/// Its SHA-256 digest (`printf %s ck-bench | sha256sum`), as a fleet `[[key]]` declares it.
const BENCH_KEY_SHA256: &str = "d9302fba84cfcc8a197ec8b3c8478124947167d52959fc1a9279af8b36205134";

impl KeyMode {
    /// The secret to present, if cortex asks for one.
    fn secret(self) -> Option<&'static str> {
        (self != KeyMode::None).then_some(BENCH_KEY)
    }

    /// What cortex.toml and the fleet get for this mode.
    fn config(self) -> (&'static str, String) {
        match self {
            KeyMode::None => ("", String::new()),
            KeyMode::ApiKeys => ("api_keys = [\"ck-bench\"]\n", String::new()),
            KeyMode::Fleet => (
                "",
                format!(
                    "\n[[key]]\nname = \"bench\"\nsha256 = \"{BENCH_KEY_SHA256}\"\nrpm = 100000000\n\
                     tpm = 1000000000000\ntokens_per_day = 1000000000000000\n"
                ),
            ),
        }
    }
}

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.named(scenario)
    }

    /// Whether `--only` names `scenario` (the scenarios left out of a plain run).
    fn named(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }
}

/// Sizes of one run: the full benchmark or the smoke test.
struct Scale {
    rounds: usize,
    rates: Vec<f64>,
    neuron_rates: Vec<f64>,
    litellm_rates: Vec<f64>,
    duration: Duration,
    /// (concurrent streams, total streams, sequential)
    stream_levels: Vec<(usize, usize, bool)>,
    stream_tokens: u64,
    memory_levels: Vec<usize>,
    cold_runs: usize,
}

impl Scale {
    fn new(args: &Args) -> Scale {
        let mut scale = Scale::default_for(args);
        if !args.rates.is_empty() {
            scale.rates.clone_from(&args.rates);
        }
        if !args.streams.is_empty() {
            scale.stream_levels =
                args.streams.iter().map(|&c| if c == 1 { (1, 8, true) } else { (c, c, false) }).collect();
        }
        scale
    }

    fn default_for(args: &Args) -> Scale {
        if args.smoke {
            Scale {
                rounds: args.rounds.unwrap_or(1),
                rates: vec![100.0],
                neuron_rates: vec![100.0],
                litellm_rates: vec![10.0],
                duration: Duration::from_millis(500),
                stream_levels: vec![(1, 2, true), (10, 10, false)],
                stream_tokens: 5,
                memory_levels: vec![20, 50],
                cold_runs: 1,
            }
        } else {
            Scale {
                rounds: args.rounds.unwrap_or(3),
                rates: vec![500.0, 1000.0, 2000.0, 3000.0, 4000.0, 6000.0],
                neuron_rates: vec![500.0, 2000.0],
                litellm_rates: vec![25.0, 100.0, 200.0],
                duration: Duration::from_secs(4),
                stream_levels: vec![(1, 8, true), (100, 100, false), (1000, 1000, false)],
                stream_tokens: 50,
                memory_levels: vec![1000, 5000],
                cold_runs: 3,
            }
        }
    }
}

/// Where a path sends its requests.
#[derive(Clone)]
struct Path_ {
    name: &'static str,
    url: String,
    body: Bytes,
}

fn chat_body(model: &str, max_tokens: u64, stream: bool) -> Bytes {
    Bytes::from(
        json!({"model": model, "max_tokens": max_tokens, "stream": stream,
               "messages": [{"role": "user", "content": "Say hello to the benchmark."}]})
        .to_string(),
    )
}

/// The running system under test.
struct Rig {
    /// The key the clients present to cortex (`--keys`).
    key: Option<&'static str>,
    mock_url: String,
    cortex_url: String,
    sim_url: String,
    litellm_url: Option<String>,
    nginx_url: Option<String>,
    cortex: Proc,
    /// Every process of the rig, for `procs::quiesce`.
    pids: Vec<u32>,
    mock: Proc,
    _neuron: Proc,
    _litellm: Option<Proc>,
    nginx: Option<Proc>,
}

async fn start_rig(args: &Args, dir: &Path) -> anyhow::Result<Rig> {
    let http = load::keyed_client(Duration::from_secs(5), args.keys.secret())?;
    let models: Vec<String> =
        [NONSTREAM_MODEL, STREAM_MODEL, STREAM_MODEL_MANY, SLOW_MODEL].map(str::to_owned).to_vec();
    let mock_port = procs::free_port()?;
    let mock = procs::start_mock(dir, "mock", mock_port, &models)?;
    let mock_url = format!("http://127.0.0.1:{mock_port}");
    procs::eventually("the mock to listen", Duration::from_secs(10), Some(&mock), || {
        procs::get_ok(&http, format!("{mock_url}/livez"))
    })
    .await?;

    let (neuron_port, engine_port) = (procs::free_port()?, procs::free_port()?);
    let neuron = procs::start_sim_neuron(
        &args.bin_dir.join("neuron"),
        dir,
        neuron_port,
        engine_port,
        SIM_TTFT_MS,
        SIM_TOKENS_PER_SECOND,
    )?;
    let neuron_url = format!("http://127.0.0.1:{neuron_port}");
    procs::eventually("the neuron to listen", Duration::from_secs(20), Some(&neuron), || {
        procs::get_ok(&http, format!("{neuron_url}/livez"))
    })
    .await?;

    let cortex_port = procs::free_port()?;
    let fleet = format!(
        "[[neuron]]\nname = \"mock\"\nendpoint = \"{mock_url}\"\n\n\
         [[neuron]]\nname = \"simnode\"\nendpoint = \"{neuron_url}\"\n\n\
         [[model]]\nid = \"sim\"\nharness = \"sim\"\nsource = \"sim.gguf\"\nvram_mb = 1000\nmin_devices = 1\npinned_on = [\"simnode\"]\n{}",
        args.keys.config().1
    );
    let cortex = procs::start_cortex_with(
        &args.bin_dir.join("cortex"),
        dir,
        "cortex",
        cortex_port,
        &fleet,
        args.keys.config().0,
    )?;
    let cortex_url = format!("http://127.0.0.1:{cortex_port}");
    procs::eventually("cortex to route to the mock", Duration::from_secs(30), Some(&cortex), || {
        procs::chat_ok(&http, &cortex_url, NONSTREAM_MODEL)
    })
    .await?;
    procs::eventually("cortex to load the sim model", Duration::from_secs(30), Some(&cortex), || {
        procs::chat_ok(&http, &cortex_url, "sim")
    })
    .await?;

    let mut litellm = None;
    let mut litellm_url = None;
    if let Some(venv) = args.litellm_venv.as_ref().filter(|v| v.join("bin/litellm").is_file()) {
        let port = procs::free_port()?;
        let proc = procs::start_litellm(venv, dir, port, &mock_url, &models)?;
        let url = format!("http://127.0.0.1:{port}");
        println!("starting LiteLLM (its start takes a while)...");
        let ready = procs::eventually("LiteLLM to serve", Duration::from_secs(120), Some(&proc), || {
            procs::chat_ok(&http, &url, NONSTREAM_MODEL)
        })
        .await;
        match ready {
            Ok(()) => {
                litellm = Some(proc);
                litellm_url = Some(url);
            }
            Err(error) => println!("LiteLLM is left out of this run: {error}"),
        }
    }
    let (nginx, nginx_url) = start_nginx(args, dir, mock_port, &http).await?.unzip();
    let pids = [Some(&mock), Some(&neuron), Some(&cortex), litellm.as_ref(), nginx.as_ref()]
        .into_iter()
        .flatten()
        .map(Proc::pid)
        .collect();
    Ok(Rig {
        key: args.keys.secret(),
        pids,
        mock_url,
        cortex_url,
        sim_url: format!("http://127.0.0.1:{engine_port}"),
        litellm_url,
        nginx_url,
        cortex,
        mock,
        _neuron: neuron,
        _litellm: litellm,
        nginx,
    })
}

/// nginx in front of the mock, when `--nginx` names one; its URL once it routes.
async fn start_nginx(
    args: &Args,
    dir: &Path,
    mock_port: u16,
    http: &reqwest::Client,
) -> anyhow::Result<Option<(Proc, String)>> {
    let Some(nginx) = args.nginx.as_ref().filter(|n| n.is_file()) else { return Ok(None) };
    let port = procs::free_port()?;
    let proc = procs::start_nginx(nginx, dir, port, mock_port)?;
    let url = format!("http://127.0.0.1:{port}");
    procs::eventually("nginx to route to the mock", Duration::from_secs(10), Some(&proc), || {
        procs::chat_ok(http, &url, NONSTREAM_MODEL)
    })
    .await?;
    Ok(Some((proc, url)))
}

/// Run `paths` in rotating order for `rounds` rounds; `measure` gives one result per path.
/// Before each measurement the rig's processes must be quiet (see `procs::quiesce`).
async fn alternate<F, Fut>(rig: &Rig, paths: &[Path_], rounds: usize, mut measure: F) -> Vec<Vec<Value>>
where
    F: FnMut(Path_) -> Fut,
    Fut: Future<Output = Value>,
{
    let mut results: Vec<Vec<Value>> = vec![Vec::new(); paths.len()];
    for round in 0..rounds {
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            procs::quiesce(&rig.pids, Duration::from_secs(10)).await;
            let value = measure(paths[i].clone()).await;
            results[i].push(value);
        }
    }
    results
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

fn num(value: &Value, pointer: &str) -> f64 {
    value.pointer(pointer).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Median over rounds of `pointer` in `runs`.
fn med(runs: &[Value], pointer: &str) -> f64 {
    median(runs.iter().map(|r| num(r, pointer)).collect())
}

/// Median over rounds of (`runs[i]` − `base[i]`) at `pointer`: paired by round.
fn added(runs: &[Value], base: &[Value], pointer: &str) -> f64 {
    median(runs.iter().zip(base).map(|(r, b)| num(r, pointer) - num(b, pointer)).collect())
}

async fn nonstream(rig: &Rig, scale: &Scale) -> anyhow::Result<Value> {
    let client = load::keyed_client(Duration::from_secs(10), rig.key)?;
    let body = chat_body(NONSTREAM_MODEL, 4, false);
    let sim_body = chat_body("sim", 1, false);
    let direct =
        Path_ { name: "direct", url: format!("{}/v1/chat/completions", rig.mock_url), body: body.clone() };
    let cortex =
        Path_ { name: "cortex", url: format!("{}/v1/chat/completions", rig.cortex_url), body: body.clone() };
    let direct_sim = Path_ {
        name: "direct-sim",
        url: format!("{}/v1/chat/completions", rig.sim_url),
        body: sim_body.clone(),
    };
    let cortex_neuron = Path_ {
        name: "cortex-neuron",
        url: format!("{}/v1/chat/completions", rig.cortex_url),
        body: sim_body,
    };
    // Warm every path's connections.
    for path in [&direct, &cortex, &direct_sim, &cortex_neuron] {
        load::open_loop(&client, &path.url, path.body.clone(), 200.0, Duration::from_millis(300)).await;
    }
    let mut rows = Vec::new();
    let mut sets: Vec<(f64, Vec<Path_>, &str)> = Vec::new();
    for &rate in &scale.rates {
        sets.push((rate, vec![direct.clone(), cortex.clone()], "direct"));
    }
    for &rate in &scale.neuron_rates {
        sets.push((rate, vec![direct_sim.clone(), cortex_neuron.clone()], "direct-sim"));
    }
    if let Some(url) = &rig.litellm_url {
        let litellm =
            Path_ { name: "litellm", url: format!("{url}/v1/chat/completions"), body: body.clone() };
        load::open_loop(&client, &litellm.url, body.clone(), 20.0, Duration::from_millis(500)).await;
        for &rate in &scale.litellm_rates {
            sets.push((rate, vec![direct.clone(), cortex.clone(), litellm.clone()], "direct"));
        }
    }
    for (rate, paths, base) in sets {
        let results = alternate(rig, &paths, scale.rounds, |path| {
            let client = client.clone();
            async move {
                let run = load::open_loop(&client, &path.url, path.body, rate, scale.duration).await;
                serde_json::to_value(run).unwrap_or(Value::Null)
            }
        })
        .await;
        let base_runs =
            paths.iter().position(|p| p.name == base).map(|i| results[i].clone()).unwrap_or_default();
        // What an overload leaves behind: cortex's memory once the rate's runs are over.
        let cortex_rss_kib = rig.cortex.rss_kib().unwrap_or(0);
        for (path, runs) in paths.iter().zip(&results) {
            let row = json!({
                "path": path.name,
                "base": base,
                "rate": rate,
                "achieved_rps": med(runs, "/achieved_rps"),
                "errors": runs.iter().map(|r| num(r, "/errors")).sum::<f64>(),
                "shed": runs.iter().map(|r| num(r, "/shed")).sum::<f64>(),
                "transport_errors": runs.iter().map(|r| num(r, "/transport_errors")).sum::<f64>(),
                "cortex_rss_kib_after": cortex_rss_kib,
                "p50_us": med(runs, "/latency_us/p50"),
                "p99_us": med(runs, "/latency_us/p99"),
                "added_p50_us": added(runs, &base_runs, "/latency_us/p50"),
                "added_p99_us": added(runs, &base_runs, "/latency_us/p99"),
                "send_lag_p99_us": med(runs, "/send_lag_p99_us"),
                "runs": runs,
            });
            println!(
                "nonstream {:>13} @ {:>5} rps: achieved {:>7.0}  p50 {:>8.0} µs  p99 {:>8.0} µs  added p50 {:>7.0} µs  p99 {:>7.0} µs  errors {} (shed {}, no answer {}); cortex RSS after {} MiB",
                path.name,
                rate,
                row["achieved_rps"].as_f64().unwrap_or(f64::NAN),
                row["p50_us"].as_f64().unwrap_or(f64::NAN),
                row["p99_us"].as_f64().unwrap_or(f64::NAN),
                row["added_p50_us"].as_f64().unwrap_or(f64::NAN),
                row["added_p99_us"].as_f64().unwrap_or(f64::NAN),
                row["errors"],
                row["shed"],
                row["transport_errors"],
                cortex_rss_kib / 1024,
            );
            rows.push(row);
        }
    }
    Ok(Value::Array(rows))
}

async fn streaming(rig: &Rig, scale: &Scale) -> anyhow::Result<Value> {
    let client = load::keyed(load::streamer(Duration::from_secs(60)), rig.key);
    let tokens = scale.stream_tokens;
    let mut rows = Vec::new();
    for &(concurrency, total, sequential) in &scale.stream_levels {
        let model = if concurrency >= 1000 { STREAM_MODEL_MANY } else { STREAM_MODEL };
        let chat = chat_body(model, tokens, true);
        let messages = Bytes::from(
            json!({"model": model, "max_tokens": tokens, "stream": true,
                   "messages": [{"role": "user", "content": "Say hello to the benchmark."}]})
            .to_string(),
        );
        let mut level_paths = vec![
            Path_ {
                name: "direct",
                url: format!("{}/v1/chat/completions", rig.mock_url),
                body: chat.clone(),
            },
            Path_ {
                name: "cortex",
                url: format!("{}/v1/chat/completions", rig.cortex_url),
                body: chat.clone(),
            },
            Path_ {
                name: "cortex-anthropic",
                url: format!("{}/v1/messages", rig.cortex_url),
                body: messages,
            },
        ];
        if let Some(url) = &rig.nginx_url {
            let url = format!("{url}/v1/chat/completions");
            level_paths.push(Path_ { name: "nginx", url, body: chat.clone() });
        }
        // The sim engine streams at a fixed 100 tokens/s: the neuron path only where that
        // does not saturate the machine; LiteLLM (one Python worker) likewise.
        if concurrency < 1000 {
            let sim = chat_body("sim", tokens, true);
            let sim_url = format!("{}/v1/chat/completions", rig.sim_url);
            level_paths.push(Path_ { name: "direct-sim", url: sim_url, body: sim.clone() });
            let url = format!("{}/v1/chat/completions", rig.cortex_url);
            level_paths.push(Path_ { name: "cortex-neuron", url, body: sim });
            // One Python worker saturates well below 100 streams of 100 tokens/s.
            if let Some(url) = rig.litellm_url.as_ref().filter(|_| concurrency == 1) {
                let url = format!("{url}/v1/chat/completions");
                level_paths.push(Path_ { name: "litellm", url, body: chat.clone() });
            }
        }
        let ramp = Duration::from_millis((concurrency as u64 / 4).min(250));
        // Warm-up: open the connections this level needs on every path.
        for path in &level_paths {
            load::streams(
                &client,
                &path.url,
                path.body.clone(),
                total.min(concurrency),
                ramp,
                sequential && total > 1,
            )
            .await;
        }
        let pids = (rig.cortex.pid(), rig.mock.pid(), rig.nginx.as_ref().map(Proc::pid));
        let client_pid = std::process::id();
        let results = alternate(rig, &level_paths, scale.rounds, |path| {
            let client = client.clone();
            async move {
                let nginx_us =
                    || pids.2.map_or(0, |p| procs::with_children(p).into_iter().map(procs::cpu_us).sum());
                let cpu =
                    || (procs::cpu_us(pids.0), procs::cpu_us(pids.1), nginx_us(), procs::cpu_us(client_pid));
                let (before, stolen) = (cpu(), procs::steal_us());
                let mut run = load::streams(&client, &path.url, path.body, total, ramp, sequential).await;
                let after = cpu();
                run["steal_ms"] = json!(procs::steal_us().saturating_sub(stolen) as f64 / 1000.0);
                let used = |a: u64, b: u64| a.saturating_sub(b);
                run["cpu"] = cpu_per_event(
                    &run,
                    used(after.0, before.0),
                    used(after.1, before.1),
                    used(after.2, before.2),
                    used(after.3, before.3),
                );
                run
            }
        })
        .await;
        let base_of = |name: &str| {
            if name.ends_with("neuron") || name == "direct-sim" { "direct-sim" } else { "direct" }
        };
        for (path, runs) in level_paths.iter().zip(&results) {
            let base = base_of(path.name);
            let base_runs = level_paths
                .iter()
                .position(|p| p.name == base)
                .map(|i| results[i].clone())
                .unwrap_or_default();
            let row = json!({
                "path": path.name,
                "base": base,
                "concurrency": concurrency,
                "model": model,
                "streams": total,
                "tokens": tokens,
                "errors": runs.iter().map(|r| num(r, "/errors")).sum::<f64>(),
                "ttft_p50_us": med(runs, "/ttft_us/p50"),
                "ttft_p99_us": med(runs, "/ttft_us/p99"),
                "ttft_net_p50_us": med(runs, "/ttft_net_us/p50"),
                "ttft_net_p99_us": med(runs, "/ttft_net_us/p99"),
                "added_ttft_net_p50_us": added(runs, &base_runs, "/ttft_net_us/p50"),
                "added_ttft_net_p99_us": added(runs, &base_runs, "/ttft_net_us/p99"),
                "gap_p50_us": med(runs, "/gap_us/p50"),
                "gap_p99_us": med(runs, "/gap_us/p99"),
                "gap_max_us": med(runs, "/gap_us/max"),
                "delivery_p50_us": med(runs, "/delivery_us/p50"),
                "delivery_p99_us": med(runs, "/delivery_us/p99"),
                "added_ttft_p50_us": added(runs, &base_runs, "/ttft_us/p50"),
                "added_ttft_p99_us": added(runs, &base_runs, "/ttft_us/p99"),
                "added_gap_p50_us": added(runs, &base_runs, "/gap_us/p50"),
                "added_gap_p99_us": added(runs, &base_runs, "/gap_us/p99"),
                "added_delivery_p50_us": added(runs, &base_runs, "/delivery_us/p50"),
                "added_delivery_p99_us": added(runs, &base_runs, "/delivery_us/p99"),
                "tokens_min": runs.iter().map(|r| num(r, "/tokens_min")).fold(f64::INFINITY, f64::min),
                "tokens_max": runs.iter().map(|r| num(r, "/tokens_max")).fold(0.0, f64::max),
                "reads_per_stream": med(runs, "/reads_per_stream"),
                "events_per_stream": med(runs, "/events_per_stream"),
                "events": med(runs, "/cpu/events"),
                "cortex_cpu_ms": med(runs, "/cpu/cortex_us") / 1000.0,
                "mock_cpu_ms": med(runs, "/cpu/mock_us") / 1000.0,
                "cortex_cpu_us_per_event": med(runs, "/cpu/cortex_us_per_event"),
                "mock_cpu_us_per_event": med(runs, "/cpu/mock_us_per_event"),
                "nginx_cpu_us_per_event": med(runs, "/cpu/nginx_us_per_event"),
                "client_cpu_us_per_event": med(runs, "/cpu/client_us_per_event"),
                "steal_ms": med(runs, "/steal_ms"),
                "runs": runs,
            });
            let v = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
            println!(
                "stream {:>16} c={:<5} TTFT p99 {:>7.0} µs (added {:>6.0}; w/o mock timer {:>6.0})  chunk delivery p99 {:>6.0} µs (added {:>6.0})  gap p99 {:>6.0} (added {:>6.0})  max gap {:>6.0}  tokens {}..{}  reads/stream {:.1}  errors {}",
                path.name,
                concurrency,
                v("ttft_p99_us"),
                v("added_ttft_p99_us"),
                v("added_ttft_net_p99_us"),
                v("delivery_p99_us"),
                v("added_delivery_p99_us"),
                v("gap_p99_us"),
                v("added_gap_p99_us"),
                v("gap_max_us"),
                row["tokens_min"],
                row["tokens_max"],
                v("reads_per_stream"),
                row["errors"],
            );
            println!(
                "stream {:>16} c={:<5} CPU per event: cortex {:>5.1} µs, mock {:>5.1} µs, nginx {:>5.1} µs, client {:>5.1} µs  ({:.0} events; CPU cortex {:.0} ms, mock {:.0} ms; 10 ms ticks; stolen by the host {:.0} ms)",
                path.name,
                concurrency,
                v("cortex_cpu_us_per_event"),
                v("mock_cpu_us_per_event"),
                v("nginx_cpu_us_per_event"),
                v("client_cpu_us_per_event"),
                v("events"),
                v("cortex_cpu_ms"),
                v("mock_cpu_ms"),
                v("steal_ms"),
            );
            rows.push(row);
        }
    }
    Ok(Value::Array(rows))
}

/// CPU time cortex, the mock, nginx (0 when not run) and the load generator itself spent during
/// one streaming run, per event the client received (the events the proxy forwarded; an idle
/// proxy's figure is ~0). The client shares the machine's cores with the proxy: its own figure
/// says how much of a tail is the measuring side's.
fn cpu_per_event(run: &Value, cortex_us: u64, mock_us: u64, nginx_us: u64, client_us: u64) -> Value {
    let events = num(run, "/events_per_stream") * num(run, "/ok");
    let per_event = |us: u64| if events > 0.0 { us as f64 / events } else { f64::NAN };
    json!({"events": events, "cortex_us": cortex_us, "mock_us": mock_us, "nginx_us": nginx_us,
           "client_us": client_us,
           "cortex_us_per_event": per_event(cortex_us), "mock_us_per_event": per_event(mock_us),
           "nginx_us_per_event": per_event(nginx_us), "client_us_per_event": per_event(client_us)})
}

async fn memory(rig: &Rig, scale: &Scale) -> anyhow::Result<Value> {
    let client = load::keyed(load::streamer(Duration::from_secs(600)), rig.key);
    let url = format!("{}/v1/chat/completions", rig.cortex_url);
    let body = chat_body(SLOW_MODEL, 1000, true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rig.cortex.rss_kib()?;
    let mut held = Held { tasks: tokio::task::JoinSet::new(), started: Default::default() };
    let mut levels = Vec::new();
    let mut open = 0;
    for &level in &scale.memory_levels {
        let more = level.saturating_sub(open);
        load::hold(&mut held, &client, &url, &body, more, Duration::from_millis(more as u64 / 2));
        open = level;
        let started = load::wait_started(&held, level, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss = rig.cortex.rss_kib()?;
        let per_stream = (rss.saturating_sub(baseline)) as f64 / level as f64;
        println!(
            "memory: {started}/{level} streams open: cortex RSS {rss} KiB (baseline {baseline} KiB) → {per_stream:.1} KiB per stream"
        );
        levels.push(json!({"streams": level, "open": started, "rss_kib": rss, "per_stream_kib": per_stream}));
    }
    held.tasks.abort_all();
    while held.tasks.join_next().await.is_some() {}
    let marginal = match (levels.first(), levels.last()) {
        (Some(a), Some(b)) if levels.len() > 1 => {
            let (ra, rb) = (num(a, "/rss_kib"), num(b, "/rss_kib"));
            let (na, nb) = (num(a, "/streams"), num(b, "/streams"));
            (rb - ra) / (nb - na)
        }
        _ => f64::NAN,
    };
    println!("memory: marginal cost {marginal:.1} KiB per stream");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rig.cortex.rss_kib()?;
    Ok(json!({"model": SLOW_MODEL, "baseline_kib": baseline, "levels": levels,
              "marginal_per_stream_kib": marginal, "after_close_kib": after}))
}

/// Cold load with the real llama.cpp engine: request-to-first-token through cortex for an
/// unloaded model, against the engine's own load time as the neuron reports it.
async fn cold(args: &Args, dir: &Path, scale: &Scale) -> anyhow::Result<Value> {
    let (Some(server), Some(models)) = (&args.llama_server, &args.models_dir) else {
        return Ok(json!({"skipped": "LLAMA_SERVER or CORTEX_MODELS_DIR not set"}));
    };
    if !server.is_file() || !models.join(&args.gguf).is_file() {
        return Ok(
            json!({"skipped": format!("{} or {} missing: run tests/install.sh", server.display(), args.gguf)}),
        );
    }
    let http = load::client(Duration::from_secs(300))?;
    let neuron_port = procs::free_port()?;
    let neuron = procs::start_llama_neuron(
        &args.bin_dir.join("neuron"),
        dir,
        "llamanode",
        neuron_port,
        server,
        models,
    )?;
    let neuron_url = format!("http://127.0.0.1:{neuron_port}");
    procs::eventually("the llama neuron to listen", Duration::from_secs(20), Some(&neuron), || {
        procs::get_ok(&http, format!("{neuron_url}/livez"))
    })
    .await?;
    let port = procs::free_port()?;
    let fleet = format!(
        "[[neuron]]\nname = \"llamanode\"\nendpoint = \"{neuron_url}\"\n\n\
         [[model]]\nid = \"gemma\"\nharness = \"llamacpp\"\nsource = \"{}\"\nmin_devices = 0\nram_mb = 1000\nctx_size = 2048\n",
        args.gguf
    );
    let cortex = procs::start_cortex(&args.bin_dir.join("cortex"), dir, "cortex-cold", port, &fleet)?;
    let cortex_url = format!("http://127.0.0.1:{port}");
    procs::eventually("cortex (cold) to serve", Duration::from_secs(20), Some(&cortex), || {
        procs::get_ok(&http, format!("{cortex_url}/health"))
    })
    .await?;
    let body = chat_body("gemma", 2, true);
    let url = format!("{cortex_url}/v1/chat/completions");
    // The direct baseline talks to the neuron itself, with its token.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", procs::NEURON_TOKEN).parse()?);
    let neuron_http = reqwest::Client::builder().no_proxy().default_headers(headers).build()?;
    let streamer = load::streamer(Duration::from_secs(300));
    let neuron_streamer =
        streamer.clone().with_header("authorization", &format!("Bearer {}", procs::NEURON_TOKEN));
    let load_request = json!({"model": "gemma", "devices": [], "ram_mb": 1000,
        "profile": {"harness": "llamacpp", "source": args.gguf, "ctx_size": 2048, "args": []}});
    let mut runs = Vec::new();
    for run in 0..scale.cold_runs {
        let mut row = json!({});
        // Alternate which goes first: through cortex, or straight to the neuron.
        for which in if run % 2 == 0 { ["cortex", "direct"] } else { ["direct", "cortex"] } {
            // Make sure it is unloaded, and that cortex has seen it.
            let _ = neuron_http
                .post(format!("{neuron_url}/models/unload"))
                .json(&json!({"model": "gemma"}))
                .send()
                .await;
            // Let cortex's poller (1 s) see it, so the cold path starts from a current view.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            procs::eventually(
                "cortex to see gemma unloaded",
                Duration::from_secs(30),
                Some(&cortex),
                || async {
                    let models: Option<Value> = match http.get(format!("{cortex_url}/v1/models")).send().await
                    {
                        Ok(r) => r.json().await.ok(),
                        Err(_) => None,
                    };
                    models
                        .and_then(|m| m["data"].as_array().cloned())
                        .is_some_and(|data| data.iter().any(|m| m["id"] == "gemma" && m["loaded"] == false))
                },
            )
            .await?;
            let started = Instant::now();
            let first_token_ms = if which == "cortex" {
                let cold = load::streams(&streamer, &url, body.clone(), 1, Duration::ZERO, true).await;
                num(&cold, "/ttft_us/p50") / 1000.0
            } else {
                let accepted =
                    neuron_http.post(format!("{neuron_url}/models/load")).json(&load_request).send().await?;
                anyhow::ensure!(
                    accepted.status().is_success(),
                    "the neuron refused the load: {}",
                    accepted.text().await?
                );
                loop {
                    let model: Value = neuron_http
                        .get(format!("{neuron_url}/models/wait?model=gemma&timeout_ms=60000"))
                        .send()
                        .await?
                        .json()
                        .await?;
                    match model["status"].as_str() {
                        Some("loaded") => break,
                        Some("loading") => continue,
                        other => anyhow::bail!("gemma did not load on the neuron: {other:?} {model}"),
                    }
                }
                let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
                let first = load::streams(
                    &neuron_streamer,
                    &format!("{neuron_url}/v1/chat/completions"),
                    body.clone(),
                    1,
                    Duration::ZERO,
                    true,
                )
                .await;
                ready_ms + num(&first, "/ttft_us/p50") / 1000.0
            };
            let models: Value = neuron_http.get(format!("{neuron_url}/models")).send().await?.json().await?;
            let load_ms = models["models"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["id"] == "gemma"))
                .and_then(|m| m["load_duration_ms"].as_f64())
                .unwrap_or(f64::NAN);
            row[format!("{which}_ttft_ms")] = json!(first_token_ms);
            row[format!("{which}_load_ms")] = json!(load_ms);
            if which == "cortex" {
                let warm = load::streams(&streamer, &url, body.clone(), 3, Duration::ZERO, true).await;
                row["warm_ttft_ms"] = json!(num(&warm, "/ttft_us/p50") / 1000.0);
            }
        }
        let (cortex_ms, cortex_load) = (num(&row, "/cortex_ttft_ms"), num(&row, "/cortex_load_ms"));
        let direct_ms = num(&row, "/direct_ttft_ms");
        row["cold_ttft_ms"] = json!(cortex_ms);
        row["load_duration_ms"] = json!(cortex_load);
        row["over_load_ms"] = json!(cortex_ms - cortex_load);
        row["over_load_and_warm_ms"] = json!(cortex_ms - cortex_load - num(&row, "/warm_ttft_ms"));
        row["direct_over_load_ms"] = json!(direct_ms - num(&row, "/direct_load_ms"));
        println!(
            "cold: through cortex {cortex_ms:.0} ms to first token (engine load {cortex_load:.0} ms: +{:.0} ms); \
             straight to the neuron {direct_ms:.0} ms (load {:.0} ms: +{:.0} ms); warm first token {:.0} ms",
            cortex_ms - cortex_load,
            num(&row, "/direct_load_ms"),
            direct_ms - num(&row, "/direct_load_ms"),
            num(&row, "/warm_ttft_ms"),
        );
        runs.push(row);
    }
    let llama_version = procs::version_of(server, &["--version"]);
    drop(cortex);
    drop(neuron);
    Ok(json!({
        "engine": llama_version,
        "model": args.gguf,
        "runs": runs,
        "cold_ttft_ms": med(&runs, "/cold_ttft_ms"),
        "load_duration_ms": med(&runs, "/load_duration_ms"),
        "warm_ttft_ms": med(&runs, "/warm_ttft_ms"),
        "over_load_ms": med(&runs, "/over_load_ms"),
        "over_load_and_warm_ms": med(&runs, "/over_load_and_warm_ms"),
        "direct_ttft_ms": med(&runs, "/direct_ttft_ms"),
        "direct_over_load_ms": med(&runs, "/direct_over_load_ms"),
    }))
}

/// The planner figures from `cargo bench -p plans --bench planner` output.
fn planner(log: Option<&Path>) -> Value {
    let Some(log) = log else { return json!({"skipped": "no --planner-log"}) };
    let Ok(text) = std::fs::read_to_string(log) else {
        return json!({"skipped": format!("cannot read {}", log.display())});
    };
    let mut cases = Vec::new();
    let mut case = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.contains(" models, ") && trimmed.contains(" neurons ") {
            case = trimmed.to_owned();
        } else if let Some(rest) = trimmed.strip_prefix("plan:") {
            let figures: Vec<f64> = rest.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            if let [min, median, ..] = figures[..] {
                cases.push(json!({"case": case, "plan_min_ms": min, "plan_median_ms": median}));
            }
        }
    }
    json!({"output": text, "cases": cases})
}

fn shell(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu =
        cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    json!({
        "cpu": cpu.trim(),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": shell("uname", &["-sr"]),
        "memory": meminfo.lines().next().unwrap_or("").trim(),
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

/// Run everything and build the report.
pub async fn all(args: &Args) -> anyhow::Result<Value> {
    let scale = Scale::new(args);
    let started = Instant::now();
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let dir = std::env::temp_dir().join(format!("cortex-bench-{}-{started_unix}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!(
        "cortex-bench: work folder {} ({} mode)",
        dir.display(),
        if args.smoke { "smoke" } else { "full" }
    );
    let machine_before = machine();
    let litellm_version = args.litellm_venv.as_ref().map(|venv| {
        shell(
            &venv.join("bin/python").display().to_string(),
            &["-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        )
    });
    let mut report = json!({
        "suite": "cortex-bench",
        "format": 1,
        "smoke": args.smoke,
        "started_unix": started_unix,
        "machine": machine_before,
        "commit": {
            "head": shell("git", &["rev-parse", "HEAD"]),
            "dirty": !shell("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        },
        "versions": {
            "cortex": procs::version_of(&args.bin_dir.join("cortex"), &["--version"]),
            "neuron": procs::version_of(&args.bin_dir.join("neuron"), &["--version"]),
            "cortex_bench": env!("CARGO_PKG_VERSION"),
            "rustc": shell("rustc", &["--version"]),
            "litellm": litellm_version,
            "nginx": args.nginx.as_ref().map(|nginx| procs::version_of(nginx, &["-v"])),
            "bin_dir": args.bin_dir.display().to_string(),
        },
        "mock": {
            "nonstream": {"model": NONSTREAM_MODEL, "answer_after_ms": 0, "max_tokens": 4},
            "stream": {"model": STREAM_MODEL, "ttft_ms": 20, "itl_ms": 10, "tokens": scale.stream_tokens},
            "stream_1000": {"model": STREAM_MODEL_MANY, "ttft_ms": 20, "itl_ms": 50, "tokens": scale.stream_tokens},
            "memory": {"model": SLOW_MODEL, "ttft_ms": 10, "itl_ms": 2000},
            "sim_engine": {"ttft_ms": SIM_TTFT_MS, "tokens_per_second": SIM_TOKENS_PER_SECOND},
        },
        "scale": {"rounds": scale.rounds, "duration_s": scale.duration.as_secs_f64(), "rates": scale.rates,
                  "neuron_rates": scale.neuron_rates, "litellm_rates": scale.litellm_rates,
                  "stream_levels": scale.stream_levels, "memory_levels": scale.memory_levels},
    });
    if args.wants("nonstream") || args.wants("stream") || args.wants("memory") {
        let rig = start_rig(args, &dir).await?;
        report["litellm_measured"] = json!(rig.litellm_url.is_some());
        report["client_keys"] = json!(format!("{:?}", args.keys).to_lowercase());
        if args.wants("nonstream") {
            report["nonstream"] = nonstream(&rig, &scale).await?;
        }
        if args.wants("stream") {
            report["streaming"] = streaming(&rig, &scale).await?;
        }
        if args.wants("memory") {
            report["memory"] = memory(&rig, &scale).await?;
        }
    }
    if args.wants("cold") {
        report["cold"] = cold(args, &dir, &scale).await?;
    }
    if args.wants("contention") {
        report["contention"] = crate::contention::run(&args.bin_dir, &dir, args.smoke).await?;
    }
    if args.wants("sessions") {
        report["sessions"]["sim"] = crate::sessions::sim(&args.bin_dir, &dir, args.smoke).await?;
    }
    if args.named("sessions-llama") {
        let (Some(server), Some(models)) = (&args.llama_server, &args.models_dir) else {
            anyhow::bail!("sessions-llama needs LLAMA_SERVER and CORTEX_MODELS_DIR (source tests/env.sh)");
        };
        anyhow::ensure!(
            server.is_file() && models.join(&args.gguf).is_file(),
            "sessions-llama needs {} and {}: run tests/install.sh",
            server.display(),
            models.join(&args.gguf).display()
        );
        report["sessions"]["llama"] =
            crate::sessions::llama(&args.bin_dir, &dir, server, models, &args.gguf).await?;
    }
    report["planner"] = planner(args.planner_log.as_deref());
    report["machine_after"] = machine();
    report["duration_s"] = json!(started.elapsed().as_secs_f64());
    report["targets"] = crate::report::targets(&report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn scale(argv: &[&str]) -> Scale {
        let cli =
            Cli::try_parse_from(["cortex-bench", "--bin-dir", "bin"].into_iter().chain(argv.iter().copied()))
                .expect("arguments parse");
        Scale::new(&cli.args)
    }

    #[test]
    fn streams_replace_the_scales_levels() {
        assert_eq!(scale(&[]).stream_levels, vec![(1, 8, true), (100, 100, false), (1000, 1000, false)]);
        assert_eq!(scale(&["--streams", "1,1000"]).stream_levels, vec![(1, 8, true), (1000, 1000, false)]);
        assert_eq!(scale(&["--smoke", "--streams", "10"]).stream_levels, vec![(10, 10, false)]);
    }
}
