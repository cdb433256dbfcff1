//! OpenAI Chat Completions stream → Anthropic Messages stream: the Messages writer of the one
//! walk over a Chat Completions stream (`dialects::chat::stream`), fed one `data:` payload at a
//! time.
//!
//! Shape of the output (the strict-client rules): `message_start` on the first upstream chunk;
//! then content blocks with indices 0, 1, 2… each `content_block_start`, deltas,
//! `content_block_stop`, one block open at a time; then `message_delta` (stop reason and
//! cumulative usage) and `message_stop` once the upstream says `[DONE]`. Or, at any point,
//! `event: error`, after which nothing more is written.
//!
//! Decisions, beyond the walk's own (blocks, tool calls, usage, failures):
//! - Reasoning becomes a thinking block, content a text block, each tool call a tool_use block.
//! - Thinking blocks end with a `signature_delta` whose signature is empty, as the real API
//!   always sends one; the SDK only stores it. Clients sending such blocks back lose nothing:
//!   the request translation drops thinking blocks.
//! - Tool arguments are forwarded as `input_json_delta`; the SDK concatenates and parses them.
//! - Usage: `message_start` carries input tokens only if the engine reported them early
//!   (llama.cpp `prompt_progress`), else 0; `message_delta` always carries the final
//!   `input_tokens`, `cache_read_input_tokens` and `output_tokens` (the SDK overwrites
//!   the snapshot with them).
//! - Every failure is one `event: error` (`api_error`), standing alone.

use std::io::Write as _;

use serde_json::json;

use crate::gateway::core::error::{ApiError, Dialect};
use crate::gateway::dialects::anthropic::response::{
    InputUsage, fallback_tool_id, message_id, stop_reason, usage_json,
};
use crate::gateway::dialects::chat::stream::{Block, ChatStream, Finish, Open, Seen, Writer};
use crate::gateway::transport::sse::{self, SseBuffer};

/// Translates one upstream stream into Anthropic events: the walk with the Messages writer.
pub type StreamTranslator = ChatStream<Messages>;

impl ChatStream<Messages> {
    /// The translator for a client that asked for `requested_model` (echoed in
    /// `message_start`).
    pub fn new(requested_model: &str) -> Self {
        ChatStream::with_writer(Messages {
            requested_model: requested_model.to_owned(),
            message_id: message_id(None),
            next_index: 0,
            scratch: Vec::new(),
            cap_binds: false,
        })
    }

    /// Marks that the fleet's output cap is below what the client asked for: the engine
    /// stopping at it is reported as `end_turn`, not `max_tokens` (Claude Code treats
    /// `max_tokens` as a failed turn, retries and gives up; the client's own limit was not hit).
    pub fn cap_binds(mut self, binds: bool) -> Self {
        self.writer_mut().cap_binds = binds;
        self
    }
}

/// The Messages side of the walk.
#[derive(Debug)]
pub struct Messages {
    /// The model name the client asked for, echoed in `message_start`.
    requested_model: String,
    /// `msg_…`, known from the first chunk.
    message_id: String,
    /// Index of the next block to open.
    next_index: u64,
    /// Reused to format per-token deltas without allocating.
    scratch: Vec<u8>,
    /// The fleet's output cap, not the client's `max_tokens`, bounds this answer: a `length`
    /// finish is the operator's limit, reported as `end_turn` (see [`StreamTranslator::cap_binds`]).
    cap_binds: bool,
}

impl Writer for Messages {
    const FAILURE_INSIDE_ANSWER: bool = false;
    const CUT_SHORT: &'static str = "the engine ended the stream before the message was complete";
    const EMPTY_DONE: Option<&'static str> = None;

    fn start(&mut self, upstream_id: Option<&str>, seen: &Seen, out: &mut impl SseBuffer) {
        self.message_id = message_id(upstream_id);
        let input = early_input(seen).or(seen.usage.as_ref().map(InputUsage::from_usage)).unwrap_or_default();
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

    fn open(&mut self, block: Block<'_>, out: &mut impl SseBuffer) {
        let content_block = match block {
            Block::Reasoning => json!({"type": "thinking", "thinking": "", "signature": ""}),
            Block::Text => json!({"type": "text", "text": ""}),
            Block::ToolCall { upstream_index, id, name } => {
                let id = id.map_or_else(|| fallback_tool_id(&self.message_id, upstream_index), str::to_owned);
                json!({"type": "tool_use", "id": id, "name": name, "input": {}})
            }
        };
        let start =
            json!({"type": "content_block_start", "index": self.next_index, "content_block": content_block});
        sse::write_event(out, "content_block_start", &start.to_string());
        self.next_index += 1;
    }

    fn delta(&mut self, open: Open, text: &str, out: &mut impl SseBuffer) {
        let (delta_type, field) = match open {
            Open::Reasoning => ("thinking_delta", "thinking"),
            Open::Text => ("text_delta", "text"),
            Open::ToolCall { .. } => ("input_json_delta", "partial_json"),
        };
        self.write_delta(out, delta_type, field, text);
    }

    fn close(&mut self, open: Open, out: &mut impl SseBuffer) {
        if open == Open::Reasoning {
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

    fn complete(&mut self, finish: Option<Finish>, seen: &Seen, out: &mut impl SseBuffer) {
        let (reason, sequence) = match finish {
            Some(finish) => {
                let (reason, sequence) =
                    stop_reason(Some(&finish.reason), finish.stop.as_ref(), finish.tool_use);
                (if self.cap_binds && reason == "max_tokens" { "end_turn" } else { reason }, sequence)
            }
            None => ("end_turn", None),
        };
        let output_tokens = seen.usage.map_or(seen.content_chunks, |usage| usage.completion_tokens);
        let mut usage = json!({"output_tokens": output_tokens});
        if let Some(input) = seen.usage.as_ref().map(InputUsage::from_usage).or(early_input(seen)) {
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
    }

    fn fail(&mut self, message: &str, out: &mut impl SseBuffer) {
        out.push_str(&ApiError::Upstream(message.to_owned()).sse_event(Dialect::Anthropic));
    }
}

impl Messages {
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
}

/// Input usage the engine reported before the end (llama.cpp `prompt_progress`).
fn early_input(seen: &Seen) -> Option<InputUsage> {
    let progress = seen.prompt_progress?;
    Some(InputUsage::from_prompt(progress.total?, progress.cache.unwrap_or(0)))
}
