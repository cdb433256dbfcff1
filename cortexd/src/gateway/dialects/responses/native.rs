//! Fixes for engines whose native `/v1/responses` output deviates from what the API always sends,
//! applied while passing it through, so that it parses under the official SDKs' types (the openai
//! SDK's `responses.stream()`, the Vercel AI SDK's schemas).
//!
//! Known deviations (llama.cpp, the pinned build):
//! - events carry no `sequence_number`, no `output_index` and no `content_index`, and text deltas
//!   no `logprobs`; the openai SDK indexes its snapshot by `output_index` and fails without it.
//!   Such events get the missing fields (output indices in the order items were added, found
//!   again by item id). An event that already has a `sequence_number` keeps its indices.
//! - the `response` of `response.created` and `response.in_progress` has only `id`, `object` and
//!   `status` (no `created_at`, no `model`: the Vercel AI SDK refuses the stream), and the final
//!   one lacks the echoed request fields (`tools`, `tool_choice`, `parallel_tool_calls`, ...) and
//!   `output_tokens_details`. Every `response` object gets what it lacks from a skeleton made
//!   from the request ([`response::skeleton`]); nothing the engine sent is replaced.
//! - an answer cut at the client's own `max_output_tokens` is `status: "completed"`. When the
//!   client's limit (not the fleet's cap) bounds the answer and the output reached it, the status
//!   is `incomplete` with `incomplete_details.reason = "max_output_tokens"`. A stop at the
//!   fleet's cap stays `completed` (docs/gateway.md: a stop at the fleet's cap).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::gateway::dialects::responses::response;

/// Lifecycle events: they carry the whole `response` object.
const LIFECYCLE: [&str; 4] =
    ["\"response.created\"", "\"response.in_progress\"", "\"response.completed\"", "\"response.incomplete\""];

/// Per-stream state of the fix.
#[derive(Debug, Default)]
pub struct NativeFix {
    sequence: u64,
    next_output_index: u64,
    by_item: HashMap<String, u64>,
    response: ResponseFix,
}

/// What a native `response` object gets when the engine left it out.
#[derive(Debug, Default)]
pub struct ResponseFix {
    /// Fields the API always sends, with the values this request implies.
    fill: Map<String, Value>,
    /// The client's own output limit, when it (not the fleet's cap) bounds the answer.
    limit: Option<u64>,
}

impl ResponseFix {
    /// The fix for one request: `request` is the client's body, `model` the name the answer
    /// reports, `created_at` the time the request arrived; `limit` as in [`ResponseFix::limit`].
    pub fn new(request: &Value, model: &str, created_at: u64, limit: Option<u64>) -> Self {
        let mut fill = response::skeleton(request, "", model, created_at);
        fill.remove("id");
        fill.remove("status");
        fill.insert("store".into(), request.get("store").and_then(Value::as_bool).unwrap_or(true).into());
        ResponseFix { fill, limit }
    }

    /// [`ResponseFix::new`] from the client's raw body: only the echoed fields are read (the
    /// conversation is skipped, not built); an unreadable body echoes the defaults.
    pub fn from_body(body: &[u8], model: &str, created_at: u64, limit: Option<u64>) -> Self {
        let echoed = serde_json::from_slice::<Echoed>(body).unwrap_or_default();
        let request: Map<String, Value> = [
            ("instructions", echoed.instructions),
            ("max_output_tokens", echoed.max_output_tokens),
            ("metadata", echoed.metadata),
            ("parallel_tool_calls", echoed.parallel_tool_calls),
            ("previous_response_id", echoed.previous_response_id),
            ("temperature", echoed.temperature),
            ("text", echoed.text),
            ("tool_choice", echoed.tool_choice),
            ("tools", echoed.tools),
            ("top_p", echoed.top_p),
            ("reasoning", echoed.reasoning),
            ("store", echoed.store),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?)))
        .collect();
        ResponseFix::new(&Value::Object(request), model, created_at, limit)
    }

    /// Completes one `response` object in place.
    pub fn apply(&self, response: &mut Map<String, Value>) {
        for (key, value) in &self.fill {
            if !response.contains_key(key) {
                response.insert(key.clone(), value.clone());
            }
        }
        if let Some(usage) = response.get_mut("usage").and_then(Value::as_object_mut) {
            complete_usage(usage);
        }
        let output =
            response.get("usage").and_then(|usage| usage.get("output_tokens")).and_then(Value::as_u64);
        let reached = self.limit.zip(output).is_some_and(|(limit, output)| output >= limit);
        if reached && response.get("status").and_then(Value::as_str) == Some("completed") {
            response.insert("status".into(), "incomplete".into());
            response.insert("incomplete_details".into(), json!({"reason": "max_output_tokens"}));
        }
    }
}

/// The request fields a `response` object echoes.
#[derive(Debug, Default, Deserialize)]
struct Echoed {
    instructions: Option<Value>,
    max_output_tokens: Option<Value>,
    metadata: Option<Value>,
    parallel_tool_calls: Option<Value>,
    previous_response_id: Option<Value>,
    temperature: Option<Value>,
    text: Option<Value>,
    tool_choice: Option<Value>,
    tools: Option<Value>,
    top_p: Option<Value>,
    reasoning: Option<Value>,
    store: Option<Value>,
}

/// Usage with the details the API always sends (`cached_tokens`, `cache_write_tokens`,
/// `reasoning_tokens`) and the total.
fn complete_usage(usage: &mut Map<String, Value>) {
    let details = [
        ("input_tokens_details", &["cached_tokens", "cache_write_tokens"][..]),
        ("output_tokens_details", &["reasoning_tokens"][..]),
    ];
    for (field, counts) in details {
        let entry = usage.entry(field).or_insert_with(|| json!({}));
        if let Some(entry) = entry.as_object_mut() {
            for count in counts {
                entry.entry(*count).or_insert_with(|| 0.into());
            }
        }
    }
    if !usage.contains_key("total_tokens") {
        let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        let total = count("input_tokens") + count("output_tokens");
        usage.insert("total_tokens".into(), total.into());
    }
}

impl NativeFix {
    pub fn new(response: ResponseFix) -> Self {
        NativeFix { response, ..NativeFix::default() }
    }

    /// The corrected `data` of one event, or `None` to forward it unchanged.
    pub fn event(&mut self, data: &str) -> Option<String> {
        let numbered = data.contains("\"sequence_number\"");
        if numbered && !LIFECYCLE.iter().any(|kind| data.contains(kind)) {
            return None;
        }
        let mut event: Value = serde_json::from_str(data).ok()?;
        let object = event.as_object_mut()?;
        let kind = object.get("type").and_then(Value::as_str)?.to_owned();
        if let Some(response) = object.get_mut("response").and_then(Value::as_object_mut) {
            self.response.apply(response);
        }
        if !numbered {
            object.insert("sequence_number".into(), self.sequence.into());
            self.sequence += 1;
            self.add_indices(&kind, object);
        }
        Some(event.to_string())
    }

    /// `output_index`, `content_index`, `logprobs` and a part's `annotations` where missing.
    fn add_indices(&mut self, kind: &str, object: &mut Map<String, Value>) {
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

    fn fixed(fix: &mut NativeFix, data: &str) -> Value {
        serde_json::from_str(&fix.event(data).unwrap_or_else(|| data.to_owned())).expect("JSON")
    }

    #[test]
    fn every_response_object_gets_what_the_api_always_sends() {
        let request = json!({"model": "m", "input": "hi", "tools": [], "store": false});
        let mut fix = NativeFix::new(ResponseFix::new(&request, "gemma", 1_700_000_000, None));
        let created = fixed(
            &mut fix,
            r#"{"type":"response.created","response":{"id":"resp_1","object":"response","status":"in_progress"}}"#,
        );
        let response = &created["response"];
        assert_eq!(
            (response["created_at"].as_u64(), response["model"].as_str()),
            (Some(1_700_000_000), Some("gemma"))
        );
        assert_eq!(
            (response["id"].as_str(), response["status"].as_str()),
            (Some("resp_1"), Some("in_progress"))
        );
        assert_eq!((response["tools"].clone(), response["tool_choice"].as_str()), (json!([]), Some("auto")));
        assert_eq!((response["output"].clone(), response["store"].as_bool()), (json!([]), Some(false)));
        // The engine's own values stay; usage gets its details and total.
        let completed = fixed(
            &mut fix,
            r#"{"type":"response.completed","response":{"id":"resp_1","object":"response","created_at":5,"model":"e","status":"completed","output":[],"usage":{"input_tokens":3,"output_tokens":4}}}"#,
        );
        let response = &completed["response"];
        assert_eq!((response["created_at"].as_u64(), response["model"].as_str()), (Some(5), Some("e")));
        assert_eq!(
            response["usage"],
            json!({"input_tokens": 3, "output_tokens": 4, "total_tokens": 7,
                   "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
        );
        assert_eq!(
            (response["status"].as_str(), response["incomplete_details"].clone()),
            (Some("completed"), Value::Null)
        );
        assert_eq!(completed["sequence_number"].as_u64(), Some(1));
        // An engine that numbers its events: lifecycle events are completed, the rest untouched.
        let mut fix = NativeFix::new(ResponseFix::new(&request, "gemma", 9, None));
        let numbered =
            fixed(&mut fix, r#"{"type":"response.in_progress","sequence_number":7,"response":{"id":"r"}}"#);
        assert_eq!(
            (numbered["sequence_number"].as_u64(), numbered["response"]["created_at"].as_u64()),
            (Some(7), Some(9))
        );
        assert_eq!(
            fix.event(
                r#"{"type":"response.output_text.delta","sequence_number":8,"delta":"\"response.created\""}"#
            ),
            None
        );
    }

    #[test]
    fn the_engines_cached_tokens_stay_in_usage_streamed_or_not() {
        // llama-server's own /v1/responses: 48 of the 60 prompt tokens came from its cache.
        let usage = r#"{"input_tokens":60,"output_tokens":4,"total_tokens":64,"input_tokens_details":{"cached_tokens":48}}"#;
        let mut fix = NativeFix::new(ResponseFix::new(&json!({}), "gemma", 0, None));
        let completed = format!(
            r#"{{"type":"response.completed","response":{{"id":"resp_1","status":"completed","usage":{usage}}}}}"#
        );
        let streamed = fixed(&mut fix, &completed)["response"]["usage"].take();
        let mut answer: Value =
            serde_json::from_str(&format!(r#"{{"id":"resp_1","status":"completed","usage":{usage}}}"#))
                .expect("JSON");
        let answer_object = answer.as_object_mut().expect("an object");
        ResponseFix::new(&json!({}), "gemma", 0, None).apply(answer_object);
        for usage in [&streamed, &answer["usage"]] {
            assert_eq!(usage["input_tokens_details"], json!({"cached_tokens": 48, "cache_write_tokens": 0}));
            assert_eq!(usage["input_tokens"], 60, "Responses' input_tokens include the cached ones");
        }
    }

    #[test]
    fn an_answer_cut_at_the_clients_own_limit_is_incomplete() {
        let completed = |limit: Option<u64>, output: u64| {
            let mut fix = NativeFix::new(ResponseFix::new(&json!({}), "m", 0, limit));
            let event = format!(
                r#"{{"type":"response.completed","response":{{"status":"completed","usage":{{"input_tokens":1,"output_tokens":{output}}}}}}}"#
            );
            let response = fixed(&mut fix, &event)["response"].take();
            (response["status"].as_str().map(str::to_owned), response["incomplete_details"].clone())
        };
        let incomplete = (Some("incomplete".to_owned()), json!({"reason": "max_output_tokens"}));
        assert_eq!(completed(Some(16), 16), incomplete);
        assert_eq!(completed(Some(16), 9), (Some("completed".to_owned()), Value::Null));
        // No client limit that binds (none, or the fleet's cap is lower): a natural end.
        assert_eq!(completed(None, 512), (Some("completed".to_owned()), Value::Null));
    }
}
