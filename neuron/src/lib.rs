//! `neuron`: the node daemon of cortex. It discovers GPUs, starts and stops inference engines
//! (harnesses), and exposes the node API that `cortex` plans against and proxies inference
//! through. See docs/neuron.md for the API and configuration.
//!
//! Code map: `config` (neuron.toml), `probe` (GPU discovery), `harness` (engine kinds),
//! `supervise` (process supervision shared by harnesses), `source` (models_dir confinement),
//! `state` (shared state, read side), `lifecycle` (load/unload/wait/supervisor), `proxy`
//! (inference forwarding), `api` (router and serve), `metrics`, `error`, `swarm` (many
//! simulated neurons in one process, for scale tests).

pub mod api;
pub mod clock;
pub mod config;
pub mod error;
pub mod fence;
pub mod harness;
pub mod lifecycle;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod source;
pub mod state;
pub mod swarm;

pub use api::{app, serve};
pub use config::Config;
pub use state::Neuron;

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
