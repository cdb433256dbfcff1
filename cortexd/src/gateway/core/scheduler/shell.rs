//! The scheduler's shell: it feeds arrivals, completions, observations and finished loads
//! into the pure state machine ([`crate::gateway::core::scheduler::machine`]), runs the loads
//! it asks for (placed by the planner's `place_one_with`, the same eviction choice as the
//! reconciler's), and hands each request its [`Permit`] (the copy it may use) — or its
//! rejection — when one is decided.
//!
//! The scheduler owns what it reads (the fleet in force, the poller's observations, the
//! daemon's limits): it is built once by the daemon and shared as an `Arc`, and nothing in it
//! knows the gateway's handlers or their state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use plans::fleet::Fleet;
use plans::plan::{Activity, Dimension, Placement, PlanOptions, place_one_with};
use plans::topology::ModelState;
use tokio::sync::{Notify, oneshot, watch};

use crate::config::GatewayConfig;
use crate::control::authority::{Authority, Mandate};
use crate::control::backoff::{Backoff, BackoffPolicy};
use crate::control::decisions::{Decisions, Part, Record, Resident};
use crate::control::execute::{self, ExecTimeouts};
use crate::control::neuron_client::NeuronError;
use crate::control::poller::{Observed, PollerHandle, now_unix_ms};
use crate::control::status::{Contention, QueueStatus};
use crate::gateway::core::affinity::Key;
use crate::gateway::core::error::ApiError;
use crate::gateway::core::scheduler::machine::{
    self, Arrival, Command, LoadResult, Machine, Placed, Placer, Rejection, Remote, RequestId, Settings, Tag,
};
use crate::gateway::core::timeline::LoadSeen;

/// The answer to an arrival: admitted now, or a place in the model's queue.
pub enum Arrived {
    Now(Permit),
    Queued(LoadTicket),
}

/// A request's place in its model's queue. Dropping it (the client left) leaves the queue.
pub struct LoadTicket {
    scheduler: Arc<Scheduler>,
    request: RequestId,
    model: String,
    session: Option<Key>,
    receiver: Option<oneshot::Receiver<Result<Permit, ApiError>>>,
}

impl LoadTicket {
    /// Wait until the scheduler admits the request (or refuses it on its own bounds).
    pub async fn wait(mut self) -> Result<Permit, ApiError> {
        let Some(receiver) = self.receiver.take() else {
            return Err(ApiError::Internal("the ticket was already used".into()));
        };
        let permit = receiver
            .await
            .unwrap_or_else(|_| Err(ApiError::Internal("the scheduler dropped a waiting request".into())))?;
        Ok(permit.with_session(self.session))
    }
}

impl Drop for LoadTicket {
    fn drop(&mut self) {
        // Still holding the receiver: the request left before its answer came.
        if self.receiver.is_some() {
            let (request, model) = (self.request, self.model.clone());
            self.scheduler.apply(|inner, placer| {
                inner.waiters.remove(&request);
                ((), inner.machine.cancel(now_unix_ms(), request, &model, placer))
            });
        }
    }
}

/// One admitted request on `model`'s copy on `neuron`; tells the scheduler when it is done
/// (dropped).
pub struct Permit {
    scheduler: Arc<Scheduler>,
    model: String,
    neuron: String,
    /// The request's session key (affinity routing), so that a request re-queued after its copy
    /// went away goes to its session's next copy.
    session: Option<Key>,
}

impl Permit {
    /// The model's fleet id.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The neuron whose copy serves the request.
    pub fn neuron(&self) -> &str {
        &self.neuron
    }

    /// The request's session key, if it has one.
    pub fn session(&self) -> Option<Key> {
        self.session
    }

    fn with_session(mut self, session: Option<Key>) -> Permit {
        self.session = session;
        self
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({} on {})", self.model, self.neuron)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let (model, neuron) = (&self.model, &self.neuron);
        self.scheduler
            .apply(|inner, placer| ((), inner.machine.finish(now_unix_ms(), model, neuron, placer)));
    }
}

/// The scheduler with the requests it has not answered yet. Events come from handlers, permits,
/// tickets, finished loads and the driver task (observations and timers).
pub struct Scheduler {
    inner: Mutex<Inner>,
    /// Failed loads per (model, neuron), under the reconciler's backoff policy, so that a
    /// broken model is not loaded again at every request. Held only for short sections, never
    /// while taking `inner`.
    failures: Mutex<Backoff>,
    policy: BackoffPolicy,
    /// Wakes the driver when the next timer moved earlier than the one it sleeps on.
    wake: Notify,
    driver: OnceLock<()>,
    next_request: AtomicU64,
    /// Cluster mode: the last term whose inherited decisions were looked for.
    adopted_term: AtomicU64,
    /// The queues as of the driver's last gauge tick (about once a second), for the fleet page.
    queues: watch::Sender<Arc<Vec<QueueStatus>>>,
    /// The scheduler's queues and residency for the reconciler's eviction choice, published
    /// with the queues.
    activity: watch::Sender<Activity>,
    /// The desired state in force, for placements and each model's contention settings.
    fleet: watch::Receiver<Arc<Fleet>>,
    /// The observed state, and the poller to ask for a fresh look after a load.
    poller: PollerHandle,
    /// The daemon's queue limits and neuron timeouts.
    limits: Arc<GatewayConfig>,
    /// Cluster mode: who acts, and the other replicas' demand (`None` standalone).
    cluster: Option<ClusterInputs>,
    /// The last load this scheduler ran per (model, neuron), for the timelines of the requests
    /// that waited behind it; bounded by the fleet's placements. Held only for short sections.
    loads: Mutex<HashMap<(String, String), LoadSeen>>,
}

/// What a cluster replica's scheduler reads besides its own inputs. Only the leader loads,
/// evicts and swaps, for every replica's clients: a follower's queues wait for the copies the
/// leader loads (its demand reaches the leader through etcd) and are admitted as they appear.
#[derive(Clone)]
pub struct ClusterInputs {
    /// Whether this replica acts on neurons now, and the mandate its calls carry.
    pub authority: watch::Receiver<Authority>,
    /// The other replicas' demand per model, `oldest_wait_ms` as of when it was read.
    pub remote: watch::Receiver<Arc<BTreeMap<String, QueueStatus>>>,
    /// Where the residency clocks and failed loads are published for the next leader, and
    /// where a previous leader's are found on election.
    pub decisions: Decisions,
}

struct Inner {
    machine: Machine,
    waiters: HashMap<RequestId, oneshot::Sender<Result<Permit, ApiError>>>,
    /// The deadline the driver's timer is set for (`None`: no timer).
    armed: Option<u64>,
}

/// What leaves the lock: answers to deliver and loads to start.
enum Outgoing {
    Admit { sender: oneshot::Sender<Result<Permit, ApiError>>, model: String, neuron: String },
    Reject { sender: Option<oneshot::Sender<Result<Permit, ApiError>>>, model: String, rejection: Rejection },
    Load { model: String, neuron: String, evicts: Vec<String>, placement: Box<Placement> },
}

impl Scheduler {
    /// A scheduler over the fleet in force and the poller's observations, in the mode and
    /// with the queue limits of `limits`, whose failed loads back off under `policy` (the
    /// reconciler's).
    pub fn new(
        fleet: watch::Receiver<Arc<Fleet>>,
        poller: PollerHandle,
        limits: Arc<GatewayConfig>,
        policy: BackoffPolicy,
        cluster: Option<ClusterInputs>,
    ) -> Arc<Self> {
        let in_cluster = cluster.is_some();
        let scheduler = Arc::new(Scheduler {
            inner: Mutex::new(Inner {
                machine: Machine::new(limits.swap_schedule),
                waiters: HashMap::new(),
                armed: None,
            }),
            failures: Mutex::new(Backoff::default()),
            policy,
            wake: Notify::new(),
            driver: OnceLock::new(),
            next_request: AtomicU64::new(1),
            adopted_term: AtomicU64::new(0),
            queues: watch::channel(Arc::new(Vec::new())).0,
            activity: watch::channel(Activity::default()).0,
            fleet,
            poller,
            limits,
            cluster,
            loads: Mutex::new(HashMap::new()),
        });
        // A cluster replica may lead before any client of its own arrives: its driver weighs
        // the other replicas' demand from the start, not from its own first request.
        if in_cluster && tokio::runtime::Handle::try_current().is_ok() {
            scheduler.start();
        }
        scheduler
    }

    /// The last load of `model` on `neuron` this scheduler ran (what a request that waited
    /// for that copy waited behind), if any.
    pub fn last_load(&self, model: &str, neuron: &str) -> Option<LoadSeen> {
        let loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        loads.get(&(model.to_owned(), neuron.to_owned())).cloned()
    }

    /// Note a load as it starts, and when it is done.
    fn note_load(&self, model: &str, neuron: &str, evicts: Option<&[String]>) {
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (model.to_owned(), neuron.to_owned());
        match evicts {
            Some(evicts) => {
                let seen = LoadSeen {
                    neuron: neuron.to_owned(),
                    evicted: evicts.to_vec(),
                    started: Instant::now(),
                    ready: None,
                };
                loads.insert(key, seen);
            }
            None => {
                if let Some(seen) = loads.get_mut(&key) {
                    seen.ready = Some(Instant::now());
                }
            }
        }
    }

    /// The backoff policy of failed loads.
    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }

    /// Cluster mode: `Err(why)` while this replica does not act on neurons (a follower).
    fn acting(&self) -> Result<(), String> {
        let Some(cluster) = &self.cluster else { return Ok(()) };
        match &*cluster.authority.borrow() {
            authority if authority.acts() => Ok(()),
            Authority::Follower { leader: Some(leader), .. } => {
                Err(format!("waiting for the cluster's leader ({leader}) to load it"))
            }
            _ => Err("waiting for the cluster's leader to load it (none leads at the moment)".to_owned()),
        }
    }

    /// The mandate lifecycle calls carry (`None` standalone).
    fn mandate(&self) -> Option<Mandate> {
        self.cluster.as_ref().and_then(|c| c.authority.borrow().mandate().cloned())
    }

    fn fleet(&self) -> Arc<Fleet> {
        self.fleet.borrow().clone()
    }

    fn observed(&self) -> Arc<Observed> {
        self.poller.observed.borrow().clone()
    }

    /// Queue a request for `id` (a fleet id, or a model loaded outside the fleet) on the fleet
    /// in force: admitted now, or a place in its queue; an error when its queue refuses it.
    pub fn arrive(self: &Arc<Self>, fleet: &Fleet, id: String) -> Result<Arrived, ApiError> {
        self.arrive_as(fleet, id, Tag::default())
    }

    /// [`Scheduler::arrive`] for the caller `tag` describes: its priority and key decide its
    /// place in the queue when it must wait.
    pub fn arrive_as(self: &Arc<Self>, fleet: &Fleet, id: String, tag: Tag) -> Result<Arrived, ApiError> {
        self.start();
        let settings = self.settings(fleet, &id);
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let session = tag.session;
        let (sender, receiver) = oneshot::channel();
        let arrival = self.apply(|inner, placer| {
            let (arrival, commands) =
                inner.machine.arrive_as(now_unix_ms(), request, &id, settings, tag, placer);
            if arrival == Arrival::Queued {
                inner.waiters.insert(request, sender);
            }
            (arrival, commands)
        });
        match arrival {
            Arrival::Admitted { neuron } => Ok(Arrived::Now(self.permit(id, neuron).with_session(session))),
            Arrival::Queued => Ok(Arrived::Queued(LoadTicket {
                scheduler: self.clone(),
                request,
                model: id,
                session,
                receiver: Some(receiver),
            })),
            Arrival::Rejected(rejection) => {
                metrics::counter!("cortex_queue_rejections_total", "model" => id.clone(), "reason" => rejection.reason())
                    .increment(1);
                Err(api_error(&id, rejection))
            }
        }
    }

    /// Admit a request that can only go to `model` on `neuron` (it continues a response that
    /// copy made; see [`Machine::arrive_on`]): `None` when that copy does not serve it now.
    pub fn arrive_on(self: &Arc<Self>, model: &str, neuron: &str) -> Option<Permit> {
        self.start();
        let settings = self.settings(&self.fleet(), model);
        let admitted = self
            .apply(|inner, _| (inner.machine.arrive_on(now_unix_ms(), model, neuron, settings), Vec::new()));
        admitted.then(|| self.permit(model.to_owned(), neuron.to_owned()))
    }

    /// The copy of `model` on `neuron` went away under a request (its neuron refused it as gone).
    pub fn lost(self: &Arc<Self>, model: &str, neuron: &str) {
        self.apply(|inner, placer| ((), inner.machine.lost(now_unix_ms(), model, neuron, placer)));
    }

    fn permit(self: &Arc<Self>, model: String, neuron: String) -> Permit {
        Permit { scheduler: self.clone(), model, neuron, session: None }
    }

    /// The contention settings of `model`: the fleet's (model, then `[policy]`), then the
    /// daemon's queue limits.
    fn settings(&self, fleet: &Fleet, model: &str) -> Settings {
        let spec = fleet.model(model);
        let contention = spec.map_or(fleet.policy.contention, |m| m.contention(&fleet.policy));
        let limits = &self.limits;
        Settings {
            max_concurrency: contention.max_concurrency,
            queue_length: contention.queue_length.map_or(limits.max_waiting_per_model, |n| n as usize),
            queue_timeout_ms: contention
                .queue_timeout_ms
                .unwrap_or_else(|| u64::try_from(limits.max_wait.as_millis()).unwrap_or(u64::MAX)),
            max_wait_ms: contention.max_wait(),
            min_residency_ms: contention.min_residency(),
            priority: spec.map_or(0, |m| m.priority),
            routing: contention.routing(),
            load_factor: fleet.policy.affinity_load_factor,
        }
    }

    /// A read-only view of the queues (models with requests waiting or in flight), updated by
    /// the driver about once a second, and only when they changed.
    pub fn queues(&self) -> watch::Receiver<Arc<Vec<QueueStatus>>> {
        self.queues.subscribe()
    }

    /// What the scheduler knows for the planner (queued requests, residency), updated with the
    /// queues: the reconciler plans with it (`ReconcileConfig::activity`).
    pub fn activity(&self) -> watch::Receiver<Activity> {
        self.activity.subscribe()
    }

    fn publish_queues(&self, queues: &[QueueStatus], activity: Activity) {
        self.activity.send_if_modified(|current| {
            let modified = *current != activity;
            *current = activity;
            modified
        });
        self.queues.send_if_modified(|current| {
            let modified = current.as_slice() != queues;
            if modified {
                *current = Arc::new(queues.to_vec());
            }
            modified
        });
    }

    /// The refusal for `(model, neuron)` while its last failed load backs off.
    fn backing_off(&self, model: &str, neuron: &str) -> Option<String> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        let entry = failures.entry(model, neuron).filter(|e| e.until > now)?;
        let wait_s = (entry.until - now).as_secs_f64().ceil().max(1.0);
        Some(format!(
            "{model} cannot be loaded on {neuron} now: the last load failed: {}, next try in {wait_s}s",
            entry.error
        ))
    }

    fn record(&self, model: &str, neuron: &str, failure: Option<String>) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match failure {
            Some(error) => {
                failures.failed(model, neuron, error, self.policy, tokio::time::Instant::now());
            }
            None => failures.succeeded(model, neuron),
        }
        if let Some(cluster) = &self.cluster {
            cluster.decisions.set_loads(failures.export());
        }
    }

    /// Cluster mode, at the first event of a new term: the record the previous leader left, its
    /// failed loads adopted (the caller adopts the residency clocks under the machine's lock).
    fn take_inherited(&self) -> Option<(u64, Arc<Record>)> {
        let cluster = self.cluster.as_ref()?;
        let term = cluster.authority.borrow().mandate()?.term;
        if self.adopted_term.swap(term, Ordering::Relaxed) == term {
            return None;
        }
        let record = cluster.decisions.to_adopt(Part::Scheduler, term)?;
        let loads = {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            failures.inherit(&record.loads, tokio::time::Instant::now());
            failures.export()
        };
        cluster.decisions.set_loads(loads);
        tracing::info!(
            term,
            copies = record.resident.len(),
            failed_loads = record.loads.len(),
            "cluster: continuing the previous leader's residency clocks and backoff"
        );
        Some((term, record))
    }

    /// Cluster mode: the residency clocks, for the record the next leader inherits.
    fn recorded_residency(&self, machine: &Machine) -> Option<Vec<Resident>> {
        self.cluster.as_ref()?;
        let resident = machine.residency().map(|((model, neuron), since)| Resident {
            model: model.clone(),
            neuron: neuron.clone(),
            since_unix_ms: since,
        });
        Some(resident.collect())
    }

    /// Queues, swaps and rejections, for `cortex status`.
    pub fn contention(&self) -> Contention {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Contention {
            queues: inner.machine.status(now_unix_ms()),
            swaps: inner.machine.swaps().clone(),
            rejections: inner.machine.rejections().iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    /// Run one event on the scheduler (with a placer over the current fleet and topology),
    /// then deliver what it decided, outside the lock.
    fn apply<R>(
        self: &Arc<Self>,
        event: impl FnOnce(&mut Inner, &mut FleetPlacer<'_>) -> (R, Vec<Command<Placement>>),
    ) -> R {
        let (fleet, observed) = (self.fleet(), self.observed());
        let acting = self.acting();
        let inherited = self.take_inherited();
        let mut placer = FleetPlacer { fleet: &fleet, observed: &observed, scheduler: self, acting };
        let (result, outgoing, rearm, resident) = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let resident = inherited.as_ref().and_then(|(_, record)| {
                inner.machine.inherit_residency(now_unix_ms(), record.clocks());
                self.recorded_residency(&inner.machine)
            });
            let (result, commands) = event(&mut inner, &mut placer);
            let outgoing: Vec<Outgoing> = commands.into_iter().filter_map(|c| inner.take(c)).collect();
            for (model, outcome) in inner.machine.take_outcomes() {
                metrics::counter!("cortex_affinity_routing_total", "model" => model, "outcome" => outcome.label())
                    .increment(1);
            }
            (result, outgoing, inner.rearm(), resident)
        };
        if let (Some(cluster), Some((term, _))) = (&self.cluster, inherited) {
            cluster.decisions.set_resident(resident.unwrap_or_default());
            cluster.decisions.adopted(Part::Scheduler, term);
        }
        // Most events (a request admitted at once, one finishing) leave the next deadline
        // where it was: the driver sleeps on, and no task is woken per request.
        if rearm {
            self.wake.notify_one();
        }
        for out in outgoing {
            self.deliver(out);
        }
        result
    }

    /// Start the driver task once: from the first request (a runtime is running then), or at
    /// once in a cluster.
    fn start(self: &Arc<Self>) {
        self.driver.get_or_init(|| {
            self.observe();
            tokio::spawn(drive(self.clone()));
        });
    }

    fn deliver(self: &Arc<Self>, out: Outgoing) {
        match out {
            Outgoing::Admit { sender, model, neuron } => {
                // A client that left drops the permit right here.
                let _ = sender.send(Ok(self.permit(model, neuron)));
            }
            Outgoing::Reject { sender, model, rejection } => {
                metrics::counter!("cortex_queue_rejections_total", "model" => model.clone(), "reason" => rejection.reason())
                    .increment(1);
                if let Some(sender) = sender {
                    let _ = sender.send(Err(api_error(&model, rejection)));
                }
            }
            Outgoing::Load { model, neuron, evicts, placement } => {
                if !evicts.is_empty() {
                    metrics::counter!("cortex_swaps_total", "neuron" => neuron.clone()).increment(1);
                    tracing::info!(%model, %neuron, evicting = ?evicts, "swap");
                }
                self.note_load(&model, &neuron, Some(&evicts));
                tokio::spawn(run_load(self.clone(), model, neuron, placement));
            }
        }
    }
}

impl Inner {
    /// Whether the scheduler's next deadline is earlier than the driver's timer. A deadline
    /// that moved later needs no wake-up: the driver's timer fires, finds nothing due, and is
    /// set again.
    fn rearm(&self) -> bool {
        match (self.machine.wake_at(), self.armed) {
            (Some(next), Some(armed)) => next < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Pair a command with the waiting request's answer channel.
    fn take(&mut self, command: Command<Placement>) -> Option<Outgoing> {
        match command {
            Command::Admit { request, model, neuron, .. } => match self.waiters.remove(&request) {
                Some(sender) => Some(Outgoing::Admit { sender, model, neuron }),
                // Nobody to answer (cannot happen: a leaving client is cancelled under this
                // lock); give the slot back rather than leak it.
                None => {
                    self.machine.release(&model, &neuron);
                    None
                }
            },
            Command::Reject { request, model, rejection } => {
                Some(Outgoing::Reject { sender: self.waiters.remove(&request), model, rejection })
            }
            Command::Load { model, neuron, evicts, placement } => {
                Some(Outgoing::Load { model, neuron, evicts, placement: Box::new(placement) })
            }
        }
    }
}

/// The client's error for a refused request, in terms it can act on.
fn api_error(model: &str, rejection: Rejection) -> ApiError {
    match rejection {
        Rejection::QueueFull { retry_after_s } => ApiError::Overloaded {
            message: format!("too many requests are waiting for {model}; try again shortly"),
            retry_after_s,
        },
        Rejection::Timeout { waited_ms, why, retry_after_s } => ApiError::Overloaded {
            message: format!(
                "{model}: waited {:.1} s in the queue (its queue_timeout): {why}",
                waited_ms as f64 / 1000.0
            ),
            retry_after_s,
        },
        Rejection::Unplaceable { why, retry_after_s } => ApiError::Overloaded { message: why, retry_after_s },
        Rejection::LoadFailed { why } => ApiError::Upstream(why),
    }
}

/// The planner, as the scheduler's placer: `place_one_with` over the fleet and topology in
/// force, weighing the scheduler's queues and residency.
struct FleetPlacer<'a> {
    fleet: &'a Fleet,
    observed: &'a Observed,
    /// For the load failures backing off.
    scheduler: &'a Scheduler,
    /// `Err(why)` on a cluster follower: it never loads; the leader does.
    acting: Result<(), String>,
}

impl Placer<Placement> for FleetPlacer<'_> {
    fn place(&mut self, model: &str, activity: &Activity) -> Placed<Placement> {
        if let Err(why) = &self.acting {
            return Placed::Later { until: None, why: why.clone() };
        }
        let options = PlanOptions { now_unix_ms: now_unix_ms(), prune: false };
        match place_one_with(self.fleet, &self.observed.topology, model, &options, activity) {
            Ok(placement) if let Some(why) = self.scheduler.backing_off(model, &placement.neuron) => {
                Placed::Never { why }
            }
            Ok(placement) => Placed::Load {
                neuron: placement.neuron.clone(),
                evicts: placement.evictions.iter().map(|a| a.model.clone()).collect(),
                placement,
            },
            Err(infeasible)
                if matches!(infeasible.dimension, Dimension::Residency | Dimension::InTransition) =>
            {
                Placed::Later { until: None, why: infeasible.detail }
            }
            // Just started: a neuron of the fleet has not been polled yet.
            Err(infeasible)
                if infeasible.dimension == Dimension::NeuronUnreachable
                    && self
                        .fleet
                        .neurons
                        .iter()
                        .any(|n| self.observed.topology.neuron(&n.name).is_none()) =>
            {
                let why = format!("waiting for the first poll of the fleet's neurons: {}", infeasible.detail);
                Placed::Later { until: None, why }
            }
            Err(infeasible) => {
                Placed::Never { why: format!("{model} cannot be placed now: {}", infeasible.detail) }
            }
        }
    }
}

impl Scheduler {
    /// Feed the observed copies (on reachable neurons) to the scheduler.
    fn observe(self: &Arc<Self>) {
        let observed = self.observed();
        let fleet = self.fleet();
        let mut copies = Vec::new();
        let mut models = BTreeSet::new();
        for neuron in observed.topology.neurons.iter().filter(|n| n.reachable) {
            for model in &neuron.models {
                let seen = match model.status {
                    ModelState::Loaded => machine::Observed::Ready,
                    ModelState::Loading => machine::Observed::Loading,
                    ModelState::Unloading => machine::Observed::Unloading,
                    ModelState::Failed => machine::Observed::Failed,
                };
                copies.push((model.id.clone(), neuron.name.clone(), seen));
                models.insert(model.id.clone());
            }
        }
        let leaving: BTreeSet<String> = fleet
            .neurons
            .iter()
            .filter(|n| n.state == plans::fleet::NeuronState::Draining)
            .map(|n| n.name.clone())
            .collect();
        self.apply(|inner, placer| {
            inner.machine.set_leaving(leaving);
            // Residents learn their settings too: a swap weighs the evicted model's min_residency.
            for model in &models {
                inner.machine.configure(model, self.settings(&fleet, model));
            }
            ((), inner.machine.observe(now_unix_ms(), &copies, placer))
        });
    }
}

/// The scheduler's clock and eyes: observations as the poller publishes them, timers when due,
/// and the queue gauges once a second.
async fn drive(scheduler: Arc<Scheduler>) {
    let mut observed = scheduler.poller.observed.clone();
    let (mut authority, mut remote) = match &scheduler.cluster {
        Some(cluster) => (Some(cluster.authority.clone()), Some(cluster.remote.clone())),
        None => (None, None),
    };
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    let mut shown = Shown::default();
    loop {
        let wake_at = {
            let mut inner = scheduler.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.armed = inner.machine.wake_at();
            inner.armed
        };
        let due = wake_at.map(|at| Duration::from_millis(at.saturating_sub(now_unix_ms())));
        let timer = async {
            match due {
                Some(due) => tokio::time::sleep(due).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = observed.changed() => {
                if changed.is_err() {
                    return; // the poller stopped: the daemon is shutting down
                }
                scheduler.observe();
            }
            () = scheduler.wake.notified() => {}
            () = timer => scheduler.apply(|inner, placer| ((), inner.machine.tick(now_unix_ms(), placer))),
            _ = gauges.tick() => publish_gauges(&scheduler, &mut shown),
            // Became the leader (or stopped being it): decide again what waits.
            changed = changed(authority.as_mut()) => match changed {
                Ok(()) => scheduler.apply(|inner, placer| ((), inner.machine.tick(now_unix_ms(), placer))),
                Err(()) => authority = None,
            },
            changed = changed(remote.as_mut()) => match changed {
                Ok(()) => scheduler.feed_remote(),
                Err(()) => remote = None,
            },
        }
    }
}

/// The next change of an optional channel (never, without one); `Err` once its sender is gone.
async fn changed<T>(receiver: Option<&mut watch::Receiver<T>>) -> Result<(), ()> {
    match receiver {
        Some(receiver) => receiver.changed().await.map_err(drop),
        None => std::future::pending().await,
    }
}

impl Scheduler {
    /// Hand the other replicas' demand to the machine (it weighs it only while this replica
    /// acts; a follower's placer never loads).
    fn feed_remote(self: &Arc<Self>) {
        let Some(cluster) = &self.cluster else { return };
        let now = now_unix_ms();
        let fleet = self.fleet();
        let demand: BTreeMap<String, Remote> = cluster
            .remote
            .borrow()
            .values()
            .map(|queue| {
                let remote = Remote {
                    waiting: queue.waiting,
                    oldest_arrived: now.saturating_sub(queue.oldest_wait_ms),
                    in_flight: queue.in_flight,
                };
                (queue.model.clone(), remote)
            })
            .collect();
        self.apply(|inner, placer| {
            for model in demand.keys() {
                inner.machine.configure(model, self.settings(&fleet, model));
            }
            ((), inner.machine.remote(now, demand, placer))
        });
    }
}

/// The series the driver has published, so that each is started at zero once and a queue
/// that emptied is set back to zero.
#[derive(Default)]
struct Shown {
    queues: BTreeSet<String>,
    models: BTreeSet<String>,
    neurons: BTreeSet<String>,
}

/// `cortex_queue_depth` and `cortex_queue_oldest_wait_seconds` per model with a queue; the
/// series of every known model and neuron start at zero (so dashboards and alerts see them
/// before the first swap or rejection).
fn publish_gauges(scheduler: &Scheduler, shown: &mut Shown) {
    let (queues, models, activity, resident) = {
        let inner = scheduler.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let models = inner.machine.models().map(str::to_owned).collect::<Vec<_>>();
        let resident = scheduler.recorded_residency(&inner.machine);
        (inner.machine.status(now_unix_ms()), models, inner.machine.activity(), resident)
    };
    scheduler.publish_queues(&queues, activity);
    if let (Some(cluster), Some(resident)) = (&scheduler.cluster, resident) {
        cluster.decisions.set_resident(resident);
    }
    for model in models {
        if shown.models.insert(model.clone()) {
            metrics::gauge!("cortex_queue_depth", "model" => model.clone()).set(0.0);
            metrics::gauge!("cortex_queue_oldest_wait_seconds", "model" => model.clone()).set(0.0);
            for reason in ["queue_full", "queue_timeout", "unplaceable", "load_failed"] {
                metrics::counter!("cortex_queue_rejections_total", "model" => model.clone(), "reason" => reason)
                    .increment(0);
            }
        }
    }
    for neuron in &scheduler.observed().topology.neurons {
        if shown.neurons.insert(neuron.name.clone()) {
            metrics::counter!("cortex_swaps_total", "neuron" => neuron.name.clone()).increment(0);
        }
    }
    let mut now_shown = BTreeSet::new();
    for queue in &queues {
        metrics::gauge!("cortex_queue_depth", "model" => queue.model.clone()).set(queue.waiting as f64);
        metrics::gauge!("cortex_queue_oldest_wait_seconds", "model" => queue.model.clone())
            .set(queue.oldest_wait_ms as f64 / 1000.0);
        now_shown.insert(queue.model.clone());
    }
    for gone in shown.queues.difference(&now_shown) {
        metrics::gauge!("cortex_queue_depth", "model" => gone.clone()).set(0.0);
        metrics::gauge!("cortex_queue_oldest_wait_seconds", "model" => gone.clone()).set(0.0);
    }
    shown.queues = now_shown;
}

/// Run one `Command::Load`: evict, load, wait for ready, then tell the scheduler.
async fn run_load(scheduler: Arc<Scheduler>, model: String, neuron: String, placement: Box<Placement>) {
    let started = Instant::now();
    let result = execute_placement(&scheduler, &placement).await;
    // A conflict (another actor changed the neuron) or a lost term is not the model's failure.
    if !result.as_ref().is_err_and(|e| e.is_conflict() || e.is_fenced()) {
        scheduler.record(&model, &neuron, result.as_ref().err().map(ToString::to_string));
    }
    let outcome = match result {
        Ok(()) => {
            metrics::counter!("cortex_cold_starts_total", "model" => model.clone(), "neuron" => neuron.clone())
                .increment(1);
            metrics::histogram!("cortex_cold_start_duration_seconds", "model" => model.clone())
                .record(started.elapsed().as_secs_f64());
            tracing::info!(%model, %neuron, elapsed_ms = started.elapsed().as_millis(), "load done");
            scheduler.note_load(&model, &neuron, None);
            LoadResult::Ready
        }
        Err(error) if error.is_conflict() || error.is_fenced() => LoadResult::Retry,
        Err(error) => {
            tracing::warn!(%model, %neuron, %error, "load failed");
            LoadResult::Failed(error.to_string())
        }
    };
    // The next placement must see what this one changed.
    scheduler.poller.refreshed().await;
    scheduler.apply(|inner, placer| {
        ((), inner.machine.load_done(now_unix_ms(), &model, &neuron, outcome, placer))
    });
}

async fn execute_placement(scheduler: &Scheduler, placement: &Placement) -> Result<(), execute::ExecError> {
    let observed = scheduler.observed();
    let Some(client) = observed.clients.get(&placement.neuron) else {
        return Err(execute::ExecError::Neuron(NeuronError::Refused {
            neuron: placement.neuron.clone(),
            status: 404,
            code: "unknown_neuron".into(),
            message: "the fleet no longer names this neuron".into(),
        }));
    };
    let timeouts = ExecTimeouts { call: scheduler.limits.neuron_timeout, ready: scheduler.limits.max_wait };
    let mandate = scheduler.mandate();
    let mut generation = Some(placement.load.if_generation);
    for eviction in &placement.evictions {
        generation = Some(execute::run_as(client, eviction, generation, mandate.as_ref(), timeouts).await?);
        metrics::counter!("cortex_evictions_total", "reason" => eviction.reason.code()).increment(1);
    }
    execute::run_as(client, &placement.load, generation, mandate.as_ref(), timeouts).await.map(drop)
}
