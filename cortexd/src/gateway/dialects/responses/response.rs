//! Chat Completions answer → Responses `response` object (non-streaming), and the pieces the
//! stream translator shares: the response skeleton echoed from the request, ids, output items
//! and usage.
//!
//! Output order: a `reasoning` item (from `reasoning_content`), a `message` item with one
//! `output_text` part, then one `function_call` item per tool call. A `length` finish is status
//! `incomplete` with `incomplete_details.reason = "max_output_tokens"` unless the fleet's cap (not
//! the client's limit) bound the answer; everything else is `completed`.

use serde_json::{Map, Value, json};

use crate::gateway::core::error::ApiError;
use crate::gateway::dialects::chat::types::{ChatCompletion, ChatUsage};
use crate::gateway::dialects::responses::request::ToolNames;

/// Makes the default of an echoed field.
type Default = fn() -> Value;

/// Request fields the `response` object echoes, with the API's defaults.
const ECHOED: &[(&str, Default)] = &[
    ("instructions", || Value::Null),
    ("max_output_tokens", || Value::Null),
    ("metadata", || json!({})),
    ("parallel_tool_calls", || json!(true)),
    ("previous_response_id", || Value::Null),
    ("temperature", || json!(1.0)),
    ("text", || json!({"format": {"type": "text"}})),
    ("tool_choice", || json!("auto")),
    ("tools", || json!([])),
    ("top_p", || json!(1.0)),
];

/// The `response` object before any output: id, model (the name the client asked for), the
/// echoed request fields, `store: false` (a translated response is never stored).
pub fn skeleton(request: &Value, id: &str, model: &str, created_at: u64) -> Map<String, Value> {
    let mut response = Map::new();
    response.insert("id".into(), id.into());
    response.insert("object".into(), "response".into());
    response.insert("created_at".into(), created_at.into());
    response.insert("status".into(), "in_progress".into());
    response.insert("background".into(), false.into());
    response.insert("error".into(), Value::Null);
    response.insert("incomplete_details".into(), Value::Null);
    response.insert("model".into(), model.into());
    response.insert("output".into(), json!([]));
    for (field, default) in ECHOED {
        let value = request.get(*field).filter(|v| !v.is_null()).cloned().unwrap_or_else(default);
        response.insert((*field).into(), value);
    }
    let effort = request.pointer("/reasoning/effort").cloned().unwrap_or(Value::Null);
    response.insert("reasoning".into(), json!({"effort": effort, "summary": null}));
    response.insert("service_tier".into(), "default".into());
    response.insert("store".into(), false.into());
    response.insert("truncation".into(), "disabled".into());
    response.insert("usage".into(), Value::Null);
    response.insert("user".into(), Value::Null);
    response
}

/// The suffix of every id of one response: the upstream completion id without `chatcmpl-`,
/// restricted to `[A-Za-z0-9_-]`; `fallback` when the engine sent none.
pub fn id_suffix(upstream_id: Option<&str>, fallback: &str) -> String {
    let upstream = upstream_id.unwrap_or("");
    let suffix = upstream.strip_prefix("chatcmpl-").unwrap_or(upstream);
    let suffix: String =
        suffix.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    if suffix.is_empty() { fallback.to_owned() } else { suffix }
}

/// `usage` in the Responses shape.
pub(crate) fn usage_json(usage: Option<&ChatUsage>, counted_output: u64) -> Value {
    let input = usage.map_or(0, |u| u.prompt_tokens);
    let cached = usage.map_or(0, ChatUsage::cached_tokens);
    let output = usage.map_or(counted_output, |u| u.completion_tokens);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

/// A completed `message` item.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    })
}

pub fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// A `reasoning` item holding the engine's reasoning text.
pub fn reasoning_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    })
}

/// A `function_call` item; a flattened namespace name is split back into `namespace` + `name`.
pub fn function_call_item(
    id: &str,
    call_id: &str,
    called: &str,
    arguments: &str,
    status: &str,
    names: &ToolNames,
) -> Value {
    let (namespace, name) = names.resolve(called);
    let mut item = json!({
        "id": id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    });
    if let Some(namespace) = namespace {
        item["namespace"] = namespace.into();
    }
    item
}

/// Sets the final status (and `incomplete_details` for a `length` finish) on a response.
pub fn finish(response: &mut Map<String, Value>, finish_reason: Option<&str>) {
    if finish_reason == Some("length") {
        response.insert("status".into(), "incomplete".into());
        response.insert("incomplete_details".into(), json!({"reason": "max_output_tokens"}));
    } else {
        response.insert("status".into(), "completed".into());
    }
}

/// Translates a non-streaming Chat Completions answer into a `response` object.
pub fn chat_to_response(
    chat: &Value,
    skeleton_of: impl FnOnce(&str) -> Map<String, Value>,
    names: &ToolNames,
    cap_binds: bool,
) -> Result<Value, ApiError> {
    let (completion, choice) = ChatCompletion::read(chat)?;
    let suffix = id_suffix(completion.id.as_deref(), "cortex");
    let mut response = skeleton_of(&format!("resp_{suffix}"));
    let mut output = Vec::new();
    if let Some(message) = &choice.message {
        let reasoning = message.reasoning_content.as_deref().or(message.reasoning.as_deref());
        if let Some(text) = reasoning.filter(|text| !text.is_empty()) {
            output.push(reasoning_item(&format!("rs_{suffix}"), text, "completed"));
        }
        let text = match &message.content {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()
            }
            _ => String::new(),
        };
        if !text.is_empty() {
            output.push(message_item(&format!("msg_{suffix}"), &text, "completed"));
        }
        for (position, call) in message.tool_calls.iter().flatten().enumerate() {
            let call_id = match call.id.as_deref() {
                Some(id) if !id.is_empty() => id.to_owned(),
                _ => format!("call_{suffix}_{position}"),
            };
            let function = call.function.as_ref();
            let name = function.and_then(|f| f.name.as_deref()).unwrap_or("");
            let arguments = match function.and_then(|f| f.arguments.as_ref()) {
                None | Some(Value::Null) => "{}".to_owned(),
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
            };
            let id = format!("fc_{suffix}_{position}");
            output.push(function_call_item(&id, &call_id, name, &arguments, "completed", names));
        }
    }
    let reason = choice.finish_reason.as_deref().filter(|reason| !(cap_binds && *reason == "length"));
    finish(&mut response, reason);
    response.insert("output".into(), Value::Array(output));
    response.insert("usage".into(), usage_json(completion.usage.as_ref(), 0));
    Ok(Value::Object(response))
}
