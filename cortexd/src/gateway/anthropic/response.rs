//! OpenAI Chat Completions response → Anthropic Messages response (non-streaming).
//!
//! Block order: thinking (from `reasoning_content`), text, then one `tool_use` per tool call.
//! Tool arguments that are not a JSON object (a model that wrote broken JSON) are kept as
//! `{"_raw": "<arguments>"}` rather than failing the whole response: the client validates the
//! input against its schema and tells the model, which can then retry; a 502 would lose the turn.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::gateway::anthropic::TranslateError;
use crate::gateway::anthropic::openai::{
    ChatCompletion, InputUsage, ToolCall, fallback_tool_id, message_id, stop_reason, upstream_error_message,
    usage_json,
};

/// Translates a non-streaming Chat Completions response into an Anthropic message whose
/// `model` is `requested_model` (the name the client asked for, not the engine's file path).
pub fn chat_to_message(resp: &Value, requested_model: &str) -> Result<Value, TranslateError> {
    let completion = ChatCompletion::deserialize(resp).map_err(|error| {
        TranslateError::Upstream(format!("malformed chat completion from the engine: {error}"))
    })?;
    if let Some(error) = &completion.error {
        return Err(TranslateError::Upstream(upstream_error_message(error)));
    }
    let choice =
        completion.choices.as_ref().and_then(|choices| choices.first()).ok_or_else(|| {
            TranslateError::Upstream("chat completion from the engine has no choices".into())
        })?;
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
