//! The life of one request, whatever its dialect: the shared state ([`state::AppState`]),
//! authorisation and admission at the door, the pipeline (read, route, forward, record),
//! routing through the swap scheduler, forwarding to the neuron and back, the one error type
//! at the HTTP edge, request metrics and the traffic window.
//!
//! Architecture invariant: nothing here knows a dialect's JSON beyond the envelope every
//! dialect shares (`model`, `stream`, the output-limit fields), the fields affinity routing keys
//! on (session ids and the conversation's stable prefix, digested and never judged) and the
//! usage counts read from a finished answer; errors know the dialect only to render themselves in its shape.

pub(crate) mod admission;
pub(crate) mod affinity;
pub(crate) mod auth;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod keys;
pub(crate) mod overflow;
pub(crate) mod pipeline;
pub(crate) mod request_metrics;
pub(crate) mod response_index;
pub(crate) mod routing;
pub(crate) mod scheduler;
pub(crate) mod state;
pub(crate) mod target;
pub(crate) mod timeline;
pub(crate) mod traffic;
