//! The neuron's HTTP API bodies (spec §8), shared by `neuron` (server) and `cortexd` (client).
//! The observed-state types they carry live in [`crate::topology`].

use crate::fleet::Profile;
use crate::topology::{DeviceStatus, LoadedModel};

/// `GET /discovery`: what a neuron is; fetched once per boot id.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Discovery {
    pub name: String,
    pub boot_id: String,
    pub version: String,
    /// True when devices or engines are simulated.
    #[serde(default)]
    pub simulated: bool,
    /// `None` on a CPU-only node.
    #[serde(default)]
    pub driver_version: Option<String>,
    #[serde(default)]
    pub cuda_version: Option<String>,
    pub devices: Vec<DeviceStatus>,
    pub ram_total_mb: u64,
    pub harnesses: Vec<HarnessInfo>,
    /// The neuron checks the `term` of lifecycle calls (cluster fencing: docs/neuron.md). A
    /// neuron that does not say so (an older one) is never acted on by a cortex cluster.
    #[serde(default)]
    pub fencing: bool,
}

/// A harness defined in neuron.toml and what its engine can do.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HarnessInfo {
    pub name: String,
    /// `llamacpp`, `mistralrs`, `command` or `sim`.
    pub kind: String,
    /// The engine serves Anthropic `/v1/messages` natively.
    #[serde(default)]
    pub anthropic_messages: bool,
    /// The engine counts tokens exactly (`/v1/messages/count_tokens` or `/tokenize`).
    #[serde(default)]
    pub count_tokens: bool,
    #[serde(default)]
    pub embeddings: bool,
    /// The engine serves OpenAI `/v1/responses` (and `/v1/responses/input_tokens`) natively.
    #[serde(default)]
    pub responses: bool,
}

/// `GET /health`: live figures, polled every few seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub boot_id: String,
    pub generation: u64,
    pub devices: Vec<DeviceStatus>,
    pub ram_total_mb: u64,
    pub ram_free_mb: u64,
}

/// `GET /models`: the loaded models and the generation they were read at.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Models {
    pub boot_id: String,
    pub generation: u64,
    pub models: Vec<LoadedModel>,
}

/// `POST /models/load`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadRequest {
    /// The fleet id; the engine serves it under this name.
    pub model: String,
    pub profile: Profile,
    /// Device indices to run on; empty for CPU.
    #[serde(default)]
    pub devices: Vec<u32>,
    #[serde(default)]
    pub vram_mb: u64,
    #[serde(default)]
    pub ram_mb: u64,
    /// Refuse (409) unless the neuron's generation is still this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_generation: Option<u64>,
    /// The cluster leader's term: refused (409 `fenced`) when lower than the highest the neuron
    /// has seen, or absent once it has seen one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// `POST /models/unload`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnloadRequest {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_generation: Option<u64>,
    /// As [`LoadRequest::term`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// `POST /fence`: a new cluster leader raises the neuron's term before it acts, so that no
/// older leader's call is accepted from then on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FenceRequest {
    pub term: u64,
}

/// The answer to `POST /fence`: the highest term the neuron has seen, and its generation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FenceResponse {
    pub term: u64,
    pub generation: u64,
}

/// `GET /actions`: the neuron's own record of the lifecycle calls it decided on (the most
/// recent ones, oldest first), each with the term it carried.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Actions {
    pub boot_id: String,
    /// The highest term seen (persisted across restarts); 0 when none.
    pub term: u64,
    pub actions: Vec<ActionRecord>,
}

/// One lifecycle call as the neuron decided it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActionRecord {
    /// Increases by one per record since the neuron started.
    pub seq: u64,
    /// `load`, `unload` or `fence`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// `accepted`, or the refusal's code (`fenced`, `generation_mismatch`, ...).
    pub outcome: String,
    /// The generation when it was decided.
    pub generation: u64,
    pub started_unix_ms: u64,
    /// When an accepted load became ready or failed, or an accepted unload finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix_ms: Option<u64>,
}

/// The answer to a load or unload: the generation after the change and the model's state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LifecycleResponse {
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<LoadedModel>,
}

/// The header that names the model of a request without a body to name it in
/// (`GET /v1/responses/{id}`): cortex sets it, the neuron reads it and never forwards it.
pub const MODEL_HEADER: &str = "x-cortex-model";

/// The `code` of each [`ErrorDetail`] a neuron answers (docs/neuron.md).
pub mod code {
    /// The bearer token is missing or wrong (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The request is malformed (400).
    pub const BAD_REQUEST: &str = "bad_request";
    /// A model source resolves outside `models_dir` (400).
    pub const PATH_OUTSIDE_MODELS_DIR: &str = "path_outside_models_dir";
    /// A model source does not exist (400).
    pub const SOURCE_NOT_FOUND: &str = "source_not_found";
    /// A load names a harness the neuron does not define (400).
    pub const UNKNOWN_HARNESS: &str = "unknown_harness";
    /// A load adds engine arguments its harness does not allow (400).
    pub const ARGS_NOT_ALLOWED: &str = "args_not_allowed";
    /// A load names a device the node does not have (400).
    pub const UNKNOWN_DEVICE: &str = "unknown_device";
    /// A lifecycle call expected another generation (409, with `generation`).
    pub const GENERATION_MISMATCH: &str = "generation_mismatch";
    /// A lifecycle call carries a term older than the highest seen (409, with `term`).
    pub const FENCED: &str = "fenced";
    /// The neuron could not save its state (500).
    pub const STATE_NOT_SAVED: &str = "state_not_saved";
    /// The model is loaded with another profile (409).
    pub const PROFILE_CONFLICT: &str = "profile_conflict";
    /// The model is unloading (409) or draining (503) there: send elsewhere.
    pub const MODEL_UNLOADING: &str = "model_unloading";
    /// The model is not loaded there (404).
    pub const MODEL_NOT_FOUND: &str = "model_not_found";
    /// The model is still loading there (503).
    pub const MODEL_LOADING: &str = "model_loading";
    /// The model's engine failed to start or crashed (503).
    pub const MODEL_FAILED: &str = "model_failed";
    /// No port is free in the neuron's `port_range` (503).
    pub const NO_FREE_PORT: &str = "no_free_port";
    /// The engine did not answer the forwarded request (502).
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    /// The neuron is shutting down (503).
    pub const SHUTTING_DOWN: &str = "shutting_down";
}

/// Every non-2xx answer of the neuron API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `generation_mismatch`, `path_outside_models_dir`.
    pub code: String,
    pub message: String,
    /// On `generation_mismatch` (409): the neuron's current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// On `fenced` (409): the highest term the neuron has seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}
