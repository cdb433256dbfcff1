//! The write side of the neuron: load (validated, then started in the background), unload
//! (drain, then stop), waiting for readiness without polling, the per-model supervisor task
//! (start → ready → crash watch → stop) and stopping everything at shutdown.
//!
//! Every lifecycle change (load started, ready, failed, unload started, unloaded, crash) bumps
//! the generation under the registry lock, which also wakes every waiter.

use std::sync::Arc;
use std::time::Duration;

use plans::topology::{LoadedModel, ModelState};
use plans::wire::{LifecycleResponse, LoadRequest, UnloadRequest};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::fence::TermFile;
use crate::harness::supervise::{NotReady, PortLease, wait_ready};
use crate::harness::{self, Engine, Harness, Launch};
use crate::source;
use crate::state::{Neuron, Registry, Slot, Usage};

/// How many engine log lines a failure report carries.
const LOG_LINES_IN_ERRORS: usize = 20;

/// What a load request did.
pub enum LoadOutcome {
    /// A new load started in the background (202).
    Started(LifecycleResponse),
    /// The model is already loaded or loading with the same profile (200, nothing changed).
    Unchanged(LifecycleResponse),
}

/// How a load request was decided under the registry lock.
enum LoadDecision {
    Unchanged(Box<LifecycleResponse>),
    Start(PortLease),
}

/// The preconditions of a lifecycle call, under the registry lock: the cluster term first (a
/// newer leader's term is raised and persisted even when the generation then refuses the call),
/// then the generation.
fn preconditions(
    registry: &mut Registry,
    term_file: &TermFile,
    term: Option<u64>,
    if_generation: Option<u64>,
) -> Result<(), ApiError> {
    registry.fence.admit(term, term_file)?;
    match if_generation {
        Some(expected) if expected != registry.generation => {
            Err(ApiError::GenerationMismatch { current: registry.generation })
        }
        _ => Ok(()),
    }
}

/// The record's outcome for a decided call.
fn outcome<T>(decided: &Result<T, ApiError>, accepted: &'static str) -> &'static str {
    decided.as_ref().map_or_else(ApiError::code, |_| accepted)
}

fn check_model_id(id: &str) -> Result<(), ApiError> {
    if id.trim().is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!("{id:?} is not a valid model id")));
    }
    Ok(())
}

impl Neuron {
    fn harness(&self, name: &str) -> Result<Arc<dyn Harness>, ApiError> {
        self.shared.harnesses.get(name).cloned().ok_or_else(|| ApiError::UnknownHarness(name.to_owned()))
    }

    /// Validate `request`, register the model as `loading` and start it in the background.
    pub fn load(&self, request: LoadRequest) -> Result<LoadOutcome, ApiError> {
        if self.shared.shutting_down.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        check_model_id(&request.model)?;
        let harness_name = request.profile.harness.clone();
        let harness = self.harness(&harness_name)?;
        harness.check_args(&harness_name, &request.profile.args).map_err(ApiError::ArgsNotAllowed)?;
        let source = source::resolve(
            &self.shared.config.models_dir,
            &request.profile.source,
            harness.needs_source_file(),
        )?;
        for (i, device) in request.devices.iter().enumerate() {
            if !self.device_exists(*device) {
                return Err(ApiError::UnknownDevice(*device));
            }
            if request.devices[..i].contains(device) {
                return Err(ApiError::BadRequest(format!("device {device} is listed twice")));
            }
        }

        let mut registry = self.registry();
        let before = registry.generation;
        let decided = self.decide_load(&mut registry, &request);
        let kind = match &decided {
            Ok(LoadDecision::Unchanged(_)) => "unchanged",
            _ => outcome(&decided, "accepted"),
        };
        let action = registry.fence.record("load", Some(&request.model), request.term, kind, before);
        let port = match decided? {
            LoadDecision::Unchanged(response) => return Ok(LoadOutcome::Unchanged(*response)),
            LoadDecision::Start(port) => port,
        };
        registry.next_epoch += 1;
        let epoch = registry.next_epoch;
        let stop = CancellationToken::new();
        let (stopped_tx, stopped) = watch::channel(false);
        let slot = Slot {
            request: LoadRequest { if_generation: None, term: None, ..request.clone() },
            epoch,
            action,
            status: ModelState::Loading,
            error: None,
            base_url: None,
            served_model: None,
            load_duration_ms: None,
            usage: Usage::new(),
            stop: stop.clone(),
            stopped,
        };
        let snapshot = slot.snapshot(&request.model);
        registry.models.insert(request.model.clone(), slot);
        let generation = registry.bump(&self.shared.changes);
        drop(registry);

        tracing::info!(model = %request.model, harness = %harness_name, port = port.port, devices = ?request.devices, "loading");
        let launch = Launch {
            model: request.model.clone(),
            source,
            profile: request.profile,
            devices: request.devices,
            port,
            log_path: self.shared.config.log_dir.join(harness::log_file_name(&request.model)),
        };
        let supervisor = Supervisor { neuron: self.clone(), model: request.model, epoch, harness_name };
        self.shared.tasks.spawn(supervisor.run(harness, launch, stop, stopped_tx));
        Ok(LoadOutcome::Started(LifecycleResponse { generation, model: Some(snapshot) }))
    }

    /// The preconditions and what is there already, under the registry lock.
    fn decide_load(&self, registry: &mut Registry, request: &LoadRequest) -> Result<LoadDecision, ApiError> {
        preconditions(registry, &self.shared.term_file, request.term, request.if_generation)?;
        if let Some(existing) = registry.models.get(&request.model) {
            match existing.status {
                ModelState::Loading | ModelState::Loaded if existing.request.profile == request.profile => {
                    let model = Some(existing.snapshot(&request.model));
                    let response = LifecycleResponse { generation: registry.generation, model };
                    return Ok(LoadDecision::Unchanged(Box::new(response)));
                }
                ModelState::Loading | ModelState::Loaded => {
                    return Err(ApiError::ProfileConflict(request.model.clone()));
                }
                ModelState::Unloading => return Err(ApiError::ModelUnloading(request.model.clone())),
                // A failed model's supervisor has ended: a new load replaces it.
                ModelState::Failed => {}
            }
        }
        self.shared.ports.lease().map(LoadDecision::Start).ok_or(ApiError::NoFreePort)
    }

    /// Drain the model's in-flight requests (up to drain_timeout), stop its engine and forget
    /// it. Runs as a tracked task, so a caller that hangs up cannot leave it half done.
    pub async fn unload(&self, request: UnloadRequest) -> Result<LifecycleResponse, ApiError> {
        let neuron = self.clone();
        let work = self.shared.tasks.spawn(async move { neuron.unload_now(request).await });
        work.await.map_err(|_| ApiError::ShuttingDown)?
    }

    async fn unload_now(&self, request: UnloadRequest) -> Result<LifecycleResponse, ApiError> {
        let model = request.model;
        let (action, epoch, usage, stop, mut stopped, already_unloading) = {
            let mut registry = self.registry();
            let before = registry.generation;
            let decided =
                preconditions(&mut registry, &self.shared.term_file, request.term, request.if_generation)
                    .and_then(|()| {
                        let slot = registry
                            .models
                            .get(&model)
                            .ok_or_else(|| ApiError::ModelNotFound(model.clone()))?;
                        Ok(slot.status == ModelState::Unloading)
                    });
            let kind = match &decided {
                Ok(true) => "unchanged",
                _ => outcome(&decided, "accepted"),
            };
            let action = registry.fence.record("unload", Some(&model), request.term, kind, before);
            let already_unloading = decided?;
            let changes = &self.shared.changes;
            let slot =
                registry.models.get_mut(&model).ok_or_else(|| ApiError::ModelNotFound(model.clone()))?;
            slot.status = ModelState::Unloading;
            let taken = (slot.epoch, Arc::clone(&slot.usage), slot.stop.clone(), slot.stopped.clone());
            if !already_unloading {
                registry.bump(changes);
            }
            (action, taken.0, taken.1, taken.2, taken.3, already_unloading)
        };
        if !already_unloading {
            tracing::info!(model = %model, "unloading: draining in-flight requests");
            let drain_timeout = self.shared.config.drain_timeout;
            let mut in_flight = usage.in_flight.subscribe();
            if tokio::time::timeout(drain_timeout, in_flight.wait_for(|n| *n == 0)).await.is_err() {
                tracing::warn!(model = %model, "{} requests still running after {drain_timeout:?}: stopping anyway", *in_flight.borrow());
            }
            stop.cancel();
        }
        // The supervisor stops the engine (SIGTERM, then SIGKILL after stop_grace).
        let _ = stopped.wait_for(|done| *done).await;
        let mut changes = self.shared.changes.subscribe();
        loop {
            {
                let mut registry = self.registry();
                match registry.models.get(&model) {
                    Some(slot) if slot.epoch == epoch && !already_unloading => {
                        registry.models.remove(&model);
                        registry.fence.ended(action);
                        let generation = registry.bump(&self.shared.changes);
                        tracing::info!(model = %model, "unloaded");
                        return Ok(LifecycleResponse { generation, model: None });
                    }
                    Some(slot) if slot.epoch == epoch => {}
                    _ => return Ok(LifecycleResponse { generation: registry.generation, model: None }),
                }
            }
            // Another unload of the same load removes it; wait for that.
            if changes.changed().await.is_err() {
                return Err(ApiError::ShuttingDown);
            }
        }
    }

    /// The model as soon as it is no longer `loading`, or as it is when `timeout` passes.
    pub async fn wait(&self, model: &str, timeout: Duration) -> Result<LoadedModel, ApiError> {
        let deadline = Instant::now() + timeout;
        // Subscribe before looking, so that no change between the look and the wait is missed.
        let mut changes = self.shared.changes.subscribe();
        loop {
            let current = self.model(model).ok_or_else(|| ApiError::ModelNotFound(model.to_owned()))?;
            if current.status != ModelState::Loading {
                return Ok(current);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Ok(current),
            }
        }
    }

    /// Stop every engine this neuron started and wait for their supervisors to finish.
    pub async fn shutdown_engines(&self) {
        self.shared.shutting_down.cancel();
        let stops: Vec<CancellationToken> = {
            let mut registry = self.registry();
            let stops = registry
                .models
                .values_mut()
                .map(|slot| {
                    if slot.status != ModelState::Failed {
                        slot.status = ModelState::Unloading;
                    }
                    slot.stop.clone()
                })
                .collect();
            registry.bump(&self.shared.changes);
            stops
        };
        tracing::info!("stopping {} engines", stops.len());
        for stop in stops {
            stop.cancel();
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        for harness in self.shared.harnesses.values() {
            harness.shutdown(self.shared.config.stop_grace).await;
        }
    }

    /// Apply `change` to the model's slot if it is still the load `epoch` in one of `states`;
    /// returns whether it applied (and bumped the generation).
    fn transition(
        &self,
        model: &str,
        epoch: u64,
        states: &[ModelState],
        change: impl FnOnce(&mut Slot),
    ) -> bool {
        let mut registry = self.registry();
        let Some(slot) = registry.models.get_mut(model) else { return false };
        if slot.epoch != epoch || !states.contains(&slot.status) {
            return false;
        }
        change(slot);
        let action = slot.action;
        if slot.status != ModelState::Loading {
            // The load this slot holds has ended (ready or failed).
            registry.fence.ended(action);
        }
        registry.bump(&self.shared.changes);
        true
    }
}

/// The task that owns one model's engine from start to stop.
struct Supervisor {
    neuron: Neuron,
    model: String,
    epoch: u64,
    harness_name: String,
}

impl Supervisor {
    async fn run(
        self,
        harness: Arc<dyn Harness>,
        launch: Launch,
        stop: CancellationToken,
        stopped: watch::Sender<bool>,
    ) {
        let started = Instant::now();
        let starting = tokio::select! {
            result = harness.start(launch) => Some(result),
            () = stop.cancelled() => None,
        };
        match starting {
            Some(Ok(engine)) => self.supervise(engine.as_ref(), started, &stop).await,
            Some(Err(err)) => {
                self.fail(format!("engine did not start: {err}"));
            }
            // Unloaded while starting: dropping the start future abandons it.
            None => {}
        }
        // The engine (and its port) is dropped before anyone learns it has stopped.
        stopped.send_replace(true);
    }

    async fn supervise(&self, engine: &dyn Engine, started: Instant, stop: &CancellationToken) {
        let config = &self.neuron.shared.config;
        let mut exited = engine.exited();
        let deadline = started + config.load_timeout;
        let ready = tokio::select! {
            ready = wait_ready(engine, &self.neuron.shared.http, deadline) => Some(ready),
            () = stop.cancelled() => None,
        };
        match ready {
            None => return engine.stop(config.stop_grace).await,
            Some(Err(NotReady::Exited(how))) => {
                return self.crashed(engine, &format!("engine {how} while loading"));
            }
            Some(Err(NotReady::Failed(why))) => {
                engine.stop(config.stop_grace).await;
                self.fail(format!("engine cannot become ready: {why}"));
                return;
            }
            Some(Err(NotReady::Timeout)) => {
                engine.stop(config.stop_grace).await;
                let tail = engine.log_tail(LOG_LINES_IN_ERRORS);
                self.fail(format!(
                    "engine not ready after {:?}; last log lines:\n{tail}",
                    config.load_timeout
                ));
                return;
            }
            Some(Ok(())) => {}
        }
        let elapsed = started.elapsed();
        let base_url = engine.base_url();
        let served_model = engine.served_model();
        let loaded = self.neuron.transition(&self.model, self.epoch, &[ModelState::Loading], |slot| {
            slot.status = ModelState::Loaded;
            slot.base_url = Some(base_url);
            slot.served_model = served_model;
            slot.load_duration_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        });
        if loaded {
            tracing::info!(model = %self.model, "ready after {elapsed:?}");
            self.neuron.shared.metrics.load_finished(&self.harness_name, elapsed.as_secs_f64());
        }
        // The watch guard must not live across an await, so it is cloned out inside the block.
        let ended = async { exited.wait_for(Option::is_some).await.ok().and_then(|how| how.clone()) };
        let how = tokio::select! {
            how = ended => how.unwrap_or_default(),
            () = stop.cancelled() => return engine.stop(config.stop_grace).await,
        };
        self.crashed(engine, &format!("engine {how}"));
    }

    /// The engine ended on its own: a crash, unless the model was already being unloaded.
    fn crashed(&self, engine: &dyn Engine, what: &str) {
        let tail = engine.log_tail(LOG_LINES_IN_ERRORS);
        if self.fail(format!("{what}; last log lines:\n{tail}")) {
            self.neuron.shared.metrics.engine_crashed(&self.model);
        }
    }

    fn fail(&self, error: String) -> bool {
        let states = [ModelState::Loading, ModelState::Loaded];
        let model = &self.model;
        self.neuron.transition(model, self.epoch, &states, |slot| {
            tracing::warn!(model = %model, "failed: {error}");
            slot.status = ModelState::Failed;
            slot.base_url = None;
            slot.error = Some(error);
        })
    }
}
