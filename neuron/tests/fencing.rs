//! Cluster fencing at the neuron, in-process: the term of lifecycle calls is checked with the
//! generation, a lower one (or none, once one was seen) is refused with 409 `fenced`, the
//! highest term survives a restart, discovery says the neuron fences, and `GET /actions`
//! records every decision with its term.

mod common;

use std::time::Duration;

use common::{TOKEN, TestNeuron, load_body};
use serde_json::{Value, json};

const SIM: &str = r#"
[harness.sim]
kind = "sim"
load_ms = 100
ttft_ms = 5
tokens_per_second = 1000
devices = [{ name = "SimGPU 24G", vram_mb = 24000 }]
"#;

fn with_term(mut body: Value, term: u64) -> Value {
    body["term"] = json!(term);
    body
}

#[tokio::test]
async fn a_lower_term_is_fenced_under_the_generation_lock_and_the_record_says_so() {
    let node = TestNeuron::start((41200, 41219), SIM, None, None).await;
    let discovery = node.get_json("/discovery").await;
    assert_eq!(discovery["fencing"], true, "discovery advertises fencing: {discovery}");

    // Leader of term 5 fences, then loads.
    let (status, fenced) = node.call("/fence", &json!({"term": 5})).await;
    assert_eq!((status, fenced["term"].as_u64()), (200, Some(5)), "{fenced}");
    let (status, _) = node.call("/models/load", &with_term(load_body("a", "sim", "a.gguf"), 5)).await;
    assert_eq!(status, 202);
    node.wait_ready("a", Duration::from_secs(30)).await;

    // A paused ex-leader of term 4 wakes up: refused, even with the right generation.
    let generation = node.generation().await;
    let mut stale = with_term(json!({"model": "a"}), 4);
    stale["if_generation"] = json!(generation);
    let (status, refused) = node.call("/models/unload", &stale).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "fenced");
    assert_eq!(refused["error"]["term"], 5, "the refusal names the term in force: {refused}");
    let (status, refused) = node.call("/fence", &json!({"term": 3})).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("fenced")));
    // A caller without a term (a standalone cortex, `cortex apply`) is refused once a term was seen.
    let (status, refused) = node.call("/models/load", &load_body("b", "sim", "b.gguf")).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("fenced")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap_or("").contains("cluster"), "{refused}");

    // A newer leader's term is raised even when its generation is stale, and it acts next.
    let mut newer = with_term(json!({"model": "a"}), 6);
    newer["if_generation"] = json!(generation + 100);
    let (status, refused) = node.call("/models/unload", &newer).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("generation_mismatch")));
    let (status, _) = node.call("/models/unload", &with_term(json!({"model": "a"}), 5)).await;
    assert_eq!(status, 409, "term 5 is fenced by 6 now");
    let (status, _) = node.call("/models/unload", &with_term(json!({"model": "a"}), 6)).await;
    assert_eq!(status, 200);

    let record = node.get_json("/actions").await;
    assert_eq!(record["term"], 6);
    let decided: Vec<(String, Option<u64>, String)> = record["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or("").to_owned(),
                a["term"].as_u64(),
                a["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, Option<u64>, String)> = [
        ("fence", Some(5), "accepted"),
        ("load", Some(5), "accepted"),
        ("unload", Some(4), "fenced"),
        ("fence", Some(3), "fenced"),
        ("load", None, "fenced"),
        ("unload", Some(6), "generation_mismatch"),
        ("unload", Some(5), "fenced"),
        ("unload", Some(6), "accepted"),
    ]
    .iter()
    .map(|(k, t, o)| ((*k).to_owned(), *t, (*o).to_owned()))
    .collect();
    assert_eq!(decided, expected);
    let actions = record["actions"].as_array().expect("actions");
    assert!(actions[1]["ended_unix_ms"].is_u64(), "the load ended when it became ready: {}", actions[1]);
    assert!(actions[7]["ended_unix_ms"].is_u64(), "the unload ended when it finished: {}", actions[7]);
    // No accepted call ever carried a lower term than one accepted before it.
    let accepted: Vec<u64> =
        actions.iter().filter(|a| a["outcome"] == "accepted").filter_map(|a| a["term"].as_u64()).collect();
    assert!(accepted.windows(2).all(|w| w[0] <= w[1]), "{accepted:?}");
    node.stop().await;
}

#[tokio::test]
async fn the_highest_term_survives_a_restart_of_the_neuron() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).expect("models");
    let text = common::config_text(dir.path(), &models, (41220, 41239), SIM);
    let path = dir.path().join("neuron.toml");
    let start = || {
        let config = neuron::Config::from_toml(&path, &text).expect("valid");
        neuron::Neuron::from_config(config, TOKEN.to_owned()).expect("neuron")
    };
    let first = start();
    assert_eq!(first.fence(12).expect("fenced").term, 12);
    drop(first);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("state/term")).expect("persisted").trim(),
        "12",
        "state_dir defaults to `state` beside neuron.toml"
    );
    // A restarted neuron starts at generation 0, but not at term 0: the old leader stays fenced.
    let second = start();
    assert_eq!(second.generation(), 0);
    assert_eq!(second.actions().term, 12);
    let refused = second.fence(11).expect_err("lower than the persisted term");
    assert_eq!(refused.code(), "fenced");
    let refused =
        second.load(serde_json::from_value(with_term(load_body("a", "sim", "a.gguf"), 11)).expect("a load"));
    assert!(refused.is_err_and(|e| e.code() == "fenced"));
}
