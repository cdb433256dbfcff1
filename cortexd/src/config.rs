//! `cortex.toml`: the daemon's own settings (listen addresses, keys, limits, timings). The
//! desired state of the fleet is not here: it lives in the fleet directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plans::duration;

/// Daemon settings. Every field has a default, so an absent file means the defaults.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the inference API listens.
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served.
    pub metrics_listen: SocketAddr,
    /// Client API keys accepted by the inference API; empty means no key is required.
    pub api_keys: Vec<String>,
    /// A file with one client API key per line (blank lines and `#` comments ignored).
    pub api_keys_file: Option<PathBuf>,
    /// The key for the admin API; without one the admin API is disabled.
    pub admin_key: Option<String>,
    /// The per-key usage store (a redb file); unset: `usage.redb` in `state_dir`.
    pub usage_store: Option<PathBuf>,
    /// The bearer token cortex presents to neurons.
    pub neuron_token: Option<String>,
    /// A file holding that token (its first line).
    pub neuron_token_file: Option<PathBuf>,
    pub gateway: GatewayConfig,
    /// The client-facing listeners' connection bound and timeouts (inference API and operator
    /// pages).
    pub listener: cortex_listener::Limits,
    pub poll: PollConfig,
    pub reconcile: ReconcileSettings,
    /// Where cortex keeps what it needs across restarts (the last good fleet); default
    /// `$STATE_DIRECTORY` (systemd), else `$XDG_STATE_HOME/cortex`, else `~/.local/state/cortex`.
    pub state_dir: Option<PathBuf>,
    /// `[cluster]`: run as one replica of a highly available cluster on etcd; absent, cortex is
    /// a standalone daemon and uses no etcd at all.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]` (docs/operations.md, "Running several replicas").
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd v3 client endpoints, e.g. `["http://10.0.0.5:2379"]`.
    pub etcd: Vec<String>,
    /// This replica's name, unique in the cluster; default: the host name and the API port.
    #[serde(default)]
    pub replica: Option<String>,
    /// How long a dead leader holds the cluster: a new one acts within about this long.
    #[serde(with = "duration", default = "ClusterConfig::default_lease_ttl")]
    pub lease_ttl: Duration,
    /// Every key cortex writes starts with this, so that several fleets can share one etcd.
    #[serde(default = "ClusterConfig::default_prefix")]
    pub prefix: String,
}

impl ClusterConfig {
    fn default_lease_ttl() -> Duration {
        Duration::from_secs(3)
    }

    fn default_prefix() -> String {
        "/cortex".to_owned()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 31313)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 31314)),
            api_keys: Vec::new(),
            api_keys_file: None,
            admin_key: None,
            usage_store: None,
            neuron_token: None,
            neuron_token_file: None,
            gateway: GatewayConfig::default(),
            listener: cortex_listener::Limits::default(),
            poll: PollConfig::default(),
            reconcile: ReconcileSettings::default(),
            state_dir: None,
            cluster: None,
        }
    }
}

/// Limits of the inference API.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Largest request body accepted (bytes); larger ones get 413.
    pub max_body_bytes: usize,
    /// How many requests may wait for one model (the default of the fleet's `queue_length`);
    /// past that, 503 with Retry-After.
    pub max_waiting_per_model: usize,
    /// How long a request may wait in its model's queue before 503 (the default of the fleet's
    /// `queue_timeout`); also how long a load may take to become ready.
    #[serde(with = "duration")]
    pub max_wait: Duration,
    /// Interval of SSE comment keep-alives sent to streaming requests that wait.
    #[serde(with = "duration")]
    pub keepalive_interval: Duration,
    /// How long cortex waits for a neuron to answer a lifecycle call.
    #[serde(with = "duration")]
    pub neuron_timeout: Duration,
    /// Inference requests in flight at once (streams included); past that, new ones get 503
    /// with Retry-After before their body is read, so a sustained overload is shed, not buffered.
    pub max_in_flight: usize,
    /// Event-loop delay past which new inference requests get 503 with Retry-After before their
    /// body is read (CPU saturation: every request already waits that long); `0s` never sheds.
    #[serde(with = "duration")]
    pub overload_delay: Duration,
    /// How contended neurons swap models: `elevator` (the schedule of docs/gateway.md) or
    /// `arrival` (swap on demand in arrival order, for comparison).
    pub swap_schedule: SwapSchedule,
    /// How long a neuron may take to begin its answer to an inference request (a non-streaming
    /// answer begins only once it is whole).
    #[serde(with = "duration")]
    pub upstream_head_timeout: Duration,
    /// The longest a neuron may leave an answer's body without a byte (a stream is silent while
    /// a long prompt is processed).
    #[serde(with = "duration")]
    pub upstream_read_timeout: Duration,
    /// How many recent requests' timelines the daemon keeps for `GET /admin/requests` and the
    /// fleet page (`0` keeps none); each takes at most a few KiB (docs/operations.md).
    pub request_timelines: usize,
}

/// `[gateway] swap_schedule`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwapSchedule {
    #[default]
    Elevator,
    Arrival,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 32 * 1024 * 1024,
            max_waiting_per_model: 256,
            max_wait: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(5),
            neuron_timeout: Duration::from_secs(10),
            max_in_flight: 16_384,
            overload_delay: Duration::from_millis(50),
            swap_schedule: SwapSchedule::Elevator,
            upstream_head_timeout: Duration::from_secs(600),
            upstream_read_timeout: Duration::from_secs(600),
            request_timelines: 2_000,
        }
    }
}

/// How the neurons are watched.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Health and models are fetched this often.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// A neuron is unreachable after this many consecutive failed polls.
    pub unreachable_after: u32,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig { interval: Duration::from_secs(2), unreachable_after: 3 }
    }
}

/// How the daemon reconciles (whether it acts at all is the fleet's `policy.reconcile`).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// A pass runs at least this often, even when nothing triggers one.
    #[serde(with = "duration")]
    pub resync: Duration,
    /// How many neurons are acted on at once.
    pub parallelism: usize,
    /// Backoff after a failed action on a (model, neuron): doubles from `backoff_base` up to `backoff_max`.
    #[serde(with = "duration")]
    pub backoff_base: Duration,
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// How long a load may take to become ready.
    #[serde(with = "duration")]
    pub load_timeout: Duration,
    /// Apply a fleet that drops every neuron or every model (or a vanished fleet directory)
    /// instead of refusing it as a destructive change; `cortex serve --allow-destroy-all`.
    pub allow_destroy_all: bool,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            resync: Duration::from_secs(30),
            parallelism: 4,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            load_timeout: Duration::from_secs(600),
            allow_destroy_all: false,
        }
    }
}

impl Config {
    /// Read `path`; errors name the file and, for TOML mistakes, the line and column.
    /// The given file, or the defaults when there is none.
    pub fn load_or_default(path: Option<&Path>) -> anyhow::Result<Config> {
        path.map_or_else(|| Ok(Config::default()), Config::load)
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// The client keys from `api_keys` and `api_keys_file`.
    pub fn client_keys(&self) -> anyhow::Result<Vec<String>> {
        let mut keys = self.api_keys.clone();
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read api_keys_file {}: {e}", path.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        Ok(keys)
    }

    /// Where the per-key usage store lives: `usage_store`, else `usage.redb` in the state
    /// directory.
    pub fn usage_store_path(&self) -> PathBuf {
        self.usage_store.clone().unwrap_or_else(|| self.state_dir().join("usage.redb"))
    }

    /// The state directory (see [`Config::state_dir`]).
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = env("STATE_DIRECTORY") {
            // systemd's StateDirectory= may list several, separated by colons.
            let first = dir.to_string_lossy().split(':').next().map(PathBuf::from);
            return first.unwrap_or(dir);
        }
        match (env("XDG_STATE_HOME"), env("HOME")) {
            (Some(state), _) => state.join("cortex"),
            (None, Some(home)) => home.join(".local/state/cortex"),
            (None, None) => PathBuf::from(".cortex-state"),
        }
    }

    /// The token for neurons: `neuron_token`, else `neuron_token_file`, else `$CORTEX_NEURON_TOKEN`.
    pub fn neuron_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.neuron_token {
            return Ok(Some(token.clone()));
        }
        if let Some(path) = &self.neuron_token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read neuron_token_file {}: {e}", path.display()))?;
            return Ok(text.lines().next().map(|l| l.trim().to_owned()));
        }
        Ok(std::env::var("CORTEX_NEURON_TOKEN").ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_durations() {
        let config =
            Config::parse("[gateway]\nmax_wait = \"1m30s\"\n[poll]\ninterval = \"500ms\"\n").expect("valid");
        assert_eq!(config.listen.port(), 31313);
        assert_eq!(config.gateway.max_wait, Duration::from_secs(90));
        assert_eq!(config.poll.interval, Duration::from_millis(500));
    }

    #[test]
    fn the_cluster_table_is_optional_and_has_defaults() {
        assert_eq!(Config::parse("").expect("valid").cluster, None, "standalone without it");
        let config = Config::parse("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n").expect("valid");
        let cluster = config.cluster.expect("cluster");
        assert_eq!((cluster.lease_ttl, cluster.prefix.as_str()), (Duration::from_secs(3), "/cortex"));
        assert_eq!(cluster.replica, None);
        let err = Config::parse("[cluster]\netcd = []\nleader = true\n").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `leader`"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors_with_position() {
        let err = Config::parse("lisen = \"x\"\n").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
        let err = Config::parse("[poll]\ninterval = \"5 parsecs\"\n").expect_err("bad unit");
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
