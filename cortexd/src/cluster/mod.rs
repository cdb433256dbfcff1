//! Cluster mode (`[cluster]` in cortex.toml): several `cortex serve` replicas on one etcd v3.
//! Every replica is a full gateway; exactly one, the leader, acts on neurons. It sits between
//! the control plane (whose [`Authority`] it writes) and the gateway (whose queues it publishes
//! as demand); without `[cluster]` none of it runs and no etcd is contacted.
//!
//! - `session.rs`: the election (lease, keep-alive, campaign, stepping down): the only writer of
//!   the authority.
//! - `store.rs`: etcd as the cluster uses it, fenced writes included; `keys.rs`: the key layout.
//! - `demand.rs`: each replica's queues under its own lease, and everyone's for the leader.
//! - `decisions.rs`: the leader's residency clocks and backoff, written fenced, inherited by
//!   the next leader before it acts.
//! - `view.rs`: replicas, heartbeats, the leader, its term, whether etcd answers.
//!
//! What lives where (docs/operations.md): observed state, open requests, the choice among ready
//! copies, admission and metrics stay local to each replica; lifecycle decisions are the
//! leader's. What it publishes fenced by its term is the fleet in force and its decisions: since
//! when each copy is resident (what `min_residency` counts from) and the backoff of failed loads
//! and actions; a successor continues them. Swaps the leader decided and was draining for are
//! not carried over: they wait on requests that ended with it, and the successor decides again
//! from the demand it sees (docs/operations.md).

pub(crate) mod decisions;
pub(crate) mod demand;
pub(crate) mod keys;
pub(crate) mod session;
pub(crate) mod store;
pub(crate) mod usage;
pub(crate) mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::LeaderKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::demand::ClusterDemand;
use crate::cluster::keys::Keys;
use crate::cluster::session::{Prepare, Session};
use crate::cluster::store::{Store, StoreError};
use crate::cluster::view::ViewTask;
use crate::config::ClusterConfig;
use crate::control::authority::Authority;
use crate::control::cluster_status::{ClusterStatus, ReplicaRecord};
use crate::control::decisions::{Decisions, Record};
use crate::control::lastgood::SavedFleet;
use crate::control::poller::{PollerHandle, now_unix_ms};
use crate::control::status::QueueStatus;

/// etcd's smallest lease (a shorter grant comes back as this).
const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

/// `[cluster]`, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoints: Vec<String>,
    pub replica: String,
    /// Whole seconds (etcd's lease unit), at least [`MIN_LEASE_TTL`].
    pub lease_ttl: Duration,
    pub keys: Keys,
}

impl Settings {
    /// Validate `[cluster]`; `listen` names the default replica (host name and API port).
    pub fn from_config(config: &ClusterConfig, listen: SocketAddr) -> Result<Settings, String> {
        if config.etcd.is_empty() {
            return Err(
                "[cluster] etcd: name at least one etcd endpoint, e.g. [\"http://127.0.0.1:2379\"]".into()
            );
        }
        let replica = config.replica.clone().unwrap_or_else(|| format!("{}-{}", host_name(), listen.port()));
        if replica.is_empty() || replica.contains(['/', '\0']) || replica.chars().any(char::is_control) {
            return Err(format!("[cluster] replica: {replica:?} is not a usable name (no `/`, not empty)"));
        }
        if config.lease_ttl < MIN_LEASE_TTL {
            return Err(format!(
                "[cluster] lease_ttl: {:?} is shorter than etcd's minimum lease of {MIN_LEASE_TTL:?}",
                config.lease_ttl
            ));
        }
        let lease_ttl =
            Duration::from_secs(config.lease_ttl.as_secs() + u64::from(config.lease_ttl.subsec_nanos() > 0));
        Ok(Settings { endpoints: config.etcd.clone(), replica, lease_ttl, keys: Keys::new(&config.prefix) })
    }

    /// How long one etcd call may take before the store counts as away: a third of the lease,
    /// so that a leader notices within its lease.
    fn call_timeout(&self) -> Duration {
        (self.lease_ttl / 3).max(Duration::from_millis(500))
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "cortex".to_owned())
}

/// This replica's handle on the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pub settings: Arc<Settings>,
    pub store: Store,
    /// Whether this replica acts on neurons now, and with what term. Written by the session.
    pub authority: watch::Receiver<Authority>,
    /// The cluster as this replica sees it. Written by the view task.
    pub view: watch::Receiver<Arc<ClusterStatus>>,
    /// The lease this replica's keys live under.
    pub lease: watch::Receiver<Option<i64>>,
    leader_key: watch::Receiver<Option<LeaderKey>>,
}

/// Join the cluster: connect to etcd (lazily: it may be away), start the election session and
/// the view. `prepare` runs when this replica is elected, before it acts; then, with
/// `decisions`, the previous leader's record is handed to it. At `shutdown` it hands leadership
/// over; at `released` (once the API has drained) it leaves; the task ends then.
pub async fn start(
    settings: Settings,
    me: ReplicaRecord,
    prepare: Prepare,
    decisions: Option<Decisions>,
    (shutdown, released): (CancellationToken, CancellationToken),
) -> Result<(Cluster, tokio::task::JoinHandle<()>), StoreError> {
    let store = Store::connect(&settings.endpoints, settings.call_timeout()).await?;
    let prepare = match decisions {
        Some(decisions) => decisions::inheriting(prepare, store.clone(), settings.keys.clone(), decisions),
        None => prepare,
    };
    let (authority_sender, authority) =
        watch::channel(Authority::Follower { leader: None, why: "joining the cluster".to_owned() });
    let (lease_sender, lease) = watch::channel(None);
    let (leader_key_sender, leader_key) = watch::channel(None);
    let session = Session {
        store: store.clone(),
        keys: settings.keys.clone(),
        me: me.clone(),
        lease_ttl: settings.lease_ttl,
        prepare,
        authority: authority_sender,
        lease: lease_sender,
        leader_key: leader_key_sender,
    };
    let view = ViewTask {
        store: store.clone(),
        keys: settings.keys.clone(),
        me,
        endpoints: settings.endpoints.clone(),
        lease_ttl: settings.lease_ttl,
        lease: lease.clone(),
        authority: authority.clone(),
    }
    .spawn(released.clone());
    let task = tokio::spawn(session.run(shutdown, released));
    let cluster = Cluster { settings: Arc::new(settings), store, authority, view, lease, leader_key };
    Ok((cluster, task))
}

impl Cluster {
    /// Write `key` fenced by this replica's term: refused (`Ok(false)`) unless it still leads,
    /// and then its mandate is revoked (it steps down).
    pub async fn put_fenced(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        let Some(leader) = self.leader_key.borrow().clone() else { return Ok(false) };
        let written = self.store.put_fenced(&leader, key, value).await?;
        if !written {
            if let Some(mandate) = self.authority.borrow().mandate() {
                tracing::warn!(term = mandate.term, %key, "cluster: a fenced write was refused: the term is over");
                mandate.revoke();
            }
        }
        Ok(written)
    }

    /// Write the leader's decisions fenced by its term (`Ok(false)`: refused, the term is over).
    pub async fn write_decisions(&self, record: &Record) -> Result<bool, StoreError> {
        self.put_fenced(&self.settings.keys.decisions(), record.encode()).await
    }

    /// The decisions the last leader wrote, if any and readable.
    pub async fn read_decisions(&self) -> Result<Option<Record>, StoreError> {
        decisions::read(&self.store, &self.settings.keys).await
    }

    /// While this replica leads, keep its decisions written (fenced), until `shutdown`.
    pub fn publish_decisions(&self, decisions: Decisions, shutdown: CancellationToken) {
        decisions::publish(self.clone(), decisions, shutdown);
    }

    /// Publish this replica's `queues` as its demand, until `shutdown`.
    pub fn publish_demand(
        &self,
        queues: watch::Receiver<Arc<Vec<QueueStatus>>>,
        shutdown: CancellationToken,
    ) {
        let task = demand::publish(
            self.store.clone(),
            self.settings.keys.clone(),
            self.settings.replica.clone(),
            queues,
            self.lease.clone(),
            shutdown,
        );
        tokio::spawn(task);
    }

    /// Share the fleet keys' usage with the other replicas (see `usage.rs`), until `shutdown`.
    pub fn share_usage(&self, ledger: usage::Ledger, shutdown: CancellationToken) {
        usage::share(
            self.store.clone(),
            self.settings.keys.clone(),
            self.settings.replica.clone(),
            ledger,
            shutdown,
        );
    }

    /// The other replicas' demand per model, for this replica's scheduler (it weighs it
    /// while it leads), kept up to date until `shutdown`.
    pub fn others_demand(
        &self,
        shutdown: CancellationToken,
    ) -> watch::Receiver<Arc<BTreeMap<String, QueueStatus>>> {
        demand::watch_others(&self.store, &self.settings.keys, self.settings.replica.clone(), shutdown)
    }

    /// Everyone's demand, kept up to date until `shutdown`.
    pub fn demand(&self, shutdown: CancellationToken) -> watch::Receiver<Arc<ClusterDemand>> {
        demand::watch_all(&self.store, &self.settings.keys, shutdown)
    }
}

/// The last good fleet the leader published, read once at start (a replica whose own fleet
/// directory is invalid serves it).
pub async fn published_fleet(settings: &Settings) -> Result<Option<SavedFleet>, StoreError> {
    let store = Store::connect(&settings.endpoints, settings.call_timeout()).await?;
    let value = store.get(&settings.keys.fleet()).await?;
    Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// The decisions the last leader wrote (read from outside a replica, as a test or a tool does).
pub async fn recorded_decisions(settings: &Settings) -> Result<Option<Record>, StoreError> {
    let store = Store::connect(&settings.endpoints, settings.call_timeout()).await?;
    decisions::read(&store, &settings.keys).await
}

/// While this replica leads, publish each fleet that comes into force (fenced by its term), so
/// that a replica that joins with an invalid fleet directory serves it.
pub fn publish_fleet(
    cluster: Cluster,
    mut saved: watch::Receiver<Option<Arc<SavedFleet>>>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut authority = cluster.authority.clone();
        let mut published: Option<(u64, String)> = None;
        // The embedded fleet never changes: its sender is gone after the first value.
        let mut more = true;
        loop {
            let term = authority.borrow_and_update().mandate().filter(|m| m.holds()).map(|m| m.term);
            let fleet = saved.borrow_and_update().clone();
            if let (Some(term), Some(fleet)) = (term, fleet) {
                let due = published.as_ref().is_none_or(|(t, digest)| *t != term || *digest != fleet.digest);
                let value = serde_json::to_vec(fleet.as_ref()).unwrap_or_default();
                if due && cluster.put_fenced(&cluster.settings.keys.fleet(), value).await.unwrap_or(false) {
                    published = Some((term, fleet.digest.clone()));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = authority.changed() => if changed.is_err() { return },
                changed = saved.changed(), if more => more = changed.is_ok(),
                // A write that failed (etcd away) is tried again.
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
}

/// This replica's record: its name, addresses and version.
pub fn record(replica: &str, api: SocketAddr, operator: SocketAddr) -> ReplicaRecord {
    let now = now_unix_ms();
    ReplicaRecord {
        name: replica.to_owned(),
        api: api.to_string(),
        operator: operator.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_unix_ms: now,
        heartbeat_unix_ms: now,
    }
}

/// What a newly elected leader does before it acts: send its term to every reachable neuron
/// (`POST /fence`), so that none accepts an older leader's call from then on, and look at the
/// neurons again. A neuron that knows a newer term makes this one stale.
pub fn fence_neurons(poller: PollerHandle, timeout: Duration) -> Prepare {
    Arc::new(move |term| {
        let poller = poller.clone();
        Box::pin(async move {
            let observed = poller.observed.borrow().clone();
            let reachable = observed.topology.neurons.iter().filter(|n| n.reachable).map(|n| n.name.clone());
            // A neuron that does not fence is never acted on (and has no `/fence`).
            let calls = reachable
                .filter_map(|name| observed.clients.get(&name).filter(|c| c.fences()).cloned())
                .map(|client| async move { (client.name.clone(), client.fence(term, timeout).await) });
            for (neuron, result) in futures_util::future::join_all(calls).await {
                match result {
                    Ok(_) => {}
                    Err(crate::control::neuron_client::NeuronError::Fenced { term: newer, .. }) => {
                        return Err(format!("neuron {neuron} knows a newer term ({newer} > {term})"));
                    }
                    // Unreachable now: its first lifecycle call carries the term anyway.
                    Err(error) => tracing::warn!(%neuron, %error, term, "cluster: could not fence a neuron"),
                }
            }
            poller.refreshed().await;
            Ok(())
        })
    })
}
