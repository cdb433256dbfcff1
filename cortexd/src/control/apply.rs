//! Applying a plan: actions run in dependency order, one at a time per neuron, neurons in
//! parallel up to a bound. A failed action skips what depends on it; independent branches go on.
//!
//! Preconditions travel with the chain: each action on a neuron carries the generation the plan
//! expects after the previous action of the chain (its own changes, never re-read from the
//! neuron), so another actor's change in between is a 409 and a re-plan, never absorbed. When a
//! failure leaves the neuron's generation unknown, the rest of that neuron's chain is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plans::plan::{Action, ActionKind, Plan};
use tokio::sync::Semaphore;

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
    // Actions are independent across neurons; within a neuron they run in plan order, which
    // is a topological order of the plan's DAG.
    let mut chains: BTreeMap<String, Vec<Action>> = BTreeMap::new();
    for action in &plan.actions {
        chains.entry(action.neuron.clone()).or_default().push(action.clone());
    }
    let permits = Arc::new(Semaphore::new(parallelism.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (neuron, chain) in chains {
        let client = clients.get(&neuron).cloned();
        let permits = permits.clone();
        let progress = progress.clone();
        let mandate = mandate.clone();
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return ChainReport { outcomes: Vec::new(), conflicts: Vec::new() };
            };
            run_chain(client, chain, timeouts, mandate.as_ref(), progress.as_ref()).await
        });
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

/// Run one neuron's actions in order, chaining the generation precondition.
async fn run_chain(
    client: Option<Arc<NeuronClient>>,
    chain: Vec<Action>,
    timeouts: ExecTimeouts,
    mandate: Option<&Mandate>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> ChainReport {
    let mut report = ChainReport { outcomes: Vec::with_capacity(chain.len()), conflicts: Vec::new() };
    let mut not_done: BTreeSet<String> = BTreeSet::new();
    // The plan's precondition holds for the first action; after that, the generation the
    // previous action of the chain left behind. `Err` once nobody can say.
    let mut generation: Result<Option<u64>, String> = Ok(chain.first().map(|a| a.if_generation));
    for action in chain {
        let blocked =
            action.after.iter().find(|id| not_done.contains(*id)).map(|b| format!("{b} did not complete"));
        if let Some(because) = blocked.or_else(|| generation.clone().err()) {
            let outcome = Outcome::Skipped { because };
            not_done.insert(action.id.clone());
            progress(Progress::Finished(action.clone(), outcome.clone()));
            report.outcomes.push((action.id, outcome));
            continue;
        }
        let expected = generation.clone().ok().flatten();
        progress(Progress::Started(action.clone()));
        let started = Instant::now();
        let result = match &client {
            Some(client) => execute::run_as(client, &action, expected, mandate, timeouts).await,
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
                not_done.insert(action.id.clone());
                if error.is_conflict() || error.is_fenced() {
                    report.conflicts.push(action.id.clone());
                }
                generation = error.generation_after(expected).map(Some).ok_or_else(|| {
                    format!("{} left {}'s state unknown; the next plan decides", action.id, action.neuron)
                });
                Outcome::Failed { error: error.to_string() }
            }
        };
        progress(Progress::Finished(action.clone(), outcome.clone()));
        report.outcomes.push((action.id, outcome));
    }
    report
}
