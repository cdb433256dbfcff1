//! The OpenAI dialect: Chat Completions, Completions and Embeddings passed through to the
//! engine (`handler`), and the model list (`models`).

pub(crate) mod handler;
pub(crate) mod models;

pub use handler::{chat_completions, completions, embeddings};
