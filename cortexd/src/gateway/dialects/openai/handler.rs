//! The OpenAI adapter (Chat Completions, Completions, Embeddings) over the pipeline: always
//! native, only the model name, the output cap and the usage request are touched.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::gateway::core::error::{ApiError, Dialect};
use crate::gateway::core::forward::StreamEdit;
use crate::gateway::core::pipeline::{self, Checked, OutputCap, RouteInfo, Upstream};
use crate::gateway::core::state::AppState;
use crate::gateway::core::target::Target;

pub async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body, "/v1/chat/completions", "chat_completions").await
}

pub async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body, "/v1/completions", "completions").await
}

pub async fn embeddings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    openai(state, headers, body, "/v1/embeddings", "embeddings").await
}

async fn openai(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    path: &'static str,
    route: &'static str,
) -> Response {
    let info = RouteInfo { name: route, dialect: Dialect::OpenAi };
    pipeline::run(state, headers, body, info, move |state, target, checked| async move {
        forward_openai(state, target, checked, path).await
    })
    .await
}

/// The OpenAI adapter: always native (every engine speaks Chat Completions); only the model
/// name, the output cap and the usage request are touched.
async fn forward_openai(
    state: AppState,
    target: Target,
    checked: Checked,
    path: &'static str,
) -> Result<Response, ApiError> {
    let stream = checked.envelope.stream;
    // cortex always wants usage for its metrics; when the client did not ask for it, ask on its
    // behalf and remove that chunk again on the way back.
    let add_usage = stream
        && checked.route.name != "embeddings"
        && !checked.envelope.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let cap = match checked.route.name {
        "embeddings" => None,
        "completions" => {
            pipeline::output_cap(&state, &target.model).map(|cap| OutputCap::new(cap, &["max_tokens"]))
        }
        _ => pipeline::output_cap(&state, &target.model)
            .map(|cap| OutputCap::new(cap, &["max_tokens", "max_completion_tokens"])),
    };
    let body = rewrite(checked.body.clone(), &checked.model, &target.model, add_usage, cap)?;
    let edit = if add_usage { StreamEdit::StripUsageChunk } else { StreamEdit::None };
    pipeline::forward(&state, target, &checked, Upstream::post(path, body, stream, edit, true)).await
}

/// The body to send upstream: the client's own bytes, unless the model was named by an alias
/// (the engine knows the fleet id), usage must be requested or the output capped.
fn rewrite(
    body: Bytes,
    requested: &str,
    id: &str,
    add_usage: bool,
    cap: Option<OutputCap>,
) -> Result<Bytes, ApiError> {
    if requested == id && !add_usage && cap.is_none() {
        return Ok(body);
    }
    // Only usage to ask for, and no `stream_options` key at all: splice the field in after the
    // opening brace (a copy of the bytes) rather than parse and re-serialise the whole body,
    // which for a long conversation costs milliseconds of time to first token.
    if requested == id && cap.is_none() && !contains_bytes(&body, b"\"stream_options\"") {
        let open = body.iter().position(|b| !b.is_ascii_whitespace());
        if let Some(open) = open.filter(|&i| body[i] == b'{') {
            const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
            let mut spliced = Vec::with_capacity(body.len() + FIELD.len());
            spliced.extend_from_slice(&body[..=open]);
            spliced.extend_from_slice(FIELD);
            spliced.extend_from_slice(&body[open + 1..]);
            return Ok(Bytes::from(spliced));
        }
    }
    let mut value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::BadRequest("request body must be a JSON object".into()));
    };
    object.insert("model".into(), id.into());
    if add_usage {
        let options = object.entry("stream_options").or_insert_with(|| serde_json::json!({}));
        if options.is_null() {
            *options = serde_json::json!({});
        }
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".into(), true.into());
        }
    }
    if let Some(cap) = cap {
        cap.apply(object);
    }
    serde_json::to_vec(&value).map(Bytes::from).map_err(|e| ApiError::Internal(e.to_string()))
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(body: &str, requested: &str, id: &str, add_usage: bool) -> serde_json::Value {
        let bytes = rewrite(Bytes::from(body.to_owned()), requested, id, add_usage, None).expect("rewrite");
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    #[test]
    fn usage_is_requested_without_touching_the_rest() {
        let body = r#" {"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let value = rewritten(body, "m", "m", true);
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["messages"][0]["content"], "hi");
        // An explicit stream_options (here null) is rewritten through the parser instead.
        let value = rewritten(r#"{"model":"m","stream_options":null}"#, "m", "m", true);
        assert_eq!(value["stream_options"]["include_usage"], true);
        let value = rewritten(r#"{"model":"alias","stream":true}"#, "alias", "m", true);
        assert_eq!(
            (value["model"].as_str(), value["stream_options"]["include_usage"].as_bool()),
            (Some("m"), Some(true))
        );
        let untouched =
            rewrite(Bytes::from_static(b"{\"model\":\"m\"}"), "m", "m", false, None).expect("rewrite");
        assert_eq!(untouched, Bytes::from_static(b"{\"model\":\"m\"}"));
    }

    #[test]
    fn the_output_cap_clamps_every_limit_and_sets_one_when_none() {
        let cap = Some(OutputCap::new(100, &["max_tokens", "max_completion_tokens"]));
        let capped = |body: &str| {
            let bytes = rewrite(Bytes::from(body.to_owned()), "m", "m", false, cap).expect("rewrite");
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("valid JSON")
        };
        let value = capped(r#"{"model":"m","max_tokens":32000}"#);
        assert_eq!((value["max_tokens"].as_u64(), value.get("max_completion_tokens")), (Some(100), None));
        let value = capped(r#"{"model":"m","max_completion_tokens":50,"max_tokens":9000}"#);
        assert_eq!(
            (value["max_completion_tokens"].as_u64(), value["max_tokens"].as_u64()),
            (Some(50), Some(100))
        );
        let value = capped(r#"{"model":"m","max_tokens":null}"#);
        assert_eq!(value["max_tokens"].as_u64(), Some(100));
        let value = capped(r#"{"model":"m"}"#);
        assert_eq!(value["max_tokens"].as_u64(), Some(100));
    }
}
