//! The fleet page's live feed. One task watches the daemon's own channels (the fleet in force,
//! the observed topology, the reconciler's status, the gateway's queues) and rebuilds the page's state document once
//! per change, whatever the number of pages open; the traffic window is sampled every few
//! seconds. Each page's server-sent event stream starts with the whole state and then gets
//! every new document, so a page that reconnects (after a daemon restart) is in sync at once.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use plans::fleet::Fleet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::poller::{Observed, now_unix_ms};
use crate::control::status::{DaemonStatus, QueueStatus};
use crate::gateway::core::timeline::Timelines;
use crate::gateway::core::traffic::Traffic;
use crate::operator::ui::page::{self, Inputs, Memory};
use crate::operator::usage::KeyUsage;
use crate::usage::Usage;

/// How often the traffic charts are refreshed.
const TRAFFIC_EVERY: Duration = Duration::from_secs(2);
/// What a page's `EventSource` waits before reconnecting after the stream broke.
const RETRY: Duration = Duration::from_secs(1);

/// The channels the page is drawn from; each has its one writer elsewhere.
#[derive(Clone)]
pub struct Sources {
    pub fleet: watch::Receiver<Arc<Fleet>>,
    pub observed: watch::Receiver<Arc<Observed>>,
    pub status: watch::Receiver<Arc<DaemonStatus>>,
    /// The gateway's queues (`Scheduler::queues`).
    pub queues: watch::Receiver<Arc<Vec<QueueStatus>>>,
    pub traffic: Arc<Traffic>,
    /// The fleet keys' usage (shown per key; sampled with the traffic window).
    pub usage: Arc<Usage>,
    /// The recent requests' timelines (the requests view reads them when asked).
    pub requests: Arc<Timelines>,
}

/// The page's documents: the latest ones as JSON text ready to send (written by the feed task
/// only), and how to build fresh ones.
#[derive(Clone)]
pub struct Feed {
    pub state: watch::Receiver<Arc<str>>,
    pub traffic: watch::Receiver<Arc<str>>,
    documents: Arc<Documents>,
}

impl Feed {
    /// The state document as of now.
    pub fn state_now(&self) -> Arc<str> {
        self.documents.state()
    }

    /// The recent requests' timelines.
    pub fn requests(&self) -> &Timelines {
        &self.documents.sources.requests
    }

    /// The traffic window as of now.
    pub fn traffic_now(&self) -> Arc<str> {
        traffic_json(&self.documents.sources.traffic)
    }
}

/// Builds the documents from the sources; remembers what the page needs between them.
struct Documents {
    sources: Sources,
    memory: Mutex<Memory>,
    started_unix_ms: u64,
    /// The keys' usage as of the last document, to rebuild it only when usage moved.
    keys: Mutex<Vec<KeyUsage>>,
}

impl Documents {
    /// Note what the topology shows now (when loads started); cheap, done on every change.
    fn observe(&self) {
        let observed = self.sources.observed.borrow().clone();
        self.memory.lock().unwrap_or_else(PoisonError::into_inner).observe(&observed.topology, now_unix_ms());
    }

    /// The whole state document now, as JSON.
    fn state(&self) -> Arc<str> {
        let fleet = self.sources.fleet.borrow().clone();
        let observed = self.sources.observed.borrow().clone();
        let status = self.sources.status.borrow().clone();
        let queues = self.sources.queues.borrow().clone();
        let now_unix_ms = now_unix_ms();
        let keys = self.keys_now(&fleet, now_unix_ms);
        *self.keys.lock().unwrap_or_else(PoisonError::into_inner) = keys.clone();
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        memory.observe(&observed.topology, now_unix_ms);
        let inputs = Inputs {
            fleet: &fleet,
            topology: &observed.topology,
            status: &status,
            now_unix_ms,
            daemon_started_unix_ms: self.started_unix_ms,
            queues: &queues,
            keys: &keys,
        };
        to_json(&page::build(&inputs, &memory))
    }

    /// Each declared key's usage today and this month (nothing to read without keys: a fleet
    /// without them never opens the store).
    fn keys_now(&self, fleet: &Fleet, now_unix_ms: u64) -> Vec<KeyUsage> {
        if fleet.keys.is_empty() {
            return Vec::new();
        }
        let today = crate::gateway::core::keys::limits::day_index(now_unix_ms);
        match crate::operator::usage::report(fleet, &self.sources.usage, None, Some(today), now_unix_ms) {
            Ok(report) => report.keys,
            Err(error) => {
                tracing::warn!(%error, "the fleet page cannot read the keys' usage");
                Vec::new()
            }
        }
    }

    /// Whether the keys' usage moved since the last document.
    fn keys_moved(&self) -> bool {
        let fleet = self.sources.fleet.borrow().clone();
        let now = self.keys_now(&fleet, now_unix_ms());
        *self.keys.lock().unwrap_or_else(PoisonError::into_inner) != now
    }
}

/// Start the feed task; it ends at `shutdown` (or when a source stops), which ends every
/// page's stream so that the listener can shut down. Documents are built only while someone
/// listens: with no page open, a change costs one look at the topology.
pub fn spawn(sources: Sources, shutdown: CancellationToken) -> (Feed, tokio::task::JoinHandle<()>) {
    let documents = Arc::new(Documents {
        sources,
        memory: Mutex::new(Memory::default()),
        started_unix_ms: now_unix_ms(),
        keys: Mutex::new(Vec::new()),
    });
    let (state_sender, state) = watch::channel(documents.state());
    let (traffic_sender, traffic) = watch::channel(traffic_json(&documents.sources.traffic));
    let feed = Feed { state, traffic, documents: documents.clone() };
    let task = tokio::spawn(async move {
        let Sources { mut fleet, mut observed, mut status, mut queues, traffic, .. } =
            documents.sources.clone();
        let mut tick = tokio::time::interval(TRAFFIC_EVERY);
        loop {
            let changed = tokio::select! {
                () = shutdown.cancelled() => return,
                changed = fleet.changed() => changed,
                changed = observed.changed() => changed,
                changed = status.changed() => changed,
                changed = queues.changed() => changed,
                _ = tick.tick() => {
                    if listened(&traffic_sender) {
                        let next = traffic_json(&traffic);
                        traffic_sender.send_if_modified(|current| {
                            let modified = **current != *next;
                            *current = next;
                            modified
                        });
                    }
                    if listened(&state_sender) && documents.keys_moved() {
                        state_sender.send_replace(documents.state());
                    }
                    continue;
                }
            };
            if changed.is_err() {
                return; // a source stopped: the daemon is shutting down
            }
            // Mark all four seen: one document covers whatever changed.
            fleet.borrow_and_update();
            observed.borrow_and_update();
            status.borrow_and_update();
            queues.borrow_and_update();
            if listened(&state_sender) {
                state_sender.send_replace(documents.state());
            } else {
                documents.observe();
            }
        }
    });
    (feed, task)
}

/// Whether anyone besides the page's own handle holds a receiver: an open event stream (or a
/// request being handled).
fn listened(sender: &watch::Sender<Arc<str>>) -> bool {
    sender.receiver_count() > 1
}

/// The traffic window now, as JSON.
fn traffic_json(traffic: &Traffic) -> Arc<str> {
    to_json(&traffic.window(now_unix_ms()))
}

fn to_json(value: &impl serde::Serialize) -> Arc<str> {
    // Serialising these plain structs cannot fail; an empty object keeps the page alive if it did.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned()).into()
}

/// One page's event stream: `state` and `traffic` events, each a whole document. The first two
/// are built fresh (nobody may have been listening before); then each new document follows.
pub fn events(feed: &Feed) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let mut state = feed.state.clone();
    let mut traffic = feed.traffic.clone();
    state.mark_unchanged();
    traffic.mark_unchanged();
    let first = [
        Event::default().event("state").data(&*feed.state_now()).retry(RETRY),
        Event::default().event("traffic").data(&*feed.traffic_now()),
    ];
    let first = futures_util::stream::iter(first.map(Ok));
    let rest = futures_util::stream::unfold((state, traffic), |(mut state, mut traffic)| async move {
        let event = tokio::select! {
            biased;
            changed = state.changed() => changed.ok().map(|()| {
                Event::default().event("state").data(&*state.borrow_and_update().clone())
            }),
            changed = traffic.changed() => changed.ok().map(|()| {
                Event::default().event("traffic").data(&*traffic.borrow_and_update().clone())
            }),
        }?;
        Some((Ok(event), (state, traffic)))
    });
    Sse::new(futures_util::StreamExt::chain(first, rest)).keep_alive(KeepAlive::default())
}
