//! The planning passes: classify every observed copy, then prune, reload, pin, keep replicas,
//! unload idle copies, in that order, recording actions against the capacity ledger.
//!
//! The order is chosen for convergence (apply, plan again: no changes): pins come before
//! replicas so that pinned copies count towards `replicas`; idle unloads come after every
//! placement so that a copy needed as a replica is promoted before it could be called idle.
//! Draining neurons are emptied last (`passes/drain.rs`), once every other placement is known.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::fleet::{Fleet, ModelSpec, NeuronSpec, NeuronState};
use crate::plan::ledger::{Need, NeuronLedger, Resident, Role, Room, share};
use crate::plan::order::{self, Draft};
use crate::plan::{
    Action, ActionKind, Activity, Dimension, Drift, Infeasible, Placement, Plan, PlanOptions, Reason,
    SuspendedPin, Want,
};
use crate::topology::{ModelState, NeuronStatus, Topology};

mod drain;

/// Why one neuron could not take a placement.
type Reject = (String, Dimension, String);

pub struct Planner<'a> {
    fleet: &'a Fleet,
    now: u64,
    prune: bool,
    neurons: Vec<NeuronLedger<'a>>,
    neuron_index: HashMap<&'a str, usize>,
    /// Per declared model: its managed copies as `(neuron, resident)`, observed and planned.
    copies: Vec<Vec<(usize, usize)>>,
    drafts: Vec<Draft>,
    infeasible: Vec<Infeasible>,
    drift: Vec<Drift>,
    /// Pins not honoured while their neuron is out of service (see `passes/drain.rs`).
    suspended_pins: Vec<SuspendedPin>,
    /// Per declared model: indices into `suspended_pins`.
    suspended: Vec<Vec<usize>>,
    /// Per declared model: its loaded copies on reachable draining neurons that no new copy
    /// replaces yet, as `(neuron, resident)`, by neuron name.
    leaving: Vec<Vec<(usize, usize)>>,
    /// Copies on draining neurons that stay, because they fit nowhere else (reported infeasible).
    kept: HashSet<(usize, usize)>,
}

impl<'a> Planner<'a> {
    pub fn new(fleet: &'a Fleet, topology: &'a Topology, options: &PlanOptions, activity: &Activity) -> Self {
        let model_index: HashMap<&str, usize> =
            fleet.models.iter().enumerate().map(|(i, m)| (m.id.as_str(), i)).collect();
        let pinned: HashSet<(&str, &str)> = fleet
            .models
            .iter()
            .flat_map(|m| m.pinned_on.iter().map(move |n| (m.id.as_str(), n.as_str())))
            .collect();
        let status: HashMap<&str, &NeuronStatus> =
            topology.neurons.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut specs: Vec<&NeuronSpec> = fleet.neurons.iter().collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));

        let mut copies = vec![Vec::new(); fleet.models.len()];
        let mut neurons = Vec::with_capacity(specs.len());
        for spec in specs {
            let n = neurons.len();
            let observed = status.get(spec.name.as_str()).copied();
            let mut ledger = NeuronLedger::new(spec, observed);
            for loaded in observed.map(|s| s.models.as_slice()).unwrap_or_default() {
                let declared = model_index.get(loaded.id.as_str()).copied();
                let role = match (loaded.is_managed(), declared) {
                    (false, _) => Role::Unmanaged,
                    (true, None) => Role::Undeclared,
                    // A pin on a draining neuron is suspended: its copy is one to move.
                    (true, Some(_))
                        if spec.state != NeuronState::Draining
                            && pinned.contains(&(loaded.id.as_str(), spec.name.as_str())) =>
                    {
                        Role::Pinned
                    }
                    (true, Some(_)) => Role::OnDemand,
                };
                let resident = Resident {
                    id: &loaded.id,
                    spec: declared,
                    positions: ledger.positions(&loaded.devices),
                    share: share(loaded.vram_mb, loaded.devices.len()),
                    ram: loaded.ram_mb,
                    last_used: loaded.last_used_unix_ms,
                    in_flight: loaded.in_flight,
                    queued: activity.queued.get(&loaded.id).copied().unwrap_or(0),
                    evictable_from: declared.and_then(|m| {
                        let since = activity.resident_since.get(&(loaded.id.clone(), spec.name.clone()))?;
                        let residency = fleet.models[m].contention(&fleet.policy).min_residency();
                        Some(since.saturating_add(residency))
                    }),
                    sessions: activity
                        .sessions
                        .get(&(loaded.id.clone(), spec.name.clone()))
                        .copied()
                        .unwrap_or(0),
                    status: loaded.status,
                    role,
                    observed: Some(loaded),
                    gone: false,
                    touched: false,
                };
                let r = ledger.add(resident);
                if let (Some(m), true) = (declared, loaded.is_managed()) {
                    copies[m].push((n, r));
                }
            }
            neurons.push(ledger);
        }
        let neuron_index = neurons.iter().enumerate().map(|(i, l)| (l.spec.name.as_str(), i)).collect();
        let models = fleet.models.len();
        let mut planner = Planner {
            fleet,
            now: options.now_unix_ms,
            prune: options.prune || fleet.policy.prune,
            neurons,
            neuron_index,
            copies,
            drafts: Vec::new(),
            infeasible: Vec::new(),
            drift: Vec::new(),
            suspended_pins: Vec::new(),
            suspended: vec![Vec::new(); models],
            leaving: vec![Vec::new(); models],
            kept: HashSet::new(),
        };
        planner.find_out_of_service();
        planner
    }

    /// Undeclared copies loaded through cortex: unloaded with prune, otherwise reported.
    pub fn prune_or_report_drift(&mut self) {
        for n in 0..self.neurons.len() {
            for r in 0..self.neurons[n].residents.len() {
                let copy = &self.neurons[n].residents[r];
                if copy.role != Role::Undeclared || copy.status == ModelState::Unloading {
                    continue;
                }
                // A draining neuron is emptied of everything cortex loaded (`empty_draining`).
                if self.neurons[n].draining() && self.neurons[n].reachable() {
                    continue;
                }
                if self.prune && self.neurons[n].reachable() {
                    self.unload(n, r, Reason::Prune);
                } else {
                    let devices = copy.observed.map(|o| o.devices.clone()).unwrap_or_default();
                    let (vram_mb, ram_mb) = copy.observed.map_or((0, 0), |o| (o.vram_mb, o.ram_mb));
                    let drift = Drift {
                        model: copy.id.to_owned(),
                        neuron: self.neurons[n].spec.name.clone(),
                        devices,
                        vram_mb,
                        ram_mb,
                    };
                    self.drift.push(drift);
                }
            }
        }
    }

    /// Pinned copies whose profile changed or that failed are reloaded in place.
    pub fn reload_pinned(&mut self) {
        self.reload_where(Role::Pinned, true);
    }

    /// Copies loaded on demand whose profile changed are reloaded too (failed ones are left to
    /// the router and to idle unloading: nobody asked for them to be loaded again).
    pub fn reload_on_demand(&mut self) {
        self.reload_where(Role::OnDemand, false);
    }

    fn reload_where(&mut self, role: Role, failed_too: bool) {
        for n in 0..self.neurons.len() {
            // A draining neuron's copies are moved (with the fleet's profile), not reloaded.
            if !self.neurons[n].reachable() || self.neurons[n].draining() {
                continue;
            }
            for r in 0..self.neurons[n].residents.len() {
                let copy = &self.neurons[n].residents[r];
                // A copy still loading (or unloading) is left to finish; the next pass sees it.
                if copy.role != role || copy.gone || copy.touched || !settled(copy.status) {
                    continue;
                }
                // A failed copy is not serving anything: whatever its profile, reloading it is
                // only wanted where the fleet wants a copy (found by the property tests: reloading
                // a surplus failed copy made a second copy that the next plan evicted).
                if !failed_too && copy.status == ModelState::Failed {
                    continue;
                }
                if let Some(reason) = self.reload_reason(copy) {
                    self.reload(n, r, reason, role == Role::Pinned);
                }
            }
        }
    }

    /// Every `pinned_on` pair without a copy is loaded there.
    pub fn place_pins(&mut self) {
        for m in 0..self.fleet.models.len() {
            let spec = &self.fleet.models[m];
            for neuron in &spec.pinned_on {
                let Some(&n) = self.neuron_index.get(neuron.as_str()) else {
                    let detail = format!("{neuron} is not a neuron of the fleet");
                    self.infeasible(spec, Some(neuron), Want::Pin, Dimension::NeuronUnreachable, detail);
                    continue;
                };
                if self.pin_suspended(m, n) {
                    continue;
                }
                if let Some(&r) = self.neurons[n].by_model.get(spec.id.as_str()) {
                    if self.neurons[n].residents[r].role == Role::Unmanaged {
                        let detail =
                            format!("a copy started outside cortex already serves this id on {neuron}");
                        self.infeasible(spec, Some(neuron), Want::Pin, Dimension::PinConflict, detail);
                    }
                    continue;
                }
                if let Err((dimension, detail)) = self.place_on(n, m, Reason::Pinned, Role::Pinned, true) {
                    self.infeasible(spec, Some(neuron), Want::Pin, dimension, detail);
                }
            }
        }
    }

    /// Promote enough live copies of every model to warm replicas (protecting them from
    /// idle unloading and from evictions other than for pins), reload the promoted ones that
    /// failed or changed profile, then place the missing copies.
    pub fn keep_replicas(&mut self) {
        let mut missing = Vec::new();
        for m in 0..self.fleet.models.len() {
            let (have, wanted) = self.promote_replicas(m, true);
            if have < wanted {
                missing.push((m, have, wanted));
            }
        }
        for (m, mut have, wanted) in missing {
            while have < wanted {
                let reason = self.warm_copy_reason(m);
                match self.place_anywhere(m, reason, Role::Replica) {
                    Ok(_) => {
                        have += 1;
                        // The first copy still to move off a draining neuron is replaced now.
                        if !self.leaving[m].is_empty() {
                            self.leaving[m].remove(0);
                        }
                    }
                    Err(rejects) => {
                        self.warm_copy_infeasible(m, have, wanted, rejects);
                        break;
                    }
                }
            }
        }
    }

    /// For the router: protect the warm replicas the plan would keep, without changing anything.
    pub fn protect_warm_replicas(&mut self) {
        for m in 0..self.fleet.models.len() {
            self.promote_replicas(m, false);
        }
    }

    /// Marks up to the wanted number of live copies of model `m` (pinned ones first, then
    /// healthy ones, then those more live sessions are bound to, then by neuron name) as kept; returns how many live copies count and how
    /// many warm copies the model wants: `replicas`, or more while pins are suspended (each
    /// suspended pin wants a stand-in). Copies on draining neurons do not count: they move.
    fn promote_replicas(&mut self, m: usize, reload: bool) -> (usize, usize) {
        let replicas = self.fleet.models[m].replicas as usize;
        if replicas == 0 && self.suspended[m].is_empty() {
            return (0, 0);
        }
        let mut live: Vec<(usize, usize)> = self.copies[m]
            .iter()
            .copied()
            .filter(|&(n, r)| {
                let copy = &self.neurons[n].residents[r];
                let ledger = &self.neurons[n];
                ledger.reachable() && !ledger.draining() && !copy.gone && copy.status != ModelState::Unloading
            })
            .collect();
        let mut have =
            live.iter().filter(|&&(n, r)| self.neurons[n].residents[r].role == Role::Pinned).count();
        let wanted = replicas.max(have + self.suspended[m].len());
        live.retain(|&(n, r)| self.neurons[n].residents[r].role != Role::Pinned);
        // Healthy copies first, then the copies more sessions are bound to (a copy that goes
        // takes its sessions' caches with it), then by neuron name. Not by recency: a reload or
        // a new request would change that ranking after apply, demote a kept copy and unload it
        // as idle on the next pass (flapping). Sessions stay with their copy under affinity
        // routing, and a demoted copy with live sessions is not idle.
        live.sort_by_key(|&(n, r)| {
            let copy = &self.neurons[n].residents[r];
            (copy.status == ModelState::Failed, std::cmp::Reverse(copy.sessions), n)
        });
        for (n, r) in live {
            if have >= wanted {
                break;
            }
            have += 1;
            self.neurons[n].residents[r].role = Role::Replica;
            let copy = &self.neurons[n].residents[r];
            if reload && !copy.touched && settled(copy.status) {
                if let Some(reason) = self.reload_reason(copy) {
                    self.reload(n, r, reason, false);
                }
            }
        }
        (have, wanted)
    }

    /// On-demand copies idle longer than `idle_unload_after` are unloaded.
    pub fn unload_idle(&mut self) {
        let Some(limit_ms) = self.fleet.policy.idle_unload_after_ms else { return };
        for n in 0..self.neurons.len() {
            // A draining neuron's copies are `empty_draining`'s: moved, unloaded or kept.
            if !self.neurons[n].reachable() || self.neurons[n].draining() {
                continue;
            }
            for r in 0..self.neurons[n].residents.len() {
                let copy = &self.neurons[n].residents[r];
                let idle_ms = self.now.saturating_sub(copy.last_used);
                let idle = copy.role == Role::OnDemand
                    && !copy.gone
                    && !copy.touched
                    && matches!(copy.status, ModelState::Loaded | ModelState::Failed)
                    && copy.in_flight == 0
                    && idle_ms > limit_ms;
                if idle {
                    self.unload(n, r, Reason::Idle { idle_ms, limit_ms });
                }
            }
        }
    }

    /// The router's placement of one requested model.
    pub fn place_requested(mut self, name: &str) -> Result<Placement, Infeasible> {
        let Some(m) = self.fleet.models.iter().position(|s| s.answers_to(name)) else {
            return Err(Infeasible {
                model: name.to_owned(),
                neuron: None,
                want: Want::Request,
                dimension: Dimension::UnknownModel,
                detail: format!("no fleet file declares a model or alias {name:?}"),
            });
        };
        let placed = match self.failed_copy(m) {
            // A failed copy is not serving: it counts as absent. Clear it and load afresh in
            // its place (the neuron it failed on still fits the model, and the cold load's
            // chain of actions stays on one neuron).
            Some((n, r)) => {
                self.unload(n, r, Reason::Failed);
                self.place_on(n, m, Reason::Requested, Role::OnDemand, false).map(|()| n).map_err(
                    |(dimension, detail)| vec![(self.neurons[n].spec.name.clone(), dimension, detail)],
                )
            }
            None => self.place_anywhere(m, Reason::Requested, Role::OnDemand),
        };
        match placed {
            Ok(n) => {
                let (mut actions, _) = order::finish(std::mem::take(&mut self.drafts));
                let Some(load) = actions.pop() else {
                    // place_anywhere always records the load last; an empty list cannot happen.
                    return Err(self.no_neuron(m));
                };
                Ok(Placement {
                    neuron: self.neurons[n].spec.name.clone(),
                    devices: load.devices.clone(),
                    evictions: actions,
                    load,
                })
            }
            Err(rejects) => {
                let (dimension, detail) = summarize(&rejects);
                let spec = &self.fleet.models[m];
                Err(Infeasible {
                    model: spec.id.clone(),
                    neuron: None,
                    want: Want::Request,
                    dimension,
                    detail,
                })
            }
        }
    }

    /// The first reachable neuron (by name) holding a failed copy of model `m` loaded through
    /// cortex, and that copy. A failed copy on a neuron the model is pinned on is not the
    /// router's: the reconciler reloads it in place (and pinned copies are never evicted).
    fn failed_copy(&self, m: usize) -> Option<(usize, usize)> {
        let mut failed: Vec<(usize, usize)> = self.copies[m]
            .iter()
            .copied()
            .filter(|&(n, r)| {
                let copy = &self.neurons[n].residents[r];
                self.neurons[n].reachable()
                    && self.neurons[n].schedulable()
                    && !copy.gone
                    && copy.status == ModelState::Failed
                    && copy.role != Role::Pinned
            })
            .collect();
        failed.sort_unstable();
        failed.first().copied()
    }

    fn no_neuron(&self, m: usize) -> Infeasible {
        Infeasible {
            model: self.fleet.models[m].id.clone(),
            neuron: None,
            want: Want::Request,
            dimension: Dimension::Neurons,
            detail: "no neuron can take it".to_owned(),
        }
    }

    pub fn finish(mut self) -> Plan {
        self.name_stand_ins();
        let (actions, errors) = order::finish(self.drafts);
        Plan {
            fleet_digest: self.fleet.digest.clone(),
            actions,
            infeasible: self.infeasible,
            drift: self.drift,
            suspended_pins: self.suspended_pins,
            errors,
        }
    }

    fn reload_reason(&self, copy: &Resident<'_>) -> Option<Reason> {
        let spec = self.fleet.models.get(copy.spec?)?;
        let observed = copy.observed?.profile.as_ref()?;
        if *observed != spec.profile {
            let old = observed.fields();
            let fields = spec
                .profile
                .fields()
                .into_iter()
                .zip(old)
                .filter(|(new, old)| new != old)
                .map(|(new, _)| new.0.to_owned())
                .collect();
            return Some(Reason::ProfileChanged { fields });
        }
        (copy.status == ModelState::Failed).then_some(Reason::Failed)
    }

    /// The best neuron for a new copy of model `m`: one that fits without evictions (best
    /// fit, then name), else the one needing the fewest evictions (then the fewest live
    /// sessions displaced, then name).
    fn place_anywhere(&mut self, m: usize, reason: Reason, role: Role) -> Result<usize, Vec<Reject>> {
        let spec = &self.fleet.models[m];
        let need = Need::of(spec);
        let mut rejects = Vec::new();
        let mut eligible = Vec::new();
        let mut best: Option<(u64, usize, Vec<usize>)> = None;
        for (n, ledger) in self.neurons.iter().enumerate() {
            if let Some(misfit) = ledger.unschedulable() {
                rejects.push((ledger.spec.name.clone(), misfit.0, misfit.1));
                continue;
            }
            if let Some(&r) = ledger.by_model.get(spec.id.as_str()) {
                let detail = match ledger.residents[r].observed.filter(|o| o.status == ModelState::Failed) {
                    Some(failed) => format!(
                        "its copy on {} failed ({}) and is reloaded by the reconciler",
                        ledger.spec.name,
                        failed.error.as_deref().unwrap_or("no reason given")
                    ),
                    None => format!("{} already holds a copy", ledger.spec.name),
                };
                rejects.push((ledger.spec.name.clone(), Dimension::Neurons, detail));
                continue;
            }
            if let Some((dimension, detail)) = ledger.static_misfit(spec) {
                rejects.push((ledger.spec.name.clone(), dimension, detail));
                continue;
            }
            eligible.push(n);
            if let Some(positions) = ledger.fit(&need) {
                let room: u64 = if need.devices == 0 {
                    ledger.ram_free
                } else {
                    positions.iter().map(|&p| ledger.free[p]).sum()
                };
                if best.as_ref().is_none_or(|(best_room, _, _)| room < *best_room) {
                    best = Some((room, n, positions));
                }
            }
        }
        if let Some((_, n, positions)) = best {
            self.load(n, m, Room { positions, evict: Vec::new() }, reason, role);
            return Ok(n);
        }
        let mut cheapest: Option<(usize, Room, (usize, usize))> = None;
        for n in eligible {
            match self.room_on(n, &need, false) {
                Ok(room) => {
                    let cost = (room.evict.len(), self.displaced_sessions(n, &room));
                    if cheapest.as_ref().is_none_or(|(_, _, best)| cost < *best) {
                        cheapest = Some((n, room, cost));
                    }
                }
                Err((dimension, detail)) => {
                    rejects.push((self.neurons[n].spec.name.clone(), dimension, detail))
                }
            }
        }
        match cheapest {
            Some((n, room, _)) => {
                self.load(n, m, room, reason, role);
                Ok(n)
            }
            None => Err(rejects),
        }
    }

    /// The live sessions bound to the copies `room` evicts on neuron `n`.
    fn displaced_sessions(&self, n: usize, room: &Room) -> usize {
        room.evict.iter().map(|&r| self.neurons[n].residents[r].sessions).sum()
    }

    /// Place model `m` on neuron `n`, evicting by policy if needed.
    fn place_on(
        &mut self,
        n: usize,
        m: usize,
        reason: Reason,
        role: Role,
        for_pin: bool,
    ) -> Result<(), (Dimension, String)> {
        let spec = &self.fleet.models[m];
        if let Some(misfit) = self.neurons[n].static_misfit(spec) {
            return Err(misfit);
        }
        let room = self.room_on(n, &Need::of(spec), for_pin)?;
        self.load(n, m, room, reason, role);
        Ok(())
    }

    fn room_on(&self, n: usize, need: &Need, for_pin: bool) -> Result<Room, (Dimension, String)> {
        let ledger = &self.neurons[n];
        let candidates = ledger.candidates(&self.fleet.models, self.fleet.policy.eviction, for_pin, self.now);
        if let Some(room) = ledger.make_room(need, &candidates.order) {
            return Ok(room);
        }
        let protected: Vec<usize> = (0..ledger.residents.len())
            .filter(|&r| {
                let copy = &ledger.residents[r];
                copy.role == Role::Pinned
                    && !copy.gone
                    && matches!(copy.status, ModelState::Loaded | ModelState::Failed)
                    && !candidates.order.contains(&r)
            })
            .collect();
        Err(ledger.shortfall(need, &candidates, &protected))
    }

    /// Reload copy `r` on neuron `n` with the fleet's profile, on devices chosen afresh.
    fn reload(&mut self, n: usize, r: usize, reason: Reason, for_pin: bool) {
        let Some(m) = self.neurons[n].residents[r].spec else { return };
        let spec = &self.fleet.models[m];
        if let Some((dimension, detail)) = self.neurons[n].static_misfit(spec) {
            let neuron = self.neurons[n].spec.name.clone();
            self.infeasible(spec, Some(&neuron), Want::Reload, dimension, detail);
            return;
        }
        let (saved_free, saved_ram) = (self.neurons[n].free.clone(), self.neurons[n].ram_free);
        self.neurons[n].release(r);
        match self.room_on(n, &Need::of(spec), for_pin) {
            Ok(room) => {
                let old = &self.neurons[n].residents[r];
                let from_devices = old.observed.map(|o| o.devices.clone()).unwrap_or_default();
                let from_profile = old.observed.and_then(|o| o.profile.clone());
                let role = old.role;
                let (_, draft) = self.load(n, m, room, reason, role);
                self.drafts[draft].action.kind = ActionKind::Reload;
                self.drafts[draft].action.from_devices = from_devices;
                self.drafts[draft].action.from_profile = from_profile;
                self.drafts[draft].frees = true;
            }
            Err((dimension, detail)) => {
                let ledger = &mut self.neurons[n];
                ledger.free = saved_free;
                ledger.ram_free = saved_ram;
                ledger.residents[r].gone = false;
                let id = ledger.residents[r].id;
                ledger.by_model.insert(id, r);
                let neuron = ledger.spec.name.clone();
                self.infeasible(spec, Some(&neuron), Want::Reload, dimension, detail);
            }
        }
    }

    /// Evict `room.evict`, then load model `m` on `room.positions`. Returns the new resident
    /// and the draft index of the load.
    fn load(&mut self, n: usize, m: usize, room: Room, reason: Reason, role: Role) -> (usize, usize) {
        let spec: &'a ModelSpec = &self.fleet.models[m];
        let policy = self.fleet.policy.eviction;
        let deps: Vec<usize> = room
            .evict
            .iter()
            .map(|&r| self.unload(n, r, Reason::Evict { for_model: spec.id.clone(), policy }))
            .collect();
        let need = Need::of(spec);
        let ledger = &mut self.neurons[n];
        ledger.take(&room.positions, need.share, need.ram);
        let devices = ledger.indices(&room.positions);
        let resident = ledger.add(Resident {
            id: &spec.id,
            spec: Some(m),
            positions: room.positions,
            share: need.share,
            ram: need.ram,
            last_used: self.now,
            in_flight: 0,
            queued: 0,
            evictable_from: None,
            sessions: 0,
            status: ModelState::Loaded,
            role,
            observed: None,
            gone: false,
            touched: true,
        });
        self.copies[m].push((n, resident));
        let action = Action {
            id: String::new(),
            kind: ActionKind::Load,
            model: spec.id.clone(),
            neuron: ledger.spec.name.clone(),
            devices,
            vram_mb: spec.vram_mb,
            ram_mb: spec.ram_mb,
            profile: Some(spec.profile.clone()),
            from_profile: None,
            from_devices: Vec::new(),
            reason,
            after: Vec::new(),
            if_generation: ledger.generation(),
        };
        self.drafts.push(Draft { action, deps, frees: false });
        (resident, self.drafts.len() - 1)
    }

    /// Unload copy `r` on neuron `n`; returns the draft index.
    fn unload(&mut self, n: usize, r: usize, reason: Reason) -> usize {
        let ledger = &mut self.neurons[n];
        ledger.release(r);
        let copy = &ledger.residents[r];
        let (devices, vram_mb, ram_mb) = match copy.observed {
            Some(o) => (o.devices.clone(), o.vram_mb, o.ram_mb),
            None => (ledger.indices(&copy.positions), copy.share * copy.positions.len() as u64, copy.ram),
        };
        let action = Action {
            id: String::new(),
            kind: ActionKind::Unload,
            model: copy.id.to_owned(),
            neuron: ledger.spec.name.clone(),
            devices,
            vram_mb,
            ram_mb,
            profile: None,
            from_profile: None,
            from_devices: Vec::new(),
            reason,
            after: Vec::new(),
            if_generation: ledger.generation(),
        };
        self.drafts.push(Draft { action, deps: Vec::new(), frees: true });
        self.drafts.len() - 1
    }

    fn infeasible(
        &mut self,
        spec: &ModelSpec,
        neuron: Option<&String>,
        want: Want,
        dimension: Dimension,
        detail: String,
    ) {
        self.infeasible.push(Infeasible {
            model: spec.id.clone(),
            neuron: neuron.cloned(),
            want,
            dimension,
            detail,
        });
    }
}

/// Loaded or failed: not in the middle of a lifecycle change.
fn settled(status: ModelState) -> bool {
    matches!(status, ModelState::Loaded | ModelState::Failed)
}

/// One dimension for a failed placement over many neurons (the most common, ties by the
/// enum's order) and a sentence grouping neurons by dimension, like Nomad's dry run.
fn summarize(rejects: &[Reject]) -> (Dimension, String) {
    if rejects.is_empty() {
        return (Dimension::Neurons, "the fleet declares no neurons".to_owned());
    }
    let mut groups: BTreeMap<Dimension, Vec<&str>> = BTreeMap::new();
    for (neuron, dimension, _) in rejects {
        groups.entry(*dimension).or_default().push(neuron);
    }
    let mut ranked: Vec<(Dimension, Vec<&str>)> = groups.into_iter().collect();
    ranked.sort_by_key(|(dimension, names)| (Reverse(names.len()), *dimension));
    let dimension = ranked.first().map_or(Dimension::Neurons, |(d, _)| *d);
    let sentence = ranked
        .iter()
        .map(|(d, names)| {
            let count = names.len();
            format!(
                "{} on {count} neuron{} ({})",
                d.as_str(),
                if count == 1 { "" } else { "s" },
                names.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    if rejects.len() == 1 {
        return (dimension, rejects[0].2.clone());
    }
    (dimension, sentence)
}
