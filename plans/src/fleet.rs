//! The desired state: a validated [`Fleet`] of policy, neurons, models and client keys (spec §2),
//! and the serving [`Profile`] that decides how an engine is started.
//!
//! Parsing and validation of `fleet/*.toml` live in `fleet/load.rs`; a `Fleet` only exists once
//! every check has passed (preconditions in types: the planner never sees raw TOML).

use std::collections::BTreeMap;

pub mod keys;
mod load;

pub use keys::{KeyLimits, KeySpec, OperatorAccess, Priority};
pub use load::{FleetLoad, load};

/// How the planner picks models to unload when a neuron needs room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eviction {
    /// Least recently used first.
    #[default]
    Lru,
    /// Lowest `priority` first, then least recently used.
    Priority,
}

/// Whether the daemon applies plans or only reports drift.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconcileMode {
    #[default]
    Auto,
    Off,
}

/// Which version of the fleet directory the daemon applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceMode {
    /// The files as saved, committed or not.
    #[default]
    Worktree,
    /// Only what is committed at HEAD.
    Commit,
}

/// `[policy]`: fleet-wide behaviour.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub eviction: Eviction,
    pub reconcile: ReconcileMode,
    /// Unload models loaded through cortex that no fleet file declares any more.
    pub prune: bool,
    /// Unload on-demand models idle this long (milliseconds).
    pub idle_unload_after_ms: Option<u64>,
    pub source: SourceMode,
    /// Fleet-wide defaults of the contention settings; each model may override them.
    #[serde(default)]
    pub contention: Contention,
    /// How far above the mean in-flight load a copy may go before affinity routing spills a
    /// request to the session's next copy (`affinity_load_factor`).
    #[serde(default)]
    pub affinity_load_factor: LoadFactor,
}

/// How a request chooses among a model's ready copies (`routing` in `[policy]` or a model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// The copy that holds the conversation: rendezvous order of its session key, past copies
    /// loaded above the load factor.
    #[default]
    Affinity,
    /// The copy with the fewest requests in flight.
    LeastBusy,
}

/// A load factor in thousandths (1.25 is 1250), so that the policy stays `Eq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadFactor(pub u32);

impl LoadFactor {
    /// The lowest factor accepted: a copy may always take its mean share.
    pub const MIN: f64 = 1.0;
    /// The highest factor accepted (beyond it affinity never spills).
    pub const MAX: f64 = 100.0;

    /// The factor, from a float within [`LoadFactor::MIN`]..=[`LoadFactor::MAX`].
    pub fn from_f64(factor: f64) -> Option<LoadFactor> {
        let ok = factor.is_finite() && (Self::MIN..=Self::MAX).contains(&factor);
        // Within 1..=100 the product fits easily; rounding to thousandths is the stated precision.
        ok.then(|| LoadFactor((factor * 1000.0).round() as u32))
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl Default for LoadFactor {
    fn default() -> Self {
        LoadFactor(1250)
    }
}

/// How requests wait for a model and how a contended neuron swaps models (spec §7). Every
/// field is optional where it is written (`[policy]` or `[[model]]`); [`ModelSpec::contention`]
/// resolves model → policy, and the consumer fills what is still unset with its defaults
/// ([`Contention::DEFAULT_MIN_RESIDENCY_MS`], [`Contention::DEFAULT_MAX_WAIT_MS`]; the daemon
/// supplies the queue bounds from its own settings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contention {
    /// A copy loaded this long ago or less is not evicted (the eviction waits).
    pub min_residency_ms: Option<u64>,
    /// A waiting request older than this makes a contended neuron swap to its model, even
    /// while the resident model still has work.
    pub max_wait_ms: Option<u64>,
    /// Requests in flight per copy; beyond it they wait in cortex's queue. `None`: the engine's
    /// parallel slots where the harness reports them, else unlimited.
    pub max_concurrency: Option<u32>,
    /// Requests that may wait for the model; past that, 429 with `Retry-After`.
    pub queue_length: Option<u32>,
    /// How long one request may wait in the queue before 503 with `Retry-After`.
    pub queue_timeout_ms: Option<u64>,
    /// How a request chooses among the model's ready copies; `None`: [`Routing::Affinity`].
    pub routing: Option<Routing>,
}

impl Contention {
    pub const DEFAULT_MIN_RESIDENCY_MS: u64 = 5_000;
    pub const DEFAULT_MAX_WAIT_MS: u64 = 20_000;

    /// Each field of `self`, else the one of `fallback`.
    pub fn or(self, fallback: Contention) -> Contention {
        Contention {
            min_residency_ms: self.min_residency_ms.or(fallback.min_residency_ms),
            max_wait_ms: self.max_wait_ms.or(fallback.max_wait_ms),
            max_concurrency: self.max_concurrency.or(fallback.max_concurrency),
            queue_length: self.queue_length.or(fallback.queue_length),
            queue_timeout_ms: self.queue_timeout_ms.or(fallback.queue_timeout_ms),
            routing: self.routing.or(fallback.routing),
        }
    }

    pub fn min_residency(&self) -> u64 {
        self.min_residency_ms.unwrap_or(Self::DEFAULT_MIN_RESIDENCY_MS)
    }

    pub fn max_wait(&self) -> u64 {
        self.max_wait_ms.unwrap_or(Self::DEFAULT_MAX_WAIT_MS)
    }

    pub fn routing(&self) -> Routing {
        self.routing.unwrap_or_default()
    }
}

/// Where a declaration came from, for diagnostics raised after loading (e.g. by the planner).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub path: String,
    pub line: usize,
    pub column: usize,
}

/// Whether a neuron takes new work: the fleet's own `kubectl cordon` / `kubectl drain`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NeuronState {
    /// Takes placements as usual.
    #[default]
    Active,
    /// Takes no new placement (no cold load, no new replica, no reload); what is loaded keeps
    /// serving, and a pin without its copy there is suspended.
    Cordoned,
    /// As cordoned, and the planner empties it make-before-break: what the fleet wants kept
    /// (replicas, pinned copies, busy on-demand copies) is loaded elsewhere and ready before the
    /// copy here drains and unloads; what fits nowhere else keeps serving here.
    Draining,
}

impl NeuronState {
    pub fn as_str(self) -> &'static str {
        match self {
            NeuronState::Active => "active",
            NeuronState::Cordoned => "cordoned",
            NeuronState::Draining => "draining",
        }
    }

    /// Whether new copies may be started there.
    pub fn schedulable(self) -> bool {
        self == NeuronState::Active
    }
}

/// `[[neuron]]`: a node daemon cortex talks to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NeuronSpec {
    pub name: String,
    pub endpoint: String,
    pub labels: BTreeMap<String, String>,
    /// `state = "active" | "cordoned" | "draining"`.
    #[serde(default)]
    pub state: NeuronState,
    pub origin: Origin,
}

/// The fields that decide how an engine is started for a model. Two loads with equal profiles
/// are the same deployment; a difference means the plan reloads the model (`-/+`).
/// Also the neuron's wire type: the neuron reports the profile each model was loaded with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    pub harness: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx_size: Option<u32>,
    #[serde(default)]
    pub args: Vec<String>,
}

impl Profile {
    /// The profile as `(field, value)` lines, in a fixed order, for field-by-field diffs.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let quoted = |s: &str| format!("{s:?}");
        vec![
            ("harness", quoted(&self.harness)),
            ("source", quoted(&self.source)),
            ("quant", self.quant.as_deref().map_or_else(|| "(unset)".to_owned(), quoted)),
            ("ctx_size", self.ctx_size.map_or_else(|| "(unset)".to_owned(), |n| n.to_string())),
            ("args", format!("[{}]", self.args.iter().map(|a| quoted(a)).collect::<Vec<_>>().join(", "))),
        ]
    }
}

/// `[[model]]`: a model the fleet serves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    /// What clients send as `model`.
    pub id: String,
    /// Extra names clients may use.
    pub aliases: Vec<String>,
    pub profile: Profile,
    /// Total accelerator memory it needs.
    pub vram_mb: u64,
    /// Devices it needs; 0 means it runs on CPU and is accounted against host RAM.
    pub min_devices: u32,
    /// Host RAM it needs (what counts for CPU models).
    pub ram_mb: u64,
    /// Per-device floor of free VRAM.
    pub min_device_vram_mb: u64,
    /// Must be loaded on each of these neurons, and is never evicted there.
    pub pinned_on: Vec<String>,
    /// Keep at least this many loaded somewhere (0 = on demand only).
    pub replicas: u32,
    /// For `eviction = "priority"`: lower goes first.
    pub priority: i64,
    /// Only neurons with all of these labels may run it.
    pub require_labels: BTreeMap<String, String>,
    /// Contention settings written on this model (unset fields fall back to `[policy]`).
    #[serde(default)]
    pub contention: Contention,
    /// The most tokens one request may generate: the gateway clamps every request's output
    /// limit to it and sets it on requests that name none. `None`: the engine's own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    pub origin: Origin,
}

impl ModelSpec {
    /// This model's contention settings: its own, else the fleet-wide ones of `policy`.
    pub fn contention(&self, policy: &Policy) -> Contention {
        self.contention.or(policy.contention)
    }

    /// Whether `name` (an id or an alias) names this model.
    pub fn answers_to(&self, name: &str) -> bool {
        self.id == name || self.aliases.iter().any(|a| a == name)
    }

    /// Whether the model runs on CPU only.
    pub fn is_cpu(&self) -> bool {
        self.min_devices == 0
    }
}

/// A validated fleet: every file merged, every reference resolved. Built only by [`load`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fleet {
    pub policy: Policy,
    /// Sorted by name.
    pub neurons: Vec<NeuronSpec>,
    /// In declaration order (files sorted by path, then order within a file).
    pub models: Vec<ModelSpec>,
    /// Client keys (`[[key]]`), in declaration order.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// `sha256:<hex>` over every file's path and content: identifies this exact fleet.
    pub digest: String,
}

impl Fleet {
    pub fn neuron(&self, name: &str) -> Option<&NeuronSpec> {
        self.neurons.iter().find(|n| n.name == name)
    }

    /// The declared state of neuron `name` (`Active` for a name the fleet does not declare).
    pub fn neuron_state(&self, name: &str) -> NeuronState {
        self.neuron(name).map_or(NeuronState::Active, |n| n.state)
    }

    /// The model that `name` (an id or an alias) refers to.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.answers_to(name))
    }
}
