//! Golden tests of OpenAI Chat Completions response → Anthropic message (non-streaming).
#![expect(clippy::unwrap_used, reason = "a test should stop at the first surprise")]

use cortexd::Dialect;
use cortexd::anthropic::chat_to_message;
use expect_test::{Expect, expect};

/// Translates `response` (JSON text) for a client that asked for `qwen3:8b`.
fn check(response: &str, expect: Expect) {
    let body: serde_json::Value = serde_json::from_str(response).unwrap();
    let rendered = match chat_to_message(&body, "qwen3:8b") {
        Ok(message) => serde_json::to_string_pretty(&message).unwrap(),
        Err(error) => {
            format!("error {} {}: {error}", error.status().as_u16(), error.error_type(Dialect::Anthropic))
        }
    };
    expect.assert_eq(&format!("{rendered}\n"));
}

#[test]
fn text_as_llama_server_answers() {
    // As llama-server (gemma-3-270m) answered, text shortened: cached prompt tokens are not input tokens.
    check(
        r#"{"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant","content":"Hello! How can I help?"}}],
            "created":1795506786,"model":"/models/gemma-3-270m-q4_k_m.gguf","system_fingerprint":"b0-unknown","object":"chat.completion",
            "usage":{"completion_tokens":6,"prompt_tokens":26,"total_tokens":32,"prompt_tokens_details":{"cached_tokens":1}},
            "id":"chatcmpl-9kl6nUBzlqSjaLA32LkTfiErZimiAuZ2","timings":{"cache_n":1,"prompt_n":25,"predicted_n":6}}"#,
        expect![[r#"
            {
              "content": [
                {
                  "text": "Hello! How can I help?",
                  "type": "text"
                }
              ],
              "id": "msg_9kl6nUBzlqSjaLA32LkTfiErZimiAuZ2",
              "model": "qwen3:8b",
              "role": "assistant",
              "stop_reason": "end_turn",
              "stop_sequence": null,
              "type": "message",
              "usage": {
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1,
                "input_tokens": 25,
                "output_tokens": 6
              }
            }
        "#]],
    );
}

#[test]
fn reasoning_text_and_tool_calls() {
    check(
        r#"{"id":"chatcmpl-abc","object":"chat.completion","choices":[{"index":0,"finish_reason":"tool_calls","message":{
              "role":"assistant","reasoning_content":"Need the weather for two cities.","content":"Checking both.",
              "tool_calls":[
                {"id":"call_A","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Oslo\""}},
                {"id":"call_C","type":"function","function":{"name":"now","arguments":""}}]}}],
            "usage":{"completion_tokens":40,"prompt_tokens":200,"total_tokens":240}}"#,
        expect![[r#"
            {
              "content": [
                {
                  "signature": "",
                  "thinking": "Need the weather for two cities.",
                  "type": "thinking"
                },
                {
                  "text": "Checking both.",
                  "type": "text"
                },
                {
                  "id": "call_A",
                  "input": {
                    "city": "Paris"
                  },
                  "name": "get_weather",
                  "type": "tool_use"
                },
                {
                  "id": "toolu_abc_1",
                  "input": {
                    "_raw": "{\"city\": \"Oslo\""
                  },
                  "name": "get_weather",
                  "type": "tool_use"
                },
                {
                  "id": "call_C",
                  "input": {},
                  "name": "now",
                  "type": "tool_use"
                }
              ],
              "id": "msg_abc",
              "model": "qwen3:8b",
              "role": "assistant",
              "stop_reason": "tool_use",
              "stop_sequence": null,
              "type": "message",
              "usage": {
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "input_tokens": 200,
                "output_tokens": 40
              }
            }
        "#]],
    );
}

#[test]
fn length_and_content_filter() {
    check(
        r#"{"id":"chatcmpl-len","choices":[{"index":0,"finish_reason":"length","message":{"role":"assistant","content":"Once upon a"}}],
            "usage":{"completion_tokens":3,"prompt_tokens":9}}"#,
        expect![[r#"
            {
              "content": [
                {
                  "text": "Once upon a",
                  "type": "text"
                }
              ],
              "id": "msg_len",
              "model": "qwen3:8b",
              "role": "assistant",
              "stop_reason": "max_tokens",
              "stop_sequence": null,
              "type": "message",
              "usage": {
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "input_tokens": 9,
                "output_tokens": 3
              }
            }
        "#]],
    );
    check(
        r#"{"id":"chatcmpl-cf","choices":[{"index":0,"finish_reason":"content_filter","message":{"role":"assistant","content":null}}]}"#,
        expect![[r#"
            {
              "content": [],
              "id": "msg_cf",
              "model": "qwen3:8b",
              "role": "assistant",
              "stop_reason": "refusal",
              "stop_sequence": null,
              "type": "message",
              "usage": {
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "input_tokens": 0,
                "output_tokens": 0
              }
            }
        "#]],
    );
}

#[test]
fn stop_sequence_named_by_vllm() {
    check(
        r#"{"id":"chatcmpl-vllm","choices":[{"index":0,"finish_reason":"stop","stop_reason":"END","message":{"role":"assistant","content":"1, 2, 3","reasoning":null}}],
            "usage":{"completion_tokens":7,"prompt_tokens":12,"total_tokens":19,"prompt_tokens_details":null}}"#,
        expect![[r#"
            {
              "content": [
                {
                  "text": "1, 2, 3",
                  "type": "text"
                }
              ],
              "id": "msg_vllm",
              "model": "qwen3:8b",
              "role": "assistant",
              "stop_reason": "stop_sequence",
              "stop_sequence": "END",
              "type": "message",
              "usage": {
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "input_tokens": 12,
                "output_tokens": 7
              }
            }
        "#]],
    );
}

#[test]
fn upstream_errors_and_malformed_responses() {
    check(
        r#"{"error":{"code":400,"message":"the request exceeds the available context size","type":"invalid_request_error"}}"#,
        expect![[r#"
        error 502 api_error: the request exceeds the available context size
    "#]],
    );
    check(
        r#"{"id":"chatcmpl-x","choices":[]}"#,
        expect![[r#"
        error 502 api_error: chat completion from the engine has no choices
    "#]],
    );
    check(
        r#"{"id":"chatcmpl-x","choices":"nope"}"#,
        expect![[r#"
        error 502 api_error: malformed chat completion from the engine: invalid type: string "nope", expected a sequence
    "#]],
    );
}
