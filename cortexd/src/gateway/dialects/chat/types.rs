//! The OpenAI Chat Completions response shapes cortex reads back (responses and stream chunks),
//! the common ground of every translating dialect.
//!
//! Only the fields the translation needs; everything else (`system_fingerprint`, logprobs) is
//! ignored, and of llama.cpp's `timings` only `cache_n` is read (the cached prompt tokens of a
//! build whose usage has no `prompt_tokens_details`). Every field is optional because engines differ
//! in what they omit or send as `null`. Strings borrow from the input where they can.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::gateway::core::error::ApiError;

/// A non-streaming `chat.completion`.
#[derive(Debug, Deserialize)]
pub struct ChatCompletion<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub choices: Option<Vec<Choice<'a>>>,
    pub usage: Option<ChatUsage>,
    pub timings: Option<Timings>,
    pub error: Option<Value>,
}

impl<'a> ChatCompletion<'a> {
    /// An engine's complete answer, read for translation: malformed JSON, an `{"error": …}`
    /// or an answer without choices is the engine's failure. Returns the answer and its first
    /// choice.
    pub fn read(answer: &'a Value) -> Result<(Self, Choice<'a>), ApiError> {
        let mut completion = ChatCompletion::deserialize(answer)
            .map_err(|e| ApiError::Upstream(format!("malformed chat completion from the engine: {e}")))?;
        if let Some(error) = &completion.error {
            return Err(ApiError::Upstream(upstream_error_message(error)));
        }
        let choice = completion.choices.take().and_then(|choices| choices.into_iter().next());
        let choice = choice
            .ok_or_else(|| ApiError::Upstream("chat completion from the engine has no choices".into()))?;
        completion.usage = completion.usage.map(|usage| usage.with_timings(completion.timings));
        Ok((completion, choice))
    }
}

#[derive(Debug, Deserialize)]
pub struct Choice<'a> {
    #[serde(borrow)]
    pub message: Option<ResponseMessage<'a>>,
    #[serde(borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
    /// vLLM: the stop string that ended generation (a token id or null otherwise).
    pub stop_reason: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ResponseMessage<'a> {
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
pub struct ToolCall<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub function: Option<FunctionCall<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall<'a> {
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    /// A JSON text per the spec; some engines send the object itself.
    pub arguments: Option<Value>,
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Deserialize)]
pub struct ChatChunk<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub choices: Option<Vec<ChunkChoice<'a>>>,
    pub usage: Option<ChatUsage>,
    /// llama.cpp: sent with the usage chunk (and the last chunk) of a stream.
    pub timings: Option<Timings>,
    /// llama.cpp with `return_progress`: prompt size known before the first token.
    pub prompt_progress: Option<PromptProgress>,
    pub error: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChunkChoice<'a> {
    #[serde(default)]
    pub index: u64,
    #[serde(borrow)]
    pub delta: Option<Delta<'a>>,
    #[serde(borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
    pub stop_reason: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Delta<'a> {
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
pub struct ToolCallDelta<'a> {
    pub index: Option<u64>,
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub function: Option<FunctionDelta<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDelta<'a> {
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub arguments: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ChatUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl ChatUsage {
    /// The prompt tokens the engine took from its cache: `prompt_tokens_details.cached_tokens`
    /// (OpenAI, vLLM with prompt details on, llama.cpp), else 0.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.and_then(|details| details.cached_tokens).unwrap_or(0)
    }

    /// The usage with llama.cpp's `timings.cache_n` as its cached tokens when it has none of its
    /// own (llama.cpp builds before `prompt_tokens_details`).
    pub fn with_timings(mut self, timings: Option<Timings>) -> Self {
        let reported = self.prompt_tokens_details.and_then(|details| details.cached_tokens);
        if let (None, Some(cached)) = (reported, timings.and_then(|timings| timings.cache_n)) {
            self.prompt_tokens_details = Some(PromptTokensDetails { cached_tokens: Some(cached) });
        }
        self
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: Option<u64>,
}

/// llama.cpp's `timings`: `cache_n` prompt tokens came from the slot's cache, `prompt_n` were
/// computed.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Timings {
    pub cache_n: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PromptProgress {
    pub total: Option<u64>,
    pub cache: Option<u64>,
}

/// The message of an upstream `{"error": …}` (an object with `message`, or anything else as text).
pub fn upstream_error_message(error: &Value) -> String {
    match error.get("message").and_then(Value::as_str) {
        Some(message) => message.to_owned(),
        None => match error {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        },
    }
}
