//! Contended neurons end to end (spec §7 "Contention"), with real `neuron` and `cortex serve`
//! processes: clients alternating between two on-demand models that cannot both be loaded next
//! to a pinned one lose no request and swap a bounded number of times; an unload racing new
//! requests loses none; and the same with the real llama-server (fails, never skips, when
//! `bash tests/install.sh` has not run).

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cortex_e2e::{
    Daemon, GEMMA_GGUF, Neuron, cortex_config, eventually, installed_llama_server, neuron_table, sim_model,
    write_atomic,
};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// What a run of clients saw.
#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    /// Per model, requests answered 200 with a complete body.
    served: BTreeMap<String, usize>,
    /// Every failure: model, status and body.
    failures: Vec<String>,
}

/// One request; `Err` says what was wrong with its answer. Streams must end with `[DONE]` and
/// carry no error event.
async fn one(client: &reqwest::Client, url: &str, model: &str, stream: bool) -> Result<(), String> {
    let body = json!({"model": model, "stream": stream, "max_tokens": 8,
                      "messages": [{"role": "user", "content": "Say hello."}]});
    let response = client.post(url).json(&body).send().await.map_err(|e| format!("{model}: {e}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| format!("{model}: body broke off: {e}"))?;
    let complete = if stream {
        text.contains("data: [DONE]") && !text.contains("\"error\"")
    } else {
        serde_json::from_str::<Value>(&text).is_ok_and(|v| v["choices"][0]["message"]["content"].is_string())
    };
    if status == 200 && complete { Ok(()) } else { Err(format!("{model}: {status} {text}")) }
}

/// `clients` closed-loop clients for `run_for`, each alternating between `models` from its own
/// starting point; every fourth client streams.
async fn alternate(
    gateway: &str,
    models: &[&str],
    clients: usize,
    run_for: Duration,
    done: Arc<AtomicUsize>,
) -> Outcome {
    let url = format!("{gateway}/v1/chat/completions");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let models: Vec<String> = models.iter().map(|m| (*m).to_owned()).collect();
    let until = Instant::now() + run_for;
    let mut tasks = JoinSet::new();
    for index in 0..clients {
        let (http, url, models, done) = (http.clone(), url.clone(), models.clone(), done.clone());
        tasks.spawn(async move {
            let mut outcome = Outcome::default();
            let mut turn = index;
            while Instant::now() < until {
                let model = &models[turn % models.len()];
                turn += 1;
                match one(&http, &url, model, index % 4 == 3).await {
                    Ok(()) => {
                        outcome.ok += 1;
                        *outcome.served.entry(model.clone()).or_default() += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(failure) => outcome.failures.push(failure),
                }
            }
            outcome
        });
    }
    let mut total = Outcome::default();
    while let Some(outcome) = tasks.join_next().await {
        let outcome = outcome.unwrap();
        total.ok += outcome.ok;
        for (model, count) in outcome.served {
            *total.served.entry(model).or_default() += count;
        }
        total.failures.extend(outcome.failures);
    }
    total
}

fn assert_no_failures(outcome: &Outcome, daemon: &Daemon) {
    let shown: Vec<&String> = outcome.failures.iter().take(5).collect();
    assert!(
        outcome.failures.is_empty(),
        "{} of {} requests failed, e.g. {shown:#?}\n{}",
        outcome.failures.len(),
        outcome.ok + outcome.failures.len(),
        daemon.process.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}

const POLICY: &str = "[policy]\nmin_residency = \"2s\"\nmax_wait = \"3s\"\n\n";

fn on_demand(id: &str, vram_mb: u64) -> String {
    format!("[[model]]\nid = \"{id}\"\nharness = \"sim\"\nsource = \"{id}.bin\"\nvram_mb = {vram_mb}\n\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn alternating_clients_lose_no_request_and_swap_a_bounded_number_of_times() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the pinned model and one of od-a / od-b; a load takes 2 s.
    let neuron = Neuron::start_sim(dir.path(), "gpu", &[24_000], 2_000).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let text = format!(
        "{POLICY}{}{}{}{}",
        neuron_table(&neuron),
        sim_model("pin", 8_000, &["gpu"], "pin.bin"),
        on_demand("od-a", 12_000),
        on_demand("od-b", 12_000)
    );
    write_atomic(&fleet.join("fleet.toml"), &text);
    let (config, port) = cortex_config(dir.path());
    // What is counted here is requests lost to swaps: cortex's own shedding when its event loop
    // runs late (a starved core) is another matter, tested in tests/hostile.rs.
    let mut settings = std::fs::read_to_string(&config).unwrap();
    settings.push_str("\n[gateway]\noverload_delay = \"0s\"\n");
    std::fs::write(&config, settings).unwrap();
    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
    eventually("the pinned model to load", Duration::from_secs(60), async || {
        (neuron.loaded().await == ["pin"]).then_some(())
    })
    .await;

    let started = Instant::now();
    let gateway = format!("http://127.0.0.1:{}", daemon.port);
    let outcome = alternate(&gateway, &["od-a", "od-b"], 100, Duration::from_secs(12), Arc::default()).await;
    let elapsed = started.elapsed();

    assert_no_failures(&outcome, &daemon);
    assert!(outcome.served.get("od-a").is_some_and(|&n| n > 0), "od-a served: {outcome:?}");
    assert!(outcome.served.get("od-b").is_some_and(|&n| n > 0), "od-b served: {outcome:?}");
    let status = daemon.status().await;
    let swaps = status["contention"]["swaps"]["gpu"].as_u64().unwrap_or(0);
    // A swap needs the previous load (2 s) and the resident's min_residency (2 s) first.
    let bound = elapsed.as_secs() / 4 + 2;
    assert!((1..=bound).contains(&swaps), "{swaps} swaps in {elapsed:?} (at most {bound}): {status}");
    assert_eq!(status["contention"]["rejections"], json!({}), "{status}");
    assert!(neuron.loaded().await.contains(&"pin".to_owned()), "the pinned model stayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unload_racing_new_requests_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let neuron = Neuron::start_sim(dir.path(), "gpu", &[24_000], 1_000).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    write_atomic(
        &fleet.join("fleet.toml"),
        &format!("{}{}", neuron_table(&neuron), on_demand("od-a", 12_000)),
    );
    let (config, port) = cortex_config(dir.path());
    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
    let gateway = format!("http://127.0.0.1:{}", daemon.port);

    let done = Arc::new(AtomicUsize::new(0));
    let clients = tokio::spawn({
        let (gateway, done) = (gateway.clone(), done.clone());
        async move { alternate(&gateway, &["od-a"], 20, Duration::from_secs(10), done).await }
    });
    eventually("od-a to serve through cortex", Duration::from_secs(30), async || {
        (done.load(Ordering::Relaxed) > 50).then_some(())
    })
    .await;
    // Someone else (an operator, another tool) unloads it under the running requests.
    let (status, answer) = neuron.call("/models/unload", &json!({"model": "od-a"})).await;
    assert_eq!(status, 200, "{answer}");
    let before = done.load(Ordering::Relaxed);
    eventually("requests to be served again after the unload", Duration::from_secs(30), async || {
        (done.load(Ordering::Relaxed) > before + 50).then_some(())
    })
    .await;
    let outcome = clients.await.unwrap();
    assert_no_failures(&outcome, &daemon);
    assert_eq!(neuron.loaded().await, ["od-a"], "cortex loaded it again for the waiting requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_real_llama_models_that_cannot_both_fit_serve_every_request() {
    let (server, models) = installed_llama_server();
    let dir = tempfile::tempdir().unwrap();
    // The node offers 1000 MB to CPU models; each model needs 600.
    let harness = format!(
        "[capacity]\nram_mb = 1000\n\n[harness.llamacpp]\nkind = \"llamacpp\"\nbinary = {:?}\n",
        server.display().to_string()
    );
    let neuron = Neuron::start_in(dir.path(), "cpu", &harness, Some(&models)).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let model = |id: &str| {
        format!(
            "[[model]]\nid = \"{id}\"\nharness = \"llamacpp\"\nsource = \"{GEMMA_GGUF}\"\nmin_devices = 0\n\
             ram_mb = 600\nctx_size = 2048\n\n"
        )
    };
    let policy = "[policy]\nmin_residency = \"1s\"\nmax_wait = \"4s\"\n\n";
    write_atomic(
        &fleet.join("fleet.toml"),
        &format!("{policy}{}{}{}", neuron_table(&neuron), model("gemma-a"), model("gemma-b")),
    );
    let (config, port) = cortex_config(dir.path());
    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
    let gateway = format!("http://127.0.0.1:{}", daemon.port);

    let outcome =
        alternate(&gateway, &["gemma-a", "gemma-b"], 6, Duration::from_secs(20), Arc::default()).await;
    assert_no_failures(&outcome, &daemon);
    assert!(outcome.served.get("gemma-a").is_some_and(|&n| n > 0), "gemma-a served: {outcome:?}");
    assert!(outcome.served.get("gemma-b").is_some_and(|&n| n > 0), "gemma-b served: {outcome:?}");
    let status = daemon.status().await;
    assert!(status["contention"]["swaps"]["cpu"].as_u64().is_some_and(|n| n >= 1), "{status}");
    assert!(neuron.loaded().await.len() <= 1, "never both at once");
}
