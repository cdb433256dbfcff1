//! The one walk over a Chat Completions stream that every translating dialect plugs into: a
//! state machine fed one `data:` payload at a time, which turns the engine's deltas into a
//! sequence of blocks (reasoning, text, one per tool call) opened, written and closed in order,
//! and tells the dialect's [`Writer`] each step.
//!
//! Decisions shared by every dialect:
//! - A new block opens whenever the kind of delta changes (reasoning → reasoning block, content
//!   → text block, each upstream tool-call index → its own block); the delta that caused the
//!   change is the new block's first delta, so no text is lost after reasoning. One block is
//!   open at a time, and each is closed once.
//! - Only choice 0 is read. Tool arguments go through fragment by fragment, unchanged; the name
//!   must come in the first delta of its index, as OpenAI specifies and llama.cpp does. A delta
//!   for a tool call whose block was already closed cannot be represented and ends the stream
//!   with an error instead of losing arguments.
//! - Usage is the engine's usage chunk when it sends one; without it, output tokens are counted
//!   as chunks that carried generated content (llama.cpp sends one per token).
//! - An upstream chunk with an `error` key, a malformed chunk, or the end of the stream before
//!   a finish reason ends the stream with the dialect's failure; nothing is written after it.

use serde_json::Value;

use crate::gateway::core::error::ApiError;
use crate::gateway::dialects::chat::types::{
    ChatChunk, ChatUsage, Delta, PromptProgress, ToolCallDelta, upstream_error_message,
};
use crate::gateway::transport::sse::SseBuffer;

/// The kind of the block being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// The engine's reasoning (`reasoning_content` or `reasoning`).
    Reasoning,
    /// The answer's text (`content`).
    Text,
    /// One tool call, by its upstream index.
    ToolCall { upstream_index: u64 },
}

/// A block about to open.
#[derive(Clone, Copy, Debug)]
pub enum Block<'a> {
    Reasoning,
    Text,
    /// `id` is the engine's call id when it sent a non-empty one (the dialect makes one up
    /// otherwise), `name` the function's name (empty when the engine sent none).
    ToolCall {
        upstream_index: u64,
        id: Option<&'a str>,
        name: &'a str,
    },
}

/// How the engine said the answer ended, as of its last finish reason.
#[derive(Clone, Debug)]
pub struct Finish {
    /// The `finish_reason` (`stop`, `length`, `tool_calls`, …).
    pub reason: String,
    /// vLLM's `stop_reason`: the stop string that matched (a token id or null otherwise).
    pub stop: Option<Value>,
    /// Whether a tool call had been written by then.
    pub tool_use: bool,
}

/// What the walk has seen so far that a dialect reports: usage and the output-token count.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    /// The engine's usage chunk, once it sent one.
    pub usage: Option<ChatUsage>,
    /// The prompt's size, when the engine reported it before the first token (llama.cpp
    /// `prompt_progress` with a `total`).
    pub prompt_progress: Option<PromptProgress>,
    /// Chunks that carried generated content: the output-token count when no usage arrives.
    pub content_chunks: u64,
}

/// A dialect's side of the walk: writes each step as that dialect's events.
pub trait Writer {
    /// Whether a failure belongs inside the answer: the answer is started first and the open
    /// block closed before [`Writer::fail`] (Responses' `response.failed`), rather than the
    /// failure standing alone (Anthropic's `event: error`).
    const FAILURE_INSIDE_ANSWER: bool;
    /// The failure for a stream that ended before a finish reason.
    const CUT_SHORT: &'static str;
    /// The failure for a `[DONE]` with neither output nor a finish reason; `None` completes
    /// the answer empty.
    const EMPTY_DONE: Option<&'static str>;

    /// The answer starts (the first chunk, with the engine's completion id, or the end).
    fn start(&mut self, upstream_id: Option<&str>, seen: &Seen, out: &mut impl SseBuffer);
    /// A block opens (the previous one, if any, was closed).
    fn open(&mut self, block: Block<'_>, out: &mut impl SseBuffer);
    /// A fragment of the open block's text or arguments.
    fn delta(&mut self, open: Open, text: &str, out: &mut impl SseBuffer);
    /// The open block ends.
    fn close(&mut self, open: Open, out: &mut impl SseBuffer);
    /// The answer ends (every block closed), with the last finish reason if any.
    fn complete(&mut self, finish: Option<Finish>, seen: &Seen, out: &mut impl SseBuffer);
    /// The answer ends in failure; nothing is written after it.
    fn fail(&mut self, message: &str, out: &mut impl SseBuffer);
}

/// One upstream stream's walk, writing through `W`. Create one per request (each dialect names
/// its own constructor); feed every `data:` payload to [`ChatStream::push`], then call
/// [`ChatStream::finish`] at the end of the upstream body. Output is appended to the caller's
/// buffer (`String` or `BytesMut`) as complete SSE events, ready to send.
#[derive(Debug)]
pub struct ChatStream<W> {
    writer: W,
    started: bool,
    /// The answer was completed or failed; everything after is ignored.
    ended: bool,
    open: Option<Open>,
    /// Whether any block was opened yet.
    opened_any: bool,
    /// Upstream tool-call indices that already had a block, in order.
    tool_indices_seen: Vec<u64>,
    finish: Option<Finish>,
    seen: Seen,
}

impl<W: Writer> ChatStream<W> {
    /// The walk writing through `writer`.
    pub fn with_writer(writer: W) -> Self {
        ChatStream {
            writer,
            started: false,
            ended: false,
            open: None,
            opened_any: false,
            tool_indices_seen: Vec::new(),
            finish: None,
            seen: Seen::default(),
        }
    }

    /// The dialect's side, for settings made before the first chunk.
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    /// Whether the output is complete (completed or failed).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The engine's usage, once it sent its usage chunk.
    pub fn usage(&self) -> Option<ChatUsage> {
        self.seen.usage
    }

    /// Walks one `data:` payload of the upstream stream (a chunk, or `[DONE]`). On `Err`, `out`
    /// already ends with the dialect's failure: stop reading the upstream.
    pub fn push(&mut self, data: &str, out: &mut impl SseBuffer) -> Result<(), ApiError> {
        if self.ended {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            return match W::EMPTY_DONE.filter(|_| self.finish.is_none() && !self.opened_any) {
                Some(message) => Err(self.failed(message, out)),
                None => {
                    self.complete(out);
                    Ok(())
                }
            };
        }
        let result = serde_json::from_str::<ChatChunk<'_>>(data)
            .map_err(|error| format!("malformed stream chunk from the engine: {error}"))
            .and_then(|chunk| self.chunk(&chunk, out));
        result.map_err(|message| self.failed(&message, out))
    }

    /// Call at the end of the upstream body. Completes the answer if the engine sent a finish
    /// reason but no `[DONE]`; otherwise the stream was cut short and `Err` comes back with
    /// `out` ending in the dialect's failure.
    pub fn finish(&mut self, out: &mut impl SseBuffer) -> Result<(), ApiError> {
        if self.ended {
            return Ok(());
        }
        if self.finish.is_some() {
            self.complete(out);
            return Ok(());
        }
        Err(self.failed(W::CUT_SHORT, out))
    }

    /// Ends the stream with the dialect's failure for an upstream failure the caller saw
    /// (connection reset, read timeout). Does nothing once the stream has ended.
    pub fn fail(&mut self, message: &str, out: &mut impl SseBuffer) {
        if self.ended {
            return;
        }
        if W::FAILURE_INSIDE_ANSWER {
            self.start(None, out);
            self.close(out);
        }
        self.writer.fail(message, out);
        self.ended = true;
    }

    /// [`ChatStream::fail`], returning the error it wrote.
    fn failed(&mut self, message: &str, out: &mut impl SseBuffer) -> ApiError {
        self.fail(message, out);
        ApiError::Upstream(message.to_owned())
    }

    fn chunk(&mut self, chunk: &ChatChunk<'_>, out: &mut impl SseBuffer) -> Result<(), String> {
        if let Some(error) = &chunk.error {
            return Err(upstream_error_message(error));
        }
        if let Some(usage) = chunk.usage {
            self.seen.usage = Some(usage.with_timings(chunk.timings));
        }
        if let Some(progress) = chunk.prompt_progress.filter(|progress| progress.total.is_some()) {
            self.seen.prompt_progress = Some(progress);
        }
        self.start(chunk.id.as_deref(), out);
        for choice in chunk.choices.iter().flatten().filter(|choice| choice.index == 0) {
            if let Some(delta) = &choice.delta {
                self.delta(delta, out)?;
            }
            if let Some(reason) = choice.finish_reason.as_deref() {
                self.close(out);
                let tool_use = !self.tool_indices_seen.is_empty();
                self.finish =
                    Some(Finish { reason: reason.to_owned(), stop: choice.stop_reason.clone(), tool_use });
            }
        }
        Ok(())
    }

    fn delta(&mut self, delta: &Delta<'_>, out: &mut impl SseBuffer) -> Result<(), String> {
        let reasoning = delta.reasoning_content.as_deref().or(delta.reasoning.as_deref());
        let mut produced = false;
        if let Some(text) = reasoning.filter(|text| !text.is_empty()) {
            self.write(Open::Reasoning, Block::Reasoning, text, out);
            produced = true;
        }
        if let Some(text) = delta.content.as_deref().filter(|text| !text.is_empty()) {
            self.write(Open::Text, Block::Text, text, out);
            produced = true;
        }
        for (position, call) in delta.tool_calls.iter().flatten().enumerate() {
            produced |= self.tool_call_delta(call, position as u64, out)?;
        }
        if produced {
            self.seen.content_chunks += 1;
        }
        Ok(())
    }

    /// Writes `text` into a block of kind `open`, opening `block` first unless it is open.
    fn write(&mut self, open: Open, block: Block<'_>, text: &str, out: &mut impl SseBuffer) {
        if self.open != Some(open) {
            self.open(open, block, out);
        }
        self.writer.delta(open, text, out);
    }

    /// Returns whether arguments were written.
    fn tool_call_delta(
        &mut self,
        call: &ToolCallDelta<'_>,
        position: u64,
        out: &mut impl SseBuffer,
    ) -> Result<bool, String> {
        let upstream_index = call.index.unwrap_or(position);
        let function = call.function.as_ref();
        let open = Open::ToolCall { upstream_index };
        if self.open != Some(open) {
            if self.tool_indices_seen.contains(&upstream_index) {
                return Err(format!(
                    "the engine interleaved tool call {upstream_index} with another one; cannot translate"
                ));
            }
            self.tool_indices_seen.push(upstream_index);
            let id = call.id.as_deref().filter(|id| !id.is_empty());
            let name = function.and_then(|function| function.name.as_deref()).unwrap_or("");
            self.open(open, Block::ToolCall { upstream_index, id, name }, out);
        }
        match function.and_then(|function| function.arguments.as_deref()).filter(|text| !text.is_empty()) {
            Some(arguments) => {
                self.writer.delta(open, arguments, out);
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
        self.writer.start(upstream_id, &self.seen, out);
    }

    fn open(&mut self, open: Open, block: Block<'_>, out: &mut impl SseBuffer) {
        self.close(out);
        self.writer.open(block, out);
        self.open = Some(open);
        self.opened_any = true;
    }

    fn close(&mut self, out: &mut impl SseBuffer) {
        if let Some(open) = self.open.take() {
            self.writer.close(open, out);
        }
    }

    fn complete(&mut self, out: &mut impl SseBuffer) {
        self.start(None, out);
        self.close(out);
        self.writer.complete(self.finish.take(), &self.seen, out);
        self.ended = true;
    }
}
