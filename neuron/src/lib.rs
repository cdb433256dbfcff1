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
pub mod config;
pub mod error;
pub mod harness;
pub mod lifecycle;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod source;
pub mod state;
pub mod supervise;
pub mod swarm;

pub use api::{app, serve};
pub use config::Config;
pub use state::Neuron;
