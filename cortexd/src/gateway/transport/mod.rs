//! Bytes on a socket: the pooled HTTP/1.1 client that forwards to the neurons (`upstream`) and
//! the framing it reads their answers with (`http1`), and server-sent events (`sse`). Clients
//! are served by the `cortex-listener` crate (`gateway::serve`).
//!
//! Architecture invariant: nothing here imports the rest of the gateway. It knows requests,
//! responses, bodies and events, never models, routes, dialects or the fleet.

pub(crate) mod http1;
pub mod sse;
pub(crate) mod upstream;
