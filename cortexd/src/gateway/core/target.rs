//! Where a request goes: the copy of a model (neuron, harness) the scheduler admitted it to,
//! holding its permit until the response is done.

use std::sync::Arc;

use crate::control::neuron_client::NeuronClient;
use crate::gateway::core::scheduler::Permit;

/// Where a request goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The model's fleet id (what the engine serves it as).
    pub model: String,
    pub neuron: Arc<NeuronClient>,
    /// The harness name it runs under on that neuron.
    pub harness: String,
    /// The scheduler's admission: the request counts against the copy's concurrency until the
    /// last clone of the target (held by the response body) is dropped. It carries the
    /// request's session key, for a re-queue after the copy went away (`routing::send`).
    #[allow(dead_code, reason = "held, never read: dropping it ends the admission")]
    pub permit: Option<Arc<Permit>>,
    /// Only this copy can answer (the request continues a response stored there): when the copy
    /// goes away under the request, the request fails instead of moving to another copy.
    pub pinned: bool,
}
