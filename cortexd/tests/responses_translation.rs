//! Golden tests of the OpenAI Responses translation (request → Chat Completions, answer and
//! stream → Responses), and a property test that every translated stream satisfies the rules
//! the openai SDK's `responses.stream()` enforces (openai/lib/streaming/responses/_responses.py).
#![expect(clippy::unwrap_used, reason = "a test should stop at the first surprise")]

use std::collections::BTreeMap;

use cortexd::responses::StreamTranslator;
use cortexd::responses::{ToolNames, request_to_chat};
use cortexd::responses::{chat_to_response, skeleton};
use cortexd::sse::{self, SseParser};
use expect_test::{Expect, expect};
use proptest::prelude::*;
use serde_json::{Value, json};

fn check_request(request: Value, expect: Expect) {
    let rendered = match request_to_chat(&request) {
        Ok(translated) => serde_json::to_string_pretty(&translated.chat).unwrap(),
        Err(error) => format!("error ({}): {error}", error.status().as_u16()),
    };
    expect.assert_eq(&format!("{rendered}\n"));
}

fn names_for(request: &Value) -> ToolNames {
    request_to_chat(request).unwrap().names
}

/// Runs an upstream Chat Completions SSE body through the parser and the translator.
fn translate(request: &Value, upstream: &str) -> String {
    let mut translator = StreamTranslator::new(
        skeleton(request, "", "m-alias", 1_700_000_000),
        names_for(request),
        "fallback",
    );
    let mut out = String::new();
    let mut parser = SseParser::new();
    let mut on_event = |event: sse::SseEvent<'_>| -> Result<(), ()> {
        let _ = translator.push(event.data, &mut out);
        Ok(())
    };
    parser.feed(upstream.as_bytes(), &mut on_event).unwrap();
    parser.finish(&mut on_event).unwrap();
    let _ = translator.finish(&mut out);
    out
}

/// One line per event: its type and the fields that tell events apart.
fn summarise(stream: &str) -> String {
    let mut lines = String::new();
    let mut parser = SseParser::new();
    let _ = parser.feed(stream.as_bytes(), |event| -> Result<(), ()> {
        let data: Value = serde_json::from_str(event.data).unwrap();
        assert_eq!(data["type"].as_str(), Some(event.event), "event name and type agree");
        let mut line = format!("{} #{}", event.event, data["sequence_number"]);
        for key in ["output_index", "item_id", "delta", "text", "arguments", "name"] {
            if let Some(value) = data.get(key) {
                line.push_str(&format!(" {key}={value}"));
            }
        }
        if let Some(item) = data.get("item") {
            line.push_str(&format!(" item={item}"));
        }
        if let Some(response) = data.get("response") {
            let brief = json!({"id": response["id"], "status": response["status"], "output": response["output"],
                "usage": response["usage"], "error": response["error"], "incomplete_details": response["incomplete_details"]});
            line.push_str(&format!(" response={brief}"));
        }
        lines.push_str(&line);
        lines.push('\n');
        Ok(())
    });
    lines
}

fn check_stream(request: &Value, upstream: &str, expect: Expect) {
    let out = translate(request, upstream);
    if let Err(broken) = sdk_accepts(&out) {
        panic!("the SDK's rules reject the stream: {broken}\n{out}");
    }
    expect.assert_eq(&summarise(&out));
}

/// The Codex request shape, with a history of a namespace tool call and its output.
fn codex_with_history() -> Value {
    json!({
        "model": "m",
        "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "perms"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "shell_command", "arguments": "{\"command\":\"ls\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "spawn_agent", "namespace": "multi_agent_v1", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt\nb.txt"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "spawned"}]},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"role": "user", "content": "thanks"}
        ],
        "tools": [
            {"type": "function", "name": "shell_command", "description": "Run", "strict": false, "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}},
            {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}]},
            {"type": "web_search"},
            {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}}
        ],
        "tool_choice": {"type": "function", "name": "spawn_agent", "namespace": "multi_agent_v1"},
        "parallel_tool_calls": false,
        "reasoning": {"effort": "xhigh", "summary": "auto"},
        "max_output_tokens": 256,
        "temperature": 0.2,
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true}, "verbosity": "low"},
        "store": false,
        "stream": true,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "k",
        "client_metadata": {"x": "y"}
    })
}

#[test]
fn codex_history_translates_to_chat() {
    check_request(
        codex_with_history(),
        expect![[r#"
            {
              "max_tokens": 256,
              "messages": [
                {
                  "content": "You are Codex.\n\nperms",
                  "role": "system"
                },
                {
                  "content": [
                    {
                      "text": "list files",
                      "type": "text"
                    },
                    {
                      "image_url": {
                        "url": "data:image/png;base64,AAAA"
                      },
                      "type": "image_url"
                    }
                  ],
                  "role": "user"
                },
                {
                  "content": "Looking.",
                  "role": "assistant",
                  "tool_calls": [
                    {
                      "function": {
                        "arguments": "{\"command\":\"ls\"}",
                        "name": "shell_command"
                      },
                      "id": "call_1",
                      "type": "function"
                    },
                    {
                      "function": {
                        "arguments": "{}",
                        "name": "multi_agent_v1__spawn_agent"
                      },
                      "id": "call_2",
                      "type": "function"
                    }
                  ]
                },
                {
                  "content": "a.txt\nb.txt",
                  "role": "tool",
                  "tool_call_id": "call_1"
                },
                {
                  "content": "spawned",
                  "role": "tool",
                  "tool_call_id": "call_2"
                },
                {
                  "content": "thanks",
                  "role": "user"
                }
              ],
              "model": "m",
              "parallel_tool_calls": false,
              "reasoning_effort": "high",
              "response_format": {
                "json_schema": {
                  "name": "answer",
                  "schema": {
                    "type": "object"
                  },
                  "strict": true
                },
                "type": "json_schema"
              },
              "stream": true,
              "stream_options": {
                "include_usage": true
              },
              "temperature": 0.2,
              "tool_choice": {
                "function": {
                  "name": "multi_agent_v1__spawn_agent"
                },
                "type": "function"
              },
              "tools": [
                {
                  "function": {
                    "description": "Run",
                    "name": "shell_command",
                    "parameters": {
                      "properties": {
                        "command": {
                          "type": "string"
                        }
                      },
                      "type": "object"
                    }
                  },
                  "type": "function"
                },
                {
                  "function": {
                    "name": "multi_agent_v1__spawn_agent",
                    "parameters": {
                      "type": "object"
                    }
                  },
                  "type": "function"
                }
              ]
            }
        "#]],
    );
}

#[test]
fn string_input_and_refusals() {
    check_request(
        json!({"model": "m", "input": "hello", "reasoning": {"effort": "none"}}),
        expect![[r#"
            {
              "chat_template_kwargs": {
                "enable_thinking": false
              },
              "messages": [
                {
                  "content": "hello",
                  "role": "user"
                }
              ],
              "model": "m"
            }
        "#]],
    );
    check_request(
        json!({"model": "m", "input": 7}),
        expect![[r#"
        error (400): input: must be a string or an array of items
    "#]],
    );
    check_request(
        json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
        expect![[r#"
        error (400): input.0: item_reference needs stored responses, which this engine does not keep; send the items themselves
    "#]],
    );
    check_request(
        json!({"model": "m", "input": [{"role": "critic", "content": "x"}]}),
        expect![[r#"
        error (400): input.0.role: must be "user", "assistant", "system" or "developer"
    "#]],
    );
    check_request(
        json!({"model": "m", "input": "x", "max_output_tokens": 0}),
        expect![[r#"
        error (400): max_output_tokens: must be an integer of at least 1
    "#]],
    );
}

#[test]
fn a_complete_answer_with_a_namespace_call_maps_back() {
    let request = codex_with_history();
    let chat = json!({"id": "chatcmpl-abc", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Spawning.",
            "reasoning_content": "think", "tool_calls": [{"id": "call_9", "type": "function",
            "function": {"name": "multi_agent_v1__spawn_agent", "arguments": "{\"task\":\"x\"}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4}}});
    let names = names_for(&request);
    let response =
        chat_to_response(&chat, |id| skeleton(&request, id, "m-alias", 1_700_000_000), &names, false)
            .unwrap();
    let brief = json!({"id": response["id"], "object": response["object"], "status": response["status"], "model": response["model"],
        "output": response["output"], "usage": response["usage"], "store": response["store"], "tool_choice": response["tool_choice"]});
    expect![[r#"
        {
          "id": "resp_abc",
          "model": "m-alias",
          "object": "response",
          "output": [
            {
              "content": [
                {
                  "text": "think",
                  "type": "reasoning_text"
                }
              ],
              "id": "rs_abc",
              "status": "completed",
              "summary": [],
              "type": "reasoning"
            },
            {
              "content": [
                {
                  "annotations": [],
                  "logprobs": [],
                  "text": "Spawning.",
                  "type": "output_text"
                }
              ],
              "id": "msg_abc",
              "role": "assistant",
              "status": "completed",
              "type": "message"
            },
            {
              "arguments": "{\"task\":\"x\"}",
              "call_id": "call_9",
              "id": "fc_abc_0",
              "name": "spawn_agent",
              "namespace": "multi_agent_v1",
              "status": "completed",
              "type": "function_call"
            }
          ],
          "status": "completed",
          "store": false,
          "tool_choice": {
            "name": "spawn_agent",
            "namespace": "multi_agent_v1",
            "type": "function"
          },
          "usage": {
            "input_tokens": 10,
            "input_tokens_details": {
              "cache_write_tokens": 0,
              "cached_tokens": 4
            },
            "output_tokens": 5,
            "output_tokens_details": {
              "reasoning_tokens": 0
            },
            "total_tokens": 15
          }
        }
    "#]]
    .assert_eq(&format!("{}\n", serde_json::to_string_pretty(&brief).unwrap()));
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let chunk = json!({"id": "chatcmpl-s1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {chunk}\n\n")
}

const USAGE: &str = "data: {\"id\":\"chatcmpl-s1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7}}\n\n";

#[test]
fn a_stream_of_reasoning_text_and_a_tool_call() {
    let request = codex_with_history();
    let upstream = [
        chunk(json!({"role": "assistant", "reasoning_content": "hm"}), None),
        chunk(json!({"content": "Hi"}), None),
        chunk(json!({"content": " there"}), None),
        chunk(json!({"tool_calls": [{"index": 0, "id": "call_7", "type": "function", "function": {"name": "multi_agent_v1__spawn_agent", "arguments": "{\"a\""}}]}), None),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}), None),
        chunk(json!({}), Some("tool_calls")),
        USAGE.to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    check_stream(
        &request,
        &upstream,
        expect![[r#"
            response.created #0 response={"error":null,"id":"resp_s1","incomplete_details":null,"output":[],"status":"in_progress","usage":null}
            response.in_progress #1 response={"error":null,"id":"resp_s1","incomplete_details":null,"output":[],"status":"in_progress","usage":null}
            response.output_item.added #2 output_index=0 item={"content":[],"id":"rs_s1_0","status":"in_progress","summary":[],"type":"reasoning"}
            response.content_part.added #3 output_index=0 item_id="rs_s1_0"
            response.reasoning_text.delta #4 output_index=0 item_id="rs_s1_0" delta="hm"
            response.reasoning_text.done #5 output_index=0 item_id="rs_s1_0" text="hm"
            response.content_part.done #6 output_index=0 item_id="rs_s1_0"
            response.output_item.done #7 output_index=0 item={"content":[{"text":"hm","type":"reasoning_text"}],"id":"rs_s1_0","status":"completed","summary":[],"type":"reasoning"}
            response.output_item.added #8 output_index=1 item={"content":[],"id":"msg_s1_1","role":"assistant","status":"in_progress","type":"message"}
            response.content_part.added #9 output_index=1 item_id="msg_s1_1"
            response.output_text.delta #10 output_index=1 item_id="msg_s1_1" delta="Hi"
            response.output_text.delta #11 output_index=1 item_id="msg_s1_1" delta=" there"
            response.output_text.done #12 output_index=1 item_id="msg_s1_1" text="Hi there"
            response.content_part.done #13 output_index=1 item_id="msg_s1_1"
            response.output_item.done #14 output_index=1 item={"content":[{"annotations":[],"logprobs":[],"text":"Hi there","type":"output_text"}],"id":"msg_s1_1","role":"assistant","status":"completed","type":"message"}
            response.output_item.added #15 output_index=2 item={"arguments":"","call_id":"call_7","id":"fc_s1_2","name":"spawn_agent","namespace":"multi_agent_v1","status":"in_progress","type":"function_call"}
            response.function_call_arguments.delta #16 output_index=2 item_id="fc_s1_2" delta="{\"a\""
            response.function_call_arguments.delta #17 output_index=2 item_id="fc_s1_2" delta=":1}"
            response.function_call_arguments.done #18 output_index=2 item_id="fc_s1_2" arguments="{\"a\":1}" name="spawn_agent"
            response.output_item.done #19 output_index=2 item={"arguments":"{\"a\":1}","call_id":"call_7","id":"fc_s1_2","name":"spawn_agent","namespace":"multi_agent_v1","status":"completed","type":"function_call"}
            response.completed #20 response={"error":null,"id":"resp_s1","incomplete_details":null,"output":[{"content":[{"text":"hm","type":"reasoning_text"}],"id":"rs_s1_0","status":"completed","summary":[],"type":"reasoning"},{"content":[{"annotations":[],"logprobs":[],"text":"Hi there","type":"output_text"}],"id":"msg_s1_1","role":"assistant","status":"completed","type":"message"},{"arguments":"{\"a\":1}","call_id":"call_7","id":"fc_s1_2","name":"spawn_agent","namespace":"multi_agent_v1","status":"completed","type":"function_call"}],"status":"completed","usage":{"input_tokens":12,"input_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":19}}
        "#]],
    );
}

#[test]
fn a_length_finish_completes_as_incomplete_and_a_break_fails() {
    let request = json!({"model": "m", "input": "x", "stream": true});
    let upstream = [chunk(json!({"content": "cut"}), Some("length")), "data: [DONE]\n\n".to_owned()].concat();
    check_stream(
        &request,
        &upstream,
        expect![[r#"
            response.created #0 response={"error":null,"id":"resp_s1","incomplete_details":null,"output":[],"status":"in_progress","usage":null}
            response.in_progress #1 response={"error":null,"id":"resp_s1","incomplete_details":null,"output":[],"status":"in_progress","usage":null}
            response.output_item.added #2 output_index=0 item={"content":[],"id":"msg_s1_0","role":"assistant","status":"in_progress","type":"message"}
            response.content_part.added #3 output_index=0 item_id="msg_s1_0"
            response.output_text.delta #4 output_index=0 item_id="msg_s1_0" delta="cut"
            response.output_text.done #5 output_index=0 item_id="msg_s1_0" text="cut"
            response.content_part.done #6 output_index=0 item_id="msg_s1_0"
            response.output_item.done #7 output_index=0 item={"content":[{"annotations":[],"logprobs":[],"text":"cut","type":"output_text"}],"id":"msg_s1_0","role":"assistant","status":"completed","type":"message"}
            response.completed #8 response={"error":null,"id":"resp_s1","incomplete_details":{"reason":"max_output_tokens"},"output":[{"content":[{"annotations":[],"logprobs":[],"text":"cut","type":"output_text"}],"id":"msg_s1_0","role":"assistant","status":"completed","type":"message"}],"status":"incomplete","usage":{"input_tokens":0,"input_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"output_tokens":1,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":1}}
        "#]],
    );
    let broken = chunk(json!({"content": "par"}), None);
    check_stream(
        &request,
        &broken,
        expect![[r#"
            response.created #0 response={"error":null,"id":"resp_s1","incomplete_details":null,"output":[],"status":"in_progress","usage":null}
            response.in_progress #1 response={"error":null,"id":"resp_s1","incomplete_details":null,"output":[],"status":"in_progress","usage":null}
            response.output_item.added #2 output_index=0 item={"content":[],"id":"msg_s1_0","role":"assistant","status":"in_progress","type":"message"}
            response.content_part.added #3 output_index=0 item_id="msg_s1_0"
            response.output_text.delta #4 output_index=0 item_id="msg_s1_0" delta="par"
            response.output_text.done #5 output_index=0 item_id="msg_s1_0" text="par"
            response.content_part.done #6 output_index=0 item_id="msg_s1_0"
            response.output_item.done #7 output_index=0 item={"content":[{"annotations":[],"logprobs":[],"text":"par","type":"output_text"}],"id":"msg_s1_0","role":"assistant","status":"completed","type":"message"}
            response.failed #8 response={"error":{"code":"server_error","message":"the engine ended the stream before the response was complete"},"id":"resp_s1","incomplete_details":null,"output":[{"content":[{"annotations":[],"logprobs":[],"text":"par","type":"output_text"}],"id":"msg_s1_0","role":"assistant","status":"completed","type":"message"}],"status":"failed","usage":null}
        "#]],
    );
    let error = "data: {\"error\":{\"message\":\"engine fell over\"}}\n\n";
    let out = translate(&request, error);
    assert!(sdk_accepts(&out).is_ok(), "{out}");
    assert!(out.contains("response.failed") && out.contains("engine fell over"), "{out}");
}

/// The rules of the openai SDK's stream accumulator (`ResponseStreamState`) plus the ones its
/// callers rely on: `response.created` first; sequence numbers 0, 1, 2…; an item's events only
/// between its `output_item.added` and `output_item.done`, text deltas only for a message with
/// that content part, argument deltas only for a function call; output indices unique;
/// the stream ends in exactly one `response.completed` (whose output is every done item, in
/// order, with no item left open) or `response.failed`, and nothing follows it.
fn sdk_accepts(stream: &str) -> Result<(), String> {
    let mut events = Vec::new();
    let mut parser = SseParser::new();
    let mut collect = |event: sse::SseEvent<'_>| -> Result<(), ()> {
        events.push((event.event.to_owned(), event.data.to_owned()));
        Ok(())
    };
    let _ = parser.feed(stream.as_bytes(), &mut collect);
    let _ = parser.finish(&mut collect);
    let mut open: BTreeMap<u64, (String, String, bool)> = BTreeMap::new();
    let mut done: BTreeMap<u64, Value> = BTreeMap::new();
    let mut id = None;
    let mut ended = false;
    for (position, (name, data)) in events.iter().enumerate() {
        let event: Value =
            serde_json::from_str(data).map_err(|e| format!("event {position} is not JSON: {e}"))?;
        let kind = event["type"].as_str().ok_or(format!("event {position} has no type"))?;
        if kind != name {
            return Err(format!("event {position}: name {name} but type {kind}"));
        }
        if ended {
            return Err(format!("{kind} after the end"));
        }
        if event["sequence_number"].as_u64() != Some(position as u64) {
            return Err(format!(
                "event {position} ({kind}) has sequence_number {}",
                event["sequence_number"]
            ));
        }
        if position == 0 && kind != "response.created" {
            return Err(format!("first event is {kind}"));
        }
        let index = event["output_index"].as_u64();
        match kind {
            "response.created" | "response.in_progress" => {
                let this = event["response"]["id"].as_str().map(str::to_owned);
                if id.is_some() && id != this {
                    return Err("lifecycle response identity changed".into());
                }
                id = this;
            }
            "response.output_item.added" => {
                let index = index.ok_or("added without output_index")?;
                if open.contains_key(&index) || done.contains_key(&index) {
                    return Err(format!("duplicate output index {index}"));
                }
                let item = &event["item"];
                let (item_type, item_id) =
                    (item["type"].as_str().unwrap_or(""), item["id"].as_str().unwrap_or(""));
                open.insert(index, (item_type.to_owned(), item_id.to_owned(), false));
            }
            "response.content_part.added" => {
                let entry = open
                    .get_mut(&index.ok_or("part without index")?)
                    .ok_or("content part for an item not open")?;
                entry.2 = true;
            }
            "response.output_text.delta"
            | "response.output_text.done"
            | "response.reasoning_text.delta"
            | "response.reasoning_text.done"
            | "response.content_part.done" => {
                let (item_type, item_id, has_part) = open
                    .get(&index.ok_or("delta without index")?)
                    .ok_or(format!("{kind} for an item not open"))?;
                let wanted = if kind.contains("reasoning") {
                    "reasoning"
                } else if kind.contains("output_text") {
                    "message"
                } else {
                    item_type.as_str()
                };
                if item_type != wanted || !has_part || event["item_id"].as_str() != Some(item_id) {
                    return Err(format!("{kind} does not fit item {item_type} {item_id}"));
                }
                if kind.starts_with("response.output_text") && !event["logprobs"].is_array() {
                    return Err(format!("{kind} without logprobs"));
                }
            }
            "response.function_call_arguments.delta" | "response.function_call_arguments.done" => {
                let (item_type, item_id, _) = open
                    .get(&index.ok_or("delta without index")?)
                    .ok_or(format!("{kind} for an item not open"))?;
                if item_type != "function_call" || event["item_id"].as_str() != Some(item_id) {
                    return Err(format!("{kind} does not fit item {item_type}"));
                }
            }
            "response.output_item.done" => {
                let index = index.ok_or("done without index")?;
                let (item_type, item_id, _) =
                    open.remove(&index).ok_or(format!("item {index} done but not open"))?;
                let item = &event["item"];
                if item["type"].as_str() != Some(&item_type) || item["id"].as_str() != Some(&item_id) {
                    return Err("completed output item identity changed".into());
                }
                done.insert(index, item.clone());
            }
            "response.completed" => {
                if !open.is_empty() {
                    return Err("cannot complete response with unfinished output items".into());
                }
                let output: Vec<Value> = done.values().cloned().collect();
                if event["response"]["output"] != Value::Array(output) {
                    return Err("completed output differs from the done items".into());
                }
                if event["response"]["id"].as_str().map(str::to_owned) != id {
                    return Err("completed response identity changed".into());
                }
                let usage = &event["response"]["usage"];
                if !(usage["input_tokens"].is_u64()
                    && usage["output_tokens"].is_u64()
                    && usage["total_tokens"].is_u64())
                {
                    return Err(format!("completed without usage: {usage}"));
                }
                ended = true;
            }
            "response.failed" => {
                if event["response"]["error"]["message"].as_str().is_none() {
                    return Err("failed without an error message".into());
                }
                ended = true;
            }
            other => return Err(format!("unexpected event {other}")),
        }
    }
    if ended { Ok(()) } else { Err("the stream ended without response.completed or response.failed".into()) }
}

/// One upstream step the property test may generate.
#[derive(Clone, Debug)]
enum Step {
    Reasoning(String),
    Text(String),
    Tool { index: u64, name: bool, arguments: String },
    Finish(&'static str),
    Usage,
    Error,
    Garbage,
    Done,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => "[a-z \"\\\\é]{0,6}".prop_map(Step::Reasoning),
        5 => "[a-z \"\\\\é]{0,6}".prop_map(Step::Text),
        4 => (0..3u64, any::<bool>(), "[{}a:\"]{0,5}").prop_map(|(index, name, arguments)| Step::Tool { index, name, arguments }),
        1 => prop_oneof![Just("stop"), Just("length"), Just("tool_calls")].prop_map(Step::Finish),
        1 => Just(Step::Usage),
        1 => Just(Step::Error),
        1 => Just(Step::Garbage),
        1 => Just(Step::Done),
    ]
}

fn render(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|step| match step {
            Step::Reasoning(text) => chunk(json!({"reasoning_content": text}), None),
            Step::Text(text) => chunk(json!({"content": text}), None),
            Step::Tool { index, name, arguments } => {
                let mut function = json!({"arguments": arguments});
                if *name {
                    function["name"] = json!(format!("tool{index}"));
                }
                chunk(json!({"tool_calls": [{"index": index, "id": format!("call_{index}"), "function": function}]}), None)
            }
            Step::Finish(reason) => chunk(json!({}), Some(reason)),
            Step::Usage => USAGE.to_owned(),
            Step::Error => "data: {\"error\":{\"message\":\"boom\"}}\n\n".to_owned(),
            Step::Garbage => "data: {not json\n\n".to_owned(),
            Step::Done => "data: [DONE]\n\n".to_owned(),
        })
        .collect()
}

proptest! {
    #[test]
    fn every_translated_stream_is_one_the_sdk_accepts(steps in proptest::collection::vec(step(), 0..14)) {
        let request = json!({"model": "m", "input": "x", "stream": true});
        let out = translate(&request, &render(&steps));
        prop_assert!(sdk_accepts(&out).is_ok(), "{:?}\n{}", sdk_accepts(&out), out);
    }
}
