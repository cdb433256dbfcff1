//! The one eviction choice (spec §4, §7): of the copies a neuron may give up, which go first,
//! and which must wait because they have not been resident for their `min_residency` yet. The
//! planner's passes and the router's placement both reach it through the capacity ledger, so a
//! reconcile and a cold load never disagree about what to evict.

use crate::fleet::Eviction;

/// A copy that could be evicted, with what the choice weighs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// A warm replica (evictable only for a pin): after every on-demand copy.
    pub replica: bool,
    /// Requests in flight on the neuron or waiting for it in the gateway: evicted last.
    pub busy: bool,
    /// For `eviction = "priority"`: lower goes first.
    pub priority: i64,
    pub last_used_unix_ms: u64,
    /// Live sessions bound to the copy by affinity routing: fewer go first.
    pub sessions: usize,
    /// The earliest time it may be evicted (resident since + `min_residency`); `None`: any time.
    pub evictable_from_unix_ms: Option<u64>,
}

/// The outcome: the evictable candidates in eviction order, and the held ones with the time
/// each becomes evictable (positions into the candidate list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    pub order: Vec<usize>,
    pub held: Vec<(usize, u64)>,
}

/// Order `candidates` for eviction under `policy` at `now_unix_ms`: idle on-demand copies first
/// (by policy: least recently used, or lowest priority then least recently used; before
/// recency, fewer live sessions), then busy ones, then replicas; copies still within their minimum residency are held back.
pub fn choose(candidates: &[Candidate<'_>], policy: Eviction, now_unix_ms: u64) -> Choice {
    let mut choice = Choice::default();
    for (position, candidate) in candidates.iter().enumerate() {
        match candidate.evictable_from_unix_ms {
            Some(from) if from > now_unix_ms => choice.held.push((position, from)),
            _ => choice.order.push(position),
        }
    }
    choice.order.sort_by_key(|&position| {
        let c = &candidates[position];
        let policy_key = match policy {
            Eviction::Lru => 0,
            Eviction::Priority => c.priority,
        };
        (c.replica, c.busy, policy_key, c.sessions, c.last_used_unix_ms, c.id)
    });
    choice.held.sort_by_key(|&(position, from)| (from, candidates[position].id));
    choice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, busy: bool, priority: i64, last_used: u64, from: Option<u64>) -> Candidate<'_> {
        Candidate {
            id,
            replica: false,
            busy,
            priority,
            last_used_unix_ms: last_used,
            sessions: 0,
            evictable_from_unix_ms: from,
        }
    }

    #[test]
    fn idle_before_busy_and_residency_holds() {
        let candidates = [
            candidate("busy-old", true, 10, 1, None),
            candidate("idle-new", false, 20, 50, None),
            candidate("idle-old", false, 50, 10, None),
            candidate("fresh", false, 0, 0, Some(2_000)),
            candidate("settled", false, 0, 0, Some(1_000)),
        ];
        let lru = choose(&candidates, Eviction::Lru, 1_000);
        let ids: Vec<&str> = lru.order.iter().map(|&p| candidates[p].id).collect();
        assert_eq!(ids, ["settled", "idle-old", "idle-new", "busy-old"]);
        assert_eq!(lru.held, vec![(3, 2_000)]);
        let by_priority = choose(&candidates, Eviction::Priority, 1_000);
        let ids: Vec<&str> = by_priority.order.iter().map(|&p| candidates[p].id).collect();
        assert_eq!(ids, ["settled", "idle-new", "idle-old", "busy-old"]);
        let later = choose(&candidates, Eviction::Priority, 5_000);
        let ids: Vec<&str> = later.order.iter().map(|&p| candidates[p].id).collect();
        assert_eq!(ids, ["fresh", "settled", "idle-new", "idle-old", "busy-old"]);
    }

    #[test]
    fn fewer_sessions_go_before_recency_within_a_policy_class() {
        let with = |id, sessions, priority, last_used| Candidate {
            sessions,
            ..candidate(id, false, priority, last_used, None)
        };
        let candidates = [with("held", 3, 0, 1), with("recent-empty", 0, 0, 9), with("high", 0, 5, 0)];
        let lru = choose(&candidates, Eviction::Lru, 0);
        let ids: Vec<&str> = lru.order.iter().map(|&p| candidates[p].id).collect();
        assert_eq!(ids, ["high", "recent-empty", "held"]);
        let by_priority = choose(&candidates, Eviction::Priority, 0);
        let ids: Vec<&str> = by_priority.order.iter().map(|&p| candidates[p].id).collect();
        assert_eq!(ids, ["recent-empty", "held", "high"]);
    }

    #[test]
    fn replicas_go_after_busy_on_demand_copies() {
        let mut replica = candidate("replica", false, 0, 0, None);
        replica.replica = true;
        let candidates = [replica, candidate("busy", true, 0, 9, None)];
        let choice = choose(&candidates, Eviction::Lru, 0);
        assert_eq!(choice.order, vec![1, 0]);
    }
}
