//! The recent requests' timelines as the operator reads them: `GET /admin/requests` (and
//! `/{id}`), the fleet page's requests view and `cortex requests` share these documents.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::gateway::core::timeline::{Filter, RequestId, Timeline, Timelines};

/// The most timelines one listing returns.
const MAX_LIMIT: usize = 1_000;

/// `{"capacity": …, "requests": [newest first]}` for `filter`.
pub fn list(timelines: &Timelines, mut filter: Filter) -> Response {
    filter.limit = filter.limit.min(MAX_LIMIT);
    let kept = timelines.list(&filter);
    let requests: Vec<&Timeline> = kept.iter().map(|timeline| &**timeline).collect();
    let body = serde_json::json!({"capacity": timelines.capacity(), "requests": requests});
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// One request's timeline, or 404.
pub fn one(timelines: &Timelines, id: &str) -> Response {
    let found = RequestId::parse(id).and_then(|id| timelines.get(id));
    match found {
        Some(timeline) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(&*timeline)).into_response(),
        None => {
            let message = format!(
                "no request {id:?} is kept (the daemon keeps the last {} requests' timelines)",
                timelines.capacity()
            );
            (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"error": {"message": message}})))
                .into_response()
        }
    }
}
