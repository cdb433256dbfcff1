//! The capacity ledger: per neuron, free VRAM per device, free host RAM and the model copies
//! on it (observed or planned), and the two placement questions: which devices fit a model,
//! and which evictions make room for it.
//!
//! Accounting rule (documented in docs/plan-format.md): a copy on `n` devices holds
//! `ceil(vram_mb / n)` on each of them; a load needs `min_devices` devices each with at least
//! `max(min_device_vram_mb, ceil(vram_mb / min_devices))` free, and `ram_mb` of host RAM.

use std::collections::HashMap;

use crate::fleet::{Eviction, ModelSpec, NeuronSpec, NeuronState};
use crate::plan::Dimension;
use crate::plan::evict;
use crate::topology::{LoadedModel, ModelState, NeuronStatus};

/// The share of `vram_mb` that each of `devices` devices holds.
pub fn share(vram_mb: u64, devices: usize) -> u64 {
    if devices == 0 { 0 } else { vram_mb.div_ceil(devices as u64) }
}

/// What one model needs from one neuron.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub devices: usize,
    /// Free VRAM each chosen device must have.
    pub per_device: u64,
    /// What the copy then holds on each device.
    pub share: u64,
    pub ram: u64,
}

impl Need {
    pub fn of(spec: &ModelSpec) -> Need {
        let devices = spec.min_devices as usize;
        let share = share(spec.vram_mb, devices);
        let per_device = if devices == 0 { 0 } else { spec.min_device_vram_mb.max(share) };
        Need { devices, per_device, share, ram: spec.ram_mb }
    }
}

/// How the planner treats a copy when looking for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Started outside cortex: counts against capacity, never touched.
    Unmanaged,
    /// Loaded through cortex, declared by no fleet file: drift, touched only by prune.
    Undeclared,
    /// Pinned on this neuron: never evicted here.
    Pinned,
    /// One of the `replicas` warm copies: evicted only to honour a pin.
    Replica,
    /// Loaded on demand: evictable, and unloaded when idle.
    OnDemand,
}

/// One model copy on a neuron, observed or planned.
#[derive(Clone, Debug)]
pub struct Resident<'a> {
    pub id: &'a str,
    /// Index into `Fleet::models` when declared.
    pub spec: Option<usize>,
    /// Positions into the neuron's device list.
    pub positions: Vec<usize>,
    pub share: u64,
    pub ram: u64,
    pub last_used: u64,
    pub in_flight: u32,
    /// Requests waiting for this model in the gateway (from the planner's `Activity`).
    pub queued: usize,
    /// When this copy may be evicted (resident since + `min_residency`), where known.
    pub evictable_from: Option<u64>,
    /// Live sessions bound to this copy (from the planner's `Activity`).
    pub sessions: usize,
    pub status: ModelState,
    pub role: Role,
    /// The observed copy; `None` for a copy this plan loads.
    pub observed: Option<&'a LoadedModel>,
    /// Unloaded by this plan.
    pub gone: bool,
    /// Loaded or reloaded by this plan: no later pass touches it again.
    pub touched: bool,
}

/// One fleet neuron's capacity as the plan unfolds.
#[derive(Clone, Debug)]
pub struct NeuronLedger<'a> {
    pub spec: &'a NeuronSpec,
    /// `None` when the topology does not mention the neuron.
    pub status: Option<&'a NeuronStatus>,
    pub device_index: Vec<u32>,
    pub total: Vec<u64>,
    pub free: Vec<u64>,
    pub ram_free: u64,
    pub residents: Vec<Resident<'a>>,
    /// Model id → resident index of the live copy; a neuron serves one copy per id.
    pub by_model: HashMap<&'a str, usize>,
}

/// What may be evicted on a neuron now (in eviction order), and what only later.
#[derive(Clone, Debug, Default)]
pub struct Evictable {
    pub order: Vec<usize>,
    /// Residents within their minimum residency, with the time each becomes evictable.
    pub held: Vec<(usize, u64)>,
}

/// Devices chosen for a load and the residents to evict first (in eviction order).
#[derive(Clone, Debug, Default)]
pub struct Room {
    pub positions: Vec<usize>,
    pub evict: Vec<usize>,
}

impl<'a> NeuronLedger<'a> {
    pub fn new(spec: &'a NeuronSpec, status: Option<&'a NeuronStatus>) -> Self {
        let devices = status.map(|s| s.devices.as_slice()).unwrap_or_default();
        NeuronLedger {
            spec,
            status,
            device_index: devices.iter().map(|d| d.index).collect(),
            total: devices.iter().map(|d| d.vram_total_mb).collect(),
            free: devices.iter().map(|d| d.vram_free_mb).collect(),
            ram_free: status.map_or(0, |s| s.ram_free_mb),
            residents: Vec::new(),
            by_model: HashMap::new(),
        }
    }

    pub fn reachable(&self) -> bool {
        self.status.is_some_and(|s| s.reachable)
    }

    /// Whether new copies may start here (the neuron's declared state is `active`).
    pub fn schedulable(&self) -> bool {
        self.spec.state.schedulable()
    }

    /// Whether the fleet drains this neuron.
    pub fn draining(&self) -> bool {
        self.spec.state == NeuronState::Draining
    }

    pub fn generation(&self) -> u64 {
        self.status.map_or(0, |s| s.generation)
    }

    pub fn indices(&self, positions: &[usize]) -> Vec<u32> {
        positions.iter().filter_map(|&p| self.device_index.get(p).copied()).collect()
    }

    /// Device positions of observed indices; indices the neuron does not report are dropped.
    pub fn positions(&self, indices: &[u32]) -> Vec<usize> {
        indices.iter().filter_map(|i| self.device_index.iter().position(|d| d == i)).collect()
    }

    pub fn add(&mut self, resident: Resident<'a>) -> usize {
        let index = self.residents.len();
        self.by_model.entry(resident.id).or_insert(index);
        self.residents.push(resident);
        index
    }

    /// Take a planned copy's resources (the caller checked that they fit).
    pub fn take(&mut self, positions: &[usize], share: u64, ram: u64) {
        for &p in positions {
            self.free[p] = self.free[p].saturating_sub(share);
        }
        self.ram_free = self.ram_free.saturating_sub(ram);
    }

    /// Mark a copy unloaded and give its resources back.
    pub fn release(&mut self, resident: usize) {
        let Some(copy) = self.residents.get_mut(resident) else { return };
        copy.gone = true;
        let (positions, share, ram, id) = (copy.positions.clone(), copy.share, copy.ram, copy.id);
        for p in positions {
            self.free[p] = (self.free[p] + share).min(self.total[p]);
        }
        self.ram_free += ram;
        if self.by_model.get(id) == Some(&resident) {
            self.by_model.remove(id);
        }
    }

    /// Why the neuron can never run `spec`, whatever is evicted.
    pub fn static_misfit(&self, spec: &ModelSpec) -> Option<(Dimension, String)> {
        let name = &self.spec.name;
        let Some(status) = self.status else {
            return Some((Dimension::NeuronUnreachable, format!("{name} is not in the observed topology")));
        };
        if !status.reachable {
            let why = status.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
            return Some((Dimension::NeuronUnreachable, format!("{name} is unreachable{why}")));
        }
        if let Some(misfit) = self.unschedulable() {
            return Some(misfit);
        }
        if !status.harnesses.contains(&spec.profile.harness) {
            return Some((
                Dimension::HarnessMissing,
                format!(
                    "{name} has no harness {:?} (it has: {})",
                    spec.profile.harness,
                    status.harnesses.join(", ")
                ),
            ));
        }
        for (key, value) in &spec.require_labels {
            if self.spec.labels.get(key) != Some(value) {
                return Some((Dimension::Labels, format!("{name} lacks the label {key} = {value:?}")));
            }
        }
        if self.device_index.len() < spec.min_devices as usize {
            return Some((
                Dimension::Devices,
                format!("needs {} devices; {name} has {}", spec.min_devices, self.device_index.len()),
            ));
        }
        None
    }

    /// Why nothing new may start here: the neuron is cordoned or draining.
    pub fn unschedulable(&self) -> Option<(Dimension, String)> {
        let name = &self.spec.name;
        match self.spec.state {
            NeuronState::Active => None,
            NeuronState::Cordoned => {
                Some((Dimension::Cordoned, format!("{name} is cordoned: nothing new starts there")))
            }
            NeuronState::Draining => {
                Some((Dimension::Draining, format!("{name} is draining: nothing new starts there")))
            }
        }
    }

    /// Best-fit devices for `need` on the current free figures, if any.
    pub fn fit(&self, need: &Need) -> Option<Vec<usize>> {
        fit(&self.free, &self.device_index, self.ram_free, need)
    }

    /// Residents that may be evicted to make room, in eviction order (the one choice of
    /// [`crate::plan::evict::choose`]), and those held back by `min_residency` with the time
    /// each becomes evictable. Replica copies are evictable only for a pin (`for_pin`).
    pub fn candidates(&self, models: &[ModelSpec], policy: Eviction, for_pin: bool, now: u64) -> Evictable {
        let residents: Vec<usize> = (0..self.residents.len())
            .filter(|&r| {
                let copy = &self.residents[r];
                let role_ok = copy.role == Role::OnDemand || (for_pin && copy.role == Role::Replica);
                role_ok
                    && !copy.gone
                    && !copy.touched
                    && matches!(copy.status, ModelState::Loaded | ModelState::Failed)
            })
            .collect();
        let priority =
            |r: usize| self.residents[r].spec.and_then(|m| models.get(m)).map_or(0, |m| m.priority);
        let described: Vec<evict::Candidate<'_>> = residents
            .iter()
            .map(|&r| {
                let copy = &self.residents[r];
                evict::Candidate {
                    id: copy.id,
                    replica: copy.role == Role::Replica,
                    busy: copy.in_flight > 0 || copy.queued > 0,
                    priority: priority(r),
                    last_used_unix_ms: copy.last_used,
                    sessions: copy.sessions,
                    // A failed copy serves nothing: its residency protects nobody.
                    evictable_from_unix_ms: copy.evictable_from.filter(|_| copy.status == ModelState::Loaded),
                }
            })
            .collect();
        let choice = evict::choose(&described, policy, now);
        Evictable {
            order: choice.order.iter().map(|&p| residents[p]).collect(),
            held: choice.held.iter().map(|&(p, from)| (residents[p], from)).collect(),
        }
    }

    /// The fewest evictions among `candidates` (in order) after which `need` fits, and the
    /// devices it then gets. `None` when even evicting every candidate is not enough.
    pub fn make_room(&self, need: &Need, candidates: &[usize]) -> Option<Room> {
        if let Some(positions) = self.fit(need) {
            return Some(Room { positions, evict: Vec::new() });
        }
        if !self.fits_after(need, candidates) {
            return None;
        }
        let chosen = self.cheapest_devices(need, candidates).filter(|set| self.fits_after(need, set));
        // Fallback: the shortest prefix of the eviction order that fits.
        let mut evict = chosen.unwrap_or_else(|| {
            let mut prefix = Vec::new();
            for &c in candidates {
                prefix.push(c);
                if self.fits_after(need, &prefix) {
                    break;
                }
            }
            prefix
        });
        // Drop evictions that turn out unnecessary, most valuable (latest in order) first.
        let mut i = evict.len();
        while i > 0 {
            i -= 1;
            let removed = evict.remove(i);
            if !self.fits_after(need, &evict) {
                evict.insert(i, removed);
            }
        }
        let positions = self.fit_after(need, &evict)?;
        Some(Room { positions, evict })
    }

    /// Per device, the evictions (in order) that bring it to `need.per_device`; the cheapest
    /// `need.devices` devices' sets united, topped up for RAM. Order follows `candidates`.
    fn cheapest_devices(&self, need: &Need, candidates: &[usize]) -> Option<Vec<usize>> {
        let mut costs: Vec<(usize, usize, u64, u32, Vec<usize>)> = Vec::new();
        for position in 0..self.free.len() {
            let mut free = self.free[position];
            let mut set = Vec::new();
            for (rank, &c) in candidates.iter().enumerate() {
                if free >= need.per_device {
                    break;
                }
                let copy = &self.residents[c];
                if copy.positions.contains(&position) {
                    free = (free + copy.share).min(self.total[position]);
                    set.push(rank);
                }
            }
            if free >= need.per_device {
                let last = set.last().copied().unwrap_or(0);
                costs.push((set.len(), last, self.free[position], self.device_index[position], set));
            }
        }
        if costs.len() < need.devices {
            return None;
        }
        costs.sort_by_key(|c| (c.0, c.1, c.2, c.3));
        let mut ranks: Vec<usize> =
            costs.iter().take(need.devices).flat_map(|c| c.4.iter().copied()).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut ram = self.ram_free + ranks.iter().map(|&r| self.residents[candidates[r]].ram).sum::<u64>();
        for (rank, &c) in candidates.iter().enumerate() {
            if ram >= need.ram {
                break;
            }
            if !ranks.contains(&rank) && self.residents[c].ram > 0 {
                ram += self.residents[c].ram;
                ranks.push(rank);
            }
        }
        ranks.sort_unstable();
        Some(ranks.into_iter().map(|r| candidates[r]).collect())
    }

    fn fits_after(&self, need: &Need, evict: &[usize]) -> bool {
        self.fit_after(need, evict).is_some()
    }

    fn fit_after(&self, need: &Need, evict: &[usize]) -> Option<Vec<usize>> {
        let (free, ram) = self.freed(evict);
        fit(&free, &self.device_index, ram, need)
    }

    /// Free VRAM per device and free RAM if `evict` were unloaded.
    pub fn freed(&self, evict: &[usize]) -> (Vec<u64>, u64) {
        let mut free = self.free.clone();
        let mut ram = self.ram_free;
        for &r in evict {
            let copy = &self.residents[r];
            for &p in &copy.positions {
                free[p] = (free[p] + copy.share).min(self.total[p]);
            }
            ram += copy.ram;
        }
        (free, ram)
    }

    /// Why `need` does not fit now, with the figures: a copy that is only held by its minimum
    /// residency or is still loading/unloading is named first (the placement will succeed
    /// later), then pins in the way, then the resource that runs out.
    pub fn shortfall(&self, need: &Need, evictable: &Evictable, protected: &[usize]) -> (Dimension, String) {
        let name = &self.spec.name;
        let mut later: Vec<usize> = evictable.order.clone();
        later.extend(evictable.held.iter().map(|&(r, _)| r));
        if let Some(&(first, from)) = evictable.held.first()
            && self.fits_after(need, &later)
        {
            let id = self.residents[first].id;
            return (
                Dimension::Residency,
                format!(
                    "{name} has room once {id} has been loaded for its min_residency (at {from} Unix ms)"
                ),
            );
        }
        let moving: Vec<usize> = (0..self.residents.len())
            .filter(|&r| {
                let copy = &self.residents[r];
                !copy.gone
                    && matches!(copy.status, ModelState::Loading | ModelState::Unloading)
                    && !matches!(copy.role, Role::Pinned | Role::Unmanaged)
            })
            .collect();
        later.extend(&moving);
        if let Some(&first) = moving.first()
            && self.fits_after(need, &later)
        {
            let copy = &self.residents[first];
            let what = if copy.status == ModelState::Loading { "loading" } else { "unloading" };
            return (
                Dimension::InTransition,
                format!("{name} has room once {} has finished {what}", copy.id),
            );
        }
        let evictable = evictable.order.as_slice();
        let (free, ram) = self.freed(evictable);
        let mut all: Vec<usize> = evictable.to_vec();
        all.extend_from_slice(protected);
        let (all_free, all_ram) = self.freed(&all);
        if !protected.is_empty() && fit(&all_free, &self.device_index, all_ram, need).is_some() {
            return (
                Dimension::PinConflict,
                format!("{name} would have room only by evicting models pinned there"),
            );
        }
        if ram < need.ram {
            return (
                Dimension::HostRam,
                format!("needs {} MB of host RAM; {name} can free at most {ram} MB", need.ram),
            );
        }
        let listing = self
            .device_index
            .iter()
            .zip(&free)
            .map(|(index, mb)| format!("GPU{index} {mb} MB"))
            .collect::<Vec<_>>()
            .join(", ");
        // Total: even the k roomiest devices together lack vram_mb. Per-device: the total would
        // do, but not enough single devices reach the per-device figure.
        let mut roomiest = free.clone();
        roomiest.sort_unstable_by(|a, b| b.cmp(a));
        let best_total: u64 = roomiest.iter().take(need.devices).sum();
        let dimension = if best_total < need.share * need.devices as u64 {
            Dimension::TotalVram
        } else {
            Dimension::PerDeviceVram
        };
        let detail = format!(
            "needs {} device{} with {} MB free each ({} MB in total); {name} has {listing} free even after evicting every evictable model",
            need.devices,
            if need.devices == 1 { "" } else { "s" },
            need.per_device,
            need.share * need.devices as u64
        );
        (dimension, detail)
    }
}

/// Best fit: among devices with enough free VRAM, the `need.devices` with the least free,
/// ties by device index; returned in device order.
fn fit(free: &[u64], index: &[u32], ram_free: u64, need: &Need) -> Option<Vec<usize>> {
    if ram_free < need.ram {
        return None;
    }
    if need.devices == 0 {
        return Some(Vec::new());
    }
    let mut eligible: Vec<usize> = (0..free.len()).filter(|&p| free[p] >= need.per_device).collect();
    if eligible.len() < need.devices {
        return None;
    }
    eligible.sort_by_key(|&p| (free[p], index[p]));
    eligible.truncate(need.devices);
    eligible.sort_by_key(|&p| index[p]);
    Some(eligible)
}
