//! Prometheus metrics (spec §9): the recorder, histogram buckets, and the metrics listener.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Seconds buckets from 1 ms to 10 min: wide enough for proxy latency and cold loads alike.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];
const TOKENS_PER_SECOND: &[f64] =
    &[1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 400.0, 1000.0];

/// Install the process-wide recorder. Call once, before any metric is recorded.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full("cortex_tokens_per_second".into()), TOKENS_PER_SECOND)?;
    let handle = builder.install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "cortex_requests_total",
        "Inference requests by model, neuron, route, outcome and key (a declared key's name, else empty)"
    );
    describe_counter!(
        "cortex_key_refusals_total",
        "Requests of a declared key refused before forwarding, by reason (revoked, expired, model, rpm, tpm, max_concurrency, tokens_per_day, tokens_per_month)"
    );
    describe_histogram!("cortex_request_duration_seconds", "Time from request to the end of the response");
    describe_histogram!(
        "cortex_time_to_first_token_seconds",
        "Time from request to the first token (first event for streams)"
    );
    describe_counter!(
        "cortex_tokens_total",
        "Tokens by model, kind (prompt, completion) and key, from the engine's usage"
    );
    describe_counter!(
        "cortex_cached_prompt_tokens_total",
        "Prompt tokens the engine took from its prompt cache (part of the prompt count), by model and key"
    );
    describe_histogram!(
        "cortex_tokens_per_second",
        "Completion tokens per second of generation, per streamed request"
    );
    describe_counter!("cortex_cold_starts_total", "Models loaded because a request asked for them");
    describe_histogram!(
        "cortex_cold_start_duration_seconds",
        "Time to place, evict, load and ready a requested model"
    );
    describe_histogram!("cortex_queue_wait_seconds", "Time requests waited in a model's queue");
    describe_gauge!("cortex_inflight_requests", "Requests in flight through the gateway");
    describe_gauge!(
        "cortex_gateway_loop_delay_seconds",
        "How late the gateway's event loop runs (least of the last four 10 ms probes); past overload_delay new requests are shed"
    );
    describe_gauge!("cortex_queue_depth", "Requests waiting in a model's queue");
    describe_gauge!(
        "cortex_queue_oldest_wait_seconds",
        "How long the oldest request in a model's queue has waited"
    );
    describe_counter!("cortex_swaps_total", "Swaps started per neuron: loads that evict another model");
    describe_counter!(
        "cortex_queue_rejections_total",
        "Requests a model's queue refused, by reason (queue_full, queue_timeout, unplaceable, load_failed)"
    );
    describe_counter!(
        "cortex_evictions_total",
        "Models cortex unloaded, by reason (evict: to make room, prune, idle)"
    );
    // Affinity routing among a model's copies (gateway/core/affinity).
    describe_counter!(
        "cortex_affinity_routing_total",
        "Requests routed by session affinity, by outcome (hit: the session's first copy, \
         spilled: moved past it by load, new: a session not seen within the window)"
    );
    describe_gauge!("cortex_neuron_up", "1 when the neuron answers, 0 when it is unreachable");
    describe_histogram!(
        "cortex_poll_cycle_seconds",
        "Time to poll every neuron once (health, models, discovery on a new boot id)"
    );
    describe_gauge!("cortex_device_vram_used_bytes", "VRAM in use per neuron device");
    describe_gauge!("cortex_model_loaded", "1 when a model is loaded and ready on a neuron");
    describe_counter!("cortex_reconcile_runs_total", "Reconciler passes by result");
    describe_gauge!("cortex_fleet_in_sync", "1 when the observed fleet matches the fleet directory");
    describe_gauge!("cortex_fleet_info", "1 for the fleet revision the daemon serves (label revision)");
}

/// Publishes the fleet gauges from each observation, and zeroes the series of neurons,
/// devices and models that are no longer there (a gauge otherwise keeps its last value).
#[derive(Default)]
pub struct TopologyGauges {
    /// `(neuron, model)` pairs loaded at the last observation.
    loaded: std::collections::BTreeSet<(String, String)>,
    neurons: std::collections::BTreeSet<String>,
}

impl TopologyGauges {
    pub fn record(&mut self, topology: &plans::topology::Topology) {
        let mut loaded = std::collections::BTreeSet::new();
        let mut neurons = std::collections::BTreeSet::new();
        for neuron in &topology.neurons {
            neurons.insert(neuron.name.clone());
            metrics::gauge!("cortex_neuron_up", "neuron" => neuron.name.clone()).set(if neuron.reachable {
                1.0
            } else {
                0.0
            });
            for device in &neuron.devices {
                let used = device.vram_total_mb.saturating_sub(device.vram_free_mb) as f64 * 1024.0 * 1024.0;
                metrics::gauge!("cortex_device_vram_used_bytes", "neuron" => neuron.name.clone(), "device" => device.index.to_string())
                    .set(used);
            }
            for model in &neuron.models {
                let ready = model.status == plans::topology::ModelState::Loaded;
                metrics::gauge!("cortex_model_loaded", "neuron" => neuron.name.clone(), "model" => model.id.clone())
                    .set(if ready { 1.0 } else { 0.0 });
                loaded.insert((neuron.name.clone(), model.id.clone()));
            }
        }
        for (neuron, model) in self.loaded.difference(&loaded) {
            metrics::gauge!("cortex_model_loaded", "neuron" => neuron.clone(), "model" => model.clone())
                .set(0.0);
        }
        for neuron in self.neurons.difference(&neurons) {
            metrics::gauge!("cortex_neuron_up", "neuron" => neuron.clone()).set(0.0);
        }
        self.loaded = loaded;
        self.neurons = neurons;
    }
}

/// The operator listener's own route, `GET /metrics`; `serve` merges other operator pages in.
pub fn router(handle: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                handle.run_upkeep();
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
            }
        }),
    )
}

/// Serve the operator listener (`app`: at least [`router`]) on `listener`, under the same
/// limits as the inference API's, until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: cortex_listener::Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    cortex_listener::serve(listener, app, limits, shutdown).await
}
