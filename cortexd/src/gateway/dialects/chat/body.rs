//! The one editor of a client's JSON body before it is forwarded: the model named by its fleet
//! id (the engine knows no alias), the fleet's output cap, and usage asked for on a Chat
//! Completions stream. The client's own bytes go through untouched when nothing applies; the
//! body of a translated request is finished the same way ([`chat_body`]).

use bytes::Bytes;
use serde_json::Value;

use crate::gateway::core::error::ApiError;
use crate::gateway::core::pipeline::OutputCap;

/// The body to send upstream: the client's own bytes, unless the model was named by an alias
/// (the engine knows the fleet id), the output must be capped or (a Chat Completions stream)
/// usage requested.
pub fn edit_body(
    body: &Bytes,
    requested: &str,
    id: &str,
    cap: Option<OutputCap>,
    add_usage: bool,
) -> Result<Bytes, ApiError> {
    if requested == id && !add_usage && cap.is_none() {
        return Ok(body.clone());
    }
    // Only usage to ask for, and no `stream_options` key at all: splice the field in after the
    // opening brace (a copy of the bytes) rather than parse and re-serialise the whole body,
    // which for a long conversation costs milliseconds of time to first token.
    if requested == id && cap.is_none() && !contains_bytes(body, b"\"stream_options\"") {
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
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
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

/// The body of a translated Chat Completions request: `chat` for the model's fleet id, its
/// `max_tokens` capped at the fleet's `cap`.
pub fn chat_body(mut chat: Value, id: &str, cap: Option<u64>) -> Result<Bytes, ApiError> {
    chat["model"] = id.into();
    if let (Some(cap), Some(object)) = (cap, chat.as_object_mut()) {
        OutputCap::new(cap, &["max_tokens"]).apply(object);
    }
    serde_json::to_vec(&chat).map(Bytes::from).map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(body: &str, requested: &str, id: &str, add_usage: bool) -> serde_json::Value {
        let bytes =
            edit_body(&Bytes::from(body.to_owned()), requested, id, None, add_usage).expect("rewrite");
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
            edit_body(&Bytes::from_static(b"{\"model\":\"m\"}"), "m", "m", None, false).expect("rewrite");
        assert_eq!(untouched, Bytes::from_static(b"{\"model\":\"m\"}"));
    }

    #[test]
    fn the_output_cap_clamps_every_limit_and_sets_one_when_none() {
        let cap = Some(OutputCap::new(100, &["max_tokens", "max_completion_tokens"]));
        let capped = |body: &str| {
            let bytes = edit_body(&Bytes::from(body.to_owned()), "m", "m", cap, false).expect("rewrite");
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
