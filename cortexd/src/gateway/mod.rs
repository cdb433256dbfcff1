//! The inference API (spec §7): one OpenAI- and Anthropic-compatible front over the fleet.
//!
//! `app(state)` builds the router without binding, so tests drive it in-process; `serve` runs
//! it on an already-bound listener until the shutdown token fires.

pub(crate) mod core;
pub(crate) mod dialects;
pub(crate) mod transport;

use axum::Router;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

pub use crate::gateway::core::state::AppState;
use crate::gateway::dialects::fallback::{health, no_route, wrong_method};
use crate::gateway::dialects::{anthropic, openai, responses};

/// The inference API's routes. The OpenAI and Anthropic routes answer under `/v1` and also
/// without it, as llama-server and other gateways do: a client configured with a base URL that
/// lacks `/v1` (Codex's `base_url`, an SDK's `base_url`) still reaches them.
pub fn app(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    api_routes(api_routes(Router::new(), "/v1"), "")
        .route("/health", get(health))
        .fallback(no_route)
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
        .route(&at("/chat/completions"), post(openai::chat_completions).fallback(wrong_method))
        .route(&at("/completions"), post(openai::completions).fallback(wrong_method))
        .route(&at("/embeddings"), post(openai::embeddings).fallback(wrong_method))
        .route(&at("/messages"), post(anthropic::messages).fallback(wrong_method))
        .route(&at("/messages/count_tokens"), post(anthropic::count_tokens).fallback(wrong_method))
        .route(&at("/responses"), post(responses::create).fallback(wrong_method))
        .route(&at("/responses/input_tokens"), post(responses::input_tokens).fallback(wrong_method))
        .route(&at("/responses/{id}"), get(responses::retrieve).fallback(wrong_method))
        .route(&at("/responses/{id}/cancel"), post(responses::cancel).fallback(wrong_method))
        .route(&at("/models"), get(openai::models::list).fallback(wrong_method))
        .route(&at("/models/{*id}"), get(openai::models::retrieve).fallback(wrong_method))
}

/// Serve `app` (the inference API's router, with whatever the daemon merged into it) on
/// `listener`, under the listener's `limits`, until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: cortex_listener::Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    cortex_listener::serve(listener, app, limits, shutdown).await
}
