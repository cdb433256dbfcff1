//! etcd, as the cluster uses it: leases and their keep-alives, the election (campaign, leader,
//! resign), keys under a lease, prefix reads and watches, and writes fenced by the leader key's
//! create revision (the term). Every call but the campaign is bounded by a timeout, so that a
//! store that went away is noticed within one lease, never waited on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaderKey, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, ResignOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
}

/// A handle on etcd; cheap to clone (one gRPC channel underneath).
#[derive(Clone)]
pub struct Store {
    client: Client,
    /// The bound of every call but the campaign.
    timeout: Duration,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
}

/// The contents of a prefix: the part of each key after the prefix → its value.
pub type Entries = BTreeMap<String, Vec<u8>>;

impl Store {
    /// A client for `endpoints`. It connects lazily: a replica starts while etcd is away and
    /// finds it when it comes back.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Store, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(timeout, timeout)
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Store { client, timeout })
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// A lease of `ttl` (etcd rounds up to whole seconds, at least its minimum).
    pub async fn grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut client = self.client.clone();
        let granted = self.bounded(client.lease_grant(seconds, None)).await?;
        Ok(Lease { id: granted.id(), ttl: Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0)) })
    }

    /// A keep-alive stream for lease `id`: send on the keeper, read the answers on the stream.
    pub async fn keep_alive(&self, id: i64) -> Result<(LeaseKeeper, LeaseKeepAliveStream), StoreError> {
        let mut client = self.client.clone();
        self.bounded(client.lease_keep_alive(id)).await
    }

    /// Give the lease up: every key under it goes at once.
    pub async fn revoke(&self, id: i64) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.bounded(client.lease_revoke(id)).await.map(drop)
    }

    /// Put `key` under `lease` (it goes when the lease does).
    pub async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.bounded(client.put(key, value, Some(PutOptions::new().with_lease(lease)))).await.map(drop)
    }

    /// Put `key` without a lease (it stays when its writer goes).
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.bounded(client.put(key, value, None)).await.map(drop)
    }

    /// The value of `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut client = self.client.clone();
        let mut response = self.bounded(client.get(key, None)).await?;
        Ok(response.take_kvs().into_iter().next().map(|kv| kv.into_key_value().1))
    }

    /// Delete `key`.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.bounded(client.delete(key, None)).await.map(drop)
    }

    /// Every key under `prefix` and the store's revision when read.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Entries, i64), StoreError> {
        let mut client = self.client.clone();
        let mut response = self.bounded(client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let entries = response
            .take_kvs()
            .into_iter()
            .map(|kv| {
                let (key, value) = kv.into_key_value();
                let key = String::from_utf8_lossy(&key);
                (key.strip_prefix(prefix).unwrap_or(&key).to_owned(), value)
            })
            .collect();
        Ok((entries, revision))
    }

    /// Campaign in `election` with `value` under `lease`: resolves once this candidate leads
    /// (it waits as long as an older candidate's key exists). Not bounded by the timeout.
    pub async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<LeaderKey, StoreError> {
        let mut client = self.client.clone();
        let mut response = client.campaign(election, value, lease).await?;
        response.take_leader().ok_or_else(|| {
            StoreError::Etcd(etcd_client::Error::InvalidArgs("the campaign answered no leader key".into()))
        })
    }

    /// The current leader of `election`: its value and its term (the key's create revision).
    pub async fn leader(&self, election: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let mut client = self.client.clone();
        match self.bounded(client.leader(election)).await {
            Ok(mut response) => Ok(response.take_kv().map(|kv| {
                let term = u64::try_from(kv.create_revision()).unwrap_or(0);
                (kv.into_key_value().1, term)
            })),
            // etcd answers "election: no leader" as an error.
            Err(StoreError::Etcd(error)) if error.to_string().contains("no leader") => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Step down: delete the leader key, so that the next candidate leads at once.
    pub async fn resign(&self, leader: &LeaderKey) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let options = ResignOptions::new().with_leader(leader.clone());
        self.bounded(client.resign(Some(options))).await.map(drop)
    }

    /// Put `key` only while `leader` still holds the election with its term: the write of a
    /// leader that lost its term (paused, cut off) is refused. `Ok(false)` when refused.
    pub async fn put_fenced(
        &self,
        leader: &LeaderKey,
        key: &str,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(leader.key(), CompareOp::Equal, leader.rev())])
            .and_then([TxnOp::put(key, value, None)]);
        let mut client = self.client.clone();
        Ok(self.bounded(client.txn(txn)).await?.succeeded())
    }

    /// Keep a channel up to date with the entries under `prefix` (read, then watched; read
    /// again after any error) until `shutdown`.
    pub fn watch_prefix(&self, prefix: String, shutdown: CancellationToken) -> watch::Receiver<Arc<Entries>> {
        let (sender, receiver) = watch::channel(Arc::new(Entries::new()));
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = store.follow(&prefix, &sender) => {
                        if let Err(error) = result {
                            tracing::debug!(%prefix, %error, "watch ended; reading again");
                        }
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
        receiver
    }

    async fn follow(&self, prefix: &str, sender: &watch::Sender<Arc<Entries>>) -> Result<(), StoreError> {
        let (mut entries, revision) = self.get_prefix(prefix).await?;
        sender.send_replace(Arc::new(entries.clone()));
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream = self.bounded(client.watch(prefix, Some(options))).await?;
        while let Some(response) = stream.message().await? {
            if response.canceled() {
                return Ok(());
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let name = key.strip_prefix(prefix).unwrap_or(&key).to_owned();
                match event.event_type() {
                    EventType::Put => entries.insert(name, kv.value().to_vec()),
                    EventType::Delete => entries.remove(&name),
                };
            }
            sender.send_replace(Arc::new(entries.clone()));
        }
        Ok(())
    }
}
