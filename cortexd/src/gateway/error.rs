//! The one error type at the HTTP edge: each variant knows its status code and renders in the
//! dialect of the route it happened on (OpenAI or Anthropic).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Which API family a route belongs to; decides the shape of error bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

/// What went wrong, in terms a client can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid API key")]
    Unauthorized,
    #[error("model {0:?} is not served by this fleet")]
    UnknownModel(String),
    #[error("request body is larger than {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
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
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `type` of the error in `dialect`.
    fn kind(&self, dialect: Dialect) -> &'static str {
        match (dialect, self) {
            (Dialect::OpenAi, ApiError::BadRequest(_) | ApiError::TooLarge { .. }) => "invalid_request_error",
            (Dialect::OpenAi, ApiError::Unauthorized) => "authentication_error",
            (Dialect::OpenAi, ApiError::UnknownModel(_)) => "not_found_error",
            (Dialect::OpenAi, ApiError::Overloaded { .. }) => "unavailable_error",
            (Dialect::OpenAi, ApiError::Unsupported(_)) => "not_supported_error",
            (Dialect::OpenAi, _) => "server_error",
            (Dialect::Anthropic, ApiError::BadRequest(_) | ApiError::Unsupported(_)) => {
                "invalid_request_error"
            }
            (Dialect::Anthropic, ApiError::Unauthorized) => "authentication_error",
            (Dialect::Anthropic, ApiError::UnknownModel(_)) => "not_found_error",
            (Dialect::Anthropic, ApiError::TooLarge { .. }) => "request_too_large",
            (Dialect::Anthropic, ApiError::Overloaded { .. }) => "overloaded_error",
            (Dialect::Anthropic, ApiError::UpstreamTimeout(_)) => "timeout_error",
            (Dialect::Anthropic, _) => "api_error",
        }
    }

    /// The error body in `dialect`, as JSON.
    pub fn body(&self, dialect: Dialect) -> serde_json::Value {
        let message = self.to_string();
        match dialect {
            Dialect::OpenAi => serde_json::json!({"error": {
                "message": message,
                "type": self.kind(dialect),
                "param": null,
                "code": self.status().as_u16(),
            }}),
            Dialect::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.kind(dialect), "message": message},
            }),
        }
    }

    /// The error as the last event of a stream that already started, in `dialect`: OpenAI
    /// clients raise on a `data:` object with an `error` key, Anthropic ones on `event: error`.
    pub fn sse_event(&self, dialect: Dialect) -> String {
        match dialect {
            Dialect::OpenAi => format!("data: {}\n\n", self.body(dialect)),
            Dialect::Anthropic => format!("event: error\ndata: {}\n\n", self.body(dialect)),
        }
    }

    pub fn in_dialect(self, dialect: Dialect) -> DialectError {
        DialectError { error: self, dialect }
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
        if let ApiError::Overloaded { retry_after_s, .. } = self.error {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
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
        expect_test::expect![[r#"{"error":{"code":404,"message":"model \"nope\" is not served by this fleet","param":null,"type":"not_found_error"}}"#]]
            .assert_eq(&error.body(Dialect::OpenAi).to_string());
        expect_test::expect![[r#"{"error":{"message":"model \"nope\" is not served by this fleet","type":"not_found_error"},"type":"error"}"#]]
            .assert_eq(&error.body(Dialect::Anthropic).to_string());
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
