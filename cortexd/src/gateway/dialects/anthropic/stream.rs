//! OpenAI Chat Completions stream → Anthropic Messages stream: a state machine fed one `data:` payload at a time.
//!
//! Shape of the output (the strict-client rules): `message_start` on the first upstream chunk;
//! then content blocks with indices 0, 1, 2… each `content_block_start`, deltas,
//! `content_block_stop`, one block open at a time; then `message_delta` (stop reason and
//! cumulative usage) and `message_stop` once the upstream says `[DONE]`. Or, at any point,
//! `event: error`, after which nothing more is written.
//!
//! Decisions:
//! - A new block opens whenever the kind of delta changes (reasoning → thinking block, content →
//!   text block, each upstream tool-call index → its own tool_use block); the delta that caused
//!   the change is the new block's first delta, so no text is lost after thinking.
//! - Thinking blocks end with a `signature_delta` whose signature is empty, as the real API
//!   always sends one; the SDK only stores it. Clients sending such blocks back lose nothing:
//!   the request translation drops thinking blocks.
//! - Tool arguments are forwarded fragment by fragment, unchanged, as `input_json_delta`; the
//!   SDK concatenates and parses them. The name must come in the first delta of its index, as
//!   OpenAI specifies and llama.cpp does. A delta for a tool call whose block was already closed
//!   cannot be represented and ends the stream with an error instead of losing arguments.
//! - Usage: `message_start` carries input tokens only if the engine reported them early
//!   (llama.cpp `prompt_progress`), else 0; `message_delta` always carries the final
//!   `input_tokens`, `cache_read_input_tokens` and `output_tokens` (the SDK overwrites
//!   the snapshot with them). Without a usage chunk, output tokens are counted as content deltas
//!   (llama.cpp sends one per token).
//! - An upstream chunk with an `error` key, a malformed chunk, or the end of the stream before a
//!   finish reason or `[DONE]` ends the stream with `event: error` (`api_error`).

use std::io::Write as _;

use serde_json::{Value, json};

use crate::gateway::dialects::anthropic::response::{
    InputUsage, fallback_tool_id, message_id, stop_reason, usage_json,
};
use crate::gateway::dialects::anthropic::{TranslateError, error_body};
use crate::gateway::dialects::chat::types::{
    ChatChunk, ChatUsage, Delta, ToolCallDelta, upstream_error_message,
};
use crate::gateway::transport::sse::{self, SseBuffer, SseParser};

/// Translates one upstream stream. Create one per request; feed every `data:` payload to
/// [`StreamTranslator::push`] (or every raw event to [`StreamTranslator::push_event`]), then call
/// [`StreamTranslator::finish`] at the end of the upstream body. Output is appended to the
/// caller's buffer (`String` or `BytesMut`) as complete SSE events, ready to send.
#[derive(Debug)]
pub struct StreamTranslator {
    /// The model name the client asked for, echoed in `message_start`.
    requested_model: String,
    /// `msg_…`, known from the first chunk.
    message_id: String,
    started: bool,
    /// `message_stop` or `event: error` written; everything after is ignored.
    ended: bool,
    /// The block being written, if any.
    open: Option<OpenBlock>,
    /// Index of the next block to open.
    next_index: u64,
    /// Upstream tool-call indices that already had a block, in order.
    tool_indices_seen: Vec<u64>,
    /// The finish reason, once the upstream sent one.
    finish: Option<(&'static str, Option<String>)>,
    /// The usage chunk, once the upstream sent one.
    usage: Option<ChatUsage>,
    /// Input usage known before the end (llama.cpp `prompt_progress`).
    early_input: Option<InputUsage>,
    /// Chunks that carried generated content, the output-token count when no usage arrives.
    content_chunks: u64,
    /// Reused to format per-token deltas without allocating.
    scratch: Vec<u8>,
    /// The fleet's output cap, not the client's `max_tokens`, bounds this answer: a `length`
    /// finish is the operator's limit, reported as `end_turn` (see [`StreamTranslator::cap_binds`]).
    cap_binds: bool,
    /// Splits raw events given to `push_event`.
    parser: SseParser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Thinking,
    Text,
    ToolUse { upstream_index: u64 },
}

impl StreamTranslator {
    pub fn new(requested_model: &str) -> Self {
        StreamTranslator {
            requested_model: requested_model.to_owned(),
            message_id: message_id(None),
            started: false,
            ended: false,
            open: None,
            next_index: 0,
            tool_indices_seen: Vec::new(),
            finish: None,
            usage: None,
            early_input: None,
            content_chunks: 0,
            scratch: Vec::new(),
            cap_binds: false,
            parser: SseParser::new(),
        }
    }

    /// Marks that the fleet's output cap is below what the client asked for: the engine
    /// stopping at it is reported as `end_turn`, not `max_tokens` (Claude Code treats
    /// `max_tokens` as a failed turn, retries and gives up; the client's own limit was not hit).
    pub fn cap_binds(mut self, binds: bool) -> Self {
        self.cap_binds = binds;
        self
    }

    /// Whether the output is complete (`message_stop` or `event: error` written).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Translates one `data:` payload of the upstream stream (a chunk, or `[DONE]`).
    /// On `Err`, `out` already ends with an `event: error`: stop reading the upstream.
    pub fn push(&mut self, data: &str, out: &mut impl SseBuffer) -> Result<(), TranslateError> {
        if self.ended {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            self.complete(out);
            return Ok(());
        }
        let result = serde_json::from_str::<ChatChunk<'_>>(data)
            .map_err(|error| {
                TranslateError::Upstream(format!("malformed stream chunk from the engine: {error}"))
            })
            .and_then(|chunk| self.chunk(&chunk, out));
        if let Err(error) = &result {
            self.write_error(&error.to_string(), out);
        }
        result
    }

    /// Translates raw upstream SSE bytes (for a proxy that already splits the stream into
    /// events; any split works). Errors are rendered into `out` as with [`StreamTranslator::push`].
    pub fn push_event(&mut self, raw_event: &[u8], out: &mut impl SseBuffer) {
        let mut parser = std::mem::take(&mut self.parser);
        let _ = parser.feed(raw_event, |event| self.push(event.data, out));
        self.parser = parser;
    }

    /// Call at the end of the upstream body. Completes the message if the engine sent a finish
    /// reason but no `[DONE]`; otherwise the stream was cut short and `Err` comes back with
    /// `out` ending in an `event: error`.
    pub fn finish(&mut self, out: &mut impl SseBuffer) -> Result<(), TranslateError> {
        if self.ended {
            return Ok(());
        }
        if self.finish.is_some() {
            self.complete(out);
            return Ok(());
        }
        let error =
            TranslateError::Upstream("the engine ended the stream before the message was complete".into());
        self.write_error(&error.to_string(), out);
        Err(error)
    }

    /// Ends the stream with `event: error` (`api_error`) for an upstream failure the caller saw
    /// (connection reset, read timeout). Does nothing once the stream has ended.
    pub fn fail(&mut self, message: &str, out: &mut impl SseBuffer) {
        if !self.ended {
            self.write_error(message, out);
        }
    }

    fn chunk(&mut self, chunk: &ChatChunk<'_>, out: &mut impl SseBuffer) -> Result<(), TranslateError> {
        if let Some(error) = &chunk.error {
            return Err(TranslateError::Upstream(upstream_error_message(error)));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        if let Some(progress) = chunk.prompt_progress {
            if let Some(total) = progress.total {
                self.early_input = Some(InputUsage::from_prompt(total, progress.cache.unwrap_or(0)));
            }
        }
        self.start(chunk.id.as_deref(), out);
        for choice in chunk.choices.iter().flatten().filter(|choice| choice.index == 0) {
            if let Some(delta) = &choice.delta {
                self.delta(delta, out)?;
            }
            if let Some(finish_reason) = choice.finish_reason.as_deref() {
                self.close_block(out);
                let has_tool_use = !self.tool_indices_seen.is_empty();
                let (reason, sequence) =
                    stop_reason(Some(finish_reason), choice.stop_reason.as_ref(), has_tool_use);
                let reason = if self.cap_binds && reason == "max_tokens" { "end_turn" } else { reason };
                self.finish = Some((reason, sequence));
            }
        }
        Ok(())
    }

    fn delta(&mut self, delta: &Delta<'_>, out: &mut impl SseBuffer) -> Result<(), TranslateError> {
        let reasoning = delta.reasoning_content.as_deref().or(delta.reasoning.as_deref());
        let mut produced = false;
        if let Some(thinking) = reasoning.filter(|text| !text.is_empty()) {
            if self.open != Some(OpenBlock::Thinking) {
                self.open_block(
                    OpenBlock::Thinking,
                    &json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
            }
            self.write_delta(out, "thinking_delta", "thinking", thinking);
            produced = true;
        }
        if let Some(text) = delta.content.as_deref().filter(|text| !text.is_empty()) {
            if self.open != Some(OpenBlock::Text) {
                self.open_block(OpenBlock::Text, &json!({"type": "text", "text": ""}), out);
            }
            self.write_delta(out, "text_delta", "text", text);
            produced = true;
        }
        for (position, call) in delta.tool_calls.iter().flatten().enumerate() {
            produced |= self.tool_call_delta(call, position as u64, out)?;
        }
        if produced {
            self.content_chunks += 1;
        }
        Ok(())
    }

    /// Returns whether arguments were written.
    fn tool_call_delta(
        &mut self,
        call: &ToolCallDelta<'_>,
        position: u64,
        out: &mut impl SseBuffer,
    ) -> Result<bool, TranslateError> {
        let upstream_index = call.index.unwrap_or(position);
        let function = call.function.as_ref();
        if self.open != Some(OpenBlock::ToolUse { upstream_index }) {
            if self.tool_indices_seen.contains(&upstream_index) {
                return Err(TranslateError::Upstream(format!(
                    "the engine interleaved tool call {upstream_index} with another one; cannot translate"
                )));
            }
            self.tool_indices_seen.push(upstream_index);
            let id = match call.id.as_deref() {
                Some(id) if !id.is_empty() => id.to_owned(),
                _ => fallback_tool_id(&self.message_id, upstream_index),
            };
            let name = function.and_then(|function| function.name.as_deref()).unwrap_or("");
            let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
            self.open_block(OpenBlock::ToolUse { upstream_index }, &block, out);
        }
        match function.and_then(|function| function.arguments.as_deref()).filter(|text| !text.is_empty()) {
            Some(arguments) => {
                self.write_delta(out, "input_json_delta", "partial_json", arguments);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn start(&mut self, upstream_id: Option<&str>, out: &mut impl SseBuffer) {
        if self.started {
            return;
        }
        self.started = true;
        self.message_id = message_id(upstream_id);
        let input = self.early_input.or(self.usage.as_ref().map(InputUsage::from_usage)).unwrap_or_default();
        let message_start = json!({
            "type": "message_start",
            "message": {
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": self.requested_model,
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage_json(input, 0),
            },
        });
        sse::write_event(out, "message_start", &message_start.to_string());
    }

    fn open_block(&mut self, kind: OpenBlock, content_block: &Value, out: &mut impl SseBuffer) {
        self.close_block(out);
        let start =
            json!({"type": "content_block_start", "index": self.next_index, "content_block": content_block});
        sse::write_event(out, "content_block_start", &start.to_string());
        self.open = Some(kind);
        self.next_index += 1;
    }

    fn close_block(&mut self, out: &mut impl SseBuffer) {
        let Some(kind) = self.open.take() else { return };
        if kind == OpenBlock::Thinking {
            self.write_delta(out, "signature_delta", "signature", "");
        }
        let index = self.next_index - 1;
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{index}}}\n\n"
        );
        out.push_str(std::str::from_utf8(&self.scratch).unwrap_or_default());
    }

    /// Writes a `content_block_delta` for the open block. Formatted by hand: this is the
    /// per-token path, and only the text needs JSON escaping.
    fn write_delta(&mut self, out: &mut impl SseBuffer, delta_type: &str, field: &str, text: &str) {
        let index = self.next_index.saturating_sub(1);
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{index},\
             \"delta\":{{\"type\":\"{delta_type}\",\"{field}\":"
        );
        // Writing a str into a Vec cannot fail; the bytes are UTF-8 by construction.
        let _ = serde_json::to_writer(&mut self.scratch, text);
        self.scratch.extend_from_slice(b"}}\n\n");
        out.push_str(std::str::from_utf8(&self.scratch).unwrap_or_default());
    }

    fn complete(&mut self, out: &mut impl SseBuffer) {
        self.start(None, out);
        self.close_block(out);
        let (reason, sequence) = self.finish.take().unwrap_or(("end_turn", None));
        let output_tokens = self.usage.map_or(self.content_chunks, |usage| usage.completion_tokens);
        let mut usage = json!({"output_tokens": output_tokens});
        if let Some(input) = self.usage.as_ref().map(InputUsage::from_usage).or(self.early_input) {
            usage["input_tokens"] = input.input_tokens.into();
            usage["cache_read_input_tokens"] = input.cache_read_input_tokens.into();
        }
        let message_delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage,
        });
        sse::write_event(out, "message_delta", &message_delta.to_string());
        sse::write_event(out, "message_stop", r#"{"type":"message_stop"}"#);
        self.ended = true;
    }

    fn write_error(&mut self, message: &str, out: &mut impl SseBuffer) {
        sse::write_event(out, "error", &error_body("api_error", message).to_string());
        self.ended = true;
    }
}
