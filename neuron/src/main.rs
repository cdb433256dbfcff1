//! The `neuron` binary: reads neuron.toml, binds the API, serves until SIGINT/SIGTERM, then
//! stops every engine it started.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// cortex's node daemon: GPU discovery, engine supervision and the node API.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Path to neuron.toml.
    #[arg(long, short, default_value = "neuron.toml")]
    config: PathBuf,
    /// The API token; overrides `token_file`.
    #[arg(long, env = "NEURON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Listen address; overrides `listen` (e.g. 127.0.0.1:0 for tests).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the context chain on one line, without a backtrace.
            eprintln!("neuron: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    neuron::init_logging("info");
    let cli = Cli::parse();
    let mut config = neuron::Config::load(&cli.config)?;
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    let token = neuron::resolve_token(&config, &cli.config, cli.token)?;
    let listen = config.listen;
    // Engines an earlier neuron of this name and port range left behind hold ports and memory
    // that this one is about to lease: stop them first (see docs/neuron.md, engine lifetime).
    let marker = neuron::engine_marker(&config.name, config.port_range);
    let reclaimed = neuron::reclaim_orphans(&marker, config.stop_grace).await;
    if !reclaimed.is_empty() {
        tracing::warn!(pids = ?reclaimed, "reclaimed the port range from {} orphaned engine(s)", reclaimed.len());
    }
    let neuron = neuron::Neuron::from_config(config, token)?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr().context("listener address")?;
    tracing::info!(boot_id = neuron.boot_id(), "neuron {} listening on http://{local}", neuron.config().name);

    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: stopping engines");
        signals.cancel();
    });
    neuron::serve(listener, neuron, shutdown).await.context("serving the API")?;
    tracing::info!("stopped");
    Ok(())
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
        Err(err) => {
            tracing::warn!("cannot watch SIGTERM ({err}); only Ctrl-C stops the neuron");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
