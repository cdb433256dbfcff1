//! The plan (spec §4): the public types, [`plan`] and the router's [`place_one`], both built on
//! the same passes over the same capacity ledger so that a cold load and a reconcile agree.
//!
//! Code map: `plan/ledger.rs` keeps per-neuron capacity and picks devices and evictions,
//! `plan/passes.rs` decides what the fleet wants, `plan/order.rs` builds the action DAG,
//! `plan/render.rs` and `plan/json.rs` print it, `plan/file.rs` saves it for `cortex apply FILE`.
//! Decisions where the spec is silent are documented in docs/plan-format.md.

use crate::fleet::{Eviction, Fleet, Profile};
use crate::topology::Topology;

mod file;
mod json;
mod ledger;
mod order;
mod passes;
mod render;

pub use file::{FleetOrigin, PlanFile, PlanFileError};
pub use json::render_json;
pub use render::render_text;

/// The version of the JSON plan (`--json`) and of saved plan files.
pub const FORMAT_VERSION: u32 = 1;

/// Inputs to planning besides the fleet and the topology.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanOptions {
    /// The current time; idleness is measured against it (the planner reads no clock).
    pub now_unix_ms: u64,
    /// Unload undeclared models loaded through cortex; OR-ed with `fleet.policy.prune`.
    pub prune: bool,
}

/// The fleet's git revision, shown in plan headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revision {
    /// The full commit hash of HEAD; `None` when the fleet is not in a git repository.
    pub commit: Option<String>,
    /// Whether the fleet files differ from that commit.
    pub dirty: bool,
}

impl Revision {
    /// `1a2b3c4`, `1a2b3c4-dirty`, or the digest's first 12 hex digits when there is no git.
    pub fn short(&self, fleet_digest: &str) -> String {
        match &self.commit {
            Some(commit) => {
                let short: String = commit.chars().take(7).collect();
                if self.dirty { format!("{short}-dirty") } else { short }
            }
            None => short_digest(fleet_digest).to_owned(),
        }
    }
}

/// The first 12 hex digits of a `sha256:<hex>` digest.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// What the planner proposes: actions in a valid execution order, what it could not place,
/// and drift it leaves alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub fleet_digest: String,
    /// In execution order: every action comes after the ones named in its `after`.
    pub actions: Vec<Action>,
    pub infeasible: Vec<Infeasible>,
    /// Undeclared models loaded through cortex that this plan does not unload (no prune).
    pub drift: Vec<Drift>,
    /// Planning errors (an ordering cycle); a plan with errors must not be applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Plan {
    /// True when the fleet matches: nothing to do, nothing infeasible, no drift.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
            && self.infeasible.is_empty()
            && self.drift.is_empty()
            && self.errors.is_empty()
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for action in &self.actions {
            match action.kind {
                ActionKind::Load => counts.load += 1,
                ActionKind::Reload => counts.reload += 1,
                ActionKind::Unload => {
                    counts.unload += 1;
                    if matches!(action.reason, Reason::Evict { .. }) {
                        counts.evictions += 1;
                    }
                }
            }
        }
        counts
    }
}

/// Action totals for the summary line. `unload` includes `evictions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub load: usize,
    pub reload: usize,
    pub unload: usize,
    pub evictions: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// `+`: start the model on the neuron.
    Load,
    /// `-`: stop it.
    Unload,
    /// `-/+`: stop it and start it again with the fleet's profile.
    Reload,
}

impl ActionKind {
    pub fn symbol(self) -> &'static str {
        match self {
            ActionKind::Load => "+",
            ActionKind::Unload => "-",
            ActionKind::Reload => "-/+",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Load => "load",
            ActionKind::Unload => "unload",
            ActionKind::Reload => "reload",
        }
    }
}

/// One lifecycle change on one neuron.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Action {
    /// `a1`, `a2`, … in execution order; stable for identical input.
    pub id: String,
    pub kind: ActionKind,
    /// The fleet id (what the engine serves it as).
    pub model: String,
    pub neuron: String,
    /// Load/Reload: the devices to run on. Unload: the devices it occupies. Empty for CPU.
    pub devices: Vec<u32>,
    /// Load/Reload: what it will hold. Unload: what it frees.
    pub vram_mb: u64,
    pub ram_mb: u64,
    /// Load/Reload: the profile to start it with.
    pub profile: Option<Profile>,
    /// Reload: the profile it runs with now (the plan shows the difference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_profile: Option<Profile>,
    /// Reload: the devices it occupies now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_devices: Vec<u32>,
    pub reason: Reason,
    /// Ids of the actions that must finish first (they free what this one needs).
    pub after: Vec<String>,
    /// The neuron's generation the plan was made against: the neuron refuses (409) otherwise.
    pub if_generation: u64,
}

/// Why an action is in the plan. Serialised with a stable snake_case `code`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// Load: `pinned_on` names this neuron.
    Pinned,
    /// Load: fewer than `replicas` copies are loaded.
    Replicas { wanted: u32 },
    /// Load: a request needs the model (the router's [`place_one`]).
    Requested,
    /// Reload: the fleet's serving profile differs in these fields.
    ProfileChanged { fields: Vec<String> },
    /// Reload: the copy failed on a neuron where the fleet wants it.
    Failed,
    /// Unload: making room for `for_model` under the fleet's eviction policy.
    Evict { for_model: String, policy: Eviction },
    /// Unload: loaded through cortex, declared by no fleet file, and prune is on.
    Prune,
    /// Unload: an on-demand copy idle for `idle_ms`, longer than `idle_unload_after`.
    Idle { idle_ms: u64, limit_ms: u64 },
}

impl Reason {
    /// The stable JSON code.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Pinned => "pinned",
            Reason::Replicas { .. } => "replicas",
            Reason::Requested => "requested",
            Reason::ProfileChanged { .. } => "profile_changed",
            Reason::Failed => "failed",
            Reason::Evict { .. } => "evict",
            Reason::Prune => "prune",
            Reason::Idle { .. } => "idle",
        }
    }

    /// The `# (because …)` text.
    pub fn text(&self) -> String {
        match self {
            Reason::Pinned => "the fleet pins it on this neuron".to_owned(),
            Reason::Replicas { wanted } => {
                format!("the fleet keeps {wanted} warm {}", if *wanted == 1 { "copy" } else { "copies" })
            }
            Reason::Requested => "a request needs it and no neuron has it loaded".to_owned(),
            Reason::ProfileChanged { fields } => {
                format!("its serving profile changed: {}", fields.join(", "))
            }
            Reason::Failed => "it failed where the fleet wants it loaded".to_owned(),
            Reason::Evict { for_model, policy } => {
                let how = match policy {
                    Eviction::Lru => "least recently used",
                    Eviction::Priority => "lowest priority, then least recently used",
                };
                format!("making room for {for_model}; evicted as the {how}")
            }
            Reason::Prune => "no fleet file declares it and prune is on".to_owned(),
            Reason::Idle { idle_ms, limit_ms } => format!(
                "idle for {}, longer than idle_unload_after = {}",
                render::duration(*idle_ms),
                render::duration(*limit_ms)
            ),
        }
    }
}

/// A desired placement the planner could not make.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Infeasible {
    pub model: String,
    /// The neuron it was wanted on; `None` when the planner could choose any neuron.
    pub neuron: Option<String>,
    pub want: Want,
    /// Which resource or condition ran out.
    pub dimension: Dimension,
    /// A sentence with the figures.
    pub detail: String,
}

/// What the infeasible placement was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Want {
    Pin,
    Replicas,
    Reload,
    Request,
}

/// The dimension that ran out, like Nomad's "Dimension … exhausted".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// The neuron has fewer devices than `min_devices`.
    Devices,
    /// Not enough devices with `min_device_vram_mb` free, even after evictions.
    PerDeviceVram,
    /// Devices meet the floor but not the model's share of `vram_mb`.
    TotalVram,
    /// Not enough host RAM.
    HostRam,
    /// Only evicting models pinned there (or a copy started outside cortex) would make it fit.
    PinConflict,
    NeuronUnreachable,
    HarnessMissing,
    /// The neuron lacks a label from `require_labels`.
    Labels,
    /// Every eligible neuron already holds a copy (or there are no neurons).
    Neurons,
    /// `place_one` was asked for a name the fleet does not declare.
    UnknownModel,
}

impl Dimension {
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Devices => "devices",
            Dimension::PerDeviceVram => "per_device_vram",
            Dimension::TotalVram => "total_vram",
            Dimension::HostRam => "host_ram",
            Dimension::PinConflict => "pin_conflict",
            Dimension::NeuronUnreachable => "neuron_unreachable",
            Dimension::HarnessMissing => "harness_missing",
            Dimension::Labels => "labels",
            Dimension::Neurons => "neurons",
            Dimension::UnknownModel => "unknown_model",
        }
    }
}

/// A model loaded through cortex that no fleet file declares, left loaded (prune is off).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drift {
    pub model: String,
    pub neuron: String,
    pub devices: Vec<u32>,
    pub vram_mb: u64,
    pub ram_mb: u64,
}

/// Where the router should load a requested model, and what to evict first.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub neuron: String,
    pub devices: Vec<u32>,
    /// Unloads to run before `load`, in order.
    pub evictions: Vec<Action>,
    pub load: Action,
}

/// Plan the whole fleet: pure and deterministic (the current time is in `options`).
pub fn plan(fleet: &Fleet, topology: &Topology, options: &PlanOptions) -> Plan {
    let mut planner = passes::Planner::new(fleet, topology, options);
    planner.prune_or_report_drift();
    planner.reload_pinned();
    planner.place_pins();
    planner.keep_replicas();
    planner.unload_idle();
    planner.reload_on_demand();
    planner.finish()
}

/// The router's entry point: place one requested `model` (id or alias) now, on the best neuron
/// that does not hold it, through the same ledger and eviction rules as [`plan`].
pub fn place_one(
    fleet: &Fleet,
    topology: &Topology,
    model: &str,
    options: &PlanOptions,
) -> Result<Placement, Infeasible> {
    let mut planner = passes::Planner::new(fleet, topology, options);
    planner.protect_warm_replicas();
    planner.place_requested(model)
}
