//! The reconciler's pass (spec §6): plans from scratch against the fleet in force and the
//! observed state and, in `reconcile = "auto"`, applies what is not backing off. Failures go
//! through one backoff policy per (model, neuron) (`crate::control::backoff`), reset by a new
//! fleet revision; a 409 (another actor changed the neuron) is a re-plan, not a failure. It
//! never writes fleet files. The loop that schedules passes is `crate::control::reconcile`.

use std::sync::Arc;
use std::time::Duration;

use plans::fleet::{Fleet, ReconcileMode};
use plans::plan::{Action, ActionKind, Activity, Plan, PlanOptions};
use plans::topology::Topology;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::control::apply::{self, ApplyReport, Outcome, Progress};
use crate::control::authority::Authority;
use crate::control::backoff::{Backoff, BackoffPolicy};
use crate::control::decisions::{Decisions, Part};
use crate::control::execute::ExecTimeouts;
use crate::control::fleetwatch::FleetHandle;
use crate::control::poller::{Observed, PollerHandle, now_unix_ms};
use crate::control::reconcile::{self, Pass, Requeue, Trigger, Wake, requeue_after};
use crate::control::status::{
    self, BackingOff, DaemonStatus, Health, RUNS_KEPT, RevisionRecord, Run, RunResult,
};

/// Reconciler settings.
#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// A pass runs at least this often (plus up to 10% jitter), even without triggers.
    pub resync: Duration,
    /// Neurons acted on at once.
    pub parallelism: usize,
    pub timeouts: ExecTimeouts,
    pub backoff: BackoffPolicy,
    /// What the gateway knows that neurons do not report (requests waiting in its queues, since
    /// when each copy is resident), for the eviction choice: the same view the router's cold
    /// loads plan with. Written by the gateway's scheduler; a receiver whose sender is gone
    /// keeps its last value (an empty one: plan on in-flight requests alone).
    pub activity: watch::Receiver<Activity>,
    /// Whether this daemon acts on neurons now (always standalone; in a cluster, while it
    /// leads), and the mandate its calls carry.
    pub authority: watch::Receiver<Authority>,
    /// Cluster mode: where the backoff is published for the next leader, and where a previous
    /// leader's is found on election (`None` standalone).
    pub decisions: Option<Decisions>,
}

/// Asks the running reconciler for a pass.
#[derive(Clone)]
pub struct ReconcileHandle {
    wakes: mpsc::UnboundedSender<Wake>,
}

impl ReconcileHandle {
    /// An operator's request for a pass now ([`Trigger::AdminRequest`]).
    pub fn request(&self) {
        let _ = self.wakes.send(Wake::Run(Trigger::AdminRequest));
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

/// Start the reconciler. Returns the status it keeps up to date and a handle to ask for passes.
pub fn spawn(
    fleet: FleetHandle,
    poller: PollerHandle,
    config: ReconcileConfig,
    shutdown: CancellationToken,
) -> (watch::Receiver<Arc<DaemonStatus>>, ReconcileHandle, tokio::task::JoinHandle<()>) {
    let (sender, receiver) =
        watch::channel(Arc::new(DaemonStatus { format_version: 1, ..DaemonStatus::default() }));
    let (wakes, wake_receiver) = mpsc::unbounded_channel();
    let handle = ReconcileHandle { wakes: wakes.clone() };
    let task = tokio::spawn(async move {
        // The first pass plans against what the neurons say, not against nothing.
        let mut first = poller.observed.clone();
        let polled = async { first.wait_for(|o| o.topology.observed_at_unix_ms != 0).await.is_ok() };
        tokio::select! {
            () = shutdown.cancelled() => return,
            polled = polled => if !polled { return },
        }
        let authority = config.authority.clone();
        tokio::spawn(forward_wakes(fleet.clone(), poller.clone(), authority, wakes, shutdown.clone()));
        let last_digest = fleet.fleet.borrow().digest.clone();
        let reconciler = Reconciler {
            last_digest,
            fleet,
            poller,
            config,
            status: sender,
            backoff: Backoff::default(),
            runs: Vec::new(),
        };
        reconcile::run(reconciler, wake_receiver, shutdown).await;
    });
    (receiver, handle, task)
}

/// Turn changes of the fleet and of the observed state into wake-ups: a new fleet or a moved
/// topology runs a pass; anything else only refreshes the status.
async fn forward_wakes(
    fleet: FleetHandle,
    poller: PollerHandle,
    mut authority: watch::Receiver<Authority>,
    wakes: mpsc::UnboundedSender<Wake>,
    shutdown: CancellationToken,
) {
    authority.mark_unchanged();
    let mut fleet_in_force = fleet.fleet.clone();
    let mut fleet_status = fleet.status.clone();
    let mut observed = poller.observed.clone();
    let mut seen = fingerprint(&observed.borrow_and_update());
    fleet_in_force.mark_unchanged();
    fleet_status.mark_unchanged();
    loop {
        let wake = tokio::select! {
            () = shutdown.cancelled() => return,
            changed = fleet_in_force.changed() => {
                if changed.is_err() { return; }
                fleet_in_force.borrow_and_update();
                Wake::Run(Trigger::FleetRevision)
            }
            changed = fleet_status.changed() => {
                if changed.is_err() { return; }
                fleet_status.borrow_and_update();
                Wake::Refresh
            }
            changed = authority.changed() => {
                if changed.is_err() { return; }
                authority.borrow_and_update();
                Wake::Run(Trigger::Leadership)
            }
            changed = observed.changed() => {
                if changed.is_err() { return; }
                let now = fingerprint(&observed.borrow_and_update());
                let moved = now != seen;
                seen = now;
                if moved { Wake::Run(Trigger::TopologyChange) } else { Wake::Refresh }
            }
        };
        if wakes.send(wake).is_err() {
            return;
        }
    }
}

pub struct Reconciler {
    fleet: FleetHandle,
    poller: PollerHandle,
    config: ReconcileConfig,
    status: watch::Sender<Arc<DaemonStatus>>,
    backoff: Backoff,
    /// The digest of the fleet the backoff entries were recorded against.
    last_digest: String,
    runs: Vec<Run>,
}

impl Pass for Reconciler {
    async fn pass(&mut self, trigger: Trigger) -> Requeue {
        self.pass_now(trigger).await;
        let resync = self.config.resync + jitter(self.config.resync / 10);
        requeue_after(&self.backoff, resync, Instant::now())
    }

    fn refresh(&mut self) {
        self.publish(None, None);
    }
}

/// The start of a pass, for its run record.
struct Started {
    trigger: Trigger,
    at: Instant,
    unix_ms: u64,
    revision: String,
    record: RevisionRecord,
}

/// The plan against `topology` at `now_unix_ms`, weighing the gateway's queues and residency in
/// evictions, so that a pass and a cold load choose the same copy to give up.
fn plan_now(
    fleet: &Fleet,
    topology: &Topology,
    activity: &watch::Receiver<Activity>,
    now_unix_ms: u64,
) -> Plan {
    let options = PlanOptions { now_unix_ms, prune: false };
    plans::plan::plan_with(fleet, topology, &options, &activity.borrow())
}

impl Reconciler {
    /// One pass: plan, and in auto mode apply what is not backing off.
    async fn pass_now(&mut self, trigger: Trigger) {
        let fleet: Arc<Fleet> = self.fleet.fleet.borrow().clone();
        if fleet.digest != self.last_digest || trigger == Trigger::AdminRequest {
            // A new desired revision, or an operator asking, deserves a fresh try of everything.
            self.backoff.reset();
            self.last_digest = fleet.digest.clone();
            self.share_backoff();
        }
        self.adopt();
        let fleet_status = self.fleet.status.borrow().clone();
        let observed = self.poller.observed.borrow().clone();
        let unix_ms = now_unix_ms();
        let plan = plan_now(&fleet, &observed.topology, &self.config.activity, unix_ms);
        let revision = fleet_status.revision.short(&fleet.digest);
        let record = RevisionRecord {
            revision: fleet_status.revision.clone(),
            digest: fleet.digest.clone(),
            at_unix_ms: unix_ms,
        };
        let started = Started { trigger, at: Instant::now(), unix_ms, revision, record };
        tracing::debug!(trigger = trigger.as_str(), actions = plan.actions.len(), "reconcile pass");

        if plan.actions.is_empty() {
            let result = if plan.is_empty() { RunResult::NoChanges } else { RunResult::NothingFeasible };
            let summary = summary(&plan);
            self.finish_quiet(&started, result, summary);
            let record = started.record.clone();
            self.publish(Some(plan), Some((record.clone(), Some(record))));
            return;
        }
        if fleet.policy.reconcile == ReconcileMode::Off {
            self.finish_quiet(&started, RunResult::Drift, summary(&plan));
            self.publish(Some(plan), None);
            return;
        }
        let authority = self.config.authority.borrow().clone();
        if !authority.acts() {
            self.finish_quiet(&started, RunResult::NotLeader, summary(&plan));
            self.publish(Some(plan), None);
            return;
        }
        let runnable = self.without_backing_off(&plan);
        if runnable.actions.is_empty() {
            self.finish_quiet(&started, RunResult::BackingOff, summary(&plan));
            self.publish(Some(plan), None);
            return;
        }
        self.publish_health(Health::Progressing);
        tracing::info!(trigger = trigger.as_str(), revision = %started.revision, actions = runnable.actions.len(), "reconciling");
        let progress: Arc<dyn Fn(Progress) + Send + std::marker::Sync> = Arc::new(log_progress);
        let report = apply::apply_handing_over(
            &runnable,
            &observed.clients,
            self.config.parallelism,
            self.config.timeouts,
            authority.mandate().cloned(),
            progress,
            Some(handover(self.poller.clone())),
        )
        .await;
        let (result, errors) = self.account(&report);
        self.share_backoff();
        metrics::counter!("cortex_reconcile_runs_total", "result" => result.as_str()).increment(1);
        tracing::info!(trigger = trigger.as_str(), result = result.as_str(), "{}", report.summary());
        self.record(run(&started, result, report.summary(), errors));
        // Look again at what the neurons say now, so that status reflects the result.
        self.poller.refreshed().await;
        let observed = self.poller.observed.borrow().clone();
        let after = plan_now(&fleet, &observed.topology, &self.config.activity, now_unix_ms());
        let applied = report.succeeded().then(|| started.record.clone());
        self.publish(Some(after), Some((started.record, applied)));
    }

    /// Cluster mode, at the first pass of a new term: continue the backoff the previous leader
    /// recorded against the fleet in force.
    fn adopt(&mut self) {
        let Some(decisions) = self.config.decisions.clone() else { return };
        let Some(term) = self.config.authority.borrow().mandate().map(|m| m.term) else { return };
        let Some(record) = decisions.to_adopt(Part::Reconciler, term) else { return };
        if record.fleet == self.last_digest {
            self.backoff.inherit(&record.passes, Instant::now());
            tracing::info!(
                term,
                waiting = record.passes.len(),
                "cluster: continuing the previous leader's backoff"
            );
        }
        self.share_backoff();
        decisions.adopted(Part::Reconciler, term);
    }

    /// Cluster mode: publish the backoff, for the next leader.
    fn share_backoff(&self) {
        if let Some(decisions) = &self.config.decisions {
            decisions.set_passes(&self.last_digest, self.backoff.export());
        }
    }

    /// Record outcomes in the backoff; returns the run's result and its error lines.
    fn account(&mut self, report: &ApplyReport) -> (RunResult, Vec<String>) {
        let mut errors = Vec::new();
        let now = Instant::now();
        for (action, outcome) in &report.outcomes {
            match outcome {
                Outcome::Done { .. } => {
                    self.backoff.succeeded(&action.model, &action.neuron);
                    if action.kind == ActionKind::Unload {
                        metrics::counter!("cortex_evictions_total", "reason" => action.reason.code())
                            .increment(1);
                    }
                }
                Outcome::Failed { error } => {
                    let line =
                        format!("{} {} on {}: {error}", action.kind.as_str(), action.model, action.neuron);
                    // A 409 says another actor changed the neuron (or a newer leader fenced
                    // this one): the next pass re-plans on what it sees then, without waiting
                    // out a backoff.
                    if !report.conflicts.contains(&action.id) {
                        self.backoff.failed(
                            &action.model,
                            &action.neuron,
                            error.clone(),
                            self.config.backoff,
                            now,
                        );
                    }
                    errors.push(line);
                }
                Outcome::Skipped { .. } => {}
            }
        }
        let result = if report.succeeded() {
            RunResult::Applied
        } else if !report.conflicts.is_empty() && report.conflicts.len() == errors.len() {
            RunResult::Conflict
        } else {
            RunResult::Failed
        };
        (result, errors)
    }

    /// A pass that changed nothing: counted, but recorded in the history only when its result
    /// or revision differs from the last run (repeats are not worth a line).
    fn finish_quiet(&mut self, started: &Started, result: RunResult, summary: String) {
        metrics::counter!("cortex_reconcile_runs_total", "result" => result.as_str()).increment(1);
        let new = self.runs.last().is_none_or(|r| r.result != result || r.revision != started.revision);
        if new {
            tracing::info!(trigger = started.trigger.as_str(), result = result.as_str(), "{summary}");
            self.record(run(started, result, summary, Vec::new()));
        }
    }

    /// The plan without the actions whose (model, neuron) is backing off, nor what waits on them.
    fn without_backing_off(&self, plan: &Plan) -> Plan {
        let now = Instant::now();
        let mut dropped: Vec<String> = Vec::new();
        let mut runnable = plan.clone();
        runnable.actions.retain(|action: &Action| {
            let keep = !self.backoff.waiting(&action.model, &action.neuron, now)
                && !action.after.iter().any(|id| dropped.contains(id));
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
        let fleet_status = self.fleet.status.borrow().as_ref().clone();
        let observed = self.poller.observed.borrow().clone();
        let backing_off = self.backing_off();
        self.status.send_modify(|document| {
            let document = Arc::make_mut(document);
            if let Some(plan) = plan {
                document.plan = plan;
            }
            if let Some((attempted, applied)) = revisions {
                document.last_attempted = Some(attempted);
                if applied.is_some() {
                    document.last_applied = applied;
                }
            }
            document.runs = self.runs.clone();
            document.backing_off = backing_off;
            status::observe(document, &fleet, fleet_status, &observed);
        });
    }

    fn backing_off(&self) -> Vec<BackingOff> {
        let now = Instant::now();
        let unix_now = now_unix_ms();
        self.backoff
            .waiting_entries(now)
            .map(|((model, neuron), entry)| BackingOff {
                model: model.clone(),
                neuron: neuron.clone(),
                failures: entry.failures,
                next_try_unix_ms: unix_now
                    + u64::try_from((entry.until - now).as_millis()).unwrap_or(u64::MAX),
                error: entry.error.clone(),
            })
            .collect()
    }
}

fn run(started: &Started, result: RunResult, summary: String, errors: Vec<String>) -> Run {
    Run {
        started_unix_ms: started.unix_ms,
        duration_ms: u64::try_from(started.at.elapsed().as_millis()).unwrap_or(u64::MAX),
        revision: started.revision.clone(),
        trigger: started.trigger,
        result,
        summary,
        errors,
    }
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

/// Up to `max` of jitter, from the clock's low bits (no randomness crate needed for this).
fn jitter(max: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(0).max(1);
    Duration::from_millis(u64::from(nanos) % max_ms)
}

/// A move off a draining neuron: before the old copy unloads, a fresh poll, so that the
/// gateway's scheduler (which follows the same observations) has seen the new copy ready and
/// sends the old one nothing new. Bounded: a poller that does not answer does not hold the move.
fn handover(poller: PollerHandle) -> apply::Handover {
    Arc::new(move || {
        let poller = poller.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(HANDOVER_WAIT, poller.refreshed()).await;
        })
    })
}

/// How long a move off a draining neuron waits for the fresh poll before the unload goes on.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"
[[neuron]]
name = "n"
endpoint = "http://127.0.0.1:1"

[[model]]
id = "big"
harness = "sim"
source = "big.gguf"
vram_mb = 12000
pinned_on = ["n"]

[[model]]
id = "a"
harness = "sim"
source = "a.gguf"
vram_mb = 12000

[[model]]
id = "b"
harness = "sim"
source = "b.gguf"
vram_mb = 12000
"#;

    const NOW: u64 = 1_700_000_000_000;

    /// One full GPU holding `a` (used longest ago) and `b`, idle, both on demand.
    fn topology() -> Topology {
        let copy = |id: &str, last_used: u64| {
            serde_json::json!({"id": id, "harness": "sim", "status": "loaded", "devices": [0],
                "vram_mb": 12000, "last_used_unix_ms": last_used, "in_flight": 0,
                "profile": {"harness": "sim", "source": format!("{id}.gguf"), "args": []}})
        };
        let json = serde_json::json!({"format_version": 1, "observed_at_unix_ms": NOW, "neurons": [
            {"name": "n", "reachable": true, "generation": 3, "boot_id": "b1",
             "devices": [{"index": 0, "name": "GPU", "vram_total_mb": 24000, "vram_free_mb": 0}],
             "ram_total_mb": 64000, "ram_free_mb": 60000, "harnesses": ["sim"],
             "models": [copy("a", NOW - 60_000), copy("b", NOW - 30_000)]}]});
        serde_json::from_value(json).expect("a valid topology")
    }

    fn evicted(plan: &Plan) -> Vec<&str> {
        plan.actions
            .iter()
            .filter(|a| matches!(a.reason, plans::plan::Reason::Evict { .. }))
            .map(|a| a.model.as_str())
            .collect()
    }

    #[test]
    fn a_pass_weighs_the_gateways_queues_in_its_eviction_choice() {
        let load = plans::fleet::load(&[("fleet.toml".to_owned(), FLEET.to_owned())]);
        let fleet = load.fleet.unwrap_or_else(|| panic!("valid: {:?}", load.diagnostics));
        let topology = topology();
        let (gateway, activity) = watch::channel(Activity::default());
        let plan = plan_now(&fleet, &topology, &activity, NOW);
        assert_eq!(evicted(&plan), ["a"], "idle everywhere: the least recently used goes");
        // Requests wait in the gateway for `a`: the pass gives up `b` instead.
        gateway.send_replace(Activity { queued: [("a".to_owned(), 3)].into(), ..Activity::default() });
        let plan = plan_now(&fleet, &topology, &activity, NOW);
        assert_eq!(evicted(&plan), ["b"], "a model with requests waiting is evicted last");
        // `b` became resident a moment ago (within its minimum residency): it is held, so the
        // pin takes `a` after all (a busy copy is evicted last, not never).
        let resident = [(("b".to_owned(), "n".to_owned()), NOW - 1_000)].into();
        gateway.send_replace(Activity {
            queued: [("a".to_owned(), 3)].into(),
            resident_since: resident,
            ..Activity::default()
        });
        let plan = plan_now(&fleet, &topology, &activity, NOW);
        assert_eq!(evicted(&plan), ["a"], "the gateway's residency holds `b`");
    }
}
