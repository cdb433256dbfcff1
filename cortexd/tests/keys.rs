//! Client keys through the gateway against a fake neuron: refusals in each route's dialect,
//! model scopes, rates, budgets, usage settled from the engine's counts (streams and streams
//! cut short), the model list a key sees, and a revocation by a fleet reload.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::fake_neuron::FakeNeuron;
use support::gateway::{Gateway, limits, start};

/// `printf %s ck-alice | sha256sum`, and so on.
const ALICE: &str = "214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d";
const BATCH: &str = "f62616b17bdd474b5411c5e2973b41f103341e1e3db479fbcb738f6f76373d8f";

fn fleet(endpoint: &str, keys: &str) -> String {
    format!(
        r#"[[neuron]]
name = "fake"
endpoint = "{endpoint}"

[[model]]
id = "m"
aliases = ["m-alias"]
harness = "llamacpp"
source = "m.gguf"
vram_mb = 1000

[[model]]
id = "other"
harness = "llamacpp"
source = "o.gguf"
vram_mb = 1000

{keys}"#
    )
}

async fn gateway(keys: &str) -> (Arc<FakeNeuron>, Gateway) {
    let (fake, gateway, _) = gateway_at(keys).await;
    (fake, gateway)
}

async fn gateway_at(keys: &str) -> (Arc<FakeNeuron>, Gateway, String) {
    let fake = FakeNeuron::new("fake", 24_000, Duration::from_millis(10));
    let endpoint = fake.start().await;
    let gateway = start(&fleet(&endpoint, keys), &[], limits()).await;
    (fake, gateway, endpoint)
}

async fn chat(gateway: &Gateway, secret: Option<&str>, model: &str, stream: bool) -> reqwest::Response {
    let body = serde_json::json!({"model": model, "stream": stream, "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}]});
    let mut request = reqwest::Client::new().post(format!("{}/v1/chat/completions", gateway.url)).json(&body);
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    request.send().await.expect("sent")
}

async fn messages(gateway: &Gateway, secret: &str, model: &str) -> reqwest::Response {
    let body = serde_json::json!({"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    reqwest::Client::new()
        .post(format!("{}/v1/messages", gateway.url))
        .header("x-api-key", secret)
        .json(&body)
        .send()
        .await
        .expect("sent")
}

async fn error_of(response: reqwest::Response) -> (u16, Option<String>, serde_json::Value) {
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().expect("ascii").to_owned());
    (status, retry_after, response.json().await.expect("a JSON error body"))
}

/// Tokens `key` used today, as the usage store (and what is pending for it) says.
fn used_today(gateway: &Gateway, key: &str) -> u64 {
    let today = cortexd::day_index(cortexd::now_unix_ms());
    gateway.keys.usage().tokens(key, today, today).expect("usage readable")
}

#[tokio::test]
async fn refusals_come_in_each_routes_dialect() {
    let keys = format!(
        "[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\nmodels = [\"m-alias\"]\n\n\
         [[key]]\nname = \"batch\"\nsha256 = \"{BATCH}\"\nrevoked = true\n"
    );
    let (_fake, gateway) = gateway(&keys).await;
    let (status, _, body) = error_of(chat(&gateway, None, "m", false).await).await;
    assert_eq!(
        (status, &body["error"]["type"], &body["error"]["code"]),
        (401, &"authentication_error".into(), &"invalid_api_key".into())
    );
    let (status, _, body) = error_of(chat(&gateway, Some("ck-batch"), "m", false).await).await;
    assert_eq!((status, body["error"]["message"].as_str()), (401, Some("API key \"batch\" was revoked")));
    let (status, _, body) = error_of(messages(&gateway, "ck-batch", "m").await).await;
    assert_eq!(
        (status, &body["type"], &body["error"]["type"]),
        (401, &"error".into(), &"authentication_error".into())
    );
    // Scoped to an alias: the id is the same model; another model is not.
    assert_eq!(chat(&gateway, Some("ck-alice"), "m", false).await.status(), 200);
    let (status, _, body) = error_of(chat(&gateway, Some("ck-alice"), "other", false).await).await;
    assert_eq!((status, &body["error"]["type"]), (403, &"permission_error".into()));
    let (status, _, body) = error_of(messages(&gateway, "ck-alice", "other").await).await;
    assert_eq!((status, &body["error"]["type"]), (403, &"permission_error".into()));
    assert_eq!(
        body["error"]["message"], "API key \"alice\" may not use model \"other\"",
        "Anthropic's shape: {body}"
    );
}

#[tokio::test]
async fn rates_concurrency_and_budgets_answer_429_with_retry_after() {
    let keys = format!(
        "[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\nrpm = 1\n\n\
         [[key]]\nname = \"batch\"\nsha256 = \"{BATCH}\"\ntokens_per_day = 1\n"
    );
    let (_fake, gateway) = gateway(&keys).await;
    assert_eq!(chat(&gateway, Some("ck-alice"), "m", false).await.status(), 200);
    let (status, retry_after, body) = error_of(chat(&gateway, Some("ck-alice"), "m", false).await).await;
    assert_eq!(status, 429);
    let retry_after: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!(
        (50..=60).contains(&retry_after),
        "a request per minute comes back within the minute: {retry_after}"
    );
    assert_eq!(
        (&body["error"]["type"], &body["error"]["code"]),
        (&"requests".into(), &"rate_limit_exceeded".into())
    );
    // The budget of 1 token: the first request is admitted (nothing used yet) and overshoots.
    assert_eq!(chat(&gateway, Some("ck-batch"), "m", false).await.status(), 200);
    let spent = chat(&gateway, Some("ck-batch"), "m", false).await;
    assert_eq!(spent.headers()["x-should-retry"], "false");
    let (status, retry_after, body) = error_of(spent).await;
    assert_eq!(status, 429);
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (1..=86_400).contains(&s))));
    assert_eq!(
        (&body["error"]["type"], &body["error"]["code"]),
        (&"insufficient_quota".into(), &"insufficient_quota".into())
    );
    let (status, _, body) = error_of(messages(&gateway, "ck-batch", "m").await).await;
    assert_eq!((status, &body["error"]["type"]), (429, &"rate_limit_error".into()));
}

#[tokio::test]
async fn usage_is_the_engines_count_for_bodies_streams_and_streams_cut_short() {
    let keys = format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\n");
    let (fake, gateway) = gateway(&keys).await;
    let response = chat(&gateway, Some("ck-alice"), "m", false).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");
    wait_until(|| used_today(&gateway, "alice") == 11, "the body's usage (5 + 6)").await;
    // cortex asks for the usage chunk on the client's behalf and counts it.
    let response = chat(&gateway, Some("ck-alice"), "m", true).await;
    let text = response.text().await.expect("stream");
    assert!(!text.contains("\"usage\""), "the usage chunk the client did not ask for is removed");
    wait_until(|| used_today(&gateway, "alice") == 22, "the stream's usage").await;
    // A stream the client leaves: the prompt's estimate and the events that went out.
    fake.endless_streams.store(true, Ordering::SeqCst);
    let mut response = chat(&gateway, Some("ck-alice"), "m", true).await;
    for _ in 0..3 {
        response.chunk().await.expect("a chunk").expect("not ended");
    }
    drop(response);
    wait_until(|| used_today(&gateway, "alice") > 22 + 3, "a cut stream is charged").await;
    let charged = used_today(&gateway, "alice") - 22;
    assert!(charged < 200, "about the prompt's estimate plus a few events, not the reservation: {charged}");
}

#[tokio::test]
async fn the_model_list_shows_what_the_key_may_use() {
    let keys = format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\nmodels = [\"other\"]\n");
    let (_fake, gateway) = gateway(&keys).await;
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/models", gateway.url))
        .bearer_auth("ck-alice")
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> =
        list["data"].as_array().expect("list").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["other"]);
    let hidden = reqwest::Client::new()
        .get(format!("{}/v1/models/m", gateway.url))
        .bearer_auth("ck-alice")
        .send()
        .await
        .expect("sent");
    assert_eq!(hidden.status(), 404);
}

#[tokio::test]
async fn a_key_revoked_by_a_fleet_edit_is_refused_from_the_next_request() {
    let keys = format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\n");
    let (_fake, gateway, endpoint) = gateway_at(&keys).await;
    assert_eq!(chat(&gateway, Some("ck-alice"), "m", false).await.status(), 200);
    let revoked =
        fleet(&endpoint, &format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\nrevoked = true\n"));
    let load = plans::fleet::load(&[("fleet.toml".to_owned(), revoked)]);
    gateway.fleet.send_replace(Arc::new(load.fleet.expect("valid")));
    assert_eq!(chat(&gateway, Some("ck-alice"), "m", false).await.status(), 401);
}

async fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_budget_under_concurrent_streams_ends_within_one_request_of_its_limit() {
    const BUDGET: u64 = 300;
    const PER_REQUEST: u64 = 11; // the fake engine's usage: 5 prompt + 6 completion tokens
    let keys = format!("[[key]]\nname = \"alice\"\nsha256 = \"{ALICE}\"\ntokens_per_day = {BUDGET}\n");
    let (_fake, gateway) = gateway(&keys).await;
    let stream = |gateway: &Gateway| {
        let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]});
        let request = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth("ck-alice")
            .json(&body);
        async move {
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            response.bytes().await.expect("read to the end");
            status
        }
    };
    let mut served = 0;
    for round in 0.. {
        assert!(round < 100, "the budget never ran out");
        let statuses = futures_util::future::join_all((0..8).map(|_| stream(&gateway))).await;
        served += statuses.iter().filter(|s| **s == 200).count() as u64;
        assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
        if statuses.iter().all(|s| *s == 429) {
            break;
        }
    }
    let used = used_today(&gateway, "alice");
    assert_eq!(used, served * PER_REQUEST, "every served stream is charged its usage");
    assert!(
        (BUDGET..=BUDGET + PER_REQUEST).contains(&used),
        "refused only once spent, and over by at most one request: {used} of {BUDGET}"
    );
}
