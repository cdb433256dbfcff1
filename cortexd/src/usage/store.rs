//! The usage store: tokens and requests per (key, UTC day), in one redb file.
//!
//! redb because it is an embedded, crash-safe (copy-on-write B-trees, fsync on commit) store in
//! pure Rust with one small dependency (libc), a stable file format and an active maintainer:
//! the standalone daemon needs no server, and one row per key and day needs nothing more than
//! an ordered key-value map. (SQLite would add a C build for one table; sled's file format is
//! not stable; fjall's LSM tree is built for write volumes this table never sees.) Its 2.6 line
//! is the newest that builds with the workspace's `rust-version` (1.85; redb 3 and later need
//! 1.89 and a newer file format, which redb upgrades in place).

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

/// `(key name, day since the epoch)` → `(requests, prompt tokens, completion tokens)`.
const USAGE: TableDefinition<'_, (&str, u32), (u64, u64, u64)> = TableDefinition::new("usage_by_key_and_day");

/// Small values the daemon keeps across restarts (e.g. the fleet page's cookie secret).
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
#[error("usage store {path}: {message}")]
pub struct StoreError {
    pub path: String,
    pub message: String,
}

/// What one key used on one day.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DayUsage {
    pub key: String,
    /// Days since the epoch (UTC).
    pub day: u32,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl DayUsage {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// The store: a file, or memory only (tests, and a daemon told to keep no state).
pub struct UsageStore {
    db: Database,
    path: String,
}

impl UsageStore {
    /// Open (or create) the store at `path`, creating its directory.
    pub fn open(path: &Path) -> Result<UsageStore, StoreError> {
        let shown = path.display().to_string();
        let error = |message: String| StoreError { path: shown.clone(), message };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| error(format!("cannot create its directory: {e}")))?;
        }
        let db = Database::create(path).map_err(|e| error(e.to_string()))?;
        let store = UsageStore { db, path: shown };
        store.create_tables()?;
        Ok(store)
    }

    /// A store that lives in memory only.
    pub fn in_memory() -> Result<UsageStore, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError { path: "(memory)".into(), message: e.to_string() })?;
        let store = UsageStore { db, path: "(memory)".into() };
        store.create_tables()?;
        Ok(store)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn error(&self, error: impl std::fmt::Display) -> StoreError {
        StoreError { path: self.path.clone(), message: error.to_string() }
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let write = self.db.begin_write().map_err(|e| self.error(e))?;
        write.open_table(USAGE).map_err(|e| self.error(e))?;
        write.open_table(META).map_err(|e| self.error(e))?;
        write.commit().map_err(|e| self.error(e))
    }

    /// Add `records` to what is stored, in one transaction (committed durably).
    pub fn add(&self, records: &[DayUsage]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let write = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = write.open_table(USAGE).map_err(|e| self.error(e))?;
            for record in records {
                let key = (record.key.as_str(), record.day);
                let (requests, prompt, completion) =
                    table.get(key).map_err(|e| self.error(e))?.map_or((0, 0, 0), |v| v.value());
                let sum = (
                    requests.saturating_add(record.requests),
                    prompt.saturating_add(record.prompt_tokens),
                    completion.saturating_add(record.completion_tokens),
                );
                table.insert(key, sum).map_err(|e| self.error(e))?;
            }
        }
        write.commit().map_err(|e| self.error(e))
    }

    /// What `key` used on days `from..=to`, summed.
    pub fn sum(&self, key: &str, from: u32, to: u32) -> Result<DayUsage, StoreError> {
        let mut total = DayUsage { key: key.to_owned(), day: from, ..DayUsage::default() };
        let read = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = read.open_table(USAGE).map_err(|e| self.error(e))?;
        for row in table.range((key, from)..=(key, to)).map_err(|e| self.error(e))? {
            let (_, value) = row.map_err(|e| self.error(e))?;
            let (requests, prompt, completion) = value.value();
            total.requests += requests;
            total.prompt_tokens += prompt;
            total.completion_tokens += completion;
        }
        Ok(total)
    }

    /// Every row from day `since` on, for `key` or every key, by key then day.
    pub fn rows(&self, key: Option<&str>, since: u32) -> Result<Vec<DayUsage>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = read.open_table(USAGE).map_err(|e| self.error(e))?;
        let range = match key {
            Some(key) => table.range((key, since)..=(key, u32::MAX)),
            None => table.range::<(&str, u32)>(..),
        };
        let mut rows = Vec::new();
        for row in range.map_err(|e| self.error(e))? {
            let (stored_key, value) = row.map_err(|e| self.error(e))?;
            let (name, day) = stored_key.value();
            if day < since {
                continue;
            }
            let (requests, prompt_tokens, completion_tokens) = value.value();
            rows.push(DayUsage { key: name.to_owned(), day, requests, prompt_tokens, completion_tokens });
        }
        Ok(rows)
    }

    /// The value stored under `name` in the meta table, or `make()` stored there now.
    #[cfg(test)]
    fn meta_or_insert(&self, name: &str, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
        {
            let read = self.db.begin_read().map_err(|e| self.error(e))?;
            let table = read.open_table(META).map_err(|e| self.error(e))?;
            if let Some(value) = table.get(name).map_err(|e| self.error(e))? {
                return Ok(value.value().to_vec());
            }
        }
        let value = make();
        let write = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = write.open_table(META).map_err(|e| self.error(e))?;
            table.insert(name, value.as_slice()).map_err(|e| self.error(e))?;
        }
        write.commit().map_err(|e| self.error(e))?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(key: &str, day: u32, requests: u64, prompt: u64, completion: u64) -> DayUsage {
        DayUsage { key: key.into(), day, requests, prompt_tokens: prompt, completion_tokens: completion }
    }

    #[test]
    fn usage_adds_up_by_key_and_day_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state/usage.redb");
        {
            let store = UsageStore::open(&path).expect("created with its directory");
            store.add(&[day("alice", 10, 1, 100, 20), day("bob", 10, 1, 5, 5)]).expect("added");
            store.add(&[day("alice", 10, 2, 50, 10), day("alice", 11, 1, 1, 1)]).expect("added");
        }
        let store = UsageStore::open(&path).expect("reopened");
        assert_eq!(store.sum("alice", 10, 10).expect("sum").tokens(), 180);
        assert_eq!(store.sum("alice", 0, 11).expect("sum").requests, 4);
        assert_eq!(
            store.sum("nobody", 0, 11).expect("sum"),
            DayUsage { key: "nobody".into(), ..DayUsage::default() }
        );
        assert_eq!(store.rows(None, 11).expect("rows"), [day("alice", 11, 1, 1, 1)], "rows from day 11 on");
        assert_eq!(store.rows(Some("bob"), 0).expect("rows"), [day("bob", 10, 1, 5, 5)]);
        let first = store.meta_or_insert("secret", || vec![1, 2, 3]).expect("stored");
        assert_eq!(store.meta_or_insert("secret", || vec![9]).expect("read"), first);
    }

    #[test]
    fn a_key_name_that_prefixes_another_is_its_own_range() {
        let store = UsageStore::in_memory().expect("in memory");
        store.add(&[day("a", 5, 1, 1, 0), day("ab", 5, 1, 7, 0)]).expect("added");
        assert_eq!(store.sum("a", 0, u32::MAX).expect("sum").prompt_tokens, 1);
        assert_eq!(store.rows(Some("a"), 0).expect("rows").len(), 1);
    }
}
