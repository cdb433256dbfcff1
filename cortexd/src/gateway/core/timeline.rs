//! Request timelines: what happened to each recent request, stage by stage (received,
//! admitted, queued, the load it waited behind, placed, forwarded to which copy, first byte,
//! done), kept in a bounded ring ([`Timelines`]) for `GET /admin/requests` and the fleet page.
//!
//! A request carries one [`Recorder`] (shared as a [`Recording`] by the pipeline and the
//! response body); each stage is a stamp under the recorder's own uncontended lock, and the
//! finished timeline enters the ring once, when the last holder drops it (the request's
//! answer ended, whichever way). The ring takes one short lock per request and never holds
//! more than its capacity; every string a client influences is cut to a bound before it is
//! kept, so an entry's size is bounded too ([`MAX_ENTRY_BYTES`]).
//!
//! The stages are plain data ([`Timeline`]): a span exporter or a traffic log can be fed from
//! the same finished timelines as the ring is.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;

/// The header that carries a request's id on every inference answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest name kept (a model as the client wrote it, a key, a neuron, a path), in bytes.
const MAX_NAME: usize = 128;
/// The longest error message kept, in bytes.
const MAX_ERROR: usize = 512;
/// The most evicted models kept for one load.
const MAX_EVICTED: usize = 8;

/// The most stages a timeline has (received, six stamped, the load's two, done).
const MAX_STAGES: usize = 10;

/// The most a finished timeline can take in memory (allocator overhead aside): the entry
/// itself, its `Arc`'s counts, its stages, and its strings at their bounds (seven names, an
/// error, and the evicted models' names). The tests hold every entry to it, and
/// docs/operations.md quotes it.
#[cfg(test)]
pub const MAX_ENTRY_BYTES: usize = std::mem::size_of::<Timeline>()
    + 2 * std::mem::size_of::<usize>()
    + MAX_STAGES * std::mem::size_of::<(&str, i64)>()
    + 8 * MAX_NAME
    + MAX_ERROR
    + MAX_EVICTED * (MAX_NAME + 2 * std::mem::size_of::<usize>());

/// A request's id: unique within a daemon's life, and across replicas with high probability
/// (the upper half is drawn when the daemon starts). Written as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId(pub u64);

impl RequestId {
    /// The id as the `x-request-id` header writes it.
    pub fn header(self) -> HeaderValue {
        let text = self.to_string();
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0"))
    }

    /// Read an id as [`RequestId::header`] writes it.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 16).then(|| u64::from_str_radix(text, 16).ok().map(RequestId)).flatten()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The recent requests' timelines, newest last, at most `capacity` of them.
pub struct Timelines {
    capacity: usize,
    ring: Mutex<VecDeque<Arc<Timeline>>>,
    /// The upper half of every id this daemon gives.
    prefix: u64,
    next: AtomicU64,
}

impl Timelines {
    /// A ring that keeps the last `capacity` requests (`0` keeps none; ids are still given).
    pub fn new(capacity: usize) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let seed = u64::from(nanos) ^ u64::from(std::process::id()).rotate_left(17);
        Timelines {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4_096))),
            prefix: (seed & 0xffff_ffff) << 32,
            next: AtomicU64::new(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Start recording a request that came in on `route` now.
    pub fn start(self: &Arc<Self>, route: &'static str) -> Recording {
        let serial = self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
        Arc::new(Recorder {
            ring: self.clone(),
            id: RequestId(self.prefix | serial),
            started: Instant::now(),
            received_unix_ms: crate::control::poller::now_unix_ms(),
            draft: Mutex::new(Draft { route, ..Draft::default() }),
        })
    }

    /// Keep a finished timeline, dropping the oldest past the capacity.
    fn push(&self, timeline: Timeline) {
        if self.capacity == 0 {
            return;
        }
        let timeline = Arc::new(timeline);
        let dropped = {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            let dropped = if ring.len() >= self.capacity { ring.pop_front() } else { None };
            ring.push_back(timeline);
            dropped
        };
        // The oldest entry is freed outside the lock.
        drop(dropped);
    }

    /// The kept timelines that `filter` accepts, newest first, at most `filter.limit`.
    pub fn list(&self, filter: &Filter) -> Vec<Arc<Timeline>> {
        let all: Vec<Arc<Timeline>> = {
            let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            ring.iter().rev().cloned().collect()
        };
        all.into_iter().filter(|t| filter.accepts(t)).take(filter.limit).collect()
    }

    /// One kept timeline by its id.
    pub fn get(&self, id: RequestId) -> Option<Arc<Timeline>> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().find(|t| t.id == id).cloned()
    }

    /// How many timelines the ring holds now.
    pub fn len(&self) -> usize {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// What `GET /admin/requests` asks for: each given field must match.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct Filter {
    /// The model as asked for, or the fleet id of the copy that served it.
    pub model: Option<String>,
    /// The declared key's name (`-` for requests without a declared key).
    pub key: Option<String>,
    /// An HTTP status (`503`), a class (`5xx`), or an outcome (`ok`, `error`,
    /// `upstream_error`, `client_closed`).
    pub status: Option<String>,
    #[serde(default = "Filter::default_limit")]
    pub limit: usize,
}

impl Filter {
    fn default_limit() -> usize {
        100
    }

    fn accepts(&self, timeline: &Timeline) -> bool {
        let model = given(&self.model).is_none_or(|model| {
            timeline.model.as_deref() == Some(model)
                || timeline.copy.as_ref().is_some_and(|copy| &*copy.model == model)
        });
        let key = given(&self.key).is_none_or(|key| match &timeline.key {
            Some(name) if !name.is_empty() => &**name == key,
            _ => key == "-",
        });
        model && key && given(&self.status).is_none_or(|status| timeline.status_matches(status))
    }
}

/// A filter's field as given: an empty one (a form left blank) asks for nothing.
fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().filter(|value| !value.is_empty())
}

/// One request's recorder, shared by the pipeline and the response body.
pub type Recording = Arc<Recorder>;

/// Stamps one request's stages; its timeline enters the ring when the last holder drops it.
pub struct Recorder {
    ring: Arc<Timelines>,
    id: RequestId,
    started: Instant,
    received_unix_ms: u64,
    draft: Mutex<Draft>,
}

/// The stages stamped so far (offsets from `started`, in microseconds).
#[derive(Default)]
struct Draft {
    route: &'static str,
    key: Option<Box<str>>,
    admitted: Option<u64>,
    model: Option<Box<str>>,
    queued: Option<u64>,
    placed: Option<u64>,
    load: Option<LoadKept>,
    copy: Option<Served>,
    forwarded: Option<u64>,
    answered: Option<u64>,
    first_byte: Option<u64>,
    done: Option<u64>,
    status: Option<u16>,
    outcome: Option<&'static str>,
    tokens: Option<Tokens>,
    error: Option<Box<str>>,
}

impl Recorder {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// When the request was received.
    pub fn started(&self) -> Instant {
        self.started
    }

    fn offset(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_micros()).unwrap_or(u64::MAX)
    }

    fn stamp(&self, edit: impl FnOnce(&mut Draft, u64)) {
        let now = self.offset(Instant::now());
        edit(&mut self.draft.lock().unwrap_or_else(PoisonError::into_inner), now);
    }

    /// The key let the request in (`key`: the declared key's name, empty for none) and so did
    /// the in-flight bound.
    pub fn admitted(&self, key: &str) {
        self.stamp(|draft, now| {
            draft.key = Some(bounded(key, MAX_NAME));
            draft.admitted = Some(now);
        });
    }

    /// The model the client asked for (its envelope was read).
    pub fn model(&self, model: &str) {
        self.stamp(|draft, _| draft.model = Some(bounded(model, MAX_NAME)));
    }

    /// The request waits in its model's queue.
    pub fn queued(&self) {
        self.stamp(|draft, now| draft.queued = Some(now));
    }

    /// The scheduler gave the request a copy (at once, or after its wait); `load` is the load
    /// of that copy it waited behind, if it waited behind one.
    pub fn placed(&self, load: Option<LoadSeen>) {
        let load = load.map(|seen| LoadKept {
            neuron: bounded(&seen.neuron, MAX_NAME),
            evicted: seen.evicted.iter().take(MAX_EVICTED).map(|m| bounded(m, MAX_NAME)).collect(),
            started: self.signed_offset(seen.started),
            ready: seen.ready.map(|ready| self.signed_offset(ready)),
        });
        self.stamp(|draft, now| {
            draft.placed = Some(now);
            draft.load = load;
        });
    }

    fn signed_offset(&self, at: Instant) -> i64 {
        let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        match at.checked_duration_since(self.started) {
            Some(after) => micros(after),
            None => -micros(self.started.duration_since(at)),
        }
    }

    /// The request is sent to `copy`'s neuron, natively or translated, on `path`.
    pub fn forwarded(&self, copy: CopySeen<'_>) {
        let copy = Served {
            model: bounded(copy.model, MAX_NAME),
            neuron: bounded(copy.neuron, MAX_NAME),
            address: bounded(copy.address, MAX_NAME),
            harness: bounded(copy.harness, MAX_NAME),
            path: bounded(copy.path, MAX_NAME),
            native: copy.native,
        };
        self.stamp(|draft, now| {
            draft.forwarded = Some(now);
            draft.copy = Some(copy);
        });
    }

    /// The engine's answer began with `status`, from `neuron` (a request that raced an unload
    /// may have been sent again elsewhere).
    pub fn answered(&self, status: u16, neuron: &str) {
        self.stamp(|draft, now| {
            draft.answered = Some(now);
            draft.status = Some(status);
            if let Some(copy) = draft.copy.as_mut().filter(|copy| &*copy.neuron != neuron) {
                copy.neuron = bounded(neuron, MAX_NAME);
            }
        });
    }

    /// The response body ended: `outcome` (`ok`, `upstream_error`, `client_closed`), the
    /// first event's time and the engine's usage.
    pub fn finished(&self, outcome: &'static str, first_byte: Option<Instant>, tokens: Option<Tokens>) {
        let first_byte = first_byte.map(|at| self.offset(at));
        self.stamp(|draft, now| {
            draft.done = Some(now);
            draft.outcome = Some(outcome);
            draft.first_byte = first_byte;
            draft.tokens = tokens;
        });
    }

    /// The request failed with `status` before (or instead of) an engine's answer.
    pub fn failed(&self, status: u16, message: &str) {
        self.stamp(|draft, now| {
            draft.done = Some(now);
            draft.status = Some(status);
            draft.outcome = Some("error");
            draft.error = Some(bounded(message, MAX_ERROR));
        });
    }

    /// The answer the client got, when nothing more precise was recorded (a body cortex built
    /// itself, such as a translated non-streaming answer).
    pub fn responded(&self, status: u16) {
        self.stamp(|draft, _| {
            draft.status.get_or_insert(status);
        });
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let done = self.offset(Instant::now());
        let draft = std::mem::take(self.draft.get_mut().unwrap_or_else(PoisonError::into_inner));
        let timeline = Timeline::from_draft(self.id, self.received_unix_ms, draft, done);
        self.ring.push(timeline);
    }
}

/// The load a request waited behind, as the scheduler saw it.
#[derive(Clone, Debug)]
pub struct LoadSeen {
    pub neuron: String,
    /// What the load evicted on its neuron (a swap); empty for a load into free memory.
    pub evicted: Vec<String>,
    pub started: Instant,
    /// When the copy was ready (`None`: the load failed or had not finished).
    pub ready: Option<Instant>,
}

/// The copy a request is forwarded to.
#[derive(Clone, Copy, Debug)]
pub struct CopySeen<'a> {
    pub model: &'a str,
    pub neuron: &'a str,
    /// The neuron's address.
    pub address: &'a str,
    pub harness: &'a str,
    /// The engine route called.
    pub path: &'a str,
    /// Passed through in the client's own API (`false`: translated to Chat Completions).
    pub native: bool,
}

/// Tokens in (prompt), of which cached, and out (completion), as the engine reported them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Tokens {
    #[serde(rename = "in")]
    pub prompt: u64,
    pub cached: Option<u64>,
    #[serde(rename = "out")]
    pub completion: u64,
}

/// A load as kept in a timeline (offsets from the request's arrival; negative when the load
/// began before the request came).
#[derive(Clone, Debug)]
struct LoadKept {
    neuron: Box<str>,
    evicted: Vec<Box<str>>,
    started: i64,
    ready: Option<i64>,
}

#[derive(Clone, Debug)]
struct Served {
    model: Box<str>,
    neuron: Box<str>,
    address: Box<str>,
    harness: Box<str>,
    path: Box<str>,
    native: bool,
}

/// One finished request's story.
#[derive(Clone, Debug)]
pub struct Timeline {
    pub id: RequestId,
    route: &'static str,
    received_unix_ms: u64,
    key: Option<Box<str>>,
    model: Option<Box<str>>,
    load: Option<LoadKept>,
    copy: Option<Served>,
    status: Option<u16>,
    outcome: &'static str,
    tokens: Option<Tokens>,
    error: Option<Box<str>>,
    /// The stages in the order they happened: name and offset (microseconds).
    stages: Vec<(&'static str, i64)>,
}

impl Timeline {
    fn from_draft(id: RequestId, received_unix_ms: u64, draft: Draft, dropped: u64) -> Self {
        let as_signed = |at: u64| i64::try_from(at).unwrap_or(i64::MAX);
        let mut stages: Vec<(&'static str, i64)> = Vec::with_capacity(MAX_STAGES);
        stages.push(("received", 0));
        let stamped = [
            ("admitted", draft.admitted),
            ("queued", draft.queued),
            ("placed", draft.placed),
            ("forwarded", draft.forwarded),
            ("answered", draft.answered),
            ("first_byte", draft.first_byte),
        ];
        stages.extend(stamped.into_iter().filter_map(|(name, at)| Some((name, as_signed(at?)))));
        if let Some(load) = &draft.load {
            stages.push(("load_started", load.started));
            stages.extend(load.ready.map(|ready| ("load_ready", ready)));
        }
        stages.push(("done", as_signed(draft.done.unwrap_or(dropped))));
        // Stable: stages stamped at the same microsecond keep their order above.
        stages.sort_by_key(|&(_, at)| at);
        Timeline {
            id,
            route: draft.route,
            received_unix_ms,
            key: draft.key,
            model: draft.model,
            load: draft.load,
            copy: draft.copy,
            status: draft.status,
            outcome: draft.outcome.unwrap_or("client_closed"),
            tokens: draft.tokens,
            error: draft.error,
            stages,
        }
    }

    /// Whether the request ended as `wanted`: an HTTP status, a class (`5xx`) or an outcome.
    fn status_matches(&self, wanted: &str) -> bool {
        if wanted == self.outcome {
            return true;
        }
        let Some(status) = self.status else { return false };
        match wanted.as_bytes() {
            [class @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => u16::from(class - b'0') == status / 100,
            _ => wanted.parse::<u16>().is_ok_and(|wanted| wanted == status),
        }
    }

    /// The heap bytes this entry holds beyond its own size (the ring's memory measurement).
    pub fn heap_bytes(&self) -> usize {
        let name = |s: &Option<Box<str>>| s.as_ref().map_or(0, |s| s.len());
        let load = self.load.as_ref().map_or(0, |load| {
            load.neuron.len()
                + load.evicted.capacity() * 2 * std::mem::size_of::<usize>()
                + load.evicted.iter().map(|m| m.len()).sum::<usize>()
        });
        let copy = self
            .copy
            .as_ref()
            .map_or(0, |c| c.model.len() + c.neuron.len() + c.address.len() + c.harness.len() + c.path.len());
        let stages = self.stages.capacity() * std::mem::size_of::<(&'static str, i64)>();
        name(&self.key) + name(&self.model) + name(&self.error) + load + copy + stages
    }
}

/// Cut `text` to at most `limit` bytes, at a character boundary.
fn bounded(text: &str, limit: usize) -> Box<str> {
    if text.len() <= limit {
        return text.into();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].into()
}

fn millis(micros: i64) -> f64 {
    // Whole microseconds as milliseconds: three decimals.
    micros as f64 / 1000.0
}

impl serde::Serialize for Timeline {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let done = self.stages.iter().find(|(name, _)| *name == "done").map_or(0, |&(_, at)| at);
        let stage_at = |wanted: &str| self.stages.iter().find(|(name, _)| *name == wanted).map(|&(_, at)| at);
        let waited = match (stage_at("queued"), stage_at("placed")) {
            (Some(queued), Some(placed)) => Some(millis(placed - queued)),
            _ => None,
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id.to_string())?;
        map.serialize_entry("route", self.route)?;
        map.serialize_entry("received_unix_ms", &self.received_unix_ms)?;
        map.serialize_entry("model", &self.model)?;
        map.serialize_entry("key", &self.key)?;
        map.serialize_entry("status", &self.status)?;
        map.serialize_entry("outcome", self.outcome)?;
        map.serialize_entry("error", &self.error)?;
        map.serialize_entry("duration_ms", &millis(done))?;
        map.serialize_entry("queue_wait_ms", &waited)?;
        map.serialize_entry("load", &self.load.as_ref().map(LoadJson))?;
        map.serialize_entry("copy", &self.copy.as_ref().map(CopyJson))?;
        map.serialize_entry("tokens", &self.tokens)?;
        map.serialize_entry("stages", &StagesJson(&self.stages))?;
        map.end()
    }
}

struct LoadJson<'a>(&'a LoadKept);

impl serde::Serialize for LoadJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let load = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("neuron", &load.neuron)?;
        map.serialize_entry("swap", &!load.evicted.is_empty())?;
        map.serialize_entry("evicted", &load.evicted)?;
        map.serialize_entry("started_ms", &millis(load.started))?;
        map.serialize_entry("ready_ms", &load.ready.map(millis))?;
        map.serialize_entry("took_ms", &load.ready.map(|ready| millis(ready - load.started)))?;
        map.end()
    }
}

struct CopyJson<'a>(&'a Served);

impl serde::Serialize for CopyJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let copy = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("model", &copy.model)?;
        map.serialize_entry("neuron", &copy.neuron)?;
        map.serialize_entry("address", &copy.address)?;
        map.serialize_entry("harness", &copy.harness)?;
        map.serialize_entry("path", &copy.path)?;
        map.serialize_entry("native", &copy.native)?;
        map.end()
    }
}

struct StagesJson<'a>(&'a [(&'static str, i64)]);

impl serde::Serialize for StagesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        let mut previous = None;
        for &(name, at) in self.0 {
            let after = previous.map_or(0.0, |previous| millis(at - previous));
            seq.serialize_element(
                &serde_json::json!({"stage": name, "at_ms": millis(at), "after_ms": after}),
            )?;
            previous = Some(at);
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests;
