//! `[[key]]`: client keys declared in the fleet, and what each may do: which models it may use
//! (ids, aliases, globs), its rate, concurrency and token limits, its queue priority, when it
//! expires, and whether it opens the operator's surface (fleet page, status, admin API).
//!
//! The fleet holds each key's SHA-256 digest, never the secret: the gateway hashes what a
//! client presents and looks the digest up. Everything here is pure (matching, expiry against a
//! given time); enforcement and accounting live in the gateway.

use crate::fleet::{Fleet, ModelSpec, Origin};

/// A key's place in the queues: higher goes first; keys of one priority share fairly.
/// `interactive` and `batch` are names for [`Priority::INTERACTIVE`] and [`Priority::BATCH`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Priority(pub i64);

impl Priority {
    pub const INTERACTIVE: Priority = Priority(100);
    pub const BATCH: Priority = Priority(0);

    /// `interactive`, `batch`, or the number.
    pub fn describe(self) -> String {
        match self {
            Priority::INTERACTIVE => "interactive".to_owned(),
            Priority::BATCH => "batch".to_owned(),
            Priority(n) => n.to_string(),
        }
    }
}

impl Default for Priority {
    /// Keys without a priority are interactive: a person at a prompt is the common client.
    fn default() -> Self {
        Priority::INTERACTIVE
    }
}

/// What a key opens on the operator's surface besides the inference API.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAccess {
    /// The inference API only.
    #[default]
    None,
    /// The fleet page and `GET /admin/status`, `GET /admin/usage`: reading only.
    ReadOnly,
    /// Everything the admin key opens: also applying plans and asking for reconcile passes.
    Admin,
}

impl OperatorAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAccess::None => "none",
            OperatorAccess::ReadOnly => "read_only",
            OperatorAccess::Admin => "admin",
        }
    }
}

/// The limits a key is held to; `None` means no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyLimits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once, over every model.
    pub max_concurrency: Option<u32>,
    /// Tokens (prompt + completion) per calendar day (UTC).
    pub tokens_per_day: Option<u64>,
    /// Tokens (prompt + completion) per calendar month (UTC).
    pub tokens_per_month: Option<u64>,
}

impl KeyLimits {
    /// Whether any token budget or rate is set (then usage must be counted for the key).
    pub fn counts_tokens(&self) -> bool {
        self.tpm.is_some() || self.tokens_per_day.is_some() || self.tokens_per_month.is_some()
    }
}

/// `[[key]]`: one client key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeySpec {
    /// Names the key in usage, metrics and logs.
    pub name: String,
    /// The SHA-256 digest of the secret, 64 lowercase hex digits.
    pub sha256: String,
    /// The models it may use, as written (ids, aliases, globs with `*` and `?`); `None`: every
    /// model; an empty list: none (a key for the operator's surface only).
    pub models: Option<Vec<String>>,
    pub limits: KeyLimits,
    pub priority: Priority,
    /// From this moment (Unix ms) the key is refused.
    pub expires_unix_ms: Option<u64>,
    /// Revoked keys stay declared (so the name and its usage stay known) and are refused.
    pub revoked: bool,
    pub operator: OperatorAccess,
    pub origin: Origin,
}

impl KeySpec {
    /// Whether the key may use the model a client named `name`, where `model` is the fleet's
    /// model that answers to it (`None`: a model loaded outside the fleet). A pattern allows a
    /// model when it matches the name sent, the model's id or any of its aliases.
    pub fn may_use(&self, name: &str, model: Option<&ModelSpec>) -> bool {
        let Some(patterns) = &self.models else { return true };
        let names = || {
            std::iter::once(name)
                .chain(model.map(|m| m.id.as_str()))
                .chain(model.into_iter().flat_map(|m| m.aliases.iter().map(String::as_str)))
        };
        patterns.iter().any(|pattern| names().any(|candidate| glob_match(pattern, candidate)))
    }

    /// Whether the key has expired at `now_unix_ms`.
    pub fn expired(&self, now_unix_ms: u64) -> bool {
        self.expires_unix_ms.is_some_and(|at| now_unix_ms >= at)
    }
}

impl Fleet {
    /// The declared key whose secret has digest `sha256` (lowercase hex).
    pub fn key_by_digest(&self, sha256: &str) -> Option<&KeySpec> {
        self.keys.iter().find(|key| key.sha256 == sha256)
    }

    pub fn key(&self, name: &str) -> Option<&KeySpec> {
        self.keys.iter().find(|key| key.name == name)
    }
}

/// Whether `pattern` is a glob (holds `*` or `?`) rather than a literal name.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Shell-style matching of the whole `text`: `*` matches any run of characters (`/` included:
/// model ids are not paths), `?` one character, everything else itself. Linear backtracking
/// on the last `*`, so a client's model name costs at most `pattern × text` steps.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Unix milliseconds of a proleptic Gregorian UTC date and time (no leap seconds).
pub fn unix_ms(year: i64, month: u32, day: u32, seconds_of_day: i64, millis: i64) -> i64 {
    // Howard Hinnant's days_from_civil.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    (days * 86_400 + seconds_of_day) * 1_000 + millis
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        for (pattern, text, expected) in [
            ("coder", "coder", true),
            ("coder", "coder2", false),
            ("Qwen/*", "Qwen/Qwen3-Coder-30B", true),
            ("*", "", true),
            ("*-instruct", "llama-3-instruct", true),
            ("*-instruct", "llama-3-instruct-q4", false),
            ("ge?ma-*", "gemma-3-270m", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "anything", true),
            ("é*", "éa", true),
        ] {
            assert_eq!(glob_match(pattern, text), expected, "{pattern} vs {text}");
        }
    }

    #[test]
    fn a_hostile_name_costs_at_most_pattern_times_text() {
        let text = "a".repeat(10_000);
        assert!(!glob_match("*a*a*a*a*a*b", &text));
    }

    #[test]
    fn unix_ms_of_known_dates() {
        assert_eq!(unix_ms(1970, 1, 1, 0, 0), 0);
        assert_eq!(unix_ms(2000, 3, 1, 0, 0), 951_868_800_000);
        assert_eq!(unix_ms(2026, 12, 31, 3_600, 5), 1_798_678_800_005);
    }
}
