//! The daemon's status (spec §6): sync and health, conditions, revisions, recent reconcile
//! runs and the current plan; served by the admin API and rendered by `cortex status`.

use plans::fleet::ReconcileMode;
use plans::plan::{Plan, Revision};
use plans::topology::{ModelState, Topology};

use crate::fleetwatch::FleetStatus;

/// Whether the observed state matches the fleet in force.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Sync {
    #[default]
    Unknown,
    Synced,
    OutOfSync,
}

/// How the fleet is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Health {
    #[default]
    Unknown,
    Healthy,
    /// Actions are being applied.
    Progressing,
    /// Something is wrong: unreachable neurons, failed models, failed actions, an invalid fleet.
    Degraded,
}

/// A named fact about the daemon, Kubernetes-style.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Condition {
    /// `FleetValid`, `NeuronsReachable`, `Reconciled`.
    pub kind: String,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

/// A revision and when something happened to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RevisionRecord {
    pub revision: Revision,
    pub digest: String,
    pub at_unix_ms: u64,
}

/// One reconcile pass.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Run {
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    pub revision: String,
    /// `no_changes`, `applied`, `failed`, `drift` (mode off).
    pub result: String,
    pub summary: String,
    #[serde(default)]
    pub errors: Vec<String>,
}

/// Everything `cortex status` shows.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DaemonStatus {
    pub format_version: u32,
    pub sync: Sync,
    pub health: Health,
    pub mode: Option<ReconcileMode>,
    pub fleet: FleetStatus,
    pub last_applied: Option<RevisionRecord>,
    pub last_attempted: Option<RevisionRecord>,
    pub conditions: Vec<Condition>,
    pub topology: Topology,
    /// Pinned (model → neurons) from the fleet in force, for the models table.
    pub pinned: Vec<(String, Vec<String>)>,
    pub plan: Plan,
    /// The newest last.
    pub runs: Vec<Run>,
}

/// How many reconcile runs status keeps.
pub const RUNS_KEPT: usize = 10;

/// Render `status` as the `cortex status` text.
pub fn render(status: &DaemonStatus) -> String {
    let mut out = String::new();
    let revision = status.fleet.revision.short(&status.fleet.digest);
    let mode = match status.mode {
        Some(ReconcileMode::Auto) => "auto",
        Some(ReconcileMode::Off) => "off (plan and report only)",
        None => "unknown",
    };
    out.push_str(&format!(
        "Fleet:   {revision} ({}, source {:?})\n",
        plans::plan::short_digest(&status.fleet.digest),
        status.fleet.source
    ));
    out.push_str(&format!(
        "Sync:    {:?}    Health: {:?}    Reconcile: {mode}\n",
        status.sync, status.health
    ));
    let record = |r: &Option<RevisionRecord>| {
        r.as_ref().map_or_else(|| "never".to_owned(), |r| r.revision.short(&r.digest))
    };
    out.push_str(&format!(
        "Applied: {}    Attempted: {}\n",
        record(&status.last_applied),
        record(&status.last_attempted)
    ));
    if status.fleet.pending {
        out.push_str(
            "Pending: uncommitted edits in the fleet directory are not applied (source = \"commit\")\n",
        );
    }
    out.push('\n');
    out.push_str("NEURON      STATE        DEVICES  VRAM USED/TOTAL       RAM FREE/TOTAL\n");
    for neuron in &status.topology.neurons {
        let state = if neuron.reachable { "up" } else { "unreachable" };
        let total: u64 = neuron.devices.iter().map(|d| d.vram_total_mb).sum();
        let free: u64 = neuron.devices.iter().map(|d| d.vram_free_mb).sum();
        let vram = format!("{} / {} MB", total - free.min(total), total);
        let ram = format!("{} / {} MB", neuron.ram_free_mb, neuron.ram_total_mb);
        out.push_str(&format!(
            "{:<11} {:<12} {:<8} {:<21} {}\n",
            neuron.name,
            state,
            neuron.devices.len(),
            vram,
            ram
        ));
    }
    out.push('\n');
    out.push_str("MODEL                        NEURON      STATUS     DEVICES  PINNED\n");
    for neuron in &status.topology.neurons {
        for model in &neuron.models {
            let pinned = status.pinned.iter().any(|(m, ns)| m == &model.id && ns.contains(&neuron.name));
            let status_text = match model.status {
                ModelState::Loading => "loading",
                ModelState::Loaded => "loaded",
                ModelState::Unloading => "unloading",
                ModelState::Failed => "failed",
            };
            let managed = if model.profile.is_some() { "" } else { " (unmanaged)" };
            let devices = if model.devices.is_empty() {
                "cpu".to_owned()
            } else {
                model.devices.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            };
            out.push_str(&format!(
                "{:<28} {:<11} {:<10} {:<8} {}{managed}\n",
                model.id,
                neuron.name,
                status_text,
                devices,
                if pinned { "yes" } else { "no" }
            ));
        }
    }
    out.push_str("\nCONDITIONS\n");
    for condition in &status.conditions {
        out.push_str(&format!(
            "  {:<18} {:<5} {}: {}\n",
            condition.kind,
            if condition.ok { "True" } else { "False" },
            condition.reason,
            condition.message
        ));
    }
    if !status.fleet.diagnostics.is_empty() {
        out.push_str("\nFLEET DIAGNOSTICS\n");
        for diagnostic in &status.fleet.diagnostics {
            out.push_str(&format!("  {diagnostic}\n"));
        }
    }
    let counts = status.plan.counts();
    out.push_str(&format!(
        "\nPLAN: {} to load, {} to reload, {} to unload, {} infeasible, {} drifted\n",
        counts.load,
        counts.reload,
        counts.unload,
        status.plan.infeasible.len(),
        status.plan.drift.len()
    ));
    out.push_str("\nRECENT RUNS (newest last)\n");
    if status.runs.is_empty() {
        out.push_str("  none yet\n");
    }
    for run in &status.runs {
        out.push_str(&format!(
            "  {:<10} {:<12} {:>6} ms  {}\n",
            run.revision, run.result, run.duration_ms, run.summary
        ));
        for error in &run.errors {
            out.push_str(&format!("    error: {error}\n"));
        }
    }
    out
}
