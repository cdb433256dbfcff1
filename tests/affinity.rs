//! Affinity routing end to end, with real `neuron` and `cortex serve` processes: two sim copies
//! of one model (pinned on n1 and n2), eight sessions naming themselves in `x-session-id`, each
//! sending its turns one after another. Which copy served each request is read from cortex's
//! own record (`cortex_requests_total{neuron}` on /metrics): every turn of a session lands on
//! one copy, the sessions use both copies, and `cortex_affinity_routing_total` counts one `new`
//! per session and a `hit` per later turn. Then the fleet switches to `routing =
//! "least_busy"`, and requests go as before: one at a time, each to the least busy copy
//! (ties by neuron name: n1), whatever its session.

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use cortex_e2e::{Daemon, Neuron, cortex_config, eventually, neuron_table, sim_model, write_atomic};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);
const SESSIONS: usize = 8;
const TURNS: usize = 3;

struct Rig {
    _dir: tempfile::TempDir,
    _n1: Neuron,
    _n2: Neuron,
    fleet: std::path::PathBuf,
    daemon: Daemon,
    metrics_url: String,
    http: reqwest::Client,
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let n1 = Neuron::start_sim(dir.path(), "n1", &[24_000], 200).await;
        let n2 = Neuron::start_sim(dir.path(), "n2", &[24_000], 200).await;
        let fleet = dir.path().join("fleet");
        std::fs::create_dir_all(&fleet).unwrap();
        let text = format!(
            "{}{}{}",
            neuron_table(&n1),
            neuron_table(&n2),
            sim_model("m", 1_000, &["n1", "n2"], "m")
        );
        std::fs::write(fleet.join("fleet.toml"), text).unwrap();
        let (config, port) = cortex_config(dir.path());
        let metrics_url = metrics_url(&config);
        let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
        let rig =
            Rig { _dir: dir, _n1: n1, _n2: n2, fleet, daemon, metrics_url, http: reqwest::Client::new() };
        eventually("both copies of m loaded as cortex sees them", DEADLINE, async || {
            let text = rig.http.get(&rig.metrics_url).send().await.ok()?.text().await.ok()?;
            let loaded =
                |n: &str| text.contains(&format!("cortex_model_loaded{{neuron=\"{n}\",model=\"m\"}} 1"));
            (loaded("n1") && loaded("n2")).then_some(())
        })
        .await;
        rig
    }

    /// Requests cortex finished for `m`, per neuron.
    async fn served(&self) -> BTreeMap<String, u64> {
        let text = self.http.get(&self.metrics_url).send().await.unwrap().text().await.unwrap();
        let mut served = BTreeMap::new();
        for line in
            text.lines().filter(|l| l.starts_with("cortex_requests_total{") && l.contains("model=\"m\""))
        {
            let Some(neuron) = line.split("neuron=\"").nth(1).and_then(|rest| rest.split('"').next()) else {
                continue;
            };
            let count: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *served.entry(neuron.to_owned()).or_default() += count;
        }
        served
    }

    /// `cortex_affinity_routing_total` for `m` by outcome.
    async fn outcomes(&self) -> BTreeMap<String, u64> {
        let text = self.http.get(&self.metrics_url).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with("cortex_affinity_routing_total{") && l.contains("model=\"m\""))
            .filter_map(|line| {
                let outcome = line.split("outcome=\"").nth(1)?.split('"').next()?.to_owned();
                Some((outcome, line.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    }

    /// One turn of `session` (its whole conversation so far), and the neuron that served it.
    async fn turn(&self, session: &str, turn: usize) -> String {
        let before = self.served().await;
        let mut messages = vec![json!({"role": "system", "content": "You are a coding agent."})];
        for t in 0..=turn {
            messages.push(json!({"role": "user", "content": format!("{session} turn {t}")}));
            if t < turn {
                messages.push(json!({"role": "assistant", "content": "done"}));
            }
        }
        let response = self
            .http
            .post(format!("http://127.0.0.1:{}/v1/chat/completions", self.daemon.port))
            .header("x-session-id", session)
            .json(&json!({"model": "m", "max_tokens": 4, "messages": messages}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{session} turn {turn}: {status} {body}");
        eventually("cortex to count the request", DEADLINE, async || {
            let after = self.served().await;
            after.iter().find(|(n, c)| **c > before.get(*n).copied().unwrap_or(0)).map(|(n, _)| n.clone())
        })
        .await
    }
}

/// The metrics listener's URL, from the cortex.toml written for the test.
fn metrics_url(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("metrics_listen = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap();
    format!("http://{listen}/metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_stays_on_one_copy_and_least_busy_routes_as_before() {
    let rig = Rig::start().await;
    let mut homes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for turn in 0..TURNS {
        for s in 0..SESSIONS {
            let session = format!("session-{s}");
            let neuron = rig.turn(&session, turn).await;
            homes.entry(session).or_default().insert(neuron);
        }
    }
    for (session, neurons) in &homes {
        assert_eq!(neurons.len(), 1, "{session} was served by {neurons:?}");
    }
    let used: BTreeSet<&String> = homes.values().flatten().collect();
    assert_eq!(used.len(), 2, "the sessions use both copies: {homes:?}");
    let outcomes = rig.outcomes().await;
    let count = |o: &str| outcomes.get(o).copied().unwrap_or(0);
    assert_eq!(count("new"), SESSIONS as u64, "{outcomes:?}");
    assert_eq!(count("hit"), (SESSIONS * (TURNS - 1)) as u64, "{outcomes:?}");
    assert_eq!(count("spilled"), 0, "{outcomes:?}");

    // least_busy: one request at a time finds both copies idle and takes n1 (ties by name),
    // whatever its session; a session whose home is n2 shows the switch.
    let away = homes.iter().find(|(_, n)| n.contains("n2")).map(|(s, _)| s.clone()).unwrap();
    let text = std::fs::read_to_string(rig.fleet.join("fleet.toml")).unwrap();
    write_atomic(&rig.fleet.join("fleet.toml"), &format!("[policy]\nrouting = \"least_busy\"\n\n{text}"));
    eventually("the fleet's least_busy routing in force", DEADLINE, async || {
        (rig.turn(&away, TURNS).await == "n1").then_some(())
    })
    .await;
    let outcomes_before = rig.outcomes().await;
    for s in 0..SESSIONS {
        assert_eq!(rig.turn(&format!("session-{s}"), TURNS).await, "n1", "session-{s} under least_busy");
    }
    assert_eq!(rig.outcomes().await, outcomes_before, "least_busy records no affinity outcome");
}
