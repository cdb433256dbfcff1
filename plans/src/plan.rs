//! The plan (spec §4): the public types, [`plan`] and the router's [`place_one`], both built on
//! the same passes over the same capacity ledger so that a cold load and a reconcile agree.
//!
//! Code map: `plan/ledger.rs` keeps per-neuron capacity and picks devices and evictions,
//! `plan/passes.rs` decides what the fleet wants, `plan/order.rs` builds the action DAG,
//! `plan/render.rs` and `plan/json.rs` print it, `plan/file.rs` saves it for `cortex apply FILE`.
//! Decisions where the spec is silent are documented in docs/plan-format.md.

use std::collections::BTreeMap;

use crate::fleet::{Eviction, Fleet, NeuronState, Profile};
use crate::topology::Topology;

pub mod evict;
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

/// What the gateway knows that neurons do not report, for the eviction choice: requests
/// waiting in its queues, since when each copy has been resident (a copy younger than its
/// `min_residency` is not evicted), and the live sessions bound to each copy by affinity
/// routing (of a model's copies, the one fewer sessions are bound to goes first). Empty for `cortex plan`, which then weighs in-flight
/// requests only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Requests waiting per model id.
    pub queued: BTreeMap<String, usize>,
    /// `(model id, neuron)` → when that copy became ready (Unix ms).
    pub resident_since: BTreeMap<(String, String), u64>,
    /// `(model id, neuron)` → the sessions routed to that copy within the gateway's window.
    pub sessions: BTreeMap<(String, String), usize>,
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
    /// Pins held in abeyance while their neuron is cordoned (without the copy) or draining.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspended_pins: Vec<SuspendedPin>,
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
    /// Load: the copy on `from`, which is draining, moves here (make-before-break: this load
    /// is ready before that copy drains and unloads).
    Relocate { from: String },
    /// Load: a stand-in while the pin on `neuron` is suspended (the neuron is `state`).
    PinSuspended { neuron: String, state: NeuronState },
    /// Unload: `neuron` is draining; `replaced_by` names the neuron whose copy takes over (it
    /// is ready first), `None` when nothing needs the copy elsewhere.
    Drain { neuron: String, replaced_by: Option<String> },
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
            Reason::Relocate { .. } => "relocate",
            Reason::PinSuspended { .. } => "pin_suspended",
            Reason::Drain { .. } => "drain",
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
            Reason::Relocate { from } => {
                format!("{from} is draining; this copy replaces the one there and is ready before it unloads")
            }
            Reason::PinSuspended { neuron, state } => format!(
                "{neuron} is {}: its pin is suspended, and this copy keeps the model warm meanwhile",
                state.as_str()
            ),
            Reason::Drain { neuron, replaced_by: Some(to) } => {
                format!("{neuron} is draining; the copy on {to} takes over, ready first")
            }
            Reason::Drain { neuron, replaced_by: None } => {
                format!("{neuron} is draining; nothing needs this copy elsewhere (it loads again on demand)")
            }
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
    /// Moving a copy off a draining neuron: it keeps serving there.
    Relocate,
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
    /// It fits once a copy has been loaded for its `min_residency`: the placement waits.
    Residency,
    /// It fits once a copy has finished loading or unloading: the placement waits.
    InTransition,
    /// The neuron is cordoned: nothing new starts there.
    Cordoned,
    /// The neuron is draining: nothing new starts there.
    Draining,
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
            Dimension::Residency => "residency",
            Dimension::InTransition => "in_transition",
            Dimension::Cordoned => "cordoned",
            Dimension::Draining => "draining",
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

/// A copy moving off a draining neuron, make-before-break: `load` (when this plan loads the
/// replacement) finishes before `unload` starts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Move {
    pub model: String,
    pub from: String,
    pub to: String,
    /// The id of the replacement's load; `None` when a copy there already serves.
    pub load: Option<String>,
    pub unload: String,
}

impl Plan {
    /// The moves off draining neurons: every `drain` unload that another copy takes over from.
    pub fn moves(&self) -> Vec<Move> {
        self.actions
            .iter()
            .filter_map(|unload| {
                let Reason::Drain { neuron, replaced_by: Some(to) } = &unload.reason else { return None };
                let load = self.actions.iter().find(|a| {
                    a.kind != ActionKind::Unload
                        && a.model == unload.model
                        && a.neuron == *to
                        && unload.after.contains(&a.id)
                });
                Some(Move {
                    model: unload.model.clone(),
                    from: neuron.clone(),
                    to: to.clone(),
                    load: load.map(|a| a.id.clone()),
                    unload: unload.id.clone(),
                })
            })
            .collect()
    }
}

/// A pin the planner does not honour while its neuron is out of service: on a draining neuron,
/// or on a cordoned one that does not hold the copy. A stand-in copy elsewhere keeps the model
/// warm meanwhile; the pin counts again once the neuron is `active`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SuspendedPin {
    pub model: String,
    pub neuron: String,
    pub state: NeuronState,
    /// Where the stand-in is (or will be) loaded, when there is one.
    pub stand_in: Option<String>,
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
    plan_with(fleet, topology, options, &Activity::default())
}

/// [`plan`], weighing what the gateway knows (queued requests, residency) in evictions.
pub fn plan_with(fleet: &Fleet, topology: &Topology, options: &PlanOptions, activity: &Activity) -> Plan {
    let mut planner = passes::Planner::new(fleet, topology, options, activity);
    planner.prune_or_report_drift();
    planner.reload_pinned();
    planner.place_pins();
    planner.keep_replicas();
    planner.unload_idle();
    planner.reload_on_demand();
    planner.empty_draining();
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
    place_one_with(fleet, topology, model, options, &Activity::default())
}

/// [`place_one`], weighing what the gateway knows (queued requests, residency) in evictions.
pub fn place_one_with(
    fleet: &Fleet,
    topology: &Topology,
    model: &str,
    options: &PlanOptions,
    activity: &Activity,
) -> Result<Placement, Infeasible> {
    let mut planner = passes::Planner::new(fleet, topology, options, activity);
    planner.protect_warm_replicas();
    planner.place_requested(model)
}
