//! The metric handles a forwarded request records into while in flight and when it ends, looked
//! up in the registry once per (model, neuron, route, key) and kept: building five label sets
//! and registry keys per request was about 9% of a request's instructions (docs/benchmarks.md).
//! The `key` label is a declared key's name, or empty (the open API, cortex.toml's `api_keys`):
//! never a name a client makes up.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use metrics::{Counter, Gauge, Histogram};

/// How a forwarded request ended, as `cortex_requests_total{status}` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    UpstreamError,
    ClientClosed,
}

impl Outcome {
    /// The `status` label (and the outcome a request's timeline shows).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientClosed => "client_closed",
        }
    }
}

/// A request's token counts from the engine's usage, in one meaning whatever the dialect:
/// `prompt` is the whole prompt (Anthropic's `input_tokens` plus its cache reads and writes),
/// `cached` the part of it the engine took from its prompt cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
}

/// The series one (model, neuron, route, key) records into.
pub struct Handles {
    /// `cortex_requests_total` by [`Outcome`], in its order.
    requests: [Counter; 3],
    pub duration: Histogram,
    pub time_to_first_token: Histogram,
    pub tokens_per_second: Histogram,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    /// `cortex_cached_prompt_tokens_total`: the part of `prompt_tokens` the engine had cached.
    pub cached_prompt_tokens: Counter,
    /// `cortex_inflight_requests{model, neuron}` (the same series for every route).
    inflight: Gauge,
}

impl Handles {
    pub fn requests(&self, outcome: Outcome) -> &Counter {
        &self.requests[outcome as usize]
    }

    fn register(model: &str, neuron: &str, route: &'static str, key: &str) -> Self {
        let requests = |status: &'static str| metrics::counter!("cortex_requests_total", "model" => model.to_owned(), "neuron" => neuron.to_owned(), "route" => route, "status" => status, "key" => key.to_owned());
        let tokens = |kind: &'static str| metrics::counter!("cortex_tokens_total", "model" => model.to_owned(), "kind" => kind, "key" => key.to_owned());
        Handles {
            requests: [requests("ok"), requests("upstream_error"), requests("client_closed")],
            duration: metrics::histogram!("cortex_request_duration_seconds", "model" => model.to_owned(), "route" => route),
            time_to_first_token: metrics::histogram!("cortex_time_to_first_token_seconds", "model" => model.to_owned(), "route" => route),
            tokens_per_second: metrics::histogram!("cortex_tokens_per_second", "model" => model.to_owned()),
            prompt_tokens: tokens("prompt"),
            completion_tokens: tokens("completion"),
            cached_prompt_tokens: metrics::counter!("cortex_cached_prompt_tokens_total", "model" => model.to_owned(), "key" => key.to_owned()),
            inflight: metrics::gauge!("cortex_inflight_requests", "model" => model.to_owned(), "neuron" => neuron.to_owned()),
        }
    }
}

/// One forwarded request in `cortex_inflight_requests` until it is dropped (with the response
/// body); it carries the request's handles for the metrics recorded at its end.
pub struct InFlightGuard {
    handles: Arc<Handles>,
}

impl InFlightGuard {
    pub fn enter(handles: Arc<Handles>) -> Self {
        handles.inflight.increment(1.0);
        InFlightGuard { handles }
    }

    pub fn handles(&self) -> &Handles {
        &self.handles
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.handles.inflight.decrement(1.0);
    }
}

/// model → neuron → route → key → handles: nested so that a lookup borrows its keys (no
/// allocation).
type Cache = HashMap<String, HashMap<String, HashMap<&'static str, HashMap<String, Arc<Handles>>>>>;

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

/// The handles of `(model, neuron, route, key)`, registered on first use.
pub fn handles(model: &str, neuron: &str, route: &'static str, key: &str) -> Arc<Handles> {
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    let found =
        cache.get(model).and_then(|n| n.get(neuron)).and_then(|r| r.get(route)).and_then(|k| k.get(key));
    if let Some(found) = found {
        return found.clone();
    }
    let made = Arc::new(Handles::register(model, neuron, route, key));
    cache
        .entry(model.to_owned())
        .or_default()
        .entry(neuron.to_owned())
        .or_default()
        .entry(route)
        .or_default()
        .insert(key.to_owned(), made.clone());
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_registration_serves_every_request_of_a_model_neuron_and_route() {
        let first = handles("m-cache", "n1", "chat", "");
        assert!(Arc::ptr_eq(&first, &handles("m-cache", "n1", "chat", "")));
        assert!(!Arc::ptr_eq(&first, &handles("m-cache", "n2", "chat", "")));
        assert!(!Arc::ptr_eq(&first, &handles("m-cache", "n1", "messages", "")));
        assert!(!Arc::ptr_eq(&first, &handles("m-other", "n1", "chat", "")));
        assert!(!Arc::ptr_eq(&first, &handles("m-cache", "n1", "chat", "alice")));
    }

    #[test]
    fn the_handles_record_into_the_series_the_dashboards_query() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let text = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let handles = handles("m-render", "n1", "chat_completions", "alice");
            handles.requests(Outcome::ClientClosed).increment(1);
            handles.completion_tokens.increment(7);
            handles.cached_prompt_tokens.increment(5);
            handles.duration.record(0.5);
        });
        let rendered = text.render();
        for series in [
            r#"cortex_requests_total{model="m-render",neuron="n1",route="chat_completions",status="client_closed",key="alice"} 1"#,
            r#"cortex_requests_total{model="m-render",neuron="n1",route="chat_completions",status="ok",key="alice"} 0"#,
            r#"cortex_tokens_total{model="m-render",kind="completion",key="alice"} 7"#,
            r#"cortex_cached_prompt_tokens_total{model="m-render",key="alice"} 5"#,
            r#"cortex_request_duration_seconds_count{model="m-render",route="chat_completions"} 1"#,
        ] {
            assert!(rendered.contains(series), "{series} missing from:\n{rendered}");
        }
    }
}
