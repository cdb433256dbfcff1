//! The inference API (spec §7): one OpenAI- and Anthropic-compatible front over the fleet.
//!
//! `app(state)` builds the router without binding, so tests drive it in-process; `serve` runs
//! it on an already-bound listener until the shutdown token fires.

pub mod admin;
pub mod admission;
pub mod anthropic;
pub mod auth;
pub mod error;
pub mod http1;
pub mod messages;
pub mod models;
pub mod overflow;
pub mod pipeline;
pub mod proxy;
pub mod request_metrics;
pub mod responses;
pub mod route;
pub mod routes;
pub mod schedule;
pub mod sse;
pub mod traffic;
pub mod ui;
pub mod upstream;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use plans::fleet::Fleet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::control::backoff::BackoffPolicy;
use crate::control::poller::{Observed, PollerHandle};
use crate::gateway::auth::ApiKeys;
use crate::gateway::responses::ResponseIndex;

/// Everything a handler needs. Cheap to clone; each piece has one writer elsewhere.
#[derive(Clone)]
pub struct AppState {
    /// The desired state in force (last good fleet); written by the fleet loader.
    pub fleet: watch::Receiver<Arc<Fleet>>,
    /// The observed state; written by the poller only.
    pub poller: PollerHandle,
    /// Accepted client keys (read-only after start).
    pub keys: Arc<ApiKeys>,
    pub limits: Arc<GatewayConfig>,
    /// The swap scheduler: per-model queues and the loads they wait for.
    pub schedule: Arc<route::Schedule>,
    /// The admin API, when an admin key is configured.
    pub admin: Option<admin::Admin>,
    /// Which replica produced each recent Responses id (bounded), for `previous_response_id`
    /// and `GET /v1/responses/{id}`.
    pub response_index: Arc<ResponseIndex>,
    /// Inference requests in flight through this gateway, bounded by `max_in_flight`.
    pub admission: Arc<admission::Admission>,
    /// The pooled client that forwards inference requests to the neurons.
    pub inference: upstream::InferenceClient,
}

impl AppState {
    pub fn new(
        fleet: watch::Receiver<Arc<Fleet>>,
        poller: PollerHandle,
        keys: ApiKeys,
        limits: GatewayConfig,
    ) -> Self {
        let mode = limits.swap_schedule;
        let upstream =
            upstream::Timeouts { head: limits.upstream_head_timeout, read: limits.upstream_read_timeout };
        AppState {
            fleet,
            poller,
            keys: Arc::new(keys),
            admission: Arc::new(admission::Admission::new(limits.max_in_flight, limits.overload_delay)),
            limits: Arc::new(limits),
            schedule: Arc::new(route::Schedule::new(mode, BackoffPolicy::default())),
            admin: None,
            response_index: Arc::new(ResponseIndex::default()),
            inference: upstream::InferenceClient::new(upstream),
        }
    }

    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.borrow().clone()
    }

    pub fn observed(&self) -> Arc<Observed> {
        self.poller.observed.borrow().clone()
    }
}

/// The inference API's routes. The OpenAI and Anthropic routes answer under `/v1` and also
/// without it, as llama-server and other gateways do: a client configured with a base URL that
/// lacks `/v1` (Codex's `base_url`, an SDK's `base_url`) still reaches them.
pub fn app(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    api_routes(api_routes(Router::new(), "/v1"), "")
        .route("/health", get(routes::health))
        .route("/admin/status", get(admin::status))
        .route("/admin/apply", post(admin::apply))
        .route("/admin/reconcile", post(admin::reconcile).fallback(routes::wrong_method))
        .fallback(routes::no_route)
        // Bodies are read by the handlers themselves so that a too-large body is a 413 in
        // the route's dialect; axum's own limit is set just above ours as a backstop.
        .layer(axum::extract::DefaultBodyLimit::max(body_limit.saturating_add(1)))
        .with_state(state)
}

/// The API's routes under `prefix`, each path registered in full rather than through
/// `Router::nest`: a nested router rebuilds every request's URI without the prefix and adds a
/// routing level per request (docs/benchmarks.md, "The request path").
fn api_routes(router: Router<AppState>, prefix: &str) -> Router<AppState> {
    let at = |path: &str| format!("{prefix}{path}");
    router
        .route(&at("/chat/completions"), post(routes::chat_completions).fallback(routes::wrong_method))
        .route(&at("/completions"), post(routes::completions).fallback(routes::wrong_method))
        .route(&at("/embeddings"), post(routes::embeddings).fallback(routes::wrong_method))
        .route(&at("/messages"), post(routes::messages).fallback(routes::wrong_method))
        .route(&at("/messages/count_tokens"), post(routes::count_tokens).fallback(routes::wrong_method))
        .route(&at("/responses"), post(responses::create).fallback(routes::wrong_method))
        .route(&at("/responses/input_tokens"), post(responses::input_tokens).fallback(routes::wrong_method))
        .route(&at("/responses/{id}"), get(responses::retrieve).fallback(routes::wrong_method))
        .route(&at("/responses/{id}/cancel"), post(responses::cancel).fallback(routes::wrong_method))
        .route(&at("/models"), get(models::list).fallback(routes::wrong_method))
        .route(&at("/models/{*id}"), get(models::retrieve).fallback(routes::wrong_method))
}

/// Serve the inference API on `listener`, under the listener's `limits`, until `shutdown`
/// fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: cortex_listener::Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    cortex_listener::serve(listener, app(state), limits, shutdown).await
}
