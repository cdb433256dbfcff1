//! The inference routes: parse only the request's `model`, forward the original bytes to the
//! engine serving it, and stream the answer back chunk by chunk while the request counts as in
//! flight (the guard lives in the response body stream, so it ends when the body ends or is
//! dropped). For an engine that knows the model by another name (mistral.rs), the request's
//! `model` is replaced by that name: the only case where the request body is re-serialised.
//! A request without a body (`GET /v1/responses/{id}`) names its model in the `x-cortex-model`
//! header instead; the query string goes to the engine as sent.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use plans::wire::MODEL_HEADER;

use crate::error::ApiError;
use crate::state::Neuron;

/// Request headers an engine needs; everything else (the neuron's token above all) stays here.
const FORWARDED_REQUEST_HEADERS: &[header::HeaderName] = &[header::CONTENT_TYPE, header::ACCEPT];
const FORWARDED_ANTHROPIC_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta"];

#[derive(serde::Deserialize)]
struct Envelope {
    model: String,
}

pub async fn forward(
    State(neuron): State<Neuron>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match forward_inner(&neuron, method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn forward_inner(
    neuron: &Neuron,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let named = headers.get(MODEL_HEADER).and_then(|value| value.to_str().ok());
    let model = match named {
        Some(model) if body.is_empty() => model.to_owned(),
        _ => {
            let envelope: Envelope = serde_json::from_slice(&body).map_err(|err| {
                ApiError::BadRequest(format!("the body must be JSON with a \"model\" string: {err}"))
            })?;
            envelope.model
        }
    };
    let route = neuron.route(&model)?;
    let (base_url, guard) = (route.base_url, route.guard);
    let body = match route.served_model {
        Some(served) if served != model && !body.is_empty() => with_model(&body, &served)?,
        _ => body,
    };
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut request = neuron.shared.http.request(method, format!("{base_url}{path_and_query}")).body(body);
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    for name in FORWARDED_ANTHROPIC_HEADERS {
        if let Some(value) = headers.get(*name) {
            request = request.header(*name, value);
        }
    }
    let upstream = request.send().await.map_err(|err| ApiError::Upstream(err.to_string()))?;
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = upstream.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let stream = upstream.bytes_stream().map(move |chunk| {
        // The guard moves with the stream: the request stops counting when the body is done.
        let _in_flight = &guard;
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    if status.is_success() {
        response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    }
    Ok(response)
}

/// `body` with its `model` set to `served`.
fn with_model(body: &Bytes, served: &str) -> Result<Bytes, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::BadRequest(format!("the body must be JSON: {err}")))?;
    value["model"] = served.into();
    serde_json::to_vec(&value).map(Bytes::from).map_err(|err| ApiError::BadRequest(err.to_string()))
}
