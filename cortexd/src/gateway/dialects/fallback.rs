//! The API's answers outside its routes: `/health`, and the 404 and 405 every unknown path or
//! wrong method gets, in the OpenAI shape (SDKs read `error.message`).

use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};

use crate::gateway::core::error::{ApiError, Dialect};
use crate::gateway::core::pipeline;

pub async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Any path the API does not serve: a 404 in the OpenAI shape (SDKs read `error.message`).
pub async fn no_route(method: Method, uri: Uri) -> Response {
    let error = ApiError::NoRoute { method: method.to_string(), path: uri.path().to_owned() };
    pipeline::rejected(error, "unknown", Dialect::OpenAi)
}

/// A known path with the wrong method: a 405 in the OpenAI shape.
pub async fn wrong_method(method: Method, uri: Uri) -> Response {
    let error = ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() };
    pipeline::rejected(error, "unknown", Dialect::OpenAi)
}
