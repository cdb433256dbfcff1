//! The admin API: `GET /admin/status` (the daemon's status, as `cortex status` shows it),
//! `GET /admin/usage` (each fleet key's usage, as `cortex usage` shows it), `GET
//! /admin/requests` and `GET /admin/requests/{id}` (the recent requests' timelines), `POST /admin/apply`
//! (apply a saved plan file, refused when stale) and `POST /admin/reconcile` (a reconcile pass
//! now, every backoff cleared: what SIGHUP does). The admin key of cortex.toml opens every
//! route; a fleet key opens the reading routes with `operator = "read_only"` and every route
//! with `operator = "admin"`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plans::fleet::OperatorAccess;
use plans::plan::PlanFile;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::control::apply::{self, Outcome};
use crate::control::authority::Authority;
use crate::control::cluster_status::ClusterStatus;
use crate::control::execute::ExecTimeouts;
use crate::control::poller::now_unix_ms;
use crate::control::reconciler::ReconcileHandle;
use crate::control::status::DaemonStatus;
use crate::gateway::AppState;
use crate::gateway::dialects::fallback::wrong_method;

/// The admin routes, served on the inference listener beside the API (merged into
/// `gateway::app`'s router by the daemon). Without an admin key (`admin: None`) every route
/// answers 404 and says how to enable it.
pub fn router(gateway: AppState, admin: Option<Admin>) -> Router {
    let body_limit = gateway.limits.max_body_bytes;
    Router::new()
        .route("/admin/status", get(status))
        .route("/admin/usage", get(usage))
        .route("/admin/requests", get(requests))
        .route("/admin/requests/{id}", get(request))
        .route("/admin/apply", post(apply))
        .route("/admin/reconcile", post(reconcile).fallback(wrong_method))
        // A plan file is bounded like an inference body.
        .layer(axum::extract::DefaultBodyLimit::max(body_limit.saturating_add(1)))
        .with_state(AdminState { gateway, admin })
}

/// The admin routes' state: the gateway's (fleet, observations, scheduler) and the admin
/// settings.
#[derive(Clone)]
struct AdminState {
    gateway: AppState,
    admin: Option<Admin>,
}

/// What the admin routes need besides the gateway's state.
#[derive(Clone)]
pub struct Admin {
    /// cortex.toml's `admin_key`, which opens every route.
    pub key: Option<Arc<String>>,
    pub status: watch::Receiver<Arc<DaemonStatus>>,
    pub timeouts: ExecTimeouts,
    pub parallelism: usize,
    /// Asks the reconciler for a pass.
    pub reconciler: ReconcileHandle,
    /// Cluster mode: the cluster as this replica sees it (`None` standalone).
    pub cluster: Option<watch::Receiver<Arc<ClusterStatus>>>,
    /// Whether this daemon acts on neurons (standalone, or the cluster's leader) and the
    /// mandate a posted plan is applied under.
    pub authority: watch::Receiver<Authority>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({"error": {"message": message.into()}}))).into_response()
}

/// On a follower's 409 to `POST /admin/apply`: the leader's API address (`http://host:port`).
pub const LEADER_HEADER: &str = "x-cortex-leader";

const DISABLED: &str = "the admin API is disabled: set admin_key in cortex.toml, or give a fleet key operator = \"read_only\" or \"admin\"";

/// The admin settings if the request carries the admin key, or a fleet key with at least the
/// access `need`; else the response to send.
fn authorised<'a>(
    state: &'a AdminState,
    headers: &HeaderMap,
    need: OperatorAccess,
) -> Result<&'a Admin, (StatusCode, &'static str)> {
    let Some(admin) = state.admin.as_ref() else {
        return Err((StatusCode::NOT_FOUND, DISABLED));
    };
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if admin.key.as_ref().is_some_and(|key| bool::from(key.as_bytes().ct_eq(presented.as_bytes()))) {
        return Ok(admin);
    }
    let fleet = state.gateway.fleet();
    let access = state.gateway.keys.operator_access(&fleet, presented, now_unix_ms());
    if access != OperatorAccess::None && access >= need {
        return Ok(admin);
    }
    let any_operator_key = fleet.keys.iter().any(|k| k.operator != OperatorAccess::None);
    match access {
        OperatorAccess::ReadOnly => Err((StatusCode::FORBIDDEN, "this key's operator access is read_only")),
        _ if admin.key.is_none() && !any_operator_key => Err((StatusCode::NOT_FOUND, DISABLED)),
        _ => Err((StatusCode::UNAUTHORIZED, "invalid admin key")),
    }
}

async fn status(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    match authorised(&state, &headers, OperatorAccess::ReadOnly) {
        Ok(admin) => {
            let mut status = admin.status.borrow().as_ref().clone();
            status.contention = state.gateway.scheduler.contention();
            // Drain progress as the neurons report it now, not as of the last pass: a drain's
            // loads can take that whole pass.
            let (fleet, observed) = (state.gateway.fleet(), state.gateway.observed());
            status.maintenance = plans::maintenance::maintenance(&fleet, &observed.topology, &status.plan);
            if let Some(cluster) = &admin.cluster {
                let view = cluster.borrow().as_ref().clone();
                status.conditions.push(crate::control::status::leader_condition(&view));
                let reachable = observed.topology.neurons.iter().filter(|n| n.reachable);
                let unfenced: Vec<String> = reachable
                    .filter(|n| observed.clients.get(&n.name).is_none_or(|c| !c.fences()))
                    .map(|n| n.name.clone())
                    .collect();
                status.conditions.push(crate::control::status::fencing_condition(&unfenced));
                status.cluster = Some(view);
            }
            axum::Json(status).into_response()
        }
        Err((status, message)) => error(status, message),
    }
}

/// The answer to `POST /admin/apply`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ApplyResponse {
    pub succeeded: bool,
    pub summary: String,
    /// `(action id, outcome text)` in plan order.
    pub outcomes: Vec<(String, String)>,
}

/// The plan file is read only once the key has been checked: a caller without the key has its
/// body left unread.
async fn apply(State(state): State<AdminState>, headers: HeaderMap, body: Body) -> Response {
    let admin = match authorised(&state, &headers, OperatorAccess::Admin) {
        Ok(admin) => admin.clone(),
        Err((status, message)) => return error(status, message),
    };
    let limit = state.gateway.limits.max_body_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return error(StatusCode::BAD_REQUEST, format!("the plan file is unreadable or over {limit} bytes"));
    };
    let file = match PlanFile::from_json(&String::from_utf8_lossy(&body)) {
        Ok(file) => file,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a plan file: {e}")),
    };
    // In a cluster only the leader applies, with its term; a follower says where it is.
    let authority = admin.authority.borrow().clone();
    if !authority.acts() {
        let leader = admin.cluster.as_ref().and_then(|view| view.borrow().leader.clone());
        let pointer = leader.as_ref().map_or_else(
            || "no replica leads at the moment; try again shortly".to_owned(),
            |l| format!("post the plan to the leader, {} at http://{}/admin/apply", l.replica, l.api),
        );
        let mut answer =
            error(StatusCode::CONFLICT, format!("this replica does not lead the cluster: {pointer}"));
        // `cortex apply --url` follows it to the leader.
        if let Some(value) = leader.and_then(|l| HeaderValue::try_from(format!("http://{}", l.api)).ok()) {
            answer.headers_mut().insert(LEADER_HEADER, value);
        }
        return answer;
    }
    let fleet = state.gateway.fleet();
    let observed = state.gateway.observed();
    let stale = file.staleness(&fleet.digest, &observed.topology);
    if !stale.is_empty() {
        return error(StatusCode::CONFLICT, format!("the saved plan is stale:\n  {}", stale.join("\n  ")));
    }
    let report = apply::apply(
        &file.plan,
        &observed.clients,
        admin.parallelism,
        admin.timeouts,
        authority.mandate().cloned(),
        Arc::new(|_| {}),
    )
    .await;
    state.gateway.poller.kick();
    let outcomes = report
        .outcomes
        .iter()
        .map(|(action, outcome)| {
            let text = match outcome {
                Outcome::Done { elapsed } => format!("done in {:.1}s", elapsed.as_secs_f64()),
                Outcome::Failed { error } => format!("failed: {error}"),
                Outcome::Skipped { because } => format!("skipped: {because}"),
            };
            (action.id.clone(), text)
        })
        .collect();
    axum::Json(ApplyResponse { succeeded: report.succeeded(), summary: report.summary(), outcomes })
        .into_response()
}

/// The answer to `POST /admin/reconcile`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ReconcileResponse {
    pub requested: bool,
    /// The trigger the pass is recorded under in the status's runs.
    pub trigger: String,
    pub message: String,
}

/// `POST /admin/reconcile`: ask for a reconcile pass now; it clears every backoff, as SIGHUP
/// does. Answers 202 at once: the pass runs after the one in progress, if any, and shows in
/// `GET /admin/status` under the trigger `admin_request`.
async fn reconcile(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let admin = match authorised(&state, &headers, OperatorAccess::Admin) {
        Ok(admin) => admin,
        Err((status, message)) => return error(status, message),
    };
    tracing::info!("admin API: a reconcile pass was requested");
    admin.reconciler.request();
    let body = ReconcileResponse {
        requested: true,
        trigger: "admin_request".into(),
        message: "a reconcile pass was requested; every backoff is cleared".into(),
    };
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// `GET /admin/usage?key=K&since=DAY`: the fleet keys' usage per UTC day from day `since`
/// (days since the epoch; default: the first of this month), and each key's limits and what it
/// used today and this month ([`crate::operator::usage::UsageReport`]).
async fn usage(
    State(state): State<AdminState>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<UsageQuery>,
) -> Response {
    if let Err((status, message)) = authorised(&state, &headers, OperatorAccess::ReadOnly) {
        return error(status, message);
    }
    let fleet = state.gateway.fleet();
    let usage = state.gateway.keys.usage().clone();
    let report = tokio::task::spawn_blocking(move || {
        crate::operator::usage::report(&fleet, &usage, query.key.as_deref(), query.since, now_unix_ms())
    })
    .await;
    match report {
        Ok(Ok(report)) => axum::Json(report).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /admin/requests?model=&key=&status=&limit=`: the recent requests, newest first.
async fn requests(
    State(state): State<AdminState>,
    headers: HeaderMap,
    axum::extract::Query(filter): axum::extract::Query<crate::gateway::core::timeline::Filter>,
) -> Response {
    match authorised(&state, &headers, OperatorAccess::ReadOnly) {
        Ok(_) => crate::operator::requests::list(&state.gateway.timelines, filter),
        Err((status, message)) => error(status, message),
    }
}

/// `GET /admin/requests/{id}`: one request's timeline.
async fn request(
    State(state): State<AdminState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match authorised(&state, &headers, OperatorAccess::ReadOnly) {
        Ok(_) => crate::operator::requests::one(&state.gateway.timelines, &id),
        Err((status, message)) => error(status, message),
    }
}

#[derive(Debug, serde::Deserialize)]
struct UsageQuery {
    key: Option<String>,
    /// Days since the epoch (UTC).
    since: Option<u32>,
}
