//! `cortexd`: the gateway, the reconciler and the CLI of cortex. The only crate that knows the
//! OpenAI and Anthropic JSON dialects; it depends on `plans` for every decision it acts on.

pub mod anthropic;
pub mod apply;
pub mod cli;
pub mod cli_apply;
pub mod config;
pub mod execute;
pub mod fleetdir;
pub mod fleetwatch;
pub mod gateway;
pub mod metrics;
pub mod neuron_client;
pub mod poller;
pub mod reconcile;
pub mod serve;
pub mod sse;
pub mod status;
