//! The scheduler's memory that a cluster's next leader inherits: since when each copy is
//! resident (what `min_residency` counts from) and the backoff of failed cold loads and of the
//! reconciler's failed actions. [`Record`] is that state as the leader writes it to etcd (fenced
//! by its term, `crate::cluster::decisions`); [`Decisions`] is where the scheduler and the
//! reconciler publish theirs and find what the previous leader left.
//!
//! Clocks are Unix milliseconds: the record crosses processes and hosts. A successor adopts the
//! record before it acts (it is handed over before the authority says `Leader`); until the
//! scheduler and the reconciler have adopted their part, the record it writes carries the
//! inherited part unchanged, so that a leader that dies at once passes it on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The record's format; a record of another format is ignored (the successor starts cold).
pub const FORMAT: u32 = 1;

/// The longest error text kept per failure in the record.
const ERROR_CHARS: usize = 300;

/// The leader's decisions, as written in etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub format: u32,
    /// The term that wrote it.
    pub term: u64,
    /// The digest of the fleet the reconciler's backoff was recorded against (a new fleet
    /// resets it).
    pub fleet: String,
    /// Ready copies and since when (Unix ms).
    pub resident: Vec<Resident>,
    /// The scheduler's failed cold loads.
    pub loads: Vec<Failure>,
    /// The reconciler's failed actions.
    pub passes: Vec<Failure>,
}

/// A ready copy of `model` on `neuron`, resident since `since_unix_ms`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Resident {
    pub model: String,
    pub neuron: String,
    pub since_unix_ms: u64,
}

/// A `(model, neuron)` that failed `failures` times in a row and waits until `until_unix_ms`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub model: String,
    pub neuron: String,
    pub failures: u32,
    pub until_unix_ms: u64,
    pub error: String,
}

impl Failure {
    /// `error` cut to a length a record keeps.
    pub fn new(model: &str, neuron: &str, failures: u32, until_unix_ms: u64, error: &str) -> Failure {
        let error = match error.char_indices().nth(ERROR_CHARS) {
            Some((at, _)) => format!("{}…", &error[..at]),
            None => error.to_owned(),
        };
        Failure { model: model.to_owned(), neuron: neuron.to_owned(), failures, until_unix_ms, error }
    }
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The record in `bytes`; `Err` says why it cannot be used.
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        let record: Record = serde_json::from_slice(bytes).map_err(|e| format!("unreadable: {e}"))?;
        if record.format != FORMAT {
            return Err(format!("format {} (this cortex reads {FORMAT})", record.format));
        }
        Ok(record)
    }

    /// The residency clocks as the scheduler keys them.
    pub fn clocks(&self) -> BTreeMap<(String, String), u64> {
        self.resident.iter().map(|r| ((r.model.clone(), r.neuron.clone()), r.since_unix_ms)).collect()
    }
}

/// Which component adopts which part of an inherited record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Residency clocks and failed cold loads.
    Scheduler,
    /// The reconciler's backoff.
    Reconciler,
}

/// This replica's decisions, as its scheduler and reconciler publish them, and the record the
/// previous leader left. Cheap to clone.
#[derive(Clone, Default)]
pub struct Decisions {
    state: Arc<Mutex<State>>,
    /// Bumped on every change, for the writer.
    changed: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for Decisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decisions")
    }
}

#[derive(Default)]
struct State {
    resident: Vec<Resident>,
    loads: Vec<Failure>,
    fleet: String,
    passes: Vec<Failure>,
    /// The term it was handed to and the record, until adopted.
    inherited: Option<(u64, Arc<Record>)>,
    scheduler_adopted: bool,
    reconciler_adopted: bool,
}

impl Decisions {
    fn update(&self, change: impl FnOnce(&mut State) -> bool) {
        let changed = change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        if changed {
            self.changed.send_modify(|version| *version += 1);
        }
    }

    /// The scheduler's ready copies (any order).
    pub fn set_resident(&self, mut resident: Vec<Resident>) {
        resident.sort();
        self.update(|state| replace(&mut state.resident, resident));
    }

    /// The scheduler's failed cold loads.
    pub fn set_loads(&self, loads: Vec<Failure>) {
        self.update(|state| replace(&mut state.loads, loads));
    }

    /// The reconciler's failed actions, against the fleet of digest `fleet`.
    pub fn set_passes(&self, fleet: &str, passes: Vec<Failure>) {
        self.update(|state| {
            let fleet_changed = replace(&mut state.fleet, fleet.to_owned());
            replace(&mut state.passes, passes) || fleet_changed
        });
    }

    /// Hand the record the previous leader left to the components, for `term` (before it
    /// leads).
    pub fn inherit(&self, term: u64, record: Record) {
        self.update(|state| {
            state.inherited = Some((term, Arc::new(record)));
            state.scheduler_adopted = false;
            state.reconciler_adopted = false;
            true
        });
    }

    /// `part`'s share of the record inherited for `term`, once: `None` when there is none or
    /// it was adopted. The component publishes its state, then calls [`Decisions::adopted`].
    pub fn to_adopt(&self, part: Part, term: u64) -> Option<Arc<Record>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (inherited_term, record) = state.inherited.as_ref()?;
        let adopted = match part {
            Part::Scheduler => state.scheduler_adopted,
            Part::Reconciler => state.reconciler_adopted,
        };
        (*inherited_term == term && !adopted).then(|| record.clone())
    }

    /// `part` has adopted the record inherited for `term` and published its state since.
    pub fn adopted(&self, part: Part, term: u64) {
        self.update(|state| {
            if state.inherited.as_ref().is_none_or(|(t, _)| *t != term) {
                return false;
            }
            match part {
                Part::Scheduler => state.scheduler_adopted = true,
                Part::Reconciler => state.reconciler_adopted = true,
            }
            true
        });
    }

    /// Resolves at the next change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The record to write under `term`: this replica's decisions, and the parts of the one it
    /// inherited for `term` that are not adopted yet.
    pub fn record(&self, term: u64) -> Record {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut record = Record {
            format: FORMAT,
            term,
            fleet: state.fleet.clone(),
            resident: state.resident.clone(),
            loads: state.loads.clone(),
            passes: state.passes.clone(),
        };
        let Some((inherited_term, inherited)) = &state.inherited else { return record };
        if *inherited_term != term {
            return record;
        }
        if !state.scheduler_adopted {
            record.resident = merge_resident(&inherited.resident, &record.resident);
            record.loads = merge_failures(&inherited.loads, &record.loads);
        }
        if !state.reconciler_adopted {
            if record.fleet.is_empty() {
                record.fleet.clone_from(&inherited.fleet);
            }
            if record.fleet == inherited.fleet {
                record.passes = merge_failures(&inherited.passes, &record.passes);
            }
        }
        record
    }
}

fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    let changed = *slot != value;
    *slot = value;
    changed
}

/// `own`'s copies with the clocks `inherited` has for them first, then the inherited ones own
/// does not know.
fn merge_resident(inherited: &[Resident], own: &[Resident]) -> Vec<Resident> {
    let mut merged: BTreeMap<(&str, &str), u64> =
        own.iter().map(|r| ((r.model.as_str(), r.neuron.as_str()), r.since_unix_ms)).collect();
    for r in inherited {
        merged.insert((&r.model, &r.neuron), r.since_unix_ms);
    }
    merged
        .into_iter()
        .map(|((model, neuron), since_unix_ms)| Resident {
            model: model.to_owned(),
            neuron: neuron.to_owned(),
            since_unix_ms,
        })
        .collect()
}

/// Per `(model, neuron)`, the failure that waits longer.
fn merge_failures(inherited: &[Failure], own: &[Failure]) -> Vec<Failure> {
    let mut merged: BTreeMap<(&str, &str), &Failure> = BTreeMap::new();
    for failure in inherited.iter().chain(own) {
        let key = (failure.model.as_str(), failure.neuron.as_str());
        if merged.get(&key).is_none_or(|f| f.until_unix_ms < failure.until_unix_ms) {
            merged.insert(key, failure);
        }
    }
    merged.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident(model: &str, since: u64) -> Resident {
        Resident { model: model.to_owned(), neuron: "n1".to_owned(), since_unix_ms: since }
    }

    #[test]
    fn a_record_round_trips_and_another_format_is_refused() {
        let record = Record {
            format: FORMAT,
            term: 42,
            fleet: "sha256:abc".to_owned(),
            resident: vec![resident("a", 1_000)],
            loads: vec![Failure::new("bad", "n1", 2, 9_000, "exit 3")],
            passes: vec![Failure::new("pinned", "n1", 1, 8_000, "timeout")],
        };
        assert_eq!(Record::decode(&record.encode()), Ok(record.clone()));
        let other = Record { format: FORMAT + 1, ..record };
        assert!(Record::decode(&other.encode()).expect_err("another format").contains("format 2"));
        assert!(Record::decode(b"{not json").expect_err("not JSON").contains("unreadable"));
        let long = Failure::new("m", "n", 1, 0, &"x".repeat(5_000));
        assert_eq!(long.error.chars().count(), ERROR_CHARS + 1, "cut, with an ellipsis");
    }

    #[test]
    fn an_inherited_part_is_written_on_until_its_component_adopts_it() {
        let decisions = Decisions::default();
        decisions.set_resident(vec![resident("a", 5_000)]);
        let inherited = Record {
            format: FORMAT,
            term: 7,
            fleet: "f1".to_owned(),
            resident: vec![resident("a", 1_000), resident("b", 2_000)],
            loads: vec![Failure::new("bad", "n1", 1, 9_000, "boom")],
            passes: vec![Failure::new("p", "n1", 1, 8_000, "boom")],
        };
        decisions.inherit(9, inherited.clone());
        let record = decisions.record(9);
        assert_eq!((record.term, record.fleet.as_str()), (9, "f1"));
        assert_eq!(record.resident, [resident("a", 1_000), resident("b", 2_000)], "the old clocks first");
        assert_eq!((record.loads.len(), record.passes.len()), (1, 1));
        assert!(decisions.record(10).loads.is_empty(), "another term inherited nothing");

        assert_eq!(decisions.to_adopt(Part::Scheduler, 8), None, "handed to term 9 only");
        assert_eq!(decisions.to_adopt(Part::Scheduler, 9).as_deref(), Some(&inherited));
        decisions.set_resident(vec![resident("a", 1_000)]);
        decisions.adopted(Part::Scheduler, 9);
        assert_eq!(decisions.to_adopt(Part::Scheduler, 9), None, "adopted once");
        let record = decisions.record(9);
        assert_eq!(record.resident, [resident("a", 1_000)], "the scheduler's own state now");
        assert!(record.loads.is_empty());
        assert_eq!(record.passes.len(), 1, "the reconciler has not adopted yet");

        // The reconciler runs another fleet: the old backoff does not count against it.
        decisions.set_passes("f2", Vec::new());
        assert!(decisions.record(9).passes.is_empty());
    }

    #[test]
    fn the_longer_wait_wins_a_merge() {
        let old = [Failure::new("m", "n1", 3, 9_000, "old")];
        let own = [Failure::new("m", "n1", 1, 5_000, "new"), Failure::new("m", "n2", 1, 1, "x")];
        let merged = merge_failures(&old, &own);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].until_unix_ms, 9_000);
    }
}
