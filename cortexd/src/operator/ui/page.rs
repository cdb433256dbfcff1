//! The fleet page's state document (`GET /ui/api/state`, and each `state` event of the feed):
//! the desired fleet, the observed topology and the reconciler's status folded into what the
//! page draws — neurons with their devices split into models, outside use and free; models with
//! where and how they are loaded; the plan as `cortex plan` renders it; the recent runs.

use std::collections::BTreeMap;

use plans::fleet::{Fleet, ModelSpec, NeuronState, ReconcileMode, SourceMode};
use plans::maintenance::NeuronMaintenance;
use plans::topology::{LoadedModel, ModelState, NeuronStatus, Topology};

use crate::control::status::{Condition, DaemonStatus, Health, QueueStatus, RevisionRecord, Run, Sync};

/// The document's format; the page checks it.
pub const FORMAT_VERSION: u32 = 1;

/// Everything the page shows except the traffic charts (see `gateway::core::traffic::Window`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PageState {
    pub format_version: u32,
    pub now_unix_ms: u64,
    /// When this daemon started: a page that sees it change knows the daemon restarted.
    pub daemon_started_unix_ms: u64,
    pub fleet: FleetView,
    pub sync: Sync,
    pub health: Health,
    pub mode: Option<ReconcileMode>,
    /// The same conditions, reasons and messages as `cortex status`.
    pub conditions: Vec<Condition>,
    pub last_applied: Option<RevisionView>,
    pub last_attempted: Option<RevisionView>,
    pub neurons: Vec<NeuronView>,
    pub models: Vec<ModelView>,
    pub plan: PlanView,
    /// Newest last, as in `cortex status`.
    pub runs: Vec<Run>,
    /// The fleet keys and what each used today and this month (`cortex usage`'s rows).
    pub keys: Vec<crate::operator::usage::KeyUsage>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct FleetView {
    /// `1a2b3c4`, `1a2b3c4-dirty`, or the digest's start without git.
    pub revision: String,
    pub commit: Option<String>,
    pub dirty: bool,
    pub digest: String,
    pub digest_short: String,
    pub source: SourceMode,
    /// Whether the last edit loaded; when false, `errors` says why and the last good fleet
    /// (the revision above) stays in force.
    pub valid: bool,
    pub pending: bool,
    /// Each diagnostic as `path:line:col: severity: message`.
    pub errors: Vec<String>,
    pub loaded_at_unix_ms: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RevisionView {
    pub revision: String,
    pub at_unix_ms: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct NeuronView {
    pub name: String,
    pub endpoint: String,
    pub labels: BTreeMap<String, String>,
    /// `up`, `unreachable`, or `unknown` before the first poll.
    pub state: &'static str,
    /// Whether it takes new work, as the fleet declares it: `active`, `cordoned` or `draining`.
    pub service: NeuronState,
    /// Cordoned or draining: what cortex manages there still, and whether it is safe to stop.
    pub maintenance: Option<MaintenanceView>,
    pub simulated: bool,
    pub error: Option<String>,
    pub generation: u64,
    pub harnesses: Vec<String>,
    pub devices: Vec<DeviceView>,
    pub ram: MemoryView,
}

/// A neuron's drain progress: `cortex status`'s MAINTENANCE line and its parts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MaintenanceView {
    /// `beast draining: 1 copy left, 3 requests in flight: coder → quad (loading there)`.
    pub summary: String,
    pub copies_left: usize,
    #[serde(flatten)]
    pub progress: NeuronMaintenance,
}

/// A device (or the host's RAM) split into models, memory used outside cortex, and free.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryView {
    pub total_mb: u64,
    pub free_mb: u64,
    /// Used, but not by a model cortex manages: other processes and models started by hand.
    pub outside_mb: u64,
    /// The models cortex manages on it.
    pub models: Vec<Segment>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceView {
    pub index: u32,
    pub name: String,
    pub utilization_pct: Option<u32>,
    pub temperature_c: Option<u32>,
    #[serde(flatten)]
    pub memory: MemoryView,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Segment {
    pub model: String,
    pub mb: u64,
    pub status: &'static str,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelView {
    pub id: String,
    pub aliases: Vec<String>,
    /// False for a model loaded somewhere that no fleet file declares.
    pub declared: bool,
    pub harness: String,
    pub pinned_on: Vec<String>,
    pub replicas: u32,
    pub vram_mb: u64,
    pub ram_mb: u64,
    pub min_devices: u32,
    /// The last measured load time of this model, anywhere.
    pub estimated_cold_start_ms: Option<u64>,
    /// Requests waiting in this gateway's queue for the model (for a copy, a load or room).
    pub queue_depth: usize,
    /// How long the oldest of them has waited.
    pub queue_oldest_wait_ms: u64,
    pub placements: Vec<PlacementView>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PlacementView {
    pub neuron: String,
    pub neuron_reachable: bool,
    /// `loading`, `loaded`, `draining` or `failed`.
    pub status: &'static str,
    /// Loaded through cortex (false: started outside it, never touched).
    pub managed: bool,
    pub devices: Vec<u32>,
    pub vram_mb: u64,
    pub ram_mb: u64,
    pub in_flight: u32,
    pub last_used_unix_ms: u64,
    /// When this page's daemon first saw it loading.
    pub loading_since_unix_ms: Option<u64>,
    pub load_duration_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PlanView {
    /// Exactly what `cortex plan` prints for this plan.
    pub text: String,
    pub empty: bool,
    pub load: usize,
    pub reload: usize,
    pub unload: usize,
    pub evictions: usize,
    pub infeasible: usize,
    pub drift: usize,
}

/// What the page remembers between documents: neither the neurons nor the status carry these.
#[derive(Debug, Default)]
pub struct Memory {
    /// `(neuron, model)` → when it was first seen loading.
    loading_since: BTreeMap<(String, String), u64>,
    /// Model → its last measured load time (kept after the model is unloaded).
    load_ms: BTreeMap<String, u64>,
}

impl Memory {
    /// Note what `topology` shows at `now`.
    pub fn observe(&mut self, topology: &Topology, now_unix_ms: u64) {
        let mut loading = BTreeMap::new();
        for neuron in &topology.neurons {
            for model in &neuron.models {
                if let Some(ms) = model.load_duration_ms {
                    self.load_ms.insert(model.id.clone(), ms);
                }
                if model.status == ModelState::Loading {
                    let key = (neuron.name.clone(), model.id.clone());
                    let since = self.loading_since.get(&key).copied().unwrap_or(now_unix_ms);
                    loading.insert(key, since);
                }
            }
        }
        self.loading_since = loading;
    }
}

/// What a document is built from.
pub struct Inputs<'a> {
    pub fleet: &'a Fleet,
    pub topology: &'a Topology,
    pub status: &'a DaemonStatus,
    pub now_unix_ms: u64,
    pub daemon_started_unix_ms: u64,
    /// The gateway's queues (models with requests waiting or in flight).
    pub queues: &'a [QueueStatus],
    /// The fleet keys' usage.
    pub keys: &'a [crate::operator::usage::KeyUsage],
}

/// Build the document. `memory` must have observed `inputs.topology`.
pub fn build(inputs: &Inputs<'_>, memory: &Memory) -> PageState {
    let status = inputs.status;
    let revision = |r: &Option<RevisionRecord>| {
        r.as_ref().map(|r| RevisionView { revision: r.revision.short(&r.digest), at_unix_ms: r.at_unix_ms })
    };
    PageState {
        format_version: FORMAT_VERSION,
        now_unix_ms: inputs.now_unix_ms,
        daemon_started_unix_ms: inputs.daemon_started_unix_ms,
        fleet: fleet_view(status),
        sync: status.sync,
        health: status.health,
        mode: status.mode.or(Some(inputs.fleet.policy.reconcile)),
        conditions: status.conditions.clone(),
        last_applied: revision(&status.last_applied),
        last_attempted: revision(&status.last_attempted),
        // Drain progress as the neurons report it now (the status's is as of the last pass).
        neurons: neurons(
            inputs.fleet,
            inputs.topology,
            &plans::maintenance::maintenance(inputs.fleet, inputs.topology, &status.plan),
        ),
        models: with_queues(models(inputs.fleet, inputs.topology, memory), inputs.queues),
        plan: plan_view(inputs),
        runs: status.runs.clone(),
        keys: inputs.keys.to_vec(),
    }
}

fn fleet_view(status: &DaemonStatus) -> FleetView {
    let fleet = &status.fleet;
    FleetView {
        revision: fleet.revision.short(&fleet.digest),
        commit: fleet.revision.commit.clone(),
        dirty: fleet.revision.dirty,
        digest: fleet.digest.clone(),
        digest_short: plans::plan::short_digest(&fleet.digest).to_owned(),
        source: fleet.source,
        valid: fleet.valid,
        pending: fleet.pending,
        errors: fleet.diagnostics.iter().map(ToString::to_string).collect(),
        loaded_at_unix_ms: fleet.loaded_at_unix_ms,
    }
}

fn plan_view(inputs: &Inputs<'_>) -> PlanView {
    let plan = &inputs.status.plan;
    let counts = plan.counts();
    // Before the first pass there is no plan yet (no digest): say so rather than "No changes".
    let text = if plan.fleet_digest.is_empty() {
        "The first reconcile pass has not finished yet.\n".to_owned()
    } else {
        plans::plan::render_text(
            plan,
            &inputs.status.topology,
            inputs.fleet,
            &inputs.status.fleet.revision,
            inputs.now_unix_ms,
        )
    };
    PlanView {
        text,
        empty: plan.is_empty(),
        load: counts.load,
        reload: counts.reload,
        unload: counts.unload,
        evictions: counts.evictions,
        infeasible: plan.infeasible.len(),
        drift: plan.drift.len(),
    }
}

/// The fleet's neurons in fleet order, each with what was last observed of it and, when
/// cordoned or draining, its progress (`maintenance`, as the status computed it).
fn neurons(fleet: &Fleet, topology: &Topology, maintenance: &[NeuronMaintenance]) -> Vec<NeuronView> {
    fleet
        .neurons
        .iter()
        .map(|spec| {
            let observed = topology.neuron(&spec.name);
            let state = match observed {
                None => "unknown",
                Some(n) if n.reachable => "up",
                Some(_) => "unreachable",
            };
            let empty = NeuronStatus::default();
            let neuron = observed.unwrap_or(&empty);
            NeuronView {
                name: spec.name.clone(),
                endpoint: spec.endpoint.clone(),
                labels: spec.labels.clone(),
                state,
                service: spec.state,
                maintenance: maintenance.iter().find(|m| m.neuron == spec.name).map(|m| MaintenanceView {
                    summary: m.summary(),
                    copies_left: m.copies.len(),
                    progress: m.clone(),
                }),
                simulated: neuron.simulated,
                error: neuron.error.clone(),
                generation: neuron.generation,
                harnesses: neuron.harnesses.clone(),
                devices: devices(neuron),
                ram: ram(neuron),
            }
        })
        .collect()
}

fn devices(neuron: &NeuronStatus) -> Vec<DeviceView> {
    neuron
        .devices
        .iter()
        .map(|device| {
            let models: Vec<Segment> = neuron
                .models
                .iter()
                .filter(|m| m.is_managed() && m.devices.contains(&device.index))
                .map(|m| Segment {
                    model: m.id.clone(),
                    mb: m.vram_mb.div_ceil(m.devices.len().max(1) as u64),
                    status: status_word(m.status),
                })
                .collect();
            DeviceView {
                index: device.index,
                name: device.name.clone(),
                utilization_pct: device.utilization_pct,
                temperature_c: device.temperature_c,
                memory: split(device.vram_total_mb, device.vram_free_mb, models),
            }
        })
        .collect()
}

fn ram(neuron: &NeuronStatus) -> MemoryView {
    let models: Vec<Segment> = neuron
        .models
        .iter()
        .filter(|m| m.is_managed() && m.devices.is_empty() && m.ram_mb > 0)
        .map(|m| Segment { model: m.id.clone(), mb: m.ram_mb, status: status_word(m.status) })
        .collect();
    split(neuron.ram_total_mb, neuron.ram_free_mb, models)
}

/// Total and free as reported; what is used beyond the managed models is outside cortex.
fn split(total_mb: u64, free_mb: u64, models: Vec<Segment>) -> MemoryView {
    let free_mb = free_mb.min(total_mb);
    let managed: u64 = models.iter().map(|s| s.mb).sum();
    let outside_mb = (total_mb - free_mb).saturating_sub(managed);
    MemoryView { total_mb, free_mb, outside_mb, models }
}

/// The page's word for a lifecycle state: an unloading model drains its requests first.
fn status_word(state: ModelState) -> &'static str {
    match state {
        ModelState::Loading => "loading",
        ModelState::Loaded => "loaded",
        ModelState::Unloading => "draining",
        ModelState::Failed => "failed",
    }
}

/// Fleet models in declaration order, then models loaded that no fleet file declares.
fn models(fleet: &Fleet, topology: &Topology, memory: &Memory) -> Vec<ModelView> {
    let mut views: Vec<ModelView> =
        fleet.models.iter().map(|spec| declared(spec, topology, memory)).collect();
    let mut undeclared: Vec<&LoadedModel> = Vec::new();
    for model in topology.neurons.iter().flat_map(|n| n.models.iter()) {
        if fleet.model(&model.id).is_none() && !undeclared.iter().any(|m| m.id == model.id) {
            undeclared.push(model);
        }
    }
    undeclared.sort_by(|a, b| a.id.cmp(&b.id));
    views.extend(undeclared.into_iter().map(|model| ModelView {
        id: model.id.clone(),
        aliases: Vec::new(),
        declared: false,
        harness: model.harness.clone(),
        pinned_on: Vec::new(),
        replicas: 0,
        vram_mb: model.vram_mb,
        ram_mb: model.ram_mb,
        min_devices: u32::try_from(model.devices.len()).unwrap_or(u32::MAX),
        estimated_cold_start_ms: memory.load_ms.get(&model.id).copied(),
        queue_depth: 0,
        queue_oldest_wait_ms: 0,
        placements: placements(&model.id, topology, memory),
    }));
    views
}

/// Each model's queue depth and oldest wait; a model with no queue has none waiting.
fn with_queues(mut views: Vec<ModelView>, queues: &[QueueStatus]) -> Vec<ModelView> {
    for view in &mut views {
        if let Some(queue) = queues.iter().find(|q| q.model == view.id) {
            (view.queue_depth, view.queue_oldest_wait_ms) = (queue.waiting, queue.oldest_wait_ms);
        }
    }
    views
}

fn declared(spec: &ModelSpec, topology: &Topology, memory: &Memory) -> ModelView {
    ModelView {
        id: spec.id.clone(),
        aliases: spec.aliases.clone(),
        declared: true,
        harness: spec.profile.harness.clone(),
        pinned_on: spec.pinned_on.clone(),
        replicas: spec.replicas,
        vram_mb: spec.vram_mb,
        ram_mb: spec.ram_mb,
        min_devices: spec.min_devices,
        estimated_cold_start_ms: memory.load_ms.get(&spec.id).copied(),
        queue_depth: 0,
        queue_oldest_wait_ms: 0,
        placements: placements(&spec.id, topology, memory),
    }
}

fn placements(id: &str, topology: &Topology, memory: &Memory) -> Vec<PlacementView> {
    topology
        .neurons
        .iter()
        .filter_map(|neuron| {
            let model = neuron.model(id)?;
            Some(PlacementView {
                neuron: neuron.name.clone(),
                neuron_reachable: neuron.reachable,
                status: status_word(model.status),
                managed: model.is_managed(),
                devices: model.devices.clone(),
                vram_mb: model.vram_mb,
                ram_mb: model.ram_mb,
                in_flight: model.in_flight,
                last_used_unix_ms: model.last_used_unix_ms,
                loading_since_unix_ms: memory
                    .loading_since
                    .get(&(neuron.name.clone(), id.to_owned()))
                    .copied(),
                load_duration_ms: model.load_duration_ms,
                error: model.error.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(status: Option<(ModelState, Option<u64>)>) -> Topology {
        let models = status
            .map(|(status, load_duration_ms)| LoadedModel {
                id: "m".into(),
                harness: "sim".into(),
                status,
                devices: vec![0],
                vram_mb: 8000,
                ram_mb: 0,
                last_used_unix_ms: 0,
                in_flight: 0,
                profile: None,
                load_duration_ms,
                error: None,
            })
            .into_iter()
            .collect();
        Topology::new(
            1,
            vec![NeuronStatus { name: "n".into(), reachable: true, models, ..NeuronStatus::default() }],
        )
    }

    #[test]
    fn a_load_keeps_its_start_and_its_duration_outlives_the_model() {
        let mut memory = Memory::default();
        let key = ("n".to_owned(), "m".to_owned());
        memory.observe(&topology(Some((ModelState::Loading, None))), 1_000);
        memory.observe(&topology(Some((ModelState::Loading, None))), 3_000);
        assert_eq!(memory.loading_since.get(&key), Some(&1_000), "the first sighting is the start");
        memory.observe(&topology(Some((ModelState::Loaded, Some(2_500)))), 4_000);
        assert_eq!(memory.loading_since.get(&key), None);
        memory.observe(&topology(None), 5_000);
        assert_eq!(memory.load_ms.get("m"), Some(&2_500), "the estimate for the next cold start stays");
        memory.observe(&topology(Some((ModelState::Loading, None))), 9_000);
        assert_eq!(memory.loading_since.get(&key), Some(&9_000), "a new load starts afresh");
    }

    #[test]
    fn a_failed_copy_says_why_and_an_undeclared_model_is_listed_after_the_fleet() {
        let text = "[[neuron]]\nname = \"n\"\nendpoint = \"http://127.0.0.1:1\"\n\n[[model]]\nid = \"m\"\nharness = \"sim\"\nsource = \"m.gguf\"\nvram_mb = 8000\n";
        let load = plans::fleet::load(&[("fleet.toml".to_owned(), text.to_owned())]);
        let fleet = load.fleet.unwrap_or_else(|| panic!("valid: {:?}", load.diagnostics));
        let mut topology = topology(Some((ModelState::Failed, None)));
        topology.neurons[0].models[0].error = Some("engine exited with status 1: out of memory".into());
        let mut hand_started = topology.neurons[0].models[0].clone();
        (hand_started.id, hand_started.status, hand_started.error) =
            ("by-hand".into(), ModelState::Unloading, None);
        topology.neurons[0].models.push(hand_started);
        let status = DaemonStatus::default();
        let queues = [QueueStatus { model: "m".into(), waiting: 3, oldest_wait_ms: 1200, in_flight: 1 }];
        let inputs = Inputs {
            fleet: &fleet,
            topology: &topology,
            status: &status,
            now_unix_ms: 1,
            daemon_started_unix_ms: 0,
            queues: &queues,
            keys: &[],
        };
        let page = build(&inputs, &Memory::default());
        let ids: Vec<(&str, bool)> = page.models.iter().map(|m| (m.id.as_str(), m.declared)).collect();
        assert_eq!(ids, [("m", true), ("by-hand", false)]);
        let depth = |m: &ModelView| (m.queue_depth, m.queue_oldest_wait_ms);
        assert_eq!(depth(&page.models[0]), (3, 1200), "the queued model shows its waiting requests");
        assert_eq!(depth(&page.models[1]), (0, 0), "a model without a queue has none waiting");
        let failed = &page.models[0].placements[0];
        assert_eq!(
            (failed.status, failed.error.as_deref()),
            ("failed", Some("engine exited with status 1: out of memory"))
        );
        assert_eq!(page.models[1].placements[0].status, "draining");
        assert_eq!(page.neurons[0].state, "up");
    }

    #[test]
    fn a_draining_neuron_shows_its_state_its_progress_and_when_it_is_safe_to_stop() {
        let text = "[[neuron]]\nname = \"n\"\nendpoint = \"http://127.0.0.1:1\"\nstate = \"draining\"\n\n[[neuron]]\nname = \"spare\"\nendpoint = \"http://127.0.0.1:2\"\n\n[[model]]\nid = \"m\"\nharness = \"sim\"\nsource = \"m.gguf\"\nvram_mb = 8000\nreplicas = 1\n";
        let load = plans::fleet::load(&[("fleet.toml".to_owned(), text.to_owned())]);
        let fleet = load.fleet.unwrap_or_else(|| panic!("valid: {:?}", load.diagnostics));
        let mut topology = topology(Some((ModelState::Loaded, Some(1_000))));
        topology.neurons[0].models[0].in_flight = 2;
        topology.neurons[0].models[0].profile = Some(plans::fleet::Profile {
            harness: "sim".into(),
            source: "m.gguf".into(),
            quant: None,
            ctx_size: None,
            args: Vec::new(),
        });
        let device = plans::topology::DeviceStatus {
            index: 0,
            name: "GPU".into(),
            vram_total_mb: 24_000,
            vram_free_mb: 24_000,
            ..plans::topology::DeviceStatus::default()
        };
        topology.neurons[0].devices =
            vec![plans::topology::DeviceStatus { vram_free_mb: 16_000, ..device.clone() }];
        topology.neurons.push(NeuronStatus {
            name: "spare".into(),
            reachable: true,
            harnesses: vec!["sim".into()],
            devices: vec![device],
            ..NeuronStatus::default()
        });
        topology.neurons[0].harnesses = vec!["sim".into()];
        let plan =
            plans::plan::plan(&fleet, &topology, &plans::plan::PlanOptions { now_unix_ms: 1, prune: false });
        let status = DaemonStatus {
            maintenance: plans::maintenance::maintenance(&fleet, &topology, &plan),
            plan,
            ..DaemonStatus::default()
        };
        let inputs = Inputs {
            fleet: &fleet,
            topology: &topology,
            status: &status,
            now_unix_ms: 1,
            daemon_started_unix_ms: 0,
            queues: &[],
            keys: &[],
        };
        let page = build(&inputs, &Memory::default());
        let [draining, spare] = &page.neurons[..] else { panic!("two neurons: {:?}", page.neurons) };
        assert_eq!((draining.state, draining.service), ("up", NeuronState::Draining));
        let progress = draining.maintenance.as_ref().expect("a draining neuron shows its progress");
        assert_eq!(
            progress.summary,
            "n draining: 1 copy left, 2 requests in flight: m → spare (its load has not started)"
        );
        assert_eq!(
            (progress.copies_left, progress.progress.in_flight, progress.progress.safe_to_stop),
            (1, 2, false)
        );
        assert_eq!((spare.service, spare.maintenance.is_none()), (NeuronState::Active, true));
        let json = serde_json::to_value(draining).expect("serializes");
        assert_eq!(
            (&json["service"], &json["maintenance"]["copies_left"], &json["maintenance"]["safe_to_stop"]),
            (&serde_json::json!("draining"), &serde_json::json!(1), &serde_json::json!(false))
        );
    }

    #[test]
    fn memory_splits_into_models_outside_use_and_free() {
        let segment = |mb| Segment { model: "m".into(), mb, status: "loaded" };
        let view = split(24_000, 10_000, vec![segment(12_000)]);
        assert_eq!((view.total_mb, view.free_mb, view.outside_mb), (24_000, 10_000, 2_000));
        // A device reporting less used than the models account for has nothing outside cortex.
        let view = split(24_000, 20_000, vec![segment(12_000)]);
        assert_eq!(view.outside_mb, 0);
        // Free above total (a racing probe) is clamped.
        assert_eq!(split(1_000, 5_000, Vec::new()).free_mb, 1_000);
    }
}
