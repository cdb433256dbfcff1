//! `cortexd`: the gateway, the reconciler and the CLI of cortex. The only crate that knows the
//! OpenAI and Anthropic JSON dialects; it depends on `plans` for every decision it acts on.
//!
//! Layers, each using only those before it (tests/structure.rs holds it so; docs/ARCHITECTURE.md
//! is the map): `config`/`metrics`/`usage` (shared settings, the metrics recorder, the per-key
//! usage store) ← `control` (neuron client, poller, fleet, apply, reconcile, status) ← `cluster`
//! (cluster mode on etcd) ← `gateway` (inference API) ← `operator` (admin API, fleet page) ←
//! `serve` (wires the daemon) ← `cli` (the commands). The modules are private; what the binary,
//! the integration tests and the benchmarks use is re-exported below.

mod config;
mod metrics;
mod usage;

mod control;

#[cfg(feature = "cluster")]
mod cluster;

mod gateway;

mod operator;

mod serve;

mod cli;

// The binary's entry point.
pub use cli::{Cli, run};
// Settings, as cortex.toml declares them.
pub use config::{ClusterConfig, Config, GatewayConfig, PollConfig};
// The inference API in process (the gateway tests): its state, router and server, fed by a
// poller, with the keys and traffic window it keeps.
pub use control::poller::{PollerHandle, now_unix_ms, spawn as spawn_poller};
pub use gateway::core::auth::ApiKeys;
pub use gateway::core::keys::{Keys, limits::day_index};
pub use gateway::core::traffic::Traffic;
pub use gateway::{AppState, app, serve};
// The translations between the client APIs and Chat Completions, pure functions over JSON
// and SSE (the translation tests and benchmarks).
pub use gateway::core::error::Dialect;
pub use gateway::core::forward::EventTransform;
pub use gateway::dialects::chat::translate::Translate;
pub use gateway::dialects::{anthropic, responses};
pub use gateway::transport::sse;
// Cluster mode driven in process against a real etcd (tests/cluster.rs): the election, the
// authority it hands the reconciler, and fenced lifecycle calls.
#[cfg(feature = "cluster")]
pub use cluster::{
    Cluster, Settings as ClusterSettings, record as replica_record, recorded_decisions, session::Prepare,
    start as start_cluster,
};
pub use control::authority::{Authority, LeaseClock, Mandate};
pub use control::cluster_status::Role;
pub use control::decisions::{Decisions, Failure, Part as DecisionPart, Record as DecisionRecord, Resident};
pub use control::execute::{ExecError, ExecTimeouts, run_as};
pub use control::neuron_client::NeuronClient;
pub use control::status::QueueStatus;
