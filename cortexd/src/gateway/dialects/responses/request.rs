//! OpenAI Responses request → Chat Completions request, for engines without a native
//! `/v1/responses`. The rules (also in docs/gateway.md):
//!
//! - `instructions`, then every `developer`/`system` message of `input`, in order, fold into one
//!   leading system message (chat templates accept a system message only first).
//! - `user`/`assistant` messages keep their order; `input_text`/`output_text`/`refusal` parts
//!   become text, `input_image` with a URL becomes `image_url`; `input_file` is dropped.
//! - `function_call` items become the `tool_calls` of an assistant message (consecutive calls,
//!   and a call right after an assistant message, share it); `function_call_output` becomes a
//!   `tool` message. `reasoning` items are dropped (their encrypted content means nothing to an
//!   engine); so are hosted-tool call items (`web_search_call`, …). `item_reference` needs stored
//!   responses: a 400.
//! - `function` tools map one to one; a `namespace` tool's functions are flattened to
//!   `<namespace>__<name>` and mapped back to `name` + `namespace` on the way out; hosted tools
//!   (`web_search`, `file_search`, `code_interpreter`, …) and `custom` tools are dropped.
//! - `tool_choice` `auto|none|required` and `{"type":"function","name"}` map; other forms
//!   (`allowed_tools`, hosted) become `auto`. `parallel_tool_calls`, `temperature`, `top_p` map.
//! - `max_output_tokens` → `max_tokens`; `reasoning.effort` → `reasoning_effort` (`minimal` →
//!   `low`, `xhigh` → `high`; `none` turns thinking off through `chat_template_kwargs`);
//!   `text.format` `json_schema`/`json_object` → `response_format`.
//! - `store`, `include`, `prompt_cache_key`, `client_metadata`, `metadata`, `user`,
//!   `safety_identifier`, `service_tier`, `truncation`, `background`, `text.verbosity` and
//!   fields unknown here are accepted and dropped.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::gateway::core::error::ApiError;

type Result<T> = std::result::Result<T, ApiError>;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// The separator of a flattened namespace tool name.
const NAMESPACE_SEPARATOR: &str = "__";

/// Flattened tool names → the namespace and name the client declared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolNames {
    qualified: HashMap<String, (String, String)>,
}

impl ToolNames {
    /// `(namespace, name)` for the name the engine called.
    pub fn resolve<'a>(&'a self, called: &'a str) -> (Option<&'a str>, &'a str) {
        match self.qualified.get(called) {
            Some((namespace, name)) => (Some(namespace), name),
            None => (None, called),
        }
    }

    fn flatten(&mut self, namespace: &str, name: &str) -> String {
        let flat = format!("{namespace}{NAMESPACE_SEPARATOR}{name}");
        self.qualified.insert(flat.clone(), (namespace.to_owned(), name.to_owned()));
        flat
    }
}

/// A translated request: the Chat Completions body and the tool-name mapping for the way back.
#[derive(Debug)]
pub struct Translated {
    pub chat: Value,
    pub names: ToolNames,
}

/// Translates a Responses request body into a Chat Completions request body.
pub fn request_to_chat(body: &Value) -> Result<Translated> {
    let request = body.as_object().ok_or_else(|| invalid("request body must be a JSON object"))?;
    let mut chat = Map::new();
    if let Some(model) = request.get("model") {
        chat.insert("model".into(), model.clone());
    }
    let mut names = ToolNames::default();
    let tools = match request.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(tools) => translate_tools(tools, &mut names)?,
    };
    let mut system = Vec::new();
    match request.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => system.push(text.clone()),
        Some(_) => return Err(invalid("instructions: must be a string")),
    }
    let mut messages = Vec::new();
    match request.get("input") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (position, item) in items.iter().enumerate() {
                translate_item(&format!("input.{position}"), item, &names, &mut system, &mut messages)?;
            }
        }
        Some(_) => return Err(invalid("input: must be a string or an array of items")),
    }
    system.retain(|text| !text.is_empty());
    if !system.is_empty() {
        messages.insert(0, json!({"role": "system", "content": system.join("\n\n")}));
    }
    if messages.is_empty() {
        return Err(invalid("input: at least one message is required"));
    }
    chat.insert("messages".into(), Value::Array(messages));
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = request.get("tool_choice").filter(|c| !c.is_null()) {
            chat.insert("tool_choice".into(), tool_choice(choice, &names));
        }
        if let Some(parallel) = request.get("parallel_tool_calls").filter(|p| p.is_boolean()) {
            chat.insert("parallel_tool_calls".into(), parallel.clone());
        }
    }
    sampling(request, &mut chat)?;
    Ok(Translated { chat: Value::Object(chat), names })
}

/// Output limit, sampling, reasoning, output format and streaming.
fn sampling(request: &Map<String, Value>, chat: &mut Map<String, Value>) -> Result<()> {
    match request.get("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(limit) if limit.as_u64().is_some_and(|n| n >= 1) => {
            chat.insert("max_tokens".into(), limit.clone());
        }
        Some(_) => return Err(invalid("max_output_tokens: must be an integer of at least 1")),
    }
    for name in ["temperature", "top_p"] {
        match request.get(name) {
            None | Some(Value::Null) => {}
            Some(value) if value.is_number() => {
                chat.insert(name.into(), value.clone());
            }
            Some(_) => return Err(invalid(format!("{name}: must be a number"))),
        }
    }
    match request.get("reasoning").and_then(|r| r.get("effort")).and_then(Value::as_str) {
        Some("none") => {
            chat.insert("chat_template_kwargs".into(), json!({"enable_thinking": false}));
        }
        Some("minimal" | "low") => {
            chat.insert("reasoning_effort".into(), "low".into());
        }
        Some("medium") => {
            chat.insert("reasoning_effort".into(), "medium".into());
        }
        Some("high" | "xhigh") => {
            chat.insert("reasoning_effort".into(), "high".into());
        }
        _ => {}
    }
    if let Some(format) = request.get("text").and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut schema = Map::new();
                for key in ["name", "schema", "strict", "description"] {
                    if let Some(value) = format.get(key).filter(|v| !v.is_null()) {
                        schema.insert(key.into(), value.clone());
                    }
                }
                chat.insert("response_format".into(), json!({"type": "json_schema", "json_schema": schema}));
            }
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
        }
    }
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        chat.insert("stream".into(), true.into());
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(())
}

fn translate_item(
    path: &str,
    item: &Value,
    names: &ToolNames,
    system: &mut Vec<String>,
    messages: &mut Vec<Value>,
) -> Result<()> {
    let kind = item.get("type").and_then(Value::as_str);
    let role = item.get("role").and_then(Value::as_str);
    match (kind, role) {
        (Some("message") | None, Some("developer" | "system")) => {
            system.push(content_text(path, item.get("content"))?);
        }
        (Some("message") | None, Some("user")) => {
            messages.push(json!({"role": "user", "content": user_content(path, item.get("content"))?}));
        }
        (Some("message") | None, Some("assistant")) => {
            let text = content_text(path, item.get("content"))?;
            messages.push(json!({"role": "assistant", "content": text}));
        }
        (Some("message") | None, _) => {
            return Err(invalid(format!(
                r#"{path}.role: must be "user", "assistant", "system" or "developer""#
            )));
        }
        (Some("function_call"), _) => push_tool_call(path, item, names, messages)?,
        (Some("function_call_output"), _) => {
            let call_id = required_str(path, item, "call_id")?;
            let output = content_text(path, item.get("output"))?;
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        (Some("item_reference"), _) => {
            return Err(invalid(format!(
                "{path}: item_reference needs stored responses, which this engine does not keep; send the items themselves"
            )));
        }
        (Some(other), _) => {
            tracing::debug!(%path, item = %other, "input item dropped: no chat equivalent");
        }
    }
    Ok(())
}

/// A `function_call` item as a tool call of the assistant message before it (or a new one).
fn push_tool_call(path: &str, item: &Value, names: &ToolNames, messages: &mut Vec<Value>) -> Result<()> {
    let call_id = required_str(path, item, "call_id")?;
    let name = required_str(path, item, "name")?;
    let name = match item.get("namespace").and_then(Value::as_str) {
        Some(namespace) => {
            let flat = format!("{namespace}{NAMESPACE_SEPARATOR}{name}");
            if names.qualified.contains_key(&flat) { flat } else { name.to_owned() }
        }
        None => name.to_owned(),
    };
    let arguments = match item.get("arguments") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
    let joins = messages.last().is_some_and(|last| last["role"] == "assistant");
    if joins && let Some(last) = messages.last_mut() {
        if last["content"] == "" {
            last["content"] = Value::Null;
        }
        match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
            Some(calls) => calls.push(call),
            None => last["tool_calls"] = json!([call]),
        }
    } else {
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    }
    Ok(())
}

fn required_str<'a>(path: &str, item: &'a Value, field: &str) -> Result<&'a str> {
    item.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{path}.{field}: must be a string")))
}

/// The text of a content field (a string, or parts whose text is joined).
fn content_text(path: &str, content: Option<&Value>) -> Result<String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts.iter().filter_map(part_text).collect();
            Ok(texts.join("\n"))
        }
        Some(_) => Err(invalid(format!("{path}.content: must be a string or an array of content parts"))),
    }
}

fn part_text(part: &Value) -> Option<&str> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => part.get("text").and_then(Value::as_str),
        Some("refusal") => part.get("refusal").and_then(Value::as_str),
        _ => None,
    }
}

/// A user message's content: a string, or chat parts (text and images).
fn user_content(path: &str, content: Option<&Value>) -> Result<Value> {
    let parts = match content {
        Some(Value::Array(parts)) => parts,
        other => return content_text(path, other).map(Value::String),
    };
    let mut chat_parts = Vec::with_capacity(parts.len());
    for part in parts {
        if let Some(text) = part_text(part) {
            chat_parts.push(json!({"type": "text", "text": text}));
        } else if part.get("type").and_then(Value::as_str) == Some("input_image")
            && let Some(url) = part.get("image_url").and_then(Value::as_str)
        {
            chat_parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
        }
    }
    if chat_parts.len() == 1 && chat_parts[0]["type"] == "text" {
        return Ok(chat_parts.swap_remove(0)["text"].take());
    }
    Ok(Value::Array(chat_parts))
}

fn translate_tools(tools: &Value, names: &mut ToolNames) -> Result<Vec<Value>> {
    let tools = tools.as_array().ok_or_else(|| invalid("tools: must be an array"))?;
    let mut functions = Vec::with_capacity(tools.len());
    for (position, tool) in tools.iter().enumerate() {
        let path = format!("tools.{position}");
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => functions.push(function_tool(&path, tool, None)?),
            Some("namespace") => {
                let namespace = required_str(&path, tool, "name")?;
                let inner =
                    tool.get("tools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                for (index, function) in inner.iter().enumerate() {
                    if function.get("type").and_then(Value::as_str) == Some("function") {
                        let inner_path = format!("{path}.tools.{index}");
                        functions.push(function_tool(&inner_path, function, Some((namespace, &mut *names)))?);
                    }
                }
            }
            other => tracing::debug!(%path, tool = ?other, "tool dropped: no local engine runs it"),
        }
    }
    Ok(functions)
}

fn function_tool(path: &str, tool: &Value, namespace: Option<(&str, &mut ToolNames)>) -> Result<Value> {
    let name = required_str(path, tool, "name")?;
    let name = match namespace {
        Some((namespace, names)) => names.flatten(namespace, name),
        None => name.to_owned(),
    };
    let parameters = match tool.get("parameters") {
        Some(schema @ Value::Object(_)) => schema.clone(),
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(_) => return Err(invalid(format!("{path}.parameters: must be an object"))),
    };
    let mut function = json!({"name": name, "parameters": parameters});
    if let Some(description) = tool.get("description").and_then(Value::as_str) {
        function["description"] = description.into();
    }
    Ok(json!({"type": "function", "function": function}))
}

fn tool_choice(choice: &Value, names: &ToolNames) -> Value {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => choice.clone(),
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("function") => {
            let name = object.get("name").and_then(Value::as_str).unwrap_or_default();
            let name = match object.get("namespace").and_then(Value::as_str) {
                Some(namespace) => names
                    .qualified
                    .iter()
                    .find(|(_, (ns, n))| ns == namespace && n == name)
                    .map_or(name.to_owned(), |(flat, _)| flat.clone()),
                None => name.to_owned(),
            };
            json!({"type": "function", "function": {"name": name}})
        }
        _ => json!("auto"),
    }
}
