//! Saved plans (`cortex plan --out FILE`, `cortex apply FILE`): self-contained JSON with the
//! fleet digest and the neuron generations the plan assumed, and the staleness check that
//! says what changed since.

use std::collections::BTreeMap;

use crate::plan::{FORMAT_VERSION, Plan, PlanOptions, Revision};
use crate::topology::Topology;

/// A plan saved for a later `cortex apply FILE`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanFile {
    pub format_version: u32,
    /// The version of cortex that made it.
    pub cortex_version: String,
    pub fleet_digest: String,
    pub revision: Revision,
    /// The options it was planned with.
    pub options: PlanOptions,
    /// Generation of every neuron an action touches, as observed when planning.
    pub generations: BTreeMap<String, u64>,
    /// Boot id of those neurons: a restart invalidates the plan even if generations collide.
    pub boot_ids: BTreeMap<String, String>,
    pub plan: Plan,
    pub created_unix_ms: u64,
    /// The fleet it was made from, so that `cortex apply FILE` reads the same one from any
    /// directory (as a Terraform plan carries its configuration). Absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetOrigin>,
}

/// Where the fleet of a saved plan came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetOrigin {
    /// A fleet directory, as an absolute path.
    Dir(String),
    /// The default fleet compiled into cortex.
    Embedded,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("not a cortex plan file: {0}")]
    Json(serde_json::Error),
    #[error("plan file has format_version {0}; this cortex reads format_version 1")]
    Version(u32),
}

impl PlanFile {
    /// Wrap `plan`, recording what it assumed about the neurons it touches.
    pub fn new(
        plan: Plan,
        topology: &Topology,
        revision: Revision,
        options: PlanOptions,
        created_unix_ms: u64,
    ) -> Self {
        let mut generations = BTreeMap::new();
        let mut boot_ids = BTreeMap::new();
        for action in &plan.actions {
            if let Some(neuron) = topology.neuron(&action.neuron) {
                generations.insert(neuron.name.clone(), neuron.generation);
                boot_ids.insert(neuron.name.clone(), neuron.boot_id.clone());
            }
        }
        PlanFile {
            format_version: FORMAT_VERSION,
            cortex_version: env!("CARGO_PKG_VERSION").to_owned(),
            fleet_digest: plan.fleet_digest.clone(),
            revision,
            options,
            generations,
            boot_ids,
            plan,
            created_unix_ms,
            fleet: None,
        }
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parse a saved plan, refusing format versions this build does not understand.
    pub fn from_json(text: &str) -> Result<Self, PlanFileError> {
        #[derive(serde::Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_str(text).map_err(PlanFileError::Json)?;
        if version.format_version != FORMAT_VERSION {
            return Err(PlanFileError::Version(version.format_version));
        }
        serde_json::from_str(text).map_err(PlanFileError::Json)
    }

    /// What changed since the plan was made, one sentence each; empty means it is fresh.
    pub fn staleness(&self, fleet_digest: &str, topology: &Topology) -> Vec<String> {
        let mut changes = Vec::new();
        if fleet_digest != self.fleet_digest {
            changes.push(format!(
                "the fleet changed: digest {} is now {}",
                crate::plan::short_digest(&self.fleet_digest),
                crate::plan::short_digest(fleet_digest)
            ));
        }
        for (name, generation) in &self.generations {
            let Some(neuron) = topology.neuron(name) else {
                changes.push(format!("neuron {name} is no longer in the topology"));
                continue;
            };
            if !neuron.reachable {
                changes.push(format!("neuron {name} is unreachable"));
            }
            let boot_id = self.boot_ids.get(name).map(String::as_str).unwrap_or_default();
            if neuron.boot_id != boot_id {
                changes.push(format!(
                    "neuron {name} restarted (boot id {boot_id:?} is now {:?})",
                    neuron.boot_id
                ));
            } else if neuron.generation != *generation {
                changes.push(format!(
                    "neuron {name} changed: generation {generation} is now {} (models were loaded or unloaded)",
                    neuron.generation
                ));
            }
        }
        changes
    }
}
