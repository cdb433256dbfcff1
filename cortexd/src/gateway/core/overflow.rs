//! Recognising an engine's "the prompt does not fit the context window" refusal, whatever
//! words the engine uses, so the gateway can answer the error agents act on (Anthropic
//! `prompt is too long: N tokens > M maximum`, OpenAI `context_length_exceeded`).
//!
//! Engines seen: llama.cpp answers 400 `{"error":{"type":"exceed_context_size_error",
//! "message":"request (N tokens) exceeds the available context size (M tokens), try increasing
//! it","n_prompt_tokens":N,"n_ctx":M}}`; vLLM says `This model's maximum context length is M
//! tokens. However, you requested N tokens ...`. Figures the engine gives win; the fleet's
//! `ctx_size` fills in the maximum when the engine names none.

use crate::gateway::core::error::ApiError;

/// The overflow error for an engine's refusal, or `None` when it is about something else.
pub fn detect(status: u16, body: &[u8], message: &str, ctx_size: Option<u64>) -> Option<ApiError> {
    if !(400..500).contains(&status) && status != 500 {
        return None;
    }
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed.as_ref().and_then(|v| v.pointer(&format!("/error/{name}")).or_else(|| v.get(name)).cloned())
    };
    let typed = field("type").and_then(|t| t.as_str().map(str::to_owned)).unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    let says_so = typed == "exceed_context_size_error"
        || lower.contains("exceeds the available context size")
        || lower.contains("maximum context length")
        || lower.contains("context length exceeded")
        || lower.contains("context_length_exceeded")
        || lower.contains("prompt is too long");
    if !says_so {
        return None;
    }
    let number = |name: &str| field(name).and_then(|v| v.as_u64());
    let (text_prompt, text_max) = figures_in(&lower);
    Some(ApiError::ContextOverflow {
        prompt_tokens: number("n_prompt_tokens").or(text_prompt),
        max_tokens: number("n_ctx").or(text_max).or(ctx_size),
        message: message.to_owned(),
    })
}

/// `(prompt, maximum)` read from the known wordings.
fn figures_in(message: &str) -> (Option<u64>, Option<u64>) {
    if let Some(rest) = message.split("request (").nth(1) {
        let prompt = leading_number(rest);
        let max = message.split("context size (").nth(1).and_then(leading_number);
        return (prompt, max);
    }
    if let Some(rest) = message.split("maximum context length is ").nth(1) {
        let max = leading_number(rest);
        let prompt = message.split("you requested ").nth(1).and_then(leading_number);
        return (prompt, max);
    }
    (None, None)
}

fn leading_number(text: &str) -> Option<u64> {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(error: Option<ApiError>) -> Option<(Option<u64>, Option<u64>)> {
        match error? {
            ApiError::ContextOverflow { prompt_tokens, max_tokens, .. } => Some((prompt_tokens, max_tokens)),
            _ => None,
        }
    }

    #[test]
    fn llama_cpp_vllm_and_unrelated_errors() {
        let llama = br#"{"error":{"code":400,"message":"request (5000 tokens) exceeds the available context size (4096 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#;
        let message =
            "request (5000 tokens) exceeds the available context size (4096 tokens), try increasing it";
        assert_eq!(figures(detect(400, llama, message, None)), Some((Some(5000), Some(4096))));
        // The same words without the extra fields.
        assert_eq!(figures(detect(400, b"{}", message, Some(1))), Some((Some(5000), Some(4096))));
        let vllm = "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens (2900 in the messages, 100 in the completion).";
        assert_eq!(figures(detect(400, b"{}", vllm, None)), Some((Some(3000), Some(2048))));
        assert_eq!(figures(detect(400, b"{}", "prompt is too long", Some(512))), Some((None, Some(512))));
        assert_eq!(figures(detect(400, b"{}", "temperature must be positive", Some(512))), None);
        assert_eq!(figures(detect(503, b"{}", message, None)), None);
        let rendered = ApiError::ContextOverflow {
            prompt_tokens: Some(5000),
            max_tokens: Some(4096),
            message: String::new(),
        };
        assert_eq!(rendered.to_string(), "prompt is too long: 5000 tokens > 4096 maximum");
    }
}
