//! OpenAI Chat Completions, the dialect every engine speaks and every translation goes
//! through: the shapes cortex reads back from an engine (`types`).

pub mod types;
