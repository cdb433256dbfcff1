//! Fixes for engines whose native `/v1/responses` stream deviates from what the openai SDK's
//! `responses.stream()` accumulates, applied while passing the stream through.
//!
//! Known deviation (llama.cpp, the pinned build): events carry no `sequence_number`, no
//! `output_index` and no `content_index`, and text deltas no `logprobs`; the SDK indexes its
//! snapshot by `output_index` and fails without it. Such events get the missing fields
//! (output indices in the order items were added, found again by item id). An event that
//! already has a `sequence_number` is forwarded as it came, without being parsed.

use std::collections::HashMap;

use serde_json::Value;

/// Per-stream state of the fix.
#[derive(Debug, Default)]
pub struct NativeFix {
    sequence: u64,
    next_output_index: u64,
    by_item: HashMap<String, u64>,
}

impl NativeFix {
    /// The corrected `data` of one event, or `None` to forward it unchanged.
    pub fn event(&mut self, data: &str) -> Option<String> {
        if data.contains("\"sequence_number\"") {
            return None;
        }
        let mut event: Value = serde_json::from_str(data).ok()?;
        let object = event.as_object_mut()?;
        let kind = object.get("type").and_then(Value::as_str)?.to_owned();
        object.insert("sequence_number".into(), self.sequence.into());
        self.sequence += 1;
        if kind == "response.output_item.added" || kind == "response.output_item.done" {
            let item_id =
                object.get("item").and_then(|item| item.get("id")).and_then(Value::as_str).map(str::to_owned);
            if !object.contains_key("output_index") {
                let index = self.index_of(item_id.as_deref(), kind.ends_with("added"));
                object.insert("output_index".into(), index.into());
            }
        } else if object.contains_key("item_id") {
            let item_id = object.get("item_id").and_then(Value::as_str).map(str::to_owned);
            if !object.contains_key("output_index") {
                let index = self.index_of(item_id.as_deref(), false);
                object.insert("output_index".into(), index.into());
            }
            let has_content = kind.contains("content_part") || kind.contains("_text.");
            if has_content && !object.contains_key("content_index") {
                object.insert("content_index".into(), 0.into());
            }
            if kind.starts_with("response.output_text.") && !object.contains_key("logprobs") {
                object.insert("logprobs".into(), Value::Array(Vec::new()));
            }
            if let Some(part) = object.get_mut("part").and_then(Value::as_object_mut)
                && part.get("type").and_then(Value::as_str) == Some("output_text")
                && !part.contains_key("annotations")
            {
                part.insert("annotations".into(), Value::Array(Vec::new()));
            }
        }
        Some(event.to_string())
    }

    /// The output index of `item_id`: a new one when the item is being added.
    fn index_of(&mut self, item_id: Option<&str>, adding: bool) -> u64 {
        if let Some(id) = item_id
            && let Some(index) = self.by_item.get(id)
        {
            return *index;
        }
        if !adding {
            return self.next_output_index.saturating_sub(1);
        }
        let index = self.next_output_index;
        self.next_output_index += 1;
        if let Some(id) = item_id {
            self.by_item.insert(id.to_owned(), index);
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_events_get_indices_and_sequence_numbers() {
        let mut fix = NativeFix::default();
        let events = [
            r#"{"type":"response.created","response":{"id":"resp_1","object":"response","status":"in_progress"}}"#,
            r#"{"type":"response.output_item.added","item":{"content":[],"id":"msg_1","role":"assistant","status":"in_progress","type":"message"}}"#,
            r#"{"type":"response.content_part.added","item_id":"msg_1","part":{"type":"output_text","text":""}}"#,
            r#"{"type":"response.output_text.delta","item_id":"msg_1","delta":"hi"}"#,
            r#"{"type":"response.output_item.done","item":{"type":"message","id":"msg_1","content":[]}}"#,
            r#"{"type":"response.output_item.added","item":{"id":"fc_1","type":"function_call","arguments":""}}"#,
            r#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","delta":"{}"}"#,
        ];
        let fixed: Vec<String> =
            events.iter().map(|e| fix.event(e).unwrap_or_else(|| (*e).to_owned())).collect();
        expect_test::expect![[r#"
            {"response":{"id":"resp_1","object":"response","status":"in_progress"},"sequence_number":0,"type":"response.created"}
            {"item":{"content":[],"id":"msg_1","role":"assistant","status":"in_progress","type":"message"},"output_index":0,"sequence_number":1,"type":"response.output_item.added"}
            {"content_index":0,"item_id":"msg_1","output_index":0,"part":{"annotations":[],"text":"","type":"output_text"},"sequence_number":2,"type":"response.content_part.added"}
            {"content_index":0,"delta":"hi","item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":3,"type":"response.output_text.delta"}
            {"item":{"content":[],"id":"msg_1","type":"message"},"output_index":0,"sequence_number":4,"type":"response.output_item.done"}
            {"item":{"arguments":"","id":"fc_1","type":"function_call"},"output_index":1,"sequence_number":5,"type":"response.output_item.added"}
            {"delta":"{}","item_id":"fc_1","output_index":1,"sequence_number":6,"type":"response.function_call_arguments.delta"}"#]]
        .assert_eq(&fixed.join("\n"));
        assert_eq!(NativeFix::default().event(r#"{"type":"x","sequence_number":3}"#), None);
    }
}
