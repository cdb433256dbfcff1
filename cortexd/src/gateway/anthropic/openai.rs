//! The OpenAI Chat Completions response shapes cortex reads back (responses and stream chunks), and their mapping to Anthropic stop reasons, usage and ids.
//!
//! Only the fields the translation needs; everything else (llama.cpp `timings`,
//! `system_fingerprint`, logprobs) is ignored. Every field is optional because engines differ
//! in what they omit or send as `null`. Strings borrow from the input where they can.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json};

/// A non-streaming `chat.completion`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatCompletion<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub choices: Option<Vec<Choice<'a>>>,
    pub usage: Option<ChatUsage>,
    pub error: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Choice<'a> {
    #[serde(borrow)]
    pub message: Option<ResponseMessage<'a>>,
    #[serde(borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
    /// vLLM: the stop string that ended generation (a token id or null otherwise).
    pub stop_reason: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResponseMessage<'a> {
    /// A string, or (rarely) an array of text parts.
    pub content: Option<Value>,
    /// llama.cpp, older vLLM.
    #[serde(borrow)]
    pub reasoning_content: Option<Cow<'a, str>>,
    /// Newer vLLM.
    #[serde(borrow)]
    pub reasoning: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ToolCall<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub function: Option<FunctionCall<'a>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FunctionCall<'a> {
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    /// A JSON text per the spec; some engines send the object itself.
    pub arguments: Option<Value>,
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatChunk<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub choices: Option<Vec<ChunkChoice<'a>>>,
    pub usage: Option<ChatUsage>,
    /// llama.cpp with `return_progress`: prompt size known before the first token.
    pub prompt_progress: Option<PromptProgress>,
    pub error: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChunkChoice<'a> {
    #[serde(default)]
    pub index: u64,
    #[serde(borrow)]
    pub delta: Option<Delta<'a>>,
    #[serde(borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
    pub stop_reason: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Delta<'a> {
    #[serde(borrow)]
    pub content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub reasoning: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ToolCallDelta<'a> {
    pub index: Option<u64>,
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub function: Option<FunctionDelta<'a>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FunctionDelta<'a> {
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub arguments: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) struct ChatUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) struct PromptTokensDetails {
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct PromptProgress {
    pub total: Option<u64>,
    pub cache: Option<u64>,
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
        let cached = usage.prompt_tokens_details.and_then(|details| details.cached_tokens).unwrap_or(0);
        Self::from_prompt(usage.prompt_tokens, cached)
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

/// The message of an upstream `{"error": …}` (an object with `message`, or anything else as text).
pub(crate) fn upstream_error_message(error: &Value) -> String {
    match error.get("message").and_then(Value::as_str) {
        Some(message) => message.to_owned(),
        None => match error {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        },
    }
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
