//! `cortexd`: the gateway, the reconciler and the CLI of cortex. The only crate that knows the
//! OpenAI and Anthropic JSON dialects; it depends on `plans` for every decision it acts on.
//!
//! Layers, each using only those before it: `config`/`metrics`/`usage` (shared settings, the
//! metrics recorder, the per-key usage store) ← `control` (neuron client, poller, fleet, apply,
//! reconcile, status) ← `gateway` (inference API) ← `operator` (admin API, fleet page) ← `serve`
//! (wires the daemon) ← `cli` (the commands).

pub mod config;
pub mod metrics;
pub mod usage;

pub mod control;

#[cfg(feature = "cluster")]
pub mod cluster;

pub mod gateway;

pub mod operator;

pub mod serve;

pub mod cli;
