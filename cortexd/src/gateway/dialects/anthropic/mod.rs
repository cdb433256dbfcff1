//! The Anthropic Messages dialect: its routes (`handler`), translation to and from OpenAI Chat
//! Completions, and fixes for engines that speak it natively.
//!
//! Pure functions and a state machine over `serde_json` values and SSE payloads: no IO, no
//! clock, except `handler`, which calls them from the `/v1/messages` routes:
//! - translated engines: [`request_to_chat`] on the way in, then [`chat_to_message`] (non-streaming)
//!   or a [`StreamTranslator`] fed every `data:` payload of the upstream stream;
//! - native engines: forward bytes, passing each stream's events through a [`NativeStreamFix`]
//!   ([`fix_native_event`], [`fix_native_raw_event`] for one event alone) and non-streaming
//!   bodies through [`fix_native_message`].
//!
//! Architecture invariant: every stream a [`StreamTranslator`] writes is one the official
//! anthropic SDK accepts (message_start first, contiguous block indices each started and
//! stopped once, message_delta with cumulative `output_tokens`, message_stop last), or it ends
//! in an `event: error` the SDK raises; never a silent truncation.

mod handler;
mod native;
mod request;
mod response;
mod stream;

pub use handler::{count_tokens, messages};
pub use native::{NativeStreamFix, fix_native_event, fix_native_message, fix_native_raw_event};
pub use request::request_to_chat;
pub use response::chat_to_message;
pub use stream::StreamTranslator;
