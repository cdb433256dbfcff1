//! Applying a plan: actions run in dependency order, one at a time per neuron, neurons in
//! parallel up to a bound. A failed action skips what depends on it; independent branches go on.
//! An action waits for the actions it names in `after` wherever they run: a move off a draining
//! neuron unloads the old copy only once the new copy on another neuron is ready. The bound is
//! taken per action, never while waiting, so waits across neurons cannot starve each other.
//! The daemon also hands such a move over ([`Handover`]): before the old copy's unload it waits
//! until its gateway has seen the new copy ready, so that no new request reaches the old one.
//!
//! Preconditions travel with the chain: each action on a neuron carries the generation the plan
//! expects after the previous action of the chain (its own changes, never re-read from the
//! neuron), so another actor's change in between is a 409 and a re-plan, never absorbed. When a
//! failure leaves the neuron's generation unknown, the rest of that neuron's chain is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plans::plan::{Action, ActionKind, Plan, Reason};
use tokio::sync::{Semaphore, watch};

use crate::control::authority::Mandate;
use crate::control::execute::{self, ExecError, ExecTimeouts};
use crate::control::neuron_client::NeuronClient;

/// What happened to one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done {
        elapsed: Duration,
    },
    Failed {
        error: String,
    },
    /// Not attempted because an action it waits for failed or was skipped.
    Skipped {
        because: String,
    },
}

/// Progress while applying, for the CLI's output and the daemon's logs.
#[derive(Clone, Debug)]
pub enum Progress {
    Started(Action),
    Finished(Action, Outcome),
}

/// The result of applying a plan, one outcome per action, in plan order.
#[derive(Clone, Debug, Default)]
pub struct ApplyReport {
    pub outcomes: Vec<(Action, Outcome)>,
    /// Ids of the failed actions the neuron refused with a 409 (another actor changed it).
    pub conflicts: BTreeSet<String>,
}

impl ApplyReport {
    pub fn succeeded(&self) -> bool {
        self.outcomes.iter().all(|(_, o)| matches!(o, Outcome::Done { .. }))
    }

    fn count(&self, kind: ActionKind) -> usize {
        self.outcomes.iter().filter(|(a, o)| a.kind == kind && matches!(o, Outcome::Done { .. })).count()
    }

    /// `Apply complete! Loaded N, reloaded M, unloaded K.` or the failure summary.
    pub fn summary(&self) -> String {
        let (loaded, reloaded, unloaded) =
            (self.count(ActionKind::Load), self.count(ActionKind::Reload), self.count(ActionKind::Unload));
        if self.succeeded() {
            return format!("Apply complete! Loaded {loaded}, reloaded {reloaded}, unloaded {unloaded}.");
        }
        let done = self.outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Done { .. })).count();
        let failed = self.outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Failed { .. })).count();
        let skipped = self.outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Skipped { .. })).count();
        format!(
            "Apply failed: {done} done, {failed} failed, {skipped} skipped (loaded {loaded}, reloaded {reloaded}, unloaded {unloaded})."
        )
    }
}

/// Awaited before a copy leaves a draining neuron, once the copy that replaces it is ready: the
/// daemon returns when its gateway has seen that copy (a fresh poll), so that the gateway sends
/// the old copy no new request while it unloads.
pub type Handover = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Apply `plan` through `clients`, under a cluster leader's `mandate` when given. `progress` is
/// called as actions start and finish.
pub async fn apply(
    plan: &Plan,
    clients: &crate::control::poller::Clients,
    parallelism: usize,
    timeouts: ExecTimeouts,
    mandate: Option<Mandate>,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> ApplyReport {
    apply_handing_over(plan, clients, parallelism, timeouts, mandate, progress, None).await
}

/// As [`apply`], awaiting `handover` before each unload that a ready copy elsewhere replaces.
pub async fn apply_handing_over(
    plan: &Plan,
    clients: &crate::control::poller::Clients,
    parallelism: usize,
    timeouts: ExecTimeouts,
    mandate: Option<Mandate>,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
    handover: Option<Handover>,
) -> ApplyReport {
    // Actions are independent across neurons; within a neuron they run in plan order, which
    // is a topological order of the plan's DAG.
    let mut chains: BTreeMap<String, Vec<Action>> = BTreeMap::new();
    for action in &plan.actions {
        chains.entry(action.neuron.clone()).or_default().push(action.clone());
    }
    let shared = Shared {
        permits: Arc::new(Semaphore::new(parallelism.max(1))),
        finished: Arc::new(watch::channel(BTreeMap::new()).0),
        planned: Arc::new(plan.actions.iter().map(|a| a.id.clone()).collect()),
        mandate,
        handover,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (neuron, chain) in chains {
        let client = clients.get(&neuron).cloned();
        let shared = shared.clone();
        let progress = progress.clone();
        tasks.spawn(async move { run_chain(client, chain, timeouts, &shared, progress.as_ref()).await });
    }
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut conflicts = BTreeSet::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(chain) => {
                conflicts.extend(chain.conflicts);
                outcomes.extend(chain.outcomes);
            }
            Err(error) => tracing::error!(%error, "an apply task died"),
        }
    }
    let outcomes = plan
        .actions
        .iter()
        .map(|a| {
            let outcome = outcomes
                .remove(&a.id)
                .unwrap_or(Outcome::Failed { error: "the apply task stopped".to_owned() });
            (a.clone(), outcome)
        })
        .collect();
    ApplyReport { outcomes, conflicts }
}

/// What one neuron's chain did.
struct ChainReport {
    outcomes: Vec<(String, Outcome)>,
    conflicts: Vec<String>,
}

/// What the chains of one apply share.
#[derive(Clone)]
struct Shared {
    /// The parallelism bound, taken per action.
    permits: Arc<Semaphore>,
    /// Every finished action (done, failed or skipped): id → whether it was done.
    finished: Arc<watch::Sender<BTreeMap<String, bool>>>,
    /// The ids in the plan: a dependency outside it can never finish.
    planned: Arc<BTreeSet<String>>,
    /// The cluster leader's mandate every call is sent under (`None` standalone).
    mandate: Option<Mandate>,
    handover: Option<Handover>,
}

impl Shared {
    /// Waits until every action `action` names in `after` has finished; the first that was not
    /// done, if any.
    async fn wait_for(&self, action: &Action) -> Option<String> {
        if let Some(missing) = action.after.iter().find(|id| !self.planned.contains(*id)) {
            return Some(format!("{missing} is not in the plan"));
        }
        let mut finished = self.finished.subscribe();
        let ready = finished.wait_for(|done| action.after.iter().all(|id| done.contains_key(id))).await;
        let done = ready.ok()?;
        action.after.iter().find(|id| done.get(*id) != Some(&true)).map(|id| format!("{id} did not complete"))
    }

    fn finish(&self, id: &str, done: bool) {
        self.finished.send_modify(|finished| {
            finished.insert(id.to_owned(), done);
        });
    }
}

/// Run one neuron's actions in order, chaining the generation precondition.
async fn run_chain(
    client: Option<Arc<NeuronClient>>,
    chain: Vec<Action>,
    timeouts: ExecTimeouts,
    shared: &Shared,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> ChainReport {
    let mut report = ChainReport { outcomes: Vec::with_capacity(chain.len()), conflicts: Vec::new() };
    // The plan's precondition holds for the first action; after that, the generation the
    // previous action of the chain left behind. `Err` once nobody can say.
    let mut generation: Result<Option<u64>, String> = Ok(chain.first().map(|a| a.if_generation));
    for action in chain {
        let blocked = shared.wait_for(&action).await;
        if let Some(because) = blocked.or_else(|| generation.clone().err()) {
            let outcome = Outcome::Skipped { because };
            shared.finish(&action.id, false);
            progress(Progress::Finished(action.clone(), outcome.clone()));
            report.outcomes.push((action.id, outcome));
            continue;
        }
        let replaced = matches!(action.reason, Reason::Drain { replaced_by: Some(_), .. });
        if let Some(handover) =
            shared.handover.as_ref().filter(|_| replaced && action.kind == ActionKind::Unload)
        {
            handover().await;
        }
        let Ok(_permit) = shared.permits.acquire().await else {
            shared.finish(&action.id, false);
            continue;
        };
        let expected = generation.clone().ok().flatten();
        progress(Progress::Started(action.clone()));
        let started = Instant::now();
        let result = match &client {
            Some(client) => {
                execute::run_as(client, &action, expected, shared.mandate.as_ref(), timeouts).await
            }
            None => Err(ExecError::NoProfile {
                id: format!("{} (neuron {} is not in the fleet)", action.id, action.neuron),
            }),
        };
        let outcome = match result {
            Ok(next) => {
                generation = Ok(Some(next));
                Outcome::Done { elapsed: started.elapsed() }
            }
            Err(error) => {
                if error.is_conflict() || error.is_fenced() {
                    report.conflicts.push(action.id.clone());
                }
                generation = error.generation_after(expected).map(Some).ok_or_else(|| {
                    format!("{} left {}'s state unknown; the next plan decides", action.id, action.neuron)
                });
                Outcome::Failed { error: error.to_string() }
            }
        };
        shared.finish(&action.id, matches!(outcome, Outcome::Done { .. }));
        progress(Progress::Finished(action.clone(), outcome.clone()));
        report.outcomes.push((action.id, outcome));
    }
    report
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::extract::Query;
    use axum::routing::{get, post};
    use plans::fleet::Profile;
    use plans::plan::Reason;
    use plans::topology::{LoadedModel, ModelState};
    use plans::wire::{LifecycleResponse, LoadRequest, UnloadRequest};

    use super::*;

    /// What the fake neurons saw, in order: `"load q"`, `"ready q"`, `"unload b"`.
    type Seen = Arc<Mutex<Vec<String>>>;

    fn loaded(model: &str) -> LoadedModel {
        LoadedModel {
            id: model.to_owned(),
            harness: "sim".into(),
            status: ModelState::Loaded,
            devices: vec![0],
            vram_mb: 1000,
            ram_mb: 0,
            last_used_unix_ms: 0,
            in_flight: 0,
            profile: None,
            load_duration_ms: None,
            error: None,
        }
    }

    /// A neuron named `name` whose loads take `load_ms` to become ready (or fail when `fails`).
    async fn fake_neuron(name: &'static str, load_ms: u64, fails: bool, seen: Seen) -> Arc<NeuronClient> {
        let load = {
            let seen = seen.clone();
            move |axum::Json(request): axum::Json<LoadRequest>| async move {
                seen.lock().expect("lock").push(format!("load {name}"));
                let model = LoadedModel { status: ModelState::Loading, ..loaded(&request.model) };
                axum::Json(LifecycleResponse { generation: 2, model: Some(model) })
            }
        };
        let wait = {
            let seen = seen.clone();
            move |Query(query): Query<BTreeMap<String, String>>| async move {
                tokio::time::sleep(Duration::from_millis(load_ms)).await;
                seen.lock().expect("lock").push(format!("ready {name}"));
                let status = if fails { ModelState::Failed } else { ModelState::Loaded };
                axum::Json(LoadedModel { status, ..loaded(&query["model"]) })
            }
        };
        let unload = move |axum::Json(_): axum::Json<UnloadRequest>| async move {
            seen.lock().expect("lock").push(format!("unload {name}"));
            axum::Json(LifecycleResponse { generation: 2, model: None })
        };
        let app = axum::Router::new()
            .route("/models/load", post(load))
            .route("/models/wait", get(wait))
            .route("/models/unload", post(unload));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Arc::new(NeuronClient::new(name, &endpoint, None, reqwest::Client::new()))
    }

    fn action(id: &str, kind: ActionKind, neuron: &str, after: &[&str]) -> Action {
        Action {
            id: id.into(),
            kind,
            model: "coder".into(),
            neuron: neuron.into(),
            devices: vec![0],
            vram_mb: 1000,
            ram_mb: 0,
            profile: Some(Profile {
                harness: "sim".into(),
                source: "coder.gguf".into(),
                quant: None,
                ctx_size: None,
                args: Vec::new(),
            }),
            from_profile: None,
            from_devices: Vec::new(),
            reason: Reason::Drain { neuron: "b".into(), replaced_by: Some("q".into()) },
            after: after.iter().map(|id| (*id).to_owned()).collect(),
            if_generation: 1,
        }
    }

    /// A move off draining `b`: load on `q`, then unload on `b` once `q`'s copy is ready.
    async fn apply_move(load_fails: bool, parallelism: usize, hand_over: bool) -> (ApplyReport, Vec<String>) {
        let seen = Seen::default();
        let mut clients = crate::control::poller::Clients::new();
        clients.insert("b".into(), fake_neuron("b", 0, false, seen.clone()).await);
        clients.insert("q".into(), fake_neuron("q", 300, load_fails, seen.clone()).await);
        let plan = Plan {
            actions: vec![
                action("a1", ActionKind::Load, "q", &[]),
                action("a2", ActionKind::Unload, "b", &["a1"]),
            ],
            ..Plan::default()
        };
        let timeouts = ExecTimeouts { call: Duration::from_secs(5), ready: Duration::from_secs(5) };
        let handover: Option<Handover> = hand_over.then(|| {
            let seen = seen.clone();
            Arc::new(move || {
                seen.lock().expect("lock").push("handover".to_owned());
                Box::pin(async {}) as Pin<Box<dyn Future<Output = ()> + Send>>
            }) as Handover
        });
        let report =
            apply_handing_over(&plan, &clients, parallelism, timeouts, None, Arc::new(|_| {}), handover)
                .await;
        let seen = seen.lock().expect("lock").clone();
        (report, seen)
    }

    #[tokio::test]
    async fn an_action_waits_for_what_it_names_on_another_neuron() {
        // With one permit, the unload's chain (b sorts first) must not hold it while it waits.
        for parallelism in [1, 4] {
            let (report, seen) = apply_move(false, parallelism, false).await;
            assert!(report.succeeded(), "{:?}", report.outcomes);
            assert_eq!(seen, ["load q", "ready q", "unload b"], "parallelism {parallelism}");
        }
    }

    #[tokio::test]
    async fn the_daemon_hands_a_move_over_after_the_new_copy_is_ready_and_before_the_unload() {
        let (report, seen) = apply_move(false, 1, true).await;
        assert!(report.succeeded(), "{:?}", report.outcomes);
        assert_eq!(seen, ["load q", "ready q", "handover", "unload b"]);
        // Not for a failed move: the unload is skipped, nothing to hand over.
        let (_, seen) = apply_move(true, 1, true).await;
        assert_eq!(seen, ["load q", "ready q"]);
    }

    #[tokio::test]
    async fn a_failed_load_on_one_neuron_skips_the_unload_on_another() {
        let (report, seen) = apply_move(true, 2, false).await;
        assert_eq!(seen, ["load q", "ready q"]);
        let outcomes: Vec<&Outcome> = report.outcomes.iter().map(|(_, o)| o).collect();
        assert!(matches!(outcomes[0], Outcome::Failed { .. }), "{outcomes:?}");
        assert_eq!(outcomes[1], &Outcome::Skipped { because: "a1 did not complete".into() });
    }
}
