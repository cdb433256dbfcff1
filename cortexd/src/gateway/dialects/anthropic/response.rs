//! OpenAI Chat Completions response → Anthropic Messages response (non-streaming).
//!
//! Block order: thinking (from `reasoning_content`), text, then one `tool_use` per tool call.
//! Tool arguments that are not a JSON object (a model that wrote broken JSON) are kept as
//! `{"_raw": "<arguments>"}` rather than failing the whole response: the client validates the
//! input against its schema and tells the model, which can then retry; a 502 would lose the turn.

use serde_json::{Value, json};

use crate::gateway::core::error::ApiError;
use crate::gateway::dialects::chat::types::{ChatCompletion, ChatUsage, ToolCall};

/// Translates a non-streaming Chat Completions response into an Anthropic message whose
/// `model` is `requested_model` (the name the client asked for, not the engine's file path).
pub fn chat_to_message(resp: &Value, requested_model: &str) -> Result<Value, ApiError> {
    let (completion, choice) = ChatCompletion::read(resp)?;
    let id = message_id(completion.id.as_deref());

    let mut content = Vec::new();
    if let Some(message) = &choice.message {
        let reasoning = message.reasoning_content.as_deref().or(message.reasoning.as_deref());
        if let Some(thinking) = reasoning.filter(|text| !text.is_empty()) {
            content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
        }
        let text = message.content.as_ref().map(content_text).unwrap_or_default();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for (position, call) in message.tool_calls.iter().flatten().enumerate() {
            content.push(tool_use_block(call, &id, position as u64));
        }
    }
    let has_tool_use = content.iter().any(|block| block["type"] == "tool_use");
    let (stop, stop_sequence) =
        stop_reason(choice.finish_reason.as_deref(), choice.stop_reason.as_ref(), has_tool_use);
    let usage = completion.usage.unwrap_or_default();

    Ok(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": requested_model,
        "stop_reason": stop,
        "stop_sequence": stop_sequence,
        "usage": usage_json(InputUsage::from_usage(&usage), usage.completion_tokens),
    }))
}

/// The text of a message `content`: a string, or the concatenated text of an array of parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect()
        }
        _ => String::new(),
    }
}

fn tool_use_block(call: &ToolCall<'_>, message_id: &str, position: u64) -> Value {
    let id = match call.id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => fallback_tool_id(message_id, position),
    };
    let function = call.function.as_ref();
    let name = function.and_then(|function| function.name.as_deref()).unwrap_or("");
    let input = match function.and_then(|function| function.arguments.as_ref()) {
        None | Some(Value::Null) => json!({}),
        Some(object @ Value::Object(_)) => object.clone(),
        Some(Value::String(text)) if text.trim().is_empty() => json!({}),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(object @ Value::Object(_)) => object,
            _ => json!({"_raw": text}),
        },
        Some(other) => json!({"_raw": other.to_string()}),
    };
    json!({"type": "tool_use", "id": id, "name": name, "input": input})
}

/// Anthropic input-side usage. Anthropic's `input_tokens` excludes cache reads (the total
/// prompt is input + cache_creation + cache_read), while OpenAI's `prompt_tokens` includes
/// `cached_tokens`: subtract, as llama.cpp's own `/v1/messages` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct InputUsage {
    pub input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl InputUsage {
    pub fn from_prompt(prompt_tokens: u64, cached_tokens: u64) -> Self {
        InputUsage {
            input_tokens: prompt_tokens.saturating_sub(cached_tokens),
            cache_read_input_tokens: cached_tokens,
        }
    }

    pub fn from_usage(usage: &ChatUsage) -> Self {
        Self::from_prompt(usage.prompt_tokens, usage.cached_tokens())
    }
}

/// Anthropic `stop_reason` and `stop_sequence` for an OpenAI `finish_reason`.
///
/// `stop` is `end_turn` unless the engine names the stop string that matched (vLLM's
/// `stop_reason`; llama.cpp's OpenAI endpoint does not report it), then `stop_sequence`.
/// A message with tool calls is `tool_use` whatever the engine said, since clients run tools
/// on that stop reason. A missing or unknown reason is `end_turn`.
pub(crate) fn stop_reason(
    finish_reason: Option<&str>,
    engine_stop_string: Option<&Value>,
    has_tool_use: bool,
) -> (&'static str, Option<String>) {
    match finish_reason {
        Some("length") => ("max_tokens", None),
        Some("content_filter") => ("refusal", None),
        _ if has_tool_use => ("tool_use", None),
        Some("tool_calls" | "function_call") => ("tool_use", None),
        _ => match engine_stop_string.and_then(Value::as_str) {
            Some(matched) => ("stop_sequence", Some(matched.to_owned())),
            None => ("end_turn", None),
        },
    }
}

/// The Anthropic message id for an upstream completion id: `msg_` and the upstream id without
/// its `chatcmpl-` prefix, so logs on both sides can be matched. Deterministic by design.
pub(crate) fn message_id(upstream_id: Option<&str>) -> String {
    let upstream = upstream_id.unwrap_or("");
    let suffix = upstream.strip_prefix("chatcmpl-").unwrap_or(upstream);
    let suffix: String =
        suffix.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    if suffix.is_empty() { "msg_cortex".to_owned() } else { format!("msg_{suffix}") }
}

/// The id of a tool call the engine sent without one (the client must be able to answer it).
pub(crate) fn fallback_tool_id(message_id: &str, position: u64) -> String {
    let suffix = message_id.strip_prefix("msg_").unwrap_or(message_id);
    format!("toolu_{suffix}_{position}")
}

/// A usage object in the shape the Anthropic API returns (both cache fields present).
pub(crate) fn usage_json(input: InputUsage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": input.cache_read_input_tokens,
        "output_tokens": output_tokens,
    })
}
