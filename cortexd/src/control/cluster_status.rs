//! The cluster part of the status document (cluster mode only): replicas with their addresses
//! and heartbeats, the leader and its term, whether etcd answers; its condition and its lines in
//! `cortex status`. Plain data, so that the CLI reads it without the cluster module.

/// One replica as it describes itself (its record, and its value in the election).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaRecord {
    pub name: String,
    /// Where its inference API listens (`host:port`).
    pub api: String,
    /// Where its operator listener (metrics, fleet page) listens.
    pub operator: String,
    pub version: String,
    pub started_unix_ms: u64,
    /// When it last refreshed this record.
    pub heartbeat_unix_ms: u64,
}

/// The leader as etcd's election names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaderInfo {
    pub replica: String,
    pub api: String,
    /// The create revision of its election key: what neurons fence with.
    pub term: u64,
}

/// Whether etcd answers, as this replica last found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtcdStatus {
    pub endpoints: Vec<String>,
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub checked_unix_ms: u64,
}

/// This replica's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    #[default]
    Follower,
}

/// The cluster as one replica sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    /// This replica's name.
    pub replica: String,
    pub role: Role,
    /// Why this replica does not act, when it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follower_because: Option<String>,
    pub leader: Option<LeaderInfo>,
    pub lease_ttl_ms: u64,
    pub etcd: EtcdStatus,
    /// Every replica with a live record, by name.
    pub replicas: Vec<ReplicaRecord>,
}

/// The `cortex status` lines of the cluster.
pub fn render(view: &ClusterStatus, now_unix_ms: u64) -> String {
    let mut out = String::new();
    let role = match view.role {
        Role::Leader => "leader".to_owned(),
        Role::Follower => format!("follower ({})", view.follower_because.as_deref().unwrap_or("")),
    };
    let leader = view
        .leader
        .as_ref()
        .map_or_else(|| "none".to_owned(), |l| format!("{} at {} (term {})", l.replica, l.api, l.term));
    let etcd = if view.etcd.reachable {
        "reachable".to_owned()
    } else {
        format!("UNREACHABLE: {}", view.etcd.error.as_deref().unwrap_or("no answer yet"))
    };
    out.push_str(&format!("Cluster: replica {} is {role}\n", view.replica));
    out.push_str(&format!("Leader:  {leader}\n"));
    out.push_str(&format!("etcd:    {} ({etcd})\n", view.etcd.endpoints.join(", ")));
    out.push_str("\nREPLICA          API                    HEARTBEAT\n");
    for replica in &view.replicas {
        let age = now_unix_ms.saturating_sub(replica.heartbeat_unix_ms) as f64 / 1000.0;
        let leads = view.leader.as_ref().is_some_and(|l| l.replica == replica.name);
        let name = if leads { format!("{} *", replica.name) } else { replica.name.clone() };
        out.push_str(&format!("{name:<16} {:<22} {age:.1}s ago\n", replica.api));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::leader_condition as condition;

    #[test]
    fn the_cluster_renders_its_leader_replicas_and_etcd() {
        let replica = |name: &str, beat: u64| ReplicaRecord {
            name: name.to_owned(),
            api: format!("10.0.0.1:{}", 31313),
            heartbeat_unix_ms: beat,
            ..ReplicaRecord::default()
        };
        let mut view = ClusterStatus {
            replica: "gw-2".to_owned(),
            role: Role::Follower,
            follower_because: Some("gw-1 leads".to_owned()),
            leader: Some(LeaderInfo {
                replica: "gw-1".to_owned(),
                api: "10.0.0.1:31313".to_owned(),
                term: 42,
            }),
            lease_ttl_ms: 3000,
            etcd: EtcdStatus {
                endpoints: vec!["http://10.0.0.9:2379".to_owned()],
                reachable: true,
                error: None,
                checked_unix_ms: 0,
            },
            replicas: vec![replica("gw-1", 9_000), replica("gw-2", 9_500)],
        };
        expect_test::expect![[r#"
            Cluster: replica gw-2 is follower (gw-1 leads)
            Leader:  gw-1 at 10.0.0.1:31313 (term 42)
            etcd:    http://10.0.0.9:2379 (reachable)

            REPLICA          API                    HEARTBEAT
            gw-1 *           10.0.0.1:31313         1.0s ago
            gw-2             10.0.0.1:31313         0.5s ago
        "#]]
        .assert_eq(&render(&view, 10_000));
        assert!(condition(&view).ok);
        view.etcd.reachable = false;
        view.etcd.error = Some("connection refused".to_owned());
        let condition = condition(&view);
        assert_eq!((condition.ok, condition.reason.as_str()), (false, "EtcdUnreachable"));
        assert!(condition.message.contains("connection refused"), "{}", condition.message);
        use crate::control::status::fencing_condition;
        assert!(fencing_condition(&[]).ok);
        let unfenced = fencing_condition(&["old-1".to_owned()]);
        assert_eq!((unfenced.ok, unfenced.reason.as_str()), (false, "NotFencing"));
        assert!(unfenced.message.contains("does not act on old-1"), "{}", unfenced.message);
    }
}
