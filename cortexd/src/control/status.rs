//! The daemon's status (spec §6): sync and health, conditions, revisions, recent reconcile
//! runs and the current plan; served by the admin API and rendered by `cortex status`.

use plans::fleet::{Fleet, ReconcileMode};
use plans::maintenance::NeuronMaintenance;
use plans::plan::{Plan, Revision};
use plans::topology::{ModelState, Topology};

use crate::control::cluster_status::ClusterStatus;
use crate::control::fleetwatch::FleetStatus;
use crate::control::poller::Observed;
use crate::control::reconcile::Trigger;

/// Whether the observed state matches the fleet in force.
#[allow(clippy::enum_variant_names, reason = "Argo CD's words, as `cortex status` shows them")]
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

/// How a reconcile pass ended (the closed list; docs/cli.md describes each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// The fleet matches: nothing to do, nothing infeasible, no drift.
    NoChanges,
    /// No action to take, but something is infeasible or drifted.
    NothingFeasible,
    /// `reconcile = "off"`: the plan is reported, not applied.
    Drift,
    /// Every action that was due is waiting out its backoff.
    BackingOff,
    /// Every action applied.
    Applied,
    /// Only 409s: another actor changed a neuron; the next pass re-plans without backoff.
    Conflict,
    /// At least one action failed; its (model, neuron) backs off.
    Failed,
    /// Cluster mode: another replica leads (or none does yet); this one reports the plan only.
    NotLeader,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::NoChanges => "no_changes",
            RunResult::NothingFeasible => "nothing_feasible",
            RunResult::Drift => "drift",
            RunResult::BackingOff => "backing_off",
            RunResult::Applied => "applied",
            RunResult::Conflict => "conflict",
            RunResult::Failed => "failed",
            RunResult::NotLeader => "not_leader",
        }
    }
}

/// A (model, neuron) whose last action failed, waiting before the next try.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackingOff {
    pub model: String,
    pub neuron: String,
    /// Failures in a row.
    pub failures: u32,
    pub next_try_unix_ms: u64,
    pub error: String,
}

/// One reconcile pass.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Run {
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    pub revision: String,
    /// What woke the pass.
    #[serde(default)]
    pub trigger: Trigger,
    pub result: RunResult,
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
    /// What the reconciler will try again, and when.
    #[serde(default)]
    pub backing_off: Vec<BackingOff>,
    /// Cluster mode: the replicas, the leader, etcd (filled in by the admin API; absent
    /// standalone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Each cordoned or draining neuron: what cortex manages there still, the requests in
    /// flight, and whether it is safe to stop.
    #[serde(default)]
    pub maintenance: Vec<NeuronMaintenance>,
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

/// Bring `status` up to date with the fleet in force and the observed state: mode, topology,
/// conditions, sync and health (and their gauges). The plan, runs and revisions are the
/// reconciler's to set.
pub fn observe(status: &mut DaemonStatus, fleet: &Fleet, fleet_status: FleetStatus, observed: &Observed) {
    status.mode = Some(fleet.policy.reconcile);
    status.topology = observed.topology.clone();
    status.pinned = fleet
        .models
        .iter()
        .filter(|m| !m.pinned_on.is_empty())
        .map(|m| (m.id.clone(), m.pinned_on.clone()))
        .collect();
    status.maintenance = plans::maintenance::maintenance(fleet, &observed.topology, &status.plan);
    status.conditions = conditions(&fleet_status, status);
    // An unreachable neuron is never in sync: nobody knows what it runs.
    let unreachable = observed.topology.neurons.iter().any(|n| !n.reachable);
    status.sync = if status.plan.is_empty() && !unreachable { Sync::Synced } else { Sync::OutOfSync };
    let failed_models =
        observed.topology.neurons.iter().any(|n| n.models.iter().any(|m| m.status == ModelState::Failed));
    status.health = if status.conditions.iter().any(|c| !c.ok) || failed_models {
        Health::Degraded
    } else {
        Health::Healthy
    };
    metrics::gauge!("cortex_fleet_in_sync").set(if status.sync == Sync::Synced { 1.0 } else { 0.0 });
    let revision = fleet_status.revision.short(&fleet_status.digest);
    let previous = status.fleet.revision.short(&status.fleet.digest);
    if previous != revision && !status.fleet.digest.is_empty() {
        metrics::gauge!("cortex_fleet_info", "revision" => previous).set(0.0);
    }
    metrics::gauge!("cortex_fleet_info", "revision" => revision).set(1.0);
    status.fleet = fleet_status;
}

fn conditions(fleet: &FleetStatus, status: &DaemonStatus) -> Vec<Condition> {
    let mut conditions = vec![fleet_condition(fleet), reachable_condition(status)];
    if let Some(run) = status.runs.last() {
        let mut message = run.errors.first().cloned().unwrap_or_else(|| run.summary.clone());
        if let Some(next) = status.backing_off.iter().min_by_key(|b| b.next_try_unix_ms) {
            let wait_ms = next.next_try_unix_ms.saturating_sub(crate::control::poller::now_unix_ms());
            message.push_str(&format!(
                "; next try of {} on {} in {}s (failure {} in a row)",
                next.model,
                next.neuron,
                wait_ms.div_ceil(1000),
                next.failures
            ));
        }
        conditions.push(Condition {
            kind: "Reconciled".into(),
            ok: !matches!(run.result, RunResult::Failed | RunResult::BackingOff),
            reason: run.result.as_str().into(),
            message,
        });
    }
    conditions
}

/// The `Leader` condition: whether a leader acts on the neurons, and which.
pub fn leader_condition(view: &ClusterStatus) -> Condition {
    let (ok, reason, message) = match (&view.leader, view.etcd.reachable) {
        (_, false) => (
            false,
            "EtcdUnreachable",
            format!(
                "etcd does not answer ({}): nobody acts on the neurons; ready models are still served",
                view.etcd.error.as_deref().unwrap_or("no answer yet")
            ),
        ),
        (Some(leader), true) => (true, "Elected", format!("{} leads (term {})", leader.replica, leader.term)),
        (None, true) => (false, "NoLeader", "no replica leads yet: an election is under way".to_owned()),
    };
    Condition { kind: "Leader".to_owned(), ok, reason: reason.to_owned(), message }
}

/// The `NeuronsFence` condition (cluster mode): a leader acts only on neurons that check its
/// term; `unfenced` names the reachable ones whose discovery does not say `fencing` (older
/// neurons).
pub fn fencing_condition(unfenced: &[String]) -> Condition {
    let (ok, reason, message) = if unfenced.is_empty() {
        (true, "AllFence", "every reachable neuron checks the leader's term".to_owned())
    } else {
        let (they, them) = if unfenced.len() == 1 { ("it does", "it") } else { ("they do", "them") };
        (
            false,
            "NotFencing",
            format!(
                "the leader does not act on {}: {they} not advertise fencing (an older neuron ignores the leader's term); upgrade {them}",
                unfenced.join(", "),
            ),
        )
    };
    Condition { kind: "NeuronsFence".to_owned(), ok, reason: reason.to_owned(), message }
}

fn fleet_condition(fleet: &FleetStatus) -> Condition {
    let errors = fleet.diagnostics.iter().filter(|d| d.is_error()).count();
    let (ok, reason, message) = match (&fleet.refused, fleet.valid) {
        (Some(refused), _) => (
            false,
            refused.reason.as_str().to_owned(),
            format!(
                "{}; the last good fleet {} stays in force",
                refused.message,
                fleet.revision.short(&fleet.digest)
            ),
        ),
        (None, true) => {
            (true, "Loaded".to_owned(), format!("fleet {} is in force", fleet.revision.short(&fleet.digest)))
        }
        (None, false) => match &fleet.fallback {
            Some(fallback) => (
                false,
                "BuildFailed".to_owned(),
                format!("the fleet directory's fleet has {errors} error(s); serving {fallback}"),
            ),
            None => (
                false,
                "BuildFailed".to_owned(),
                format!("the edited fleet has {errors} error(s); the last good fleet stays in force"),
            ),
        },
    };
    Condition { kind: "FleetValid".into(), ok, reason, message }
}

/// Names every unreachable neuron and the pinned models it holds (or should hold).
fn reachable_condition(status: &DaemonStatus) -> Condition {
    let unreachable: Vec<String> = status
        .topology
        .neurons
        .iter()
        .filter(|n| !n.reachable)
        .map(|n| {
            let pins: Vec<&str> = status
                .pinned
                .iter()
                .filter(|(_, on)| on.contains(&n.name))
                .map(|(model, _)| model.as_str())
                .collect();
            let why = n.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
            if pins.is_empty() {
                format!("{}{why}", n.name)
            } else {
                format!("{} (pins {}){why}", n.name, pins.join(", "))
            }
        })
        .collect();
    Condition {
        kind: "NeuronsReachable".into(),
        ok: unreachable.is_empty(),
        reason: if unreachable.is_empty() { "AllReachable".into() } else { "Unreachable".into() },
        message: if unreachable.is_empty() {
            format!("{} neuron(s) answer", status.topology.neurons.len())
        } else {
            format!("unreachable: {}", unreachable.join("; "))
        },
    }
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
    if let Some(cluster) = &status.cluster {
        out.push('\n');
        out.push_str(&crate::control::cluster_status::render(cluster, crate::control::poller::now_unix_ms()));
    }
    out.push('\n');
    out.push_str("NEURON      STATE        DEVICES  VRAM USED/TOTAL       RAM FREE/TOTAL\n");
    for neuron in &status.topology.neurons {
        let out_of_service = status.maintenance.iter().find(|m| m.neuron == neuron.name);
        let state = match out_of_service {
            _ if !neuron.reachable => "unreachable",
            Some(m) if m.safe_to_stop && m.state == plans::fleet::NeuronState::Draining => "drained",
            Some(m) => m.state.as_str(),
            None => "up",
        };
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
            let suspended =
                status.plan.suspended_pins.iter().any(|p| p.model == model.id && p.neuron == neuron.name);
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
                if suspended {
                    "suspended"
                } else if pinned {
                    "yes"
                } else {
                    "no"
                }
            ));
        }
    }
    render_maintenance(&mut out, status);
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
    if !status.backing_off.is_empty() {
        out.push_str("\nBACKING OFF\n");
        let now = crate::control::poller::now_unix_ms();
        for entry in &status.backing_off {
            out.push_str(&format!(
                "  {} on {}: failure {} in a row, next try in {}s: {}\n",
                entry.model,
                entry.neuron,
                entry.failures,
                entry.next_try_unix_ms.saturating_sub(now).div_ceil(1000),
                entry.error
            ));
        }
    }
    out.push_str("\nRECENT RUNS (newest last)\n");
    if status.runs.is_empty() {
        out.push_str("  none yet\n");
    }
    for run in &status.runs {
        out.push_str(&format!(
            "  {:<10} {:<16} {:<16} {:>6} ms  {}\n",
            run.revision,
            run.trigger.as_str(),
            run.result.as_str(),
            run.duration_ms,
            run.summary
        ));
        for error in &run.errors {
            out.push_str(&format!("    error: {error}\n"));
        }
    }
    out
}

/// The MAINTENANCE section, when a neuron is cordoned or draining: its progress, when it is
/// safe to stop, and the pins suspended there with their stand-ins.
fn render_maintenance(out: &mut String, status: &DaemonStatus) {
    if status.maintenance.is_empty() {
        return;
    }
    out.push_str("\nMAINTENANCE\n");
    for neuron in &status.maintenance {
        out.push_str(&format!("  {}\n", neuron.summary()));
        for model in &neuron.suspended_pins {
            let stand_in = status
                .plan
                .suspended_pins
                .iter()
                .find(|p| &p.model == model && p.neuron == neuron.neuron)
                .and_then(|p| p.stand_in.as_deref());
            let stand_in = stand_in.map_or_else(|| "no stand-in".to_owned(), |n| format!("stand-in on {n}"));
            out.push_str(&format!("    pin of {model} suspended ({stand_in})\n"));
        }
    }
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
                trigger: Trigger::FleetRevision,
                result: RunResult::Applied,
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
            backing_off: Vec::new(),
            cluster: None,
            maintenance: Vec::new(),
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
              0123456    fleet_revision   applied            1520 ms  Apply complete! Loaded 1, reloaded 0, unloaded 0.
        "#]]
        .assert_eq(&render(&status));
    }

    #[test]
    fn status_shows_a_drain_and_when_it_is_safe_to_stop() {
        let fleet_text = r#"
[[neuron]]
name = "beast"
endpoint = "http://beast:13131"
state = "draining"

[[neuron]]
name = "quad"
endpoint = "http://quad:13131"
state = "cordoned"

[[neuron]]
name = "spare"
endpoint = "http://spare:13131"

[[model]]
id = "coder"
harness = "llamacpp"
source = "coder.gguf"
vram_mb = 8000
pinned_on = ["beast"]
"#;
        let load = plans::fleet::load(&[("fleet.toml".to_owned(), fleet_text.to_owned())]);
        let fleet = load.fleet.unwrap_or_else(|| panic!("{:?}", load.diagnostics));
        let mut coder = model("coder", ModelState::Loaded, vec![0], true);
        coder.in_flight = 2;
        let gpu = |free| vec![device(0, 32_000, free)];
        let neuron = |name: &str, devices, models| NeuronStatus {
            name: name.into(),
            reachable: true,
            harnesses: vec!["llamacpp".into()],
            devices,
            models,
            ..NeuronStatus::default()
        };
        let topology = Topology::new(
            1,
            vec![
                neuron("beast", gpu(24_000), vec![coder]),
                neuron("quad", gpu(32_000), Vec::new()),
                neuron("spare", gpu(32_000), Vec::new()),
            ],
        );
        let options = plans::plan::PlanOptions { now_unix_ms: 2, prune: false };
        let plan = plans::plan::plan(&fleet, &topology, &options);
        let status = DaemonStatus {
            maintenance: plans::maintenance::maintenance(&fleet, &topology, &plan),
            pinned: vec![("coder".into(), vec!["beast".into()])],
            topology,
            plan,
            ..DaemonStatus::default()
        };
        let text = render(&status);
        let from = text.find("NEURON").unwrap_or(0);
        let to = text.find("CONDITIONS").unwrap_or(text.len());
        expect_test::expect![[r#"
            NEURON      STATE        DEVICES  VRAM USED/TOTAL       RAM FREE/TOTAL
            beast       draining     1        8000 / 32000 MB       0 / 0 MB
            quad        cordoned     1        0 / 32000 MB          0 / 0 MB
            spare       up           1        0 / 32000 MB          0 / 0 MB

            MODEL                        NEURON      STATUS     DEVICES  PINNED
            coder                        beast       loaded     0        suspended

            MAINTENANCE
              beast draining: 1 copy left, 2 requests in flight: coder → spare (its load has not started)
                pin of coder suspended (stand-in on spare)
              quad cordoned: safe to stop: nothing cortex manages is loaded there

        "#]]
        .assert_eq(&text[from..to]);
    }
}
