//! The gateway's shared state, [`AppState`]: what every handler reads. Cheap to clone; each
//! piece has one writer elsewhere.

use std::sync::Arc;

use plans::fleet::Fleet;
use tokio::sync::watch;

use crate::config::GatewayConfig;
use crate::control::backoff::BackoffPolicy;
use crate::control::poller::{Observed, PollerHandle};
use crate::gateway::core::admission::Admission;
use crate::gateway::core::auth::ApiKeys;
use crate::gateway::core::keys::Keys;
use crate::gateway::core::scheduler::Scheduler;
use crate::gateway::dialects::responses::ResponseIndex;
use crate::gateway::transport::upstream::InferenceClient;
use crate::operator::admin::Admin;

/// Everything a handler needs. Cheap to clone; each piece has one writer elsewhere.
#[derive(Clone)]
pub struct AppState {
    /// The desired state in force (last good fleet); written by the fleet loader.
    pub fleet: watch::Receiver<Arc<Fleet>>,
    /// The observed state; written by the poller only.
    pub poller: PollerHandle,
    /// Client keys: cortex.toml's and the fleet's, with each declared key's counters.
    pub keys: Arc<Keys>,
    pub limits: Arc<GatewayConfig>,
    /// The swap scheduler: per-model queues and the loads they wait for.
    pub scheduler: Arc<Scheduler>,
    /// The admin API, when an admin key is configured.
    pub admin: Option<Admin>,
    /// Which replica produced each recent Responses id (bounded), for `previous_response_id`
    /// and `GET /v1/responses/{id}`.
    pub response_index: Arc<ResponseIndex>,
    /// Inference requests in flight through this gateway, bounded by `max_in_flight`.
    pub admission: Arc<Admission>,
    /// The pooled client that forwards inference requests to the neurons.
    pub inference: InferenceClient,
}

impl AppState {
    pub fn new(
        fleet: watch::Receiver<Arc<Fleet>>,
        poller: PollerHandle,
        keys: ApiKeys,
        limits: GatewayConfig,
    ) -> Self {
        let mode = limits.swap_schedule;
        AppState {
            fleet,
            poller,
            keys: Arc::new(Keys::new(keys, crate::usage::Usage::in_memory())),
            admission: Arc::new(Admission::new(limits.max_in_flight, limits.overload_delay)),
            limits: Arc::new(limits),
            scheduler: Arc::new(Scheduler::new(mode, BackoffPolicy::default())),
            admin: None,
            response_index: Arc::new(ResponseIndex::default()),
            inference: InferenceClient::default(),
        }
    }

    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.borrow().clone()
    }

    pub fn observed(&self) -> Arc<Observed> {
        self.poller.observed.borrow().clone()
    }
}
