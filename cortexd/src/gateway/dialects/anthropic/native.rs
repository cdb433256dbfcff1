//! Fixes for engines that speak the Anthropic Messages API themselves, applied while passing their output through.
//!
//! Known deviation: llama.cpp's `content_block_start` for a `tool_use` block has no `input`
//! key, which strict clients require (`"input": {}`). Everything else is forwarded as is: the
//! stream function says `None` for the common case so the gateway forwards the original bytes
//! without parsing or re-serialising them.

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
