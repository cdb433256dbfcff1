//! Which replica produced each recent Responses id: a response an engine may have stored is
//! remembered (id → replica, bounded in count and age) so that `previous_response_id` and
//! `GET /v1/responses/{id}` reach the replica that made it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Which replica produced each recent response id. Bounded: the oldest ids are forgotten past
/// [`ResponseIndex::CAPACITY`] entries or [`ResponseIndex::MAX_AGE`].
#[derive(Debug, Default)]
pub struct ResponseIndex {
    inner: Mutex<IndexInner>,
}

#[derive(Debug, Default)]
struct IndexInner {
    by_id: HashMap<String, Replica>,
    /// Ids in insertion order, for eviction.
    order: VecDeque<(String, Instant)>,
}

/// Where a response was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub neuron: String,
    pub model: String,
}

impl ResponseIndex {
    const CAPACITY: usize = 100_000;
    pub const MAX_AGE: Duration = Duration::from_secs(6 * 3600);

    pub fn remember(&self, id: &str, replica: Replica) {
        self.remember_at(id, replica, Instant::now());
    }

    fn remember_at(&self, id: &str, replica: Replica, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.forget_old(now);
        if inner.by_id.insert(id.to_owned(), replica).is_none() {
            inner.order.push_back((id.to_owned(), now));
        }
        while inner.order.len() > Self::CAPACITY {
            if let Some((oldest, _)) = inner.order.pop_front() {
                inner.by_id.remove(&oldest);
            }
        }
    }

    pub fn find(&self, id: &str) -> Option<Replica> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.forget_old(Instant::now());
        inner.by_id.get(id).cloned()
    }
}

impl IndexInner {
    fn forget_old(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            if now.duration_since(*at) <= ResponseIndex::MAX_AGE {
                break;
            }
            self.by_id.remove(id);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_forgets_by_age() {
        let index = ResponseIndex::default();
        let replica = Replica { neuron: "n".into(), model: "m".into() };
        let long_ago = Instant::now().checked_sub(ResponseIndex::MAX_AGE + Duration::from_secs(1));
        if let Some(long_ago) = long_ago {
            index.remember_at("old", replica.clone(), long_ago);
        }
        index.remember("new", replica.clone());
        assert_eq!(index.find("old"), None);
        assert_eq!(index.find("new"), Some(replica));
        assert_eq!(index.find("unknown"), None);
    }
}
