//! The `neuron-swarm` binary: many SIMULATED neurons in one process (see `neuron::start_swarm`), for
//! scale tests and benchmarks of cortex. Prints (or writes) the `[[neuron]]` tables of a fleet
//! once every member listens; serves until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use neuron::SwarmSpec;
use tokio_util::sync::CancellationToken;

/// Many simulated neurons (sim harness, simulated GPUs) in one process. Everything it reports
/// is SIMULATED.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// How many neurons.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Simulated GPUs per neuron.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// VRAM of each simulated GPU, in MB.
    #[arg(long, default_value_t = 24_000)]
    vram_mb: u64,
    /// Host RAM each neuron reports, in MB.
    #[arg(long, default_value_t = 256_000)]
    ram_mb: u64,
    /// Neuron i listens on 127.0.0.1:(base-port + i); default: any free port.
    #[arg(long)]
    base_port: Option<u16>,
    /// Loopback ports for simulated engines, split evenly between the neurons.
    #[arg(long, default_value = "20000-39999")]
    engine_ports: String,
    /// Names are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Simulated engine load time.
    #[arg(long, default_value_t = 100)]
    load_ms: u64,
    #[arg(long, default_value_t = 20)]
    ttft_ms: u64,
    #[arg(long, default_value_t = 100.0)]
    tokens_per_second: f64,
    /// Prompt cache slots of each simulated engine.
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Time to first token added per uncached prompt token (a token is four characters).
    #[arg(long, default_value_t = 0.0)]
    prefill_ms_per_token: f64,
    /// Folder for the members' (empty) models and log folders; default: a fresh temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the members' `[[neuron]]` tables to this file (atomically) instead of stdout.
    #[arg(long)]
    fleet_out: Option<PathBuf>,
    /// The API token of every member.
    #[arg(long, env = "NEURON_TOKEN", hide_env_values = true)]
    token: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("neuron-swarm: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    neuron::init_logging("warn");
    let cli = Cli::parse();
    let engine_ports = neuron::parse_port_range(&cli.engine_ports)
        .map_err(|message| anyhow::anyhow!("--engine-ports: {message}"))?;
    let temporary = match &cli.dir {
        Some(_) => None,
        None => Some(tempdir()?),
    };
    let dir = cli.dir.clone().or_else(|| temporary.clone()).unwrap_or_default();
    let spec = SwarmSpec {
        count: cli.count,
        prefix: cli.prefix,
        devices_per_neuron: cli.devices,
        device_vram_mb: cli.vram_mb,
        ram_mb: cli.ram_mb,
        base_port: cli.base_port,
        engine_ports,
        load_ms: cli.load_ms,
        ttft_ms: cli.ttft_ms,
        tokens_per_second: cli.tokens_per_second,
        slots: cli.slots,
        prefill_ms_per_token: cli.prefill_ms_per_token,
        dir,
        token: cli.token,
    };
    let shutdown = CancellationToken::new();
    let (members, task) = neuron::start_swarm(&spec, shutdown.clone()).await?;
    let tables = neuron::swarm_fleet_tables(&members);
    match &cli.fleet_out {
        Some(path) => {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, &tables)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => print!("{tables}"),
    }
    eprintln!(
        "neuron-swarm: {} SIMULATED neurons with {} simulated GPUs listening",
        members.len(),
        members.len() * spec.devices_per_neuron
    );
    wait_for_signal().await;
    shutdown.cancel();
    task.await.context("stopping the members")?;
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// A fresh folder under the system temporary folder.
fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("neuron-swarm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
