//! The one fix on the Chat Completions and Completions pass-through: a stop at the fleet's output
//! cap, below the client's own limit, is reported as a natural end (`finish_reason: "stop"`), not
//! `length`. Agents that speak Chat (qwen-code) take `length` for their own limit and escalate
//! (a retry with a larger limit, again and again); the client's own limit was not reached. A stop
//! at the client's own limit stays `length` (docs/gateway.md: a stop at the fleet's cap).

use bytes::Bytes;
use serde_json::Value;

use crate::gateway::core::forward::RawFix;

/// The spellings of a `length` finish in an engine's JSON (compact, or with a space).
const LENGTH: [&str; 2] = [r#""finish_reason":"length""#, r#""finish_reason": "length""#];
const STOP: &str = r#""finish_reason":"stop""#;

/// Whether the fleet's cap binds: below every limit the client set (or the client set none).
pub fn cap_binds(cap: Option<u64>, limits: &[Option<&Value>]) -> bool {
    let asked = limits.iter().flatten().filter_map(|limit| limit.as_u64()).min();
    cap.is_some_and(|cap| asked.is_none_or(|asked| asked > cap))
}

/// A stream whose answer the fleet's cap bounds: `length` finishes become `stop`.
pub struct CapIsNotAStop {
    /// Also drop the usage-only chunk cortex asked for on the client's behalf.
    pub strip_usage: bool,
}

impl RawFix for CapIsNotAStop {
    fn fix(&mut self, events: &[u8]) -> Option<Bytes> {
        let capped = LENGTH.iter().any(|length| contains(events, length.as_bytes()));
        capped.then(|| {
            let text = String::from_utf8_lossy(events);
            Bytes::from(LENGTH.iter().fold(text.into_owned(), |text, length| text.replace(length, STOP)))
        })
    }

    fn strips_usage_chunk(&self) -> bool {
        self.strip_usage
    }
}

/// The same for a complete answer: every choice's `length` finish becomes `stop`.
pub fn cap_is_not_a_stop(answer: &mut Value) {
    let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) else { return };
    for choice in choices {
        if choice.get("finish_reason").and_then(Value::as_str) == Some("length") {
            choice["finish_reason"] = "stop".into();
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cap_binds_below_every_limit_the_client_set() {
        let (big, small) = (json!(4096), json!(16));
        assert!(cap_binds(Some(512), &[None, None]));
        assert!(cap_binds(Some(512), &[Some(&big), None]));
        assert!(!cap_binds(Some(512), &[Some(&big), Some(&small)]));
        assert!(!cap_binds(Some(512), &[Some(&json!(512))]));
        assert!(!cap_binds(None, &[None]));
    }

    #[test]
    fn a_length_finish_at_the_cap_is_a_stop() {
        let mut fix = CapIsNotAStop { strip_usage: false };
        let events = b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n";
        let fixed = fix.fix(events).expect("rewritten");
        assert_eq!(
            &fixed[..],
            &b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"[..]
        );
        assert_eq!(fix.fix(b"data: {\"choices\":[{\"delta\":{\"content\":\"length\"}}]}\n\n"), None);
        let mut answer = json!({"choices": [{"finish_reason": "length"}, {"finish_reason": "stop"}]});
        cap_is_not_a_stop(&mut answer);
        assert_eq!(answer["choices"], json!([{"finish_reason": "stop"}, {"finish_reason": "stop"}]));
    }
}
