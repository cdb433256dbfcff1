//! `Neuron`: the node's shared state (configuration, the model registry, the generation counter
//! and its change notifications) and the read side of the API: discovery, health, models,
//! metrics and routing an inference request to its engine. The write side (load, unload, wait,
//! supervision) is in `crate::lifecycle`.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plans::topology::{LoadedModel, ModelState};
use plans::wire::{Actions, Discovery, FenceResponse, Health, LoadRequest, Models};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_unix_ms;
use crate::config::Config;
use crate::error::ApiError;
use crate::fence::{Fence, TermFile};
use crate::harness::supervise::PortPool;
use crate::harness::{self, Harness};
use crate::metrics::NeuronMetrics;
use crate::probe::{self, DriverInfo, GpuProbe};

/// How long an idle connection to an engine is kept for reuse: well under the engines' own
/// keep-alive (llama-server and uvicorn close an idle connection after 5 s), so a request is
/// never sent on a connection the engine is closing at that moment ("error sending request").
const ENGINE_IDLE_REUSE: Duration = Duration::from_secs(2);

/// Why a neuron could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create log_dir {path}: {source}")]
    LogDir { path: String, source: std::io::Error },
    #[error("cannot build the HTTP client: {0}")]
    Http(reqwest::Error),
    #[error("the fencing term: {0}")]
    Term(#[from] crate::fence::TermFileError),
}

/// The node daemon's state. Cheap to clone: every handler and task holds one.
#[derive(Clone)]
pub struct Neuron {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    /// Immutable after start.
    pub(crate) config: Config,
    /// Immutable; compared in constant time.
    token: String,
    /// Immutable; changes only when the process restarts.
    pub(crate) boot_id: String,
    /// Immutable; devices are queried live through it.
    probe: Arc<dyn GpuProbe>,
    /// Immutable: read once at start (driver facts and which device indices exist).
    driver: DriverInfo,
    device_indices: Vec<u32>,
    /// Immutable: the harnesses defined in neuron.toml.
    pub(crate) harnesses: BTreeMap<String, Arc<dyn Harness>>,
    /// The lifecycle registry. A std mutex held only for short sections, never across `.await`.
    pub(crate) registry: Mutex<Registry>,
    /// Carries the generation after every lifecycle change; written only with `registry` held.
    /// Long-polls and unloads subscribe to it instead of polling.
    pub(crate) changes: watch::Sender<u64>,
    /// Where the highest cluster term seen is persisted; written only with `registry` held.
    pub(crate) term_file: TermFile,
    /// Engine ports; internally synchronised.
    pub(crate) ports: Arc<PortPool>,
    /// Loopback client for readiness polls and proxying (no proxy, no overall timeout).
    pub(crate) http: reqwest::Client,
    /// Internally synchronised recorder.
    pub(crate) metrics: NeuronMetrics,
    /// Every per-model supervisor and unload task, so that shutdown can wait for them all.
    pub(crate) tasks: TaskTracker,
    /// Cancelled once shutdown starts; loads are refused from then on.
    pub(crate) shutting_down: CancellationToken,
}

/// What is loaded, guarded by `Shared::registry`.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) generation: u64,
    pub(crate) next_epoch: u64,
    pub(crate) models: BTreeMap<String, Slot>,
    /// The cluster term and the record of lifecycle decisions: checked with the generation.
    pub(crate) fence: Fence,
}

impl Registry {
    /// Record a lifecycle change and wake everyone waiting for one.
    pub(crate) fn bump(&mut self, changes: &watch::Sender<u64>) -> u64 {
        self.generation += 1;
        changes.send_replace(self.generation);
        self.generation
    }
}

/// One model on this neuron, from load request to unload.
pub(crate) struct Slot {
    pub(crate) request: LoadRequest,
    /// Identifies this load, so that a supervisor of an older load never touches a newer slot.
    pub(crate) epoch: u64,
    /// The load's entry in the action record, marked ended when it is ready or failed.
    pub(crate) action: u64,
    pub(crate) status: ModelState,
    pub(crate) error: Option<String>,
    /// Where the engine listens, once loaded.
    pub(crate) base_url: Option<String>,
    /// The model name the engine expects in requests, when not the fleet id.
    pub(crate) served_model: Option<String>,
    pub(crate) load_duration_ms: Option<u64>,
    /// In-flight requests and last use, updated by proxy guards without the registry lock.
    pub(crate) usage: Arc<Usage>,
    /// Tells the supervisor to stop the engine.
    pub(crate) stop: CancellationToken,
    /// Becomes true once the supervisor has stopped (or lost) the engine.
    pub(crate) stopped: watch::Receiver<bool>,
}

impl Slot {
    pub(crate) fn snapshot(&self, id: &str) -> LoadedModel {
        LoadedModel {
            id: id.to_owned(),
            harness: self.request.profile.harness.clone(),
            status: self.status,
            devices: self.request.devices.clone(),
            vram_mb: self.request.vram_mb,
            ram_mb: self.request.ram_mb,
            last_used_unix_ms: self.usage.last_used_unix_ms.load(Ordering::Relaxed),
            in_flight: *self.usage.in_flight.borrow(),
            profile: Some(self.request.profile.clone()),
            load_duration_ms: self.load_duration_ms,
            error: self.error.clone(),
        }
    }

    /// Whether it holds (or is about to hold) memory.
    fn holds_memory(&self) -> bool {
        self.status != ModelState::Failed
    }
}

/// Per-model request accounting, shared between the registry and in-flight guards.
pub struct Usage {
    /// Requests being served; unload waits for 0 through a subscription.
    pub(crate) in_flight: watch::Sender<u32>,
    pub(crate) last_used_unix_ms: AtomicU64,
}

impl Usage {
    pub(crate) fn new() -> Arc<Usage> {
        Arc::new(Usage { in_flight: watch::Sender::new(0), last_used_unix_ms: AtomicU64::new(0) })
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.send_modify(|n| *n += 1);
        self.last_used_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        InFlightGuard { usage: Arc::clone(self) }
    }
}

/// Where to send one inference request.
pub struct Route {
    pub base_url: String,
    /// Put this in the body's `model` when set (the engine knows the model by another name).
    pub served_model: Option<String>,
    pub guard: InFlightGuard,
}

/// Counts one request in flight until dropped (when the response body ends or is dropped).
pub struct InFlightGuard {
    usage: Arc<Usage>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.usage.last_used_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        self.usage.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A random id for this process start.
fn new_boot_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

impl Neuron {
    /// Set up a neuron with the probe `detect` picks for `config`.
    pub fn from_config(config: Config, token: String) -> Result<Neuron, StartError> {
        let probe = probe::detect(&config);
        Neuron::new(config, token, probe)
    }

    pub fn new(config: Config, token: String, probe: Arc<dyn GpuProbe>) -> Result<Neuron, StartError> {
        std::fs::create_dir_all(&config.log_dir)
            .map_err(|source| StartError::LogDir { path: config.log_dir.display().to_string(), source })?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(ENGINE_IDLE_REUSE)
            .build()
            .map_err(StartError::Http)?;
        let harnesses = harness::from_config(&config);
        let term_file = TermFile::in_dir(&config.state_dir);
        let term = term_file.read()?;
        if term > 0 {
            tracing::info!(term, "fenced: lifecycle calls need a cortex cluster term of at least {term}");
        }
        if config.simulated() {
            tracing::info!("this neuron runs SIMULATED engines ({})", config.name);
        }
        let shared = Shared {
            token,
            boot_id: new_boot_id(),
            driver: probe.driver(),
            device_indices: probe.devices().iter().map(|d| d.index).collect(),
            probe,
            harnesses,
            registry: Mutex::new(Registry { fence: Fence::starting_at(term), ..Registry::default() }),
            term_file,
            changes: watch::Sender::new(0),
            ports: PortPool::owned_by(&config.name, config.port_range),
            http,
            metrics: NeuronMetrics::new(),
            tasks: TaskTracker::new(),
            shutting_down: CancellationToken::new(),
            config,
        };
        Ok(Neuron { shared: Arc::new(shared) })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn boot_id(&self) -> &str {
        &self.shared.boot_id
    }

    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        self.shared.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn device_exists(&self, index: u32) -> bool {
        self.shared.device_indices.contains(&index)
    }

    /// Constant-time comparison with the configured token.
    pub fn token_matches(&self, presented: &str) -> bool {
        presented.as_bytes().ct_eq(self.shared.token.as_bytes()).into()
    }

    pub fn generation(&self) -> u64 {
        self.registry().generation
    }

    pub fn model(&self, id: &str) -> Option<LoadedModel> {
        self.registry().models.get(id).map(|slot| slot.snapshot(id))
    }

    pub fn models(&self) -> Models {
        let registry = self.registry();
        Models {
            boot_id: self.shared.boot_id.clone(),
            generation: registry.generation,
            models: registry.models.iter().map(|(id, slot)| slot.snapshot(id)).collect(),
        }
    }

    /// Live figures. Simulated devices and devices with a configured capacity report what the
    /// loaded models account for; real devices report what NVML measures.
    pub async fn health(&self) -> Health {
        let probe = Arc::clone(&self.shared.probe);
        let mut devices = tokio::task::spawn_blocking(move || probe.devices()).await.unwrap_or_default();
        let (mut ram_total_mb, mut ram_free_mb) = probe::host_memory_mb();
        let capacity = &self.shared.config.capacity;
        let registry = self.registry();
        let mut accounted: BTreeMap<u32, u64> = BTreeMap::new();
        let mut ram_accounted = 0;
        for slot in registry.models.values().filter(|slot| slot.holds_memory()) {
            ram_accounted += slot.request.ram_mb;
            let count = u64::try_from(slot.request.devices.len()).unwrap_or(1).max(1);
            for index in &slot.request.devices {
                *accounted.entry(*index).or_default() += slot.request.vram_mb.div_ceil(count);
            }
        }
        for device in &mut devices {
            let configured = usize::try_from(device.index).ok().and_then(|i| capacity.device_vram_mb.get(i));
            if let Some(total) = configured {
                device.vram_total_mb = *total;
            }
            if configured.is_some() || self.shared.probe.simulated() {
                let used = accounted.get(&device.index).copied().unwrap_or(0);
                device.vram_free_mb = device.vram_total_mb.saturating_sub(used);
            }
        }
        if let Some(total) = capacity.ram_mb {
            ram_total_mb = total;
            ram_free_mb = total.saturating_sub(ram_accounted);
        }
        Health {
            boot_id: self.shared.boot_id.clone(),
            generation: registry.generation,
            devices,
            ram_total_mb,
            ram_free_mb,
        }
    }

    pub async fn discovery(&self) -> Discovery {
        let health = self.health().await;
        let config = &self.shared.config;
        Discovery {
            name: config.name.clone(),
            boot_id: self.shared.boot_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            simulated: self.shared.probe.simulated() || config.simulated(),
            driver_version: self.shared.driver.driver_version.clone(),
            cuda_version: self.shared.driver.cuda_version.clone(),
            devices: health.devices,
            ram_total_mb: health.ram_total_mb,
            harnesses: self.shared.harnesses.iter().map(|(name, harness)| harness.info(name)).collect(),
            fencing: true,
        }
    }

    /// Raise the highest term seen to `term` (a new cluster leader does this before it acts);
    /// a lower one is refused.
    pub fn fence(&self, term: u64) -> Result<FenceResponse, ApiError> {
        let mut registry = self.registry();
        let registry = &mut *registry;
        let admitted = registry.fence.admit(Some(term), &self.shared.term_file);
        let outcome = admitted.as_ref().map_or_else(ApiError::code, |()| "accepted");
        registry.fence.record("fence", None, Some(term), outcome, registry.generation);
        admitted?;
        Ok(FenceResponse { term: registry.fence.term, generation: registry.generation })
    }

    /// The record of lifecycle decisions, oldest first.
    pub fn actions(&self) -> Actions {
        let registry = self.registry();
        Actions {
            boot_id: self.shared.boot_id.clone(),
            term: registry.fence.term,
            actions: registry.fence.actions(),
        }
    }

    /// The Prometheus exposition text.
    pub async fn metrics_text(&self) -> String {
        let health = self.health().await;
        let models = self.models();
        self.shared.metrics.render(models.generation, &health.devices, &models.models)
    }

    /// The engine serving `model` and a guard counting the request in flight. Taken under the
    /// registry lock, so an unload that has started draining can never miss a request.
    pub fn route(&self, model: &str) -> Result<Route, ApiError> {
        let registry = self.registry();
        let slot = registry.models.get(model).ok_or_else(|| ApiError::ModelNotFound(model.to_owned()))?;
        match (slot.status, &slot.base_url) {
            (ModelState::Loaded, Some(base_url)) => Ok(Route {
                base_url: base_url.clone(),
                served_model: slot.served_model.clone(),
                guard: slot.usage.enter(),
            }),
            (ModelState::Loading, _) | (ModelState::Loaded, None) => {
                Err(ApiError::ModelLoading(model.to_owned()))
            }
            (ModelState::Unloading, _) => Err(ApiError::ModelDraining(model.to_owned())),
            (ModelState::Failed, _) => Err(ApiError::ModelFailed {
                model: model.to_owned(),
                error: slot.error.clone().unwrap_or_default(),
            }),
        }
    }
}
