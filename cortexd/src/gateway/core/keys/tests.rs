//! Keys at the door against fleets given as TOML: who is let in, what they may use, and how
//! reservations settle into usage, across fleet reloads.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use plans::fleet::{Fleet, OperatorAccess};

use crate::gateway::core::auth::ApiKeys;
use crate::gateway::core::error::ApiError;
use crate::gateway::core::keys::limits::day_index;
use crate::gateway::core::keys::{Caller, Keys};
use crate::usage::Usage;

const NOW: u64 = 1_798_675_200_000 + 12 * 3_600_000; // 2026-12-31T12:00:00Z

/// `printf %s ck-alice | sha256sum`, and so on.
const ALICE: &str = "214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d";
const BATCH: &str = "f62616b17bdd474b5411c5e2973b41f103341e1e3db479fbcb738f6f76373d8f";

fn fleet(keys: &str) -> Arc<Fleet> {
    let text = format!(
        "[[model]]\nid = \"coder\"\nharness = \"sim\"\nsource = \"c\"\n\n[[model]]\nid = \"other\"\nharness = \"sim\"\nsource = \"o\"\n\n{keys}"
    );
    let load = plans::fleet::load(&[("fleet.toml".to_owned(), text)]);
    Arc::new(load.fleet.unwrap_or_else(|| panic!("invalid test fleet: {:?}", load.diagnostics)))
}

fn bearer(secret: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {secret}")).expect("header"));
    headers
}

fn keys(legacy: &[&str]) -> Keys {
    Keys::new(ApiKeys::new(legacy.iter().map(|k| (*k).to_owned())), Usage::in_memory())
}

#[test]
fn without_any_key_the_api_is_open_and_cortex_toml_keys_still_work() {
    let open = keys(&[]);
    let empty = fleet("");
    assert!(matches!(open.identify(&empty, &HeaderMap::new(), NOW), Ok(Caller::Open)));
    let legacy = keys(&["old-key"]);
    assert!(matches!(legacy.identify(&empty, &bearer("old-key"), NOW), Ok(Caller::Legacy)));
    assert!(matches!(legacy.identify(&empty, &bearer("nope"), NOW), Err(ApiError::Unauthorized)));
    // Beside declared keys too.
    let declared = fleet(&format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\n"));
    assert!(matches!(legacy.identify(&declared, &bearer("old-key"), NOW), Ok(Caller::Legacy)));
    assert!(matches!(legacy.identify(&declared, &HeaderMap::new(), NOW), Err(ApiError::Unauthorized)));
}

#[test]
fn declared_keys_are_found_by_digest_and_refused_when_revoked_or_expired() {
    let keys = keys(&[]);
    let fleet = fleet(&format!(
        "[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\nexpires = 2026-12-31T13:00:00Z\n\n\
         [[key]]\nname = \"batch\"\nsha256 = \"{BATCH}\"\nrevoked = true\n"
    ));
    let Ok(Caller::Declared(alice)) = keys.identify(&fleet, &bearer("ck-alice"), NOW) else {
        panic!("alice is declared")
    };
    assert_eq!(alice.spec.name, "alice");
    let Err(ApiError::KeyRefused(expired)) = keys.identify(&fleet, &bearer("ck-alice"), NOW + 3_600_000)
    else {
        panic!("expired an hour later")
    };
    assert_eq!(expired, "API key \"alice\" expired at 2026-12-31T13:00:00Z");
    let Err(ApiError::KeyRefused(revoked)) = keys.identify(&fleet, &bearer("ck-batch"), NOW) else {
        panic!("revoked")
    };
    assert_eq!(revoked, "API key \"batch\" was revoked");
    assert!(
        matches!(keys.identify(&fleet, &bearer(ALICE), NOW), Err(ApiError::Unauthorized)),
        "the digest is no secret"
    );
}

#[test]
fn a_key_may_use_only_its_models() {
    let keys = keys(&[]);
    let fleet = fleet(&format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\nmodels = [\"coder\"]\n"));
    let grant = keys.admit(&fleet, &bearer("ck-alice"), NOW).expect("admitted");
    assert!(grant.scope("coder", fleet.model("coder")).is_ok());
    let Err(ApiError::Forbidden(message)) = grant.scope("other", fleet.model("other")) else {
        panic!("outside its scope")
    };
    assert_eq!(message, "API key \"alice\" may not use model \"other\"");
}

#[test]
fn reservations_settle_into_usage_and_budgets_refuse_once_spent() {
    let keys = keys(&[]);
    let fleet = fleet(&format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\ntokens_per_day = 1000\n"));
    let first = keys.admit(&fleet, &bearer("ck-alice"), NOW).expect("admitted");
    first.reserve(900, 50, NOW).expect("room");
    let second = keys.admit(&fleet, &bearer("ck-alice"), NOW).expect("950 of 1000 committed");
    second.reserve(100, 1, NOW).expect("room left: the last request may overshoot");
    let Err(ApiError::QuotaExhausted { message, .. }) = keys.admit(&fleet, &bearer("ck-alice"), NOW) else {
        panic!("1051 of 1000 committed")
    };
    assert!(message.contains("budget of 1000 tokens for today"), "{message}");
    drop(second);
    first.settle(Some((40, 60)), 0, NOW);
    first.settle(Some((1_000, 1_000)), 0, NOW); // only the first settlement counts
    drop(first);
    assert_eq!(keys.usage().tokens("alice", day_index(NOW), day_index(NOW)).expect("usage"), 100);
    assert_eq!(keys.in_flight(), [("alice".to_owned(), 0, 0)]);
    // A stream cut short before its usage: the prompt's estimate and the events it streamed.
    let cut = keys.admit(&fleet, &bearer("ck-alice"), NOW).expect("admitted");
    cut.reserve(500, 30, NOW).expect("room");
    cut.settle(None, 12, NOW);
    assert_eq!(keys.usage().tokens("alice", day_index(NOW), day_index(NOW)).expect("usage"), 142);
}

#[test]
fn a_reservation_never_settled_is_given_back() {
    let keys = keys(&[]);
    let fleet = fleet(&format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\ntokens_per_day = 100\n"));
    let grant = keys.admit(&fleet, &bearer("ck-alice"), NOW).expect("admitted");
    grant.reserve(1_000, 0, NOW).expect("nothing used yet");
    assert!(keys.admit(&fleet, &bearer("ck-alice"), NOW).is_err(), "reserved past the budget");
    drop(grant); // the engine never answered
    assert!(keys.admit(&fleet, &bearer("ck-alice"), NOW).is_ok());
}

#[test]
fn counters_survive_a_reload_and_a_revocation_applies_at_once() {
    let keys = keys(&[]);
    let before = fleet(&format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\nmax_concurrency = 1\n"));
    let held = keys.admit(&before, &bearer("ck-alice"), NOW).expect("admitted");
    let edited =
        fleet(&format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\nmax_concurrency = 1\nrpm = 10\n"));
    assert!(
        matches!(keys.admit(&edited, &bearer("ck-alice"), NOW), Err(ApiError::RateLimited { .. })),
        "the request in flight still counts after the reload"
    );
    drop(held);
    let revoked = fleet(&format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\nrevoked = true\n"));
    assert!(matches!(keys.admit(&revoked, &bearer("ck-alice"), NOW), Err(ApiError::KeyRefused(_))));
}

#[test]
fn usage_in_the_store_counts_against_the_budget_after_a_restart() {
    let usage = Usage::in_memory();
    usage.record("alice", day_index(NOW), 600, 400);
    let keys = Keys::new(ApiKeys::default(), usage);
    let fleet = fleet(&format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\ntokens_per_day = 1000\n"));
    assert!(matches!(keys.admit(&fleet, &bearer("ck-alice"), NOW), Err(ApiError::QuotaExhausted { .. })));
}

#[test]
fn operator_access_comes_from_usable_declared_keys_only() {
    let keys = keys(&["legacy"]);
    let fleet = fleet(&format!(
        "[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\noperator = \"admin\"\n\n\
         [[key]]\nname = \"batch\"\nsha256 = \"{BATCH}\"\noperator = \"read_only\"\nrevoked = true\n"
    ));
    assert_eq!(keys.operator_access(&fleet, "ck-alice", NOW), OperatorAccess::Admin);
    assert_eq!(keys.operator_access(&fleet, "ck-batch", NOW), OperatorAccess::None, "revoked");
    assert_eq!(keys.operator_access(&fleet, "legacy", NOW), OperatorAccess::None);
}
