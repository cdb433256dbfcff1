//! Client keys at the door: who is calling ([`Keys::admit`], from the request's head, before
//! any body byte is read), whether they may use the model they named ([`Grant::scope`]), the
//! tokens they reserve ([`Grant::reserve`]) and what they used ([`Grant::settle`]).
//!
//! Keys come from two places: the fleet's `[[key]]` tables (by the digest of the secret, with
//! limits, priority and usage) and `api_keys` in cortex.toml (compared in constant time,
//! without limits or a name). Without either, the API is open. A fleet edit takes effect at the
//! next request after the reload: the digest index follows the fleet in force, and each key's
//! counters (rates, in flight, budgets) are kept by name across reloads.

pub(crate) mod limits;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderMap;
use plans::fleet::{Fleet, KeySpec, ModelSpec, OperatorAccess, Priority};
use sha2::{Digest, Sha256};

use crate::gateway::core::auth::{ApiKeys, presented_key};
use crate::gateway::core::error::ApiError;
use crate::gateway::core::keys::limits::{Counters, Elsewhere, Refusal, Window, day_index};
use crate::usage::Usage;

/// The keys the gateway accepts, and the counters of each declared one.
pub struct Keys {
    /// `api_keys` from cortex.toml.
    legacy: ApiKeys,
    usage: Arc<Usage>,
    /// The digest index of the fleet in force, rebuilt when the fleet changes.
    index: Mutex<Index>,
    /// Each declared key's counters by name, kept across fleet reloads.
    counters: Mutex<HashMap<String, Arc<Mutex<Counters>>>>,
    /// Cluster mode: each key's use on the other replicas, as last published.
    elsewhere: Mutex<HashMap<String, Elsewhere>>,
}

#[derive(Default)]
struct Index {
    /// The fleet this index was built from.
    fleet: Option<Arc<Fleet>>,
    by_digest: HashMap<[u8; 32], Arc<Declared>>,
}

/// A key the fleet declares, with its counters.
pub struct Declared {
    pub spec: KeySpec,
    counters: Arc<Mutex<Counters>>,
}

/// Who a request comes from.
#[derive(Clone)]
pub enum Caller {
    /// No key is configured anywhere: the API is open.
    Open,
    /// A key from `api_keys` in cortex.toml: no limits, no name.
    Legacy,
    Declared(Arc<Declared>),
}

impl Keys {
    pub fn new(legacy: ApiKeys, usage: Arc<Usage>) -> Self {
        Keys {
            legacy,
            usage,
            index: Mutex::default(),
            counters: Mutex::default(),
            elsewhere: Mutex::default(),
        }
    }

    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// Identify the caller of a request from its head and hold it to its key's limits:
    /// 401 for a missing, unknown, revoked or expired key; 429 for a rate, concurrency or
    /// budget over its limit. The grant counts the request in flight until it is dropped.
    pub fn admit(
        &self,
        fleet: &Arc<Fleet>,
        headers: &HeaderMap,
        now_ms: u64,
    ) -> Result<Arc<Grant>, ApiError> {
        let caller = self.identify(fleet, headers, now_ms)?;
        if let Caller::Declared(key) = &caller {
            let entered = lock(&key.counters).enter(&key.spec.limits, now_ms);
            entered.map_err(|refusal| refused(&key.spec, refusal))?;
        }
        Ok(Arc::new(Grant {
            caller,
            usage: self.usage.clone(),
            reserved: Mutex::new(None),
            settled: AtomicBool::new(false),
        }))
    }

    /// Who presented `headers`' key (without counting anything): for routes that only read.
    pub fn identify(&self, fleet: &Arc<Fleet>, headers: &HeaderMap, now_ms: u64) -> Result<Caller, ApiError> {
        if fleet.keys.is_empty() && self.legacy.is_empty() {
            return Ok(Caller::Open);
        }
        let presented = presented_key(headers).ok_or(ApiError::Unauthorized)?;
        if self.legacy.matches(presented) {
            return Ok(Caller::Legacy);
        }
        let key = self.declared(fleet, presented, now_ms).ok_or(ApiError::Unauthorized)?;
        usable(&key.spec, now_ms)?;
        Ok(Caller::Declared(key))
    }

    /// What `presented` (a secret) opens on the operator's surface: the access of the declared
    /// key it belongs to, when that key is neither revoked nor expired.
    pub fn operator_access(&self, fleet: &Arc<Fleet>, presented: &str, now_ms: u64) -> OperatorAccess {
        self.declared(fleet, presented, now_ms)
            .filter(|key| usable(&key.spec, now_ms).is_ok())
            .map_or(OperatorAccess::None, |key| key.spec.operator)
    }

    /// The declared key whose digest is that of `presented`.
    fn declared(&self, fleet: &Arc<Fleet>, presented: &str, now_ms: u64) -> Option<Arc<Declared>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut index = lock(&self.index);
        if !index.fleet.as_ref().is_some_and(|built| Arc::ptr_eq(built, fleet)) {
            *index = self.build(fleet, now_ms);
        }
        index.by_digest.get(&digest).cloned()
    }

    /// The index of `fleet`'s keys, each with its counters (created, with the day's and
    /// month's usage from the store, the first time a name is seen).
    fn build(&self, fleet: &Arc<Fleet>, now_ms: u64) -> Index {
        let mut counters = lock(&self.counters);
        let mut by_digest = HashMap::new();
        for spec in &fleet.keys {
            let Some(digest) = parse_digest(&spec.sha256) else { continue };
            let held = counters
                .entry(spec.name.clone())
                .or_insert_with(|| Arc::new(Mutex::new(self.counters_from_store(&spec.name, now_ms))))
                .clone();
            by_digest.insert(digest, Arc::new(Declared { spec: spec.clone(), counters: held }));
        }
        Index { fleet: Some(fleet.clone()), by_digest }
    }

    fn counters_from_store(&self, name: &str, now_ms: u64) -> Counters {
        let today = day_index(now_ms);
        let month_start = day_index(limits::month_start_ms(limits::month_index(now_ms)));
        let used = |from| {
            self.usage.tokens(name, from, today).unwrap_or_else(|error| {
                tracing::warn!(key = name, %error, "cannot read the key's usage; counting from 0");
                0
            })
        };
        let mut counters = Counters::new(now_ms, used(today), used(month_start));
        counters.elsewhere = lock(&self.elsewhere).get(name).copied().unwrap_or_default();
        counters
    }

    /// Cluster mode: what every key used on the other replicas (replacing the last report).
    pub fn set_elsewhere(&self, elsewhere: HashMap<String, Elsewhere>) {
        let counters = lock(&self.counters);
        for (name, held) in counters.iter() {
            lock(held).elsewhere = elsewhere.get(name).copied().unwrap_or_default();
        }
        *lock(&self.elsewhere) = elsewhere;
    }

    /// Cluster mode: what each declared key used through this replica in the current day and
    /// month (its own store and what is pending), to publish for the others.
    pub fn own_use(&self, now_ms: u64) -> HashMap<String, Elsewhere> {
        let today = day_index(now_ms);
        let month = limits::month_index(now_ms);
        let month_start = day_index(limits::month_start_ms(month));
        let names: Vec<String> = lock(&self.counters).keys().cloned().collect();
        names
            .into_iter()
            .filter_map(|name| {
                let day = self.usage.tokens(&name, today, today).ok()?;
                let month_used = self.usage.tokens(&name, month_start, today).ok()?;
                let own = Elsewhere {
                    day: Window { index: today, used: day },
                    month: Window { index: month, used: month_used },
                };
                Some((name, own))
            })
            .collect()
    }

    /// Every declared key's counters now, for the fleet page: `(name, in flight, reserved)`.
    pub fn in_flight(&self) -> Vec<(String, u32, u64)> {
        let counters = lock(&self.counters);
        let mut rows: Vec<_> = counters
            .iter()
            .map(|(name, held)| {
                let held = lock(held);
                (name.clone(), held.in_flight, held.reserved)
            })
            .collect();
        rows.sort();
        rows
    }
}

/// A declared key is refused when revoked or expired.
fn usable(spec: &KeySpec, now_ms: u64) -> Result<(), ApiError> {
    if spec.revoked {
        count_refusal(&spec.name, "revoked");
        return Err(ApiError::KeyRefused(format!("API key {:?} was revoked", spec.name)));
    }
    if spec.expired(now_ms) {
        count_refusal(&spec.name, "expired");
        let at = spec.expires_unix_ms.map(describe_moment).unwrap_or_default();
        return Err(ApiError::KeyRefused(format!("API key {:?} expired at {at}", spec.name)));
    }
    Ok(())
}

/// `cortex_key_refusals_total{key, reason}`: a declared key's requests refused before they
/// were forwarded, by reason.
fn count_refusal(key: &str, reason: &'static str) {
    metrics::counter!("cortex_key_refusals_total", "key" => key.to_owned(), "reason" => reason).increment(1);
}

/// The client's error for a limit `spec` is over.
fn refused(spec: &KeySpec, refusal: Refusal) -> ApiError {
    let name = &spec.name;
    let reason = match &refusal {
        Refusal::Rpm(_) => "rpm",
        Refusal::Tpm(_) => "tpm",
        Refusal::Concurrency(_) => "max_concurrency",
        Refusal::Day { .. } => "tokens_per_day",
        Refusal::Month { .. } => "tokens_per_month",
    };
    count_refusal(name, reason);
    match refusal {
        Refusal::Rpm(retry_after_s) => ApiError::RateLimited {
            message: format!(
                "API key {name:?} is over its rpm limit of {}; try again in {retry_after_s} s",
                spec.limits.rpm.unwrap_or(0)
            ),
            retry_after_s,
            tokens: false,
        },
        Refusal::Tpm(retry_after_s) => ApiError::RateLimited {
            message: format!(
                "API key {name:?} is over its tpm limit of {}; try again in {retry_after_s} s",
                spec.limits.tpm.unwrap_or(0)
            ),
            retry_after_s,
            tokens: true,
        },
        Refusal::Concurrency(max) => ApiError::RateLimited {
            message: format!(
                "API key {name:?} has {max} requests in flight, its max_concurrency; try again when one ends"
            ),
            retry_after_s: 1,
            tokens: false,
        },
        Refusal::Day { budget, retry_after_s } => ApiError::QuotaExhausted {
            message: format!(
                "API key {name:?} has used its budget of {budget} tokens for today (UTC); it renews at midnight UTC"
            ),
            retry_after_s,
        },
        Refusal::Month { budget, retry_after_s } => ApiError::QuotaExhausted {
            message: format!(
                "API key {name:?} has used its budget of {budget} tokens for this month (UTC); it renews on the 1st"
            ),
            retry_after_s,
        },
    }
}

/// `2026-12-31T18:00:00Z`.
fn describe_moment(unix_ms: u64) -> String {
    let days = i64::try_from(unix_ms / limits::DAY_MS).unwrap_or(0);
    let (year, month, day) = limits::civil_from_days(days);
    let seconds = (unix_ms % limits::DAY_MS) / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tokens a request reserved, and its prompt's estimate (charged if the engine never says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reserved {
    tokens: u64,
    prompt_estimate: u64,
}

/// One admitted request's passage: its caller, in flight until dropped, with the tokens it
/// reserved until they are settled (once; a reservation never settled is given back whole,
/// as for a request that never reached an engine).
pub struct Grant {
    caller: Caller,
    usage: Arc<Usage>,
    reserved: Mutex<Option<Reserved>>,
    settled: AtomicBool,
}

impl Grant {
    /// A grant for an open API (tests; routes without a key check).
    pub fn open(usage: Arc<Usage>) -> Arc<Grant> {
        Arc::new(Grant {
            caller: Caller::Open,
            usage,
            reserved: Mutex::new(None),
            settled: AtomicBool::new(false),
        })
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The declared key's name, for metrics and usage; `""` for the open API and cortex.toml keys.
    pub fn label(&self) -> &str {
        match &self.caller {
            Caller::Declared(key) => &key.spec.name,
            Caller::Open | Caller::Legacy => "",
        }
    }

    pub fn priority(&self) -> Priority {
        match &self.caller {
            Caller::Declared(key) => key.spec.priority,
            Caller::Open | Caller::Legacy => Priority::default(),
        }
    }

    /// Whether the caller's tokens must be counted (a declared key: usage is kept for each).
    pub fn counts_tokens(&self) -> bool {
        matches!(self.caller, Caller::Declared(_))
    }

    /// 403 when the key may not use the model the client named `name` (`model`: the fleet's
    /// model answering to it, `None` for one loaded outside the fleet).
    pub fn scope(&self, name: &str, model: Option<&ModelSpec>) -> Result<(), ApiError> {
        match &self.caller {
            Caller::Declared(key) if !key.spec.may_use(name, model) => {
                Err(ApiError::Forbidden(format!("API key {:?} may not use model {name:?}", key.spec.name)))
            }
            _ => Ok(()),
        }
    }

    /// Reserve `output_limit + prompt_estimate` tokens against the key's budgets and `tpm`;
    /// 429 when a budget is spent meanwhile. Reserving again replaces the first reservation.
    pub fn reserve(&self, output_limit: u64, prompt_estimate: u64, now_ms: u64) -> Result<(), ApiError> {
        let Caller::Declared(key) = &self.caller else { return Ok(()) };
        let tokens = output_limit.saturating_add(prompt_estimate);
        let mut counters = lock(&key.counters);
        let mut reserved = lock(&self.reserved);
        if let Some(previous) = reserved.take() {
            counters.settle(now_ms, previous.tokens, 0);
        }
        counters.reserve(&key.spec.limits, now_ms, tokens).map_err(|refusal| refused(&key.spec, refusal))?;
        *reserved = Some(Reserved { tokens, prompt_estimate });
        Ok(())
    }

    /// The request ended: `usage` is the engine's `(prompt, completion)` when it said, else
    /// the prompt's estimate and `events` streamed events (about a token each) are charged, as
    /// for a stream cut short. Only the first settlement counts.
    pub fn settle(&self, usage: Option<(u64, u64)>, events: u64, now_ms: u64) {
        let Caller::Declared(key) = &self.caller else { return };
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        let reserved = lock(&self.reserved).take();
        let (prompt, completion) = usage.unwrap_or((reserved.map_or(0, |r| r.prompt_estimate), events));
        let used = prompt.saturating_add(completion);
        lock(&key.counters).settle(now_ms, reserved.map_or(0, |r| r.tokens), used);
        self.usage.record(&key.spec.name, day_index(now_ms), prompt, completion);
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let Caller::Declared(key) = &self.caller else { return };
        let mut counters = lock(&key.counters);
        counters.leave();
        if let Some(reserved) = lock(&self.reserved).take() {
            counters.settle(crate::control::poller::now_unix_ms(), reserved.tokens, 0);
        }
    }
}

#[cfg(test)]
mod tests;
