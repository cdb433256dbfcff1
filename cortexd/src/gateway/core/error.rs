//! The one error type at the HTTP edge: each variant knows its status code and renders in the
//! dialect of the route it happened on (OpenAI or Anthropic).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Which API family a route belongs to; decides the shape of error bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    /// OpenAI's Responses API: OpenAI-shaped error bodies, but a stream that fails midway ends
    /// with an `error` event (`{"type":"error","code","message"}`) as that API streams them.
    Responses,
}

/// What went wrong, in terms a client can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// The prompt does not fit the model's context window. `prompt_tokens`/`max_tokens` are
    /// the engine's figures (or the fleet's `ctx_size`) when known.
    #[error("{}", context_message(*.prompt_tokens, *.max_tokens, message))]
    ContextOverflow { prompt_tokens: Option<u64>, max_tokens: Option<u64>, message: String },
    #[error("invalid API key")]
    Unauthorized,
    /// A declared key that may not be used (revoked, expired): 401 with the reason.
    #[error("{0}")]
    KeyRefused(String),
    /// The key may not use this model: 403.
    #[error("{0}")]
    Forbidden(String),
    /// The key's rate (`rpm`, `tpm`) or concurrency is over its limit: 429, retry later.
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64, tokens: bool },
    /// The key's token budget is spent until its window turns: 429, not worth retrying soon.
    #[error("{message}")]
    QuotaExhausted { message: String, retry_after_s: u64 },
    #[error("no route {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    NotFound(String),
    #[error("model {0:?} is not served by this fleet")]
    UnknownModel(String),
    #[error("request body is larger than {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
    /// The request's body did not arrive in time (the listener's body timeouts).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{message}")]
    Overloaded { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::ContextOverflow { .. } => StatusCode::BAD_REQUEST,
            ApiError::NoRoute { .. } | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized | ApiError::KeyRefused(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } | ApiError::QuotaExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `type` of the error in `dialect` (`error.type` in the body).
    pub fn error_type(&self, dialect: Dialect) -> &'static str {
        match (dialect, self) {
            (Dialect::Anthropic, _) => self.anthropic_kind(),
            (
                _,
                ApiError::BadRequest(_)
                | ApiError::TooLarge { .. }
                | ApiError::RequestTimeout(_)
                | ApiError::ContextOverflow { .. }
                | ApiError::NoRoute { .. }
                | ApiError::MethodNotAllowed { .. },
            ) => "invalid_request_error",
            (_, ApiError::Unauthorized | ApiError::KeyRefused(_)) => "authentication_error",
            (_, ApiError::Forbidden(_)) => "permission_error",
            // OpenAI names the limit that was hit (`requests` or `tokens`) in the type.
            (_, ApiError::RateLimited { tokens: false, .. }) => "requests",
            (_, ApiError::RateLimited { tokens: true, .. }) => "tokens",
            (_, ApiError::QuotaExhausted { .. }) => "insufficient_quota",
            (_, ApiError::UnknownModel(_) | ApiError::NotFound(_)) => "not_found_error",
            (_, ApiError::Overloaded { .. }) => "unavailable_error",
            (_, ApiError::Unsupported(_)) => "not_supported_error",
            (_, _) => "server_error",
        }
    }

    fn anthropic_kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_)
            | ApiError::Unsupported(_)
            | ApiError::ContextOverflow { .. }
            | ApiError::RequestTimeout(_)
            | ApiError::MethodNotAllowed { .. } => "invalid_request_error",
            ApiError::Unauthorized | ApiError::KeyRefused(_) => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::RateLimited { .. } | ApiError::QuotaExhausted { .. } => "rate_limit_error",
            ApiError::UnknownModel(_) | ApiError::NotFound(_) | ApiError::NoRoute { .. } => "not_found_error",
            ApiError::TooLarge { .. } => "request_too_large",
            ApiError::Overloaded { .. } => "overloaded_error",
            ApiError::UpstreamTimeout(_) => "timeout_error",
            _ => "api_error",
        }
    }

    /// OpenAI's `error.code`: a string the clients branch on, or null (never a number).
    fn openai_code(&self) -> Option<&'static str> {
        match self {
            ApiError::ContextOverflow { .. } => Some("context_length_exceeded"),
            ApiError::Unauthorized | ApiError::KeyRefused(_) => Some("invalid_api_key"),
            ApiError::Forbidden(_) => Some("model_not_allowed"),
            ApiError::RateLimited { .. } => Some("rate_limit_exceeded"),
            ApiError::QuotaExhausted { .. } => Some("insufficient_quota"),
            ApiError::UnknownModel(_) => Some("model_not_found"),
            ApiError::TooLarge { .. } => Some("request_too_large"),
            ApiError::RequestTimeout(_) => Some("request_timeout"),
            ApiError::Overloaded { .. } => Some("overloaded"),
            ApiError::NoRoute { .. } | ApiError::NotFound(_) => Some("not_found"),
            ApiError::MethodNotAllowed { .. } => Some("method_not_allowed"),
            ApiError::Upstream(_) | ApiError::UpstreamTimeout(_) | ApiError::Internal(_) => {
                Some("server_error")
            }
            ApiError::BadRequest(_) | ApiError::Unsupported(_) => None,
        }
    }

    /// The error body in `dialect`, as JSON.
    pub fn body(&self, dialect: Dialect) -> serde_json::Value {
        let message = self.to_string();
        match dialect {
            Dialect::OpenAi | Dialect::Responses => serde_json::json!({"error": {
                "message": message,
                "type": self.error_type(dialect),
                "param": null,
                "code": self.openai_code(),
            }}),
            Dialect::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.error_type(dialect), "message": message},
            }),
        }
    }

    /// The error as the last event of a stream that already started, in `dialect`: OpenAI
    /// clients raise on a `data:` object with an `error` key, Anthropic ones on `event: error`.
    pub fn sse_event(&self, dialect: Dialect) -> String {
        match dialect {
            Dialect::OpenAi => format!("data: {}\n\n", self.body(dialect)),
            Dialect::Anthropic => format!("event: error\ndata: {}\n\n", self.body(dialect)),
            Dialect::Responses => {
                let event = serde_json::json!({
                    "type": "error",
                    "code": self.openai_code().unwrap_or("server_error"),
                    "message": self.to_string(),
                    "param": null,
                    "sequence_number": 0,
                });
                format!("event: error\ndata: {event}\n\n")
            }
        }
    }

    pub fn in_dialect(self, dialect: Dialect) -> DialectError {
        DialectError { error: self, dialect }
    }
}

/// The message of a context overflow: Anthropic's exact wording when both figures are known
/// (Claude Code compacts the conversation when it reads it), else the engine's own message.
fn context_message(prompt_tokens: Option<u64>, max_tokens: Option<u64>, message: &str) -> String {
    match (prompt_tokens, max_tokens) {
        (Some(prompt), Some(max)) => format!("prompt is too long: {prompt} tokens > {max} maximum"),
        (None, Some(max)) => format!("prompt is too long: more tokens than the {max} maximum ({message})"),
        _ => format!("prompt is too long: {message}"),
    }
}

/// An [`ApiError`] bound to the dialect of its route, ready to become a response.
#[derive(Debug)]
pub struct DialectError {
    pub error: ApiError,
    pub dialect: Dialect,
}

impl IntoResponse for DialectError {
    fn into_response(self) -> Response {
        let mut response = (self.error.status(), axum::Json(self.error.body(self.dialect))).into_response();
        let headers = response.headers_mut();
        match self.error {
            ApiError::Overloaded { retry_after_s, .. } | ApiError::RateLimited { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            }
            ApiError::QuotaExhausted { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
                // The official SDKs retry a 429 on their own; a spent budget will not come back
                // within their retries, so they are told not to (both honour this header).
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_in_the_dialect_of_the_route() {
        let error = ApiError::UnknownModel("nope".into());
        expect_test::expect![[r#"{"error":{"code":"model_not_found","message":"model \"nope\" is not served by this fleet","param":null,"type":"not_found_error"}}"#]]
            .assert_eq(&error.body(Dialect::OpenAi).to_string());
        expect_test::expect![[r#"{"error":{"message":"model \"nope\" is not served by this fleet","type":"not_found_error"},"type":"error"}"#]]
            .assert_eq(&error.body(Dialect::Anthropic).to_string());
    }

    #[test]
    fn openai_codes_are_strings_or_null_and_overflow_reads_like_anthropics() {
        assert_eq!(
            ApiError::BadRequest("x".into()).body(Dialect::OpenAi)["error"]["code"],
            serde_json::Value::Null
        );
        let overflow = ApiError::ContextOverflow {
            prompt_tokens: Some(9000),
            max_tokens: Some(8192),
            message: "engine words".into(),
        };
        assert_eq!(overflow.body(Dialect::OpenAi)["error"]["code"], "context_length_exceeded");
        expect_test::expect![[r#"{"error":{"message":"prompt is too long: 9000 tokens > 8192 maximum","type":"invalid_request_error"},"type":"error"}"#]]
            .assert_eq(&overflow.body(Dialect::Anthropic).to_string());
        let event = ApiError::Upstream("broke".into()).sse_event(Dialect::Responses);
        assert!(
            event.starts_with("event: error\ndata: {") && event.contains(r#""code":"server_error""#),
            "{event}"
        );
    }

    #[test]
    fn key_refusals_have_the_status_and_type_each_sdk_maps_to_its_exception() {
        let cases = [
            (
                ApiError::KeyRefused("key \"a\" was revoked".into()),
                401,
                "authentication_error",
                "authentication_error",
            ),
            (ApiError::Forbidden("no".into()), 403, "permission_error", "permission_error"),
            (
                ApiError::RateLimited { message: "slow".into(), retry_after_s: 3, tokens: false },
                429,
                "requests",
                "rate_limit_error",
            ),
            (
                ApiError::QuotaExhausted { message: "spent".into(), retry_after_s: 60 },
                429,
                "insufficient_quota",
                "rate_limit_error",
            ),
        ];
        for (error, status, openai, anthropic) in cases {
            assert_eq!(error.status().as_u16(), status);
            assert_eq!(error.body(Dialect::OpenAi)["error"]["type"], openai);
            assert_eq!(error.body(Dialect::Anthropic)["error"]["type"], anthropic);
        }
        let spent = ApiError::QuotaExhausted { message: "spent".into(), retry_after_s: 60 };
        assert_eq!(spent.body(Dialect::OpenAi)["error"]["code"], "insufficient_quota");
        let response = spent.in_dialect(Dialect::OpenAi).into_response();
        assert_eq!(
            (&response.headers()[header::RETRY_AFTER], &response.headers()["x-should-retry"]),
            (&HeaderValue::from(60), &HeaderValue::from_static("false"))
        );
        let limited = ApiError::RateLimited { message: "slow".into(), retry_after_s: 3, tokens: true };
        assert_eq!(
            limited.in_dialect(Dialect::Anthropic).into_response().headers()[header::RETRY_AFTER],
            "3"
        );
    }

    #[test]
    fn overload_carries_retry_after() {
        let response = ApiError::Overloaded { message: "queue full".into(), retry_after_s: 7 }
            .in_dialect(Dialect::Anthropic)
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }
}
