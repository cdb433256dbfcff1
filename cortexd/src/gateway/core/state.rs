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
use crate::gateway::core::response_index::ResponseIndex;
use crate::gateway::core::scheduler::{ClusterInputs, Scheduler};
use crate::gateway::core::timeline::Timelines;
use crate::gateway::core::traffic::Traffic;
use crate::gateway::transport::upstream::{InferenceClient, Timeouts};

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
    /// Which replica produced each recent Responses id (bounded), for `previous_response_id`
    /// and `GET /v1/responses/{id}`.
    pub response_index: Arc<ResponseIndex>,
    /// Inference requests in flight through this gateway, bounded by `max_in_flight`.
    pub admission: Arc<Admission>,
    /// The pooled client that forwards inference requests to the neurons.
    pub inference: InferenceClient,
    /// The recent traffic per model (the fleet page's charts): added to when a request ends.
    pub traffic: Arc<Traffic>,
    /// The recent requests' timelines (bounded): added to when a request ends.
    pub timelines: Arc<Timelines>,
}

impl AppState {
    /// The gateway's state over the fleet in force and the poller's observations; failed
    /// cold loads back off under the default policy (see [`AppState::with_load_backoff`]).
    pub fn new(
        fleet: watch::Receiver<Arc<Fleet>>,
        poller: PollerHandle,
        keys: ApiKeys,
        limits: GatewayConfig,
    ) -> Self {
        let limits = Arc::new(limits);
        let timelines = Arc::new(Timelines::new(limits.request_timelines));
        let upstream = Timeouts { head: limits.upstream_head_timeout, read: limits.upstream_read_timeout };
        let scheduler =
            Scheduler::new(fleet.clone(), poller.clone(), limits.clone(), BackoffPolicy::default(), None);
        AppState {
            fleet,
            poller,
            keys: Arc::new(Keys::new(keys, crate::usage::Usage::in_memory())),
            admission: Arc::new(Admission::new(limits.max_in_flight, limits.overload_delay)),
            limits,
            scheduler,
            response_index: Arc::new(ResponseIndex::default()),
            inference: InferenceClient::new(upstream),
            traffic: Arc::new(Traffic::default()),
            timelines,
        }
    }

    /// The same state with a scheduler whose failed cold loads back off under `policy` (the
    /// reconciler's, so that the gateway and the reconciler give a broken model the same rest).
    pub fn with_load_backoff(mut self, policy: BackoffPolicy) -> Self {
        self.scheduler =
            Scheduler::new(self.fleet.clone(), self.poller.clone(), self.limits.clone(), policy, None);
        self
    }

    /// The same state as a cluster replica: its scheduler loads only while the replica leads,
    /// weighing the other replicas' demand (see [`ClusterInputs`]).
    pub fn in_cluster(mut self, cluster: ClusterInputs) -> Self {
        let policy = self.scheduler.policy();
        self.scheduler = Scheduler::new(
            self.fleet.clone(),
            self.poller.clone(),
            self.limits.clone(),
            policy,
            Some(cluster),
        );
        self
    }

    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.borrow().clone()
    }

    pub fn observed(&self) -> Arc<Observed> {
        self.poller.observed.borrow().clone()
    }
}
