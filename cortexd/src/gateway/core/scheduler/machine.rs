//! The swap scheduler (spec §7, "Contention"): per-model bounded queues, a per-copy
//! concurrency limit, and for every contended neuron an elevator that decides when to swap.
//!
//! A pure state machine over `(now, event)`: no clock, no IO, no async, so its decisions are
//! table-tested in virtual time (`machine/tests.rs`). `shell.rs` beside it is its shell: it feeds
//! arrivals, completions, observations and finished loads in, and carries the [`Command`]s out.
//!
//! The schedule: while a model is resident its queued requests are served. A waiting model
//! whose load would evict another one (a *swap*) gets the neuron when the resident has nothing
//! left to do (no queue, nothing in flight through cortex, nothing served for a moment: the
//! idle grace, `IDLE_GRACE_MS`), or once its own oldest request has
//! waited `max_wait`, and never before the resident has been loaded for `min_residency`. The
//! longest-waiting model goes next (`priority` breaks ties), one lifecycle change per neuron at
//! a time, and every request that waited for a load is admitted together when it is ready.
//! From the moment a swap is decided the evicted model takes no new request (they queue for
//! its turn back), and the unload starts once the requests cortex sent it have finished (at
//! most `DRAIN_WAIT_MS`), so an eviction never cuts a running request short.
//! `Mode::Arrival` switches the schedule off (swap on demand, in arrival order) for comparison.
//!
//! A neuron the fleet drains (`state = "draining"`) keeps serving its copies until a copy of
//! the same model is ready elsewhere; from then on no new request goes to it (they wait for the
//! replacement's room), and the reconciler unloads it once the requests there have finished.
//!
//! Among a model's ready copies a request goes to the one its session is bound to (affinity
//! routing, `crate::gateway::core::affinity`: rendezvous order of its key, past copies loaded
//! above the load factor), or with `routing = "least_busy"` (or no key) to the one with the
//! fewest requests in flight; the live sessions of each copy reach the planner.
//!
//! Within a model's queue, requests are served by their callers' priority (a fleet key's
//! `priority`: interactive before batch) and, among callers of one priority, by deficit round
//! robin over their keys (`fair.rs`, the one seam for queue order). Demand weighs by class: a
//! model whose callers have the higher priority is loaded first, and callers of a lower
//! priority do not take the neuron from a resident that higher ones are queued for.

mod fair;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use plans::fleet::{LoadFactor, Routing};
use plans::plan::Activity;

use crate::control::status::QueueStatus;
use crate::gateway::core::affinity::{self, Key, Outcome, Sessions};
use crate::gateway::core::scheduler::machine::fair::{FairQueue, Waiter};

pub use fair::Tag;

pub type RequestId = u64;

/// Whether the elevator runs, or swaps happen on demand in arrival order (`[gateway]
/// swap_schedule` in cortex.toml).
pub use crate::config::SwapSchedule as Mode;

/// One model's contention settings, resolved (fleet model → `[policy]` → daemon defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Requests in flight per copy; `None`: unlimited.
    pub max_concurrency: Option<u32>,
    pub queue_length: usize,
    pub queue_timeout_ms: u64,
    pub max_wait_ms: u64,
    pub min_residency_ms: u64,
    pub priority: i64,
    /// How a request chooses among the model's ready copies.
    pub routing: Routing,
    pub load_factor: LoadFactor,
}

impl Settings {
    /// The `Retry-After` a refused client gets: about one turn of the schedule.
    fn retry_after_s(&self) -> u64 {
        (self.max_wait_ms.min(self.queue_timeout_ms) / 1000).clamp(1, 60)
    }
}

/// What a placement query answers: the shell asks the planner (`place_one_with`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placed<P> {
    /// Load on `neuron`, evicting the models `evicts` there first.
    Load { neuron: String, evicts: Vec<String>, placement: P },
    /// It fits later (a copy is within its minimum residency, loading or unloading): ask again
    /// at `until`, or on the next event.
    Later { until: Option<u64>, why: String },
    /// It cannot be placed as the fleet stands.
    Never { why: String },
}

/// Answers where a model would be loaded now, given what the scheduler knows.
pub trait Placer<P> {
    fn place(&mut self, model: &str, activity: &Activity) -> Placed<P>;
}

/// Why a request was refused. Each maps to a status (503 with `Retry-After` for the queue's
/// bounds, as spec §7 says; 502 for a failed load) in the route's dialect at the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The model's queue holds `queue_length` requests already.
    QueueFull { retry_after_s: u64 },
    /// The request waited `queue_timeout`; `why` says what it was waiting for.
    Timeout { waited_ms: u64, why: String, retry_after_s: u64 },
    /// No neuron can take the model as the fleet stands.
    Unplaceable { why: String, retry_after_s: u64 },
    /// The load the request waited for failed.
    LoadFailed { why: String },
}

impl Rejection {
    /// The label of `cortex_queue_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::QueueFull { .. } => "queue_full",
            Rejection::Timeout { .. } => "queue_timeout",
            Rejection::Unplaceable { .. } => "unplaceable",
            Rejection::LoadFailed { .. } => "load_failed",
        }
    }
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<P> {
    /// Send the request to the model's copy on `neuron` (counted in flight until `finish`).
    Admit {
        request: RequestId,
        model: String,
        neuron: String,
        waited_ms: u64,
    },
    Reject {
        request: RequestId,
        model: String,
        rejection: Rejection,
    },
    /// Evict `evicts` on `neuron`, then load `model` there; report with `load_done`.
    Load {
        model: String,
        neuron: String,
        evicts: Vec<String>,
        placement: P,
    },
}

/// The answer to an arrival.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arrival {
    Admitted {
        neuron: String,
    },
    /// In the queue: a later `Admit` or `Reject` command names it.
    Queued,
    Rejected(Rejection),
}

/// A copy's lifecycle as observed on its neuron.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Ready,
    Loading,
    Unloading,
    Failed,
}

/// How a load ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadResult {
    Ready,
    /// The fleet changed under the load (a stale generation): place again.
    Retry,
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyState {
    Ready { since: u64 },
    Moving,
    Failed,
}

#[derive(Clone, Copy, Debug)]
struct Copy {
    state: CopyState,
    /// Chosen for eviction by a swap: no request is routed to it any more.
    draining: bool,
}

/// A swap decided on a neuron, waiting for the evicted models' requests to finish.
#[derive(Clone, Debug)]
struct Drain {
    model: String,
    evicts: Vec<String>,
    since: u64,
}

#[derive(Clone, Debug)]
struct Queue {
    settings: Settings,
    /// Served by priority, then fairly among keys (`fair.rs`).
    waiting: FairQueue,
    /// What the queue waits for, for the timeout message.
    why: String,
}

/// The scheduler's whole state. See the module documentation for the schedule.
#[derive(Debug, Default)]
pub struct Machine {
    mode: Mode,
    queues: BTreeMap<String, Queue>,
    /// `(model, neuron)` → the copy there.
    copies: BTreeMap<(String, String), Copy>,
    /// Neurons being drained (the fleet's `state = "draining"`): their copies take no new
    /// request once a copy of the same model elsewhere is ready (requests wait for it instead).
    leaving: BTreeSet<String>,
    /// `(model, neuron)` → requests admitted and not finished.
    in_flight: BTreeMap<(String, String), u32>,
    /// `(model, neuron)` → when a request was last admitted there or finished.
    last_active: BTreeMap<(String, String), u64>,
    /// Loads under way: model → neuron.
    loads: BTreeMap<String, String>,
    /// Neurons with a lifecycle change under way (one at a time each).
    busy_neurons: BTreeSet<String>,
    /// Swaps decided and waiting for the evicted models' requests to finish, per neuron.
    drains: BTreeMap<String, Drain>,
    /// Swaps (loads that evict) decided per neuron.
    swaps: BTreeMap<String, u64>,
    /// Rejections by reason.
    rejections: BTreeMap<&'static str, u64>,
    /// When the next timer-driven decision is due.
    wake_at: Option<u64>,
    /// Cluster mode, on the leader: what the other replicas' clients wait for, per model. It
    /// counts like this replica's own queues in every decision (loads, swaps, evictions).
    remote: BTreeMap<String, Remote>,
    /// Residency clocks a previous leader left, for the copies the next observation reports.
    inherited: BTreeMap<(String, String), u64>,
    /// The sessions bound to each copy by affinity routing.
    sessions: Sessions,
    /// Affinity outcomes per model since the shell last took them (for the metrics).
    outcomes: Vec<(String, Outcome)>,
}

/// One model's demand on the cluster's other replicas, as they published it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remote {
    pub waiting: usize,
    /// When their oldest waiting request arrived.
    pub oldest_arrived: u64,
    pub in_flight: u32,
}

impl Machine {
    pub fn new(mode: Mode) -> Self {
        Machine { mode, ..Machine::default() }
    }

    /// When `tick` should run next, if anything waits on time.
    pub fn wake_at(&self) -> Option<u64> {
        self.wake_at
    }

    /// Swaps started per neuron.
    pub fn swaps(&self) -> &BTreeMap<String, u64> {
        &self.swaps
    }

    pub fn rejections(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejections
    }

    /// A new request for `model` from a caller without a key (interactive, one shared lane).
    #[cfg(test)]
    pub fn arrive<P>(
        &mut self,
        now: u64,
        request: RequestId,
        model: &str,
        settings: Settings,
        placer: &mut dyn Placer<P>,
    ) -> (Arrival, Vec<Command<P>>) {
        self.arrive_as(now, request, model, settings, Tag::default(), placer)
    }

    /// A new request for `model` from the caller `tag` describes (its priority and key decide
    /// its place in the queue when it must wait).
    pub fn arrive_as<P>(
        &mut self,
        now: u64,
        request: RequestId,
        model: &str,
        settings: Settings,
        tag: Tag,
        placer: &mut dyn Placer<P>,
    ) -> (Arrival, Vec<Command<P>>) {
        let queue = self.queue(model, settings);
        if queue.waiting.is_empty()
            && let Some(neuron) = self.pick(now, model, tag.session)
        {
            *self.in_flight.entry((model.to_owned(), neuron.clone())).or_default() += 1;
            self.last_active.insert((model.to_owned(), neuron.clone()), now);
            return (Arrival::Admitted { neuron }, Vec::new());
        }
        let queue = self.queue(model, settings);
        if queue.waiting.len() >= settings.queue_length {
            let rejection = Rejection::QueueFull { retry_after_s: settings.retry_after_s() };
            *self.rejections.entry(rejection.reason()).or_default() += 1;
            return (Arrival::Rejected(rejection), Vec::new());
        }
        queue.waiting.push_back(Waiter { id: request, arrived: now, tag });
        (Arrival::Queued, self.pump(now, placer))
    }

    /// A request that can only go to `model` on `neuron` (it continues a response that copy
    /// made): admitted at once when that copy is ready and not chosen for eviction, whatever its
    /// concurrency (it cannot go elsewhere, and the engine queues it as it would queue behind
    /// cortex); refused otherwise. Once admitted it counts like any other request, so no swap
    /// evicts the copy under it.
    pub fn arrive_on(&mut self, now: u64, model: &str, neuron: &str, settings: Settings) -> bool {
        self.queue(model, settings);
        let key = (model.to_owned(), neuron.to_owned());
        let serving = self
            .copies
            .get(&key)
            .is_some_and(|copy| matches!(copy.state, CopyState::Ready { .. }) && !copy.draining);
        if serving {
            *self.in_flight.entry(key.clone()).or_default() += 1;
            self.last_active.insert(key, now);
        }
        serving
    }

    /// Record `model`'s settings before any request for it arrives (a resident that may be
    /// evicted: its `min_residency` counts).
    pub fn configure(&mut self, model: &str, settings: Settings) {
        self.queue(model, settings);
    }

    /// Give back an admission that was never used (no pump: the next event admits).
    pub fn release(&mut self, model: &str, neuron: &str) {
        let key = (model.to_owned(), neuron.to_owned());
        if let Some(count) = self.in_flight.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.in_flight.remove(&key);
            }
        }
    }

    /// A request admitted to `model` on `neuron` has finished (answered, failed or dropped).
    pub fn finish<P>(
        &mut self,
        now: u64,
        model: &str,
        neuron: &str,
        placer: &mut dyn Placer<P>,
    ) -> Vec<Command<P>> {
        self.release(model, neuron);
        self.last_active.insert((model.to_owned(), neuron.to_owned()), now);
        self.pump(now, placer)
    }

    /// A waiting request's client left.
    pub fn cancel<P>(
        &mut self,
        now: u64,
        request: RequestId,
        model: &str,
        placer: &mut dyn Placer<P>,
    ) -> Vec<Command<P>> {
        if let Some(queue) = self.queues.get_mut(model) {
            queue.waiting.remove(request);
        }
        self.pump(now, placer)
    }

    /// The neurons the fleet drains now (no pump: the observation that comes with it decides).
    pub fn set_leaving(&mut self, neurons: BTreeSet<String>) {
        self.leaving = neurons;
    }

    /// The copies the neurons report now (unreachable neurons' copies left out).
    pub fn observe<P>(
        &mut self,
        now: u64,
        copies: &[(String, String, Observed)],
        placer: &mut dyn Placer<P>,
    ) -> Vec<Command<P>> {
        let mut next = BTreeMap::new();
        for (model, neuron, observed) in copies {
            let key = (model.clone(), neuron.clone());
            let old = self.copies.get(&key);
            let inherited = self.inherited.get(&key).copied().filter(|since| *since <= now);
            let state = match (observed, old.map(|c| c.state)) {
                (Observed::Ready, _) if let Some(since) = inherited => CopyState::Ready { since },
                (Observed::Ready, Some(CopyState::Ready { since })) => CopyState::Ready { since },
                (Observed::Ready, _) => CopyState::Ready { since: now },
                (Observed::Loading | Observed::Unloading, _) => CopyState::Moving,
                (Observed::Failed, _) => CopyState::Failed,
            };
            next.insert(key, Copy { state, draining: old.is_some_and(|c| c.draining) });
        }
        self.copies = next;
        self.inherited.clear();
        self.pump(now, placer)
    }

    /// A previous leader's residency clocks (cluster mode, on election): the ready copies count
    /// their `min_residency` from when it saw them ready, and so do those the next observation
    /// reports. A clock in the future is not taken.
    pub fn inherit_residency(&mut self, now: u64, clocks: BTreeMap<(String, String), u64>) {
        for (key, copy) in &mut self.copies {
            if let (CopyState::Ready { .. }, Some(since)) = (copy.state, clocks.get(key))
                && *since <= now
            {
                copy.state = CopyState::Ready { since: *since };
            }
        }
        self.inherited = clocks;
    }

    /// Every ready copy and since when it is resident.
    pub fn residency(&self) -> impl Iterator<Item = (&(String, String), u64)> {
        self.copies.iter().filter_map(|(key, copy)| match copy.state {
            CopyState::Ready { since } => Some((key, since)),
            CopyState::Moving | CopyState::Failed => None,
        })
    }

    /// The neuron refused a request for `model`: the copy is gone or going (someone else
    /// unloaded it). No request is routed there until an observation says otherwise.
    pub fn lost<P>(
        &mut self,
        now: u64,
        model: &str,
        neuron: &str,
        placer: &mut dyn Placer<P>,
    ) -> Vec<Command<P>> {
        if let Some(copy) = self.copies.get_mut(&(model.to_owned(), neuron.to_owned())) {
            copy.state = CopyState::Moving;
        }
        self.pump(now, placer)
    }

    /// A `Command::Load` has ended.
    pub fn load_done<P>(
        &mut self,
        now: u64,
        model: &str,
        neuron: &str,
        result: LoadResult,
        placer: &mut dyn Placer<P>,
    ) -> Vec<Command<P>> {
        self.loads.remove(model);
        self.busy_neurons.remove(neuron);
        // The evicted copies are gone (or, after a failure, whatever the next observation says).
        self.copies.retain(|(_, n), copy| n != neuron || !copy.draining);
        let mut commands = Vec::new();
        match result {
            LoadResult::Ready => {
                let copy = Copy { state: CopyState::Ready { since: now }, draining: false };
                self.copies.insert((model.to_owned(), neuron.to_owned()), copy);
            }
            LoadResult::Retry => {}
            LoadResult::Failed(why) => {
                let why = format!("loading {model} on {neuron} failed: {why}");
                self.reject_all(model, &Rejection::LoadFailed { why }, &mut commands);
            }
        }
        commands.extend(self.pump(now, placer));
        commands
    }

    /// The other replicas' demand changed (cluster mode, on the leader).
    pub fn remote<P>(
        &mut self,
        now: u64,
        demand: BTreeMap<String, Remote>,
        placer: &mut dyn Placer<P>,
    ) -> Vec<Command<P>> {
        self.remote = demand;
        self.pump(now, placer)
    }

    /// Timers: queue deadlines, `max_wait` and residency expiries.
    pub fn tick<P>(&mut self, now: u64, placer: &mut dyn Placer<P>) -> Vec<Command<P>> {
        self.pump(now, placer)
    }

    /// Every queue that holds requests or has some in flight, for metrics and status.
    pub fn status(&self, now: u64) -> Vec<QueueStatus> {
        let mut in_flight: BTreeMap<&str, u32> = BTreeMap::new();
        for ((model, _), count) in &self.in_flight {
            *in_flight.entry(model).or_default() += count;
        }
        self.queues
            .iter()
            .filter(|(model, queue)| !queue.waiting.is_empty() || in_flight.contains_key(model.as_str()))
            .map(|(model, queue)| QueueStatus {
                model: model.clone(),
                waiting: queue.waiting.len(),
                oldest_wait_ms: queue.waiting.oldest().map_or(0, |w| now.saturating_sub(w.arrived)),
                in_flight: in_flight.get(model.as_str()).copied().unwrap_or(0),
            })
            .collect()
    }

    /// Models with a known queue (for zeroing their gauges once empty).
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.queues.keys().map(String::as_str)
    }

    fn queue(&mut self, model: &str, settings: Settings) -> &mut Queue {
        let queue = self.queues.entry(model.to_owned()).or_insert_with(|| Queue {
            settings,
            waiting: FairQueue::default(),
            why: String::new(),
        });
        queue.settings = settings;
        queue
    }

    fn settings(&self, model: &str) -> Option<Settings> {
        self.queues.get(model).map(|q| q.settings)
    }

    /// Affinity outcomes since the last call, per model.
    pub fn take_outcomes(&mut self) -> Vec<(String, Outcome)> {
        std::mem::take(&mut self.outcomes)
    }

    /// The copies of `model` a request may go to, with their requests in flight: ready and not
    /// draining; a copy on a neuron being drained is left out once a copy elsewhere is ready
    /// (full or not: the request waits for it).
    fn serving(&self, model: &str) -> Vec<(&str, u32)> {
        let ready = || {
            self.copies
                .range((model.to_owned(), String::new())..)
                .take_while(|((m, _), _)| m == model)
                .filter(|(_, copy)| matches!(copy.state, CopyState::Ready { .. }) && !copy.draining)
                .map(|((_, neuron), _)| neuron.as_str())
        };
        let replaced = ready().any(|neuron| !self.leaving.contains(neuron));
        ready()
            .filter(|neuron| !(replaced && self.leaving.contains(*neuron)))
            .map(|neuron| (neuron, self.flying(model, neuron)))
            .collect()
    }

    fn limit(&self, model: &str) -> u32 {
        self.settings(model).and_then(|s| s.max_concurrency).map_or(u32::MAX, |n| n)
    }

    /// A serving copy of `model` with room under its concurrency limit: the one with the fewest
    /// requests in flight, ties by neuron name.
    fn free_copy(&self, model: &str) -> Option<String> {
        let limit = self.limit(model);
        self.serving(model)
            .into_iter()
            .filter(|&(_, count)| count < limit)
            .min_by_key(|&(neuron, count)| (count, neuron))
            .map(|(neuron, _)| neuron.to_owned())
    }

    /// The copy a request with `session` goes to at `now`: under affinity routing the
    /// session's copy (recorded, with its outcome), else [`Machine::free_copy`].
    fn pick(&mut self, now: u64, model: &str, session: Option<Key>) -> Option<String> {
        let affine = self.settings(model).filter(|s| s.routing == Routing::Affinity);
        let (Some(key), Some(settings)) = (session, affine) else {
            return self.free_copy(model);
        };
        let (neuron, first) = {
            let serving = self.serving(model);
            let (i, first) = affinity::choose(key, &serving, self.limit(model), settings.load_factor)?;
            (serving[i].0.to_owned(), first)
        };
        let known = self.sessions.record(now, model, key, &neuron);
        let outcome = match (known, first) {
            (false, _) => Outcome::New,
            (true, true) => Outcome::Hit,
            (true, false) => Outcome::Spilled,
        };
        self.outcomes.push((model.to_owned(), outcome));
        Some(neuron)
    }

    fn flying(&self, model: &str, neuron: &str) -> u32 {
        self.in_flight.get(&(model.to_owned(), neuron.to_owned())).copied().unwrap_or(0)
    }

    /// Whether `model` has a copy that serves (or will serve) without a load from us.
    fn served_or_coming(&self, model: &str) -> bool {
        self.loads.contains_key(model)
            || self
                .copies
                .range((model.to_owned(), String::new())..)
                .take_while(|((m, _), _)| m == model)
                .any(|(_, copy)| {
                    !copy.draining && matches!(copy.state, CopyState::Ready { .. } | CopyState::Moving)
                })
    }

    fn reject_all<P>(&mut self, model: &str, rejection: &Rejection, commands: &mut Vec<Command<P>>) {
        let Some(queue) = self.queues.get_mut(model) else { return };
        for waiter in queue.waiting.drain() {
            *self.rejections.entry(rejection.reason()).or_default() += 1;
            commands.push(Command::Reject {
                request: waiter.id,
                model: model.to_owned(),
                rejection: rejection.clone(),
            });
        }
    }

    /// Decide everything that can be decided at `now`.
    fn pump<P>(&mut self, now: u64, placer: &mut dyn Placer<P>) -> Vec<Command<P>> {
        let mut commands = Vec::new();
        let mut wake = Wake::default();
        self.sessions.expire(now);
        self.expire(now, &mut commands, &mut wake);
        self.admit(now, &mut commands);
        self.start_loads(now, placer, &mut commands, &mut wake);
        self.finish_drains(now, placer, &mut commands, &mut wake);
        self.wake_at = wake.at;
        commands
    }

    fn expire<P>(&mut self, now: u64, commands: &mut Vec<Command<P>>, wake: &mut Wake) {
        for (model, queue) in &mut self.queues {
            let timeout = queue.settings.queue_timeout_ms;
            while let Some(front) = queue.waiting.oldest() {
                let deadline = front.arrived.saturating_add(timeout);
                if deadline > now {
                    wake.at_most(deadline);
                    break;
                }
                let waited_ms = now.saturating_sub(front.arrived);
                let why = if queue.why.is_empty() {
                    "waiting for a free slot".to_owned()
                } else {
                    queue.why.clone()
                };
                let rejection =
                    Rejection::Timeout { waited_ms, why, retry_after_s: queue.settings.retry_after_s() };
                *self.rejections.entry(rejection.reason()).or_default() += 1;
                commands.push(Command::Reject { request: front.id, model: model.clone(), rejection });
                queue.waiting.pop_oldest();
            }
        }
    }

    fn admit<P>(&mut self, now: u64, commands: &mut Vec<Command<P>>) {
        let models: Vec<String> =
            self.queues.iter().filter(|(_, q)| !q.waiting.is_empty()).map(|(m, _)| m.clone()).collect();
        for model in models {
            while let Some(free) = self.free_copy(&model) {
                let Some(waiter) = self.queues.get_mut(&model).and_then(|q| q.waiting.next()) else {
                    break;
                };
                // A copy has room, so the waiter's own choice finds one.
                let neuron = self.pick(now, &model, waiter.tag.session).unwrap_or(free);
                *self.in_flight.entry((model.clone(), neuron.clone())).or_default() += 1;
                self.last_active.insert((model.clone(), neuron.clone()), now);
                let waited_ms = now.saturating_sub(waiter.arrived);
                commands.push(Command::Admit { request: waiter.id, model: model.clone(), neuron, waited_ms });
            }
        }
    }

    /// What the planner should weigh: the live sessions of each copy, queued requests per
    /// model and each ready copy's start. Only the sessions with the schedule off: arrival
    /// order evicts by the fleet's policy alone.
    pub fn activity(&self) -> Activity {
        let mut activity = Activity { sessions: self.sessions.counts(), ..Activity::default() };
        if self.mode == Mode::Arrival {
            return activity;
        }
        for (model, queue) in &self.queues {
            if !queue.waiting.is_empty() {
                activity.queued.insert(model.clone(), queue.waiting.len());
            }
        }
        for (model, remote) in self.remote.iter().filter(|(_, r)| r.waiting > 0) {
            *activity.queued.entry(model.clone()).or_default() += remote.waiting;
        }
        for (key, copy) in &self.copies {
            if let CopyState::Ready { since } = copy.state {
                activity.resident_since.insert(key.clone(), since);
            }
        }
        activity
    }

    /// Models that wait with no copy to serve them: those whose callers have the higher
    /// priority first (interactive demand before batch), then longest-waiting, then by the
    /// model's priority. Other replicas' waiting requests count as this one's (cluster mode,
    /// on the leader; their callers' priority is not published: they rank as the lowest class).
    fn needing_load(&self) -> Vec<(String, u64)> {
        let models: BTreeSet<&String> = self.queues.keys().chain(self.remote.keys()).collect();
        let mut needing: Vec<(Reverse<i64>, u64, Reverse<i64>, String)> = models
            .into_iter()
            .filter_map(|model| {
                let queue = self.queues.get(model);
                let local = queue.and_then(|q| q.waiting.oldest()).map(|w| w.arrived);
                let remote = self.remote.get(model).filter(|r| r.waiting > 0).map(|r| r.oldest_arrived);
                let oldest = local.into_iter().chain(remote).min()?;
                let class = queue.and_then(|q| q.waiting.top_priority()).unwrap_or(i64::MIN);
                let priority = self.settings(model).map_or(0, |s| s.priority);
                (!self.served_or_coming(model))
                    .then(|| (Reverse(class), oldest, Reverse(priority), model.clone()))
            })
            .collect();
        needing.sort();
        needing.into_iter().map(|(_, oldest, _, model)| (model, oldest)).collect()
    }

    /// The highest priority of the callers waiting for `model`.
    fn demand_class(&self, model: &str) -> Option<i64> {
        self.queues.get(model).and_then(|q| q.waiting.top_priority())
    }

    fn start_loads<P>(
        &mut self,
        now: u64,
        placer: &mut dyn Placer<P>,
        commands: &mut Vec<Command<P>>,
        wake: &mut Wake,
    ) {
        // Neurons taken by this pass: a model that waits less must not jump ahead onto them.
        let mut taken: BTreeSet<String> = self.busy_neurons.clone();
        for (model, oldest) in self.needing_load() {
            let activity = self.activity();
            let (neuron, evicts, placement) = match placer.place(&model, &activity) {
                Placed::Load { neuron, evicts, placement } => (neuron, evicts, placement),
                Placed::Later { until, why } => {
                    wake.at_most(until.unwrap_or(now + LOOK_AGAIN_MS));
                    self.set_why(&model, why);
                    continue;
                }
                Placed::Never { why } => {
                    if self.loads.is_empty() && self.busy_neurons.is_empty() {
                        let retry_after_s = self.settings(&model).map_or(30, |s| s.retry_after_s());
                        self.reject_all(&model, &Rejection::Unplaceable { why, retry_after_s }, commands);
                    } else {
                        // The fleet is moving; the answer may change when it settles.
                        wake.at_most(now + LOOK_AGAIN_MS);
                        self.set_why(&model, format!("{why} (the fleet is changing; waiting)"));
                    }
                    continue;
                }
            };
            if taken.contains(&neuron) {
                wake.at_most(now + LOOK_AGAIN_MS);
                let why = match self.loads.iter().find(|(_, n)| **n == neuron) {
                    Some((loading, _)) => format!("{loading} is loading on {neuron}"),
                    None => format!("waiting for its turn on {neuron}"),
                };
                self.set_why(&model, why);
                continue;
            }
            if let Err(not_before) = self.may_swap(now, &model, oldest, &neuron, &evicts) {
                wake.at_most(not_before);
                taken.insert(neuron.clone());
                let why =
                    format!("waiting for its turn on {neuron} ({} is serving requests)", evicts.join(", "));
                self.set_why(&model, why);
                continue;
            }
            taken.insert(neuron.clone());
            self.busy_neurons.insert(neuron.clone());
            self.loads.insert(model.clone(), neuron.clone());
            for evicted in &evicts {
                if let Some(copy) = self.copies.get_mut(&(evicted.clone(), neuron.clone())) {
                    copy.draining = true;
                }
            }
            if evicts.is_empty() {
                self.set_why(&model, format!("{model} is loading on {neuron}"));
                commands.push(Command::Load { model, neuron, evicts, placement });
            } else {
                // A swap: the evicted models take no new requests from now on, and the
                // unload starts once the requests cortex sent them are done (finish_drains).
                *self.swaps.entry(neuron.clone()).or_default() += 1;
                self.set_why(&model, format!("{} is finishing its requests on {neuron}", evicts.join(", ")));
                self.drains.insert(neuron.clone(), Drain { model, evicts, since: now });
            }
        }
    }

    /// Swaps whose evicted models have no request of cortex's in flight any more (or that
    /// waited `DRAIN_WAIT_MS` for them) are placed again, fresh, and their load starts.
    fn finish_drains<P>(
        &mut self,
        now: u64,
        placer: &mut dyn Placer<P>,
        commands: &mut Vec<Command<P>>,
        wake: &mut Wake,
    ) {
        let neurons: Vec<String> = self.drains.keys().cloned().collect();
        for neuron in neurons {
            let Some(drain) = self.drains.get(&neuron) else { continue };
            let flying: u32 = drain.evicts.iter().map(|m| self.flying(m, &neuron)).sum();
            if flying > 0 && now < drain.since.saturating_add(DRAIN_WAIT_MS) {
                wake.at_most(drain.since.saturating_add(DRAIN_WAIT_MS));
                continue;
            }
            let Some(drain) = self.drains.remove(&neuron) else { continue };
            let activity = self.activity();
            match placer.place(&drain.model, &activity) {
                Placed::Load { neuron: placed, evicts, placement } if placed == neuron => {
                    self.set_why(&drain.model, format!("{} is loading on {neuron}", drain.model));
                    commands.push(Command::Load { model: drain.model, neuron, evicts, placement });
                }
                // The fleet changed meanwhile: undo the swap and decide again.
                _ => {
                    self.loads.remove(&drain.model);
                    self.busy_neurons.remove(&neuron);
                    for evicted in &drain.evicts {
                        if let Some(copy) = self.copies.get_mut(&(evicted.clone(), neuron.clone())) {
                            copy.draining = false;
                        }
                    }
                    wake.at_most(now + LOOK_AGAIN_MS);
                }
            }
        }
    }

    /// Whether a load of `model` (oldest request from `oldest`) may evict `evicts` on `neuron`
    /// now; else the time to look again.
    fn may_swap(
        &self,
        now: u64,
        model: &str,
        oldest: u64,
        neuron: &str,
        evicts: &[String],
    ) -> Result<(), u64> {
        if evicts.is_empty() || self.mode == Mode::Arrival {
            return Ok(());
        }
        let (mut resident_until, mut recently_until) = (0, 0);
        let mut resident_busy = false;
        for evicted in evicts {
            let settings = self.settings(evicted);
            let residency =
                settings.map_or(plans::fleet::Contention::DEFAULT_MIN_RESIDENCY_MS, |s| s.min_residency_ms);
            if let Some(Copy { state: CopyState::Ready { since }, .. }) =
                self.copies.get(&(evicted.clone(), neuron.to_owned()))
            {
                resident_until = resident_until.max(since.saturating_add(residency));
            }
            let queued = self.queues.get(evicted).is_some_and(|q| !q.waiting.is_empty());
            let remote = self.remote.get(evicted).is_some_and(|r| r.waiting > 0 || r.in_flight > 0);
            resident_busy |= queued || remote || self.flying(evicted, neuron) > 0;
            let key = (evicted.clone(), neuron.to_owned());
            recently_until = recently_until.max(self.last_active.get(&key).map_or(0, |t| t + IDLE_GRACE_MS));
        }
        if resident_until > now {
            return Err(resident_until);
        }
        // Demand weighs by class: callers of a lower priority do not take the neuron from a
        // resident that callers of a higher one are waiting for (their queue timeout bounds it).
        let resident_class = evicts.iter().filter_map(|m| self.demand_class(m)).max();
        if resident_class > self.demand_class(model) && resident_busy {
            return Err(now + LOOK_AGAIN_MS);
        }
        let max_wait =
            self.settings(model).map_or(plans::fleet::Contention::DEFAULT_MAX_WAIT_MS, |s| s.max_wait_ms);
        let turn_at = oldest.saturating_add(max_wait);
        if turn_at <= now {
            Ok(())
        } else if resident_busy {
            Err(turn_at)
        } else if recently_until > now {
            // Idle only for a moment (a client between two calls): give it the grace first.
            Err(recently_until.min(turn_at))
        } else {
            Ok(())
        }
    }

    fn set_why(&mut self, model: &str, why: String) {
        if let Some(queue) = self.queues.get_mut(model) {
            queue.why = why;
        }
    }
}

/// How soon to look again when an answer may change without an event the scheduler sees.
const LOOK_AGAIN_MS: u64 = 1_000;

/// A resident that served a request this recently counts as busy (its client is likely between
/// two calls: an agent running a tool): the swap waits this long, or until `max_wait`.
const IDLE_GRACE_MS: u64 = 2_000;

/// How long a swap waits for the requests cortex sent to the evicted model before the unload
/// starts anyway (the neuron then drains what is left, bounded by its `drain_timeout`).
const DRAIN_WAIT_MS: u64 = 60_000;

/// The earliest time a decision is due.
#[derive(Default)]
struct Wake {
    at: Option<u64>,
}

impl Wake {
    fn at_most(&mut self, at: u64) {
        self.at = Some(self.at.map_or(at, |current| current.min(at)));
    }
}

#[cfg(test)]
mod tests;
