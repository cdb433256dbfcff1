//! The cluster's keys in etcd, all under the configured prefix (docs/operations.md lists them).

/// Key names for one cluster (one prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` without a trailing slash (`/cortex` and `/cortex/` are the same cluster).
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.trim_end_matches('/').to_owned() }
    }

    /// The election's name: candidates hold `<election>/<lease id>`; the oldest leads.
    pub fn election(&self) -> String {
        format!("{}/election", self.prefix)
    }

    /// Under which every replica keeps its record (address, heartbeat), under its own lease.
    pub fn replicas(&self) -> String {
        format!("{}/replicas/", self.prefix)
    }

    pub fn replica(&self, name: &str) -> String {
        format!("{}{name}", self.replicas())
    }

    /// Under which every replica publishes its demand (queues), under its own lease.
    pub fn demands(&self) -> String {
        format!("{}/demand/", self.prefix)
    }

    pub fn demand(&self, replica: &str) -> String {
        format!("{}{replica}", self.demands())
    }

    /// Under which every replica publishes what each fleet key used through it this day and
    /// month (not leased: a replica that is down still counts against the budgets).
    pub fn usages(&self) -> String {
        format!("{}/usage/", self.prefix)
    }

    pub fn usage(&self, replica: &str) -> String {
        format!("{}{replica}", self.usages())
    }

    /// The last good fleet the leader applied (its files), written fenced.
    pub fn fleet(&self) -> String {
        format!("{}/leader/fleet", self.prefix)
    }

    /// The leader's decisions a successor continues (residency clocks, backoff), written fenced.
    pub fn decisions(&self) -> String {
        format!("{}/leader/decisions", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let keys = Keys::new("/cortex/");
        assert_eq!(keys.election(), "/cortex/election");
        assert_eq!(keys.replica("gw-1"), "/cortex/replicas/gw-1");
        assert_eq!(keys.demand("gw-1"), "/cortex/demand/gw-1");
        assert_eq!(keys.fleet(), "/cortex/leader/fleet");
        assert_eq!(keys.decisions(), "/cortex/leader/decisions");
        assert_ne!(Keys::new("/a").demands(), Keys::new("/b").demands(), "fleets sharing an etcd");
    }
}
