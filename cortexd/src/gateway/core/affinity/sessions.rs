//! The live sessions of each copy: the session keys routed to a copy within the last
//! [`WINDOW_MS`], at most [`CAPACITY`] of them (the oldest go first). The scheduler records
//! every affinity choice here; the counts per copy reach the planner (`Activity::sessions`),
//! and a key's presence tells a new session from a returning one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::gateway::core::affinity::key::Key;

/// How long a session stays bound to its copy without a request.
pub const WINDOW_MS: u64 = 10 * 60 * 1000;

/// The most sessions remembered, over all models.
pub const CAPACITY: usize = 65_536;

#[derive(Debug)]
struct Entry {
    model: String,
    neuron: String,
    seen: u64,
}

/// The table: sessions by their identity (key and model), their ages, and the counts per copy.
#[derive(Debug, Default)]
pub struct Sessions {
    entries: HashMap<u64, Entry>,
    ages: BTreeSet<(u64, u64)>,
    /// model → neuron → live sessions.
    counts: BTreeMap<String, BTreeMap<String, usize>>,
}

impl Sessions {
    /// Record that `key` went to `model` on `neuron` at `now`; whether the model had seen the
    /// key within the window.
    pub fn record(&mut self, now: u64, model: &str, key: Key, neuron: &str) -> bool {
        self.expire(now);
        let id = key.with(model);
        if let Some(entry) = self.entries.get_mut(&id) {
            self.ages.remove(&(entry.seen, id));
            entry.seen = now;
            self.ages.insert((now, id));
            if entry.neuron != neuron {
                let old = std::mem::replace(&mut entry.neuron, neuron.to_owned());
                decrement(&mut self.counts, model, &old);
                *self.counts.entry(model.to_owned()).or_default().entry(neuron.to_owned()).or_default() += 1;
            }
            return true;
        }
        self.entries.insert(id, Entry { model: model.to_owned(), neuron: neuron.to_owned(), seen: now });
        self.ages.insert((now, id));
        *self.counts.entry(model.to_owned()).or_default().entry(neuron.to_owned()).or_default() += 1;
        while self.entries.len() > CAPACITY {
            let Some((_, oldest)) = self.ages.pop_first() else { break };
            self.forget(oldest);
        }
        false
    }

    /// Forget the sessions not seen within the window before `now`.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(seen, id)) = self.ages.first() {
            if seen.saturating_add(WINDOW_MS) > now {
                break;
            }
            self.ages.pop_first();
            self.forget(id);
        }
    }

    /// Live sessions per `(model, neuron)`.
    pub fn counts(&self) -> BTreeMap<(String, String), usize> {
        self.counts
            .iter()
            .flat_map(|(model, neurons)| {
                neurons.iter().map(move |(neuron, &count)| ((model.clone(), neuron.clone()), count))
            })
            .collect()
    }

    fn forget(&mut self, id: u64) {
        if let Some(entry) = self.entries.remove(&id) {
            decrement(&mut self.counts, &entry.model, &entry.neuron);
        }
    }
}

fn decrement(counts: &mut BTreeMap<String, BTreeMap<String, usize>>, model: &str, neuron: &str) {
    let Some(neurons) = counts.get_mut(model) else { return };
    if let Some(count) = neurons.get_mut(neuron) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            neurons.remove(neuron);
        }
    }
    if neurons.is_empty() {
        counts.remove(model);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_count_per_copy_move_and_expire() {
        let mut sessions = Sessions::default();
        assert!(!sessions.record(0, "m", Key(1), "a"));
        assert!(!sessions.record(10, "m", Key(2), "a"));
        assert!(!sessions.record(20, "other", Key(1), "a"), "a key is per model");
        assert!(sessions.record(30, "m", Key(1), "a"));
        let counts = |s: &Sessions| {
            s.counts().into_iter().map(|((m, n), c)| format!("{m}/{n}={c}")).collect::<Vec<_>>()
        };
        assert_eq!(counts(&sessions), ["m/a=2", "other/a=1"]);
        assert!(sessions.record(40, "m", Key(2), "b"), "a spilled session moves its count");
        assert_eq!(counts(&sessions), ["m/a=1", "m/b=1", "other/a=1"]);
        sessions.expire(20 + WINDOW_MS);
        assert_eq!(counts(&sessions), ["m/a=1", "m/b=1"], "other's session expired");
        sessions.expire(40 + WINDOW_MS);
        assert!(counts(&sessions).is_empty());
        assert!(!sessions.record(50 + WINDOW_MS, "m", Key(1), "a"), "an expired session is new again");
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_oldest() {
        let mut sessions = Sessions::default();
        let total = CAPACITY as u64 + 10;
        for key in 0..total {
            sessions.record(key, "m", Key(key), "a");
        }
        assert_eq!(sessions.entries.len(), CAPACITY);
        assert_eq!(sessions.counts()[&("m".to_owned(), "a".to_owned())], CAPACITY);
        assert!(!sessions.record(total, "m", Key(0), "a"), "the oldest was forgotten");
        assert!(sessions.record(total, "m", Key(total - 1), "a"));
    }
}
