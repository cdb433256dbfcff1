//! The OpenAI Responses API: `POST /v1/responses` (streaming or not),
//! `POST /v1/responses/input_tokens`, `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`.
//!
//! Native pass-through where the serving harness says `responses` (only the envelope is read;
//! the engine judges the rest), else translation to Chat Completions and back
//! ([`request::request_to_chat`], [`response::chat_to_response`], [`stream::StreamTranslator`]).
//! A response an engine may have stored is remembered (id → replica, bounded in count and
//! age) so that `previous_response_id` and `GET /v1/responses/{id}` reach the replica that
//! made it; a translated response is never stored (`store: false` in what it answers).
//!
//! Architecture invariant: every stream a [`stream::StreamTranslator`] writes is one the openai
//! SDK's `responses.stream()` accumulates without error (created first, contiguous output
//! indices, every item added before its deltas and done once, completed last) or ends in
//! `response.failed`.

mod handler;
mod native;
mod request;
mod response;
mod stream;

pub use handler::{cancel, create, input_tokens, retrieve};
pub use request::{ToolNames, request_to_chat};
pub use response::{chat_to_response, skeleton};
pub use stream::StreamTranslator;
