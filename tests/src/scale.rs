//! The fleet-scale scenario shared by `tests/scale.rs` (one size, asserted) and the
//! `scale-bench` binary (several sizes, a table for docs/scale.md): a `neuron-swarm` process
//! with N SIMULATED neurons, a fleet pinning models on them, `cortex plan` timed, the planner
//! timed in-process on the same observed topology, `cortex serve` converging, a pin change
//! applied, and the poller's cycle time read from cortex's own metrics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Daemon, NEURON_TOKEN, Process, binary, cortex, cortex_config, eventually, text, write_atomic};

/// The shape of one run.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub neurons: usize,
    pub devices: usize,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Figures {
    pub size: Size,
    pub pins: usize,
    /// `cortex plan` end to end: start, read the fleet, poll every neuron once, plan, print.
    pub cli_plan: Duration,
    /// `plans::plan` alone on the observed topology (median of several runs).
    pub planner: Duration,
    /// `cortex serve` start → status Synced with every pin loaded.
    pub converge: Duration,
    /// A pin moved in the fleet file → the new placements loaded and status Synced again.
    pub pin_change: Duration,
    /// `cortex_poll_cycle_seconds`: cycles observed, mean, and the bucket bound under which 95% fell.
    pub poll_cycles: u64,
    pub poll_mean: Duration,
    pub poll_p95_bound: f64,
}

/// `neuron-swarm` running `count` simulated neurons.
pub struct Swarm {
    pub process: Process,
    /// The members' `[[neuron]]` tables.
    pub tables: String,
    /// Member names in order.
    pub names: Vec<String>,
}

impl Swarm {
    pub async fn start(dir: &Path, size: Size) -> Swarm {
        let out = dir.join("swarm-neurons.toml");
        let process = Process::spawn(
            Command::new(binary("NEURON_SWARM_BIN", "neuron-swarm"))
                .args(["--count", &size.neurons.to_string(), "--devices", &size.devices.to_string()])
                .args(["--vram-mb", "24000", "--load-ms", "20", "--engine-ports", "20000-39999"])
                .arg("--fleet-out")
                .arg(&out)
                .arg("--dir")
                .arg(dir.join("swarm"))
                .env("NEURON_TOKEN", NEURON_TOKEN),
            dir.join("swarm.log"),
        );
        let tables = eventually("neuron-swarm to listen", Duration::from_secs(60), async || {
            std::fs::read_to_string(&out).ok()
        })
        .await;
        let names = tables
            .lines()
            .filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"').map(str::to_owned))
            .collect();
        Swarm { process, tables, names }
    }
}

/// A model pinned on `neurons`, one simulated GPU of 20 GB.
fn pinned(id: &str, neurons: &[String]) -> String {
    let pins: Vec<String> = neurons.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[[model]]\nid = \"{id}\"\nharness = \"sim\"\nsource = \"{id}.bin\"\nvram_mb = 20000\nmin_devices = 1\npinned_on = [{}]\n\n",
        pins.join(", ")
    )
}

/// One model per five neurons, each pinned on its five: every neuron holds one pin, and moving
/// `m-0` to the next five neurons is the pin change.
fn fleet_text(swarm: &Swarm, moved: bool) -> (String, usize) {
    let mut text = String::from("[policy]\nreconcile = \"auto\"\n\n");
    text.push_str(&swarm.tables);
    let groups: Vec<&[String]> = swarm.names.chunks(5).collect();
    for (index, group) in groups.iter().enumerate() {
        let neurons = if moved && index == 0 { groups.get(1).copied().unwrap_or(group) } else { group };
        text.push_str(&pinned(&format!("m-{index}"), neurons));
    }
    (text, swarm.names.len())
}

/// `metrics_listen` of a config written by [`cortex_config`].
fn metrics_addr(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("metrics_listen = \"")?.strip_suffix('"').map(str::to_owned))
        .unwrap_or_default()
}

/// `(count, sum, p95 bucket bound)` of a Prometheus histogram in exposition `text`.
pub fn histogram(text: &str, name: &str) -> (u64, f64, f64) {
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let count = value("_count");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (bound, count) = rest.split_once("\"} ")?;
            Some((bound.parse().unwrap_or(f64::INFINITY), count.trim().parse().ok()?))
        })
        .collect();
    let p95 = buckets.iter().find(|(_, c)| *c >= 0.95 * count).map_or(f64::INFINITY, |(b, _)| *b);
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a count")]
    (count as u64, value("_sum"), p95)
}

/// Every pin in `fleet` loaded: cortex's own status says Synced.
async fn synced(daemon: &Daemon) -> Option<()> {
    (daemon.status().await["sync"] == "Synced").then_some(())
}

/// Run the scenario; panics (with the logs) when a step fails.
pub async fn run(dir: &Path, size: Size) -> Figures {
    let swarm = Swarm::start(dir, size).await;
    let fleet = dir.join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let file = fleet.join("fleet.toml");
    let (fleet_toml, pins) = fleet_text(&swarm, false);
    write_atomic(&file, &fleet_toml);
    let (config, port) = cortex_config(dir);

    let started = Instant::now();
    let plan = cortex(&["plan", "--fleet", "fleet", "--detailed-exitcode"], &config, dir);
    let cli_plan = started.elapsed();
    let out = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{out}");
    assert!(out.contains(&format!("Plan: {pins} to load, 0 to reload, 0 to unload")), "{out}");

    let planner = time_planner(dir, &config, &file, &fleet_toml);

    let started = Instant::now();
    let daemon = Daemon::start(&fleet, &config, port, dir.join("cortex.log")).await;
    let converge_deadline = Duration::from_secs(60 + 2 * size.neurons as u64 / 10);
    eventually("cortex serve to converge (status Synced)", converge_deadline, async || synced(&daemon).await)
        .await;
    let converge = started.elapsed();

    // Move m-0's pins to the next five neurons: planned and applied by the running daemon.
    let (moved_toml, _) = fleet_text(&swarm, true);
    let target = swarm.names.get(5).cloned().unwrap_or_default();
    let edited = Instant::now();
    write_atomic(&file, &moved_toml);
    let endpoint = swarm_endpoint(&swarm.tables, &target);
    eventually("the moved pin to be loaded", Duration::from_secs(60), async || {
        let models = models_on(&endpoint).await;
        models.iter().any(|(id, status)| id == "m-0" && status == "loaded").then_some(())
    })
    .await;
    eventually("status Synced after the pin change", Duration::from_secs(60), async || synced(&daemon).await)
        .await;
    let pin_change = edited.elapsed();
    // Synced is the daemon's view; a fresh `cortex plan` polls all the neurons itself, and on a
    // starved core some answer it late: it is asked again until every one has answered.
    eventually("a fresh `cortex plan` to find the fleet matching", Duration::from_secs(60), async || {
        let again = cortex(&["plan", "--fleet", "fleet", "--detailed-exitcode"], &config, dir);
        match again.status.code() {
            Some(0) => Some(()),
            Some(2) => None,
            _ => panic!("cortex plan failed: {}", text(&again)),
        }
    })
    .await;

    let metrics = reqwest::get(format!("http://{}/metrics", metrics_addr(&config))).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let (poll_cycles, sum, poll_p95_bound) = histogram(&metrics, "cortex_poll_cycle_seconds");
    assert!(poll_cycles > 0, "cortex_poll_cycle_seconds is exported:\n{metrics}");
    #[expect(clippy::cast_precision_loss, reason = "a count of cycles")]
    let poll_mean = Duration::from_secs_f64(sum / poll_cycles as f64);
    drop(daemon);
    Figures { size, pins, cli_plan, planner, converge, pin_change, poll_cycles, poll_mean, poll_p95_bound }
}

/// The planner alone: the median of 5 runs of `plans::plan` on the topology `cortex topology`
/// observed, with the fleet as cortex loads it.
fn time_planner(dir: &Path, config: &Path, file: &Path, fleet_toml: &str) -> Duration {
    let snapshot = dir.join("topology.json");
    let topology = cortex(&["topology", "--fleet", "fleet", "--out", "topology.json"], config, dir);
    assert!(topology.status.success(), "{}", text(&topology));
    let topology =
        plans::topology::Topology::from_json(&std::fs::read_to_string(&snapshot).unwrap()).unwrap();
    let loaded = plans::fleet::load(&[(file.display().to_string(), fleet_toml.to_owned())]);
    let fleet = loaded.fleet.unwrap_or_else(|| panic!("fleet: {:?}", loaded.diagnostics));
    let options = plans::plan::PlanOptions { now_unix_ms: topology.observed_at_unix_ms, prune: false };
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let plan = plans::plan::plan(&fleet, &topology, &options);
            let elapsed = started.elapsed();
            assert!(plan.infeasible.is_empty(), "every pin fits: {:?}", plan.infeasible);
            elapsed
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// The endpoint of the member `name` in the swarm's `[[neuron]]` tables.
fn swarm_endpoint(tables: &str, name: &str) -> String {
    let mut lines = tables.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{name}\"") {
            let endpoint = lines.next().and_then(|l| l.strip_prefix("endpoint = \"")?.strip_suffix('"'));
            return endpoint.unwrap_or_default().to_owned();
        }
    }
    panic!("{name} is not in the swarm")
}

/// `(id, status)` of the models on the neuron at `endpoint`.
async fn models_on(endpoint: &str) -> Vec<(String, String)> {
    let response =
        reqwest::Client::new().get(format!("{endpoint}/models")).bearer_auth(NEURON_TOKEN).send().await;
    let Ok(response) = response else { return Vec::new() };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["models"]
        .as_array()
        .map(|models| {
            models
                .iter()
                .map(|m| {
                    (m["id"].as_str().unwrap_or("").to_owned(), m["status"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A markdown table of `figures`.
pub fn table(figures: &[Figures]) -> String {
    let mut out = String::from(
        "| neurons | GPUs | pins | `cortex plan` (CLI, incl. polling) | planner alone | serve → Synced | pin change → Synced | poll cycles | poll cycle mean | poll cycle p95 ≤ |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in figures {
        out.push_str(&format!(
            "| {} | {} | {} | {} ms | {:.2} ms | {:.1} s | {:.1} s | {} | {:.1} ms | {} ms |\n",
            f.size.neurons,
            f.size.neurons * f.size.devices,
            f.pins,
            f.cli_plan.as_millis(),
            f.planner.as_secs_f64() * 1000.0,
            f.converge.as_secs_f64(),
            f.pin_change.as_secs_f64(),
            f.poll_cycles,
            f.poll_mean.as_secs_f64() * 1000.0,
            f.poll_p95_bound * 1000.0,
        ));
    }
    out
}

/// Where a bench writes its scratch files: a fresh temporary folder.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    (dir, path)
}
