//! The reconciler (spec §6): level-triggered and idempotent, like a Kubernetes controller.
//! Triggers only say "look again": a new fleet, a topology change (a neuron's generation, boot
//! or reachability moved), or the periodic resync with jitter. Each pass plans from scratch and,
//! in `reconcile = "auto"`, applies; failures back off per (model, neuron), and a new fleet
//! revision resets the backoff. It never writes fleet files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plans::fleet::{Fleet, ReconcileMode};
use plans::plan::{Action, Plan, PlanOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::apply::{self, Outcome, Progress};
use crate::control::execute::ExecTimeouts;
use crate::control::fleetwatch::{FleetHandle, FleetStatus};
use crate::control::poller::{Observed, PollerHandle, now_unix_ms};
use crate::control::status::{Condition, DaemonStatus, Health, RUNS_KEPT, RevisionRecord, Run, Sync};

/// Reconciler settings.
#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// A pass runs at least this often (plus up to 10% jitter), even without triggers.
    pub resync: Duration,
    /// Neurons acted on at once.
    pub parallelism: usize,
    pub timeouts: ExecTimeouts,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// Per-(model, neuron) exponential backoff after failed actions.
#[derive(Debug, Default)]
struct Backoff {
    entries: BTreeMap<(String, String), (u32, Instant)>,
}

impl Backoff {
    fn key(action: &Action) -> (String, String) {
        (action.model.clone(), action.neuron.clone())
    }

    fn waiting(&self, action: &Action, now: Instant) -> bool {
        self.entries.get(&Self::key(action)).is_some_and(|(_, until)| *until > now)
    }

    fn failed(&mut self, action: &Action, config: &ReconcileConfig) {
        let entry = self.entries.entry(Self::key(action)).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        let delay =
            config.backoff_base.saturating_mul(2u32.saturating_pow(entry.0 - 1)).min(config.backoff_max);
        entry.1 = Instant::now() + delay;
    }

    fn succeeded(&mut self, action: &Action) {
        self.entries.remove(&Self::key(action));
    }
}

/// What decides whether the observed state changed in a way worth a pass.
fn fingerprint(observed: &Observed) -> Vec<(String, bool, String, u64)> {
    observed
        .topology
        .neurons
        .iter()
        .map(|n| (n.name.clone(), n.reachable, n.boot_id.clone(), n.generation))
        .collect()
}

/// Start the reconciler. Returns the status it keeps up to date.
pub fn spawn(
    fleet: FleetHandle,
    poller: PollerHandle,
    config: ReconcileConfig,
    shutdown: CancellationToken,
) -> (watch::Receiver<Arc<DaemonStatus>>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) =
        watch::channel(Arc::new(DaemonStatus { format_version: 1, ..DaemonStatus::default() }));
    let task = tokio::spawn(async move {
        let mut reconciler = Reconciler {
            fleet,
            poller,
            config,
            status: sender,
            backoff: Backoff::default(),
            runs: Vec::new(),
        };
        reconciler.run(shutdown).await;
    });
    (receiver, task)
}

struct Reconciler {
    fleet: FleetHandle,
    poller: PollerHandle,
    config: ReconcileConfig,
    status: watch::Sender<Arc<DaemonStatus>>,
    backoff: Backoff,
    runs: Vec<Run>,
}

impl Reconciler {
    async fn run(&mut self, shutdown: CancellationToken) {
        let mut fleet = self.fleet.fleet.clone();
        let mut fleet_status = self.fleet.status.clone();
        let mut observed = self.poller.observed.clone();
        let mut seen = fingerprint(&observed.borrow_and_update());
        let mut last_digest = fleet.borrow_and_update().digest.clone();
        loop {
            let resync = self.config.resync + jitter(self.config.resync / 10);
            let pass = tokio::select! {
                () = shutdown.cancelled() => return,
                changed = fleet.changed() => {
                    if changed.is_err() { return; }
                    let digest = fleet.borrow_and_update().digest.clone();
                    if digest != last_digest {
                        // A new desired revision deserves a fresh try of everything.
                        self.backoff = Backoff::default();
                        last_digest = digest;
                    }
                    true
                }
                changed = fleet_status.changed() => {
                    if changed.is_err() { return; }
                    fleet_status.borrow_and_update();
                    self.publish(None, None);
                    false
                }
                changed = observed.changed() => {
                    if changed.is_err() { return; }
                    let now = fingerprint(&observed.borrow_and_update());
                    let moved = now != seen;
                    seen = now;
                    if !moved { self.publish(None, None); }
                    moved
                }
                () = tokio::time::sleep(resync) => true,
            };
            if pass {
                self.pass().await;
                seen = fingerprint(&self.poller.observed.borrow());
            }
        }
    }

    /// One pass: plan, and in auto mode apply what is not backing off.
    async fn pass(&mut self) {
        let started = Instant::now();
        let started_unix_ms = now_unix_ms();
        let fleet: Arc<Fleet> = self.fleet.fleet.borrow().clone();
        let fleet_status = self.fleet.status.borrow().clone();
        let observed = self.poller.observed.borrow().clone();
        let plan = plans::plan::plan(
            &fleet,
            &observed.topology,
            &PlanOptions { now_unix_ms: started_unix_ms, prune: false },
        );
        let revision = fleet_status.revision.short(&fleet.digest);
        let record = RevisionRecord {
            revision: fleet_status.revision.clone(),
            digest: fleet.digest.clone(),
            at_unix_ms: started_unix_ms,
        };

        if plan.actions.is_empty() {
            // Nothing to do is a successful pass only the first time it is noticed; repeats are
            // not worth a line in the history.
            let result = if plan.is_empty() { "no_changes" } else { "nothing_feasible" };
            if self.runs.last().is_none_or(|r| r.result != result || r.revision != revision) {
                self.record(Run {
                    started_unix_ms,
                    duration_ms: elapsed_ms(started),
                    revision,
                    result: result.into(),
                    summary: summary(&plan),
                    errors: Vec::new(),
                });
            }
            metrics::counter!("cortex_reconcile_runs_total", "result" => result).increment(1);
            self.publish(Some(plan), Some((record.clone(), Some(record))));
            return;
        }
        if fleet.policy.reconcile == ReconcileMode::Off {
            if self.runs.last().is_none_or(|r| r.result != "drift" || r.revision != revision) {
                self.record(Run {
                    started_unix_ms,
                    duration_ms: elapsed_ms(started),
                    revision,
                    result: "drift".into(),
                    summary: summary(&plan),
                    errors: Vec::new(),
                });
            }
            metrics::counter!("cortex_reconcile_runs_total", "result" => "drift").increment(1);
            self.publish(Some(plan), None);
            return;
        }

        let runnable = self.without_backing_off(&plan);
        if runnable.actions.is_empty() {
            self.publish(Some(plan), None);
            return;
        }
        self.publish_health(Health::Progressing);
        tracing::info!(revision = %revision, actions = runnable.actions.len(), "reconciling");
        let progress: Arc<dyn Fn(Progress) + Send + std::marker::Sync> = Arc::new(log_progress);
        let report = apply::apply(
            &runnable,
            &observed.clients,
            self.config.parallelism,
            self.config.timeouts,
            progress,
        )
        .await;
        let mut errors = Vec::new();
        for (action, outcome) in &report.outcomes {
            match outcome {
                Outcome::Done { .. } => {
                    self.backoff.succeeded(action);
                    if action.kind == plans::plan::ActionKind::Unload {
                        metrics::counter!("cortex_evictions_total", "reason" => action.reason.code())
                            .increment(1);
                    }
                }
                Outcome::Failed { error } => {
                    self.backoff.failed(action, &self.config);
                    errors.push(format!(
                        "{} {} on {}: {error}",
                        action.kind.as_str(),
                        action.model,
                        action.neuron
                    ));
                }
                Outcome::Skipped { .. } => {}
            }
        }
        let result = if report.succeeded() { "applied" } else { "failed" };
        metrics::counter!("cortex_reconcile_runs_total", "result" => result).increment(1);
        self.record(Run {
            started_unix_ms,
            duration_ms: elapsed_ms(started),
            revision,
            result: result.into(),
            summary: report.summary(),
            errors,
        });
        // Look again at what the neurons say now, so that status reflects the result.
        self.poller.refreshed().await;
        let observed = self.poller.observed.borrow().clone();
        let after = plans::plan::plan(
            &fleet,
            &observed.topology,
            &PlanOptions { now_unix_ms: now_unix_ms(), prune: false },
        );
        let applied = report.succeeded().then(|| record.clone());
        self.publish(Some(after), Some((record, applied)));
    }

    /// The plan without the actions whose (model, neuron) is backing off, nor what waits on them.
    fn without_backing_off(&self, plan: &Plan) -> Plan {
        let now = Instant::now();
        let mut dropped: Vec<String> = Vec::new();
        let mut runnable = plan.clone();
        runnable.actions.retain(|action| {
            let keep =
                !self.backoff.waiting(action, now) && !action.after.iter().any(|id| dropped.contains(id));
            if !keep {
                dropped.push(action.id.clone());
            }
            keep
        });
        runnable
    }

    fn record(&mut self, run: Run) {
        self.runs.push(run);
        if self.runs.len() > RUNS_KEPT {
            self.runs.remove(0);
        }
    }

    fn publish_health(&self, health: Health) {
        self.status.send_modify(|status| Arc::make_mut(status).health = health);
    }

    /// Publish the status; `plan` and `revisions` (attempted, applied) replace the previous
    /// ones when given.
    fn publish(&self, plan: Option<Plan>, revisions: Option<(RevisionRecord, Option<RevisionRecord>)>) {
        let fleet = self.fleet.fleet.borrow().clone();
        let fleet_status: FleetStatus = self.fleet.status.borrow().as_ref().clone();
        let observed = self.poller.observed.borrow().clone();
        self.status.send_modify(|status| {
            let status = Arc::make_mut(status);
            if let Some(plan) = plan {
                status.plan = plan;
            }
            if let Some((attempted, applied)) = revisions {
                status.last_attempted = Some(attempted);
                if applied.is_some() {
                    status.last_applied = applied;
                }
            }
            status.mode = Some(fleet.policy.reconcile);
            status.topology = observed.topology.clone();
            status.pinned = fleet.models.iter().filter(|m| !m.pinned_on.is_empty()).map(|m| (m.id.clone(), m.pinned_on.clone())).collect();
            status.runs = self.runs.clone();
            status.conditions = conditions(&fleet_status, &observed, self.runs.last());
            status.sync = if status.plan.is_empty() { Sync::Synced } else { Sync::OutOfSync };
            status.health = health(&status.conditions, &observed);
            metrics::gauge!("cortex_fleet_in_sync").set(if status.sync == Sync::Synced { 1.0 } else { 0.0 });
            let revision = fleet_status.revision.short(&fleet.digest);
            if status.fleet.revision.short(&status.fleet.digest) != revision && !status.fleet.digest.is_empty() {
                metrics::gauge!("cortex_fleet_info", "revision" => status.fleet.revision.short(&status.fleet.digest)).set(0.0);
            }
            metrics::gauge!("cortex_fleet_info", "revision" => revision).set(1.0);
            status.fleet = fleet_status.clone();
        });
    }
}

fn conditions(fleet: &FleetStatus, observed: &Observed, last: Option<&Run>) -> Vec<Condition> {
    let errors = fleet.diagnostics.iter().filter(|d| d.is_error()).count();
    let unreachable: Vec<&str> =
        observed.topology.neurons.iter().filter(|n| !n.reachable).map(|n| n.name.as_str()).collect();
    let mut conditions = vec![
        Condition {
            kind: "FleetValid".into(),
            ok: fleet.valid,
            reason: if fleet.valid { "Loaded".into() } else { "BuildFailed".into() },
            message: if fleet.valid {
                format!("fleet {} is in force", fleet.revision.short(&fleet.digest))
            } else {
                format!("the edited fleet has {errors} error(s); the last good fleet stays in force")
            },
        },
        Condition {
            kind: "NeuronsReachable".into(),
            ok: unreachable.is_empty(),
            reason: if unreachable.is_empty() { "AllReachable".into() } else { "Unreachable".into() },
            message: if unreachable.is_empty() {
                format!("{} neuron(s) answer", observed.topology.neurons.len())
            } else {
                format!("unreachable: {}", unreachable.join(", "))
            },
        },
    ];
    if let Some(run) = last {
        let ok = run.result != "failed";
        conditions.push(Condition {
            kind: "Reconciled".into(),
            ok,
            reason: run.result.clone(),
            message: run.errors.first().cloned().unwrap_or_else(|| run.summary.clone()),
        });
    }
    conditions
}

fn health(conditions: &[Condition], observed: &Observed) -> Health {
    let failed_models = observed
        .topology
        .neurons
        .iter()
        .any(|n| n.models.iter().any(|m| m.status == plans::topology::ModelState::Failed));
    if conditions.iter().any(|c| !c.ok) || failed_models { Health::Degraded } else { Health::Healthy }
}

fn summary(plan: &Plan) -> String {
    let counts = plan.counts();
    format!(
        "Plan: {} to load, {} to reload, {} to unload ({} evictions); {} infeasible, {} drifted.",
        counts.load,
        counts.reload,
        counts.unload,
        counts.evictions,
        plan.infeasible.len(),
        plan.drift.len()
    )
}

fn log_progress(progress: Progress) {
    match progress {
        Progress::Started(action) => {
            tracing::info!(id = %action.id, kind = action.kind.as_str(), model = %action.model, neuron = %action.neuron, "action started");
        }
        Progress::Finished(action, outcome) => match outcome {
            Outcome::Done { elapsed } => {
                tracing::info!(id = %action.id, model = %action.model, neuron = %action.neuron, elapsed_ms = elapsed.as_millis(), "action done");
            }
            Outcome::Failed { error } => {
                tracing::warn!(id = %action.id, model = %action.model, neuron = %action.neuron, %error, "action failed");
            }
            Outcome::Skipped { because } => {
                tracing::warn!(id = %action.id, model = %action.model, neuron = %action.neuron, %because, "action skipped");
            }
        },
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Up to `max` of jitter, from the clock's low bits (no randomness crate needed for this).
fn jitter(max: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(0).max(1);
    Duration::from_millis(u64::from(nanos) % max_ms)
}
