//! Runs cortex's gateway in-process on a loopback port against the neurons of a fleet given
//! as TOML text, with a fast poller; waits (with a deadline) until every neuron is observed.

use std::sync::Arc;
use std::time::Duration;

use cortexd::ApiKeys;
use cortexd::AppState;
use cortexd::PollerHandle;
use cortexd::Traffic;
use cortexd::{GatewayConfig, PollConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Gateway {
    pub url: String,
    pub poller: PollerHandle,
    /// The gateway's traffic window (the fleet page's charts).
    pub traffic: Arc<Traffic>,
    pub shutdown: CancellationToken,
    /// The fleet in force: send a new one to reload.
    pub fleet: watch::Sender<Arc<plans::fleet::Fleet>>,
    /// The client keys and their usage.
    pub keys: Arc<cortexd::Keys>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start the gateway for `fleet_toml` with client `keys` and `limits`.
pub async fn start(fleet_toml: &str, keys: &[&str], limits: GatewayConfig) -> Gateway {
    let load = plans::fleet::load(&[("fleet.toml".to_owned(), fleet_toml.to_owned())]);
    let fleet = load.fleet.unwrap_or_else(|| panic!("test fleet is invalid: {:?}", load.diagnostics));
    let neurons = fleet.neurons.len();
    let (sender, fleet) = watch::channel(Arc::new(fleet));
    let shutdown = CancellationToken::new();
    let http = reqwest::Client::new();
    let poll = PollConfig { interval: Duration::from_millis(100), unreachable_after: 2 };
    let (poller, _task) = cortexd::spawn_poller(fleet.clone(), None, http.clone(), poll, shutdown.clone());
    let state =
        AppState::new(fleet, poller.clone(), ApiKeys::new(keys.iter().map(|k| (*k).to_owned())), limits);
    let keys = state.keys.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let traffic = state.traffic.clone();
    let limits = cortex_listener::Limits::default();
    tokio::spawn(cortexd::serve(listener, cortexd::app(state), limits, shutdown.clone()));
    let mut observed = poller.observed.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        observed.wait_for(|o| {
            o.topology.neurons.len() == neurons && o.topology.neurons.iter().all(|n| n.reachable)
        }),
    )
    .await
    .expect("neurons observed within 10 s")
    .expect("poller running");
    Gateway { url, poller, traffic, shutdown, fleet: sender, keys }
}

/// Limits suitable for tests: short waits, small queues.
pub fn limits() -> GatewayConfig {
    GatewayConfig {
        max_body_bytes: 64 * 1024,
        max_waiting_per_model: 8,
        max_wait: Duration::from_secs(10),
        keepalive_interval: Duration::from_millis(100),
        neuron_timeout: Duration::from_secs(5),
        max_in_flight: 64,
        ..GatewayConfig::default()
    }
}
