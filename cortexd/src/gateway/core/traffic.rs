//! The gateway's recent traffic per model, for the fleet page's charts: the last 15 minutes in
//! 10-second buckets, kept in memory. Bounded by construction: each model owns a fixed ring of
//! buckets (old buckets are overwritten, never appended), and at most [`MAX_MODELS`] models are
//! kept (the one idle longest makes room). Fed by one call when a forwarded request ends, and
//! one when a request for a known model fails on the fleet's side before an engine answered it
//! (`gateway::core::pipeline::count_failure`).
//!
//! The daemon owns one window (`AppState::traffic`) and hands it to the fleet page's feed; there
//! is no process-wide window.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::control::poller::now_unix_ms;
use crate::gateway::core::request_metrics::Tokens;

/// Width of one bucket.
const BUCKET_SECONDS: u64 = 10;
/// Buckets in the window: 90 × 10 s = 15 minutes.
const BUCKETS: usize = 90;
/// Models kept at most; model names come from the fleet or from what neurons serve, but a
/// bound keeps memory flat whatever happens.
const MAX_MODELS: usize = 256;

/// Upper bounds (milliseconds) of the time-to-first-token histogram kept per bucket; the last
/// one catches everything slower. Percentiles interpolate inside a histogram bucket.
const TTFT_BOUNDS_MS: [u32; 24] = [
    1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500,
    10_000, 20_000, 60_000, 600_000,
];

/// Ten seconds of one model's traffic.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// `unix seconds / BUCKET_SECONDS` of the interval this bucket holds; a bucket whose epoch
    /// is not the current one for its slot is stale and reads as empty.
    epoch: u64,
    requests: u32,
    errors: u32,
    completion_tokens: u64,
    prompt_tokens: u64,
    /// The part of `prompt_tokens` the engine took from its prompt cache.
    cached_tokens: u64,
    ttft: [u32; TTFT_BOUNDS_MS.len()],
}

/// One model's ring of buckets.
struct ModelWindow {
    buckets: Box<[Bucket; BUCKETS]>,
    /// The newest epoch recorded: decides which model makes room when the map is full.
    last_epoch: u64,
}

/// The window. One writer per request end, one reader per page refresh; a short lock each.
#[derive(Default)]
pub struct Traffic {
    models: Mutex<HashMap<String, ModelWindow>>,
}

/// The window as the page's charts read it: for each model, one value per bucket, oldest
/// first; the last bucket is the one in progress.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Window {
    pub step_s: u64,
    /// Unix seconds at which the first bucket starts.
    pub start_unix_s: u64,
    pub models: Vec<Series>,
}

/// One model's charts. `ttft_*` are `None` for buckets without a first token.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Series {
    pub model: String,
    pub requests: Vec<u32>,
    pub errors: Vec<u32>,
    pub completion_tokens: Vec<u64>,
    pub prompt_tokens: Vec<u64>,
    /// The part of `prompt_tokens` the engine took from its prompt cache (the page's cache share).
    pub cached_tokens: Vec<u64>,
    pub ttft_p50_ms: Vec<Option<u32>>,
    pub ttft_p95_ms: Vec<Option<u32>>,
}

impl Traffic {
    /// Add one request that ended now: the gateway's hook, called where forwarding records the
    /// request's metrics, with the engine's usage.
    pub fn add(
        &self,
        model: &str,
        started: Instant,
        first_token_at: Option<Instant>,
        usage: Option<Tokens>,
        failed: bool,
    ) {
        let ttft = first_token_at.map(|first| first.duration_since(started));
        self.record_at(now_unix_ms(), model, !failed, ttft, usage.unwrap_or_default());
    }

    /// Record a request that ended at `now_unix_ms`.
    pub fn record_at(&self, now_unix_ms: u64, model: &str, ok: bool, ttft: Option<Duration>, tokens: Tokens) {
        let epoch = now_unix_ms / 1000 / BUCKET_SECONDS;
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        if !models.contains_key(model) {
            make_room(&mut models);
            let window = ModelWindow { buckets: Box::new([Bucket::default(); BUCKETS]), last_epoch: epoch };
            models.insert(model.to_owned(), window);
        }
        let Some(window) = models.get_mut(model) else { return };
        window.last_epoch = window.last_epoch.max(epoch);
        let bucket = &mut window.buckets[slot(epoch)];
        if bucket.epoch != epoch {
            *bucket = Bucket { epoch, ..Bucket::default() };
        }
        bucket.requests = bucket.requests.saturating_add(1);
        if !ok {
            bucket.errors = bucket.errors.saturating_add(1);
        }
        bucket.completion_tokens = bucket.completion_tokens.saturating_add(tokens.completion);
        bucket.prompt_tokens = bucket.prompt_tokens.saturating_add(tokens.prompt);
        bucket.cached_tokens = bucket.cached_tokens.saturating_add(tokens.cached);
        if let Some(ttft) = ttft {
            let ms = u32::try_from(ttft.as_millis()).unwrap_or(u32::MAX);
            let index =
                TTFT_BOUNDS_MS.iter().position(|&bound| ms <= bound).unwrap_or(TTFT_BOUNDS_MS.len() - 1);
            bucket.ttft[index] = bucket.ttft[index].saturating_add(1);
        }
    }

    /// The last 15 minutes up to `now_unix_ms`. Models without a request in the window are
    /// left out, and forgotten.
    pub fn window(&self, now_unix_ms: u64) -> Window {
        let newest = now_unix_ms / 1000 / BUCKET_SECONDS;
        let oldest = newest.saturating_sub(BUCKETS as u64 - 1);
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        models.retain(|_, window| window.last_epoch >= oldest);
        let mut series: Vec<Series> = models
            .iter()
            .map(|(model, window)| series(model, window, oldest, newest))
            .filter(|s| s.requests.iter().any(|&r| r > 0))
            .collect();
        drop(models);
        series.sort_by(|a, b| a.model.cmp(&b.model));
        Window { step_s: BUCKET_SECONDS, start_unix_s: oldest * BUCKET_SECONDS, models: series }
    }

    /// Bytes the window holds (its map and every model's ring), to show it stays flat.
    #[cfg(test)]
    fn footprint_bytes(&self) -> usize {
        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = std::mem::size_of::<(String, ModelWindow)>();
        let rings: usize =
            models.keys().map(|name| name.capacity() + std::mem::size_of::<[Bucket; BUCKETS]>()).sum();
        models.capacity() * entry + rings
    }
}

fn slot(epoch: u64) -> usize {
    (epoch % BUCKETS as u64) as usize
}

/// With the map full, forget the model idle longest.
fn make_room(models: &mut HashMap<String, ModelWindow>) {
    if models.len() < MAX_MODELS {
        return;
    }
    let idlest = models.iter().min_by_key(|(_, window)| window.last_epoch).map(|(name, _)| name.clone());
    if let Some(name) = idlest {
        models.remove(&name);
    }
}

fn series(model: &str, window: &ModelWindow, oldest: u64, newest: u64) -> Series {
    let mut out = Series {
        model: model.to_owned(),
        requests: Vec::with_capacity(BUCKETS),
        errors: Vec::with_capacity(BUCKETS),
        completion_tokens: Vec::with_capacity(BUCKETS),
        prompt_tokens: Vec::with_capacity(BUCKETS),
        cached_tokens: Vec::with_capacity(BUCKETS),
        ttft_p50_ms: Vec::with_capacity(BUCKETS),
        ttft_p95_ms: Vec::with_capacity(BUCKETS),
    };
    for epoch in oldest..=newest {
        let bucket = window.buckets[slot(epoch)];
        let bucket = if bucket.epoch == epoch { bucket } else { Bucket::default() };
        out.requests.push(bucket.requests);
        out.errors.push(bucket.errors);
        out.completion_tokens.push(bucket.completion_tokens);
        out.prompt_tokens.push(bucket.prompt_tokens);
        out.cached_tokens.push(bucket.cached_tokens);
        out.ttft_p50_ms.push(percentile(&bucket.ttft, 0.50));
        out.ttft_p95_ms.push(percentile(&bucket.ttft, 0.95));
    }
    out
}

/// The `q` quantile of a TTFT histogram, interpolated linearly inside its histogram bucket.
fn percentile(histogram: &[u32; TTFT_BOUNDS_MS.len()], q: f64) -> Option<u32> {
    let total: u64 = histogram.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (index, &count) in histogram.iter().enumerate() {
        let count = u64::from(count);
        if count > 0 && (below + count) as f64 >= rank {
            let lower = if index == 0 { 0 } else { TTFT_BOUNDS_MS[index - 1] };
            let upper = TTFT_BOUNDS_MS[index];
            let fraction = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
            return Some(lower + (f64::from(upper - lower) * fraction).round() as u32);
        }
        below += count;
    }
    TTFT_BOUNDS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn completion(tokens: u64) -> Tokens {
        Tokens { completion: tokens, ..Tokens::default() }
    }

    #[test]
    fn requests_land_in_their_ten_second_bucket() {
        let traffic = Traffic::default();
        traffic.record_at(T0, "m", true, Some(Duration::from_millis(40)), completion(100));
        traffic.record_at(T0 + 1_000, "m", false, None, completion(0));
        traffic.record_at(T0 + 30_000, "m", true, Some(Duration::from_millis(400)), completion(50));
        let window = traffic.window(T0 + 30_000);
        assert_eq!(window.models.len(), 1);
        let series = &window.models[0];
        assert_eq!(series.requests.len(), BUCKETS);
        let now = BUCKETS - 1;
        // T0 falls in the bucket three before the newest one (30 s = 3 buckets).
        assert_eq!((series.requests[now - 3], series.errors[now - 3]), (2, 1));
        assert_eq!(series.completion_tokens[now - 3], 100);
        assert_eq!((series.requests[now], series.completion_tokens[now]), (1, 50));
        let p50 = series.ttft_p50_ms[now - 3].expect("a first token was recorded");
        assert!((35..=50).contains(&p50), "p50 {p50} ms lies in the histogram bucket of 40 ms");
        assert_eq!(series.ttft_p50_ms[now - 1], None);
    }

    #[test]
    fn the_gateway_hook_records_into_the_window() {
        let traffic = Traffic::default();
        let started = Instant::now();
        let first = started + Duration::from_millis(120);
        let usage = Tokens { prompt: 10, completion: 64, cached: 8 };
        traffic.add("hook-test-model", started, Some(first), Some(usage), false);
        traffic.add("hook-test-model", started, None, None, true);
        let window = traffic.window(now_unix_ms());
        let series = window.models.iter().find(|s| s.model == "hook-test-model").expect("the hook's model");
        let (requests, errors, tokens) = (
            series.requests.iter().sum::<u32>(),
            series.errors.iter().sum::<u32>(),
            series.completion_tokens.iter().sum::<u64>(),
        );
        assert_eq!((requests, errors, tokens), (2, 1, 64));
        let prompt: (u64, u64) = (series.prompt_tokens.iter().sum(), series.cached_tokens.iter().sum());
        assert_eq!(prompt, (10, 8), "the prompt and its cached part, for the cache share");
        let p50 = series.ttft_p50_ms.iter().flatten().next().copied();
        assert!(
            p50.is_some_and(|ms| (100..=150).contains(&ms)),
            "ttft p50 {p50:?} holds the 120 ms first token"
        );
    }

    #[test]
    fn percentiles_follow_the_distribution() {
        let traffic = Traffic::default();
        for i in 0..100u64 {
            // 90 fast (20 ms) and 10 slow (2 s) first tokens.
            let ms = if i < 90 { 20 } else { 2_000 };
            traffic.record_at(T0, "m", true, Some(Duration::from_millis(ms)), completion(1));
        }
        let window = traffic.window(T0);
        let series = &window.models[0];
        let last = BUCKETS - 1;
        let (p50, p95) = (series.ttft_p50_ms[last].unwrap_or(0), series.ttft_p95_ms[last].unwrap_or(0));
        assert!((10..=20).contains(&p50), "p50 {p50}");
        assert!((1_500..=2_000).contains(&p95), "p95 {p95}");
    }

    #[test]
    fn old_traffic_leaves_the_window() {
        let traffic = Traffic::default();
        traffic.record_at(T0, "old", true, None, completion(1));
        traffic.record_at(T0 + 16 * 60_000, "new", true, None, completion(1));
        let window = traffic.window(T0 + 16 * 60_000);
        let names: Vec<&str> = window.models.iter().map(|s| s.model.as_str()).collect();
        assert_eq!(names, ["new"]);
        // A slot reused after a full turn of the ring starts from zero.
        traffic.record_at(
            T0 + 16 * 60_000 + (BUCKETS as u64) * BUCKET_SECONDS * 1000,
            "new",
            true,
            None,
            completion(1),
        );
        let window = traffic.window(T0 + 16 * 60_000 + (BUCKETS as u64) * BUCKET_SECONDS * 1000);
        assert_eq!(window.models[0].requests.iter().sum::<u32>(), 1);
    }

    #[test]
    fn memory_stays_flat_over_many_requests_and_models() {
        let traffic = Traffic::default();
        // Warm up: every model slot in use, every bucket of the ring written.
        let mut now = T0;
        for i in 0..(MAX_MODELS * BUCKETS) as u64 {
            traffic.record_at(
                now,
                &format!("model-{}", i % MAX_MODELS as u64),
                true,
                Some(Duration::from_millis(i % 900)),
                completion(7),
            );
            now += 50;
        }
        let settled = traffic.footprint_bytes();
        // A hundred thousand more over three hours, with four times as many distinct model names
        // as are kept (each one new to the map: the worst case for its bound).
        for i in 0..100_000u64 {
            let model = format!("model-{}", i % (4 * MAX_MODELS as u64));
            traffic.record_at(
                now,
                &model,
                i % 17 != 0,
                Some(Duration::from_millis(i % 3_000)),
                completion(i % 300),
            );
            now += 100;
        }
        let after = traffic.footprint_bytes();
        assert!(after <= settled + settled / 10, "footprint grew from {settled} to {after} bytes");
        let window = traffic.window(now);
        assert!(window.models.len() <= MAX_MODELS, "{} models kept", window.models.len());
        assert!(window.models.iter().all(|s| s.requests.len() == BUCKETS));
    }
}
