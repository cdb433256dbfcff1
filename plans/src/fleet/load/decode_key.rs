//! One `[[key]]` table into a [`KeyDeclaration`], with the checks a key can pass or fail on its
//! own: its name, the form of its digest, its limits and its priority. References to models
//! and uniqueness are checked once every file is read (`checks.rs`).

use toml_edit::TableLike;

use crate::fleet::keys::{KeyLimits, KeySpec, OperatorAccess, Priority};
use crate::fleet::load::fields::{Fields, check_name};
use crate::fleet::load::{Located, Sink, Site};

pub(super) const KEY_KEYS: [&str; 12] = [
    "name",
    "sha256",
    "models",
    "rpm",
    "tpm",
    "max_concurrency",
    "tokens_per_day",
    "tokens_per_month",
    "priority",
    "expires",
    "revoked",
    "operator",
];

/// A `[[key]]` and the places that later, fleet-wide checks point at.
pub(crate) struct KeyDeclaration<'a> {
    pub(crate) spec: KeySpec,
    /// `None` when the name is missing or unusable (already reported).
    pub(crate) name_at: Option<Site<'a>>,
    /// `None` when the digest is missing or malformed (already reported).
    pub(crate) sha256_at: Option<Site<'a>>,
    /// The model patterns, each where it was written.
    pub(crate) models: Vec<Located<'a, String>>,
}

pub(crate) fn key<'a>(table: &dyn TableLike, at: Site<'a>, sink: &mut Sink) -> KeyDeclaration<'a> {
    let mut fields = Fields::new(table, "[[key]]", at, &KEY_KEYS, sink);
    let name = fields.required_string("name");
    let sha256 = fields.required_string("sha256");
    let models = fields.strings("models");
    let limits = [
        ("rpm", fields.unsigned("rpm")),
        ("tpm", fields.unsigned("tpm")),
        ("max_concurrency", fields.unsigned("max_concurrency")),
        ("tokens_per_day", fields.unsigned("tokens_per_day")),
        ("tokens_per_month", fields.unsigned("tokens_per_month")),
    ];
    let priority = priority(&mut fields);
    let expires = fields.moment("expires");
    let revoked = fields.bool("revoked");
    let operator = fields.choice(
        "operator",
        &[
            ("none", OperatorAccess::None),
            ("read_only", OperatorAccess::ReadOnly),
            ("admin", OperatorAccess::Admin),
        ],
    );
    let name_ok = name.as_ref().is_some_and(|name| check_name(name, "key name", sink));
    let digest = sha256.as_ref().and_then(|digest| check_digest(digest, sink));
    let [rpm, tpm, max_concurrency, tokens_per_day, tokens_per_month] =
        limits.map(|(key, value)| value.and_then(|value| at_least_one(key, value, sink)));
    let models_written = models.clone().unwrap_or_default();
    KeyDeclaration {
        name_at: name.as_ref().filter(|_| name_ok).map(|name| name.at),
        sha256_at: sha256.as_ref().filter(|_| digest.is_some()).map(|digest| digest.at),
        models: models_written,
        spec: KeySpec {
            name: name.map(|name| name.value).unwrap_or_default(),
            sha256: digest.unwrap_or_default(),
            models: models.map(|models| models.into_iter().map(|m| m.value).collect()),
            limits: KeyLimits {
                rpm,
                tpm,
                max_concurrency: max_concurrency.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                tokens_per_day,
                tokens_per_month,
            },
            priority: priority.unwrap_or_default(),
            expires_unix_ms: expires.map(|expires| expires.value),
            revoked: revoked.unwrap_or(false),
            operator: operator.unwrap_or_default(),
            origin: at.origin(),
        },
    }
}

/// `priority = "interactive" | "batch" | <integer>`.
fn priority(fields: &mut Fields<'_, '_, '_>) -> Option<Priority> {
    let (item, at) = fields.item("priority")?;
    match (item.as_str(), item.as_integer()) {
        (Some("interactive"), _) => Some(Priority::INTERACTIVE),
        (Some("batch"), _) => Some(Priority::BATCH),
        (_, Some(number)) => Some(Priority(number)),
        (Some(other), _) => {
            let message = format!(
                "priority must be \"interactive\", \"batch\" or an integer (higher goes first), found {other:?}"
            );
            fields.sink().error(at, message);
            None
        }
        (None, None) => {
            let message = format!(
                "priority must be \"interactive\", \"batch\" or an integer (higher goes first), found {}",
                item.type_name()
            );
            fields.sink().error(at, message);
            None
        }
    }
}

/// The digest as 64 lowercase hex digits, or `None` after reporting what is wrong with it. A
/// value that looks like a secret gets a warning of its own: it must not stay in git.
fn check_digest(digest: &Located<'_, String>, sink: &mut Sink) -> Option<String> {
    let value = digest.value.strip_prefix("sha256:").unwrap_or(&digest.value);
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(value.to_ascii_lowercase());
    }
    let hint = if value.starts_with("ck-") || value.starts_with("sk-") {
        "; this looks like a secret itself: remove it from the file (and from git history), \
         and write its digest instead (`cortex key new` does both)"
    } else {
        "; `cortex key new` writes it, or `printf %s SECRET | sha256sum`"
    };
    // A secret written here by mistake is not echoed whole into logs and CI output.
    let count = value.chars().count();
    let shown = if count > 12 {
        format!("\"{}…\" ({count} characters)", value.chars().take(6).collect::<String>())
    } else {
        format!("{value:?}")
    };
    sink.error(
        digest.at,
        format!("sha256 must be the 64 hex digits of the secret's SHA-256 digest, found {shown}{hint}"),
    );
    None
}

fn at_least_one<'a>(key: &str, value: Located<'a, u64>, sink: &mut Sink) -> Option<u64> {
    if value.value == 0 {
        sink.error(value.at, format!("{key} must be at least 1; leave it out for no limit"));
        return None;
    }
    Some(value.value)
}
