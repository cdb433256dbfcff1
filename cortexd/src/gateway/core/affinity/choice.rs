//! Consistent hashing with bounded loads: a session's copies in rendezvous (highest random
//! weight) order of its key, and the first of them loaded below the bound and below its
//! `max_concurrency`. The bound is `ceil(load_factor × (in flight + 1) / copies)`: the mean
//! load with this request counted, times the factor, so one request always fits somewhere and
//! a hot session spills to its next copy instead of piling onto one.
//!
//! Rendezvous order needs no shared state (every gateway computes it alike) and a copy that
//! goes away moves only the sessions whose first choice it was, to their next copy.

use plans::fleet::LoadFactor;

use crate::gateway::core::affinity::key::Key;

/// How an affinity choice went, the label of `cortex_affinity_routing_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The session's first copy in hash order took it.
    Hit,
    /// Load (the bound or `max_concurrency`) moved it past its first copy.
    Spilled,
    /// The model had not seen the session within the window.
    New,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Spilled => "spilled",
            Outcome::New => "new",
        }
    }
}

/// The copy for `key` among `copies` (each a neuron and its requests in flight), none of which
/// may take more than `limit` requests: its position, and whether it is the key's first choice.
/// `None` when every copy is at its limit.
pub fn choose(key: Key, copies: &[(&str, u32)], limit: u32, factor: LoadFactor) -> Option<(usize, bool)> {
    let count = u64::try_from(copies.len()).ok().filter(|&n| n > 0)?;
    let total: u64 = copies.iter().map(|&(_, load)| u64::from(load)).sum::<u64>() + 1;
    let bound = (u64::from(factor.0) * total).div_ceil(1000 * count);
    let mut order: Vec<(u64, &str, usize)> =
        copies.iter().enumerate().map(|(i, &(neuron, _))| (key.with(neuron), neuron, i)).collect();
    order.sort_unstable_by(|a, b| (b.0, a.1).cmp(&(a.0, b.1)));
    let first = order.first().map(|&(_, _, i)| i);
    order
        .iter()
        .map(|&(_, _, i)| i)
        .find(|&i| copies[i].1 < limit && u64::from(copies[i].1) < bound)
        .map(|i| (i, Some(i) == first))
}

#[cfg(test)]
mod tests;
