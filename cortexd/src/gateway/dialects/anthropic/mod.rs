//! The Anthropic Messages dialect: its routes (`handler`), translation to and from OpenAI Chat
//! Completions, and fixes for engines that speak it natively.
//!
//! Pure functions and a state machine over `serde_json` values and SSE payloads: no IO, no
//! clock, except `handler`, which calls them from the `/v1/messages` routes:
//! - translated engines: [`request_to_chat`] on the way in, then [`chat_to_message`] (non-streaming)
//!   or a [`StreamTranslator`] fed every `data:` payload of the upstream stream;
//! - native engines: forward bytes, passing each event through [`fix_native_event`] or
//!   [`fix_native_raw_event`] (and non-streaming bodies through [`fix_native_message`]).
//!
//! Architecture invariant: every stream a [`StreamTranslator`] writes is one the official
//! anthropic SDK accepts (message_start first, contiguous block indices each started and
//! stopped once, message_delta with cumulative `output_tokens`, message_stop last), or it ends
//! in an `event: error` the SDK raises; never a silent truncation.

pub mod handler;
mod native;
mod request;
mod response;
mod stream;

pub use handler::{count_tokens, messages};
pub use native::{fix_native_event, fix_native_message, fix_native_raw_event};
pub use request::request_to_chat;
pub use response::chat_to_message;
pub use stream::StreamTranslator;

/// Why a translation failed. The gateway renders it with [`TranslateError::status`] and
/// [`TranslateError::error_type`] in the Anthropic error shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The client's request is malformed or uses something cortex cannot translate: HTTP 400.
    #[error("{0}")]
    InvalidRequest(String),
    /// The engine answered something that cannot be translated, or reported an error: HTTP 502.
    #[error("{0}")]
    Upstream(String),
}

impl TranslateError {
    /// The HTTP status the gateway answers with.
    pub fn status(&self) -> u16 {
        match self {
            TranslateError::InvalidRequest(_) => 400,
            TranslateError::Upstream(_) => 502,
        }
    }

    /// The Anthropic `error.type` for this error.
    pub fn error_type(&self) -> &'static str {
        error_type_for_status(self.status())
    }
}

/// The Anthropic `error.type` for an HTTP status, as the API documents them; anything
/// unlisted is `api_error`. 503 (cortex over capacity) reads as `overloaded_error`, which the SDK
/// retries like Anthropic's own 529.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// A complete Anthropic error body, `{"type":"error","error":{"type":…,"message":…}}`. Only for
/// the stream's `event: error`: HTTP error responses are rendered by the gateway's error type.
pub(crate) fn error_body(error_type: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"type": "error", "error": {"type": error_type, "message": message}})
}
