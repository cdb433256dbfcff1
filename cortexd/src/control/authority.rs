//! Who may act on neurons. A standalone daemon always may, without a term. In a cluster only
//! the leader may, with a [`Mandate`]: the term of its election (sent with every lifecycle call,
//! so neurons fence older leaders) and how long its lease is known to hold. The cluster module
//! writes the [`Authority`]; the reconciler, the router's loads and the admin API read it.
//!
//! Invariant: a lifecycle call is sent with a mandate only while the mandate holds (its lease
//! has not run out on this replica's monotonic clock and it was not revoked), so a leader that
//! was paused past its lease performs nothing when it wakes, before any neuron has to refuse it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// Until when a lease is known to hold: the send time of the last keep-alive etcd answered,
/// plus the TTL it answered with. Shared by the keep-alive task (which extends it) and every
/// mandate held under the lease.
#[derive(Clone, Debug)]
pub struct LeaseClock(Arc<Mutex<Instant>>);

impl LeaseClock {
    pub fn new(until: Instant) -> LeaseClock {
        LeaseClock(Arc::new(Mutex::new(until)))
    }

    pub fn until(&self) -> Instant {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A keep-alive was answered: the lease holds until `until` (never shortened).
    pub fn extend(&self, until: Instant) {
        let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *current = (*current).max(until);
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.until()
    }
}

/// The right to perform lifecycle calls as the cluster's leader of `term`.
#[derive(Clone, Debug)]
pub struct Mandate {
    /// The create revision of the leader key in etcd: strictly increasing across leaders.
    pub term: u64,
    lease: LeaseClock,
    /// Cancelled when the replica steps down, or when anything learns that it lost the term
    /// (a neuron answered `fenced`, a fenced write was refused).
    revoked: CancellationToken,
}

impl Mandate {
    pub fn new(term: u64, lease: LeaseClock) -> Mandate {
        Mandate { term, lease, revoked: CancellationToken::new() }
    }

    /// Whether calls may be sent under this mandate now.
    pub fn holds(&self) -> bool {
        !self.revoked.is_cancelled() && !self.lease.expired()
    }

    /// The term is lost (or given up): nothing more is sent under it.
    pub fn revoke(&self) {
        self.revoked.cancel();
    }

    /// Resolves once the mandate is revoked.
    pub async fn revoked(&self) {
        self.revoked.cancelled().await;
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.is_cancelled()
    }
}

/// Who acts on the neurons, as this replica sees it.
#[derive(Clone, Debug)]
pub enum Authority {
    /// No cluster: this daemon acts alone, without a term.
    Standalone,
    /// This replica leads the cluster.
    Leader(Mandate),
    /// Another replica acts, or nobody while an election runs or etcd is away.
    Follower {
        /// The leader's replica name, when one is known.
        leader: Option<String>,
        /// Why this replica does not act, for the status.
        why: String,
    },
}

impl Authority {
    /// Whether this replica performs lifecycle actions now.
    pub fn acts(&self) -> bool {
        match self {
            Authority::Standalone => true,
            Authority::Leader(mandate) => mandate.holds(),
            Authority::Follower { .. } => false,
        }
    }

    /// The mandate to send with lifecycle calls (`None` standalone).
    pub fn mandate(&self) -> Option<&Mandate> {
        match self {
            Authority::Leader(mandate) => Some(mandate),
            Authority::Standalone | Authority::Follower { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_mandate_holds_until_its_lease_runs_out_or_it_is_revoked() {
        let now = Instant::now();
        let lease = LeaseClock::new(now + Duration::from_secs(60));
        let mandate = Mandate::new(7, lease.clone());
        assert!(mandate.holds() && Authority::Leader(mandate.clone()).acts());
        lease.extend(now); // an older answer never shortens it
        assert!(mandate.holds());
        let clone = mandate.clone();
        clone.revoke();
        assert!(!mandate.holds(), "revoked through any clone");
        let expired = Mandate::new(8, LeaseClock::new(now));
        assert!(!expired.holds(), "a lease that ran out (a paused leader waking up) holds nothing");
        let follower = Authority::Follower { leader: Some("gw-2".into()), why: "gw-2 leads".into() };
        assert!(!follower.acts() && follower.mandate().is_none());
        assert!(Authority::Standalone.acts() && Authority::Standalone.mandate().is_none());
    }
}
