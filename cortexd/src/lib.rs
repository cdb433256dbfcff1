//! `cortexd`: the gateway, the reconciler and the CLI of cortex. The only crate that knows the
//! OpenAI and Anthropic JSON dialects; it depends on `plans` for every decision it acts on.

pub mod anthropic;
// pending plans::plan: pub mod apply;
// pending plans::plan: pub mod cli;
// pending plans::plan: pub mod cli_apply;
pub mod config;
// pending plans::plan: pub mod execute;
// pending plans::plan: pub mod fleetdir;
// pending plans::plan: pub mod fleetwatch;
// pending plans::plan: pub mod gateway;
pub mod metrics;
pub mod neuron_client;
pub mod poller;
// pending plans::plan: pub mod reconcile;
// pending plans::plan: pub mod serve;
// pending plans::plan: pub mod status;
pub mod sse;
