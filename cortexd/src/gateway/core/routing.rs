//! Routing: which copy serves a request for a model. Model names are resolved here (a fleet id,
//! an alias, or a model loaded outside the fleet), the swap scheduler
//! ([`crate::gateway::core::scheduler`]) admits or queues the request, and [`send`] carries the
//! call to the copy it was given.
//!
//! Invariant: no request is sent to a copy the scheduler has chosen for eviction or that its
//! neuron reported going; a request the neuron still refuses that way (a race with someone
//! else's unload) is queued again ([`send`]), never failed.

use std::sync::Arc;

use bytes::Bytes;
use plans::wire::code;

use crate::gateway::core::error::ApiError;
use crate::gateway::core::forward;
use crate::gateway::core::scheduler::machine::Tag;
use crate::gateway::core::scheduler::{Arrived, LoadTicket, Permit};
use crate::gateway::core::state::AppState;
use crate::gateway::core::target::Target;
use crate::gateway::transport::upstream;

/// The outcome of resolving a model name: served now, or a place in its queue.
pub enum Resolution {
    Ready(Target),
    Waiting(Queued),
}

/// A request waiting in its model's queue. Dropping it (the client left) leaves the queue.
pub struct Queued {
    ticket: LoadTicket,
    state: AppState,
}

impl Queued {
    /// Wait until the scheduler admits the request (or refuses it on its own bounds).
    pub async fn wait(self) -> Result<Target, ApiError> {
        let permit = self.ticket.wait().await?;
        target(&self.state, permit)
    }
}

/// Resolve `name` (a fleet id or alias, or the id of a model loaded outside the fleet) for the
/// caller `tag` describes (its place in the model's queue, its session).
pub fn resolve_as(state: &AppState, name: &str, tag: Tag) -> Result<Resolution, ApiError> {
    let fleet = state.fleet();
    let id = fleet.model(name).map_or(name, |m| m.id.as_str()).to_owned();
    if fleet.model(name).is_none() {
        let observed = state.observed();
        let present = observed.topology.neurons.iter().any(|n| n.reachable && n.model(&id).is_some());
        if !present {
            return Err(ApiError::UnknownModel(name.to_owned()));
        }
    }
    match state.scheduler.arrive_as(&fleet, id, tag)? {
        Arrived::Now(permit) => Ok(Resolution::Ready(target(state, permit)?)),
        Arrived::Queued(ticket) => Ok(Resolution::Waiting(Queued { ticket, state: state.clone() })),
    }
}

/// Admit a request that can only go to `model` on `neuron` (it continues a response that copy
/// made): `None` when that copy does not serve it now.
pub fn resolve_on(state: &AppState, model: &str, neuron: &str) -> Result<Option<Target>, ApiError> {
    let Some(permit) = state.scheduler.arrive_on(model, neuron) else {
        return Ok(None);
    };
    Ok(Some(Target { pinned: true, ..target(state, permit)? }))
}

/// The target of an admitted request: the client of the permit's neuron and the harness the
/// model runs under there (the fleet's, before the neuron reports it).
fn target(state: &AppState, permit: Permit) -> Result<Target, ApiError> {
    let observed = state.observed();
    let (model, neuron) = (permit.model(), permit.neuron());
    let client = observed
        .clients
        .get(neuron)
        .ok_or_else(|| ApiError::Internal(format!("no client for neuron {neuron}")))?;
    let harness = observed
        .topology
        .neuron(neuron)
        .and_then(|n| n.model(model))
        .map(|m| m.harness.clone())
        .or_else(|| state.fleet().model(model).map(|m| m.profile.harness.clone()))
        .unwrap_or_default();
    Ok(Target {
        model: model.to_owned(),
        neuron: client.clone(),
        harness,
        permit: Some(Arc::new(permit)),
        pinned: false,
    })
}

/// How often one request may be re-queued because the copy it was sent to went away.
const RESENDS: usize = 5;

/// One upstream call, kept so that it can be sent again.
pub struct Resend<'a> {
    pub method: reqwest::Method,
    pub path: &'a str,
    pub body: Bytes,
    pub headers: axum::http::HeaderMap,
}

/// Send `call` to the target's neuron. When the neuron answers that the copy is gone or going
/// (the request raced an unload cortex did not schedule), the request is queued again and sent
/// where the scheduler puts it. Returns the target that answered and its response (which may
/// be any other refusal, left for the caller to map).
pub async fn send(
    state: &AppState,
    mut target: Target,
    call: Resend<'_>,
) -> Result<(Target, upstream::Response), ApiError> {
    for _ in 0..RESENDS {
        let request = forward::Call {
            method: call.method.clone(),
            path: call.path,
            body: call.body.clone(),
            headers: call.headers.clone(),
            model: &target.model,
        };
        let response = forward::send(&state.inference, &target, request).await?;
        if !matches!(response.status().as_u16(), 404 | 409 | 503) {
            return Ok((target, response));
        }
        let status = response.status();
        let body = forward::error_body(response).await;
        if !copy_gone(&body) {
            let ctx_size = state.fleet().model(&target.model).and_then(|m| m.profile.ctx_size).map(u64::from);
            return Err(forward::upstream_error_from(status, &body, ctx_size));
        }
        let (model, neuron) = (target.model.clone(), target.neuron.name.clone());
        let session = target.permit.as_ref().and_then(|p| p.session());
        state.scheduler.lost(&model, &neuron);
        state.poller.kick();
        if target.pinned {
            return Err(ApiError::BadRequest(format!(
                "{model} went away from neuron {neuron}, which holds the response this request continues; send the whole conversation in input instead"
            )));
        }
        tracing::info!(%model, %neuron, "the copy went away under a request; queueing it again");
        drop(target);
        // Its session (if any) re-homes to its next copy in hash order.
        target = match resolve_as(state, &model, Tag { session, ..Tag::default() })? {
            Resolution::Ready(target) => target,
            Resolution::Waiting(ticket) => ticket.wait().await?,
        };
    }
    Err(ApiError::Overloaded {
        message: "the model kept moving away while this request was sent; try again".into(),
        retry_after_s: 1,
    })
}

/// Whether a neuron's refusal says the model is not (or no longer) served there.
fn copy_gone(body: &[u8]) -> bool {
    serde_json::from_slice::<plans::wire::ErrorBody>(body).is_ok_and(|e| {
        [code::MODEL_NOT_FOUND, code::MODEL_UNLOADING, code::MODEL_LOADING].contains(&e.error.code.as_str())
    })
}
