//! Golden tests of Anthropic Messages request → OpenAI Chat Completions request, including the 400 messages.
#![expect(clippy::unwrap_used, reason = "a test should stop at the first surprise")]

use cortexd::Dialect;
use cortexd::anthropic::request_to_chat;
use expect_test::{Expect, expect};

/// Translates `request` (JSON text) and renders the Chat Completions body, or `error: <message>`.
fn check(request: &str, expect: Expect) {
    let body: serde_json::Value = serde_json::from_str(request).unwrap();
    let rendered = match request_to_chat(&body) {
        Ok(chat) => serde_json::to_string_pretty(&chat).unwrap(),
        Err(error) => {
            assert_eq!(
                (error.status().as_u16(), error.error_type(Dialect::Anthropic)),
                (400, "invalid_request_error")
            );
            format!("error: {error}")
        }
    };
    expect.assert_eq(&format!("{rendered}\n"));
}

#[test]
fn plain_text_with_sampling_and_stop_sequences() {
    check(
        r#"{"model": "qwen3:8b", "max_tokens": 256, "messages": [{"role": "user", "content": "Count to 5"}],
            "stop_sequences": ["END", "\n\n"], "temperature": 0.2, "top_p": 0.9, "top_k": 40,
            "metadata": {"user_id": "u-1"}, "service_tier": "auto"}"#,
        expect![[r#"
            {
              "max_tokens": 256,
              "messages": [
                {
                  "content": "Count to 5",
                  "role": "user"
                }
              ],
              "model": "qwen3:8b",
              "stop": [
                "END",
                "\n\n"
              ],
              "temperature": 0.2,
              "top_k": 40,
              "top_p": 0.9
            }
        "#]],
    );
}

#[test]
fn system_blocks_multi_turn_and_streaming() {
    check(
        r#"{"model": "qwen3:8b", "max_tokens": 1024, "stream": true,
            "system": [{"type": "text", "text": "You are terse."},
                       {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
              {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
              {"role": "assistant", "content": [{"type": "thinking", "thinking": "greet", "signature": "sig"},
                                                {"type": "text", "text": "Bonjour"}]},
              {"role": "user", "content": [{"type": "text", "text": "<system-reminder>be brief</system-reminder>"},
                                           {"type": "text", "text": "How are you?", "cache_control": {"type": "ephemeral"}}]}
            ]}"#,
        expect![[r#"
            {
              "max_tokens": 1024,
              "messages": [
                {
                  "content": "You are terse.\nAnswer in French.",
                  "role": "system"
                },
                {
                  "content": "Hello",
                  "role": "user"
                },
                {
                  "content": "Bonjour",
                  "role": "assistant"
                },
                {
                  "content": [
                    {
                      "text": "<system-reminder>be brief</system-reminder>",
                      "type": "text"
                    },
                    {
                      "text": "How are you?",
                      "type": "text"
                    }
                  ],
                  "role": "user"
                }
              ],
              "model": "qwen3:8b",
              "stream": true,
              "stream_options": {
                "include_usage": true
              }
            }
        "#]],
    );
}

#[test]
fn images_from_base64_and_url() {
    check(
        r#"{"model": "gemma3", "max_tokens": 64, "messages": [{"role": "user", "content": [
              {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
              {"type": "image", "source": {"type": "url", "url": "https://example.invalid/cat.jpg"}},
              {"type": "text", "text": "Compare them"}]}]}"#,
        expect![[r#"
            {
              "max_tokens": 64,
              "messages": [
                {
                  "content": [
                    {
                      "image_url": {
                        "url": "data:image/png;base64,iVBORw0KGgo="
                      },
                      "type": "image_url"
                    },
                    {
                      "image_url": {
                        "url": "https://example.invalid/cat.jpg"
                      },
                      "type": "image_url"
                    },
                    {
                      "text": "Compare them",
                      "type": "text"
                    }
                  ],
                  "role": "user"
                }
              ],
              "model": "gemma3"
            }
        "#]],
    );
}

#[test]
fn tools_with_a_forced_tool_and_no_parallel_calls() {
    check(
        r#"{"model": "qwen3:8b", "max_tokens": 512,
            "tools": [{"name": "get_weather", "description": "Current weather",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                       "cache_control": {"type": "ephemeral"}},
                      {"type": "custom", "name": "noop", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "messages": [{"role": "user", "content": "Weather in Paris?"}]}"#,
        expect![[r#"
            {
              "max_tokens": 512,
              "messages": [
                {
                  "content": "Weather in Paris?",
                  "role": "user"
                }
              ],
              "model": "qwen3:8b",
              "parallel_tool_calls": false,
              "tool_choice": {
                "function": {
                  "name": "get_weather"
                },
                "type": "function"
              },
              "tools": [
                {
                  "function": {
                    "description": "Current weather",
                    "name": "get_weather",
                    "parameters": {
                      "properties": {
                        "city": {
                          "type": "string"
                        }
                      },
                      "required": [
                        "city"
                      ],
                      "type": "object"
                    }
                  },
                  "type": "function"
                },
                {
                  "function": {
                    "name": "noop",
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
fn tool_choice_variants() {
    let request = |choice: &str| {
        format!(
            r#"{{"model": "m", "max_tokens": 8, "messages": [{{"role": "user", "content": "hi"}}],
                "tools": [{{"name": "t", "input_schema": {{"type": "object"}}}}], "tool_choice": {choice}}}"#
        )
    };
    let render = |choice: &str| {
        let chat = request_to_chat(&serde_json::from_str(&request(choice)).unwrap()).unwrap();
        format!(
            "{choice} -> {} {}\n",
            chat["tool_choice"],
            chat.get("parallel_tool_calls").unwrap_or(&serde_json::Value::Null)
        )
    };
    let rendered: String = [
        r#"{"type": "auto"}"#,
        r#"{"type": "any"}"#,
        r#"{"type": "any", "disable_parallel_tool_use": true}"#,
        r#"{"type": "none"}"#,
        r#"{"type": "tool", "name": "t"}"#,
    ]
    .iter()
    .map(|choice| render(choice))
    .collect();
    expect![[r#"
        {"type": "auto"} -> "auto" null
        {"type": "any"} -> "required" null
        {"type": "any", "disable_parallel_tool_use": true} -> "required" false
        {"type": "none"} -> "none" null
        {"type": "tool", "name": "t"} -> {"function":{"name":"t"},"type":"function"} null
    "#]]
    .assert_eq(&rendered);
}

#[test]
fn tool_use_and_tool_results_with_errors_and_images() {
    check(
        r#"{"model": "qwen3:8b", "max_tokens": 512, "messages": [
              {"role": "user", "content": "Weather in Paris and Oslo? And show the radar."},
              {"role": "assistant", "content": [
                 {"type": "text", "text": "Checking both."},
                 {"type": "tool_use", "id": "call_A", "name": "get_weather", "input": {"city": "Paris"}},
                 {"type": "tool_use", "id": "call_B", "name": "get_weather", "input": {"city": "Oslo"}}]},
              {"role": "user", "content": [
                 {"type": "tool_result", "tool_use_id": "call_A", "content": [
                    {"type": "text", "text": "18°C, clear"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "UkFEQVI="}}]},
                 {"type": "tool_result", "tool_use_id": "call_B", "content": "station offline", "is_error": true},
                 {"type": "text", "text": "Thanks"}]},
              {"role": "assistant", "content": [{"type": "tool_use", "id": "call_C", "name": "get_weather", "input": {}}]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_C"}]}
            ]}"#,
        expect![[r#"
            {
              "max_tokens": 512,
              "messages": [
                {
                  "content": "Weather in Paris and Oslo? And show the radar.",
                  "role": "user"
                },
                {
                  "content": "Checking both.",
                  "role": "assistant",
                  "tool_calls": [
                    {
                      "function": {
                        "arguments": "{\"city\":\"Paris\"}",
                        "name": "get_weather"
                      },
                      "id": "call_A",
                      "type": "function"
                    },
                    {
                      "function": {
                        "arguments": "{\"city\":\"Oslo\"}",
                        "name": "get_weather"
                      },
                      "id": "call_B",
                      "type": "function"
                    }
                  ]
                },
                {
                  "content": "18°C, clear",
                  "role": "tool",
                  "tool_call_id": "call_A"
                },
                {
                  "content": "Error: station offline",
                  "role": "tool",
                  "tool_call_id": "call_B"
                },
                {
                  "content": [
                    {
                      "image_url": {
                        "url": "data:image/png;base64,UkFEQVI="
                      },
                      "type": "image_url"
                    },
                    {
                      "text": "Thanks",
                      "type": "text"
                    }
                  ],
                  "role": "user"
                },
                {
                  "content": null,
                  "role": "assistant",
                  "tool_calls": [
                    {
                      "function": {
                        "arguments": "{}",
                        "name": "get_weather"
                      },
                      "id": "call_C",
                      "type": "function"
                    }
                  ]
                },
                {
                  "content": "",
                  "role": "tool",
                  "tool_call_id": "call_C"
                }
              ],
              "model": "qwen3:8b"
            }
        "#]],
    );
}

#[test]
fn thinking_switches_the_chat_template() {
    let render = |thinking: &str| {
        let request = format!(
            r#"{{"model": "m", "max_tokens": 8, "messages": [{{"role": "user", "content": "hi"}}], "thinking": {thinking}}}"#
        );
        match request_to_chat(&serde_json::from_str(&request).unwrap()) {
            Ok(chat) => format!("{thinking} -> {}\n", chat["chat_template_kwargs"]),
            Err(error) => format!("{thinking} -> error: {error}\n"),
        }
    };
    let rendered: String = [
        r#"{"type": "enabled", "budget_tokens": 2048}"#,
        r#"{"type": "adaptive"}"#,
        r#"{"type": "disabled"}"#,
        r#"{"type": "sometimes"}"#,
    ]
    .iter()
    .map(|thinking| render(thinking))
    .collect();
    expect![[r#"
        {"type": "enabled", "budget_tokens": 2048} -> {"enable_thinking":true}
        {"type": "adaptive"} -> {"enable_thinking":true}
        {"type": "disabled"} -> {"enable_thinking":false}
        {"type": "sometimes"} -> error: thinking.type: must be "enabled", "adaptive" or "disabled"
    "#]]
    .assert_eq(&rendered);
}

#[test]
fn invalid_requests_get_a_400_message() {
    let cases = [
        r#"[]"#,
        r#"{"max_tokens": 8, "messages": []}"#,
        r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#,
        r#"{"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": {"role": "user"}}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": []}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "user"}]}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [{"text": "no type"}]}]}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "system": [{"type": "image"}]}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "stop_sequences": "END"}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "t"}]}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "t", "input_schema": {}}], "tool_choice": {"type": "maybe"}}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "t", "input": "{}"}]}]}"#,
        r#"{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}"#,
    ];
    let rendered: String = cases
        .iter()
        .map(|case| match request_to_chat(&serde_json::from_str(case).unwrap()) {
            Ok(chat) => format!("unexpectedly valid: {chat}\n"),
            Err(error) => format!("{error}\n"),
        })
        .collect();
    expect![[r#"
        request body must be a JSON object
        model: field required
        max_tokens: field required
        max_tokens: must be an integer of at least 1
        messages: must be an array
        messages: at least one message is required
        messages.0.content: field required
        messages.0.content.0.type: field required
        messages.0.content.0.source.type: must be "base64" or "url"
        system.0: must be a text block
        stop_sequences: must be an array of strings
        temperature: must be a number
        tools.0.input_schema: must be an object
        tool_choice.type: must be "auto", "any", "tool" or "none"
        messages.0.content.0.input: must be an object
        stream: must be a boolean
    "#]]
    .assert_eq(&rendered);
}

#[test]
fn what_the_real_api_accepts_is_translated_or_dropped_never_refused() {
    check(
        r#"{"model": "m", "max_tokens": 8,
            "system": [{"type": "text", "text": "top", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "document", "source": {"type": "text", "data": "d"}}]},
                {"role": "system", "content": "later system"},
                {"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}, {"type": "text", "text": "ok"}]}
            ],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}, {"name": "t", "input_schema": {"type": "object"}, "defer_loading": true}],
            "thinking": {"type": "adaptive", "display": "omitted"},
            "output_config": {"effort": "max"},
            "context_management": {"edits": []},
            "metadata": {"user_id": "u"}}"#,
        expect![[r#"
            {
              "chat_template_kwargs": {
                "enable_thinking": true
              },
              "max_tokens": 8,
              "messages": [
                {
                  "content": "top\n\nlater system",
                  "role": "system"
                },
                {
                  "content": "hi",
                  "role": "user"
                },
                {
                  "content": "ok",
                  "role": "assistant"
                }
              ],
              "model": "m",
              "reasoning_effort": "high",
              "tools": [
                {
                  "function": {
                    "name": "t",
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
