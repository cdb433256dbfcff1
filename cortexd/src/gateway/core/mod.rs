//! The life of one request, whatever its dialect: the shared state ([`state::AppState`]),
//! authorisation and admission at the door, the pipeline (read, route, forward, record),
//! routing through the swap scheduler, forwarding to the neuron and back, the one error type
//! at the HTTP edge, request metrics and the traffic window.
//!
//! Architecture invariant: nothing here knows a dialect's JSON beyond the envelope every
//! dialect shares (`model`, `stream`, the output-limit fields) and the usage counts read from
//! a finished answer; errors know the dialect only to render themselves in its shape.

pub mod admission;
pub mod auth;
pub mod error;
pub mod forward;
pub mod keys;
pub mod overflow;
pub mod pipeline;
pub mod request_metrics;
pub mod response_index;
pub mod routing;
pub mod scheduler;
pub mod state;
pub mod target;
pub mod traffic;
