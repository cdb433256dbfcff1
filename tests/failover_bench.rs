//! `failover-bench`: the cluster's failover figures for docs/benchmarks.md. The rig of
//! tests/ha.rs (a real etcd, three `cortex serve` replicas with `lease_ttl = "2s"`, a sim neuron
//! whose one GPU holds one of two models, nginx in front) under a closed-loop load of six
//! clients; the leader is killed with SIGKILL `ROUNDS` times (restarted each time). Per
//! failover, from the neuron's own action record: kill → the new leader's first call (its
//! fence), and kill → its first load done (the first request that needed a lifecycle action can
//! be served then); and across all of them, the requests lost. Usage (binaries built first):
//! `cargo run -p cortex-e2e --bin failover-bench -- 10`.
//!
//! `failover-bench latency N`: cluster mode's cost on the hot path. One `cortex serve` in front
//! of a sim neuron with a resident model, standalone and as the leader of a one-replica cluster
//! (a real etcd), in alternating rounds of N sequential non-streaming requests; per mode the
//! client-side p50 and p99.
//!
//! `failover-bench swarm N`: three replicas in cluster mode over `neuron-swarm`'s N simulated
//! neurons (8 GPUs each, one model pinned per five neurons) at the default 2 s poll interval;
//! once the leader has them Synced, 30 s of steady state: each replica's poll cycle
//! (`cortex_poll_cycle_seconds`) and etcd's writes per second (its own counters).

#![allow(clippy::unwrap_used, reason = "a benchmark: a failed step should stop it loudly")]

#[path = "ha.rs"]
#[allow(dead_code, reason = "the tests' rig; its tests are not compiled here")]
mod ha;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cortex_e2e::eventually;
use serde_json::Value;

fn now_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis())
        .unwrap()
}

/// The first accepted call of a term above `term` (any kind), and the first load of one that
/// ended: their start and end times.
fn firsts(actions: &[Value], term: u64) -> (Option<u64>, Option<u64>) {
    let newer = || {
        actions
            .iter()
            .filter(move |a| a["term"].as_u64().is_some_and(|t| t > term) && a["outcome"] == "accepted")
    };
    let first_call = newer().filter_map(|a| a["started_unix_ms"].as_u64()).min();
    let first_load =
        newer().filter(|a| a["kind"] == "load").filter_map(|a| a["ended_unix_ms"].as_u64()).min();
    (first_call, first_load)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("latency") {
        let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
        return latency(n).await;
    }
    if args.first().map(String::as_str) == Some("swarm") {
        let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
        return swarm(n).await;
    }
    failovers(args.first().and_then(|a| a.parse().ok()).unwrap_or(10)).await;
}

/// The sum of every sample of the counter `name` in Prometheus text.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

async fn swarm(n: usize) {
    use cortex_e2e::scale::{Size, Swarm, histogram};
    use cortex_e2e::{Daemon, cortex_config_with, write_atomic};

    let dir = tempfile::tempdir().unwrap();
    let etcd = cortex_e2e::etcd::Etcd::start().await;
    let swarm = Swarm::start(dir.path(), Size { neurons: n, devices: 8 }).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let mut text = swarm.tables.clone();
    for (i, five) in swarm.names.chunks(5).enumerate() {
        let pins: Vec<String> = five.iter().map(|n| format!("\"{n}\"")).collect();
        text.push_str(&format!(
            "[[model]]\nid = \"m-{i}\"\nharness = \"sim\"\nsource = \"m-{i}.gguf\"\nvram_mb = 20000\nmin_devices = 1\npinned_on = [{}]\n\n",
            pins.join(", ")
        ));
    }
    write_atomic(&fleet.join("fleet.toml"), &text);
    let mut replicas = Vec::new();
    for name in ["gw-1", "gw-2", "gw-3"] {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let (config, port) = cortex_config_with(&home, "interval = \"2s\"", "resync = \"30s\"");
        let text = std::fs::read_to_string(&config).unwrap();
        let metrics = text
            .lines()
            .find_map(|l| l.strip_prefix("metrics_listen = \"")?.strip_suffix('"').map(str::to_owned))
            .unwrap();
        let cluster = format!(
            "\n[cluster]\netcd = [\"{}\"]\nreplica = \"{name}\"\nlease_ttl = \"3s\"\nprefix = \"/swarm\"\n",
            etcd.endpoint()
        );
        std::fs::write(
            &config,
            format!("state_dir = {:?}\n{text}{cluster}", home.join("state").display().to_string()),
        )
        .unwrap();
        let daemon = Daemon::start(&fleet, &config, port, home.join("cortex.log")).await;
        replicas.push((name, daemon, format!("http://{metrics}/metrics")));
    }
    let started = std::time::Instant::now();
    eventually("the leader to load every pin", Duration::from_secs(600), async || {
        for (_, daemon, _) in &replicas {
            let status = daemon.status().await;
            if status["cluster"]["role"] == "leader" {
                return (status["sync"] == "Synced").then_some(());
            }
        }
        None
    })
    .await;
    let converged = started.elapsed();
    let etcd_metrics = format!("{}/metrics", etcd.endpoint());
    let writes = |text: &str| counter(text, "etcd_mvcc_put_total") + counter(text, "etcd_mvcc_txn_total");
    let before_etcd = scrape(&etcd_metrics).await;
    let mut before = Vec::new();
    for (_, _, metrics) in &replicas {
        before.push(histogram(&scrape(metrics).await, "cortex_poll_cycle_seconds"));
    }
    let window = Duration::from_secs(30);
    let t0 = std::time::Instant::now();
    eventually("the steady-state window", window + Duration::from_secs(5), async || {
        (t0.elapsed() >= window).then_some(())
    })
    .await;
    let seconds = t0.elapsed().as_secs_f64();
    let after_etcd = scrape(&etcd_metrics).await;
    println!(
        "{n} neurons × 8 GPUs, {} pinned models, 3 replicas; leader Synced after {:.1} s",
        swarm.names.len().div_ceil(5),
        converged.as_secs_f64()
    );
    println!("| replica | poll cycles in {seconds:.0} s | mean cycle | p95 under |");
    println!("|---|---|---|---|");
    for ((name, _, metrics), (count0, sum0, _)) in replicas.iter().zip(before) {
        let (count, sum, p95) = histogram(&scrape(metrics).await, "cortex_poll_cycle_seconds");
        let cycles = count - count0;
        let mean_ms = (sum - sum0) / cycles.max(1) as f64 * 1000.0;
        println!("| {name} | {cycles} | {mean_ms:.0} ms | {p95} s |");
    }
    let puts = writes(&after_etcd) - writes(&before_etcd);
    let proposals = counter(&after_etcd, "etcd_server_proposals_committed_total")
        - counter(&before_etcd, "etcd_server_proposals_committed_total");
    println!(
        "etcd: {:.1} writes/s (puts and txns), {:.1} committed proposals/s (writes, lease grants and revocations)",
        puts / seconds,
        proposals / seconds
    );
}

/// Standalone against cluster mode, same neuron, same model, alternating rounds.
async fn latency(n: usize) {
    use cortex_e2e::{Daemon, Neuron, cortex_config, neuron_table, sim_model, write_atomic};

    let dir = tempfile::tempdir().unwrap();
    let etcd = cortex_e2e::etcd::Etcd::start().await;
    let neuron = Neuron::start_sim(dir.path(), "n1", &[24_000], 50).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    write_atomic(
        &fleet.join("fleet.toml"),
        &format!("{}{}", neuron_table(&neuron), sim_model("m", 8_000, &["n1"], "m.gguf")),
    );
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..6 {
        let clustered = round % 2 == 1;
        let home = dir.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&home).unwrap();
        let (config, port) = cortex_config(&home);
        if clustered {
            let text = std::fs::read_to_string(&config).unwrap();
            let cluster = format!(
                "\n[cluster]\netcd = [\"{}\"]\nreplica = \"gw-1\"\nlease_ttl = \"2s\"\nprefix = \"/latency\"\n",
                etcd.endpoint()
            );
            std::fs::write(&config, format!("{text}{cluster}")).unwrap();
        }
        let daemon = Daemon::start(&fleet, &config, port, home.join("cortex.log")).await;
        eventually("m to be served", Duration::from_secs(60), async || {
            let status = daemon.status().await;
            let leads = !clustered || status["cluster"]["role"] == "leader";
            (leads && daemon.chat("m").await.0 == 200).then_some(())
        })
        .await;
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let body = serde_json::json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
        for _ in 0..100 {
            http.post(&url).json(&body).send().await.unwrap().bytes().await.unwrap();
        }
        for _ in 0..n {
            let sent = std::time::Instant::now();
            let answer = http.post(&url).json(&body).send().await.unwrap();
            assert_eq!(answer.status(), 200);
            answer.bytes().await.unwrap();
            times[usize::from(clustered)].push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        drop(daemon);
    }
    println!("| mode | requests | p50 | p99 |");
    println!("|---|---|---|---|");
    for (mode, times) in ["standalone", "cluster (leader, etcd up)"].iter().zip(times.iter_mut()) {
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize];
        println!("| {mode} | {} | {:.2} ms | {:.2} ms |", times.len(), at(0.5), at(0.99));
    }
}

async fn failovers(rounds: usize) {
    let mut rig = ha::Rig::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = ha::load(&rig, 6, stop.clone());
    let mut killed = Vec::new();
    let mut figures = Vec::new();
    for round in 0..rounds {
        let (leader, term) = rig.leader(Duration::from_secs(30)).await;
        let at = now_ms();
        rig.signal(leader, "KILL");
        killed.push(rig.replicas[leader].name.clone());
        let (call, load) = eventually("the new leader's first load", Duration::from_secs(30), async || {
            let record = rig.neuron.get("/actions").await;
            let (call, load) = firsts(record["actions"].as_array()?, term);
            Some((call?, load?))
        })
        .await;
        let (call_ms, load_ms) = (call.saturating_sub(at), load.saturating_sub(at));
        eprintln!("failover {}: first call {call_ms} ms, first load done {load_ms} ms", round + 1);
        figures.push((call_ms, load_ms));
        rig.start_replica(leader).await;
        rig.leader(Duration::from_secs(30)).await;
        rig.in_rotation(leader).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = ha::collect(&rig, tasks).await;
    // Requests that were on the killed replicas' own connections may break (a load balancer
    // cannot replay a POST it sent); any other failure is a lost request.
    let on_killed = seen.failures.iter().filter(|(r, _)| killed.contains(r)).count();
    let lost = seen.failures.len() - on_killed;
    let mut calls: Vec<u64> = figures.iter().map(|f| f.0).collect();
    let mut loads: Vec<u64> = figures.iter().map(|f| f.1).collect();
    calls.sort_unstable();
    loads.sort_unstable();
    let median = |v: &[u64]| v[v.len() / 2];
    println!(
        "| failovers | kill → first call, median (max) | kill → first load done, median (max) | answered | broken on the killed leader | lost |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {rounds} | {} ms ({} ms) | {} ms ({} ms) | {} | {on_killed} | {lost} |",
        median(&calls),
        calls.last().unwrap(),
        median(&loads),
        loads.last().unwrap(),
        seen.ok
    );
    if lost > 0 {
        let shown: Vec<_> = seen.failures.iter().filter(|(r, _)| !killed.contains(r)).take(5).collect();
        eprintln!("lost: {shown:#?}");
    }
}
