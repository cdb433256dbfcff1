//! The reconciler's one backoff policy: per (model, neuron), exponential from a base to a cap,
//! measured on tokio's clock (so tests run it in virtual time). A new fleet revision resets it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

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
            error: String::new(),
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.until = now + policy.delay(entry.failures);
        entry.error = error;
        entry.until
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
}
