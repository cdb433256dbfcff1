//! Property tests of the planner's invariants (spec §4) over generated fleets and topologies,
//! with a small pure simulator that applies a plan to a topology the way neurons would.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};

use plans::fleet::{Eviction, Fleet, ModelSpec, NeuronSpec, NeuronState, Origin, Policy, Profile};
use plans::plan::{
    ActionKind, Plan, PlanOptions, Reason, Revision, place_one, plan, render_json, render_text,
};
use plans::topology::{DeviceStatus, LoadedModel, ModelState, NeuronStatus, Topology};
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000;
const HARNESSES: [&str; 2] = ["llamacpp", "sim"];

#[derive(Clone, Debug)]
struct ModelParams {
    vram: u64,
    devices: u32,
    floor: u64,
    ram: u64,
    pinned: u8,
    replicas: u32,
    priority: i64,
    harness: usize,
}

#[derive(Clone, Debug)]
struct NeuronParams {
    devices: Vec<u64>,
    ram: u64,
    reachable: bool,
    harnesses: u8,
    state: NeuronState,
}

#[derive(Clone, Debug)]
struct CopyParams {
    neuron: usize,
    /// < models: a declared model; otherwise an undeclared id.
    model: usize,
    managed: bool,
    stale_profile: bool,
    status: usize,
    idle_minutes: u64,
    in_flight: u32,
    device_offset: usize,
}

fn model_params() -> impl Strategy<Value = ModelParams> {
    (0u64..6, 0u32..3, 0u64..3, 0u64..3, any::<u8>(), 0u32..3, 0i64..4, 0usize..2).prop_map(
        |(vram, devices, floor, ram, pinned, replicas, priority, harness)| ModelParams {
            vram: 2000 + vram * 3000,
            devices,
            floor: floor * 4000,
            ram: ram * 3000,
            // Pins are rarer than not: only when the top bits say so.
            pinned: if pinned >= 192 { pinned } else { 0 },
            replicas,
            priority,
            harness,
        },
    )
}

fn neuron_params() -> impl Strategy<Value = NeuronParams> {
    let state = prop_oneof![
        6 => Just(NeuronState::Active),
        2 => Just(NeuronState::Cordoned),
        2 => Just(NeuronState::Draining),
    ];
    (prop::collection::vec(1u64..4, 0..4), 1u64..4, prop::bool::weighted(0.9), 1u8..4, state).prop_map(
        |(devices, ram, reachable, harnesses, state)| NeuronParams {
            devices: devices.into_iter().map(|d| d * 8000).collect(),
            ram: ram * 8000,
            reachable,
            harnesses,
            state,
        },
    )
}

fn copy_params() -> impl Strategy<Value = CopyParams> {
    (
        0usize..4,
        0usize..8,
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.2),
        0usize..8,
        0u64..120,
        0u32..2,
        0usize..4,
    )
        .prop_map(
            |(neuron, model, managed, stale_profile, status, idle_minutes, in_flight, device_offset)| {
                CopyParams {
                    neuron,
                    model,
                    managed,
                    stale_profile,
                    status,
                    idle_minutes,
                    in_flight,
                    device_offset,
                }
            },
        )
}

#[derive(Clone, Debug)]
struct Scenario {
    fleet: Fleet,
    topology: Topology,
    prune: bool,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(neuron_params(), 1..4),
        prop::collection::vec(model_params(), 0..7),
        prop::collection::vec(copy_params(), 0..16),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(1u64..90),
    )
        .prop_map(|(neurons, models, copies, prune, priority, idle)| {
            build(&neurons, &models, &copies, prune, priority, idle)
        })
}

fn profile(model: usize, harness: usize, stale: bool) -> Profile {
    Profile {
        harness: HARNESSES[harness].to_owned(),
        source: format!("m{model}.gguf"),
        quant: Some(if stale { "Q4_0" } else { "Q8_0" }.to_owned()),
        ctx_size: None,
        args: Vec::new(),
    }
}

fn build(
    neuron_params: &[NeuronParams],
    model_params: &[ModelParams],
    copies: &[CopyParams],
    prune: bool,
    priority: bool,
    idle_minutes: Option<u64>,
) -> Scenario {
    let names: Vec<String> = (0..neuron_params.len()).map(|i| format!("n{i}")).collect();
    let models: Vec<ModelSpec> = model_params
        .iter()
        .enumerate()
        .map(|(i, p)| ModelSpec {
            id: format!("m{i}"),
            aliases: vec![format!("alias{i}")],
            profile: profile(i, p.harness, false),
            vram_mb: if p.devices == 0 { 0 } else { p.vram },
            min_devices: p.devices,
            ram_mb: if p.devices == 0 { p.ram.max(2000) } else { p.ram },
            min_device_vram_mb: if p.devices == 0 { 0 } else { p.floor },
            pinned_on: names
                .iter()
                .enumerate()
                .filter(|(n, _)| p.pinned & (1 << n) != 0)
                .map(|(_, s)| s.clone())
                .collect(),
            replicas: p.replicas,
            priority: p.priority,
            require_labels: BTreeMap::new(),
            contention: Default::default(),
            max_output_tokens: None,
            origin: Origin::default(),
        })
        .collect();
    let mut statuses: Vec<NeuronStatus> = neuron_params
        .iter()
        .enumerate()
        .map(|(i, p)| NeuronStatus {
            name: names[i].clone(),
            reachable: p.reachable,
            generation: 10 + i as u64,
            boot_id: format!("boot{i}"),
            devices: p
                .devices
                .iter()
                .enumerate()
                .map(|(d, &total)| DeviceStatus {
                    index: d as u32,
                    name: "GPU".to_owned(),
                    vram_total_mb: total,
                    vram_free_mb: total,
                    ..DeviceStatus::default()
                })
                .collect(),
            ram_total_mb: p.ram,
            ram_free_mb: p.ram,
            harnesses: HARNESSES
                .iter()
                .enumerate()
                .filter(|(h, _)| p.harnesses & (1 << h) != 0)
                .map(|(_, h)| h.to_string())
                .collect(),
            ..NeuronStatus::default()
        })
        .collect();
    let statuses_of = [ModelState::Loaded, ModelState::Loading, ModelState::Unloading, ModelState::Failed];
    for copy in copies {
        let Some(neuron) = statuses.get_mut(copy.neuron) else { continue };
        let (id, spec) = match model_params.get(copy.model) {
            Some(p) => (format!("m{}", copy.model), Some(p)),
            None => (format!("old{}", copy.model), None),
        };
        if neuron.models.iter().any(|m| m.id == id) {
            continue;
        }
        let (devices_wanted, vram, ram) = match spec {
            Some(p) if p.devices == 0 => (0, 0, p.ram.max(2000)),
            Some(p) => (p.devices as usize, p.vram, p.ram),
            None => (1, 3000, 0),
        };
        let count = neuron.devices.len();
        if devices_wanted > count || neuron.ram_free_mb < ram {
            continue;
        }
        let devices: Vec<u32> =
            (0..devices_wanted).map(|k| ((copy.device_offset + k) % count) as u32).collect();
        let share = if devices.is_empty() { 0 } else { vram.div_ceil(devices.len() as u64) };
        if devices.iter().any(|&d| neuron.devices[d as usize].vram_free_mb < share) {
            continue;
        }
        for &d in &devices {
            neuron.devices[d as usize].vram_free_mb -= share;
        }
        neuron.ram_free_mb -= ram;
        let harness = spec.map_or(0, |p| p.harness);
        neuron.models.push(LoadedModel {
            id,
            harness: HARNESSES[harness].to_owned(),
            status: statuses_of[copy.status % 8 / 2 * (copy.status % 2)],
            devices,
            vram_mb: vram,
            ram_mb: ram,
            last_used_unix_ms: NOW - copy.idle_minutes * 60_000,
            in_flight: copy.in_flight,
            profile: copy.managed.then(|| profile(copy.model, harness, copy.stale_profile)),
            load_duration_ms: None,
            error: None,
        });
    }
    let policy = Policy {
        eviction: if priority { Eviction::Priority } else { Eviction::Lru },
        idle_unload_after_ms: idle_minutes.map(|m| m * 60_000),
        ..Policy::default()
    };
    let neurons = names
        .iter()
        .zip(neuron_params)
        .map(|(name, p)| NeuronSpec {
            name: name.clone(),
            endpoint: format!("http://{name}:13131"),
            labels: BTreeMap::new(),
            state: p.state,
            origin: Origin::default(),
        })
        .collect();
    statuses.sort_by(|a, b| a.name.cmp(&b.name));
    Scenario {
        fleet: Fleet { policy, neurons, models, keys: Vec::new(), digest: "sha256:0000".to_owned() },
        topology: Topology::new(NOW - 1000, statuses),
        prune,
    }
}

/// Apply `plan` the way neurons would, in `order` (indices into `plan.actions`), checking that
/// no load over-commits a device or host RAM.
fn simulate(fleet: &Fleet, topology: &Topology, plan: &Plan, order: &[usize]) -> Result<Topology, String> {
    let mut topology = topology.clone();
    let specs: HashMap<&str, &ModelSpec> = fleet.models.iter().map(|m| (m.id.as_str(), m)).collect();
    for &i in order {
        let action = &plan.actions[i];
        let neuron = topology.neurons.iter_mut().find(|n| n.name == action.neuron).ok_or("unknown neuron")?;
        if action.kind != ActionKind::Load {
            let at =
                neuron.models.iter().position(|m| m.id == action.model).ok_or("unload of a missing model")?;
            let old = neuron.models.remove(at);
            let share =
                if old.devices.is_empty() { 0 } else { old.vram_mb.div_ceil(old.devices.len() as u64) };
            for d in &old.devices {
                let device = neuron.devices.iter_mut().find(|x| x.index == *d).ok_or("device")?;
                device.vram_free_mb = (device.vram_free_mb + share).min(device.vram_total_mb);
            }
            neuron.ram_free_mb += old.ram_mb;
        }
        if action.kind != ActionKind::Unload {
            let spec = specs[action.model.as_str()];
            if neuron.models.iter().any(|m| m.id == action.model) {
                return Err(format!("{} loaded twice on {}", action.model, action.neuron));
            }
            let share = if action.devices.is_empty() {
                0
            } else {
                action.vram_mb.div_ceil(action.devices.len() as u64)
            };
            let per_device = spec.min_device_vram_mb.max(share);
            if action.devices.len() != spec.min_devices as usize {
                return Err(format!("{} got {} devices", action.model, action.devices.len()));
            }
            for d in &action.devices {
                let device = neuron.devices.iter_mut().find(|x| x.index == *d).ok_or("device")?;
                if device.vram_free_mb < per_device {
                    return Err(format!("GPU{d} on {} over-committed by {}", action.neuron, action.model));
                }
                device.vram_free_mb -= share;
            }
            if neuron.ram_free_mb < action.ram_mb {
                return Err(format!("RAM on {} over-committed by {}", action.neuron, action.model));
            }
            neuron.ram_free_mb -= action.ram_mb;
            neuron.models.push(LoadedModel {
                id: action.model.clone(),
                harness: spec.profile.harness.clone(),
                status: ModelState::Loaded,
                devices: action.devices.clone(),
                vram_mb: action.vram_mb,
                ram_mb: action.ram_mb,
                last_used_unix_ms: NOW,
                in_flight: 0,
                profile: action.profile.clone(),
                load_duration_ms: None,
                error: None,
            });
        }
        neuron.generation += 1;
    }
    Ok(topology)
}

/// A topological order of the plan's DAG that differs from planning order where it can: among
/// ready actions, always the latest one first.
fn latest_first_order(plan: &Plan) -> Vec<usize> {
    let index: HashMap<&str, usize> =
        plan.actions.iter().enumerate().map(|(i, a)| (a.id.as_str(), i)).collect();
    let mut done = vec![false; plan.actions.len()];
    let mut order = Vec::new();
    while order.len() < plan.actions.len() {
        let next = (0..plan.actions.len())
            .rev()
            .find(|&i| !done[i] && plan.actions[i].after.iter().all(|a| done[index[a.as_str()]]))
            .unwrap();
        done[next] = true;
        order.push(next);
    }
    order
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn invariants(s in scenario()) {
        let options = PlanOptions { now_unix_ms: NOW, prune: s.prune };
        let planned = plan(&s.fleet, &s.topology, &options);
        prop_assert!(planned.errors.is_empty(), "{:?}", planned.errors);

        // Deterministic, rendering included.
        let again = plan(&s.fleet, &s.topology, &options);
        prop_assert_eq!(&planned, &again);
        let revision = Revision::default();
        prop_assert_eq!(
            render_text(&planned, &s.topology, &s.fleet, &revision, NOW),
            render_text(&again, &s.topology, &s.fleet, &revision, NOW)
        );
        prop_assert_eq!(render_json(&planned, &revision), render_json(&again, &revision));

        // Unmanaged copies are never touched; undeclared ones only by prune; pinned ones are
        // never evicted (or unloaded at all) on a neuron they are pinned on.
        let unmanaged: HashSet<(&str, &str)> = s.topology.neurons.iter()
            .flat_map(|n| n.models.iter().filter(|m| !m.is_managed()).map(move |m| (n.name.as_str(), m.id.as_str())))
            .collect();
        let declared: HashSet<&str> = s.fleet.models.iter().map(|m| m.id.as_str()).collect();
        let state = |neuron: &str| s.fleet.neuron_state(neuron);
        for action in &planned.actions {
            prop_assert!(!unmanaged.contains(&(action.neuron.as_str(), action.model.as_str())), "touched unmanaged {:?}", action);
            let drained = state(&action.neuron) == NeuronState::Draining && matches!(action.reason, Reason::Drain { .. });
            if !declared.contains(action.model.as_str()) {
                prop_assert!((s.prune && action.reason == Reason::Prune) || drained, "undeclared touched without prune: {:?}", action);
            }
            if action.kind == ActionKind::Unload {
                // A pin on a draining neuron is suspended: its copy moves.
                let pinned = s.fleet.models.iter().any(|m| m.id == action.model && m.pinned_on.contains(&action.neuron));
                prop_assert!(!pinned || drained, "pinned model unloaded: {:?}", action);
            } else {
                // Nothing new starts on a cordoned or draining neuron.
                prop_assert_eq!(state(&action.neuron), NeuronState::Active, "{:?} on an out-of-service neuron", action);
            }
            // Make-before-break: a copy leaving a draining neuron goes after the load of the copy
            // that takes over from it.
            if let Reason::Drain { replaced_by: Some(to), .. } = &action.reason {
                for load in planned.actions.iter().filter(|a| a.kind != ActionKind::Unload && a.model == action.model && &a.neuron == to) {
                    prop_assert!(action.after.contains(&load.id), "{:?} does not wait for {:?}", action, load);
                }
            }
            let generation = s.topology.neuron(&action.neuron).map(|n| n.generation);
            prop_assert_eq!(Some(action.if_generation), generation);
        }

        // The DAG: `after` names earlier actions only (acyclic), and any order it allows
        // over-commits nothing.
        for (i, action) in planned.actions.iter().enumerate() {
            for dep in &action.after {
                let j = planned.actions.iter().position(|a| &a.id == dep).unwrap();
                prop_assert!(j < i, "{} waits for a later action {}", action.id, dep);
            }
        }
        let in_order: Vec<usize> = (0..planned.actions.len()).collect();
        let applied = simulate(&s.fleet, &s.topology, &planned, &in_order);
        prop_assert!(applied.is_ok(), "{:?}", applied);
        let other = simulate(&s.fleet, &s.topology, &planned, &latest_first_order(&planned));
        prop_assert!(other.is_ok(), "a DAG order over-commits: {:?}\n{:#?}", other, planned.actions);

        // A copy in use that leaves a draining neuron leaves only when another copy serves.
        let applied = applied.unwrap();
        for action in planned.actions.iter().filter(|a| matches!(a.reason, Reason::Drain { .. }) && declared.contains(a.model.as_str())) {
            let busy = s.topology.neuron(&action.neuron).and_then(|n| n.model(&action.model)).is_some_and(|m| m.in_flight > 0 && m.status == ModelState::Loaded);
            let served = applied.neurons.iter().any(|n| n.reachable && n.models.iter().any(|m| m.id == action.model && m.status == ModelState::Loaded));
            prop_assert!(!busy || served, "{:?} left nothing serving {}", action, action.model);
        }
        // Converges: planning against the applied topology proposes nothing more.
        let replanned = plan(&s.fleet, &applied, &options);
        prop_assert!(
            replanned.actions.is_empty(),
            "first plan:\n{}\nsecond plan:\n{}\nobserved: {:?}",
            render_text(&planned, &s.topology, &s.fleet, &revision, NOW),
            render_text(&replanned, &applied, &s.fleet, &revision, NOW),
            s.topology.neurons.iter().map(|n| (&n.name, n.models.iter().map(|m| (&m.id, m.status, m.is_managed(), m.in_flight)).collect::<Vec<_>>())).collect::<Vec<_>>()
        );

        // The router's placement goes through the same rules.
        for model in &s.fleet.models {
            if let Ok(placement) = place_one(&s.fleet, &s.topology, &model.aliases[0], &options) {
                prop_assert_eq!(state(&placement.neuron), NeuronState::Active, "the router placed on an out-of-service neuron");
                let mut actions = placement.evictions.clone();
                actions.push(placement.load.clone());
                let single = Plan { actions, ..Plan::default() };
                let order: Vec<usize> = (0..single.actions.len()).collect();
                let placed = simulate(&s.fleet, &s.topology, &single, &order);
                prop_assert!(placed.is_ok(), "{:?}", placed);
                for eviction in &placement.evictions {
                    prop_assert!(!unmanaged.contains(&(eviction.neuron.as_str(), eviction.model.as_str())));
                    let pinned = s.fleet.models.iter().any(|m| m.id == eviction.model && m.pinned_on.contains(&eviction.neuron));
                    prop_assert!(!pinned);
                }
            }
        }
    }
}
