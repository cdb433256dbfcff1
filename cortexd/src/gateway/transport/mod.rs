//! Bytes on a socket: the inference listener and its HTTP/1.1 connections (`listen`, `http1`),
//! the pooled HTTP/1.1 client that forwards to the neurons (`upstream`), and server-sent events
//! (`sse`).
//!
//! Architecture invariant: nothing here imports the rest of the gateway. It knows requests,
//! responses, bodies and events, never models, routes, dialects or the fleet.

pub mod http1;
pub mod listen;
pub mod sse;
pub mod upstream;
