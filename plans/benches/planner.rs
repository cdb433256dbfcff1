//! Planner benchmark (spec §10): 10,000 models × 512 GPUs on 64 neurons, and 1,000 neurons,
//! planned from a busy topology (pins, replicas, evictions, reloads, idle unloads, drift).
//! Run with `cargo bench -p plans --bench planner`; prints min and median over several runs.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use plans::fleet::{Eviction, Fleet, ModelSpec, NeuronSpec, Origin, Policy, Profile};
use plans::plan::{PlanOptions, Revision, plan, render_json, render_text};
use plans::topology::{DeviceStatus, LoadedModel, ModelState, NeuronStatus, Topology};

const NOW: u64 = 1_700_000_000_000;
const GPUS_PER_NEURON: usize = 8;
const GPU_MB: u64 = 81_920;

/// A small deterministic generator (no dependency, same fleet every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn profile(i: usize, quant: &str) -> Profile {
    Profile {
        harness: "llamacpp".to_owned(),
        source: format!("model-{i}.gguf"),
        quant: Some(quant.to_owned()),
        ctx_size: Some(8192),
        args: vec!["--jinja".to_owned()],
    }
}

fn scenario(models: usize, neurons: usize) -> (Fleet, Topology) {
    let mut rng = Lcg(42);
    let names: Vec<String> = (0..neurons).map(|n| format!("neuron-{n:04}")).collect();
    let specs: Vec<ModelSpec> = (0..models)
        .map(|i| {
            let min_devices = if i % 4 == 0 { 2 } else { 1 };
            ModelSpec {
                id: format!("org/model-{i}"),
                aliases: vec![format!("m{i}")],
                profile: profile(i, "Q4_K_M"),
                vram_mb: 4_000 + rng.next(9) * 2_000,
                min_devices,
                ram_mb: 0,
                min_device_vram_mb: 2_000,
                // Two pins per neuron, then 1,000 models with a warm replica, then on demand.
                pinned_on: if i < 2 * neurons { vec![names[i % neurons].clone()] } else { Vec::new() },
                replicas: u32::from((2 * neurons..2 * neurons + 1_000).contains(&i)),
                priority: rng.next(100) as i64,
                require_labels: BTreeMap::new(),
                contention: Default::default(),
                max_output_tokens: None,
                origin: Origin::default(),
            }
        })
        .collect();
    let mut statuses = Vec::with_capacity(neurons);
    for (n, name) in names.iter().enumerate() {
        let mut devices: Vec<DeviceStatus> = (0..GPUS_PER_NEURON)
            .map(|d| DeviceStatus {
                index: d as u32,
                name: "H100".to_owned(),
                vram_total_mb: GPU_MB,
                vram_free_mb: GPU_MB,
                ..DeviceStatus::default()
            })
            .collect();
        let mut loaded = Vec::new();
        // About 40 on-demand copies per neuron fill the GPUs, so pins need evictions.
        for k in 0..40 {
            let i = 2 * neurons + 1_000 + (n * 40 + k) * 7 % (models - 2 * neurons - 1_000).max(1);
            let Some(spec) = specs.get(i) else { continue };
            let share = spec.vram_mb.div_ceil(u64::from(spec.min_devices));
            let chosen: Vec<u32> =
                (0..spec.min_devices as usize).map(|j| ((k + j) % GPUS_PER_NEURON) as u32).collect();
            if chosen.iter().any(|&d| devices[d as usize].vram_free_mb < share) {
                continue;
            }
            chosen.iter().for_each(|&d| devices[d as usize].vram_free_mb -= share);
            let stale = rng.next(20) == 0;
            loaded.push(LoadedModel {
                id: spec.id.clone(),
                harness: "llamacpp".to_owned(),
                status: ModelState::Loaded,
                devices: chosen,
                vram_mb: spec.vram_mb,
                ram_mb: 0,
                last_used_unix_ms: NOW - rng.next(7_200_000),
                in_flight: u32::from(rng.next(10) == 0),
                profile: Some(profile(i, if stale { "Q8_0" } else { "Q4_K_M" })),
                load_duration_ms: Some(20_000),
                error: None,
            });
        }
        // One model started by hand and one cortex load no fleet file declares any more.
        for (id, managed) in [("hand-started", false), ("retired", true)] {
            devices[7].vram_free_mb = devices[7].vram_free_mb.saturating_sub(1_000);
            loaded.push(LoadedModel {
                id: id.to_owned(),
                harness: "llamacpp".to_owned(),
                status: ModelState::Loaded,
                devices: vec![7],
                vram_mb: 1_000,
                ram_mb: 0,
                last_used_unix_ms: NOW,
                in_flight: 0,
                profile: managed.then(|| profile(0, "Q4_K_M")),
                load_duration_ms: None,
                error: None,
            });
        }
        statuses.push(NeuronStatus {
            name: name.clone(),
            reachable: n % 50 != 49,
            generation: n as u64,
            boot_id: format!("boot-{n}"),
            devices,
            ram_total_mb: 1_024_000,
            ram_free_mb: 900_000,
            harnesses: vec!["llamacpp".to_owned()],
            models: loaded,
            ..NeuronStatus::default()
        });
    }
    let fleet = Fleet {
        policy: Policy {
            eviction: Eviction::Priority,
            idle_unload_after_ms: Some(3_600_000),
            ..Policy::default()
        },
        neurons: names
            .iter()
            .map(|name| NeuronSpec {
                name: name.clone(),
                endpoint: format!("http://{name}:13131"),
                labels: BTreeMap::new(),
                state: Default::default(),
                origin: Origin::default(),
            })
            .collect(),
        models: specs,
        keys: Vec::new(),
        digest: "sha256:bench".to_owned(),
    };
    (fleet, Topology::new(NOW - 2_000, statuses))
}

fn measure(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[0], times[runs / 2])
}

fn main() {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (models, neurons, runs) in [(10_000, 64, 15), (10_000, 1_000, 7)] {
        let (fleet, topology) = scenario(models, neurons);
        let loaded: usize = topology.neurons.iter().map(|n| n.models.len()).sum();
        let options = PlanOptions { now_unix_ms: NOW, prune: false };
        let planned = plan(&fleet, &topology, &options);
        let counts = planned.counts();
        println!(
            "{models} models, {neurons} neurons ({} GPUs, {loaded} loaded copies): {} load, {} reload, {} unload ({} evictions), {} infeasible, {} drift",
            neurons * GPUS_PER_NEURON,
            counts.load,
            counts.reload,
            counts.unload,
            counts.evictions,
            planned.infeasible.len(),
            planned.drift.len()
        );
        let (min, median) = measure(runs, || {
            std::hint::black_box(plan(&fleet, &topology, &options));
        });
        println!("  plan:        min {:8.2} ms   median {:8.2} ms   ({runs} runs)", ms(min), ms(median));
        let revision = Revision::default();
        let (min, median) = measure(runs, || {
            std::hint::black_box(render_text(&planned, &topology, &fleet, &revision, NOW));
        });
        println!("  render_text: min {:8.2} ms   median {:8.2} ms", ms(min), ms(median));
        let (min, median) = measure(runs, || {
            std::hint::black_box(render_json(&planned, &revision));
        });
        println!("  render_json: min {:8.2} ms   median {:8.2} ms", ms(min), ms(median));
    }
}
