//! What every replica shows of the cluster (`cortex status`, the admin API, the fleet page):
//! the replicas with their addresses and heartbeats, the leader and its term, and whether etcd
//! answers. One task keeps it: it refreshes this replica's own record under its lease (the
//! heartbeat) and reads the others' and the election's, every half lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::keys::Keys;
use crate::cluster::store::Store;
use crate::control::authority::Authority;
use crate::control::cluster_status::{ClusterStatus, EtcdStatus, LeaderInfo, ReplicaRecord, Role};
use crate::control::poller::now_unix_ms;

/// What the view task needs.
pub struct ViewTask {
    pub store: Store,
    pub keys: Keys,
    pub me: ReplicaRecord,
    pub endpoints: Vec<String>,
    pub lease_ttl: Duration,
    /// The lease this replica's keys live under (`None` while it has none).
    pub lease: watch::Receiver<Option<i64>>,
    pub authority: watch::Receiver<Authority>,
}

impl ViewTask {
    /// Refresh the heartbeat and the view every half lease (and at once when the lease or the
    /// authority changes) until `shutdown`.
    pub fn spawn(mut self, shutdown: CancellationToken) -> watch::Receiver<Arc<ClusterStatus>> {
        let (sender, receiver) = watch::channel(Arc::new(self.initial()));
        tokio::spawn(async move {
            let period = (self.lease_ttl / 2).max(Duration::from_millis(500));
            loop {
                let view = self.refresh().await;
                sender.send_replace(Arc::new(view));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                    changed = self.lease.changed() => if changed.is_err() { return },
                    changed = self.authority.changed() => if changed.is_err() { return },
                }
            }
        });
        receiver
    }

    fn initial(&self) -> ClusterStatus {
        ClusterStatus {
            replica: self.me.name.clone(),
            lease_ttl_ms: u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            etcd: EtcdStatus { endpoints: self.endpoints.clone(), ..EtcdStatus::default() },
            ..ClusterStatus::default()
        }
    }

    async fn refresh(&mut self) -> ClusterStatus {
        let mut view = self.initial();
        let authority = self.authority.borrow_and_update().clone();
        (view.role, view.follower_because) = match &authority {
            Authority::Leader(mandate) if mandate.holds() => (Role::Leader, None),
            Authority::Leader(_) => (Role::Follower, Some("its lease ran out; stepping down".to_owned())),
            Authority::Follower { why, .. } => (Role::Follower, Some(why.clone())),
            Authority::Standalone => (Role::Follower, Some("standalone".to_owned())),
        };
        let lease = *self.lease.borrow_and_update();
        let read = async {
            if let Some(lease) = lease {
                self.me.heartbeat_unix_ms = now_unix_ms();
                let record = serde_json::to_vec(&self.me).unwrap_or_default();
                self.store.put_leased(&self.keys.replica(&self.me.name), record, lease).await?;
            }
            let (records, _) = self.store.get_prefix(&self.keys.replicas()).await?;
            let leader = self.store.leader(&self.keys.election()).await?;
            Ok::<_, crate::cluster::store::StoreError>((records, leader))
        };
        view.etcd.checked_unix_ms = now_unix_ms();
        match read.await {
            Ok((records, leader)) => {
                view.etcd.reachable = true;
                view.replicas =
                    records.values().filter_map(|value| serde_json::from_slice(value).ok()).collect();
                view.leader = leader.and_then(|(value, term)| {
                    let record: ReplicaRecord = serde_json::from_slice(&value).ok()?;
                    Some(LeaderInfo { replica: record.name, api: record.api, term })
                });
            }
            Err(error) => view.etcd.error = Some(error.to_string()),
        }
        view
    }
}
