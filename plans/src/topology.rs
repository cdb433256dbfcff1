//! The observed state: what the neurons report (spec §3), and its versioned JSON snapshot.
//!
//! These types are the single definition of the neuron's wire format too: `neuron` serialises
//! them, `cortexd` deserialises them, and `cortex topology --out` writes them to a file.

use crate::fleet::Profile;

/// The snapshot format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Everything cortex knows about the fleet's nodes at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Topology {
    pub format_version: u32,
    /// When this was observed (Unix milliseconds); the plan header shows its age.
    #[serde(default)]
    pub observed_at_unix_ms: u64,
    pub neurons: Vec<NeuronStatus>,
}

impl Topology {
    pub fn new(observed_at_unix_ms: u64, mut neurons: Vec<NeuronStatus>) -> Self {
        neurons.sort_by(|a, b| a.name.cmp(&b.name));
        Topology { format_version: FORMAT_VERSION, observed_at_unix_ms, neurons }
    }

    pub fn neuron(&self, name: &str) -> Option<&NeuronStatus> {
        self.neurons.iter().find(|n| n.name == name)
    }

    /// Parse a snapshot, refusing versions this build does not understand.
    pub fn from_json(text: &str) -> Result<Self, SnapshotError> {
        #[derive(serde::Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_str(text).map_err(SnapshotError::Json)?;
        if version.format_version != FORMAT_VERSION {
            return Err(SnapshotError::Version(version.format_version));
        }
        serde_json::from_str(text).map_err(SnapshotError::Json)
    }

    /// The snapshot as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a topology snapshot: {0}")]
    Json(serde_json::Error),
    #[error("topology snapshot has format_version {0}; this cortex reads format_version 1")]
    Version(u32),
}

/// One neuron as observed. An unreachable neuron keeps its name and `reachable: false`, and the
/// last error; its other fields are whatever was last seen (possibly empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NeuronStatus {
    pub name: String,
    pub reachable: bool,
    /// Increases on every lifecycle change on that neuron; the precondition of plan actions.
    #[serde(default)]
    pub generation: u64,
    /// Changes when the neuron restarts.
    #[serde(default)]
    pub boot_id: String,
    /// True when the neuron runs simulated devices or engines.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
    #[serde(default)]
    pub devices: Vec<DeviceStatus>,
    #[serde(default)]
    pub ram_total_mb: u64,
    #[serde(default)]
    pub ram_free_mb: u64,
    /// Harness names defined in the neuron's config.
    #[serde(default)]
    pub harnesses: Vec<String>,
    #[serde(default)]
    pub models: Vec<LoadedModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NeuronStatus {
    pub fn model(&self, id: &str) -> Option<&LoadedModel> {
        self.models.iter().find(|m| m.id == id)
    }
}

/// One accelerator on a neuron.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceStatus {
    pub index: u32,
    pub name: String,
    pub vram_total_mb: u64,
    pub vram_free_mb: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_pct: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
}

/// Lifecycle state of a model on a neuron.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    Loading,
    Loaded,
    Unloading,
    Failed,
}

/// A model present on a neuron. `profile` is `Some` when it was loaded through the neuron API
/// (cortex manages it) and `None` when it was started outside cortex (never touched).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadedModel {
    pub id: String,
    pub harness: String,
    pub status: ModelState,
    /// Device indices it occupies; empty for CPU models.
    #[serde(default)]
    pub devices: Vec<u32>,
    /// VRAM it holds in total, spread evenly over `devices`.
    #[serde(default)]
    pub vram_mb: u64,
    /// Host RAM it holds (CPU models).
    #[serde(default)]
    pub ram_mb: u64,
    #[serde(default)]
    pub last_used_unix_ms: u64,
    #[serde(default)]
    pub in_flight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_duration_ms: Option<u64>,
    /// Why it failed, with the engine's last log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LoadedModel {
    /// Whether cortex manages it (it was loaded through the neuron API).
    pub fn is_managed(&self) -> bool {
        self.profile.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_snapshot_parses() {
        let text = r#"{"format_version": 1,
 "neurons": [{"name": "beast", "reachable": true, "generation": 7,
   "devices": [{"index": 0, "name": "RTX 5090", "vram_total_mb": 32607, "vram_free_mb": 30000}],
   "ram_total_mb": 128000, "ram_free_mb": 100000,
   "harnesses": ["llamacpp"],
   "models": [{"id": "m", "harness": "llamacpp", "status": "loaded", "devices": [0],
               "vram_mb": 19000, "last_used_unix_ms": 1700000000000, "in_flight": 0,
               "profile": {"harness": "llamacpp", "source": "m.gguf", "quant": "Q4_K_M", "ctx_size": 8192, "args": []}}]}]}"#;
        let topology = Topology::from_json(text).expect("spec example parses");
        let beast = topology.neuron("beast").expect("beast");
        assert_eq!(beast.generation, 7);
        assert!(beast.model("m").is_some_and(LoadedModel::is_managed));
        let again = Topology::from_json(&topology.to_json()).expect("round trip");
        assert_eq!(again, topology);
    }

    #[test]
    fn other_format_versions_are_refused() {
        let err = Topology::from_json(r#"{"format_version": 2, "neurons": []}"#).expect_err("v2");
        assert_eq!(
            err.to_string(),
            "topology snapshot has format_version 2; this cortex reads format_version 1"
        );
    }
}
