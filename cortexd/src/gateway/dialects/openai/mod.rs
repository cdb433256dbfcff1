//! The OpenAI dialect: Chat Completions, Completions and Embeddings passed through to the
//! engine (`handler`), a stop at the fleet's cap reported as a natural end (`native`), and the
//! model list (`models`).

pub(crate) mod handler;
pub(crate) mod models;
pub(crate) mod native;

pub use handler::{chat_completions, completions, embeddings};
