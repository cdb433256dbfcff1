//! The daemon's status (spec §6): sync and health, conditions, revisions, recent reconcile
//! runs and the current plan; served by the admin API and rendered by `cortex status`.

use plans::fleet::ReconcileMode;
use plans::plan::{Plan, Revision};
use plans::topology::{ModelState, Topology};

use crate::control::fleetwatch::FleetStatus;

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
    /// The gateway's queues and swaps (filled in by the admin API; empty elsewhere).
    #[serde(default)]
    pub contention: Contention,
}

/// What the gateway's scheduler shows: queues, swaps per neuron, rejections by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contention {
    /// Models with requests waiting or in flight.
    pub queues: Vec<QueueStatus>,
    /// Swaps (loads that evicted another model) started per neuron since the daemon started.
    pub swaps: std::collections::BTreeMap<String, u64>,
    /// Requests the queues refused, by reason (queue_full, queue_timeout, unplaceable, load_failed).
    pub rejections: std::collections::BTreeMap<String, u64>,
}

/// One model's queue.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStatus {
    pub model: String,
    pub waiting: usize,
    pub oldest_wait_ms: u64,
    pub in_flight: u32,
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
    render_contention(&mut out, &status.contention);
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

/// The QUEUES section, when anything waits, was swapped or was refused.
fn render_contention(out: &mut String, contention: &Contention) {
    if contention.queues.is_empty() && contention.swaps.is_empty() && contention.rejections.is_empty() {
        return;
    }
    out.push_str("\nQUEUE                        WAITING  OLDEST WAIT  IN FLIGHT\n");
    for queue in &contention.queues {
        out.push_str(&format!(
            "{:<28} {:<8} {:<12} {}\n",
            queue.model,
            queue.waiting,
            format!("{:.1}s", queue.oldest_wait_ms as f64 / 1000.0),
            queue.in_flight
        ));
    }
    let pairs = |map: &std::collections::BTreeMap<String, u64>| {
        map.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    };
    out.push_str(&format!(
        "Swaps: {}\n",
        if contention.swaps.is_empty() { "none".into() } else { pairs(&contention.swaps) }
    ));
    out.push_str(&format!(
        "Refused: {}\n",
        if contention.rejections.is_empty() { "none".into() } else { pairs(&contention.rejections) }
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use plans::topology::{DeviceStatus, LoadedModel, NeuronStatus};

    fn model(id: &str, status: ModelState, devices: Vec<u32>, managed: bool) -> LoadedModel {
        LoadedModel {
            id: id.into(),
            harness: "llamacpp".into(),
            status,
            devices,
            vram_mb: 8000,
            ram_mb: 0,
            last_used_unix_ms: 0,
            in_flight: 0,
            profile: managed.then(|| plans::fleet::Profile {
                harness: "llamacpp".into(),
                source: format!("{id}.gguf"),
                quant: None,
                ctx_size: None,
                args: Vec::new(),
            }),
            load_duration_ms: None,
            error: None,
        }
    }

    fn device(index: u32, total: u64, free: u64) -> DeviceStatus {
        DeviceStatus {
            index,
            name: "RTX 5090".into(),
            vram_total_mb: total,
            vram_free_mb: free,
            ..DeviceStatus::default()
        }
    }

    #[test]
    fn status_renders_as_a_table() {
        let topology = Topology::new(
            1_700_000_000_000,
            vec![
                NeuronStatus {
                    name: "beast".into(),
                    reachable: true,
                    generation: 7,
                    devices: vec![device(0, 32_000, 16_000), device(1, 32_000, 24_000)],
                    ram_total_mb: 128_000,
                    ram_free_mb: 100_000,
                    models: vec![
                        model("coder", ModelState::Loaded, vec![0, 1], true),
                        model("hand-started", ModelState::Loaded, vec![0], false),
                    ],
                    ..NeuronStatus::default()
                },
                NeuronStatus { name: "quad".into(), reachable: false, ..NeuronStatus::default() },
            ],
        );
        let revision = Revision { commit: Some("0123456789abcdef".into()), dirty: false };
        let record =
            RevisionRecord { revision: revision.clone(), digest: "sha256:ab12".into(), at_unix_ms: 1 };
        let status = DaemonStatus {
            format_version: 1,
            sync: Sync::OutOfSync,
            health: Health::Degraded,
            mode: Some(ReconcileMode::Auto),
            fleet: FleetStatus {
                revision,
                digest: "sha256:ab12cd34ef56ab12cd34".into(),
                valid: true,
                ..FleetStatus::default()
            },
            last_applied: Some(record.clone()),
            last_attempted: Some(record),
            conditions: vec![Condition {
                kind: "NeuronsReachable".into(),
                ok: false,
                reason: "Unreachable".into(),
                message: "unreachable: quad".into(),
            }],
            topology,
            pinned: vec![("coder".into(), vec!["beast".into()])],
            plan: Plan::default(),
            runs: vec![Run {
                started_unix_ms: 1,
                duration_ms: 1520,
                revision: "0123456".into(),
                result: "applied".into(),
                summary: "Apply complete! Loaded 1, reloaded 0, unloaded 0.".into(),
                errors: Vec::new(),
            }],
            contention: Contention {
                queues: vec![QueueStatus {
                    model: "od-b".into(),
                    waiting: 12,
                    oldest_wait_ms: 4200,
                    in_flight: 0,
                }],
                swaps: [("beast".to_owned(), 3)].into(),
                rejections: [("queue_timeout".to_owned(), 1)].into(),
            },
        };
        expect_test::expect![[r#"
            Fleet:   0123456 (ab12cd34ef56, source Worktree)
            Sync:    OutOfSync    Health: Degraded    Reconcile: auto
            Applied: 0123456    Attempted: 0123456

            NEURON      STATE        DEVICES  VRAM USED/TOTAL       RAM FREE/TOTAL
            beast       up           2        24000 / 64000 MB      100000 / 128000 MB
            quad        unreachable  0        0 / 0 MB              0 / 0 MB

            MODEL                        NEURON      STATUS     DEVICES  PINNED
            coder                        beast       loaded     0,1      yes
            hand-started                 beast       loaded     0        no (unmanaged)

            CONDITIONS
              NeuronsReachable   False Unreachable: unreachable: quad

            PLAN: 0 to load, 0 to reload, 0 to unload, 0 infeasible, 0 drifted

            QUEUE                        WAITING  OLDEST WAIT  IN FLIGHT
            od-b                         12       4.2s         0
            Swaps: beast 3
            Refused: queue_timeout 1

            RECENT RUNS (newest last)
              0123456    applied        1520 ms  Apply complete! Loaded 1, reloaded 0, unloaded 0.
        "#]]
        .assert_eq(&render(&status));
    }
}
