//! The ring's bound, the recorder's stages and the filters.

use std::time::Duration;

use super::*;

fn json(timeline: &Timeline) -> serde_json::Value {
    serde_json::to_value(timeline).expect("serialises")
}

fn stage_names(value: &serde_json::Value) -> Vec<String> {
    let stages = value["stages"].as_array().expect("stages");
    stages.iter().map(|s| s["stage"].as_str().expect("name").to_owned()).collect()
}

/// A request recorded through every stage, with a load it waited behind.
fn full_request(ring: &Arc<Timelines>, model: &str, key: &str) -> RequestId {
    let recording = ring.start("chat_completions");
    let before = recording.started().checked_sub(Duration::from_millis(5)).expect("a past instant");
    recording.admitted(key);
    recording.model(model);
    recording.queued();
    let ready = Instant::now();
    recording.placed(Some(LoadSeen {
        neuron: "n1".into(),
        evicted: vec!["other".into()],
        started: before,
        ready: Some(ready),
    }));
    recording.forwarded(CopySeen {
        model,
        neuron: "n1",
        address: "http://127.0.0.1:1",
        harness: "sim",
        path: "/v1/chat/completions",
        native: true,
    });
    recording.answered(200, "n1");
    let tokens = Tokens { prompt: 12, cached: Some(4), completion: 7 };
    recording.finished("ok", Some(Instant::now()), Some(tokens));
    recording.id()
}

#[test]
fn a_recorded_request_shows_its_stages_in_order_with_the_load_and_the_copy() {
    let ring = Arc::new(Timelines::new(4));
    let id = full_request(&ring, "m", "alice");
    let kept = ring.get(id).expect("kept once the recorder is dropped");
    let value = json(&kept);
    assert_eq!(
        stage_names(&value),
        [
            "load_started",
            "received",
            "admitted",
            "queued",
            "load_ready",
            "placed",
            "forwarded",
            "answered",
            "first_byte",
            "done"
        ]
    );
    let stages = value["stages"].as_array().expect("stages");
    assert!(stages[0]["at_ms"].as_f64().expect("offset") <= -5.0, "the load began before: {value}");
    let mut previous = f64::MIN;
    for stage in stages {
        let at = stage["at_ms"].as_f64().expect("offset");
        assert!(at >= previous, "stages in time order: {value}");
        previous = at;
    }
    assert_eq!(value["id"], id.to_string());
    assert_eq!((value["model"].as_str(), value["key"].as_str()), (Some("m"), Some("alice")));
    assert_eq!((value["status"].as_u64(), value["outcome"].as_str()), (Some(200), Some("ok")));
    assert_eq!(value["load"]["evicted"], serde_json::json!(["other"]));
    assert_eq!(value["load"]["swap"], true);
    assert!(value["load"]["took_ms"].as_f64().expect("took") >= 5.0);
    assert_eq!(value["copy"]["native"], true);
    assert_eq!(value["copy"]["neuron"], "n1");
    assert_eq!(value["tokens"], serde_json::json!({"in": 12, "cached": 4, "out": 7}));
    assert!(value["queue_wait_ms"].as_f64().is_some());
}

#[test]
fn a_request_dropped_unfinished_is_client_closed_and_a_refused_one_keeps_its_error() {
    let ring = Arc::new(Timelines::new(4));
    let left = ring.start("messages");
    left.admitted("");
    left.queued();
    let left_id = left.id();
    drop(left);
    let value = json(&ring.get(left_id).expect("kept"));
    assert_eq!(value["outcome"], "client_closed");
    assert_eq!(stage_names(&value), ["received", "admitted", "queued", "done"]);
    assert!(value["queue_wait_ms"].is_null(), "never placed: {value}");

    let refused = ring.start("messages");
    refused.failed(503, "too many requests are waiting for m; try again shortly");
    let refused_id = refused.id();
    drop(refused);
    let value = json(&ring.get(refused_id).expect("kept"));
    assert_eq!((value["status"].as_u64(), value["outcome"].as_str()), (Some(503), Some("error")));
    assert!(value["error"].as_str().expect("error").starts_with("too many requests"));
}

#[test]
fn the_ring_keeps_its_capacity_newest_first() {
    let ring = Arc::new(Timelines::new(3));
    let ids: Vec<RequestId> = (0..10).map(|i| full_request(&ring, &format!("m{i}"), "k")).collect();
    assert_eq!(ring.len(), 3);
    let listed: Vec<RequestId> =
        ring.list(&Filter { limit: 100, ..Filter::default() }).iter().map(|t| t.id).collect();
    assert_eq!(listed, [ids[9], ids[8], ids[7]]);
    assert!(ring.get(ids[6]).is_none(), "the oldest are gone");
    let none = Arc::new(Timelines::new(0));
    let id = full_request(&none, "m", "k");
    assert!(none.get(id).is_none() && none.len() == 0, "capacity 0 keeps nothing");
}

#[test]
fn hostile_names_are_cut_and_an_entry_stays_within_its_bound() {
    let ring = Arc::new(Timelines::new(16));
    let huge = "é".repeat(100_000);
    for _ in 0..1_000 {
        let recording = ring.start("chat_completions");
        recording.admitted(&huge);
        recording.model(&huge);
        recording.queued();
        recording.placed(Some(LoadSeen {
            neuron: huge.clone(),
            evicted: vec![huge.clone(); 50],
            started: Instant::now(),
            ready: Some(Instant::now()),
        }));
        let copy = CopySeen {
            model: &huge,
            neuron: &huge,
            address: &huge,
            harness: &huge,
            path: &huge,
            native: false,
        };
        recording.forwarded(copy);
        recording.answered(200, &huge[2..]);
        recording.failed(502, &huge);
    }
    assert_eq!(ring.len(), 16, "never past its capacity");
    for timeline in ring.list(&Filter { limit: usize::MAX, ..Filter::default() }) {
        let bytes =
            std::mem::size_of::<Timeline>() + 2 * std::mem::size_of::<usize>() + timeline.heap_bytes();
        assert!(bytes <= MAX_ENTRY_BYTES, "{bytes} bytes over the bound {MAX_ENTRY_BYTES}");
        let value = json(&timeline);
        assert!(value["model"].as_str().expect("model").len() <= MAX_NAME);
        assert!(value["error"].as_str().expect("error").len() <= MAX_ERROR);
        assert_eq!(value["load"]["evicted"].as_array().expect("evicted").len(), MAX_EVICTED);
    }
}

#[test]
fn memory_per_entry_as_measured() {
    // The figures docs/operations.md quotes: a typical entry and the bound.
    let ring = Arc::new(Timelines::new(1));
    let capacity = crate::config::GatewayConfig::default().request_timelines;
    let id = full_request(&ring, "qwen2.5-coder-7b", "alice");
    let typical = ring.get(id).expect("kept");
    let bytes = std::mem::size_of::<Timeline>() + 2 * std::mem::size_of::<usize>() + typical.heap_bytes();
    println!(
        "timeline entry: {} bytes typical (entry {} + heap {}), {MAX_ENTRY_BYTES} bytes at most; \
         {} KiB typical and {} KiB at most for the default {capacity}",
        bytes,
        std::mem::size_of::<Timeline>(),
        typical.heap_bytes(),
        bytes * capacity / 1024,
        MAX_ENTRY_BYTES * capacity / 1024
    );
    assert!(bytes < 1024, "a typical entry is under a KiB ({bytes})");
    const { assert!(MAX_ENTRY_BYTES < 4 * 1024, "the bound is a few KiB") };
}

#[test]
fn filters_by_model_key_and_status() {
    let ring = Arc::new(Timelines::new(10));
    let a = full_request(&ring, "m1", "alice");
    let b = full_request(&ring, "m2", "bob");
    let anonymous = ring.start("chat_completions");
    anonymous.admitted("");
    anonymous.model("m2");
    anonymous.failed(429, "over budget");
    let c = anonymous.id();
    drop(anonymous);
    let ids = |filter: Filter| -> Vec<RequestId> { ring.list(&filter).iter().map(|t| t.id).collect() };
    let all = Filter { limit: 100, ..Filter::default() };
    assert_eq!(ids(Filter { model: Some("m2".into()), ..all.clone() }), [c, b]);
    assert_eq!(ids(Filter { key: Some("alice".into()), ..all.clone() }), [a]);
    assert_eq!(ids(Filter { key: Some("-".into()), ..all.clone() }), [c]);
    assert_eq!(ids(Filter { status: Some("4xx".into()), ..all.clone() }), [c]);
    assert_eq!(ids(Filter { status: Some("429".into()), ..all.clone() }), [c]);
    assert_eq!(ids(Filter { status: Some("ok".into()), ..all.clone() }), [b, a]);
    assert_eq!(ids(Filter { status: Some("error".into()), ..all.clone() }), [c]);
    assert_eq!(ids(Filter { status: Some("2xx".into()), limit: 1, ..all.clone() }), [b]);
    assert!(ids(Filter { status: Some("bogus".into()), ..all }).is_empty());
}

#[test]
fn ids_are_sixteen_hex_digits_and_read_back() {
    let ring = Arc::new(Timelines::new(1));
    let (first, second) = (ring.start("chat").id(), ring.start("chat").id());
    assert_ne!(first, second);
    let text = first.to_string();
    assert_eq!(text.len(), 16);
    assert_eq!(RequestId::parse(&text), Some(first));
    assert_eq!(first.header().to_str().expect("ascii"), text);
    assert_eq!(RequestId::parse("xyz"), None);
    assert_eq!(RequestId::parse("0123456789abcdeg"), None);
}
