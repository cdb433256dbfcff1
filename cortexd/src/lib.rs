//! `cortexd`: the gateway, the reconciler and the CLI of cortex. The only crate that knows the
//! OpenAI and Anthropic JSON dialects; it depends on `plans` for every decision it acts on.
//!
//! Layers, each using only those before it: `config`/`metrics` (shared settings and recorder) ←
//! `control` (neuron client, poller, fleet, apply, reconcile, status) ← `gateway` (inference API)
//! ← `operator` (admin API, fleet page) ← `serve` (wires the daemon) ← `cli` (the commands).

pub mod config;
pub mod metrics;

pub mod control;

pub mod gateway;

pub mod operator;

pub mod serve;

pub mod cli;
