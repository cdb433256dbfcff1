//! Fixes for engines that speak the Anthropic Messages API themselves, applied while passing their output through.
//!
//! Known deviations (llama.cpp, the pinned build):
//! - `content_block_start` for a `tool_use` block has no `input` key, which strict clients
//!   require (`"input": {}`);
//! - the closing `message_delta.usage` carries only `output_tokens`, where the API also sends
//!   the input counts (`input_tokens`, `cache_read_input_tokens`,
//!   `cache_creation_input_tokens`): LangChain's Anthropic client reads usage from that event
//!   alone. [`NativeStreamFix`] copies them from the stream's `message_start`.
//!
//! Everything else is forwarded as is: the stream functions say `None` for the common case so the
//! gateway forwards the original bytes without parsing or re-serialising them.

use serde_json::{Map, Value};

use crate::gateway::transport::sse::{self, SseParser};

/// The corrected `data` of one event from a native engine, or `None` to forward it unchanged.
/// Re-serialised output may order keys differently; JSON clients do not care.
pub fn fix_native_event(event: &str, data: &str) -> Option<String> {
    // Cheap checks first: this runs for every event of every native stream.
    if event != "content_block_start" || !data.contains("\"tool_use\"") || data.contains("\"input\"") {
        return None;
    }
    let mut parsed: Value = serde_json::from_str(data).ok()?;
    let block = parsed.get_mut("content_block")?.as_object_mut()?;
    if !add_missing_input(block) {
        return None;
    }
    Some(parsed.to_string())
}

/// [`fix_native_event`] for raw SSE bytes holding whole events (as a proxy that splits the
/// stream holds them): `None` to forward the bytes unchanged, or all of their events re-encoded
/// with the fixes applied (comments and `id:` lines are dropped then; clients ignore them).
pub fn fix_native_raw_event(raw_events: &[u8]) -> Option<String> {
    if !raw_events.windows(TOOL_USE.len()).any(|window| window == TOOL_USE) {
        return None;
    }
    let mut encoded = String::with_capacity(raw_events.len() + 16);
    let mut changed = false;
    let mut parser = SseParser::new();
    let mut on_event = |event: sse::SseEvent<'_>| -> Result<(), ()> {
        match fix_native_event(event.event, event.data) {
            Some(data) => {
                changed = true;
                sse::write_event(&mut encoded, event.event, &data);
            }
            None => sse::write_event(&mut encoded, event.event, event.data),
        }
        Ok(())
    };
    let _ = parser.feed(raw_events, &mut on_event);
    let _ = parser.finish(&mut on_event);
    changed.then_some(encoded)
}

const TOOL_USE: &[u8] = b"\"tool_use\"";
const MESSAGE_START: &[u8] = b"\"message_start\"";
const MESSAGE_DELTA: &[u8] = b"\"message_delta\"";

/// The input counts the API puts in the closing `message_delta.usage` as well.
const INPUT_COUNTS: [&str; 3] = ["input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"];

/// The fix of one native stream: [`fix_native_event`]'s, and the closing `message_delta.usage`
/// completed with the input counts of the stream's `message_start`.
#[derive(Debug, Default)]
pub struct NativeStreamFix {
    /// The input counts `message_start` reported (0 for those it left out).
    input: Map<String, Value>,
}

impl NativeStreamFix {
    /// Like [`fix_native_raw_event`], for raw SSE bytes holding whole events of this stream.
    pub fn raw(&mut self, raw_events: &[u8]) -> Option<String> {
        let has = |needle: &[u8]| raw_events.windows(needle.len()).any(|window| window == needle);
        if !(has(TOOL_USE) || has(MESSAGE_START) || has(MESSAGE_DELTA)) {
            return None;
        }
        let mut encoded = String::with_capacity(raw_events.len() + 64);
        let mut changed = false;
        let mut parser = SseParser::new();
        let mut on_event = |event: sse::SseEvent<'_>| -> Result<(), ()> {
            match self.event(event.event, event.data) {
                Some(data) => {
                    changed = true;
                    sse::write_event(&mut encoded, event.event, &data);
                }
                None => sse::write_event(&mut encoded, event.event, event.data),
            }
            Ok(())
        };
        let _ = parser.feed(raw_events, &mut on_event);
        let _ = parser.finish(&mut on_event);
        changed.then_some(encoded)
    }

    /// The corrected `data` of one event, or `None` to forward it unchanged.
    pub fn event(&mut self, event: &str, data: &str) -> Option<String> {
        match event {
            "message_start" => {
                self.note_input(data);
                None
            }
            "message_delta" => self.complete_delta(data),
            _ => fix_native_event(event, data),
        }
    }

    fn note_input(&mut self, data: &str) {
        let start: Value = serde_json::from_str(data).unwrap_or_default();
        let usage = start.pointer("/message/usage");
        for key in INPUT_COUNTS {
            let count = usage.and_then(|usage| usage.get(key)).and_then(Value::as_u64).unwrap_or(0);
            self.input.insert(key.to_owned(), count.into());
        }
    }

    fn complete_delta(&self, data: &str) -> Option<String> {
        let mut delta: Value = serde_json::from_str(data).ok()?;
        let usage = delta.as_object_mut()?.entry("usage").or_insert_with(|| Value::Object(Map::new()));
        let usage = usage.as_object_mut()?;
        let mut changed = false;
        for key in INPUT_COUNTS {
            if !usage.contains_key(key) {
                let count = self.input.get(key).cloned().unwrap_or_else(|| 0.into());
                usage.insert(key.to_owned(), count);
                changed = true;
            }
        }
        changed.then(|| delta.to_string())
    }
}

/// Fixes a non-streaming response of a native engine in place; returns whether it changed.
pub fn fix_native_message(message: &mut Value) -> bool {
    let Some(blocks) = message.get_mut("content").and_then(Value::as_array_mut) else { return false };
    let mut changed = false;
    for block in blocks.iter_mut().filter_map(Value::as_object_mut) {
        changed |= add_missing_input(block);
    }
    changed
}

fn add_missing_input(block: &mut Map<String, Value>) -> bool {
    if block.get("type").and_then(Value::as_str) != Some("tool_use") || block.contains_key("input") {
        return false;
    }
    block.insert("input".into(), Value::Object(Map::new()));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_usage_gets_the_input_counts_of_message_start() {
        let stream = concat!(
            "event: message_start\n",
            r#"data: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"model":"g","stop_reason":null,"stop_sequence":null,"usage":{"cache_read_input_tokens":2,"input_tokens":9,"output_tokens":0}}}"#,
            "\n\nevent: content_block_delta\n",
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\"message_delta\""}}"#,
            "\n\nevent: message_delta\n",
            r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":5}}"#,
            "\n\n",
        );
        let mut fix = NativeStreamFix::default();
        let fixed = fix.raw(stream.as_bytes()).expect("the closing usage is completed");
        let delta = fixed.lines().rev().find_map(|line| line.strip_prefix("data: ")).expect("message_delta");
        let delta: Value = serde_json::from_str(delta).expect("JSON");
        assert_eq!(
            delta["usage"],
            serde_json::json!({"output_tokens": 5, "input_tokens": 9, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 0})
        );
        assert!(fixed.contains(r#""text":"\"message_delta\"""#), "{fixed}");
        // An event already complete, and ordinary text, pass as they came.
        let complete = r#"{"type":"message_delta","delta":{},"usage":{"input_tokens":1,"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"output_tokens":1}}"#;
        assert_eq!(fix.event("message_delta", complete), None);
        let text = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
        assert_eq!(fix.raw(text), None);
    }
}
