//! Request timelines end to end, with real `neuron` and `cortex serve` processes: a request for
//! a model that must swap another out shows, in `GET /admin/requests`, the wait in its queue,
//! the swap it waited behind (what was evicted, when the load began and was ready) and the copy
//! that served it; its id is the `x-request-id` it was answered with.

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::time::Duration;

use cortex_e2e::{
    ADMIN_KEY, Daemon, Neuron, cortex, cortex_config, eventually, neuron_table, sim_model, write_atomic,
};
use serde_json::{Value, json};

fn on_demand(id: &str, vram_mb: u64) -> String {
    format!("[[model]]\nid = \"{id}\"\nharness = \"sim\"\nsource = \"{id}.bin\"\nvram_mb = {vram_mb}\n\n")
}

/// A chat request for `model`; returns its `x-request-id`.
async fn chat(gateway: &str, model: &str, stream: bool) -> String {
    let body = json!({"model": model, "stream": stream, "max_tokens": 8,
                      "messages": [{"role": "user", "content": "Say hello."}]});
    let response = reqwest::Client::new()
        .post(format!("{gateway}/v1/chat/completions"))
        .json(&body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers().get("x-request-id").expect("an x-request-id").to_str().unwrap().to_owned();
    let text = response.text().await.unwrap();
    assert!(text.contains("choices"), "{text}");
    id
}

async fn admin(gateway: &str, path: &str) -> (u16, Value) {
    let response =
        reqwest::Client::new().get(format!("{gateway}{path}")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn stage(timeline: &Value, name: &str) -> f64 {
    let stages = timeline["stages"].as_array().unwrap();
    let found = stages.iter().find(|s| s["stage"] == name);
    found.and_then(|s| s["at_ms"].as_f64()).unwrap_or_else(|| panic!("no {name} stage in {timeline:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_waited_behind_a_swap_shows_the_wait_the_swap_and_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the pinned model and one of od-a / od-b; a load takes 1 s.
    let neuron = Neuron::start_sim(dir.path(), "gpu", &[24_000], 1_000).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let text = format!(
        "[policy]\nmin_residency = \"0s\"\nmax_wait = \"60s\"\n\n{}{}{}{}",
        neuron_table(&neuron),
        sim_model("pin", 8_000, &["gpu"], "pin.bin"),
        on_demand("od-a", 12_000),
        on_demand("od-b", 12_000)
    );
    write_atomic(&fleet.join("fleet.toml"), &text);
    let (config, port) = cortex_config(dir.path());
    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
    eventually("the pinned model to load", Duration::from_secs(60), async || {
        (neuron.loaded().await == ["pin"]).then_some(())
    })
    .await;
    let gateway = format!("http://127.0.0.1:{}", daemon.port);

    // od-a loads into free memory; od-b then swaps it out, streaming.
    let cold = chat(&gateway, "od-a", false).await;
    let swapped = chat(&gateway, "od-b", true).await;
    let warm = chat(&gateway, "od-b", false).await;

    let (status, listed) = admin(&gateway, "/admin/requests?model=od-b").await;
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<&str> =
        listed["requests"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [warm.as_str(), swapped.as_str()], "od-b's requests, newest first: {listed:#}");

    let (status, timeline) = admin(&gateway, &format!("/admin/requests/{swapped}")).await;
    assert_eq!(status, 200, "{timeline}");
    assert_eq!(
        (timeline["status"].as_u64(), timeline["outcome"].as_str()),
        (Some(200), Some("ok")),
        "{timeline:#}"
    );
    assert_eq!(timeline["route"], "chat_completions");
    // The swap it waited behind: od-a evicted on gpu, loaded and ready while it queued.
    let load = &timeline["load"];
    assert_eq!((load["neuron"].as_str(), load["swap"].as_bool()), (Some("gpu"), Some(true)), "{timeline:#}");
    assert_eq!(load["evicted"], json!(["od-a"]), "{timeline:#}");
    assert!(load["took_ms"].as_f64().unwrap() > 0.0, "{timeline:#}");
    let (queued, placed) = (stage(&timeline, "queued"), stage(&timeline, "placed"));
    assert!(stage(&timeline, "load_ready") <= placed && queued <= placed, "{timeline:#}");
    assert!(timeline["queue_wait_ms"].as_f64().unwrap() > 0.0, "{timeline:#}");
    // The copy that served it, natively.
    let copy = &timeline["copy"];
    assert_eq!(
        (copy["model"].as_str(), copy["neuron"].as_str()),
        (Some("od-b"), Some("gpu")),
        "{timeline:#}"
    );
    assert_eq!(
        (copy["native"].as_bool(), copy["harness"].as_str()),
        (Some(true), Some("sim")),
        "{timeline:#}"
    );
    assert_eq!(copy["path"], "/v1/chat/completions");
    let forwarded = stage(&timeline, "forwarded");
    assert!(placed <= forwarded && forwarded <= stage(&timeline, "first_byte"), "{timeline:#}");
    assert!(stage(&timeline, "first_byte") <= stage(&timeline, "done"), "{timeline:#}");
    assert!(timeline["tokens"]["out"].as_u64().is_some_and(|n| n > 0), "{timeline:#}");

    // The warm request was placed at once; the cold one waited behind a load that swapped nothing.
    let (_, placed_at_once) = admin(&gateway, &format!("/admin/requests/{warm}")).await;
    let (load, waited) = (&placed_at_once["load"], &placed_at_once["queue_wait_ms"]);
    assert!(load.is_null() && waited.is_null(), "{placed_at_once:#}");
    let (_, loaded) = admin(&gateway, &format!("/admin/requests/{cold}")).await;
    let load = &loaded["load"];
    assert_eq!((load["swap"].as_bool(), load["evicted"].clone()), (Some(false), json!([])), "{loaded:#}");

    // `cortex requests` tells the same story from a shell.
    let shown = cortex(&["requests", &swapped], &config, dir.path());
    let story = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{story}{}", String::from_utf8_lossy(&shown.stderr));
    assert!(story.contains("behind a swap (evicted od-a) on gpu"), "{story}");
    assert!(story.contains("copy  od-b on gpu") && story.contains("native /v1/chat/completions"), "{story}");
    let listed = cortex(&["requests", "--model", "od-b"], &config, dir.path());
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.contains(&warm) && table.contains(&swapped) && !table.contains(&cold), "{table}");

    // A refusal is kept too, filterable by its status; an unknown id is a 404.
    let response = reqwest::Client::new()
        .post(format!("{gateway}/v1/chat/completions"))
        .json(&json!({"model": "no-such-model", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let refused = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (_, listed) = admin(&gateway, "/admin/requests?status=4xx").await;
    assert_eq!(listed["requests"][0]["id"], refused.as_str(), "{listed:#}");
    assert_eq!(listed["requests"][0]["outcome"], "error", "{listed:#}");
    assert_eq!(admin(&gateway, "/admin/requests/0000000000000000").await.0, 404);
    let anonymous = reqwest::Client::new().get(format!("{gateway}/admin/requests")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "the admin key is needed");
}
