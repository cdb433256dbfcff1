//! Routing: which neuron serves a request for a model. Loaded somewhere → the least busy
//! replica; declared but not loaded → placed by the planner's `place_one`, loaded (evicting by
//! policy) and waited for. Concurrent requests for the same cold model share one load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use plans::plan::{PlanOptions, place_one};
use plans::topology::ModelState;
use tokio::sync::watch;

use crate::control::backoff::{Backoff, BackoffPolicy};
use crate::control::execute::{self, ExecTimeouts};
use crate::control::neuron_client::{NeuronClient, NeuronError};
use crate::control::poller::now_unix_ms;
use crate::gateway::AppState;
use crate::gateway::error::ApiError;

/// Where a request goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The model's fleet id (what the engine serves it as).
    pub model: String,
    pub neuron: NeuronClient,
    /// The harness name it runs under on that neuron.
    pub harness: String,
}

/// Gateway-side count of requests in flight per (model, neuron).
#[derive(Debug, Default)]
pub struct InFlight {
    counts: Mutex<HashMap<(String, String), usize>>,
}

impl InFlight {
    fn get(&self, model: &str, neuron: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&(model.to_owned(), neuron.to_owned())).copied().unwrap_or(0)
    }

    /// Count one request until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>, model: &str, neuron: &str) -> InFlightGuard {
        let key = (model.to_owned(), neuron.to_owned());
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner).entry(key.clone()).or_default() += 1;
        // One registry lookup per request: the guard keeps the handle for the decrement.
        let gauge =
            metrics::gauge!("cortex_inflight_requests", "model" => key.0.clone(), "neuron" => key.1.clone());
        gauge.increment(1.0);
        InFlightGuard { inflight: self.clone(), key, gauge }
    }
}

/// Decrements the in-flight count when the request (and its response body) is done.
pub struct InFlightGuard {
    inflight: Arc<InFlight>,
    key: (String, String),
    gauge: metrics::Gauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counts = self.inflight.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
        self.gauge.decrement(1.0);
    }
}

/// The outcome of resolving a model name: served now, or a load to wait for.
pub enum Resolution {
    Ready(Target),
    Waiting(LoadTicket),
}

/// A place in the queue of one cold load. Dropping it leaves the queue.
pub struct LoadTicket {
    slot: Arc<LoadSlot>,
    receiver: watch::Receiver<Option<Result<Target, ApiError>>>,
    deadline: Instant,
}

impl LoadTicket {
    /// Wait for the load to finish (or the queue deadline to pass).
    pub async fn wait(mut self) -> Result<Target, ApiError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::time::timeout(remaining, self.receiver.wait_for(Option::is_some)).await;
        match outcome {
            Ok(Ok(result)) => {
                result.clone().unwrap_or_else(|| Err(ApiError::Internal("load vanished".into())))
            }
            Ok(Err(_)) => Err(ApiError::Internal("the load task stopped without an answer".into())),
            Err(_) => Err(ApiError::Overloaded {
                message: "the model is still loading; try again shortly".into(),
                retry_after_s: 5,
            }),
        }
    }
}

impl Drop for LoadTicket {
    fn drop(&mut self) {
        self.slot.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One cold load in progress: its result channel and how many requests wait on it.
struct LoadSlot {
    result: watch::Sender<Option<Result<Target, ApiError>>>,
    waiting: AtomicUsize,
}

/// The cold loads in progress, by model id.
#[derive(Default)]
pub struct ColdLoads {
    slots: Mutex<HashMap<String, Arc<LoadSlot>>>,
    /// Failed cold loads per (model, neuron), under the reconciler's backoff policy, so that a
    /// broken model is not loaded again at every request. Held only for short sections.
    failures: Mutex<Backoff>,
    policy: BackoffPolicy,
}

impl ColdLoads {
    pub fn with_backoff(policy: BackoffPolicy) -> ColdLoads {
        ColdLoads { policy, ..ColdLoads::default() }
    }

    /// The 503 for `(model, neuron)` while its last failed load backs off.
    fn backing_off(&self, model: &str, neuron: &str) -> Option<ApiError> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        let entry = failures.entry(model, neuron).filter(|e| e.until > now)?;
        let wait_s = (entry.until - now).as_secs_f64().ceil().max(1.0) as u64;
        Some(ApiError::Overloaded {
            message: format!(
                "{model} cannot be loaded on {neuron} now: the last load failed: {}, next try in {wait_s}s",
                entry.error
            ),
            retry_after_s: wait_s,
        })
    }

    fn record(&self, model: &str, neuron: &str, failure: Option<String>) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match failure {
            Some(error) => {
                failures.failed(model, neuron, error, self.policy, tokio::time::Instant::now());
            }
            None => failures.succeeded(model, neuron),
        }
    }
}

/// Resolve `name` (a fleet id or alias, or the id of a model loaded outside the fleet).
pub fn resolve(state: &AppState, name: &str) -> Result<Resolution, ApiError> {
    let fleet = state.fleet();
    let observed = state.observed();
    let id = fleet.model(name).map_or(name, |m| m.id.as_str());

    // Loaded somewhere: the replica with the fewest requests in flight through this gateway,
    // ties broken by name so routing is stable.
    let ready = observed
        .topology
        .neurons
        .iter()
        .filter(|n| n.reachable)
        .filter_map(|n| n.model(id).filter(|m| m.status == ModelState::Loaded).map(|m| (n, m)))
        .min_by_key(|(n, _)| (state.inflight.get(id, &n.name), n.name.clone()));
    if let Some((neuron, model)) = ready
        && let Some(client) = observed.clients.get(&neuron.name)
    {
        return Ok(Resolution::Ready(Target {
            model: id.to_owned(),
            neuron: client.clone(),
            harness: model.harness.clone(),
        }));
    }
    if fleet.model(name).is_none() {
        return Err(ApiError::UnknownModel(name.to_owned()));
    }
    join_cold_load(state, id).map(Resolution::Waiting)
}

/// Join the load of `id` in progress, or start one.
fn join_cold_load(state: &AppState, id: &str) -> Result<LoadTicket, ApiError> {
    let mut slots = state.cold_loads.slots.lock().unwrap_or_else(PoisonError::into_inner);
    let slot = match slots.get(id) {
        Some(slot) => slot.clone(),
        None => {
            let (sender, _) = watch::channel(None);
            let slot = Arc::new(LoadSlot { result: sender, waiting: AtomicUsize::new(0) });
            slots.insert(id.to_owned(), slot.clone());
            // The load runs in its own task so that a client hanging up does not cancel it for
            // the others waiting (nor leave a half-done load behind).
            tokio::spawn(run_cold_load(state.clone(), id.to_owned(), slot.clone()));
            slot
        }
    };
    drop(slots);
    if slot.waiting.fetch_add(1, Ordering::AcqRel) >= state.limits.max_waiting_per_model {
        slot.waiting.fetch_sub(1, Ordering::AcqRel);
        return Err(ApiError::Overloaded {
            message: format!("too many requests are waiting for {id} to load"),
            retry_after_s: 5,
        });
    }
    let receiver = slot.result.subscribe();
    Ok(LoadTicket { slot, receiver, deadline: Instant::now() + state.limits.max_wait })
}

async fn run_cold_load(state: AppState, id: String, slot: Arc<LoadSlot>) {
    let started = Instant::now();
    let result = cold_load(&state, &id).await;
    match &result {
        Ok(target) => {
            metrics::counter!("cortex_cold_starts_total", "model" => id.clone(), "neuron" => target.neuron.name.clone())
                .increment(1);
            metrics::histogram!("cortex_cold_start_duration_seconds", "model" => id.clone())
                .record(started.elapsed().as_secs_f64());
            tracing::info!(model = %id, neuron = %target.neuron.name, elapsed_ms = started.elapsed().as_millis(), "cold load done");
        }
        Err(error) => tracing::warn!(model = %id, %error, "cold load failed"),
    }
    let loaded = result.is_ok();
    // Answer the waiting requests at once; the slot stays (answering newcomers immediately)
    // until the poller has seen the model loaded, so that no request starts a second load in
    // between.
    slot.result.send_replace(Some(result));
    if loaded {
        state.poller.refreshed().await;
    }
    state.cold_loads.slots.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
}

/// Place, evict, load and wait for `id`, retrying a few times when a neuron changed under us.
async fn cold_load(state: &AppState, id: &str) -> Result<Target, ApiError> {
    const ATTEMPTS: usize = 3;
    let timeouts = ExecTimeouts { call: state.limits.neuron_timeout, ready: state.limits.max_wait };
    for attempt in 1..=ATTEMPTS {
        let fleet = state.fleet();
        let observed = state.observed();
        // Someone else (the reconciler, another gateway) may have loaded it meanwhile.
        if let Some(neuron) = observed.topology.neurons.iter().find(|n| {
            n.reachable
                && n.model(id).is_some_and(|m| matches!(m.status, ModelState::Loaded | ModelState::Loading))
        }) && let Some(client) = observed.clients.get(&neuron.name)
        {
            match client.wait(id, state.limits.max_wait).await {
                Ok(model) if model.status == ModelState::Loaded => {
                    state.poller.kick();
                    return Ok(Target {
                        model: id.to_owned(),
                        neuron: client.clone(),
                        harness: model.harness,
                    });
                }
                Ok(_) => {}
                // Our view was stale: it is gone from that neuron. Look again and place it.
                Err(NeuronError::Refused { status: 404, .. }) if attempt < ATTEMPTS => {
                    state.poller.refreshed().await;
                    continue;
                }
                Err(error) => return Err(upstream(error)),
            }
        }
        let options = PlanOptions { now_unix_ms: now_unix_ms(), prune: false };
        let placement = place_one(&fleet, &observed.topology, id, &options).map_err(|infeasible| {
            ApiError::Overloaded {
                message: format!("{id} cannot be placed now: {}", infeasible.detail),
                retry_after_s: 30,
            }
        })?;
        if let Some(backing_off) = state.cold_loads.backing_off(id, &placement.neuron) {
            return Err(backing_off);
        }
        let client = observed
            .clients
            .get(&placement.neuron)
            .ok_or_else(|| ApiError::Internal(format!("no client for neuron {}", placement.neuron)))?;
        let mut generation = Some(placement.load.if_generation);
        let mut outcome = Ok(());
        for eviction in &placement.evictions {
            match execute::run(client, eviction, generation, timeouts).await {
                Ok(next) => {
                    generation = Some(next);
                    metrics::counter!("cortex_evictions_total", "reason" => eviction.reason.code())
                        .increment(1);
                }
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        if outcome.is_ok() {
            outcome = execute::run(client, &placement.load, generation, timeouts).await.map(drop);
        }
        if !outcome.as_ref().is_err_and(execute::ExecError::is_conflict) {
            let failure = outcome.as_ref().err().map(ToString::to_string);
            state.cold_loads.record(id, &placement.neuron, failure);
        }
        match outcome {
            Ok(()) => {
                return Ok(Target {
                    model: id.to_owned(),
                    neuron: client.clone(),
                    harness: placement.load.profile.map(|p| p.harness).unwrap_or_default(),
                });
            }
            Err(execute::ExecError::Neuron(NeuronError::Stale { .. })) if attempt < ATTEMPTS => {
                // The neuron changed since we looked: look again and re-place.
                state.poller.refreshed().await;
            }
            Err(error) => return Err(ApiError::Upstream(error.to_string())),
        }
    }
    Err(ApiError::Overloaded {
        message: format!("{id}: the fleet kept changing while placing it"),
        retry_after_s: 5,
    })
}

fn upstream(error: NeuronError) -> ApiError {
    ApiError::Upstream(error.to_string())
}
