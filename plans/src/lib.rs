//! `plans`: cortex's pure core. Desired state ([`fleet`]), observed state ([`topology`], and the
//! neuron wire types in [`wire`]), placement, the plan and its rendering.
//!
//! Architecture invariant: this crate does no IO. No tokio, no reqwest, no filesystem, no clock,
//! no environment. Input is `(path, text)` pairs and values; output is values and diagnostics.
//! The current time is an input (`now_unix_ms`) like any other, so output is reproducible.

pub mod diagnostic;
pub mod duration;
pub mod fleet;
pub mod maintenance;
pub mod plan;
pub mod topology;
pub mod wire;
