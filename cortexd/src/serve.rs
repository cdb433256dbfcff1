//! `cortex serve`: wires the daemon together (fleet watcher, poller, reconciler, gateway,
//! metrics) and owns its shutdown: one cancellation token, fired by SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::authority::Authority;
use crate::control::backoff::BackoffPolicy;
use crate::control::cluster_status::ClusterStatus;
use crate::control::decisions::Decisions;
use crate::control::execute::ExecTimeouts;
use crate::control::fleetdir::FleetSource;
use crate::control::fleetwatch;
use crate::control::lastgood::{LastGood, SavedFleet};
use crate::control::poller::PollerHandle;
use crate::control::reconciler::{ReconcileConfig, ReconcileHandle};
use crate::control::status::QueueStatus;
use crate::gateway::core::auth::ApiKeys;
use crate::gateway::core::keys::Keys;
use crate::gateway::core::scheduler::ClusterInputs;
use crate::gateway::{self, AppState};
use crate::operator::admin::Admin;

pub async fn run(fleet_dir: Option<PathBuf>, config: Config) -> anyhow::Result<ExitCode> {
    init_tracing();
    let source = FleetSource::choose(fleet_dir);
    let reading = source.clone();
    let loaded = tokio::task::spawn_blocking(move || fleetwatch::load(&reading))
        .await
        .context("the fleet reader stopped")?;
    let loaded = loaded.unwrap_or_else(|error| fleetwatch::unreadable(&error));
    for diagnostic in &loaded.status.diagnostics {
        eprintln!("{diagnostic}");
    }
    let keep = LastGood::for_source(&config.state_dir(), &source);
    let loaded = match loaded.fleet {
        Some(_) => loaded,
        // Never down because of desired state: serve the last good fleet and say why.
        None => fall_back(loaded, keep.as_ref(), &config).await,
    };
    if let Some(fleet) = &loaded.fleet {
        tracing::info!(fleet = %source.describe(), digest = %fleet.digest, models = fleet.models.len(), neurons = fleet.neurons.len(), "fleet loaded");
    }
    let prometheus = crate::metrics::install()?;

    let shutdown = CancellationToken::new();
    // What must outlive the API's drain (the poller, the scheduler's inputs, the cluster lease
    // and demand): requests still waiting for a load are admitted while it drains.
    let released = CancellationToken::new();
    let guard = fleetwatch::Guard { allow_destroy_all: config.reconcile.allow_destroy_all };
    let fleet = fleetwatch::spawn(source.clone(), loaded, guard, keep, shutdown.clone())
        .with_context(|| format!("cannot serve the fleet in {}", source.describe()))?;
    let fleet_receiver = fleet.fleet.clone();
    let fleet_saved = fleet.saved.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")?;
    let (poller, poller_task) = crate::control::poller::spawn(
        fleet_receiver.clone(),
        config.neuron_token()?,
        http.clone(),
        config.poll.clone(),
        released.clone(),
    );
    let mut gauges = poller.observed.clone();
    let gauge_shutdown = shutdown.clone();
    let gauge_task = tokio::spawn(async move {
        let mut recorded = crate::metrics::TopologyGauges::default();
        loop {
            tokio::select! {
                () = gauge_shutdown.cancelled() => return,
                changed = gauges.changed() => {
                    if changed.is_err() { return; }
                    let observed = gauges.borrow_and_update().clone();
                    recorded.record(&observed.topology);
                }
            }
        }
    });

    let api = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let metrics = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.metrics_listen))?;
    let addresses = (api.local_addr()?, metrics.local_addr()?);
    let joined = join(&config, addresses, &poller, (shutdown.clone(), released.clone())).await?;
    let authority = joined.authority.clone();
    // Failed cold loads back off like the reconciler's actions.
    let state =
        AppState::new(fleet_receiver.clone(), poller.clone(), ApiKeys::default(), config.gateway.clone())
            .with_load_backoff(reconcile_config_backoff(&config));
    let mut state = match joined.scheduler_inputs(released.clone()) {
        Some(inputs) => state.in_cluster(inputs),
        None => state,
    };
    let usage = crate::usage::Usage::at(config.usage_store_path());
    state.keys = Arc::new(Keys::new(ApiKeys::new(config.client_keys()?), usage.clone()));
    // Its own stop, after the listeners have drained: the streams that end during the drain
    // settle their usage before the last write.
    let usage_stop = CancellationToken::new();
    let usage_task =
        tokio::spawn(crate::usage::flush_loop(usage, crate::usage::FLUSH_EVERY, usage_stop.clone()));
    let timeouts = ExecTimeouts { call: config.gateway.neuron_timeout, ready: config.reconcile.load_timeout };
    let reconcile_config = ReconcileConfig {
        resync: config.reconcile.resync,
        parallelism: config.reconcile.parallelism,
        timeouts,
        backoff: reconcile_config_backoff(&config),
        // Passes weigh the gateway's queues and residency in evictions, as its cold loads do.
        activity: state.scheduler.activity(),
        authority: authority.clone(),
        decisions: joined.decisions.clone(),
    };
    let (status, reconciler, reconcile_task) =
        crate::control::reconciler::spawn(fleet, poller.clone(), reconcile_config, shutdown.clone());
    joined.publish_demand(state.scheduler.queues(), released.clone());
    joined.share_usage(&state.keys, released.clone());
    joined.publish_fleet(fleet_saved, shutdown.clone());
    joined.publish_decisions(shutdown.clone());
    tokio::spawn(pass_on_sighup(reconciler.clone(), shutdown.clone()));

    // The fleet page reads the same channels (and the gateway's queues and traffic window) on the
    // operator listener.
    let ui_sources = crate::operator::ui::feed::Sources {
        fleet: fleet_receiver.clone(),
        observed: poller.observed.clone(),
        status: status.clone(),
        queues: state.scheduler.queues(),
        traffic: state.traffic.clone(),
        usage: state.keys.usage().clone(),
        requests: state.timelines.clone(),
    };
    let (ui_feed, ui_task) = crate::operator::ui::feed::spawn(ui_sources, shutdown.clone());
    let operator = crate::metrics::router(prometheus).merge(crate::operator::ui::router(
        crate::operator::ui::Ui::new(ui_feed, config.admin_key.as_deref()),
    ));
    let admin = Some(Admin {
        key: config.admin_key.clone().map(Arc::new),
        status,
        timeouts,
        parallelism: config.reconcile.parallelism,
        reconciler,
        cluster: joined.view.clone(),
        authority: authority.clone(),
    });
    let probe_task =
        tokio::spawn(gateway::core::admission::probe_delay(state.admission.clone(), shutdown.clone()));
    // The admin API answers on the inference listener, beside the routes it administers.
    let api_router = gateway::app(state.clone()).merge(crate::operator::admin::router(state, admin));
    tracing::info!(api = %api.local_addr()?, metrics = %metrics.local_addr()?, ui = %format!("http://{}/ui", metrics.local_addr()?), "cortex is serving");

    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signals.cancel();
    });
    let (api_result, metrics_result) = tokio::join!(
        gateway::serve(api, api_router, config.listener, shutdown.clone()),
        crate::metrics::serve(metrics, operator, config.listener, shutdown.clone())
    );
    shutdown.cancel();
    released.cancel();
    usage_stop.cancel();
    let _ = tokio::join!(poller_task, gauge_task, reconcile_task, ui_task, probe_task, usage_task);
    // A leader hands over (resigns, revokes its lease) before the process ends.
    if let Some(task) = joined.task {
        let _ = task.await;
    }
    api_result.context("the inference API failed")?;
    metrics_result.context("the metrics listener failed")?;
    Ok(ExitCode::SUCCESS)
}

/// The fleet to serve when the fleet directory's own is invalid (or unreadable) at start: the
/// one the cluster's leader published, else the copy kept on local disk, else an empty fleet
/// (the API answers, nothing is served, the status says why), never a refusal to start.
async fn fall_back(
    mut loaded: fleetwatch::Loaded,
    keep: Option<&LastGood>,
    config: &Config,
) -> fleetwatch::Loaded {
    let published = published_fleet(config).await;
    let saved = published.or_else(|| keep.and_then(LastGood::read));
    let restored = saved.and_then(|saved| Some((saved.fleet()?, saved)));
    let (fleet, fallback) = match restored {
        Some((fleet, saved)) => {
            loaded.status.revision = saved.revision.clone();
            loaded.status.digest = fleet.digest.clone();
            (fleet, saved.describe())
        }
        None => match plans::fleet::load(&[]).fleet {
            Some(empty) => {
                (empty, "an empty fleet (no good fleet was kept): fix the fleet directory".to_owned())
            }
            None => return loaded,
        },
    };
    tracing::warn!("the fleet directory holds no valid fleet; serving {fallback}");
    loaded.status.fallback = Some(fallback);
    loaded.status.valid = false;
    loaded.fleet = Some(fleet);
    loaded.files = Vec::new();
    loaded
}

/// The last good fleet the cluster's leader published, when this replica is in one and etcd
/// answers in time.
#[cfg(feature = "cluster")]
async fn published_fleet(config: &Config) -> Option<SavedFleet> {
    let settings = crate::cluster::Settings::from_config(config.cluster.as_ref()?, config.listen).ok()?;
    match crate::cluster::published_fleet(&settings).await {
        Ok(saved) => saved,
        Err(error) => {
            tracing::warn!(%error, "cannot read the cluster's last good fleet from etcd");
            None
        }
    }
}

#[cfg(not(feature = "cluster"))]
async fn published_fleet(_config: &Config) -> Option<SavedFleet> {
    None
}

/// This daemon's place: standalone (it always acts), or a replica of the cluster `[cluster]`
/// names (it acts while it leads).
struct Joined {
    authority: watch::Receiver<Authority>,
    /// Standalone: the authority's sender, kept as long as the daemon runs.
    _standalone: Option<watch::Sender<Authority>>,
    view: Option<watch::Receiver<Arc<ClusterStatus>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Cluster mode: the scheduler's and reconciler's decisions, for the next leader.
    decisions: Option<Decisions>,
    #[cfg(feature = "cluster")]
    cluster: Option<crate::cluster::Cluster>,
}

impl Joined {
    fn publish_demand(&self, queues: watch::Receiver<Arc<Vec<QueueStatus>>>, shutdown: CancellationToken) {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            cluster.publish_demand(queues, shutdown);
        }
        #[cfg(not(feature = "cluster"))]
        let _ = (queues, shutdown);
    }

    /// Cluster mode: hold the fleet keys to what they used on every replica.
    fn share_usage(&self, keys: &Arc<Keys>, shutdown: CancellationToken) {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            let (own, set) = (keys.clone(), keys.clone());
            let ledger = crate::cluster::usage::Ledger {
                own: Box::new(move |now| own.own_use(now)),
                set: Box::new(move |others| set.set_elsewhere(others)),
            };
            cluster.share_usage(ledger, shutdown);
        }
        #[cfg(not(feature = "cluster"))]
        let _ = (keys, shutdown);
    }

    /// What the scheduler of a cluster replica reads: who acts, the other replicas' demand.
    fn scheduler_inputs(&self, shutdown: CancellationToken) -> Option<ClusterInputs> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            let remote = cluster.others_demand(shutdown);
            let decisions = self.decisions.clone().unwrap_or_default();
            return Some(ClusterInputs { authority: cluster.authority.clone(), remote, decisions });
        }
        let _ = shutdown;
        None
    }

    /// Cluster mode: keep the leader's decisions written in etcd, for the next leader.
    fn publish_decisions(&self, shutdown: CancellationToken) {
        #[cfg(feature = "cluster")]
        if let (Some(cluster), Some(decisions)) = (&self.cluster, &self.decisions) {
            cluster.publish_decisions(decisions.clone(), shutdown);
        }
        #[cfg(not(feature = "cluster"))]
        let _ = shutdown;
    }

    fn publish_fleet(&self, saved: watch::Receiver<Option<Arc<SavedFleet>>>, shutdown: CancellationToken) {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            crate::cluster::publish_fleet(cluster.clone(), saved, shutdown);
        }
        #[cfg(not(feature = "cluster"))]
        let _ = (saved, shutdown);
    }
}

fn standalone() -> Joined {
    let (sender, authority) = watch::channel(Authority::Standalone);
    Joined {
        authority,
        _standalone: Some(sender),
        view: None,
        task: None,
        decisions: None,
        #[cfg(feature = "cluster")]
        cluster: None,
    }
}

#[cfg(feature = "cluster")]
async fn join(
    config: &Config,
    (api, operator): (SocketAddr, SocketAddr),
    poller: &PollerHandle,
    (shutdown, released): (CancellationToken, CancellationToken),
) -> anyhow::Result<Joined> {
    let Some(cluster) = &config.cluster else { return Ok(standalone()) };
    let settings = crate::cluster::Settings::from_config(cluster, api).map_err(|e| anyhow::anyhow!(e))?;
    let me = crate::cluster::record(&settings.replica, api, operator);
    tracing::info!(replica = %settings.replica, etcd = ?settings.endpoints, lease_ttl = ?settings.lease_ttl, "joining the cluster");
    let prepare = crate::cluster::fence_neurons(poller.clone(), config.gateway.neuron_timeout);
    let decisions = Decisions::default();
    let (cluster, task) =
        crate::cluster::start(settings, me, prepare, Some(decisions.clone()), (shutdown, released))
            .await
            .context("cannot set up the etcd client")?;
    Ok(Joined {
        authority: cluster.authority.clone(),
        _standalone: None,
        view: Some(cluster.view.clone()),
        task: Some(task),
        decisions: Some(decisions),
        cluster: Some(cluster),
    })
}

#[cfg(not(feature = "cluster"))]
async fn join(
    config: &Config,
    _addresses: (SocketAddr, SocketAddr),
    _poller: &PollerHandle,
    _tokens: (CancellationToken, CancellationToken),
) -> anyhow::Result<Joined> {
    anyhow::ensure!(
        config.cluster.is_none(),
        "cortex.toml has [cluster], but this cortex was built without cluster support (cargo feature `cluster`, on by default)"
    );
    Ok(standalone())
}

fn reconcile_config_backoff(config: &Config) -> BackoffPolicy {
    BackoffPolicy { base: config.reconcile.backoff_base, max: config.reconcile.backoff_max }
}

/// `kill -HUP` asks for a reconcile pass now (logged as an admin request).
async fn pass_on_sighup(reconciler: ReconcileHandle, shutdown: CancellationToken) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            signal = hangups.recv() => {
                if signal.is_none() { return; }
                tracing::info!("SIGHUP: a reconcile pass was requested");
                reconciler.request();
            }
        }
    }
}

async fn wait_for_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
