//! The reconciler's one backoff policy: per (model, neuron), exponential from a base to a cap,
//! measured on tokio's clock (so tests run it in virtual time). A new fleet revision resets it.
//! Each wait is also kept in Unix milliseconds, so that a cluster's next leader continues it
//! (`crate::control::decisions`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::control::decisions::Failure;
use crate::control::poller::now_unix_ms;

/// The delays: `base`, `2·base`, `4·base`, … up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    /// 2 s doubling up to 5 min, the reconciler's default (`[reconcile] backoff_base/backoff_max`).
    fn default() -> Self {
        BackoffPolicy { base: Duration::from_secs(2), max: Duration::from_secs(300) }
    }
}

impl BackoffPolicy {
    /// The wait after the `failures`-th failure in a row (1 → `base`).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// One (model, neuron) that failed: how often in a row, until when it waits, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub failures: u32,
    pub until: Instant,
    /// `until` on the wall clock, as other processes read it.
    pub until_unix_ms: u64,
    pub error: String,
}

/// Failures per (model, neuron).
#[derive(Debug, Default)]
pub struct Backoff {
    entries: BTreeMap<(String, String), Entry>,
}

impl Backoff {
    /// Whether `(model, neuron)` is still waiting at `now`.
    pub fn waiting(&self, model: &str, neuron: &str, now: Instant) -> bool {
        self.entry(model, neuron).is_some_and(|entry| entry.until > now)
    }

    pub fn entry(&self, model: &str, neuron: &str) -> Option<&Entry> {
        self.entries.get(&(model.to_owned(), neuron.to_owned()))
    }

    /// Record a failure at `now`; returns when the next try is due.
    pub fn failed(
        &mut self,
        model: &str,
        neuron: &str,
        error: String,
        policy: BackoffPolicy,
        now: Instant,
    ) -> Instant {
        let entry = self.entries.entry((model.to_owned(), neuron.to_owned())).or_insert(Entry {
            failures: 0,
            until: now,
            until_unix_ms: 0,
            error: String::new(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let delay = policy.delay(entry.failures);
        entry.until = now + delay;
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        entry.until_unix_ms = now_unix_ms().saturating_add(delay_ms);
        entry.error = error;
        entry.until
    }

    /// Every entry, for the record a cluster's next leader inherits.
    pub fn export(&self) -> Vec<Failure> {
        let entries = self.entries.iter();
        entries.map(|((m, n), e)| Failure::new(m, n, e.failures, e.until_unix_ms, &e.error)).collect()
    }

    /// Continue a previous leader's `failures` at `now`: each waits until its Unix time (the
    /// longer wait wins over an entry of this replica's own).
    pub fn inherit(&mut self, failures: &[Failure], now: Instant) {
        let now_unix = now_unix_ms();
        for failure in failures {
            let left = Duration::from_millis(failure.until_unix_ms.saturating_sub(now_unix));
            let entry = Entry {
                failures: failure.failures,
                until: now + left,
                until_unix_ms: failure.until_unix_ms,
                error: failure.error.clone(),
            };
            let key = (failure.model.clone(), failure.neuron.clone());
            if self.entries.get(&key).is_none_or(|own| own.until_unix_ms < entry.until_unix_ms) {
                self.entries.insert(key, entry);
            }
        }
    }

    pub fn succeeded(&mut self, model: &str, neuron: &str) {
        self.entries.remove(&(model.to_owned(), neuron.to_owned()));
    }

    /// Forget every failure (a new fleet revision deserves a fresh try of everything).
    pub fn reset(&mut self) {
        self.entries.clear();
    }

    /// The earliest expiry still in the future, if any.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.entries.values().map(|e| e.until).filter(|until| *until > now).min()
    }

    /// Every entry still waiting at `now`, as `((model, neuron), entry)`.
    pub fn waiting_entries(&self, now: Instant) -> impl Iterator<Item = (&(String, String), &Entry)> {
        self.entries.iter().filter(move |(_, e)| e.until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = BackoffPolicy { base: Duration::from_secs(2), max: Duration::from_secs(10) };
        let delays: Vec<u64> = (1..=5).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 10, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_wait_until_their_expiry_and_reset_clears_them() {
        let policy = BackoffPolicy { base: Duration::from_secs(2), max: Duration::from_secs(300) };
        let mut backoff = Backoff::default();
        let now = Instant::now();
        let until = backoff.failed("m", "n1", "boom".into(), policy, now);
        assert_eq!(until - now, Duration::from_secs(2));
        assert!(backoff.waiting("m", "n1", now));
        assert!(!backoff.waiting("m", "n2", now));
        assert_eq!(backoff.next_expiry(now), Some(until));
        assert!(!backoff.waiting("m", "n1", until));
        backoff.reset();
        assert_eq!(backoff.next_expiry(now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_successor_continues_an_exported_wait() {
        let policy = BackoffPolicy { base: Duration::from_secs(20), max: Duration::from_secs(300) };
        let mut old = Backoff::default();
        old.failed("m", "n1", "boom".into(), policy, Instant::now());
        old.failed("m", "n1", "boom".into(), policy, Instant::now());
        let exported = old.export();
        assert_eq!((exported[0].failures, exported[0].error.as_str()), (2, "boom"));
        let mut new = Backoff::default();
        let now = Instant::now();
        new.inherit(&exported, now);
        assert!(new.waiting("m", "n1", now), "it waits on where the old one stopped");
        let left = new.entry("m", "n1").expect("an inherited entry").until - now;
        assert!(left > Duration::from_secs(35) && left <= Duration::from_secs(40), "{left:?}");
        // The next failure doubles from the inherited count.
        let until = new.failed("m", "n1", "again".into(), policy, now);
        assert_eq!(until - now, Duration::from_secs(80));
    }
}
