//! Key usage shared by the replicas: each publishes what every fleet key used through it this
//! UTC day and month (its own store's count), once a second when it changed, under a key that
//! outlives it (a replica that is down still counts against the budgets); each reads everyone
//! else's and holds its keys to the sum. The lag is bounded by the publishing interval and
//! etcd's watch; docs/gateway.md ("Budgets in a cluster") gives the overshoot it allows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::keys::Keys;
use crate::cluster::store::{Entries, Store};
use crate::control::poller::now_unix_ms;
use crate::usage::{Elsewhere, Window};

/// How often a replica publishes its keys' usage (when it changed): the bound on the lag.
const EVERY: Duration = Duration::from_secs(1);

/// One replica's published usage: key name → its day and month windows.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ReplicaUsage {
    pub replica: String,
    pub keys: BTreeMap<String, Elsewhere>,
}

/// What this replica's keys used (`own(now)`), and where the others' goes (`set`): the
/// gateway's keys, seen from the cluster (which sits below the gateway).
pub struct Ledger {
    pub own: Box<dyn Fn(u64) -> HashMap<String, Elsewhere> + Send + Sync>,
    pub set: Box<dyn Fn(HashMap<String, Elsewhere>) + Send + Sync>,
}

/// Publish this replica's usage every [`EVERY`] (when it changed) and follow the others',
/// until `shutdown`.
pub fn share(store: Store, keys: Keys, replica: String, ledger: Ledger, shutdown: CancellationToken) {
    let ledger = Arc::new(ledger);
    let mut entries = store.watch_prefix(keys.usages(), shutdown.clone());
    let follower = ledger.clone();
    let me = replica.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let others = others(&entries.borrow_and_update(), &me);
            (follower.set)(others);
            tokio::select! {
                () = stop.cancelled() => return,
                changed = entries.changed() => if changed.is_err() { return },
            }
        }
    });
    tokio::spawn(async move {
        let key = keys.usage(&replica);
        let mut ticks = tokio::time::interval(EVERY);
        let mut written: Option<ReplicaUsage> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let reading = ledger.clone();
            let Ok(own) = tokio::task::spawn_blocking(move || (reading.own)(now_unix_ms())).await else {
                continue;
            };
            let usage = ReplicaUsage { replica: replica.clone(), keys: own.into_iter().collect() };
            if written.as_ref() == Some(&usage) {
                continue;
            }
            let value = serde_json::to_vec(&usage).unwrap_or_default();
            match store.put(&key, value).await {
                Ok(()) => written = Some(usage),
                Err(error) => tracing::debug!(%error, "cluster: key usage not published; trying again"),
            }
        }
    });
}

/// Per key, what every replica but `except` used, summed per window (a record that does not
/// parse is left out; windows of different days are not added up).
pub fn others(entries: &Entries, except: &str) -> HashMap<String, Elsewhere> {
    let mut total: HashMap<String, Elsewhere> = HashMap::new();
    let published = entries.values().filter_map(|value| serde_json::from_slice::<ReplicaUsage>(value).ok());
    for usage in published.filter(|u| u.replica != except) {
        for (name, theirs) in usage.keys {
            let sum = total.entry(name).or_default();
            add(&mut sum.day, theirs.day);
            add(&mut sum.month, theirs.month);
        }
    }
    total
}

/// Add `theirs` to `sum`: the later window wins, the same window adds up.
fn add(sum: &mut Window, theirs: Window) {
    if theirs.index > sum.index {
        *sum = theirs;
    } else if theirs.index == sum.index {
        sum.used = sum.used.saturating_add(theirs.used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(replica: &str, keys: &[(&str, u32, u64, u32, u64)]) -> Vec<u8> {
        let keys = keys
            .iter()
            .map(|&(name, day, used_day, month, used_month)| {
                let windows = Elsewhere {
                    day: Window { index: day, used: used_day },
                    month: Window { index: month, used: used_month },
                };
                (name.to_owned(), windows)
            })
            .collect();
        serde_json::to_vec(&ReplicaUsage { replica: replica.to_owned(), keys }).expect("json")
    }

    #[test]
    fn the_other_replicas_use_adds_up_per_key_and_window() {
        let mut entries = Entries::new();
        entries.insert("gw-1".into(), published("gw-1", &[("alice", 10, 500, 3, 900)]));
        entries.insert("gw-2".into(), published("gw-2", &[("alice", 10, 200, 3, 200), ("bob", 10, 7, 3, 7)]));
        entries.insert("gw-3".into(), published("gw-3", &[("alice", 9, 10_000, 3, 10_000)]));
        entries.insert("broken".into(), b"{".to_vec());
        let others = others(&entries, "gw-1");
        let alice = others["alice"];
        assert_eq!(alice.day, Window { index: 10, used: 200 }, "gw-3's yesterday does not add to today");
        assert_eq!(alice.month, Window { index: 3, used: 10_200 });
        assert_eq!(others["bob"].day.used, 7);
    }
}
