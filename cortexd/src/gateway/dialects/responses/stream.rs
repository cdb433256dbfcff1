//! Chat Completions stream → Responses stream: a state machine fed one `data:` payload at a time.
//!
//! The event sequence is the one the openai SDK's `responses.stream()` accumulates and Codex
//! parses: `response.created`, `response.in_progress`, then per output item
//! `response.output_item.added`, its content events, `response.output_item.done`; finally
//! `response.completed` with every item and the usage. Every event carries a `sequence_number`
//! counting from 0, and is sent with its `event:` name.
//!
//! - Items open when the kind of delta changes (reasoning → `reasoning` item with
//!   `response.reasoning_text.delta`; content → `message` item with one `output_text` part and
//!   `response.output_text.delta`; each upstream tool-call index → a `function_call` item with
//!   `response.function_call_arguments.delta`), one at a time, each closed once with its
//!   `.done` events. Output indices count from 0.
//! - A `length` finish ends with `response.completed` whose status is `incomplete`
//!   (`incomplete_details.reason = "max_output_tokens"`): Codex fails a turn on a
//!   `response.incomplete` event, and the fleet's output cap must not cost an agent its turn.
//! - An upstream error chunk, a malformed chunk, a tool call interleaved with a closed one, or
//!   the end of the stream before a finish reason ends the stream with `response.failed`
//!   (status `failed`, `error.code = "server_error"`); nothing is written after it.

use std::io::Write as _;

use serde_json::{Map, Value, json};

use crate::gateway::dialects::chat::types::{
    ChatChunk, ChatUsage, Delta, ToolCallDelta, upstream_error_message,
};
use crate::gateway::dialects::responses::request::ToolNames;
use crate::gateway::dialects::responses::response::{self, id_suffix};
use crate::gateway::transport::sse::SseBuffer;

/// Translates one upstream stream; create one per request.
#[derive(Debug)]
pub struct StreamTranslator {
    /// The `response` object as echoed from the request (no id yet).
    skeleton: Map<String, Value>,
    names: ToolNames,
    /// Used for ids when the engine's chunks carry none.
    fallback_suffix: String,
    suffix: String,
    sequence: u64,
    started: bool,
    ended: bool,
    /// Items closed so far, in output order.
    output: Vec<Value>,
    open: Option<OpenItem>,
    tool_indices_seen: Vec<u64>,
    finish: Option<String>,
    usage: Option<ChatUsage>,
    content_chunks: u64,
    scratch: Vec<u8>,
}

#[derive(Debug)]
enum OpenItem {
    Reasoning { id: String, text: String },
    Message { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String, upstream_index: u64 },
}

impl StreamTranslator {
    /// `skeleton` from [`response::skeleton`] (its id is replaced once the engine's is known);
    /// `fallback_suffix` names the ids when the engine sends none.
    pub fn new(skeleton: Map<String, Value>, names: ToolNames, fallback_suffix: &str) -> Self {
        StreamTranslator {
            skeleton,
            names,
            fallback_suffix: fallback_suffix.to_owned(),
            suffix: fallback_suffix.to_owned(),
            sequence: 0,
            started: false,
            ended: false,
            output: Vec::new(),
            open: None,
            tool_indices_seen: Vec::new(),
            finish: None,
            usage: None,
            content_chunks: 0,
            scratch: Vec::new(),
        }
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// `(prompt, completion)` tokens, once the engine reported usage.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.usage.map(|u| (u.prompt_tokens, u.completion_tokens))
    }

    /// Translates one `data:` payload (a chunk, or `[DONE]`).
    pub fn push(&mut self, data: &str, out: &mut impl SseBuffer) {
        if self.ended {
            return;
        }
        if data.trim() == "[DONE]" {
            match self.finish.is_some() || self.open.is_some() || !self.output.is_empty() {
                true => self.complete(out),
                false => self.fail("the engine ended the stream without any output", out),
            }
            return;
        }
        let result = serde_json::from_str::<ChatChunk<'_>>(data)
            .map_err(|e| format!("malformed stream chunk from the engine: {e}"))
            .and_then(|chunk| self.chunk(&chunk, out));
        if let Err(message) = result {
            self.fail(&message, out);
        }
    }

    /// The end of the upstream body: completes if the engine sent a finish reason, else fails.
    pub fn finish(&mut self, out: &mut impl SseBuffer) {
        if self.ended {
            return;
        }
        if self.finish.is_some() {
            self.complete(out);
        } else {
            self.fail("the engine ended the stream before the response was complete", out);
        }
    }

    /// Ends the stream with `response.failed` (does nothing once ended).
    pub fn fail(&mut self, message: &str, out: &mut impl SseBuffer) {
        if self.ended {
            return;
        }
        self.start(None, out);
        self.close_item(out);
        let mut failed = self.response_now("failed");
        failed.insert("error".into(), json!({"code": "server_error", "message": message}));
        self.write("response.failed", json!({"type": "response.failed", "response": failed}), out);
        self.ended = true;
    }

    fn chunk(&mut self, chunk: &ChatChunk<'_>, out: &mut impl SseBuffer) -> Result<(), String> {
        if let Some(error) = &chunk.error {
            return Err(upstream_error_message(error));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        self.start(chunk.id.as_deref(), out);
        for choice in chunk.choices.iter().flatten().filter(|choice| choice.index == 0) {
            if let Some(delta) = &choice.delta {
                self.delta(delta, out)?;
            }
            if let Some(reason) = choice.finish_reason.as_deref() {
                self.close_item(out);
                self.finish = Some(reason.to_owned());
            }
        }
        Ok(())
    }

    fn delta(&mut self, delta: &Delta<'_>, out: &mut impl SseBuffer) -> Result<(), String> {
        let reasoning = delta.reasoning_content.as_deref().or(delta.reasoning.as_deref());
        let mut produced = false;
        if let Some(text) = reasoning.filter(|text| !text.is_empty()) {
            if !matches!(self.open, Some(OpenItem::Reasoning { .. })) {
                self.close_item(out);
                let id = format!("rs_{}_{}", self.suffix, self.output.len());
                self.open_item(OpenItem::Reasoning { id, text: String::new() }, out);
            }
            self.text_delta("response.reasoning_text.delta", text, out);
            produced = true;
        }
        if let Some(text) = delta.content.as_deref().filter(|text| !text.is_empty()) {
            if !matches!(self.open, Some(OpenItem::Message { .. })) {
                self.close_item(out);
                let id = format!("msg_{}_{}", self.suffix, self.output.len());
                self.open_item(OpenItem::Message { id, text: String::new() }, out);
            }
            self.text_delta("response.output_text.delta", text, out);
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

    fn tool_call_delta(
        &mut self,
        call: &ToolCallDelta<'_>,
        position: u64,
        out: &mut impl SseBuffer,
    ) -> Result<bool, String> {
        let upstream_index = call.index.unwrap_or(position);
        let function = call.function.as_ref();
        let is_open = matches!(&self.open, Some(OpenItem::Call { upstream_index: open, .. }) if *open == upstream_index);
        if !is_open {
            if self.tool_indices_seen.contains(&upstream_index) {
                return Err(format!(
                    "the engine interleaved tool call {upstream_index} with another one; cannot translate"
                ));
            }
            self.tool_indices_seen.push(upstream_index);
            let call_id = match call.id.as_deref() {
                Some(id) if !id.is_empty() => id.to_owned(),
                _ => format!("call_{}_{upstream_index}", self.suffix),
            };
            let name = function.and_then(|f| f.name.as_deref()).unwrap_or("").to_owned();
            self.close_item(out);
            let id = format!("fc_{}_{}", self.suffix, self.output.len());
            self.open_item(
                OpenItem::Call { id, call_id, name, arguments: String::new(), upstream_index },
                out,
            );
        }
        match function.and_then(|f| f.arguments.as_deref()).filter(|text| !text.is_empty()) {
            Some(arguments) => {
                self.text_delta("response.function_call_arguments.delta", arguments, out);
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
        self.suffix = id_suffix(upstream_id, &self.fallback_suffix);
        self.skeleton.insert("id".into(), format!("resp_{}", self.suffix).into());
        let created = Value::Object(self.skeleton.clone());
        self.write("response.created", json!({"type": "response.created", "response": created}), out);
        let progress = Value::Object(self.skeleton.clone());
        self.write(
            "response.in_progress",
            json!({"type": "response.in_progress", "response": progress}),
            out,
        );
    }

    fn open_item(&mut self, item: OpenItem, out: &mut impl SseBuffer) {
        self.close_item(out);
        let index = self.output.len();
        let added = match &item {
            OpenItem::Reasoning { id, .. } => {
                json!({"id": id, "type": "reasoning", "status": "in_progress", "summary": [], "content": []})
            }
            OpenItem::Message { id, .. } => {
                json!({"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []})
            }
            OpenItem::Call { id, call_id, name, .. } => {
                response::function_call_item(id, call_id, name, "", "in_progress", &self.names)
            }
        };
        self.write(
            "response.output_item.added",
            json!({"type": "response.output_item.added", "output_index": index, "item": added}),
            out,
        );
        let part = match &item {
            OpenItem::Reasoning { .. } => Some(json!({"type": "reasoning_text", "text": ""})),
            OpenItem::Message { .. } => Some(response::output_text("")),
            OpenItem::Call { .. } => None,
        };
        if let (Some(part), Some(id)) = (part, item_id(&item)) {
            let added = json!({"type": "response.content_part.added", "item_id": id, "output_index": index, "content_index": 0, "part": part});
            self.write("response.content_part.added", added, out);
        }
        self.open = Some(item);
    }

    fn close_item(&mut self, out: &mut impl SseBuffer) {
        let Some(item) = self.open.take() else { return };
        let index = self.output.len();
        let done = match item {
            OpenItem::Reasoning { id, text } => {
                let part = json!({"type": "reasoning_text", "text": text});
                self.write("response.reasoning_text.done", json!({"type": "response.reasoning_text.done", "item_id": id, "output_index": index, "content_index": 0, "text": text}), out);
                self.write("response.content_part.done", json!({"type": "response.content_part.done", "item_id": id, "output_index": index, "content_index": 0, "part": part}), out);
                response::reasoning_item(&id, &text, "completed")
            }
            OpenItem::Message { id, text } => {
                self.write("response.output_text.done", json!({"type": "response.output_text.done", "item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}), out);
                self.write("response.content_part.done", json!({"type": "response.content_part.done", "item_id": id, "output_index": index, "content_index": 0, "part": response::output_text(&text)}), out);
                response::message_item(&id, &text, "completed")
            }
            OpenItem::Call { id, call_id, name, arguments, .. } => {
                let arguments = if arguments.is_empty() { "{}".to_owned() } else { arguments };
                let (_, bare) = self.names.resolve(&name);
                let done = json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": index, "name": bare, "arguments": arguments});
                self.write("response.function_call_arguments.done", done, out);
                response::function_call_item(&id, &call_id, &name, &arguments, "completed", &self.names)
            }
        };
        self.write(
            "response.output_item.done",
            json!({"type": "response.output_item.done", "output_index": index, "item": done}),
            out,
        );
        self.output.push(done);
    }

    /// The response object now, with `status` and the items closed so far.
    fn response_now(&self, status: &str) -> Map<String, Value> {
        let mut response = self.skeleton.clone();
        response.insert("status".into(), status.into());
        response.insert("output".into(), Value::Array(self.output.clone()));
        response
    }

    fn complete(&mut self, out: &mut impl SseBuffer) {
        self.start(None, out);
        self.close_item(out);
        let mut response = self.response_now("completed");
        response::finish(&mut response, self.finish.as_deref());
        response.insert("usage".into(), response::usage_json(self.usage.as_ref(), self.content_chunks));
        self.write("response.completed", json!({"type": "response.completed", "response": response}), out);
        self.ended = true;
    }

    /// A per-token delta for the open item, formatted by hand (only the text needs escaping),
    /// and the text kept for the item's `.done` events.
    fn text_delta(&mut self, kind: &str, text: &str, out: &mut impl SseBuffer) {
        let index = self.output.len();
        let Some(open) = self.open.as_mut() else { return };
        let (id, kept) = match open {
            OpenItem::Reasoning { id, text } | OpenItem::Message { id, text } => (id.as_str(), text),
            OpenItem::Call { id, arguments, .. } => (id.as_str(), arguments),
        };
        kept.push_str(text);
        let sequence = self.sequence;
        self.sequence += 1;
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{sequence},\"item_id\":"
        );
        let _ = serde_json::to_writer(&mut self.scratch, id);
        let _ = write!(self.scratch, ",\"output_index\":{index},");
        if !kind.starts_with("response.function_call") {
            self.scratch.extend_from_slice(b"\"content_index\":0,");
        }
        if kind == "response.output_text.delta" {
            self.scratch.extend_from_slice(b"\"logprobs\":[],");
        }
        self.scratch.extend_from_slice(b"\"delta\":");
        let _ = serde_json::to_writer(&mut self.scratch, text);
        self.scratch.extend_from_slice(b"}\n\n");
        out.push_str(std::str::from_utf8(&self.scratch).unwrap_or_default());
    }

    fn write(&mut self, kind: &str, mut event: Value, out: &mut impl SseBuffer) {
        event["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        out.push_str("event: ");
        out.push_str(kind);
        out.push_str("\ndata: ");
        out.push_str(&event.to_string());
        out.push_str("\n\n");
    }
}

fn item_id(item: &OpenItem) -> Option<&str> {
    match item {
        OpenItem::Reasoning { id, .. } | OpenItem::Message { id, .. } | OpenItem::Call { id, .. } => Some(id),
    }
}
