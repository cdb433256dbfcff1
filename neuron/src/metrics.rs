//! The neuron's Prometheus metrics. Each neuron owns its own recorder (not the process-global
//! one), so several neurons can live in one test process. Counters and histograms are recorded
//! as events happen; gauges are refreshed from the live state at scrape time.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use plans::topology::{DeviceStatus, LoadedModel, ModelState};

const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

pub struct NeuronMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Models that have had a gauge, so that an unloaded one reads 0 rather than vanishing
    /// with a stale value. Short critical sections only.
    seen_models: Mutex<BTreeSet<String>>,
}

impl Default for NeuronMetrics {
    fn default() -> Self {
        NeuronMetrics::new()
    }
}

impl NeuronMetrics {
    pub fn new() -> NeuronMetrics {
        let buckets = [0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
        // Only fails on empty buckets, which these are not.
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("neuron_load_duration_seconds".to_owned()), &buckets)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        NeuronMetrics { recorder, handle, seen_models: Mutex::new(BTreeSet::new()) }
    }

    fn key(name: &'static str, labels: Vec<Label>) -> Key {
        Key::from_parts(name, labels)
    }

    pub fn engine_crashed(&self, model: &str) {
        let key =
            NeuronMetrics::key("neuron_engine_crashes_total", vec![Label::new("model", model.to_owned())]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    pub fn load_finished(&self, harness: &str, seconds: f64) {
        let key = NeuronMetrics::key(
            "neuron_load_duration_seconds",
            vec![Label::new("harness", harness.to_owned())],
        );
        self.recorder.register_histogram(&key, &METADATA).record(seconds);
    }

    /// Refresh the gauges from `devices` and `models`, then render the exposition text.
    pub fn render(&self, generation: u64, devices: &[DeviceStatus], models: &[LoadedModel]) -> String {
        let gauge = |name: &'static str, labels: Vec<Label>, value: f64| {
            self.recorder.register_gauge(&NeuronMetrics::key(name, labels), &METADATA).set(value);
        };
        gauge("neuron_generation", vec![], generation as f64);
        for device in devices {
            let used = device.vram_total_mb.saturating_sub(device.vram_free_mb) * 1_048_576;
            gauge(
                "neuron_device_vram_used_bytes",
                vec![Label::new("device", device.index.to_string())],
                used as f64,
            );
            let total = device.vram_total_mb * 1_048_576;
            gauge(
                "neuron_device_vram_total_bytes",
                vec![Label::new("device", device.index.to_string())],
                total as f64,
            );
        }
        let mut seen = self.seen_models.lock().unwrap_or_else(PoisonError::into_inner);
        seen.extend(models.iter().map(|m| m.id.clone()));
        for id in seen.iter() {
            let model = models.iter().find(|m| &m.id == id);
            let loaded = model.is_some_and(|m| m.status == ModelState::Loaded);
            let in_flight = model.map_or(0, |m| m.in_flight);
            gauge(
                "neuron_model_loaded",
                vec![Label::new("model", id.clone())],
                if loaded { 1.0 } else { 0.0 },
            );
            gauge("neuron_inflight_requests", vec![Label::new("model", id.clone())], f64::from(in_flight));
        }
        drop(seen);
        self.handle.render()
    }
}

/// HELP lines, so that the exposition passes `promtool check metrics`.
fn describe(recorder: &PrometheusRecorder) {
    let help: [(&'static str, &'static str); 7] = [
        ("neuron_device_vram_used_bytes", "VRAM in use per device"),
        ("neuron_device_vram_total_bytes", "VRAM per device"),
        ("neuron_model_loaded", "1 when the model is loaded and ready, 0 otherwise"),
        ("neuron_inflight_requests", "Inference requests being proxied to the model's engine"),
        ("neuron_generation", "Lifecycle generation of this neuron process"),
        ("neuron_load_duration_seconds", "Time from a load request to the engine being ready"),
        ("neuron_engine_crashes_total", "Engines that exited while loaded"),
    ];
    for (name, text) in help {
        let (name, text) = (metrics::KeyName::from(name), metrics::SharedString::from(text));
        if name.as_str().ends_with("_total") {
            recorder.describe_counter(name, None, text);
        } else if name.as_str().ends_with("_seconds") {
            recorder.describe_histogram(name, None, text);
        } else {
            recorder.describe_gauge(name, None, text);
        }
    }
}
