//! Anthropic Messages request → OpenAI Chat Completions request, with the validation that makes a bad request a 400.
//!
//! Decisions, beyond the mapping table in the engine reference:
//! - `system` text blocks are joined with `\n` into one system message (chat templates expect a
//!   string there); `cache_control` and `citations` are dropped everywhere (no engine caches by hint).
//! - A user turn with `tool_result` blocks becomes the `tool` messages first, then one user
//!   message with the turn's other blocks: Chat Completions needs tool messages right after the
//!   assistant's `tool_calls`. A tool result's text blocks are joined with `\n`; its images move
//!   into that user message (tool messages carry text only). `is_error: true` prefixes the content
//!   with `Error: ` since OpenAI has no such flag and the model should still know.
//! - Content that is a single text block becomes a plain string, anything else an array of parts.
//! - Assistant `thinking`/`redacted_thinking` blocks are dropped: their signatures mean nothing to
//!   an engine and chat templates strip earlier reasoning anyway.
//! - `thinking: {type: enabled|adaptive}` → `chat_template_kwargs: {enable_thinking: true}`,
//!   `disabled` → `false` (understood by llama.cpp and vLLM templates that can think; ignored by
//!   the others). The budget has no per-request equivalent and is dropped. Reasoning comes back in
//!   `reasoning_content`, llama.cpp's default `reasoning_format`, so nothing else is set.
//! - `role: "system"` messages inside `messages` (Claude Code sends one after the first user
//!   turn) are folded, in order, into the one leading system message after the top-level
//!   `system`: chat templates accept a system message only first.
//! - `output_config.effort` → `reasoning_effort` (`low`/`medium`/`high`; `xhigh` and `max` →
//!   `high`), which engines with a reasoning-effort knob read and the others ignore.
//! - Server tools (any `type` other than `custom`, e.g. `web_search_20250305`) are dropped from
//!   what the engine sees: no local engine runs them, and the model can still use the client
//!   tools. `defer_loading` and `cache_control` on tools are dropped with them.
//! - Content blocks of types the engine has no equivalent for (`document`, `search_result`,
//!   `server_tool_use`, `web_search_tool_result`, `container_upload`, …) are dropped, not refused.
//! - `metadata`, `context_management`, `service_tier` and fields unknown here (betas' extras)
//!   are dropped, not refused, so newer clients keep working; malformed known fields are refused.

use serde_json::{Map, Value, json};

use crate::gateway::core::error::ApiError;

type Result<T> = std::result::Result<T, ApiError>;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// Translates an Anthropic Messages request body into a Chat Completions request body.
/// Errors carry messages for a 400 `invalid_request_error`, prefixed with the offending path.
pub fn request_to_chat(body: &Value) -> Result<Value> {
    let request = body.as_object().ok_or_else(|| invalid("request body must be a JSON object"))?;
    let mut chat = Map::new();

    let model = request.get("model").ok_or_else(|| invalid("model: field required"))?;
    if !model.is_string() {
        return Err(invalid("model: must be a string"));
    }
    chat.insert("model".into(), model.clone());

    match request.get("max_tokens") {
        None => return Err(invalid("max_tokens: field required")),
        Some(max_tokens) if max_tokens.as_u64().is_some_and(|n| n >= 1) => {
            chat.insert("max_tokens".into(), max_tokens.clone());
        }
        Some(_) => return Err(invalid("max_tokens: must be an integer of at least 1")),
    }

    let turns = match request.get("messages") {
        None => return Err(invalid("messages: field required")),
        Some(Value::Array(turns)) => turns,
        Some(_) => return Err(invalid("messages: must be an array")),
    };
    if turns.is_empty() {
        return Err(invalid("messages: at least one message is required"));
    }
    let mut system = Vec::new();
    if let Some(top) = request.get("system") {
        system.push(system_text(top, "system")?);
    }
    let mut messages = Vec::new();
    for (position, turn) in turns.iter().enumerate() {
        let path = format!("messages.{position}");
        if turn.get("role").and_then(Value::as_str) == Some("system") {
            let content =
                turn.get("content").ok_or_else(|| invalid(format!("{path}.content: field required")))?;
            system.push(system_text(content, &format!("{path}.content"))?);
        } else {
            translate_turn(&mut messages, &path, turn)?;
        }
    }
    system.retain(|text| !text.is_empty());
    if !system.is_empty() {
        messages.insert(0, json!({"role": "system", "content": system.join("\n\n")}));
    }
    chat.insert("messages".into(), Value::Array(messages));

    if let Some(stop) = request.get("stop_sequences") {
        let sequences = stop.as_array().filter(|all| all.iter().all(Value::is_string));
        let sequences = sequences.ok_or_else(|| invalid("stop_sequences: must be an array of strings"))?;
        if !sequences.is_empty() {
            chat.insert("stop".into(), stop.clone());
        }
    }
    for name in ["temperature", "top_p", "top_k"] {
        if let Some(value) = request.get(name) {
            if !value.is_number() {
                return Err(invalid(format!("{name}: must be a number")));
            }
            chat.insert(name.into(), value.clone());
        }
    }

    if let Some(tools) = request.get("tools") {
        let tools = translate_tools(tools)?;
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
            if let Some(choice) = request.get("tool_choice") {
                translate_tool_choice(&mut chat, choice)?;
            }
        }
    }

    if let Some(thinking) = request.get("thinking") {
        let enable = match thinking.get("type").and_then(Value::as_str) {
            Some("enabled" | "adaptive") => true,
            Some("disabled") => false,
            _ => return Err(invalid(r#"thinking.type: must be "enabled", "adaptive" or "disabled""#)),
        };
        chat.insert("chat_template_kwargs".into(), json!({"enable_thinking": enable}));
    }
    if let Some(effort) = body.pointer("/output_config/effort") {
        let mapped = match effort.as_str() {
            Some(level @ ("low" | "medium" | "high")) => level,
            Some("xhigh" | "max") => "high",
            _ => {
                return Err(invalid(
                    r#"output_config.effort: must be "low", "medium", "high", "xhigh" or "max""#,
                ));
            }
        };
        chat.insert("reasoning_effort".into(), mapped.into());
    }

    match request.get("stream") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            chat.insert("stream".into(), Value::Bool(true));
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(_) => return Err(invalid("stream: must be a boolean")),
    }
    Ok(Value::Object(chat))
}

/// The text of a top-level `system` or of a system message's `content` (at `path`).
fn system_text(system: &Value, path: &str) -> Result<String> {
    match system {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (position, block) in blocks.iter().enumerate() {
                match (block_type(block), block.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => texts.push(text),
                    _ => return Err(invalid(format!("{path}.{position}: must be a text block"))),
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(invalid(format!("{path}: must be a string or an array of text blocks"))),
    }
}

fn block_type(block: &Value) -> Option<&str> {
    block.get("type").and_then(Value::as_str)
}

fn translate_turn(messages: &mut Vec<Value>, path: &str, turn: &Value) -> Result<()> {
    let role = turn.get("role").and_then(Value::as_str);
    let content = turn.get("content").ok_or_else(|| invalid(format!("{path}.content: field required")))?;
    let blocks: &[Value] = match content {
        Value::String(text) => {
            return match role {
                Some(role @ ("user" | "assistant")) => {
                    messages.push(json!({"role": role, "content": text}));
                    Ok(())
                }
                _ => Err(bad_role(path)),
            };
        }
        Value::Array(blocks) => blocks,
        _ => return Err(invalid(format!("{path}.content: must be a string or an array of content blocks"))),
    };
    match role {
        Some("user") => translate_user_blocks(messages, path, blocks),
        Some("assistant") => translate_assistant_blocks(messages, path, blocks),
        _ => Err(bad_role(path)),
    }
}

fn bad_role(path: &str) -> ApiError {
    invalid(format!(r#"{path}.role: must be "user", "assistant" or "system""#))
}

fn translate_user_blocks(messages: &mut Vec<Value>, path: &str, blocks: &[Value]) -> Result<()> {
    let mut parts = Vec::new();
    for (position, block) in blocks.iter().enumerate() {
        let block_path = format!("{path}.content.{position}");
        match block_type(block) {
            Some("text") => parts.push(text_part(&block_path, block)?),
            Some("image") => parts.push(image_part(&block_path, block)?),
            Some("tool_result") => {
                let tool_message = tool_message(&block_path, block, &mut parts)?;
                messages.push(tool_message);
            }
            other => unsupported_block(&block_path, other, "user")?,
        }
    }
    if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": collapse(parts)}));
    }
    Ok(())
}

fn translate_assistant_blocks(messages: &mut Vec<Value>, path: &str, blocks: &[Value]) -> Result<()> {
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for (position, block) in blocks.iter().enumerate() {
        let block_path = format!("{path}.content.{position}");
        match block_type(block) {
            Some("text") => parts.push(text_part(&block_path, block)?),
            Some("thinking" | "redacted_thinking") => {}
            Some("tool_use") => tool_calls.push(tool_call(&block_path, block)?),
            other => unsupported_block(&block_path, other, "assistant")?,
        }
    }
    let content = if parts.is_empty() {
        // Chat Completions allows null content next to tool calls; a turn that only held
        // thinking keeps an empty message so that roles still alternate.
        if tool_calls.is_empty() { json!("") } else { Value::Null }
    } else {
        collapse(parts)
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    messages.push(message);
    Ok(())
}

/// A block the translation has no rule for: dropped (the real API accepts more block types
/// than any engine understands), unless it has no type at all.
fn unsupported_block(path: &str, block_type: Option<&str>, role: &str) -> Result<()> {
    match block_type {
        Some(name) => {
            tracing::debug!(%path, block = %name, %role, "content block dropped: no chat equivalent");
            Ok(())
        }
        None => Err(invalid(format!("{path}.type: field required"))),
    }
}

/// One text part, or the string itself when the content is a single text part.
fn collapse(mut parts: Vec<Value>) -> Value {
    if parts.len() == 1 && parts[0]["type"] == "text" {
        return parts.swap_remove(0)["text"].take();
    }
    Value::Array(parts)
}

fn required_str<'a>(path: &str, block: &'a Value, field: &str) -> Result<&'a str> {
    block
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{path}.{field}: must be a string")))
}

fn text_part(path: &str, block: &Value) -> Result<Value> {
    Ok(json!({"type": "text", "text": required_str(path, block, "text")?}))
}

fn image_part(path: &str, block: &Value) -> Result<Value> {
    let source = block.get("source").ok_or_else(|| invalid(format!("{path}.source: field required")))?;
    let source_path = format!("{path}.source");
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media_type = required_str(&source_path, source, "media_type")?;
            let data = required_str(&source_path, source, "data")?;
            format!("data:{media_type};base64,{data}")
        }
        Some("url") => required_str(&source_path, source, "url")?.to_owned(),
        _ => return Err(invalid(format!(r#"{source_path}.type: must be "base64" or "url""#))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// The `tool` message for a `tool_result` block; its images go to `user_parts`.
fn tool_message(path: &str, block: &Value, user_parts: &mut Vec<Value>) -> Result<Value> {
    let tool_use_id = required_str(path, block, "tool_use_id")?;
    let mut text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (position, inner) in blocks.iter().enumerate() {
                let inner_path = format!("{path}.content.{position}");
                match block_type(inner) {
                    Some("text") => texts.push(required_str(&inner_path, inner, "text")?),
                    Some("image") => user_parts.push(image_part(&inner_path, inner)?),
                    other => unsupported_block(&inner_path, other, "tool_result")?,
                }
            }
            texts.join("\n")
        }
        Some(_) => return Err(invalid(format!("{path}.content: must be a string or an array of blocks"))),
    };
    match block.get("is_error") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            text = if text.is_empty() { "Error".to_owned() } else { format!("Error: {text}") };
        }
        Some(_) => return Err(invalid(format!("{path}.is_error: must be a boolean"))),
    }
    Ok(json!({"role": "tool", "tool_call_id": tool_use_id, "content": text}))
}

fn tool_call(path: &str, block: &Value) -> Result<Value> {
    let id = required_str(path, block, "id")?;
    let name = required_str(path, block, "name")?;
    let arguments = match block.get("input") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(input @ Value::Object(_)) => input.to_string(),
        Some(_) => return Err(invalid(format!("{path}.input: must be an object"))),
    };
    Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
}

fn translate_tools(tools: &Value) -> Result<Vec<Value>> {
    let tools = tools.as_array().ok_or_else(|| invalid("tools: must be an array"))?;
    let mut functions = Vec::with_capacity(tools.len());
    for (position, tool) in tools.iter().enumerate() {
        let path = format!("tools.{position}");
        if let Some(kind) = tool.get("type").and_then(Value::as_str).filter(|kind| *kind != "custom") {
            tracing::debug!(%path, tool = %kind, "server tool dropped: no local engine runs it");
            continue;
        }
        let name = required_str(&path, tool, "name")?;
        let schema = match tool.get("input_schema") {
            Some(schema @ Value::Object(_)) => schema.clone(),
            _ => return Err(invalid(format!("{path}.input_schema: must be an object"))),
        };
        let mut function = json!({"name": name, "parameters": schema});
        match tool.get("description") {
            None | Some(Value::Null) => {}
            Some(description @ Value::String(_)) => function["description"] = description.clone(),
            Some(_) => return Err(invalid(format!("{path}.description: must be a string"))),
        }
        functions.push(json!({"type": "function", "function": function}));
    }
    Ok(functions)
}

fn translate_tool_choice(chat: &mut Map<String, Value>, choice: &Value) -> Result<()> {
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = required_str("tool_choice", choice, "name")?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => return Err(invalid(r#"tool_choice.type: must be "auto", "any", "tool" or "none""#)),
    };
    let none = mapped == "none";
    chat.insert("tool_choice".into(), mapped);
    match choice.get("disable_parallel_tool_use") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true)) if !none => {
            chat.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
        Some(Value::Bool(true)) => {}
        Some(_) => return Err(invalid("tool_choice.disable_parallel_tool_use: must be a boolean")),
    }
    Ok(())
}
