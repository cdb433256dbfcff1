//! `cortex serve`: wires the daemon together (fleet watcher, poller, reconciler, gateway,
//! metrics) and owns its shutdown: one cancellation token, fired by SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::backoff::BackoffPolicy;
use crate::control::execute::ExecTimeouts;
use crate::control::fleetdir::FleetSource;
use crate::control::fleetwatch;
use crate::control::reconciler::{ReconcileConfig, ReconcileHandle};
use crate::gateway::core::auth::ApiKeys;
use crate::gateway::{self, AppState};
use crate::operator::admin::Admin;

pub async fn run(fleet_dir: Option<PathBuf>, config: Config) -> anyhow::Result<ExitCode> {
    init_tracing();
    let source = FleetSource::choose(fleet_dir);
    let reading = source.clone();
    let loaded = tokio::task::spawn_blocking(move || fleetwatch::load(&reading))
        .await
        .context("the fleet reader stopped")??;
    for diagnostic in &loaded.status.diagnostics {
        eprintln!("{diagnostic}");
    }
    if let Some(fleet) = &loaded.fleet {
        tracing::info!(fleet = %source.describe(), digest = %fleet.digest, models = fleet.models.len(), neurons = fleet.neurons.len(), "fleet loaded");
    }
    let prometheus = crate::metrics::install()?;

    let shutdown = CancellationToken::new();
    let guard = fleetwatch::Guard { allow_destroy_all: config.reconcile.allow_destroy_all };
    let fleet = fleetwatch::spawn(source.clone(), loaded, guard, shutdown.clone())
        .with_context(|| format!("cannot serve the fleet in {}", source.describe()))?;
    let fleet_receiver = fleet.fleet.clone();
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
        shutdown.clone(),
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

    // Failed cold loads back off like the reconciler's actions.
    let keys = ApiKeys::new(config.client_keys()?);
    let state = AppState::new(fleet_receiver.clone(), poller.clone(), keys, config.gateway.clone())
        .with_load_backoff(reconcile_config_backoff(&config));
    let timeouts = ExecTimeouts { call: config.gateway.neuron_timeout, ready: config.reconcile.load_timeout };
    let reconcile_config = ReconcileConfig {
        resync: config.reconcile.resync,
        parallelism: config.reconcile.parallelism,
        timeouts,
        backoff: reconcile_config_backoff(&config),
        // Passes weigh the gateway's queues and residency in evictions, as its cold loads do.
        activity: state.scheduler.activity(),
    };
    let (status, reconciler, reconcile_task) =
        crate::control::reconciler::spawn(fleet, poller.clone(), reconcile_config, shutdown.clone());
    tokio::spawn(pass_on_sighup(reconciler.clone(), shutdown.clone()));

    // The fleet page reads the same channels (and the gateway's queues and traffic window) on the
    // operator listener.
    let ui_sources = crate::operator::ui::feed::Sources {
        fleet: fleet_receiver.clone(),
        observed: poller.observed.clone(),
        status: status.clone(),
        queues: state.scheduler.queues(),
        traffic: state.traffic.clone(),
    };
    let (ui_feed, ui_task) = crate::operator::ui::feed::spawn(ui_sources, shutdown.clone());
    let operator = crate::metrics::router(prometheus).merge(crate::operator::ui::router(
        crate::operator::ui::Ui::new(ui_feed, config.admin_key.as_deref()),
    ));
    let admin = config.admin_key.clone().map(|key| Admin {
        key: Arc::new(key),
        status,
        timeouts,
        parallelism: config.reconcile.parallelism,
        reconciler,
    });
    let probe_task =
        tokio::spawn(gateway::core::admission::probe_delay(state.admission.clone(), shutdown.clone()));
    // The admin API answers on the inference listener, beside the routes it administers.
    let api_router = gateway::app(state.clone()).merge(crate::operator::admin::router(state, admin));
    let api = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let metrics = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.metrics_listen))?;
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
    let _ = tokio::join!(poller_task, gauge_task, reconcile_task, ui_task, probe_task);
    api_result.context("the inference API failed")?;
    metrics_result.context("the metrics listener failed")?;
    Ok(ExitCode::SUCCESS)
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
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
