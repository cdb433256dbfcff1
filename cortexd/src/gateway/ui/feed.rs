//! The fleet page's live feed. One task watches the daemon's own channels (the fleet in force,
//! the observed topology, the reconciler's status) and rebuilds the page's state document once
//! per change, whatever the number of pages open; the traffic window is sampled every few
//! seconds. Each page's server-sent event stream starts with the whole state and then gets
//! every new document, so a page that reconnects (after a daemon restart) is in sync at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use plans::fleet::Fleet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::poller::{Observed, now_unix_ms};
use crate::control::status::DaemonStatus;
use crate::gateway::traffic::Traffic;
use crate::gateway::ui::page::{self, Inputs, Memory};

/// How often the traffic charts are refreshed.
pub const TRAFFIC_EVERY: Duration = Duration::from_secs(2);
/// What a page's `EventSource` waits before reconnecting after the stream broke.
const RETRY: Duration = Duration::from_secs(1);

/// The channels the page is drawn from; each has its one writer elsewhere.
#[derive(Clone)]
pub struct Sources {
    pub fleet: watch::Receiver<Arc<Fleet>>,
    pub observed: watch::Receiver<Arc<Observed>>,
    pub status: watch::Receiver<Arc<DaemonStatus>>,
    pub traffic: Arc<Traffic>,
}

/// The latest documents, as JSON text ready to send. Written by the feed task only.
#[derive(Clone)]
pub struct Feed {
    pub state: watch::Receiver<Arc<str>>,
    pub traffic: watch::Receiver<Arc<str>>,
}

/// Start the feed task; it ends at `shutdown` (or when a source stops), which ends every
/// page's stream so that the listener can shut down.
pub fn spawn(sources: Sources, shutdown: CancellationToken) -> (Feed, tokio::task::JoinHandle<()>) {
    let started = now_unix_ms();
    let mut memory = Memory::default();
    let (state_sender, state) = watch::channel(state_json(&sources, &mut memory, started));
    let (traffic_sender, traffic) = watch::channel(traffic_json(&sources.traffic));
    let task = tokio::spawn(async move {
        let Sources { mut fleet, mut observed, mut status, traffic } = sources.clone();
        let mut tick = tokio::time::interval(TRAFFIC_EVERY);
        loop {
            let changed = tokio::select! {
                () = shutdown.cancelled() => return,
                changed = fleet.changed() => changed,
                changed = observed.changed() => changed,
                changed = status.changed() => changed,
                _ = tick.tick() => {
                    let next = traffic_json(&traffic);
                    traffic_sender.send_if_modified(|current| {
                        let modified = **current != *next;
                        *current = next;
                        modified
                    });
                    continue;
                }
            };
            if changed.is_err() {
                return; // a source stopped: the daemon is shutting down
            }
            // Mark all three seen: one document covers whatever changed.
            fleet.borrow_and_update();
            observed.borrow_and_update();
            status.borrow_and_update();
            state_sender.send_replace(state_json(&sources, &mut memory, started));
        }
    });
    (Feed { state, traffic }, task)
}

/// The whole state document now, as JSON.
pub fn state_json(sources: &Sources, memory: &mut Memory, daemon_started_unix_ms: u64) -> Arc<str> {
    let fleet = sources.fleet.borrow().clone();
    let observed = sources.observed.borrow().clone();
    let status = sources.status.borrow().clone();
    let now_unix_ms = now_unix_ms();
    memory.observe(&observed.topology, now_unix_ms);
    let inputs = Inputs {
        fleet: &fleet,
        topology: &observed.topology,
        status: &status,
        now_unix_ms,
        daemon_started_unix_ms,
    };
    to_json(&page::build(&inputs, memory))
}

/// The traffic window now, as JSON.
pub fn traffic_json(traffic: &Traffic) -> Arc<str> {
    to_json(&traffic.window(now_unix_ms()))
}

fn to_json(value: &impl serde::Serialize) -> Arc<str> {
    // Serialising these plain structs cannot fail; an empty object keeps the page alive if it did.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned()).into()
}

/// One page's event stream: `state` and `traffic` events, each a whole document.
pub fn events(feed: &Feed) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let mut state = feed.state.clone();
    let mut traffic = feed.traffic.clone();
    // The first two events are what is current; after that, each new document.
    state.mark_changed();
    traffic.mark_changed();
    let stream =
        futures_util::stream::unfold((state, traffic, true), |(mut state, mut traffic, first)| async move {
            let event = tokio::select! {
                biased;
                changed = state.changed() => changed.ok().map(|()| {
                    Event::default().event("state").data(&*state.borrow_and_update().clone())
                }),
                changed = traffic.changed() => changed.ok().map(|()| {
                    Event::default().event("traffic").data(&*traffic.borrow_and_update().clone())
                }),
            }?;
            let event = if first { event.retry(RETRY) } else { event };
            Some((Ok(event), (state, traffic, false)))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
