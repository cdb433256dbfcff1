//! `scripted-engine`: a test engine that plays a two-turn agent tool loop, launched by the
//! neuron's `command` harness. A turn without a tool result is answered with a call to the
//! agent's file-reading tool (picked by name from the request's tools: Claude Code's `Read`,
//! Codex's `exec_command` or `shell`) on `--file`; a turn carrying a tool result (or offering no
//! known tool) is answered with `--reply` as text. It speaks OpenAI Chat Completions always and,
//! with `--native`, Anthropic Messages and OpenAI Responses too, streamed or not. Every request
//! (path and body) is appended to `--record` as one JSON line, so a test can see what reached it.
//!
//! Usage: `scripted-engine [--host 127.0.0.1] --port P --model ID --file PATH --reply TEXT --record PATH [--native]`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "An OpenAI/Anthropic-compatible engine that plays a scripted agent tool loop")]
struct Args {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long)]
    port: u16,
    /// The model name to answer with.
    #[arg(long, default_value = "scripted")]
    model: String,
    /// The file the first turn asks the agent to read (absolute path).
    #[arg(long)]
    file: PathBuf,
    /// The text of the final answer.
    #[arg(long, default_value = "scripted-engine: done")]
    reply: String,
    /// Where every request is appended as one JSON line `{"path", "body"}`.
    #[arg(long)]
    record: PathBuf,
    /// Also serve `/v1/messages` and `/v1/responses` natively (otherwise they answer 404).
    #[arg(long)]
    native: bool,
}

struct Engine {
    args: Args,
    record: Mutex<std::fs::File>,
    ids: AtomicU64,
}

/// What the engine answers a turn with.
#[derive(Debug, PartialEq)]
enum Turn {
    Tool { name: String, arguments: Value },
    Text(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let record = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.record)
        .with_context(|| format!("cannot open the record file {}", args.record.display()))?;
    let native = args.native;
    let address = (args.host, args.port);
    let engine = std::sync::Arc::new(Engine { args, record: Mutex::new(record), ids: AtomicU64::new(1) });
    let mut app = axum::Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat));
    if native {
        app = app.route("/v1/messages", post(messages)).route("/v1/responses", post(responses));
    }
    let app = app.fallback(unknown).with_state(engine);
    let listener = tokio::net::TcpListener::bind(address).await.context("cannot listen")?;
    axum::serve(listener, app).await.context("server failed")
}

type Shared = State<std::sync::Arc<Engine>>;

impl Engine {
    /// Append the request to the record and parse its body.
    fn record(&self, path: &str, body: &[u8]) -> Value {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let line = json!({"path": path, "body": body});
        if let Ok(mut file) = self.record.lock() {
            // A failed write shows up as a missing request in the test, which then fails.
            let _ = writeln!(file, "{line}").and_then(|()| file.flush());
        }
        body
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.ids.fetch_add(1, Ordering::Relaxed))
    }

    /// The answer to a turn offering tools named `tools`, with or without a tool result.
    fn turn<'a>(&self, tools: impl Iterator<Item = &'a str>, has_result: bool) -> Turn {
        if has_result {
            return Turn::Text(self.args.reply.clone());
        }
        let file = self.args.file.display().to_string();
        let names: Vec<&str> = tools.collect();
        let call = |name: &str, arguments: Value| Turn::Tool { name: name.to_owned(), arguments };
        if names.contains(&"Read") {
            call("Read", json!({"file_path": file}))
        } else if names.contains(&"exec_command") {
            call("exec_command", json!({"cmd": format!("cat {file}")}))
        } else if names.contains(&"shell") {
            call("shell", json!({"command": ["cat", file]}))
        } else {
            Turn::Text(self.args.reply.clone())
        }
    }
}

async fn models(State(engine): Shared) -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": engine.args.model, "object": "model", "owned_by": "scripted"}]}))
        .into_response()
}

async fn unknown(State(engine): Shared, uri: Uri, body: Bytes) -> Response {
    engine.record(uri.path(), &body);
    let error = json!({"error": {"message": format!("no route {}", uri.path()), "type": "not_found"}});
    (StatusCode::NOT_FOUND, axum::Json(error)).into_response()
}

fn sse(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

fn names<'a>(tools: &'a Value, pointer: &'a str) -> impl Iterator<Item = &'a str> {
    tools.as_array().into_iter().flatten().filter_map(move |t| t.pointer(pointer)?.as_str())
}

fn streamed(body: &Value) -> bool {
    body["stream"].as_bool().unwrap_or(false)
}

// ---- OpenAI Chat Completions -------------------------------------------------------------

async fn chat(State(engine): Shared, body: Bytes) -> Response {
    let body = engine.record("/v1/chat/completions", &body);
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    let has_result = messages.iter().any(|m| m["role"] == "tool");
    let turn = engine.turn(names(&body["tools"], "/function/name"), has_result);
    let id = engine.id("chatcmpl-scripted-");
    let model = &engine.args.model;
    let (message, finish) = match &turn {
        Turn::Tool { name, arguments } => {
            let call = json!({"id": engine.id("call_scripted_"), "type": "function",
                              "function": {"name": name, "arguments": arguments.to_string()}});
            (json!({"role": "assistant", "content": null, "tool_calls": [call]}), "tool_calls")
        }
        Turn::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
    };
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
    if !streamed(&body) {
        return axum::Json(json!({"id": id, "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        let chunk = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    };
    let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    match &turn {
        Turn::Tool { .. } => {
            let call = &message["tool_calls"][0];
            let head = json!({"index": 0, "id": call["id"], "type": "function",
                              "function": {"name": call["function"]["name"], "arguments": ""}});
            out += &chunk(json!({"tool_calls": [head]}), Value::Null);
            let rest = json!({"index": 0, "function": {"arguments": call["function"]["arguments"]}});
            out += &chunk(json!({"tool_calls": [rest]}), Value::Null);
        }
        Turn::Text(text) => out += &chunk(json!({"content": text}), Value::Null),
    }
    out += &chunk(json!({}), json!(finish));
    if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
        let tail = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                          "choices": [], "usage": usage});
        out += &format!("data: {tail}\n\n");
    }
    out += "data: [DONE]\n\n";
    sse(out)
}

// ---- Anthropic Messages ------------------------------------------------------------------

async fn messages(State(engine): Shared, uri: Uri, body: Bytes) -> Response {
    let body = engine.record(&uri.to_string(), &body);
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    let has_result = messages
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .any(|block| block["type"] == "tool_result");
    let turn = engine.turn(names(&body["tools"], "/name"), has_result);
    let (block, stop) = match &turn {
        Turn::Tool { name, arguments } => (
            json!({"type": "tool_use", "id": engine.id("toolu_scripted_"), "name": name, "input": arguments}),
            "tool_use",
        ),
        Turn::Text(text) => (json!({"type": "text", "text": text}), "end_turn"),
    };
    let message = json!({"id": engine.id("msg_scripted_"), "type": "message", "role": "assistant",
        "model": engine.args.model, "content": [block], "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5}});
    if !streamed(&body) {
        return axum::Json(message).into_response();
    }
    let event = |kind: &str, data: Value| format!("event: {kind}\ndata: {data}\n\n");
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    let mut out = event("message_start", json!({"type": "message_start", "message": start}));
    let (empty, delta) = match &turn {
        Turn::Tool { arguments, .. } => {
            let mut empty = block.clone();
            empty["input"] = json!({});
            (empty, json!({"type": "input_json_delta", "partial_json": arguments.to_string()}))
        }
        Turn::Text(text) => {
            (json!({"type": "text", "text": ""}), json!({"type": "text_delta", "text": text}))
        }
    };
    out += &event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": empty}),
    );
    out += &event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": delta}));
    out += &event("content_block_stop", json!({"type": "content_block_stop", "index": 0}));
    out += &event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}),
    );
    out += &event("message_stop", json!({"type": "message_stop"}));
    sse(out)
}

// ---- OpenAI Responses --------------------------------------------------------------------

async fn responses(State(engine): Shared, body: Bytes) -> Response {
    let body = engine.record("/v1/responses", &body);
    let input = body["input"].as_array().map_or(&[][..], Vec::as_slice);
    let has_result = input.iter().any(|item| item["type"] == "function_call_output");
    let turn = engine.turn(names(&body["tools"], "/name"), has_result);
    let item = match &turn {
        Turn::Tool { name, arguments } => json!({"type": "function_call", "id": engine.id("fc_scripted_"),
            "call_id": engine.id("call_scripted_"), "name": name, "arguments": arguments.to_string(),
            "status": "completed"}),
        Turn::Text(text) => json!({"type": "message", "id": engine.id("msg_scripted_"), "role": "assistant",
            "status": "completed", "content": [{"type": "output_text", "text": text, "annotations": []}]}),
    };
    let usage = json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
                       "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15});
    let response = json!({"id": engine.id("resp_scripted_"), "object": "response", "created_at": 0,
        "status": "completed", "model": engine.args.model, "output": [item], "usage": usage,
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": []});
    if !streamed(&body) {
        return axum::Json(response).into_response();
    }
    sse(response_events(&turn, &response))
}

/// The streamed event sequence of a one-item `response`.
fn response_events(turn: &Turn, response: &Value) -> String {
    let mut sequence = 0;
    let mut out = String::new();
    let mut event = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(sequence);
        sequence += 1;
        out += &format!("event: {kind}\ndata: {data}\n\n");
    };
    let item = &response["output"][0];
    let item_id = &item["id"];
    let mut pending = response.clone();
    pending["status"] = json!("in_progress");
    pending["output"] = json!([]);
    pending["usage"] = Value::Null;
    event("response.created", json!({"response": pending}));
    event("response.in_progress", json!({"response": pending}));
    let mut opened = item.clone();
    opened["status"] = json!("in_progress");
    let at = json!({"item_id": item_id, "output_index": 0});
    let with = |extra: Value| {
        let mut data = at.clone();
        data.as_object_mut()
            .into_iter()
            .for_each(|o| o.extend(extra.as_object().cloned().unwrap_or_default()));
        data
    };
    match turn {
        Turn::Tool { arguments, .. } => {
            opened["arguments"] = json!("");
            event("response.output_item.added", json!({"output_index": 0, "item": opened}));
            event("response.function_call_arguments.delta", with(json!({"delta": arguments.to_string()})));
            event("response.function_call_arguments.done", with(json!({"arguments": arguments.to_string()})));
        }
        Turn::Text(text) => {
            opened["content"] = json!([]);
            event("response.output_item.added", json!({"output_index": 0, "item": opened}));
            let part = json!({"type": "output_text", "text": "", "annotations": []});
            event("response.content_part.added", with(json!({"content_index": 0, "part": part})));
            event(
                "response.output_text.delta",
                with(json!({"content_index": 0, "delta": text, "logprobs": []})),
            );
            event(
                "response.output_text.done",
                with(json!({"content_index": 0, "text": text, "logprobs": []})),
            );
            event(
                "response.content_part.done",
                with(json!({"content_index": 0, "part": item["content"][0]})),
            );
        }
    }
    event("response.output_item.done", json!({"output_index": 0, "item": item}));
    event("response.completed", json!({"response": response}));
    out
}
