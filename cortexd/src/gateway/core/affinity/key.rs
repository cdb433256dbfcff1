//! A request's session key, in this order: the session id Claude Code sends in
//! `metadata.user_id`, Codex's `session-id` (or `session_id`) header, the Responses
//! `prompt_cache_key`, a generic `x-session-id` header; else a digest of the conversation's
//! stable prefix (system prompt, instructions, tools, and the messages up to the first user
//! turn), which every turn of one conversation resends unchanged.
//!
//! The prefix is digested while the envelope is parsed (the types here are envelope fields), so
//! the body is parsed once and nothing is re-serialised or copied: a part feeds the hash with
//! at most [`DIGEST_BYTES`] of its text, the messages after the first user turn are skipped
//! unread, any JSON type is accepted where a client might send another (judging it is the
//! engine's business), and nesting is bounded by the JSON parser's own depth limit.

use std::fmt;

use axum::http::HeaderMap;
use rapidhash::v3::{RapidSecrets, RapidStreamHasherV3};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The hash's fixed secrets: a constant, so that every process and every gateway agrees.
static SECRETS: RapidSecrets = RapidSecrets::seed(0x636f_7274_6578_6166);

/// How many bytes of one part of the prefix feed its digest.
pub const DIGEST_BYTES: usize = 64 * 1024;

/// A session key. rapidhash v3's stream hash is portable and stable across its versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub u64);

impl Key {
    /// The key of an id the client sent.
    fn of_id(id: &[u8]) -> Key {
        let mut feed = Feed::new(usize::MAX);
        feed.write(b'S', id);
        Key(feed.finish())
    }

    /// This key combined with `name` (a copy's neuron: its rendezvous weight; a model: the
    /// session's identity in that model's table).
    pub fn with(self, name: &str) -> u64 {
        let mut hasher = RapidStreamHasherV3::new(&SECRETS);
        hasher.write(&self.0.to_le_bytes());
        hasher.write(name.as_bytes());
        hasher.finish()
    }
}

/// The session key of a request: its headers, and what its envelope parsed (`metadata`,
/// `prompt_cache_key`, and the digests of its prefix's parts in a fixed order). `None` when
/// the request names no session and has no prefix.
pub fn key(
    headers: &HeaderMap,
    metadata: Option<&Metadata>,
    prompt_cache_key: Option<&SessionId>,
    prefix: &[Option<u64>],
) -> Option<Key> {
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes()).filter(|v| !v.is_empty());
    let explicit = metadata
        .and_then(|m| m.session.as_deref())
        .map(str::as_bytes)
        .or_else(|| header("session-id"))
        .or_else(|| header("session_id"))
        .or_else(|| prompt_cache_key.and_then(|k| k.0.as_deref()).map(str::as_bytes))
        .or_else(|| header("x-session-id"));
    if let Some(id) = explicit {
        return Some(Key::of_id(id));
    }
    if prefix.iter().all(Option::is_none) {
        return None;
    }
    let mut feed = Feed::new(usize::MAX);
    for (part, digest) in (0u8..).zip(prefix) {
        match digest {
            Some(digest) => feed.write(b'P'.wrapping_add(part), &digest.to_le_bytes()),
            None => feed.write(b'-', &[]),
        }
    }
    Some(Key(feed.finish()))
}

/// The hash a digest is computed with, and how many text bytes it may still take.
struct Feed {
    hasher: RapidStreamHasherV3<'static>,
    left: usize,
}

impl Feed {
    fn new(budget: usize) -> Self {
        Feed { hasher: RapidStreamHasherV3::new(&SECRETS), left: budget }
    }

    /// One token: its kind, its length and (within the budget) its bytes, so that no two
    /// different token sequences feed the same bytes.
    fn write(&mut self, kind: u8, bytes: &[u8]) {
        if self.left == 0 {
            return;
        }
        let take = bytes.len().min(self.left);
        self.left -= take;
        self.hasher.write(&[kind]);
        self.hasher.write(&(bytes.len() as u64).to_le_bytes());
        self.hasher.write(&bytes[..take]);
    }

    fn finish(&self) -> u64 {
        self.hasher.finish()
    }
}

/// A digest of one part of the prefix (`system`, `instructions`, `tools`): any JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(pub u64);

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut feed = Feed::new(DIGEST_BYTES);
        Hash { feed: &mut feed, turns: false }.deserialize(deserializer)?;
        Ok(Digest(feed.finish()))
    }
}

/// A digest of a conversation's opening (`messages`, `input`): an array's items up to and
/// including the first with `"role": "user"` (the rest is skipped), or any other value whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstTurn(pub u64);

impl<'de> serde::Deserialize<'de> for FirstTurn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut feed = Feed::new(DIGEST_BYTES);
        Hash { feed: &mut feed, turns: true }.deserialize(deserializer)?;
        Ok(FirstTurn(feed.finish()))
    }
}

/// What a token was, as far as finding the first user turn needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Other,
    /// The string `"role"` (as a key).
    Role,
    /// The string `"user"` (as a value).
    User,
    /// An object with `"role": "user"`.
    UserTurn,
}

/// Feeds one JSON value to the digest. `turns`: the value is a conversation, and an array
/// ends at its first user turn.
struct Hash<'f> {
    feed: &'f mut Feed,
    turns: bool,
}

impl<'de> DeserializeSeed<'de> for Hash<'_> {
    type Value = Seen;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Seen, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Hash<'_> {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Seen, E> {
        self.feed.write(b'b', &[u8::from(v)]);
        Ok(Seen::Other)
    }

    fn visit_i64<E>(self, v: i64) -> Result<Seen, E> {
        self.feed.write(b'i', &v.to_le_bytes());
        Ok(Seen::Other)
    }

    fn visit_u64<E>(self, v: u64) -> Result<Seen, E> {
        self.feed.write(b'u', &v.to_le_bytes());
        Ok(Seen::Other)
    }

    fn visit_f64<E>(self, v: f64) -> Result<Seen, E> {
        self.feed.write(b'f', &v.to_bits().to_le_bytes());
        Ok(Seen::Other)
    }

    fn visit_str<E>(self, v: &str) -> Result<Seen, E> {
        self.feed.write(b's', v.as_bytes());
        Ok(match v {
            "role" => Seen::Role,
            "user" => Seen::User,
            _ => Seen::Other,
        })
    }

    fn visit_unit<E>(self) -> Result<Seen, E> {
        self.feed.write(b'n', &[]);
        Ok(Seen::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen, A::Error> {
        self.feed.write(b'[', &[]);
        while let Some(seen) = seq.next_element_seed(Hash { feed: &mut *self.feed, turns: false })? {
            if self.turns && seen == Seen::UserTurn {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                break;
            }
        }
        self.feed.write(b']', &[]);
        Ok(Seen::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen, A::Error> {
        self.feed.write(b'{', &[]);
        let mut user_turn = false;
        while let Some(key) = map.next_key_seed(Hash { feed: &mut *self.feed, turns: false })? {
            let value = map.next_value_seed(Hash { feed: &mut *self.feed, turns: false })?;
            user_turn |= key == Seen::Role && value == Seen::User;
        }
        self.feed.write(b'}', &[]);
        Ok(if user_turn { Seen::UserTurn } else { Seen::Other })
    }
}

/// Visitor methods that accept every scalar as `$value` and consume arrays and objects unread.
macro_rules! accept_any {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
}

/// A session id sent as a string (`prompt_cache_key`); any other JSON value is no id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionId(pub Option<String>);

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SessionIdVisitor)
    }
}

struct SessionIdVisitor;

impl<'de> Visitor<'de> for SessionIdVisitor {
    type Value = SessionId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    accept_any!(SessionId(None));

    fn visit_str<E>(self, v: &str) -> Result<SessionId, E> {
        Ok(SessionId(Some(v.to_owned()).filter(|v| !v.is_empty())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SessionId, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(SessionId(None))
    }
}

/// Messages' `metadata`: the session Claude Code names in `user_id` (a JSON string holding
/// `session_id` since 2.x, `user_…_session_<id>` before). Any other shape names no session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub session: Option<String>,
}

impl<'de> serde::Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MetadataVisitor)
    }
}

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = Metadata;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    accept_any!(Metadata::default());

    fn visit_str<E>(self, _: &str) -> Result<Metadata, E> {
        Ok(Metadata::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
        let mut session = None;
        while let Some(user_id) = map.next_key_seed(IsUserId)? {
            if user_id {
                let SessionId(id) = map.next_value()?;
                session = id.as_deref().and_then(claude_session);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Metadata { session })
    }
}

/// Whether an object key is `user_id` (compared in place, never copied).
struct IsUserId;

impl<'de> DeserializeSeed<'de> for IsUserId {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsUserId {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(v == "user_id")
    }
}

/// The session id inside Claude Code's `metadata.user_id`.
fn claude_session(user_id: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct UserId {
        session_id: Option<SessionId>,
    }
    if user_id.trim_start().starts_with('{') {
        let parsed: UserId = serde_json::from_str(user_id).ok()?;
        return parsed.session_id.and_then(|id| id.0);
    }
    let (_, session) = user_id.rsplit_once("_session_")?;
    Some(session.to_owned()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests;
