//! OpenAI Chat Completions, the dialect every engine speaks and every translation goes
//! through: the shapes cortex reads back from an engine (`types`), the one walk over a Chat
//! Completions stream that each translating dialect writes its own events from (`stream`), the
//! one stream transform that drives it (`translate`), and the one editor of request bodies
//! (`body`). Translations fail with the gateway's one error type: `ApiError::BadRequest` for
//! what the client sent, `ApiError::Upstream` for what the engine answered.

pub(crate) mod body;
pub(crate) mod stream;
pub(crate) mod translate;
pub(crate) mod types;
