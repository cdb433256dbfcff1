//! Fencing for a cortex cluster: the highest leader term this neuron has seen, persisted in its
//! `state_dir` so that a restart does not forget it, and the record of the lifecycle calls it
//! decided on (`GET /actions`), each with its term.
//!
//! Invariant: the term is checked, raised and persisted under the registry lock, the same lock
//! as the `if_generation` precondition, so a call with a lower term than one already accepted
//! is never accepted after it; and once a term was seen, a call without one is refused too.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use plans::wire::ActionRecord;

use crate::clock::now_unix_ms;
use crate::error::ApiError;

/// How many lifecycle decisions `GET /actions` keeps.
const ACTIONS_KEPT: usize = 2_000;

/// Why the persisted term could not be read at start.
#[derive(Debug, thiserror::Error)]
pub enum TermFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "{path} does not hold a term (a number); remove it only if no cortex cluster manages this neuron"
    )]
    Corrupt { path: String },
}

/// The file holding the highest term seen (`<state_dir>/term`).
#[derive(Debug)]
pub struct TermFile {
    path: PathBuf,
}

impl TermFile {
    pub fn in_dir(state_dir: &Path) -> TermFile {
        TermFile { path: state_dir.join("term") }
    }

    /// The term persisted by an earlier run; 0 when none was ever seen.
    pub fn read(&self) -> Result<u64, TermFileError> {
        let path = self.path.display().to_string();
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map_err(|_| TermFileError::Corrupt { path }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(TermFileError::Read { path, source }),
        }
    }

    /// Persist `term` durably before it is acted on: a temporary file, synced, renamed over.
    /// Runs under the registry lock; it happens once per new leader, not per call.
    fn write(&self, term: u64) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{term}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The fencing state kept in the registry (under its lock).
#[derive(Debug, Default)]
pub struct Fence {
    /// The highest term seen; 0 when none.
    pub term: u64,
    actions: VecDeque<ActionRecord>,
    next_seq: u64,
}

impl Fence {
    pub fn starting_at(term: u64) -> Fence {
        Fence { term, ..Fence::default() }
    }

    /// Admit a call carrying `presented`: refuse a lower term (or none, once one was seen);
    /// raise and persist a higher one.
    pub fn admit(&mut self, presented: Option<u64>, file: &TermFile) -> Result<(), ApiError> {
        match presented {
            None if self.term == 0 => Ok(()),
            None => Err(ApiError::Fenced { current: self.term, presented }),
            Some(term) if term < self.term => Err(ApiError::Fenced { current: self.term, presented }),
            Some(term) if term > self.term => {
                file.write(term).map_err(|error| {
                    ApiError::StateNotSaved(format!("cannot persist term {term}: {error}"))
                })?;
                tracing::info!(term, previous = self.term, "a new cluster term fences older leaders");
                self.term = term;
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }

    /// Record a decision (`outcome`: `accepted`, `unchanged` or the refusal's code); returns
    /// its sequence number (to mark its end later).
    pub fn record(
        &mut self,
        kind: &str,
        model: Option<&str>,
        term: Option<u64>,
        outcome: &str,
        generation: u64,
    ) -> u64 {
        self.next_seq += 1;
        let record = ActionRecord {
            seq: self.next_seq,
            kind: kind.to_owned(),
            model: model.map(str::to_owned),
            term,
            outcome: outcome.to_owned(),
            generation,
            started_unix_ms: now_unix_ms(),
            ended_unix_ms: None,
        };
        if self.actions.len() == ACTIONS_KEPT {
            self.actions.pop_front();
        }
        self.actions.push_back(record);
        self.next_seq
    }

    /// Mark the accepted action `seq` as ended now (a load ready or failed, an unload done).
    pub fn ended(&mut self, seq: u64) {
        let first = self.actions.front().map_or(0, |a| a.seq);
        let index = seq.checked_sub(first).and_then(|i| usize::try_from(i).ok());
        if let Some(record) = index.and_then(|i| self.actions.get_mut(i)) {
            record.ended_unix_ms.get_or_insert_with(now_unix_ms);
        }
    }

    pub fn actions(&self) -> Vec<ActionRecord> {
        self.actions.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_term_is_refused_a_higher_one_persisted_and_none_refused_once_one_was_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = TermFile::in_dir(&dir.path().join("state"));
        assert_eq!(file.read().expect("no file yet"), 0);
        let mut fence = Fence::starting_at(file.read().expect("readable"));
        assert!(fence.admit(None, &file).is_ok(), "standalone callers send no term");
        assert!(fence.admit(Some(7), &file).is_ok());
        assert_eq!(file.read().expect("persisted"), 7, "persisted before it is acted on");
        assert!(fence.admit(Some(7), &file).is_ok(), "the same term goes on");
        let refused = fence.admit(Some(6), &file).expect_err("lower");
        assert!(matches!(refused, ApiError::Fenced { current: 7, presented: Some(6) }), "{refused:?}");
        assert!(fence.admit(None, &file).is_err(), "no term after one was seen");
        assert!(fence.admit(Some(9), &file).is_ok());
        assert_eq!(Fence::starting_at(file.read().expect("readable")).term, 9, "a restart keeps it");
    }

    #[test]
    fn a_corrupt_term_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("term"), "seven\n").expect("write");
        let error = TermFile::in_dir(dir.path()).read().expect_err("corrupt");
        assert!(error.to_string().contains("does not hold a term"), "{error}");
    }

    #[test]
    fn the_record_is_bounded_and_marks_ends_by_sequence() {
        let mut fence = Fence::default();
        for _ in 0..ACTIONS_KEPT + 5 {
            fence.record("load", Some("m"), Some(1), "accepted", 1);
        }
        let actions = fence.actions();
        assert_eq!(actions.len(), ACTIONS_KEPT);
        let last = actions.last().expect("records").seq;
        fence.ended(last);
        fence.ended(1); // dropped long ago: ignored
        assert!(fence.actions().last().expect("records").ended_unix_ms.is_some());
        assert!(fence.actions()[0].ended_unix_ms.is_none());
    }
}
