//! Drain progress: for each neuron out of service (cordoned or draining), what cortex manages
//! there still, what the plan does with each copy, the requests in flight, and whether it is
//! safe to stop. `cortex status`, `cortex drain --wait` and the fleet page all show this one
//! view, computed from the fleet, the observed topology and the current plan.

use crate::fleet::{Fleet, NeuronState};
use crate::plan::{ActionKind, Plan, Reason, Want};
use crate::topology::{ModelState, Topology};

/// One out-of-service neuron.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NeuronMaintenance {
    pub neuron: String,
    pub state: NeuronState,
    pub reachable: bool,
    /// The copies cortex manages there (loaded through cortex), whatever their status.
    pub copies: Vec<CopyLeft>,
    /// Requests in flight on those copies.
    pub in_flight: u32,
    /// Copies started outside cortex: never touched, not waited for.
    pub unmanaged: Vec<String>,
    /// Models whose pin on this neuron is suspended.
    pub suspended_pins: Vec<String>,
    /// Reachable and holding nothing cortex manages: the neuron can be stopped.
    pub safe_to_stop: bool,
}

/// A copy cortex manages on an out-of-service neuron, and what happens to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopyLeft {
    pub model: String,
    pub status: ModelState,
    pub in_flight: u32,
    pub fate: Fate,
}

/// What the plan does with a copy on an out-of-service neuron.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fate {
    /// Unloaded once the copy on `to` is ready; `to_status` is that copy's status now (`None`
    /// while its load has not started).
    Moving { to: String, to_status: Option<ModelState> },
    /// Unloaded (or unloading now) with no copy needed elsewhere.
    Unloading,
    /// Fits nowhere else: keeps serving here (the plan's infeasible detail).
    Stays { why: String },
    /// Keeps serving: the neuron is cordoned.
    Serving,
    /// Nothing decided yet (a copy elsewhere is loading, or the copy is in transition).
    Waiting,
}

impl NeuronMaintenance {
    /// One line for people: `beast draining: 2 copies left, 3 requests in flight: coder → quad
    /// (loading there), embed unloading`, or `... ready for maintenance ...`.
    pub fn summary(&self) -> String {
        let name = &self.neuron;
        let state = self.state.as_str();
        if !self.reachable {
            return format!("{name} {state}: unreachable; cannot tell what is left there");
        }
        if self.safe_to_stop {
            let what =
                if self.state == NeuronState::Draining { "ready for maintenance" } else { "safe to stop" };
            let outside = if self.unmanaged.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} started outside cortex, left alone: {})",
                    self.unmanaged.len(),
                    self.unmanaged.join(", ")
                )
            };
            return format!("{name} {state}: {what}: nothing cortex manages is loaded there{outside}");
        }
        let count = self.copies.len();
        let copies = if count == 1 { "1 copy".to_owned() } else { format!("{count} copies") };
        let requests = match self.in_flight {
            1 => "1 request".to_owned(),
            n => format!("{n} requests"),
        };
        let fates: Vec<String> = self.copies.iter().map(CopyLeft::describe).collect();
        format!("{name} {state}: {copies} left, {requests} in flight: {}", fates.join(", "))
    }
}

impl CopyLeft {
    /// `coder → quad (loading there)`, `embed unloading`, `big stays: …`.
    pub fn describe(&self) -> String {
        let model = &self.model;
        match &self.fate {
            Fate::Moving { to, to_status } => {
                let there = match to_status {
                    None => "its load has not started".to_owned(),
                    Some(ModelState::Loaded) => "ready there".to_owned(),
                    Some(ModelState::Loading) => "loading there".to_owned(),
                    Some(ModelState::Unloading) => "unloading there".to_owned(),
                    Some(ModelState::Failed) => "failed there".to_owned(),
                };
                format!("{model} → {to} ({there})")
            }
            Fate::Unloading => format!("{model} unloading"),
            Fate::Stays { why } => format!("{model} stays ({why})"),
            Fate::Serving => format!("{model} serving"),
            Fate::Waiting => format!("{model} {}", status_word(self.status)),
        }
    }
}

fn status_word(status: ModelState) -> &'static str {
    match status {
        ModelState::Loading => "loading",
        ModelState::Loaded => "waiting",
        ModelState::Unloading => "unloading",
        ModelState::Failed => "failed",
    }
}

/// Every neuron of `fleet` that is cordoned or draining, by name, with its progress under
/// `plan` (the plan of `fleet` against `topology`).
pub fn maintenance(fleet: &Fleet, topology: &Topology, plan: &Plan) -> Vec<NeuronMaintenance> {
    fleet
        .neurons
        .iter()
        .filter(|spec| spec.state != NeuronState::Active)
        .map(|spec| {
            let observed = topology.neuron(&spec.name);
            let reachable = observed.is_some_and(|n| n.reachable);
            let models = observed.map(|n| n.models.as_slice()).unwrap_or_default();
            let copies: Vec<CopyLeft> = models
                .iter()
                .filter(|m| m.is_managed())
                .map(|m| CopyLeft {
                    model: m.id.clone(),
                    status: m.status,
                    in_flight: m.in_flight,
                    fate: fate(&spec.name, spec.state, m.id.as_str(), m.status, topology, plan),
                })
                .collect();
            NeuronMaintenance {
                neuron: spec.name.clone(),
                state: spec.state,
                reachable,
                in_flight: copies.iter().map(|c| c.in_flight).sum(),
                unmanaged: models.iter().filter(|m| !m.is_managed()).map(|m| m.id.clone()).collect(),
                suspended_pins: plan
                    .suspended_pins
                    .iter()
                    .filter(|p| p.neuron == spec.name)
                    .map(|p| p.model.clone())
                    .collect(),
                safe_to_stop: reachable && copies.is_empty(),
                copies,
            }
        })
        .collect()
}

fn fate(
    neuron: &str,
    state: NeuronState,
    model: &str,
    status: ModelState,
    topology: &Topology,
    plan: &Plan,
) -> Fate {
    if status == ModelState::Unloading {
        return Fate::Unloading;
    }
    let unload =
        plan.actions.iter().find(|a| a.kind == ActionKind::Unload && a.model == model && a.neuron == neuron);
    if let Some(Reason::Drain { replaced_by, .. }) = unload.map(|a| &a.reason) {
        return match replaced_by {
            Some(to) => Fate::Moving {
                to: to.clone(),
                to_status: topology.neuron(to).and_then(|n| n.model(model)).map(|m| m.status),
            },
            None => Fate::Unloading,
        };
    }
    let kept = plan
        .infeasible
        .iter()
        .find(|i| i.want == Want::Relocate && i.model == model && i.neuron.as_deref() == Some(neuron));
    match (kept, state) {
        (Some(item), _) => Fate::Stays { why: item.detail.clone() },
        (None, NeuronState::Cordoned) => Fate::Serving,
        // Between plans while the replacement loads: the plan waits for it, the copy moves there.
        _ => loading_elsewhere(neuron, model, topology)
            .map_or(Fate::Waiting, |to| Fate::Moving { to, to_status: Some(ModelState::Loading) }),
    }
}

/// A reachable neuron other than `neuron` where a copy of `model` is loading.
fn loading_elsewhere(neuron: &str, model: &str, topology: &Topology) -> Option<String> {
    topology
        .neurons
        .iter()
        .filter(|n| n.reachable && n.name != neuron)
        .find(|n| n.model(model).is_some_and(|m| m.status == ModelState::Loading))
        .map(|n| n.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanOptions, plan};

    fn fleet() -> Fleet {
        let text = r#"
[[neuron]]
name = "beast"
endpoint = "http://beast:13131"
state = "draining"

[[neuron]]
name = "quad"
endpoint = "http://quad:13131"

[[model]]
id = "coder"
harness = "sim"
source = "coder.gguf"
vram_mb = 12000
pinned_on = ["beast"]
"#;
        let load = crate::fleet::load(&[("fleet.toml".to_owned(), text.to_owned())]);
        load.fleet.unwrap_or_else(|| panic!("{:?}", load.diagnostics))
    }

    fn topology(beast: &str, quad: &str) -> Topology {
        let json = format!(
            r#"{{"format_version": 1, "neurons": [
              {{"name": "beast", "reachable": true, "harnesses": ["sim"],
                "devices": [{{"index": 0, "name": "GPU", "vram_total_mb": 24000, "vram_free_mb": 12000}}],
                "models": [{beast}]}},
              {{"name": "quad", "reachable": true, "harnesses": ["sim"],
                "devices": [{{"index": 0, "name": "GPU", "vram_total_mb": 24000, "vram_free_mb": 24000}}],
                "models": [{quad}]}}]}}"#
        );
        Topology::from_json(&json).unwrap_or_else(|e| panic!("{e}"))
    }

    const CODER: &str = r#"{"id": "coder", "harness": "sim", "status": "STATUS", "devices": [0], "vram_mb": 12000,
        "in_flight": 3, "profile": {"harness": "sim", "source": "coder.gguf", "args": []}}"#;
    const BY_HAND: &str =
        r#"{"id": "by-hand", "harness": "sim", "status": "loaded", "devices": [0], "vram_mb": 1000}"#;

    fn summary(beast: &str, quad: &str) -> String {
        let fleet = fleet();
        let topology = topology(beast, quad);
        let planned = plan(&fleet, &topology, &PlanOptions { now_unix_ms: 1_000_000, prune: false });
        maintenance(&fleet, &topology, &planned).iter().map(NeuronMaintenance::summary).collect()
    }

    #[test]
    fn a_drain_is_followed_until_the_neuron_holds_nothing_of_cortexs() {
        let loaded = CODER.replace("STATUS", "loaded");
        assert_eq!(
            summary(&format!("{loaded}, {BY_HAND}"), ""),
            "beast draining: 1 copy left, 3 requests in flight: coder → quad (its load has not started)"
        );
        assert_eq!(
            summary(&loaded, &CODER.replace("STATUS", "loading")),
            "beast draining: 1 copy left, 3 requests in flight: coder → quad (loading there)"
        );
        assert_eq!(
            summary(&loaded, &CODER.replace("STATUS", "loaded")),
            "beast draining: 1 copy left, 3 requests in flight: coder → quad (ready there)"
        );
        assert_eq!(
            summary(&CODER.replace("STATUS", "unloading"), &CODER.replace("STATUS", "loaded")),
            "beast draining: 1 copy left, 3 requests in flight: coder unloading"
        );
        assert_eq!(
            summary(BY_HAND, &CODER.replace("STATUS", "loaded")),
            "beast draining: ready for maintenance: nothing cortex manages is loaded there (1 started outside cortex, left alone: by-hand)"
        );
    }
}
