//! Affinity routing among a model's copies: which copy holds a request's conversation. A
//! request's session key (`key`: an id the client sends, else a digest of the conversation's
//! stable prefix), the copy chosen for it by rendezvous hashing with bounded loads (`choice`),
//! and the live sessions bound to each copy (`sessions`), which the planner weighs when a
//! model's copies shrink.
//!
//! Invariant: the key and the choice depend only on the request and the copies' loads, never
//! on process state (no random seeds), so every gateway of a cluster routes a session to the
//! same copy without sharing anything.

mod choice;
mod key;
mod sessions;

pub use choice::{Outcome, choose};
pub use key::{Digest, FirstTurn, Key, Metadata, SessionId, key};
pub use sessions::Sessions;
