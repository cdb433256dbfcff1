//! `neuron`: the node daemon of cortex. It discovers GPUs, starts and stops inference engines
//! (harnesses), and exposes the node API that `cortex` plans against and proxies inference
//! through. See docs/neuron.md for the API and configuration.
//!
//! Code map, each layer using only those before it (tests/structure.rs holds it so):
//! `clock`/`error`/`metrics`/`source` (models_dir confinement) ← `config` (neuron.toml) ←
//! `probe` (GPU discovery)/`fence` (lifecycle terms) ← `harness` (engine kinds, and
//! `harness::supervise`, the process supervision they share) ← `state` (shared state, read
//! side) ← `lifecycle` (load/unload/wait/supervisor)/`proxy` (inference forwarding) ← `api`
//! (router and serve) ← `swarm` (many simulated neurons in one process, for scale tests).

mod api;
mod clock;
mod config;
mod error;
mod fence;
mod harness;
mod lifecycle;
mod metrics;
mod probe;
mod proxy;
mod source;
mod state;
mod swarm;

// The daemon: its settings, state and API.
pub use api::{app, serve};
pub use config::{Config, parse_port_range, resolve_token};
pub use state::Neuron;
// Engines a previous run left behind, found by the marker in their environment.
pub use harness::supervise::{engine_marker, reclaim_orphans};
// GPU discovery, and a fixed probe for tests.
pub use probe::{DriverInfo, GpuProbe, StaticProbe};
// Many simulated neurons in one process (the `neuron-swarm` binary, scale tests).
pub use swarm::{SwarmSpec, fleet_tables as swarm_fleet_tables, start as start_swarm};

/// Logs to stderr for the binaries: `RUST_LOG` filters (else `default_level`); colours only on
/// a terminal, so that journald and log files stay plain.
pub fn init_logging(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
