//! Neurons out of service: suspended pins, stand-ins, and emptying a draining neuron
//! make-before-break (docs/plan-format.md, "Cordoned and draining neurons").
//!
//! A pin on a draining neuron, or on a cordoned one that does not hold the copy, is suspended:
//! `keep_replicas` keeps one warm stand-in elsewhere for it. The copies on a draining neuron
//! are then dealt with last, once every other placement of the plan is known: a copy that
//! another copy (observed, or loaded by this plan) can take over from is unloaded after every
//! load of its model in this plan; a copy in use with no other copy gets a replacement first;
//! an idle one is unloaded when the router could load it again elsewhere; and a copy that fits
//! nowhere else stays and is reported infeasible (`want: relocate`), still serving.

use crate::fleet::NeuronState;
use crate::plan::ledger::{Need, Resident, Role};
use crate::plan::passes::{Planner, Reject, summarize};
use crate::plan::{ActionKind, Reason, SuspendedPin, Want};
use crate::topology::ModelState;

/// A copy used this recently counts as in use when its neuron drains (a client between two
/// calls, such as an agent running a tool): it is moved make-before-break, not just unloaded.
pub const IN_USE_WINDOW_MS: u64 = 60_000;

impl Planner<'_> {
    /// Finds the suspended pins and the copies that must leave draining neurons.
    pub(super) fn find_out_of_service(&mut self) {
        for (m, spec) in self.fleet.models.iter().enumerate() {
            for neuron in &spec.pinned_on {
                let Some(&n) = self.neuron_index.get(neuron.as_str()) else { continue };
                let ledger = &self.neurons[n];
                let state = ledger.spec.state;
                let holds = ledger.by_model.contains_key(spec.id.as_str());
                if state == NeuronState::Draining || (state == NeuronState::Cordoned && !holds) {
                    self.suspended[m].push(self.suspended_pins.len());
                    self.suspended_pins.push(SuspendedPin {
                        model: spec.id.clone(),
                        neuron: neuron.clone(),
                        state,
                        stand_in: None,
                    });
                }
            }
            let mut leaving: Vec<(usize, usize)> = self.copies[m]
                .iter()
                .copied()
                .filter(|&(n, r)| {
                    let ledger = &self.neurons[n];
                    ledger.draining()
                        && ledger.reachable()
                        && ledger.residents[r].status == ModelState::Loaded
                })
                .collect();
            leaving.sort_unstable();
            self.leaving[m] = leaving;
        }
    }

    /// Whether the pin of model `m` on neuron `n` is suspended.
    pub(super) fn pin_suspended(&self, m: usize, n: usize) -> bool {
        let name = &self.neurons[n].spec.name;
        self.suspended[m].iter().any(|&p| self.suspended_pins[p].neuron == *name)
    }

    /// Why `keep_replicas` loads one more warm copy of model `m`: to take over from a copy on a
    /// draining neuron, as a stand-in for a suspended pin, or for `replicas`.
    pub(super) fn warm_copy_reason(&self, m: usize) -> Reason {
        if let Some(&(n, _)) = self.leaving[m].first() {
            return Reason::Relocate { from: self.neurons[n].spec.name.clone() };
        }
        let spec = &self.fleet.models[m];
        let honoured = self.copies[m]
            .iter()
            .filter(|&&(n, r)| {
                let copy = &self.neurons[n].residents[r];
                copy.role == Role::Pinned && !copy.gone && self.neurons[n].reachable()
            })
            .count();
        match self.suspended[m].first() {
            Some(&p) if (spec.replicas as usize) < honoured + self.suspended[m].len() => {
                let pin = &self.suspended_pins[p];
                Reason::PinSuspended { neuron: pin.neuron.clone(), state: pin.state }
            }
            _ => Reason::Replicas { wanted: spec.replicas },
        }
    }

    /// `keep_replicas` could not load a warm copy of model `m`: the copies still to move off
    /// draining neurons stay where they are, or the stand-in of a suspended pin is missing, or
    /// `replicas` is short.
    pub(super) fn warm_copy_infeasible(
        &mut self,
        m: usize,
        have: usize,
        wanted: usize,
        rejects: Vec<Reject>,
    ) {
        let spec = &self.fleet.models[m];
        let leaving = std::mem::take(&mut self.leaving[m]);
        if !leaving.is_empty() {
            for (n, r) in leaving {
                self.keep_serving(n, r, m, &rejects);
            }
            return;
        }
        let (dimension, summary) = summarize(&rejects);
        let suspended = self.suspended[m].first().map(|&p| self.suspended_pins[p].clone());
        match suspended {
            Some(pin) if (spec.replicas as usize) < wanted => {
                let detail = format!(
                    "{} is {}, and no stand-in fits elsewhere: {have} of {wanted} warm copies can be loaded; {summary}",
                    pin.neuron,
                    pin.state.as_str()
                );
                self.infeasible(spec, Some(&pin.neuron), Want::Pin, dimension, detail);
            }
            _ => {
                let detail = format!("{have} of {} copies can be loaded; {summary}", spec.replicas);
                self.infeasible(spec, None, Want::Replicas, dimension, detail);
            }
        }
    }

    /// Copy `r` on draining neuron `n` (of model `m`) stays: it fits nowhere else.
    fn keep_serving(&mut self, n: usize, r: usize, m: usize, rejects: &[Reject]) {
        let from = self.neurons[n].spec.name.clone();
        let elsewhere: Vec<Reject> = rejects.iter().filter(|(name, _, _)| *name != from).cloned().collect();
        let (dimension, summary) = summarize(&elsewhere);
        let summary = if elsewhere.is_empty() { "no other neuron is declared".to_owned() } else { summary };
        let detail = format!("{summary}; it keeps serving on {from}");
        self.kept.insert((n, r));
        let spec = &self.fleet.models[m];
        self.infeasible(spec, Some(&from), Want::Relocate, dimension, detail);
    }

    /// Empties every reachable draining neuron of what cortex loaded there, make-before-break.
    /// Copies still loading or unloading are left for the next pass; copies started outside
    /// cortex are never touched.
    pub fn empty_draining(&mut self) {
        for n in 0..self.neurons.len() {
            if !self.neurons[n].draining() || !self.neurons[n].reachable() {
                continue;
            }
            let neuron = self.neurons[n].spec.name.clone();
            for r in 0..self.neurons[n].residents.len() {
                let copy = &self.neurons[n].residents[r];
                let settled = matches!(copy.status, ModelState::Loaded | ModelState::Failed);
                if copy.gone || copy.touched || copy.role == Role::Unmanaged || !settled {
                    continue;
                }
                if self.kept.contains(&(n, r)) {
                    continue;
                }
                match copy.spec {
                    Some(m) if copy.status == ModelState::Loaded => self.move_off(n, r, m),
                    // Failed: it serves nothing, so nothing to keep.
                    Some(m) => self.unload_after_loads(n, r, m, None),
                    // Undeclared (drift): the operator asked for the neuron to be emptied.
                    None => {
                        self.unload(n, r, Reason::Drain { neuron: neuron.clone(), replaced_by: None });
                    }
                }
            }
        }
    }

    /// Move copy `r` of model `m` off draining neuron `n`: unloaded once another copy serves
    /// the model (this plan's loads of it go first), after a replacement when it is in use,
    /// right away when it is idle and could be loaded elsewhere on demand; else it stays.
    /// While another copy is still loading, it waits for the next pass.
    fn move_off(&mut self, n: usize, r: usize, m: usize) {
        let from = self.neurons[n].spec.name.clone();
        if let Some(to) = self.serving_elsewhere(m, ModelState::Loaded) {
            self.unload_after_loads(n, r, m, Some(to));
            return;
        }
        // A copy elsewhere is still loading: the next pass moves this one once it is ready.
        if self.serving_elsewhere(m, ModelState::Loading).is_some() {
            return;
        }
        if in_use(&self.neurons[n].residents[r], self.now) {
            match self.place_anywhere(m, Reason::Relocate { from }, Role::OnDemand) {
                Ok(to) => {
                    let to = self.neurons[to].spec.name.clone();
                    self.unload_after_loads(n, r, m, Some(to));
                }
                Err(rejects) => self.keep_serving(n, r, m, &rejects),
            }
            return;
        }
        match self.placeable_on_demand(m) {
            Ok(()) => self.unload_after_loads(n, r, m, None),
            Err(rejects) => self.keep_serving(n, r, m, &rejects),
        }
    }

    /// Unload copy `r` of model `m` from draining neuron `n` after every load or reload of `m`
    /// in this plan (make-before-break), saying which neuron takes over.
    fn unload_after_loads(&mut self, n: usize, r: usize, m: usize, replaced_by: Option<String>) {
        let id = self.fleet.models[m].id.as_str();
        let loads: Vec<usize> = self
            .drafts
            .iter()
            .enumerate()
            .filter(|(_, draft)| draft.action.model == id && draft.action.kind != ActionKind::Unload)
            .map(|(index, _)| index)
            .collect();
        let neuron = self.neurons[n].spec.name.clone();
        let draft = self.unload(n, r, Reason::Drain { neuron, replaced_by });
        self.drafts[draft].deps = loads;
    }

    /// The neuron of a copy of model `m` outside draining neurons in `status` (a copy this
    /// plan loads counts as loaded: the unload waits for it): one this plan loads first, then
    /// by name.
    fn serving_elsewhere(&self, m: usize, status: ModelState) -> Option<String> {
        self.copies[m]
            .iter()
            .filter(|&&(n, r)| {
                let ledger = &self.neurons[n];
                let copy = &ledger.residents[r];
                ledger.reachable() && !ledger.draining() && !copy.gone && copy.status == status
            })
            .min_by_key(|&&(n, r)| (!self.neurons[n].residents[r].touched, n))
            .map(|&(n, _)| self.neurons[n].spec.name.clone())
    }

    /// Whether the router could load model `m` somewhere now (evicting by policy), without
    /// recording anything; else why not, per neuron.
    fn placeable_on_demand(&self, m: usize) -> Result<(), Vec<Reject>> {
        let spec = &self.fleet.models[m];
        let need = Need::of(spec);
        let mut rejects = Vec::new();
        for (n, ledger) in self.neurons.iter().enumerate() {
            if let Some((dimension, detail)) = ledger.static_misfit(spec) {
                rejects.push((ledger.spec.name.clone(), dimension, detail));
                continue;
            }
            match self.room_on(n, &need, false) {
                Ok(_) => return Ok(()),
                Err((dimension, detail)) => rejects.push((ledger.spec.name.clone(), dimension, detail)),
            }
        }
        Err(rejects)
    }

    /// Names, for every suspended pin, a warm copy of its model that stands in for it: the
    /// model's warm replicas outside draining neurons, by neuron name, one per pin.
    pub(super) fn name_stand_ins(&mut self) {
        for m in 0..self.fleet.models.len() {
            if self.suspended[m].is_empty() {
                continue;
            }
            let mut warm: Vec<usize> = self.copies[m]
                .iter()
                .filter(|&&(n, r)| {
                    let ledger = &self.neurons[n];
                    let copy = &ledger.residents[r];
                    copy.role == Role::Replica && !copy.gone && ledger.reachable() && !ledger.draining()
                })
                .map(|&(n, _)| n)
                .collect();
            warm.sort_unstable();
            for (&p, n) in self.suspended[m].iter().zip(warm) {
                self.suspended_pins[p].stand_in = Some(self.neurons[n].spec.name.clone());
            }
        }
    }
}

/// Whether a copy is in use: requests in flight or waiting for it, or served within
/// [`IN_USE_WINDOW_MS`].
fn in_use(copy: &Resident<'_>, now: u64) -> bool {
    copy.in_flight > 0 || copy.queued > 0 || now.saturating_sub(copy.last_used) < IN_USE_WINDOW_MS
}
