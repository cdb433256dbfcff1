//! Demand: what each replica's clients wait for. Every replica publishes its queues (per model:
//! requests waiting, the oldest wait, requests in flight) under its own lease, so that a dead
//! replica's demand disappears with it; the leader reads everyone's, and its scheduler loads
//! for them as for its own clients.
//!
//! Writes are coalesced: at most one per `MIN_GAP`, and only when the queues changed, so a busy
//! replica costs etcd a few writes a second, not one per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::keys::Keys;
use crate::cluster::store::{Entries, Store};
use crate::control::poller::now_unix_ms;
use crate::control::status::QueueStatus;

/// The shortest time between two writes of one replica's demand.
const MIN_GAP: Duration = Duration::from_millis(100);

/// One replica's demand, as published.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaDemand {
    pub replica: String,
    pub at_unix_ms: u64,
    /// Models with requests waiting or in flight on that replica.
    pub queues: Vec<QueueStatus>,
}

/// Everyone's demand, by replica name.
pub type ClusterDemand = BTreeMap<String, ReplicaDemand>;

/// Publish `queues` (this replica's, as the scheduler reports them) under the current lease
/// until `shutdown`; again whenever the lease changes (a new lease has no keys yet).
pub async fn publish(
    store: Store,
    keys: Keys,
    replica: String,
    mut queues: watch::Receiver<Arc<Vec<QueueStatus>>>,
    mut lease: watch::Receiver<Option<i64>>,
    shutdown: CancellationToken,
) {
    let key = keys.demand(&replica);
    let mut written: Option<(i64, Arc<Vec<QueueStatus>>)> = None;
    loop {
        let current = queues.borrow_and_update().clone();
        let held = *lease.borrow_and_update();
        if let Some(id) = held {
            let fresh = written.as_ref().is_none_or(|(at, last)| *at != id || *last != current);
            if fresh {
                let demand = ReplicaDemand {
                    replica: replica.clone(),
                    at_unix_ms: now_unix_ms(),
                    queues: current.to_vec(),
                };
                let value = serde_json::to_vec(&demand).unwrap_or_default();
                match store.put_leased(&key, value, id).await {
                    Ok(()) => written = Some((id, current)),
                    Err(error) => tracing::debug!(%error, "cluster: demand not published; trying again"),
                }
            }
        }
        let retry = async {
            // A failed write is tried again shortly even if nothing changes.
            if held.is_some() && written.as_ref().is_none_or(|(at, _)| Some(*at) != held) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = queues.changed() => if changed.is_err() { return },
            changed = lease.changed() => if changed.is_err() { return },
            () = retry => {}
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// Everyone's demand, kept up to date from etcd until `shutdown`.
pub fn watch_all(
    store: &Store,
    keys: &Keys,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<ClusterDemand>> {
    let mut entries = store.watch_prefix(keys.demands(), shutdown.clone());
    let (sender, receiver) = watch::channel(Arc::new(ClusterDemand::new()));
    tokio::spawn(async move {
        loop {
            let decoded = decode(&entries.borrow_and_update());
            sender.send_replace(Arc::new(decoded));
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = entries.changed() => if changed.is_err() { return },
            }
        }
    });
    receiver
}

/// Decode the published demands (a record that does not parse is left out).
pub fn decode(entries: &Entries) -> ClusterDemand {
    entries
        .iter()
        .filter_map(|(name, value)| Some((name.clone(), serde_json::from_slice(value).ok()?)))
        .collect()
}

/// Per model, the demand of every replica but `except` (the leader counts its own queues
/// itself): requests waiting, the oldest wait as of `now_unix_ms` (a record ages from when it
/// was published), requests in flight.
pub fn others(demand: &ClusterDemand, except: &str, now_unix_ms: u64) -> BTreeMap<String, QueueStatus> {
    let mut total: BTreeMap<String, QueueStatus> = BTreeMap::new();
    for replica in demand.values().filter(|d| d.replica != except) {
        let age = now_unix_ms.saturating_sub(replica.at_unix_ms);
        for queue in &replica.queues {
            let entry = total.entry(queue.model.clone()).or_insert_with(|| QueueStatus {
                model: queue.model.clone(),
                waiting: 0,
                oldest_wait_ms: 0,
                in_flight: 0,
            });
            entry.waiting += queue.waiting;
            if queue.waiting > 0 {
                entry.oldest_wait_ms = entry.oldest_wait_ms.max(queue.oldest_wait_ms + age);
            }
            entry.in_flight += queue.in_flight;
        }
    }
    total
}

/// The other replicas' demand per model, kept up to date until `shutdown` (the leader's
/// scheduler weighs it as its own).
pub fn watch_others(
    store: &Store,
    keys: &Keys,
    me: String,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<BTreeMap<String, QueueStatus>>> {
    let mut all = watch_all(store, keys, shutdown.clone());
    let (sender, receiver) = watch::channel(Arc::new(BTreeMap::new()));
    tokio::spawn(async move {
        loop {
            let others = others(&all.borrow_and_update(), &me, now_unix_ms());
            sender.send_if_modified(|current| {
                let modified = **current != others;
                if modified {
                    *current = Arc::new(others);
                }
                modified
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = all.changed() => if changed.is_err() { return },
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(model: &str, waiting: usize, oldest_wait_ms: u64, in_flight: u32) -> QueueStatus {
        QueueStatus { model: model.to_owned(), waiting, oldest_wait_ms, in_flight }
    }

    #[test]
    fn the_leader_adds_up_the_other_replicas_demand_per_model() {
        let mut entries = Entries::new();
        for (name, queues) in [
            ("gw-1", vec![queue("a", 5, 900, 1)]),
            ("gw-2", vec![queue("a", 2, 3000, 0), queue("b", 1, 100, 4)]),
            ("gw-3", vec![queue("b", 7, 50, 0)]),
        ] {
            let demand = ReplicaDemand { replica: name.to_owned(), at_unix_ms: 1, queues };
            entries.insert(name.to_owned(), serde_json::to_vec(&demand).expect("json"));
        }
        entries.insert("broken".to_owned(), b"{".to_vec());
        let demand = decode(&entries);
        assert_eq!(demand.len(), 3, "a record that does not parse is left out");
        let others = others(&demand, "gw-1", 1);
        assert_eq!(others["a"], queue("a", 2, 3000, 0), "gw-1's own queue is not counted twice");
        assert_eq!(others["b"], queue("b", 8, 100, 4));
        let later = super::others(&demand, "gw-1", 501);
        assert_eq!(later["a"].oldest_wait_ms, 3500, "a published wait ages with its record");
    }
}
