//! Golden tests of the streaming path: SSE parsing, OpenAI stream → Anthropic stream, native pass-through fixes.
//!
//! Every translated stream is also checked by `strict_client`, which implements the rules the
//! official anthropic SDK and Claude Code rely on.
#![expect(clippy::unwrap_used, reason = "a test should stop at the first surprise")]

use cortexd::EventTransform;
use cortexd::Translate;
use cortexd::anthropic::{StreamTranslator, fix_native_event, fix_native_raw_event};
use cortexd::sse::{self, SseParser};
use expect_test::{Expect, expect};
use proptest::prelude::*;

/// Parses `input` (fed in `pieces`) into `event | data` lines.
fn parse_events(pieces: &[&[u8]]) -> Vec<(String, String)> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut collect = |event: sse::SseEvent<'_>| -> Result<(), ()> {
        events.push((event.event.to_owned(), event.data.to_owned()));
        Ok(())
    };
    for piece in pieces {
        parser.feed(piece, &mut collect).unwrap();
    }
    parser.finish(&mut collect).unwrap();
    events
}

/// Runs an upstream OpenAI SSE body (fed in `pieces`) through the parser and the translator.
fn translate(pieces: &[&[u8]]) -> String {
    let mut parser = SseParser::new();
    let mut translator = StreamTranslator::new("qwen3:8b");
    let mut out = String::new();
    let mut on_event = |event: sse::SseEvent<'_>| translator.push(event.data, &mut out);
    let mut result = Ok(());
    for piece in pieces {
        result = parser.feed(piece, &mut on_event);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        let _ = parser.finish(&mut on_event);
    }
    let _ = translator.finish(&mut out);
    out
}

fn check_sse(input: &str, expect: Expect) {
    let rendered: String = parse_events(&[input.as_bytes()])
        .iter()
        .map(|(event, data)| format!("{event} | {data:?}\n"))
        .collect();
    expect.assert_eq(&rendered);
}

fn check(upstream: &str, expect: Expect) {
    let out = translate(&[upstream.as_bytes()]);
    if let Err(broken) = strict_client(&out) {
        panic!("strict client rejects the stream: {broken}\n{out}");
    }
    expect.assert_eq(&out);
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/anthropic/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// The strict-client rules: message_start first; blocks indexed 0..n in order, one open at a
/// time, each started and stopped once, deltas matching their block's type; tool_use starts
/// with `input: {}` and its partial JSON concatenates to an object; one message_delta with a
/// known stop_reason and integer `usage.output_tokens` after the last block; message_stop last.
/// Alternatively the stream ends with `event: error`, after which nothing follows.
fn strict_client(stream: &str) -> Result<(), String> {
    let events = parse_events(&[stream.as_bytes()]);
    let mut open: Option<(u64, String, String)> = None; // index, block type, tool JSON so far
    let mut next_index = 0;
    let mut seen_message_delta = false;
    // Checked at message_stop only: a stream that ends in an error may leave a call unfinished.
    let mut bad_tool_input = None;
    for (position, (event, data)) in events.iter().enumerate() {
        let data: serde_json::Value =
            serde_json::from_str(data).map_err(|e| format!("event {position}: {e}"))?;
        if data["type"] != event.as_str() {
            return Err(format!("event {position}: `event: {event}` but data type {}", data["type"]));
        }
        let last = position + 1 == events.len();
        if event == "error" {
            return if last && data["error"]["type"].is_string() && data["error"]["message"].is_string() {
                Ok(())
            } else {
                Err("error event must be last and carry error.type and error.message".into())
            };
        }
        if (position == 0) != (event == "message_start") {
            return Err(format!("event {position}: message_start must come first, and only there"));
        }
        let index = data["index"].as_u64();
        match event.as_str() {
            "message_start" => {
                let message = &data["message"];
                for field in ["id", "model"] {
                    message[field].as_str().ok_or(format!("message_start without {field}"))?;
                }
                if message["content"] != serde_json::json!([])
                    || message["usage"]["input_tokens"].as_u64().is_none()
                {
                    return Err("message_start needs content [] and usage.input_tokens".into());
                }
            }
            "content_block_start" => {
                if open.is_some() || index != Some(next_index) || seen_message_delta {
                    return Err(format!("event {position}: block {index:?} starts out of order"));
                }
                let block = &data["content_block"];
                let kind = block["type"].as_str().unwrap_or_default().to_owned();
                if kind == "tool_use" && (block["input"] != serde_json::json!({}) || !block["id"].is_string())
                {
                    return Err(format!("event {position}: tool_use start needs id and input {{}}"));
                }
                open = Some((next_index, kind, String::new()));
                next_index += 1;
            }
            "content_block_delta" => {
                let Some((open_index, kind, json)) = open.as_mut() else {
                    return Err(format!("event {position}: delta outside a block"));
                };
                let delta_type = data["delta"]["type"].as_str().unwrap_or_default();
                let allowed: &[&str] = match kind.as_str() {
                    "text" => &["text_delta"],
                    "thinking" => &["thinking_delta", "signature_delta"],
                    "tool_use" => &["input_json_delta"],
                    _ => &[],
                };
                if index != Some(*open_index) || !allowed.contains(&delta_type) {
                    return Err(format!("event {position}: {delta_type} for block {index:?} of type {kind}"));
                }
                if let Some(fragment) = data["delta"]["partial_json"].as_str() {
                    json.push_str(fragment);
                }
            }
            "content_block_stop" => {
                let Some((open_index, kind, json)) = open.take() else {
                    return Err(format!("event {position}: stop outside a block"));
                };
                if index != Some(open_index) {
                    return Err(format!("event {position}: stop of {index:?} while {open_index} is open"));
                }
                if kind == "tool_use" && !json.is_empty() {
                    match serde_json::from_str::<serde_json::Value>(&json) {
                        Ok(input) if input.is_object() => {}
                        _ => bad_tool_input = Some(format!("tool input {json:?} is not a JSON object")),
                    }
                }
            }
            "message_delta" => {
                let reasons =
                    ["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"];
                let reason = data["delta"]["stop_reason"].as_str().unwrap_or_default();
                if open.is_some() || seen_message_delta || !reasons.contains(&reason) {
                    return Err(format!("event {position}: bad message_delta"));
                }
                data["usage"]["output_tokens"].as_u64().ok_or("message_delta without usage.output_tokens")?;
                seen_message_delta = true;
            }
            "message_stop" => {
                if let Some(bad) = bad_tool_input {
                    return Err(bad);
                }
                return if last && seen_message_delta {
                    Ok(())
                } else {
                    Err("message_stop misplaced".into())
                };
            }
            other => return Err(format!("event {position}: unknown event {other}")),
        }
    }
    Err("stream ended without message_stop or error".into())
}

#[test]
fn sse_parser_handles_line_endings_comments_and_multiline_data() {
    check_sse(
        "\u{feff}: keep-alive\n\nevent: a\ndata: one\ndata:two\r\n\r\ndata: {\"x\":1}\r\r: comment\nid: 7\nretry: 10\nevent: empty\ndata:\n\nevent: no-data\n\ndata: tail",
        expect![[r#"
            a | "one\ntwo"
            message | "{\"x\":1}"
            empty | ""
            message | "tail"
        "#]],
    );
}

#[test]
fn sse_encoder_round_trips() {
    let mut out = String::new();
    sse::write_event(&mut out, "message_stop", "line one\nline two");
    sse::write_data(&mut out, "[DONE]");
    sse::write_comment(&mut out, "waiting for the model to load");
    out.push_str(sse::KEEP_ALIVE);
    expect![[r#"
        event: message_stop
        data: line one
        data: line two

        data: [DONE]

        : waiting for the model to load

        : keep-alive

    "#]]
    .assert_eq(&out);
    assert_eq!(
        parse_events(&[out.as_bytes()]),
        [("message_stop".into(), "line one\nline two".into()), ("message".into(), "[DONE]".into())]
    );
}

#[test]
fn text_until_length_as_llama_server_streams_it() {
    check(
        &fixture("stream_text_length.sse"),
        expect![[r#"
            event: message_start
            data: {"message":{"content":[],"id":"msg_fo0uLwybM5J6KrbwZzmU9mjDWyGqsp1v","model":"qwen3:8b","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}

            event: content_block_start
            data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Say"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" hello"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" in"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" three"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" words"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":".<"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"|"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"im"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"_"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"end"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"|>"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\n"}}

            event: content_block_stop
            data: {"type":"content_block_stop","index":0}

            event: message_delta
            data: {"delta":{"stop_reason":"max_tokens","stop_sequence":null},"type":"message_delta","usage":{"cache_read_input_tokens":0,"input_tokens":29,"output_tokens":12}}

            event: message_stop
            data: {"type":"message_stop"}

        "#]],
    );
}

#[test]
fn reasoning_then_text_keeps_the_first_text_delta() {
    check(
        &fixture("stream_reasoning_then_text.sse"),
        expect![[r#"
        event: message_start
        data: {"message":{"content":[],"id":"msg_R3as0n1ngQwen3xYz","model":"qwen3:8b","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}

        event: content_block_start
        data: {"content_block":{"signature":"","thinking":"","type":"thinking"},"index":0,"type":"content_block_start"}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":" greets me."}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":" Reply \"briefly\"."}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":""}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":0}

        event: content_block_start
        data: {"content_block":{"text":"","type":"text"},"index":1,"type":"content_block_start"}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":" there!"}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":1}

        event: message_delta
        data: {"delta":{"stop_reason":"end_turn","stop_sequence":null},"type":"message_delta","usage":{"cache_read_input_tokens":16,"input_tokens":15,"output_tokens":12}}

        event: message_stop
        data: {"type":"message_stop"}

    "#]],
    );
}

#[test]
fn one_tool_call_with_arguments_in_three_fragments() {
    check(
        &fixture("stream_tool_call_fragments.sse"),
        expect![[r#"
        event: message_start
        data: {"message":{"content":[],"id":"msg_T00lCa11F4agments","model":"qwen3:8b","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}

        event: content_block_start
        data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":0}

        event: content_block_start
        data: {"content_block":{"id":"call_wX1pQ9","input":{},"name":"get_weather","type":"tool_use"},"index":1,"type":"content_block_start"}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Pa"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ris\", \"unit\": "}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"celsius\"}"}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":1}

        event: message_delta
        data: {"delta":{"stop_reason":"tool_use","stop_sequence":null},"type":"message_delta","usage":{"cache_read_input_tokens":0,"input_tokens":120,"output_tokens":25}}

        event: message_stop
        data: {"type":"message_stop"}

    "#]],
    );
}

#[test]
fn two_parallel_tool_calls_get_a_block_each() {
    check(
        &fixture("stream_parallel_tool_calls.sse"),
        expect![[r#"
        event: message_start
        data: {"message":{"content":[],"id":"msg_Para11e1Ca11s","model":"qwen3:8b","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}

        event: content_block_start
        data: {"content_block":{"id":"call_A","input":{},"name":"get_weather","type":"tool_use"},"index":0,"type":"content_block_start"}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"\"Paris\"}"}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":0}

        event: content_block_start
        data: {"content_block":{"id":"call_B","input":{},"name":"get_weather","type":"tool_use"},"index":1,"type":"content_block_start"}

        event: content_block_delta
        data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\":\"Oslo\"}"}}

        event: content_block_stop
        data: {"type":"content_block_stop","index":1}

        event: message_delta
        data: {"delta":{"stop_reason":"tool_use","stop_sequence":null},"type":"message_delta","usage":{"cache_read_input_tokens":100,"input_tokens":50,"output_tokens":30}}

        event: message_stop
        data: {"type":"message_stop"}

    "#]],
    );
}

#[test]
fn upstream_error_midway_becomes_an_error_event() {
    check(
        &fixture("stream_error_midway.sse"),
        expect![[r#"
        event: message_start
        data: {"message":{"content":[],"id":"msg_Err0rM1dway","model":"qwen3:8b","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}

        event: content_block_start
        data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"The answer"}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" is"}}

        event: error
        data: {"error":{"message":"CUDA error: out of memory","type":"api_error"},"type":"error"}

    "#]],
    );
}

#[test]
fn stream_cut_before_the_finish_reason_ends_in_an_error() {
    check(
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        expect![[r#"
            event: message_start
            data: {"message":{"content":[],"id":"msg_1","model":"qwen3:8b","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}

            event: content_block_start
            data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}

            event: error
            data: {"error":{"message":"the engine ended the stream before the message was complete","type":"api_error"},"type":"error"}

        "#]],
    );
}

#[test]
fn finish_reason_without_done_still_completes() {
    check(
        "data: {\"id\":\"chatcmpl-2\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
         data: {\"id\":\"chatcmpl-2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        expect![[r#"
            event: message_start
            data: {"message":{"content":[],"id":"msg_2","model":"qwen3:8b","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}

            event: content_block_start
            data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}

            event: content_block_stop
            data: {"type":"content_block_stop","index":0}

            event: message_delta
            data: {"delta":{"stop_reason":"end_turn","stop_sequence":null},"type":"message_delta","usage":{"output_tokens":1}}

            event: message_stop
            data: {"type":"message_stop"}

        "#]],
    );
}

#[test]
fn malformed_chunk_becomes_an_error_event() {
    check(
        "data: {\"choices\": [\n\n",
        expect![[r#"
        event: error
        data: {"error":{"message":"malformed stream chunk from the engine: EOF while parsing a list at line 1 column 13","type":"api_error"},"type":"error"}

    "#]],
    );
}

#[test]
fn vllm_stop_string_and_early_prompt_progress() {
    // vLLM names the stop string in `stop_reason`; llama.cpp's `prompt_progress` gives the
    // prompt size before the first token, so message_start can carry it.
    check(
        "data: {\"id\":\"chatcmpl-3\",\"prompt_progress\":{\"total\":40,\"cache\":8,\"processed\":40,\"time_ms\":12},\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n\
         data: {\"id\":\"chatcmpl-3\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"1, 2, 3\"},\"finish_reason\":null,\"stop_reason\":null}]}\n\n\
         data: {\"id\":\"chatcmpl-3\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"stop_reason\":\"END\"}]}\n\n\
         data: {\"id\":\"chatcmpl-3\",\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":7,\"total_tokens\":47,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n\
         data: [DONE]\n\n",
        expect![[r#"
            event: message_start
            data: {"message":{"content":[],"id":"msg_3","model":"qwen3:8b","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":8,"input_tokens":32,"output_tokens":0}},"type":"message_start"}

            event: content_block_start
            data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"1, 2, 3"}}

            event: content_block_stop
            data: {"type":"content_block_stop","index":0}

            event: message_delta
            data: {"delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"type":"message_delta","usage":{"cache_read_input_tokens":8,"input_tokens":32,"output_tokens":7}}

            event: message_stop
            data: {"type":"message_stop"}

        "#]],
    );
}

#[test]
fn interleaved_tool_calls_end_in_an_error_rather_than_lose_arguments() {
    check(
        "data: {\"id\":\"chatcmpl-4\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"function\":{\"name\":\"a\",\"arguments\":\"{\"}}]}}]}\n\n\
         data: {\"id\":\"chatcmpl-4\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"function\":{\"name\":\"b\",\"arguments\":\"{}\"}}]}}]}\n\n\
         data: {\"id\":\"chatcmpl-4\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"}\"}}]}}]}\n\n",
        expect![[r#"
            event: message_start
            data: {"message":{"content":[],"id":"msg_4","model":"qwen3:8b","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}

            event: content_block_start
            data: {"content_block":{"id":"call_a","input":{},"name":"a","type":"tool_use"},"index":0,"type":"content_block_start"}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}

            event: content_block_stop
            data: {"type":"content_block_stop","index":0}

            event: content_block_start
            data: {"content_block":{"id":"call_b","input":{},"name":"b","type":"tool_use"},"index":1,"type":"content_block_start"}

            event: content_block_delta
            data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}

            event: error
            data: {"error":{"message":"the engine interleaved tool call 0 with another one; cannot translate","type":"api_error"},"type":"error"}

        "#]],
    );
}

#[test]
fn fail_ends_the_stream_once() {
    let mut translator = StreamTranslator::new("m");
    let mut out = String::new();
    translator
        .push(r#"{"id":"chatcmpl-5","choices":[{"index":0,"delta":{"content":"partial"}}]}"#, &mut out)
        .unwrap();
    translator.fail("upstream connection reset", &mut out);
    translator.fail("again", &mut out);
    translator.push("[DONE]", &mut out).unwrap();
    assert!(translator.is_ended());
    strict_client(&out).unwrap();
    expect![[r#"
        event: message_start
        data: {"message":{"content":[],"id":"msg_5","model":"m","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}

        event: content_block_start
        data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"partial"}}

        event: error
        data: {"error":{"message":"upstream connection reset","type":"api_error"},"type":"error"}

    "#]].assert_eq(&out);
}

#[test]
fn native_tool_use_start_gets_its_input() {
    let llama = r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_x","name":"get_weather"}}"#;
    expect![[r#"Some("{\"content_block\":{\"id\":\"call_x\",\"input\":{},\"name\":\"get_weather\",\"type\":\"tool_use\"},\"index\":1,\"type\":\"content_block_start\"}")"#]].assert_eq(&format!("{:?}", fix_native_event("content_block_start", llama)));
    let text = r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
    assert_eq!(fix_native_event("content_block_start", text), None);
    let fixed = r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"c","name":"n","input":{}}}"#;
    assert_eq!(fix_native_event("content_block_start", fixed), None);
    assert_eq!(
        fix_native_event("content_block_delta", r#"{"delta":{"type":"text_delta","text":"\"tool_use\""}}"#),
        None
    );
}

#[test]
fn native_message_tool_use_gets_its_input() {
    let mut message = serde_json::json!({"content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_x", "name": "get_weather"},
    ]});
    assert!(cortexd::anthropic::fix_native_message(&mut message));
    assert_eq!(message["content"][1]["input"], serde_json::json!({}));
    assert!(!cortexd::anthropic::fix_native_message(&mut message));
}

/// Runs raw upstream bytes (fed in `pieces`) through the stream transform into a `BytesMut`, as
/// the gateway's proxy does.
fn translate_raw(pieces: &[&[u8]]) -> String {
    let mut translator = Translate::new(StreamTranslator::new("qwen3:8b"));
    let mut out = bytes::BytesMut::new();
    for piece in pieces {
        translator.chunk(piece, &mut out);
    }
    translator.finish(&mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn native_raw_events_are_fixed_or_left_alone() {
    let text = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
    assert_eq!(fix_native_raw_event(text.as_bytes()), None);
    let tool = "event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_x\",\"name\":\"f\"}}\r\n\r\n";
    expect![[r#"
        event: content_block_start
        data: {"content_block":{"id":"call_x","input":{},"name":"f","type":"tool_use"},"index":1,"type":"content_block_start"}

    "#]].assert_eq(&fix_native_raw_event(tool.as_bytes()).unwrap());
}

/// Cuts `bytes` at the given positions (taken modulo the length).
fn split_at_positions<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(&bytes[start..cut]);
        start = cut;
    }
    pieces.push(&bytes[start..]);
    pieces
}

const FIXTURES: [&str; 5] = [
    "stream_text_length.sse",
    "stream_reasoning_then_text.sse",
    "stream_tool_call_fragments.sse",
    "stream_parallel_tool_calls.sse",
    "stream_error_midway.sse",
];

proptest! {
    #[test]
    fn splitting_reads_anywhere_changes_nothing(
        fixture_number in 0..FIXTURES.len(),
        crlf in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut upstream = fixture(FIXTURES[fixture_number]);
        if crlf {
            upstream = upstream.replace('\n', "\r\n");
        }
        let bytes = upstream.as_bytes();
        let pieces = split_at_positions(bytes, &cuts);
        prop_assert_eq!(parse_events(&pieces), parse_events(&[bytes]));
        let whole = translate(&[bytes]);
        prop_assert_eq!(translate(&pieces), whole.clone());
        prop_assert_eq!(translate_raw(&pieces), whole);
    }
}
