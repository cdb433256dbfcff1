//! The poller: keeps one [`Observed`] view of every neuron the fleet declares (discovery once
//! per boot id, health and models every interval, unreachable after repeated failures) and
//! publishes it through a `watch` channel. It is the only writer of the observed state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plans::fleet::Fleet;
use plans::topology::{NeuronStatus, Topology};
use plans::wire::{Discovery, HarnessInfo};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::PollConfig;
use crate::control::neuron_client::NeuronClient;

/// What cortex currently knows about the neurons. Shared read-only with every handler.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub topology: Topology,
    /// Per neuron: the harnesses it offers and what their engines can do (from discovery).
    pub harnesses: BTreeMap<String, Vec<HarnessInfo>>,
    /// Per neuron: the client to reach it.
    pub clients: Clients,
}

impl Observed {
    /// What the harness `harness` on `neuron` can do, if known.
    pub fn harness(&self, neuron: &str, harness: &str) -> Option<&HarnessInfo> {
        self.harnesses.get(neuron)?.iter().find(|h| h.name == harness)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Per-neuron memory of the poller between cycles.
#[derive(Default)]
struct Memory {
    discovery: Option<Discovery>,
    failures: u32,
    last: Option<NeuronStatus>,
}

/// Poll every neuron of `fleet` once, in parallel, and build the observed state. `memory`
/// carries discovery and failure counts between cycles.
async fn poll_once(
    clients: &Clients,
    memory: &mut BTreeMap<String, Memory>,
    config: &PollConfig,
) -> Observed {
    let timeout = config.interval.max(Duration::from_secs(1));
    let polls = clients.values().map(|client| {
        let known_boot =
            memory.get(&client.name).and_then(|m| m.discovery.as_ref()).map(|d| d.boot_id.clone());
        async move {
            let result = async {
                let health = client.health(timeout).await?;
                let discovery = match known_boot {
                    Some(boot) if boot == health.boot_id => None,
                    _ => Some(client.discovery(timeout).await?),
                };
                let models = client.models(timeout).await?;
                Ok::<_, crate::control::neuron_client::NeuronError>((health, discovery, models))
            }
            .await;
            (client.name.clone(), result)
        }
    });
    let results = futures_util::future::join_all(polls).await;
    memory.retain(|name, _| clients.contains_key(name));
    let mut observed = Observed { clients: clients.clone(), ..Observed::default() };
    let mut neurons = Vec::with_capacity(results.len());
    for (name, result) in results {
        let slot = memory.entry(name.clone()).or_default();
        let status = match result {
            Ok((health, discovery, models)) => {
                if let Some(discovery) = discovery {
                    slot.discovery = Some(discovery);
                }
                slot.failures = 0;
                let discovery = slot.discovery.as_ref();
                let status = NeuronStatus {
                    name: name.clone(),
                    reachable: true,
                    generation: models.generation.max(health.generation),
                    boot_id: health.boot_id,
                    simulated: discovery.is_some_and(|d| d.simulated),
                    devices: health.devices,
                    ram_total_mb: health.ram_total_mb,
                    ram_free_mb: health.ram_free_mb,
                    harnesses: discovery
                        .map(|d| d.harnesses.iter().map(|h| h.name.clone()).collect())
                        .unwrap_or_default(),
                    models: models.models,
                    error: None,
                };
                slot.last = Some(status.clone());
                status
            }
            Err(error) => {
                slot.failures = slot.failures.saturating_add(1);
                let mut status = slot
                    .last
                    .clone()
                    .unwrap_or_else(|| NeuronStatus { name: name.clone(), ..NeuronStatus::default() });
                // One failed poll is a blip; only repeated failures make a neuron unreachable.
                if slot.failures >= config.unreachable_after || slot.last.is_none() {
                    status.reachable = false;
                }
                status.error = Some(error.to_string());
                status
            }
        };
        if let Some(discovery) = &slot.discovery {
            observed.harnesses.insert(name.clone(), discovery.harnesses.clone());
        }
        neurons.push(status);
    }
    observed.topology = Topology::new(now_unix_ms(), neurons);
    observed.clients = with_fencing(clients, memory);
    observed
}

/// `clients`, each marked with whether its neuron's discovery says it checks terms (a cluster
/// leader acts only on those).
fn with_fencing(clients: &Clients, memory: &BTreeMap<String, Memory>) -> Clients {
    clients
        .iter()
        .map(|(name, client)| {
            let fences = memory.get(name).and_then(|m| m.discovery.as_ref()).is_some_and(|d| d.fencing);
            let client = if client.fences() == fences {
                client.clone()
            } else {
                Arc::new(NeuronClient::clone(client).with_fencing(fences))
            };
            (name.clone(), client)
        })
        .collect()
}

/// Clients for the neurons `fleet` declares.
fn clients_for(fleet: &Fleet, token: Option<&str>, http: &reqwest::Client) -> Clients {
    fleet
        .neurons
        .iter()
        .map(|n| {
            let client = NeuronClient::new(&n.name, &n.endpoint, token.map(str::to_owned), http.clone());
            (n.name.clone(), Arc::new(client))
        })
        .collect()
}

/// The clients of the fleet's neurons by name, shared: every forwarded request's target holds
/// one (an `Arc` clone, not a copy of its strings and URL).
pub type Clients = BTreeMap<String, Arc<NeuronClient>>;

/// Fetch the topology once (for `cortex topology` and `cortex plan` without a snapshot).
pub async fn observe(fleet: &Fleet, token: Option<&str>, config: &PollConfig) -> Observed {
    let http = reqwest::Client::new();
    let clients = clients_for(fleet, token, &http);
    // A one-shot observation has no history: any failure means unreachable.
    let config = PollConfig { unreachable_after: 1, ..config.clone() };
    poll_once(&clients, &mut BTreeMap::new(), &config).await
}

/// Handles to the running poller.
#[derive(Clone)]
pub struct PollerHandle {
    pub observed: watch::Receiver<Arc<Observed>>,
    kick: Arc<Notify>,
}

impl PollerHandle {
    /// Poll now rather than at the next tick (after a lifecycle change cortex caused).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Wait until the observed state was refreshed after this call.
    pub async fn refreshed(&self) {
        let mut observed = self.observed.clone();
        observed.mark_unchanged();
        self.kick();
        // An error means the poller stopped; the caller's own deadline handles that.
        let _ = observed.changed().await;
    }
}

/// Start polling the neurons of the fleet in `fleet`, until `shutdown`.
pub fn spawn(
    fleet: watch::Receiver<Arc<Fleet>>,
    token: Option<String>,
    http: reqwest::Client,
    config: PollConfig,
    shutdown: CancellationToken,
) -> (PollerHandle, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = watch::channel(Arc::new(Observed::default()));
    let kick = Arc::new(Notify::new());
    let handle = PollerHandle { observed: receiver, kick: kick.clone() };
    let task = tokio::spawn(async move {
        let mut memory = BTreeMap::new();
        loop {
            let clients = clients_for(&fleet.borrow(), token.as_deref(), &http);
            let cycle = std::time::Instant::now();
            let observed = poll_once(&clients, &mut memory, &config).await;
            // How long one cycle over every neuron takes: the figure that says whether the
            // poller keeps up with the fleet's size (spec §10; docs/scale.md).
            let seconds = cycle.elapsed().as_secs_f64();
            metrics::histogram!("cortex_poll_cycle_seconds").record(seconds);
            tracing::debug!(neurons = clients.len(), "poll cycle took {:.1} ms", seconds * 1000.0);
            sender.send_replace(Arc::new(observed));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(config.interval) => {}
                () = kick.notified() => {}
            }
        }
    });
    (handle, task)
}
