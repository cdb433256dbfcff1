//! The OpenAI dialect: Chat Completions, Completions and Embeddings passed through to the
//! engine (`handler`), and the model list (`models`).

pub mod handler;
pub mod models;

pub use handler::{chat_completions, completions, embeddings};
