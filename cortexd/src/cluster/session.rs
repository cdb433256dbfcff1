//! One replica's part in the election: a lease kept alive, a campaign under it, and while it
//! leads, a [`Mandate`] of its term. The session is the only writer of the [`Authority`].
//!
//! The cycle: grant a lease → campaign (wait while another leads) → prepare (fence every
//! reachable neuron with the new term, look at them again) → lead until the lease runs out,
//! the mandate is revoked (a neuron said `fenced`, a fenced write was refused) or the daemon
//! stops → step down (resign, revoke the lease) → again. Without etcd it follows, says why, and
//! tries again; nothing acts on neurons then.
//!
//! Invariant: the authority says `Leader` only after the new term was sent to every reachable
//! neuron, and says `Follower` before anything else happens when the lease is lost; a mandate
//! whose lease ran out on this replica's monotonic clock holds nothing, whatever the session's
//! tasks got to run first after a pause.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::keys::Keys;
use crate::cluster::store::{Lease, Store, StoreError};
use crate::control::authority::{Authority, LeaseClock, Mandate};
use crate::control::cluster_status::ReplicaRecord;

/// What a new leader does before it acts: fence the neurons with `term` and refresh the view of
/// them. `Err` means the term is already stale (a neuron knows a newer one): step down.
pub type Prepare = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A replica's election session.
pub struct Session {
    pub store: Store,
    pub keys: Keys,
    pub me: ReplicaRecord,
    pub lease_ttl: Duration,
    pub prepare: Prepare,
    pub authority: watch::Sender<Authority>,
    /// The lease this replica's keys live under; `None` between leases.
    pub lease: watch::Sender<Option<i64>>,
    /// The election key while leading, for fenced writes.
    pub leader_key: watch::Sender<Option<etcd_client::LeaderKey>>,
}

/// How the session waits before it tries etcd again.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Session {
    /// Run until `shutdown`; on the way out it resigns at once, so that another replica leads
    /// without waiting out a lease (a rolling restart), but keeps its lease (and so its demand)
    /// until `released`: the requests still waiting in this replica are loaded for by the next
    /// leader while its API drains. Then it revokes the lease.
    pub async fn run(self, shutdown: CancellationToken, released: CancellationToken) {
        let mut retry = RETRY_MIN;
        let mut stale: Option<i64> = None;
        while !shutdown.is_cancelled() {
            if let Some(id) = stale.take() {
                // A lease left from before etcd went away may have survived its restart: give
                // it up, so that no candidate waits behind our old key.
                if self.store.revoke(id).await.is_err() {
                    stale = Some(id);
                }
            }
            match self.one_lease(&shutdown, &released, &mut stale).await {
                Ok(()) => retry = RETRY_MIN,
                Err(error) => {
                    tracing::warn!(%error, "cluster: etcd is unreachable; not acting on neurons");
                    self.follow(None, format!("etcd is unreachable: {error}"));
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        self.follow(None, "shutting down".to_owned());
    }

    fn follow(&self, leader: Option<String>, why: String) {
        if let Authority::Leader(mandate) = &*self.authority.borrow() {
            mandate.revoke();
        }
        self.authority.send_replace(Authority::Follower { leader, why });
    }

    /// One lease: campaign under it and lead while it holds.
    async fn one_lease(
        &self,
        shutdown: &CancellationToken,
        released: &CancellationToken,
        stale: &mut Option<i64>,
    ) -> Result<(), StoreError> {
        let asked = Instant::now();
        let lease = self.store.grant(self.lease_ttl).await?;
        *stale = Some(lease.id);
        let clock = LeaseClock::new(asked + lease.ttl);
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_alive(self.store.clone(), lease, clock.clone(), lost.clone()));
        let _stop_keeper = AbortOnDrop(keeper);
        self.lease.send_replace(Some(lease.id));
        let value = serde_json::to_vec(&self.me).unwrap_or_default();
        self.store.put_leased(&self.keys.replica(&self.me.name), value.clone(), lease.id).await?;
        self.follow(None, "campaigning: another replica leads, or the election is under way".to_owned());

        let election = self.keys.election();
        let campaign = self.store.campaign(&election, value, lease.id);
        let leader_key = tokio::select! {
            key = campaign => key?,
            () = lost.cancelled() => {
                self.lease.send_replace(None);
                return Ok(());
            }
            () = shutdown.cancelled() => {
                // Withdraw the candidacy (its key is `<election>/<lease id in hex>`).
                let candidate = format!("{election}/{:x}", lease.id);
                if let Err(error) = self.store.delete(&candidate).await {
                    tracing::debug!(%error, "cluster: withdrawing the candidacy failed; the lease will end it");
                }
                self.hand_over(lease.id, None, released, &lost).await;
                *stale = None;
                return Ok(());
            }
        };
        let term = u64::try_from(leader_key.rev()).unwrap_or(0);
        tracing::info!(term, replica = %self.me.name, "cluster: elected leader; fencing the neurons");
        let mandate = Mandate::new(term, clock);
        let prepared = tokio::select! {
            prepared = (self.prepare)(term) => prepared,
            () = lost.cancelled() => Err("the lease ran out while fencing the neurons".to_owned()),
            () = shutdown.cancelled() => Err("shutting down".to_owned()),
        };
        match prepared {
            Ok(()) if mandate.holds() => {
                tracing::info!(term, "cluster: leading");
                self.leader_key.send_replace(Some(leader_key.clone()));
                self.authority.send_replace(Authority::Leader(mandate.clone()));
                tokio::select! {
                    () = lost.cancelled() => tracing::warn!(term, "cluster: the lease ran out; stepping down"),
                    () = mandate.revoked() => tracing::warn!(term, "cluster: the term was lost; stepping down"),
                    () = shutdown.cancelled() => tracing::info!(term, "cluster: shutting down; handing over"),
                }
            }
            Ok(()) => tracing::warn!(term, "cluster: the lease ran out before leading; stepping down"),
            Err(why) => tracing::warn!(term, %why, "cluster: not leading"),
        }
        mandate.revoke();
        self.leader_key.send_replace(None);
        self.follow(None, format!("stepped down from term {term}"));
        if shutdown.is_cancelled() {
            self.hand_over(lease.id, Some(&leader_key), released, &lost).await;
        } else {
            self.give_up(lease.id, Some(&leader_key)).await;
        }
        *stale = None;
        Ok(())
    }

    /// Shutting down: resign now (another replica leads at once), keep the lease (and the
    /// demand under it) until `released` or until it is lost, then give it up.
    async fn hand_over(
        &self,
        lease: i64,
        leader: Option<&etcd_client::LeaderKey>,
        released: &CancellationToken,
        lost: &CancellationToken,
    ) {
        self.follow(None, "shutting down: handed over, draining".to_owned());
        if let Some(leader) = leader
            && let Err(error) = self.store.resign(leader).await
        {
            tracing::debug!(%error, "cluster: resign failed; the lease will run out");
        }
        tokio::select! {
            () = released.cancelled() => {}
            () = lost.cancelled() => {}
        }
        self.give_up(lease, None).await;
    }

    /// Resign (when leading) and revoke the lease, best effort: if etcd does not answer, the
    /// lease runs out by itself.
    async fn give_up(&self, lease: i64, leader: Option<&etcd_client::LeaderKey>) {
        self.lease.send_replace(None);
        if let Some(leader) = leader
            && let Err(error) = self.store.resign(leader).await
        {
            tracing::debug!(%error, "cluster: resign failed; the lease will run out");
        }
        if let Err(error) = self.store.revoke(lease).await {
            tracing::debug!(%error, "cluster: revoking the lease failed; it will run out");
        }
    }
}

/// Aborts the task when dropped (the session's keep-alive ends with its lease).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keep `lease` alive, three keep-alives per TTL, extending `clock` with each answer (from the
/// time it was asked for). Cancels `lost` when etcd says the lease is gone or at the instant the
/// clock runs out without an answer (not at the next keep-alive's timeout).
async fn keep_alive(store: Store, lease: Lease, clock: LeaseClock, lost: CancellationToken) {
    tokio::select! {
        () = renew(store, lease, clock.clone()) => {}
        () = run_out(&clock) => {}
    }
    lost.cancel();
}

/// Resolves when `clock` runs out, following every extension.
async fn run_out(clock: &LeaseClock) {
    while !clock.expired() {
        tokio::time::sleep_until(clock.until().into()).await;
    }
}

/// Sends keep-alives and extends `clock` with each answer; returns when etcd says the lease is
/// gone or the clock ran out.
async fn renew(store: Store, lease: Lease, clock: LeaseClock) {
    let interval = (lease.ttl / 3).max(Duration::from_millis(200));
    'stream: loop {
        if clock.expired() {
            break;
        }
        let Ok(Ok((mut keeper, mut stream))) =
            tokio::time::timeout(interval, store.keep_alive(lease.id)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let sent = Instant::now();
            let answer = tokio::time::timeout(interval, async {
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {
                    clock.extend(sent + Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(0)));
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(lease = lease.id, "cluster: etcd says the lease expired");
                    break 'stream;
                }
                _ => continue 'stream,
            }
            if clock.expired() {
                break 'stream;
            }
            let next = (sent + interval).min(clock.until());
            tokio::time::sleep_until(next.into()).await;
        }
    }
}
