//! The order in which one model's queue is served: by the callers' priority first (higher
//! before lower: `interactive` before `batch`), and among callers of one priority by deficit
//! round robin over their keys, weighted by what each request reserved, so that a key that
//! floods the queue gets its share of the model and not the queue. Timeouts and status still
//! see arrival order ([`FairQueue::oldest`]).
//!
//! This is the scheduler's one seam for queue order: the machine pushes, serves with
//! [`FairQueue::next`] and expires with [`FairQueue::pop_oldest`]; nothing else in it knows
//! about keys or classes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::gateway::core::scheduler::machine::RequestId;

/// Who a waiting request belongs to, for the queue's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    /// The caller's priority: higher is served first.
    pub priority: i64,
    /// The caller's key (its name; empty for callers without a declared key).
    pub key: Arc<str>,
    /// What the request reserved (tokens): its weight in the round robin.
    pub cost: u64,
    /// Its session key, for affinity routing among the model's copies.
    pub session: Option<crate::gateway::core::affinity::Key>,
}

impl Default for Tag {
    fn default() -> Self {
        Tag {
            priority: plans::fleet::Priority::INTERACTIVE.0,
            key: Arc::from(""),
            cost: QUANTUM,
            session: None,
        }
    }
}

/// One round's credit per key, in tokens: a key is served requests worth this much per turn
/// (at least one request whatever its size, over enough turns).
const QUANTUM: u64 = 4_096;

/// A request's weight is capped so that one huge reservation waits a bounded number of turns.
const MAX_COST: u64 = 64 * QUANTUM;

#[derive(Clone, Debug)]
pub struct Waiter {
    pub id: RequestId,
    pub arrived: u64,
    pub tag: Tag,
}

/// One key's waiting requests, in arrival order, and its unspent credit.
#[derive(Clone, Debug, Default)]
struct Lane {
    waiters: VecDeque<Waiter>,
    deficit: u64,
}

/// The callers of one priority.
#[derive(Clone, Debug, Default)]
struct Class {
    lanes: BTreeMap<Arc<str>, Lane>,
    /// Keys with waiting requests, in round-robin order; the front one has the turn.
    ring: VecDeque<Arc<str>>,
    /// Whether the front key already got this turn's credit.
    credited: bool,
}

impl Class {
    fn push(&mut self, waiter: Waiter) {
        let key = waiter.tag.key.clone();
        let lane = self.lanes.entry(key.clone()).or_default();
        if lane.waiters.is_empty() {
            self.ring.push_back(key);
        }
        lane.waiters.push_back(waiter);
    }

    /// The next request by deficit round robin.
    fn next(&mut self) -> Option<Waiter> {
        loop {
            let key = self.ring.front()?.clone();
            let lane = self.lanes.get_mut(&key)?;
            if !self.credited {
                lane.deficit = lane.deficit.saturating_add(QUANTUM);
                self.credited = true;
            }
            let cost = lane.waiters.front().map_or(0, |w| w.tag.cost.clamp(1, MAX_COST));
            if cost <= lane.deficit {
                lane.deficit -= cost;
                let waiter = lane.waiters.pop_front();
                if lane.waiters.is_empty() {
                    self.forget(&key);
                }
                return waiter;
            }
            // Not enough credit: the turn passes, the credit stays for the next round.
            self.ring.rotate_left(1);
            self.credited = false;
        }
    }

    /// Drop an emptied key from the rotation (its unspent credit goes with it, as DRR does).
    fn forget(&mut self, key: &Arc<str>) {
        self.lanes.remove(key);
        if let Some(at) = self.ring.iter().position(|k| k == key) {
            self.ring.remove(at);
            if at == 0 {
                self.credited = false;
            }
        }
    }

    fn remove(&mut self, pick: impl Fn(&Waiter) -> bool) -> Option<Waiter> {
        let (key, at) = self
            .lanes
            .iter()
            .find_map(|(key, lane)| lane.waiters.iter().position(&pick).map(|at| (key.clone(), at)))?;
        let lane = self.lanes.get_mut(&key)?;
        let waiter = lane.waiters.remove(at);
        if lane.waiters.is_empty() {
            self.forget(&key);
        }
        waiter
    }

    fn oldest(&self) -> Option<&Waiter> {
        self.lanes.values().filter_map(|lane| lane.waiters.front()).min_by_key(|w| (w.arrived, w.id))
    }
}

/// One model's waiting requests.
#[derive(Clone, Debug, Default)]
pub struct FairQueue {
    /// By priority, highest first.
    classes: BTreeMap<std::cmp::Reverse<i64>, Class>,
    len: usize,
}

impl FairQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_back(&mut self, waiter: Waiter) {
        self.classes.entry(std::cmp::Reverse(waiter.tag.priority)).or_default().push(waiter);
        self.len += 1;
    }

    /// The request to serve next: from the highest priority waiting, fairly among its keys.
    pub fn next(&mut self) -> Option<Waiter> {
        let (&priority, class) = self.classes.iter_mut().next()?;
        let waiter = class.next();
        if class.ring.is_empty() {
            self.classes.remove(&priority);
        }
        if waiter.is_some() {
            self.len -= 1;
        }
        waiter
    }

    /// The request that has waited longest, whatever its priority (queue timeouts, status).
    pub fn oldest(&self) -> Option<&Waiter> {
        self.classes.values().filter_map(Class::oldest).min_by_key(|w| (w.arrived, w.id))
    }

    /// Take the request that has waited longest.
    pub fn pop_oldest(&mut self) -> Option<Waiter> {
        let (id, priority) = self.oldest().map(|w| (w.id, w.tag.priority))?;
        self.take(priority, |w| w.id == id)
    }

    /// Take request `id` (its client left); whether it was there.
    pub fn remove(&mut self, id: RequestId) -> bool {
        let Some(priority) = self
            .classes
            .iter()
            .find(|(_, class)| class.lanes.values().any(|l| l.waiters.iter().any(|w| w.id == id)))
            .map(|(p, _)| p.0)
        else {
            return false;
        };
        self.take(priority, |w| w.id == id).is_some()
    }

    fn take(&mut self, priority: i64, pick: impl Fn(&Waiter) -> bool) -> Option<Waiter> {
        let class = self.classes.get_mut(&std::cmp::Reverse(priority))?;
        let waiter = class.remove(pick);
        if class.ring.is_empty() {
            self.classes.remove(&std::cmp::Reverse(priority));
        }
        if waiter.is_some() {
            self.len -= 1;
        }
        waiter
    }

    /// Every request, emptying the queue (in arrival order).
    pub fn drain(&mut self) -> Vec<Waiter> {
        let mut all: Vec<Waiter> = std::mem::take(&mut self.classes)
            .into_values()
            .flat_map(|class| class.lanes.into_values().flat_map(|lane| lane.waiters))
            .collect();
        all.sort_by_key(|w| (w.arrived, w.id));
        self.len = 0;
        all
    }

    /// The highest priority waiting (how much the model's demand weighs against others').
    pub fn top_priority(&self) -> Option<i64> {
        self.classes.keys().next().map(|p| p.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(id: RequestId, key: &str, priority: i64, cost: u64) -> Waiter {
        Waiter { id, arrived: id, tag: Tag { priority, key: Arc::from(key), cost, session: None } }
    }

    fn serve_all(queue: &mut FairQueue) -> Vec<RequestId> {
        std::iter::from_fn(|| queue.next()).map(|w| w.id).collect()
    }

    #[test]
    fn higher_priority_goes_first_whatever_the_arrival() {
        let mut queue = FairQueue::default();
        queue.push_back(waiter(1, "batch", 0, 10));
        queue.push_back(waiter(2, "batch", 0, 10));
        queue.push_back(waiter(3, "alice", 100, 10));
        queue.push_back(waiter(4, "mid", 50, 10));
        assert_eq!(queue.top_priority(), Some(100));
        assert_eq!(serve_all(&mut queue), [3, 4, 1, 2]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_key_that_floods_gets_its_share_not_the_queue() {
        let mut queue = FairQueue::default();
        for id in 1..=6 {
            queue.push_back(waiter(id, "flood", 0, 100));
        }
        queue.push_back(waiter(7, "a", 0, 100));
        queue.push_back(waiter(8, "b", 0, 100));
        // Equal costs: the flooding key is served as often as each other key, in turns of a
        // quantum's worth (40 requests of 100 tokens fit one; here its six go in one turn).
        let order = serve_all(&mut queue);
        assert_eq!(order, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut queue = FairQueue::default();
        for id in 1..=6 {
            queue.push_back(waiter(id, "flood", 0, QUANTUM));
        }
        queue.push_back(waiter(7, "a", 0, QUANTUM));
        queue.push_back(waiter(8, "b", 0, QUANTUM));
        assert_eq!(
            serve_all(&mut queue),
            [1, 7, 8, 2, 3, 4, 5, 6],
            "one quantum-sized request per key per turn"
        );
    }

    #[test]
    fn shares_are_in_tokens_reserved() {
        let mut queue = FairQueue::default();
        for id in 1..=4 {
            queue.push_back(waiter(id, "big", 0, 2 * QUANTUM));
        }
        for id in 11..=18 {
            queue.push_back(waiter(id, "small", 0, QUANTUM / 2));
        }
        // The big requests wait for two turns' credit each; the small key gets two a turn.
        let order = serve_all(&mut queue);
        assert_eq!(order, [11, 12, 1, 13, 14, 15, 16, 2, 17, 18, 3, 4]);
    }

    #[test]
    fn timeouts_and_cancels_see_arrival_order() {
        let mut queue = FairQueue::default();
        queue.push_back(waiter(1, "batch", 0, 10));
        queue.push_back(waiter(2, "alice", 100, 10));
        queue.push_back(waiter(3, "bob", 100, 10));
        assert_eq!(queue.oldest().map(|w| w.id), Some(1));
        assert_eq!(queue.pop_oldest().map(|w| w.id), Some(1));
        assert!(queue.remove(3) && !queue.remove(3));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.drain().iter().map(|w| w.id).collect::<Vec<_>>(), [2]);
        assert!(queue.is_empty() && queue.next().is_none());
    }
}
