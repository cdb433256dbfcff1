//! Chat Completions stream → Responses stream: the Responses writer of the one walk over a Chat
//! Completions stream (`dialects::chat::stream`), fed one `data:` payload at a time.
//!
//! The event sequence is the one the openai SDK's `responses.stream()` accumulates and Codex
//! parses: `response.created`, `response.in_progress`, then per output item
//! `response.output_item.added`, its content events, `response.output_item.done`; finally
//! `response.completed` with every item and the usage. Every event carries a `sequence_number`
//! counting from 0, and is sent with its `event:` name.
//!
//! - Items are the walk's blocks (reasoning → `reasoning` item with
//!   `response.reasoning_text.delta`; content → `message` item with one `output_text` part and
//!   `response.output_text.delta`; each upstream tool-call index → a `function_call` item with
//!   `response.function_call_arguments.delta`), each closed once with its `.done` events.
//!   Output indices count from 0.
//! - A `length` finish at the client's own `max_output_tokens` ends with `response.completed`
//!   whose status is `incomplete` (`incomplete_details.reason = "max_output_tokens"`): Codex
//!   fails a turn on a `response.incomplete` event. A `length` finish at the fleet's output cap
//!   (below the client's limit, see [`StreamTranslator::cap_binds`]) is `completed`: the
//!   operator's limit must not cost an agent its turn.
//! - An upstream error chunk, a malformed chunk, a tool call interleaved with a closed one, or
//!   the end of the stream before a finish reason (or a `[DONE]` without any output) ends the
//!   stream with `response.failed` (status `failed`, `error.code = "server_error"`), inside the
//!   started response; nothing is written after it.

use std::io::Write as _;

use serde_json::{Map, Value, json};

use crate::gateway::dialects::chat::stream::{Block, ChatStream, Finish, Open, Seen, Writer};
use crate::gateway::dialects::responses::request::ToolNames;
use crate::gateway::dialects::responses::response::{self, id_suffix};
use crate::gateway::transport::sse::SseBuffer;

/// Translates one upstream stream into Responses events: the walk with the Responses writer.
pub type StreamTranslator = ChatStream<Responses>;

impl ChatStream<Responses> {
    /// `skeleton` from [`response::skeleton`] (its id is replaced once the engine's is known);
    /// `fallback_suffix` names the ids when the engine sends none.
    pub fn new(skeleton: Map<String, Value>, names: ToolNames, fallback_suffix: &str) -> Self {
        ChatStream::with_writer(Responses {
            skeleton,
            names,
            fallback_suffix: fallback_suffix.to_owned(),
            suffix: fallback_suffix.to_owned(),
            sequence: 0,
            output: Vec::new(),
            open: None,
            scratch: Vec::new(),
            cap_binds: false,
        })
    }

    /// Marks that the fleet's output cap is below the client's own limit: the engine stopping
    /// at it is a natural end (`completed`), not a cut answer.
    pub fn cap_binds(mut self, binds: bool) -> Self {
        self.writer_mut().cap_binds = binds;
        self
    }
}

/// The Responses side of the walk.
#[derive(Debug)]
pub struct Responses {
    /// The `response` object as echoed from the request (no id yet).
    skeleton: Map<String, Value>,
    names: ToolNames,
    /// Used for ids when the engine's chunks carry none.
    fallback_suffix: String,
    suffix: String,
    sequence: u64,
    /// Items closed so far, in output order.
    output: Vec<Value>,
    open: Option<OpenItem>,
    scratch: Vec<u8>,
    /// The fleet's cap, not the client's limit, bounds the answer.
    cap_binds: bool,
}

#[derive(Debug)]
enum OpenItem {
    Reasoning { id: String, text: String },
    Message { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String },
}

impl Writer for Responses {
    const FAILURE_INSIDE_ANSWER: bool = true;
    const CUT_SHORT: &'static str = "the engine ended the stream before the response was complete";
    const EMPTY_DONE: Option<&'static str> = Some("the engine ended the stream without any output");

    fn start(&mut self, upstream_id: Option<&str>, _seen: &Seen, out: &mut impl SseBuffer) {
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

    fn open(&mut self, block: Block<'_>, out: &mut impl SseBuffer) {
        let (suffix, index) = (&self.suffix, self.output.len());
        let item = match block {
            Block::Reasoning => {
                OpenItem::Reasoning { id: format!("rs_{suffix}_{index}"), text: String::new() }
            }
            Block::Text => OpenItem::Message { id: format!("msg_{suffix}_{index}"), text: String::new() },
            Block::ToolCall { upstream_index, id, name } => OpenItem::Call {
                id: format!("fc_{suffix}_{index}"),
                call_id: id.map_or_else(|| format!("call_{suffix}_{upstream_index}"), str::to_owned),
                name: name.to_owned(),
                arguments: String::new(),
            },
        };
        self.open_item(item, out);
    }

    fn delta(&mut self, open: Open, text: &str, out: &mut impl SseBuffer) {
        let kind = match open {
            Open::Reasoning => "response.reasoning_text.delta",
            Open::Text => "response.output_text.delta",
            Open::ToolCall { .. } => "response.function_call_arguments.delta",
        };
        self.text_delta(kind, text, out);
    }

    fn close(&mut self, _open: Open, out: &mut impl SseBuffer) {
        self.close_item(out);
    }

    fn complete(&mut self, finish: Option<Finish>, seen: &Seen, out: &mut impl SseBuffer) {
        let mut response = self.response_now("completed");
        let reason = finish.as_ref().map(|finish| finish.reason.as_str());
        response::finish(&mut response, reason.filter(|reason| !(self.cap_binds && *reason == "length")));
        response.insert("usage".into(), response::usage_json(seen.usage.as_ref(), seen.content_chunks));
        self.write("response.completed", json!({"type": "response.completed", "response": response}), out);
    }

    fn fail(&mut self, message: &str, out: &mut impl SseBuffer) {
        let mut failed = self.response_now("failed");
        failed.insert("error".into(), json!({"code": "server_error", "message": message}));
        self.write("response.failed", json!({"type": "response.failed", "response": failed}), out);
    }
}

impl Responses {
    fn open_item(&mut self, item: OpenItem, out: &mut impl SseBuffer) {
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
