//! Performing plan actions against neurons: the one place that turns a `plans::plan::Action`
//! into neuron API calls. Used by `cortex apply`, the reconciler and the router's cold loads.

use std::time::Duration;

use plans::plan::{Action, ActionKind};
use plans::topology::ModelState;
use plans::wire::{LoadRequest, UnloadRequest};

use crate::control::authority::Mandate;
use crate::control::neuron_client::{NeuronClient, NeuronError};

/// Why an action did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Neuron(#[from] NeuronError),
    #[error("{model} failed to load on {neuron}: {reason}")]
    LoadFailed {
        model: String,
        neuron: String,
        reason: String,
        /// The neuron's generation once the failure was recorded, if nobody else acted.
        generation: u64,
    },
    #[error("{model} was not ready on {neuron} within {waited:?}")]
    NotReady { model: String, neuron: String, waited: Duration },
    #[error("action {id} has no profile to load")]
    NoProfile { id: String },
    /// This replica's leadership ended (its lease ran out or it was fenced): nothing was sent.
    #[error("not sent: this replica no longer leads the cluster (term {term})")]
    NotLeader { term: u64 },
    /// A cluster leader does not act on a neuron that does not check terms: nothing was sent.
    #[error(
        "not sent: neuron {neuron} does not advertise fencing (an older neuron that ignores the leader's term); a cluster acts only on neurons that fence: upgrade it"
    )]
    Unfenced { neuron: String },
}

/// Timeouts for lifecycle calls.
#[derive(Clone, Copy, Debug)]
pub struct ExecTimeouts {
    /// For one neuron API call (unloads include the drain, so they get `ready` too).
    pub call: Duration,
    /// For a load to become ready.
    pub ready: Duration,
}

impl ExecError {
    /// The generation the neuron is at after this failure if no other actor touched it, given
    /// the precondition `before` the action was sent with: unchanged when the neuron refused
    /// the request, the failure's own generation when a load started and failed, and `None`
    /// when nobody can say (a 409, no answer, a timeout).
    pub fn generation_after(&self, before: Option<u64>) -> Option<u64> {
        match self {
            ExecError::LoadFailed { generation, .. } => Some(*generation),
            ExecError::Neuron(NeuronError::Refused { .. } | NeuronError::Fenced { .. })
            | ExecError::NoProfile { .. }
            | ExecError::NotLeader { .. }
            | ExecError::Unfenced { .. } => before,
            ExecError::Neuron(_) | ExecError::NotReady { .. } => None,
        }
    }

    /// Whether the neuron refused because its generation moved on (409).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ExecError::Neuron(NeuronError::Stale { .. }))
    }

    /// Whether the action was not performed because this replica's term is over (fenced by a
    /// neuron, or its mandate no longer held): not a failure of the action, nothing backs off.
    pub fn is_fenced(&self) -> bool {
        matches!(self, ExecError::Neuron(NeuronError::Fenced { .. }) | ExecError::NotLeader { .. })
    }
}

/// Perform `action` on `client`, requiring the neuron to still be at `if_generation` when given.
/// Loads wait until the engine is ready. Returns the generation the neuron is at afterwards as
/// far as this action's own changes go (never re-read from the neuron, so that a change by
/// another actor in between shows up as a 409 on the caller's next action instead of being
/// absorbed into its precondition).
///
/// Under a cluster leader's `mandate`, every call carries its term and is sent only while the
/// mandate holds; a neuron's `fenced` answer revokes it.
pub async fn run_as(
    client: &NeuronClient,
    action: &Action,
    if_generation: Option<u64>,
    mandate: Option<&Mandate>,
    timeouts: ExecTimeouts,
) -> Result<u64, ExecError> {
    let result = match action.kind {
        ActionKind::Unload => unload(client, &action.model, if_generation, mandate, timeouts).await,
        ActionKind::Load => load(client, action, if_generation, mandate, timeouts).await,
        ActionKind::Reload => match unload(client, &action.model, if_generation, mandate, timeouts).await {
            Ok(generation) => load(client, action, Some(generation), mandate, timeouts).await,
            Err(error) => Err(error),
        },
    };
    if let (Err(ExecError::Neuron(NeuronError::Fenced { neuron, term })), Some(mandate)) = (&result, mandate)
    {
        tracing::warn!(%neuron, fenced_by = term, our_term = mandate.term, "a neuron fenced this replica's term: stepping down");
        mandate.revoke();
    }
    result
}

/// The term to send to `client`'s neuron, when the mandate (if any) still holds and the neuron
/// checks terms (a leader never acts on one that would ignore its term).
fn term(client: &NeuronClient, mandate: Option<&Mandate>) -> Result<Option<u64>, ExecError> {
    match mandate {
        None => Ok(None),
        Some(mandate) if !mandate.holds() => Err(ExecError::NotLeader { term: mandate.term }),
        Some(_) if !client.fences() => Err(ExecError::Unfenced { neuron: client.name.clone() }),
        Some(mandate) => Ok(Some(mandate.term)),
    }
}

async fn unload(
    client: &NeuronClient,
    model: &str,
    if_generation: Option<u64>,
    mandate: Option<&Mandate>,
    timeouts: ExecTimeouts,
) -> Result<u64, ExecError> {
    let request = UnloadRequest { model: model.to_owned(), if_generation, term: term(client, mandate)? };
    Ok(client.unload(&request, timeouts.call + timeouts.ready).await?.generation)
}

async fn load(
    client: &NeuronClient,
    action: &Action,
    if_generation: Option<u64>,
    mandate: Option<&Mandate>,
    timeouts: ExecTimeouts,
) -> Result<u64, ExecError> {
    let profile = action.profile.clone().ok_or_else(|| ExecError::NoProfile { id: action.id.clone() })?;
    let request = LoadRequest {
        model: action.model.clone(),
        profile,
        devices: action.devices.clone(),
        vram_mb: action.vram_mb,
        ram_mb: action.ram_mb,
        if_generation,
        term: term(client, mandate)?,
    };
    let accepted = client.load(&request, timeouts.call).await?;
    // A started load bumps the generation once more when it becomes ready (or fails); a load
    // the neuron already had, loaded, changes nothing.
    let already_loaded = accepted.model.as_ref().is_some_and(|m| m.status == ModelState::Loaded);
    let expected = if already_loaded { accepted.generation } else { accepted.generation + 1 };
    let started = tokio::time::Instant::now();
    loop {
        let remaining = timeouts.ready.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(ExecError::NotReady {
                model: action.model.clone(),
                neuron: client.name.clone(),
                waited: timeouts.ready,
            });
        }
        let model = client.wait(&action.model, remaining).await?;
        match model.status {
            ModelState::Loaded => break,
            ModelState::Failed => {
                return Err(ExecError::LoadFailed {
                    model: action.model.clone(),
                    neuron: client.name.clone(),
                    reason: model.error.unwrap_or_else(|| "the engine stopped".to_owned()),
                    generation: expected,
                });
            }
            // The long-poll returned on its own timeout; go round until ours runs out.
            ModelState::Loading | ModelState::Unloading => {}
        }
    }
    Ok(expected)
}
