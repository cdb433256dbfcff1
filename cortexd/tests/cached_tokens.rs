//! The engine's cached prompt tokens in every dialect's usage: Anthropic's
//! `cache_read_input_tokens` (with `input_tokens` the uncached rest), Chat Completions'
//! `prompt_tokens_details.cached_tokens`, Responses' `input_tokens_details.cached_tokens`; on the
//! translated paths (a Chat-only engine) and the native ones, streamed and not.
//!
//! The engine's side is what llama-server sends for a 60-token prompt of which 48 came from its
//! slot's cache (tools/server/server-task.cpp of the pinned build): Chat usage with
//! `prompt_tokens_details.cached_tokens` and `timings.cache_n`, native Messages with
//! `cache_read_input_tokens` and `input_tokens` = prompt − cached, native Responses with
//! `input_tokens_details.cached_tokens`.
#![expect(clippy::unwrap_used, reason = "a test should stop at the first surprise")]

use bytes::BytesMut;
use cortexd::anthropic::{NativeStreamFix, chat_to_message};
use cortexd::responses::{ToolNames, chat_to_response, skeleton};
use cortexd::sse::{self, SseParser};
use cortexd::{EventTransform, Translate};
use serde_json::{Value, json};

const TIMINGS: &str = r#""timings":{"cache_n":48,"prompt_n":12,"predicted_n":4}"#;

/// llama-server's non-streaming Chat answer; `details` false is a build without
/// `prompt_tokens_details` (only `timings.cache_n` tells the cached part).
fn chat_answer(details: bool) -> Value {
    let details = if details { r#","prompt_tokens_details":{"cached_tokens":48}"# } else { "" };
    let answer = format!(
        r#"{{"choices":[{{"finish_reason":"stop","index":0,"message":{{"role":"assistant","content":"Paris."}}}}],
            "object":"chat.completion","id":"chatcmpl-c1",
            "usage":{{"completion_tokens":4,"prompt_tokens":60,"total_tokens":64{details}}},{TIMINGS}}}"#
    );
    serde_json::from_str(&answer).unwrap()
}

/// llama-server's Chat stream with `stream_options.include_usage`: the usage chunk (with its
/// timings) after the finish, then `[DONE]`.
fn chat_stream(details: bool) -> String {
    let details = if details { r#","prompt_tokens_details":{"cached_tokens":48}"# } else { "" };
    [
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}],"id":"chatcmpl-c1","object":"chat.completion.chunk"}"#.to_owned(),
        r#"{"choices":[{"index":0,"delta":{"content":"Paris."}}],"id":"chatcmpl-c1","object":"chat.completion.chunk"}"#.to_owned(),
        r#"{"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"id":"chatcmpl-c1","object":"chat.completion.chunk"}"#.to_owned(),
        format!(
            r#"{{"choices":[],"id":"chatcmpl-c1","object":"chat.completion.chunk","usage":{{"completion_tokens":4,"prompt_tokens":60,"total_tokens":64{details}}},{TIMINGS}}}"#
        ),
        "[DONE]".to_owned(),
    ]
    .iter()
    .map(|data| format!("data: {data}\n\n"))
    .collect()
}

/// (prompt, completion, cached) tokens.
type Counts = (u64, u64, u64);

/// Runs `upstream` through a translating transform, as the gateway does; returns the client's
/// events (name, data) and the usage the gateway's metrics read.
fn transform(mut transform: impl EventTransform, upstream: &str) -> (Vec<(String, Value)>, Option<Counts>) {
    let mut out = BytesMut::new();
    transform.chunk(upstream.as_bytes(), &mut out);
    transform.finish(&mut out);
    let usage = transform.usage().map(|tokens| (tokens.prompt, tokens.completion, tokens.cached));
    (events(&out), usage)
}

fn events(stream: &[u8]) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    let mut parser = SseParser::new();
    let mut collect = |event: sse::SseEvent<'_>| -> Result<(), ()> {
        events.push((event.event.to_owned(), serde_json::from_str(event.data).unwrap()));
        Ok(())
    };
    parser.feed(stream, &mut collect).unwrap();
    parser.finish(&mut collect).unwrap();
    events
}

fn event<'a>(events: &'a [(String, Value)], name: &str) -> &'a Value {
    &events.iter().find(|(event, _)| event == name).unwrap_or_else(|| panic!("no {name} in {events:?}")).1
}

/// Anthropic's usage: `input_tokens` is what the engine computed, the rest was read from cache.
fn anthropic_input(usage: &Value) -> (Option<u64>, Option<u64>) {
    (usage["input_tokens"].as_u64(), usage["cache_read_input_tokens"].as_u64())
}

#[test]
fn a_translated_message_reads_its_cached_tokens() {
    for details in [true, false] {
        let message = chat_to_message(&chat_answer(details), "gemma").unwrap();
        assert_eq!(anthropic_input(&message["usage"]), (Some(12), Some(48)), "details {details}: {message}");
        assert_eq!(message["usage"]["output_tokens"], 4);
    }
}

#[test]
fn a_translated_message_stream_reports_its_cached_tokens_at_the_end() {
    for details in [true, false] {
        let translator = cortexd::anthropic::StreamTranslator::new("gemma");
        let (events, usage) = transform(Translate::new(translator), &chat_stream(details));
        let delta = event(&events, "message_delta");
        assert_eq!(anthropic_input(&delta["usage"]), (Some(12), Some(48)), "details {details}: {delta}");
        assert_eq!(usage, Some((60, 4, 48)), "the gateway counts the whole prompt and its cached part");
    }
}

#[test]
fn a_translated_response_reads_its_cached_tokens() {
    let request = json!({"model": "gemma", "input": "Capital of France?"});
    for details in [true, false] {
        let skeleton_of = |id: &str| skeleton(&request, id, "gemma", 0);
        let response =
            chat_to_response(&chat_answer(details), skeleton_of, &ToolNames::default(), false).unwrap();
        let usage = &response["usage"];
        assert_eq!(
            (usage["input_tokens"].as_u64(), usage["input_tokens_details"]["cached_tokens"].as_u64()),
            (Some(60), Some(48)),
            "details {details}: Responses' input_tokens include the cached ones"
        );
    }
}

#[test]
fn a_translated_response_stream_reports_its_cached_tokens_in_response_completed() {
    let request = json!({"model": "gemma", "input": "Capital of France?", "stream": true});
    for details in [true, false] {
        let translator = cortexd::responses::StreamTranslator::new(
            skeleton(&request, "", "gemma", 0),
            ToolNames::default(),
            "x",
        );
        let (events, usage) = transform(Translate::new(translator), &chat_stream(details));
        let completed = &event(&events, "response.completed")["response"]["usage"];
        assert_eq!(
            (completed["input_tokens"].as_u64(), completed["input_tokens_details"]["cached_tokens"].as_u64()),
            (Some(60), Some(48)),
            "details {details}: {completed}"
        );
        assert_eq!(usage, Some((60, 4, 48)));
    }
}

#[test]
fn a_native_message_stream_keeps_the_engines_cached_tokens_in_both_usage_events() {
    // llama-server's own /v1/messages stream: message_start carries the input counts, its
    // message_delta only `output_tokens` (completed from message_start on the way).
    let upstream = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"chatcmpl-c1","type":"message","role":"assistant","content":[],"model":"gemma","stop_reason":null,"stop_sequence":null,"usage":{"cache_read_input_tokens":48,"input_tokens":12,"output_tokens":0}}}"#,
        "\n\nevent: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Paris."}}"#,
        "\n\nevent: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\nevent: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":4}}"#,
        "\n\nevent: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );
    let mut fix = NativeStreamFix::default();
    let fixed = fix.raw(upstream.as_bytes()).unwrap();
    let events = events(fixed.as_bytes());
    let start = &event(&events, "message_start")["message"]["usage"];
    assert_eq!(anthropic_input(start), (Some(12), Some(48)));
    let delta = &event(&events, "message_delta")["usage"];
    assert_eq!(anthropic_input(delta), (Some(12), Some(48)), "{delta}");
    assert_eq!(delta["output_tokens"], 4);
}

#[test]
fn a_native_message_keeps_the_engines_cached_tokens() {
    let mut message = json!({"id": "chatcmpl-c1", "type": "message", "role": "assistant",
        "content": [{"type": "text", "text": "Paris."}], "model": "gemma", "stop_reason": "end_turn",
        "stop_sequence": null, "usage": {"cache_read_input_tokens": 48, "input_tokens": 12, "output_tokens": 4}});
    cortexd::anthropic::fix_native_message(&mut message);
    assert_eq!(anthropic_input(&message["usage"]), (Some(12), Some(48)));
}
