//! Per-key usage that survives restarts: what each declared key used (requests, prompt and
//! completion tokens) per UTC day. Requests record into memory as they end; a flusher writes
//! what accumulated to the store ([`store::UsageStore`], redb) once a second and at shutdown,
//! so a crash loses at most that second. Readers (the budgets at start, `cortex usage`, the
//! fleet page) see the store plus what is not flushed yet.
//!
//! The store is opened the first time a declared key needs it (a daemon whose fleet declares no
//! key never creates the file); one that cannot be opened (another daemon holds it, no
//! permission) is reported once and usage is kept in memory instead, so the gateway serves on.
//!
//! A leaf of the daemon's layering, beside `config` and `metrics`: it knows nothing of the
//! gateway that records into it.

pub(crate) mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use store::{DayUsage, StoreError, UsageStore};

/// A calendar window (a UTC day or month) and the tokens used in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    /// Which window (days since the epoch, or months since January 1970).
    pub index: u32,
    pub used: u64,
}

/// One key's use in the current day and month: what a cluster replica publishes of its own,
/// and the sum of the others' that it holds its keys to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Elsewhere {
    pub day: Window,
    pub month: Window,
}

/// `(key, day)` → `(requests, prompt, completion)` not yet written.
type Pending = BTreeMap<(String, u32), (u64, u64, u64)>;

/// The usage of every declared key: the store and what is not in it yet.
pub struct Usage {
    /// Where the store lives; `None`: memory only.
    path: Option<PathBuf>,
    store: OnceLock<UsageStore>,
    pending: Mutex<Pending>,
}

impl Usage {
    /// Usage kept in the store at `path`, opened when first needed.
    pub fn at(path: PathBuf) -> Arc<Usage> {
        Arc::new(Usage { path: Some(path), store: OnceLock::new(), pending: Mutex::new(BTreeMap::new()) })
    }

    /// Usage kept in memory only (tests; a gateway told to keep no state).
    pub fn in_memory() -> Arc<Usage> {
        Arc::new(Usage { path: None, store: OnceLock::new(), pending: Mutex::new(BTreeMap::new()) })
    }

    /// The store, opened on first use.
    pub fn store(&self) -> &UsageStore {
        self.store.get_or_init(|| {
            let opened = match &self.path {
                Some(path) => UsageStore::open(path).inspect_err(|error| {
                    tracing::error!(%error, "the usage store cannot be opened; usage is kept in memory until a restart")
                }),
                None => UsageStore::in_memory(),
            };
            match opened.or_else(|_| UsageStore::in_memory()) {
                Ok(store) => store,
                // redb's in-memory backend allocates and nothing else; it does not fail.
                Err(error) => panic!("the in-memory usage store cannot be created: {error}"),
            }
        })
    }

    /// Whether the store was opened (a file or memory) yet.
    pub fn opened(&self) -> bool {
        self.store.get().is_some()
    }

    /// One request of `key` ended on `day` having used these tokens.
    pub fn record(&self, key: &str, day: u32, prompt: u64, completion: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = pending.entry((key.to_owned(), day)).or_default();
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(prompt);
        entry.2 = entry.2.saturating_add(completion);
    }

    /// Write what accumulated to the store; on failure it stays pending for the next try.
    pub fn flush(&self) -> Result<(), StoreError> {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if taken.is_empty() {
            return Ok(());
        }
        let records: Vec<DayUsage> = taken
            .iter()
            .map(|((key, day), &(requests, prompt, completion))| DayUsage {
                key: key.clone(),
                day: *day,
                requests,
                prompt_tokens: prompt,
                completion_tokens: completion,
            })
            .collect();
        self.store().add(&records).inspect_err(|_| {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for ((key, day), (requests, prompt, completion)) in taken {
                let entry = pending.entry((key, day)).or_default();
                entry.0 += requests;
                entry.1 += prompt;
                entry.2 += completion;
            }
        })
    }

    /// Tokens `key` used on days `from..=to` (stored and pending).
    pub fn tokens(&self, key: &str, from: u32, to: u32) -> Result<u64, StoreError> {
        let stored = self.store().sum(key, from, to)?.tokens();
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let unwritten: u64 = pending
            .range((key.to_owned(), from)..=(key.to_owned(), to))
            .map(|(_, (_, prompt, completion))| prompt + completion)
            .sum();
        Ok(stored + unwritten)
    }

    /// Rows from day `since` on, for `key` or every key, stored and pending merged, by key then day.
    pub fn rows(&self, key: Option<&str>, since: u32) -> Result<Vec<DayUsage>, StoreError> {
        let mut merged: BTreeMap<(String, u32), DayUsage> = BTreeMap::new();
        for row in self.store().rows(key, since)? {
            merged.insert((row.key.clone(), row.day), row);
        }
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for ((name, day), (requests, prompt, completion)) in pending.iter() {
            if *day < since || key.is_some_and(|key| key != name) {
                continue;
            }
            let row = merged.entry((name.clone(), *day)).or_insert_with(|| DayUsage {
                key: name.clone(),
                day: *day,
                ..DayUsage::default()
            });
            row.requests += requests;
            row.prompt_tokens += prompt;
            row.completion_tokens += completion;
        }
        Ok(merged.into_values().collect())
    }
}

/// How often recorded usage is written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Write usage to the store every `every` until `shutdown`, then once more.
pub async fn flush_loop(usage: Arc<Usage>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = ticks.tick() => false,
        };
        let writer = usage.clone();
        match tokio::task::spawn_blocking(move || writer.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "usage not written yet; will try again"),
            Err(error) => tracing::warn!(%error, "the usage writer stopped"),
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_pending_usage_before_and_after_it_is_written() {
        let usage = Usage::in_memory();
        usage.record("alice", 7, 10, 5);
        usage.record("alice", 7, 1, 1);
        usage.record("alice", 8, 100, 0);
        assert_eq!(usage.tokens("alice", 7, 7).expect("read"), 17);
        usage.flush().expect("written");
        usage.record("alice", 8, 0, 3);
        assert_eq!(usage.tokens("alice", 7, 8).expect("read"), 120);
        let rows = usage.rows(Some("alice"), 8).expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].requests, rows[0].tokens()), (2, 103));
    }
}
