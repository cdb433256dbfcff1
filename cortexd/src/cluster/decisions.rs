//! The leader's decisions in etcd (`<prefix>/leader/decisions`): the residency clocks and the
//! backoff its scheduler and reconciler keep ([`Record`]), written by the leader only in
//! transactions fenced by its term, and read by a replica when it wins the election, before it
//! acts, so that its clocks and backoff continue where the previous leader's stopped.
//!
//! Writes are coalesced: at most one per `MIN_GAP`, only when the record changed (a copy became
//! ready or went, a load or an action failed or succeeded), never per request. A refused write
//! means the term is over: the mandate is revoked and nothing is written again until this
//! replica wins a new term.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::cluster::keys::Keys;
use crate::cluster::session::Prepare;
use crate::cluster::store::{Store, StoreError};
use crate::control::decisions::{Decisions, Record};

/// The shortest time between two writes of the record.
const MIN_GAP: Duration = Duration::from_millis(500);

/// How long a write that failed (etcd away) waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The record in etcd, if any and usable (one of another format, or unreadable, is left aside:
/// the successor then starts from what the neurons report, as without one).
pub async fn read(store: &Store, keys: &Keys) -> Result<Option<Record>, StoreError> {
    let Some(bytes) = store.get(&keys.decisions()).await? else { return Ok(None) };
    match Record::decode(&bytes) {
        Ok(record) => Ok(Some(record)),
        Err(why) => {
            tracing::warn!(%why, "cluster: the previous leader's decisions cannot be read; starting from the neurons' state");
            Ok(None)
        }
    }
}

/// `first` (fencing the neurons), then the previous leader's record handed to `decisions` for
/// the new term. A record written by a newer term makes this one stale; etcd not answering
/// makes it not lead now (it tries again).
pub fn inheriting(first: Prepare, store: Store, keys: Keys, decisions: Decisions) -> Prepare {
    Arc::new(move |term| {
        let (first, store, keys, decisions) = (first.clone(), store.clone(), keys.clone(), decisions.clone());
        Box::pin(async move {
            first(term).await?;
            let record = read(&store, &keys)
                .await
                .map_err(|e| format!("cannot read the previous leader's decisions: {e}"))?;
            if let Some(record) = record {
                if record.term > term {
                    return Err(format!(
                        "the decisions were written by a newer term ({} > {term})",
                        record.term
                    ));
                }
                tracing::info!(
                    term,
                    from = record.term,
                    "cluster: inheriting the previous leader's decisions"
                );
                decisions.inherit(term, record);
            }
            Ok(())
        })
    })
}

/// While this replica leads, write its decisions, fenced by its term, whenever they change
/// (coalesced), until `shutdown`.
pub fn publish(cluster: Cluster, decisions: Decisions, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut authority = cluster.authority.clone();
        let mut changes = decisions.changes();
        let mut written: Option<Record> = None;
        loop {
            let term = authority.borrow_and_update().mandate().filter(|m| m.holds()).map(|m| m.term);
            changes.borrow_and_update();
            let mut retry = false;
            if let Some(term) = term {
                let record = decisions.record(term);
                if written.as_ref() != Some(&record) {
                    match cluster.write_decisions(&record).await {
                        Ok(true) => written = Some(record),
                        // The term is over (the mandate is revoked): nothing more under it.
                        Ok(false) => {}
                        Err(error) => {
                            tracing::debug!(%error, term, "cluster: writing the decisions failed; trying again");
                            retry = true;
                        }
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(MIN_GAP) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = authority.changed() => if changed.is_err() { return },
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY), if retry => {}
            }
        }
    });
}
