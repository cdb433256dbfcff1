//! The client APIs, one folder each, over the dialect-neutral core: `openai` (Chat Completions,
//! Completions, Embeddings, Models), `anthropic` (Messages), `responses` (OpenAI Responses), the
//! Chat Completions layer the translating dialects share (`chat`), and the answers outside every
//! route (`fallback`).
//!
//! Each dialect has the same inner shape: `handler` (its routes over the pipeline), then, where
//! it translates, `request`, `response` and `stream` (to and from Chat Completions), and
//! `native` (fix-ups for engines that speak it themselves).

pub mod anthropic;
pub(crate) mod chat;
pub(crate) mod fallback;
pub(crate) mod openai;
pub mod responses;
