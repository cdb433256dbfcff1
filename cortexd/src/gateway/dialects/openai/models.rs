//! `GET /v1/models`: one OpenAI-shaped list of every model the fleet can serve (loaded
//! anywhere, or declared and feasible somewhere), with cortex's extension fields;
//! `GET /v1/models/{id}` (an id or an alias): one entry, or a 404.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use plans::topology::ModelState;

use crate::control::poller::now_unix_ms;
use crate::gateway::core::error::{ApiError, Dialect};
use crate::gateway::core::keys::Caller;
use crate::gateway::core::state::AppState;

/// One entry of the list.
#[derive(Debug, serde::Serialize)]
pub struct ModelEntry {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub aliases: Vec<String>,
    /// Loaded and ready on at least one neuron.
    pub loaded: bool,
    /// Neurons where it is loaded and ready.
    pub locations: Vec<String>,
    /// Neurons where it could be loaded (enough devices and memory, harness, labels).
    pub feasible_on: Vec<String>,
    pub pinned: Vec<String>,
    /// Declared in the fleet (false: loaded outside it).
    pub declared: bool,
    /// Expected time to load it, from the last measured load, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_cold_start_ms: Option<u64>,
    /// The context window in tokens, where the fleet sets `ctx_size` (agents size prompts by it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// The fleet's cap on tokens generated per request, where it sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
}

/// `GET /v1/models`: the models the caller's key may use.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let caller = match state.keys.identify(&state.fleet(), &headers, now_unix_ms()) {
        Ok(caller) => caller,
        Err(error) => return error.in_dialect(Dialect::OpenAi).into_response(),
    };
    let fleet = state.fleet();
    let data: Vec<ModelEntry> =
        entries(&state).into_iter().filter(|entry| may_use(&caller, &fleet, &entry.id)).collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}`: one entry, a 404 for a model the caller's key may not use.
pub async fn retrieve(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let fleet = state.fleet();
    let caller = match state.keys.identify(&fleet, &headers, now_unix_ms()) {
        Ok(caller) => caller,
        Err(error) => return error.in_dialect(Dialect::OpenAi).into_response(),
    };
    let wanted = fleet.model(&id).map_or(id.clone(), |model| model.id.clone());
    match entries(&state).into_iter().find(|entry| entry.id == wanted && may_use(&caller, &fleet, &id)) {
        Some(entry) => axum::Json(entry).into_response(),
        None => ApiError::UnknownModel(id).in_dialect(Dialect::OpenAi).into_response(),
    }
}

/// Whether `caller` may use the model named `name`.
fn may_use(caller: &Caller, fleet: &plans::fleet::Fleet, name: &str) -> bool {
    match caller {
        Caller::Declared(key) => key.spec.may_use(name, fleet.model(name)),
        Caller::Open | Caller::Legacy => true,
    }
}

/// The neurons where `id` could be loaded now (evicting by policy if need be): the planner's
/// `place_one` asked about each neuron alone, so the answer is the router's own.
fn feasible_on(fleet: &plans::fleet::Fleet, topology: &plans::topology::Topology, id: &str) -> Vec<String> {
    let options =
        plans::plan::PlanOptions { now_unix_ms: crate::control::poller::now_unix_ms(), prune: false };
    topology
        .neurons
        .iter()
        .filter(|neuron| {
            if neuron.model(id).is_some_and(|m| m.status == ModelState::Loaded) {
                return true;
            }
            let alone = plans::topology::Topology::new(topology.observed_at_unix_ms, vec![(*neuron).clone()]);
            plans::plan::place_one(fleet, &alone, id, &options).is_ok()
        })
        .map(|neuron| neuron.name.clone())
        .collect()
}

/// The list, fleet models first (in declaration order), then models loaded outside the fleet.
pub fn entries(state: &AppState) -> Vec<ModelEntry> {
    let fleet = state.fleet();
    let observed = state.observed();
    let topology = &observed.topology;
    let locations = |id: &str| -> Vec<String> {
        topology
            .neurons
            .iter()
            .filter(|n| n.reachable && n.model(id).is_some_and(|m| m.status == ModelState::Loaded))
            .map(|n| n.name.clone())
            .collect()
    };
    let cold_start = |id: &str| topology.neurons.iter().filter_map(|n| n.model(id)?.load_duration_ms).max();
    let mut entries: Vec<ModelEntry> = fleet
        .models
        .iter()
        .map(|model| {
            let locations = locations(&model.id);
            ModelEntry {
                id: model.id.clone(),
                object: "model",
                created: 0,
                owned_by: "cortex",
                aliases: model.aliases.clone(),
                loaded: !locations.is_empty(),
                locations,
                feasible_on: feasible_on(&fleet, topology, &model.id),
                pinned: model.pinned_on.clone(),
                declared: true,
                estimated_cold_start_ms: cold_start(&model.id),
                context_length: model.profile.ctx_size,
                max_output_tokens: model.max_output_tokens,
            }
        })
        .collect();
    let mut undeclared: Vec<&str> = topology
        .neurons
        .iter()
        .flat_map(|n| n.models.iter())
        .filter(|m| m.status == ModelState::Loaded && fleet.model(&m.id).is_none())
        .map(|m| m.id.as_str())
        .collect();
    undeclared.sort_unstable();
    undeclared.dedup();
    entries.extend(undeclared.into_iter().map(|id| ModelEntry {
        id: id.to_owned(),
        object: "model",
        created: 0,
        owned_by: "cortex",
        aliases: Vec::new(),
        loaded: true,
        locations: locations(id),
        feasible_on: Vec::new(),
        pinned: Vec::new(),
        declared: false,
        estimated_cold_start_ms: None,
        context_length: None,
        max_output_tokens: None,
    }));
    entries
}
