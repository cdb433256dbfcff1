//! A highly available cortex end to end: a real etcd (Debian's etcd-server on loopback, data in
//! /dev/shm), three `cortex serve` replicas in cluster mode, a real neuron (sim harness: one GPU
//! that holds one of two on-demand models at a time, so they contend), and nginx in front (the
//! configuration of docs/operations.md). Every fault runs under a bounded concurrent load of
//! clients alternating between the two models through nginx, and each test asserts:
//!
//! - no lost request: every request is answered 200, except those that were on the connections of
//!   a process the fault killed (nginx's `X-Cortex-Upstream` names the replica that answered);
//! - no double actor: the neuron's own action record never has two lifecycle calls of different
//!   terms under way at once, and never accepted a call with a lower term than one before it;
//! - the cluster heals by itself: one leader again, acting.

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cortex_e2e::etcd::Etcd;
use cortex_e2e::{ADMIN_KEY, NEURON_TOKEN, Neuron, Process, cortex_bin, eventually, free_port, write_atomic};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const LEASE_TTL: Duration = Duration::from_secs(2);
const MODELS: [&str; 2] = ["model-a", "model-b"];
/// How long a replica may take to exit after SIGTERM (its streams drain first).
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// One `cortex serve` replica.
pub(crate) struct Replica {
    pub(crate) name: String,
    port: u16,
    config: PathBuf,
    process: Option<Process>,
    starts: u32,
    /// Stopped with SIGSTOP: it answers nothing until SIGCONT.
    paused: bool,
}

/// The whole rig: etcd, a neuron, three replicas, nginx.
pub(crate) struct Rig {
    dir: tempfile::TempDir,
    etcd: Etcd,
    pub(crate) neuron: Neuron,
    fleet: PathBuf,
    pub(crate) replicas: Vec<Replica>,
    _nginx: Process,
    lb_port: u16,
}

fn fleet_text(neuron: &Neuron) -> String {
    let mut text = format!(
        "[policy]\nmin_residency = \"1s\"\nmax_wait = \"2s\"\n\n[[neuron]]\nname = \"{}\"\nendpoint = \"{}\"\n\n",
        neuron.name,
        neuron.endpoint()
    );
    for model in MODELS {
        text.push_str(&format!(
            "[[model]]\nid = \"{model}\"\nharness = \"sim\"\nsource = \"{model}.gguf\"\nvram_mb = 16000\nmin_devices = 1\n\n"
        ));
    }
    text
}

impl Rig {
    pub(crate) async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::start().await;
        let neuron = Neuron::start_sim(dir.path(), "n1", &[24_000], 300).await;
        let fleet = dir.path().join("fleet");
        std::fs::create_dir_all(&fleet).unwrap();
        write_atomic(&fleet.join("fleet.toml"), &fleet_text(&neuron));
        let mut replicas = Vec::new();
        for i in 1..=3 {
            let name = format!("gw-{i}");
            let port = free_port();
            let config = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{}\"\nadmin_key = \"{ADMIN_KEY}\"\n\
                     neuron_token = \"{NEURON_TOKEN}\"\nstate_dir = {:?}\n\n[gateway]\nmax_wait = \"60s\"\n\n\
                     [poll]\ninterval = \"200ms\"\n\n[reconcile]\nresync = \"5s\"\nbackoff_base = \"500ms\"\n\n\
                     [cluster]\netcd = [\"{}\"]\nreplica = \"{name}\"\nlease_ttl = \"2s\"\nprefix = \"/ha\"\n",
                    free_port(),
                    dir.path().join(format!("{name}-state")).display().to_string(),
                    etcd.endpoint()
                ),
            )
            .unwrap();
            replicas.push(Replica { name, port, config, process: None, starts: 0, paused: false });
        }
        let lb_port = free_port();
        let nginx = start_nginx(dir.path(), lb_port, &replicas.iter().map(|r| r.port).collect::<Vec<_>>());
        let mut rig = Rig { dir, etcd, neuron, fleet, replicas, _nginx: nginx, lb_port };
        for i in 0..3 {
            rig.start_replica(i).await;
        }
        rig.leader(Duration::from_secs(30)).await;
        rig
    }

    pub(crate) async fn start_replica(&mut self, i: usize) {
        let replica = &mut self.replicas[i];
        replica.starts += 1;
        let log = self.dir.path().join(format!("{}-{}.log", replica.name, replica.starts));
        let process = Process::spawn(
            Command::new(cortex_bin())
                .arg("serve")
                .arg("--fleet")
                .arg(&self.fleet)
                .arg("--config")
                .arg(&replica.config),
            log,
        );
        let url = format!("http://127.0.0.1:{}/health", replica.port);
        eventually("a replica to listen", Duration::from_secs(30), async || {
            reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        replica.process = Some(process);
    }

    /// Send `signal` to replica `i` (`KILL` forgets the process).
    pub(crate) fn signal(&mut self, i: usize, signal: &str) {
        let replica = &mut self.replicas[i];
        let pid = replica.process.as_ref().unwrap().child.id();
        Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
        replica.paused = signal == "STOP";
        if signal == "KILL" {
            let mut process = replica.process.take().unwrap();
            let _ = process.child.wait();
        }
    }

    /// SIGTERM replica `i` and wait until it has exited (it drains its connections first):
    /// within `STOP_WITHIN`, as systemd's `TimeoutStopSec` in docs/operations.md allows.
    async fn stop(&mut self, i: usize) -> Duration {
        let mut process = self.replicas[i].process.take().unwrap();
        let asked = Instant::now();
        Command::new("kill").arg("-TERM").arg(process.child.id().to_string()).status().unwrap();
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        loop {
            ticks.tick().await;
            if let Some(status) = process.child.try_wait().unwrap() {
                assert!(status.success(), "replica {i} exited with {status}:\n{}", process.log_text());
                return asked.elapsed();
            }
            if asked.elapsed() >= STOP_WITHIN {
                let port = self.replicas[i].port;
                panic!(
                    "replica {i} did not exit within {STOP_WITHIN:?} of SIGTERM:\n{}\n{}",
                    process.log_text(),
                    self.diagnose(port).await
                );
            }
        }
    }

    /// What the live replicas and the neuron say, and the connections to `port`, for a
    /// failure's message.
    async fn diagnose(&self, port: u16) -> String {
        let mut out = String::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            if replica.process.is_some() && !replica.paused {
                let status = self.status(i).await.unwrap_or_default();
                let conditions = &status["conditions"];
                let (cluster, queues) = (&status["cluster"], &status["contention"]["queues"]);
                out.push_str(&format!(
                    "{}: role {} leader {}\n  conditions {conditions}\n  queues {queues}\n",
                    replica.name, cluster["role"], cluster["leader"]
                ));
                let log = replica.process.as_ref().map(Process::log_text).unwrap_or_default();
                let lines: Vec<&str> = log.lines().filter(|l| !l.contains("poll cycle")).collect();
                out.push_str(&format!(
                    "  log ends:\n{}\n",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                ));
            }
        }
        // The demand every replica published (etcd's JSON gateway: keys and values in base64).
        let range = json!({"key": b64("/ha/demand/"), "range_end": b64("/ha/demand0")});
        let url = format!("{}/v3/kv/range", self.etcd.endpoint());
        let demand: Value = match reqwest::Client::new().post(url).json(&range).send().await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(error) => json!(error.to_string()),
        };
        for kv in demand["kvs"].as_array().into_iter().flatten() {
            let value = unb64(kv["value"].as_str().unwrap_or(""));
            out.push_str(&format!("demand {}\n", String::from_utf8_lossy(&value)));
        }
        let actions = self.neuron.get("/actions").await;
        let recent: Vec<&Value> =
            actions["actions"].as_array().map(|a| a.iter().rev().take(6).collect()).unwrap_or_default();
        out.push_str(&format!("neuron term {}, last actions {recent:#?}\n", actions["term"]));
        out.push_str(&nginx_errors(self));
        let sockets =
            Command::new("ss").args(["-tnoi", &format!("( sport = :{port} or dport = :{port} )")]).output();
        if let Ok(sockets) = sockets {
            out.push_str(&format!("connections on :{port}:\n{}", String::from_utf8_lossy(&sockets.stdout)));
        }
        out
    }

    async fn status(&self, i: usize) -> Option<Value> {
        let response = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/admin/status", self.replicas[i].port))
            .bearer_auth(ADMIN_KEY)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// The index of the replica every live replica names as the leader, once they agree and
    /// that one says it leads.
    pub(crate) async fn leader(&self, within: Duration) -> (usize, u64) {
        eventually("one leader that every replica names", within, async || {
            let mut named = Vec::new();
            let mut leading = Vec::new();
            for (i, replica) in self.replicas.iter().enumerate() {
                if replica.process.is_none() || replica.paused {
                    continue;
                }
                let status = self.status(i).await?;
                let cluster = &status["cluster"];
                named.push((
                    cluster["leader"]["replica"].as_str()?.to_owned(),
                    cluster["leader"]["term"].as_u64()?,
                ));
                if cluster["role"] == "leader" {
                    leading.push(i);
                }
            }
            let (first, term) = named.first()?.clone();
            let agree = named.iter().all(|(n, t)| *n == first && *t == term);
            let index = self.replicas.iter().position(|r| r.name == first)?;
            // The one etcd names says it leads (acts), and no other does.
            (agree && leading == [index]).then_some((index, term))
        })
        .await
    }

    /// Wait until nginx sends requests to replica `i` again.
    pub(crate) async fn in_rotation(&self, i: usize) {
        let (url, port) = (format!("http://127.0.0.1:{}/health", self.lb_port), self.replicas[i].port);
        let http = reqwest::Client::new();
        eventually("nginx to send requests to the restarted replica", Duration::from_secs(20), async || {
            let response = http.get(&url).send().await.ok()?;
            let upstream = response.headers().get("x-cortex-upstream")?.to_str().ok()?;
            upstream.ends_with(&format!(":{port}")).then_some(())
        })
        .await;
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/chat/completions", self.lb_port)
    }

    fn replica_by_port(&self, upstream: &str) -> String {
        // nginx lists every upstream it tried, the one that answered last.
        let last = upstream.rsplit(", ").next().unwrap_or("");
        self.replicas
            .iter()
            .find(|r| last.ends_with(&format!(":{}", r.port)))
            .map_or_else(|| format!("? ({upstream})"), |r| r.name.clone())
    }
}

/// The last lines of nginx's error log.
fn nginx_errors(rig: &Rig) -> String {
    let log = std::fs::read_to_string(rig.dir.path().join("nginx/error.log")).unwrap_or_default();
    let no_live = log.lines().filter(|l| l.contains("no live upstreams")).count();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("no live upstreams")).collect();
    format!(
        "nginx's error log ({no_live} lines of \"no live upstreams\" left out) ends:\n{}\n",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 of `text` (etcd's JSON gateway wants keys so).
fn b64(text: &str) -> String {
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            let c = if i <= chunk.len() { B64[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' };
            out.push(c);
        }
    }
    out
}

fn unb64(text: &str) -> Vec<u8> {
    let digits: Vec<u32> =
        text.bytes().filter_map(|c| B64.iter().position(|b| *b == c)).map(|d| d as u32).collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | d << (18 - 6 * i));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i) & 255) as u8);
        }
    }
    out
}

fn start_nginx(dir: &Path, port: u16, upstreams: &[u16]) -> Process {
    let root = dir.join("nginx");
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let servers: String = upstreams
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    let conf = include_str!("ha_nginx.conf")
        .replace("@ROOT@", &root.display().to_string())
        .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
        .replace("@SERVERS@", &servers);
    std::fs::write(root.join("nginx.conf"), conf).unwrap();
    let nginx =
        ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).is_file()).unwrap_or_else(
            || panic!("nginx is not installed: run `bash tests/install.sh cluster` (Debian's nginx)"),
        );
    let process = Process::spawn(
        Command::new(nginx)
            .arg("-p")
            .arg(&root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .args(["-g", "daemon off;"]),
        root.join("nginx.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cortex_e2e::listening(port) {
        assert!(Instant::now() < deadline, "nginx did not listen:\n{}", process.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    process
}

/// What the clients saw: per answering replica, answers by status; and every failure.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) ok: usize,
    pub(crate) by_replica: BTreeMap<String, usize>,
    pub(crate) failures: Vec<(String, String)>,
}

/// `clients` closed-loop clients through nginx, alternating between the two models, until
/// `stop`; every other client streams (a longer answer, so that streams are open when a fault
/// strikes). A refused connection to nginx itself is retried once (as a load balancer would).
pub(crate) fn load(rig: &Rig, clients: usize, stop: Arc<AtomicBool>) -> JoinSet<Vec<(u16, String, String)>> {
    let mut tasks = JoinSet::new();
    for c in 0..clients {
        let (url, stop) = (rig.url(), stop.clone());
        let stream = c % 2 == 1;
        tasks.spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
            let mut seen = Vec::new();
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                let model = MODELS[n % 2];
                n += 1;
                let body = json!({
                    "model": model,
                    "max_tokens": if stream { 100 } else { 4 },
                    "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}]
                });
                let mut answer = http.post(&url).json(&body).send().await;
                if answer.as_ref().is_err_and(reqwest::Error::is_connect) {
                    answer = http.post(&url).json(&body).send().await;
                }
                let (mut status, upstream, text) = match answer {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let upstream = response
                            .headers()
                            .get("x-cortex-upstream")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        match response.text().await {
                            Ok(text) => (status, upstream, text),
                            Err(error) => (0, upstream, format!("the answer was cut: {error}")),
                        }
                    }
                    Err(error) => (0, String::new(), error.to_string()),
                };
                // A stream counts only when it ended as streams end.
                if stream && status == 200 && !text.trim_end().ends_with("data: [DONE]") {
                    status = 0;
                }
                seen.push((
                    status,
                    upstream,
                    format!("{model}{}: {text}", if stream { " (stream)" } else { "" }),
                ));
            }
            seen
        });
    }
    tasks
}

pub(crate) async fn collect(rig: &Rig, mut tasks: JoinSet<Vec<(u16, String, String)>>) -> Seen {
    let mut seen = Seen::default();
    while let Some(result) = tasks.join_next().await {
        for (status, upstream, text) in result.unwrap() {
            let replica = rig.replica_by_port(&upstream);
            if status == 200 {
                seen.ok += 1;
                *seen.by_replica.entry(replica).or_default() += 1;
            } else {
                seen.failures.push((replica, format!("{status} {text}")));
            }
        }
    }
    seen
}

/// The neuron's action record: no call accepted with a lower term than one before it, and never
/// two lifecycle calls of different terms under way at once.
pub(crate) async fn check_actions(neuron: &Neuron) -> Vec<Value> {
    let record = neuron.get("/actions").await;
    let actions: Vec<Value> = record["actions"].as_array().unwrap().clone();
    let accepted: Vec<&Value> =
        actions.iter().filter(|a| a["outcome"] == "accepted" && a["kind"] != "fence").collect();
    let mut highest = 0;
    for action in &accepted {
        let term = action["term"].as_u64().unwrap_or_else(|| panic!("a call without a term: {action}"));
        assert!(term >= highest, "accepted term {term} after {highest}: {action}");
        highest = term;
    }
    for (i, a) in accepted.iter().enumerate() {
        let a_end = a["ended_unix_ms"].as_u64().unwrap_or(u64::MAX);
        for b in &accepted[i + 1..] {
            let overlap = b["started_unix_ms"].as_u64().unwrap() < a_end;
            assert!(!(overlap && a["term"] != b["term"]), "two actors at once on the neuron:\n{a}\n{b}");
        }
    }
    assert!(!accepted.is_empty(), "the load did swap models: {actions:?}");
    actions
}

/// Run the load for `before`, apply `fault`, run it for `after`; the failures must all be on
/// replicas in `may_break` (their own connections), and the cluster must have a leader again.
async fn under_load<F: AsyncFnOnce(&mut Rig)>(rig: &mut Rig, fault: F, may_break: &[&str]) -> Seen {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(rig, 6, stop.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    fault(rig).await;
    rig.leader(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(rig, tasks).await;
    let lost: Vec<&(String, String)> =
        seen.failures.iter().filter(|(r, _)| !may_break.contains(&r.as_str())).collect();
    if !lost.is_empty() {
        let shown: Vec<_> = lost.iter().take(10).collect();
        panic!("{} requests lost, the first: {shown:#?}\n(seen {seen:?})\n{}", lost.len(), nginx_errors(rig));
    }
    assert!(seen.ok > 20, "the load ran: {seen:?}");
    check_actions(&rig.neuron).await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_loses_nothing_but_its_own_connections() {
    let mut rig = Rig::start().await;
    let (leader, term) = rig.leader(Duration::from_secs(30)).await;
    let killed = rig.replicas[leader].name.clone();
    let started = Instant::now();
    let seen = under_load(
        &mut rig,
        async |rig: &mut Rig| {
            rig.signal(leader, "KILL");
            let (next, next_term) = rig.leader(LEASE_TTL * 3 + Duration::from_secs(10)).await;
            assert_ne!(next, leader);
            assert!(next_term > term, "a new term: {term} then {next_term}");
        },
        &[killed.as_str()],
    )
    .await;
    eprintln!("kill -9 of {killed}: {seen:?} in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_past_its_lease_performs_nothing_and_steps_down() {
    let mut rig = Rig::start().await;
    let (leader, term) = rig.leader(Duration::from_secs(60)).await;
    let paused = rig.replicas[leader].name.clone();
    under_load(
        &mut rig,
        async |rig: &mut Rig| {
            rig.signal(leader, "STOP");
            // Another replica takes over and acts while the old leader sleeps.
            let deadline = Instant::now() + Duration::from_secs(20);
            let (next, next_term) = loop {
                let (next, next_term) = rig.leader(Duration::from_secs(20)).await;
                if next != leader {
                    break (next, next_term);
                }
                assert!(Instant::now() < deadline, "no new leader while {paused} is paused");
            };
            assert!(next_term > term);
            tokio::time::sleep(LEASE_TTL).await;
            rig.signal(leader, "CONT");
            // It wakes up, finds its lease gone, and follows.
            eventually("the woken leader to follow", Duration::from_secs(15), async || {
                let status = rig.status(leader).await?;
                (status["cluster"]["role"] == "follower"
                    && status["cluster"]["leader"]["replica"] == rig.replicas[next].name.as_str())
                .then_some(())
            })
            .await;
        },
        // Requests that were on the paused replica's connections waited; none may fail.
        &[],
    )
    .await;
    let actions = check_actions(&rig.neuron).await;
    let by_old_term = actions.iter().filter(|a| a["term"] == term && a["outcome"] == "accepted");
    let last_old = by_old_term.filter_map(|a| a["started_unix_ms"].as_u64()).max().unwrap_or(0);
    let first_new = actions
        .iter()
        .filter(|a| a["term"].as_u64().is_some_and(|t| t > term) && a["outcome"] == "accepted")
        .filter_map(|a| a["started_unix_ms"].as_u64())
        .min();
    assert!(first_new.is_none_or(|first| last_old <= first), "the paused leader acted after its successor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_killed_breaks_only_its_own_connections() {
    let mut rig = Rig::start().await;
    let (leader, term) = rig.leader(Duration::from_secs(30)).await;
    let follower = (leader + 1) % 3;
    let killed = rig.replicas[follower].name.clone();
    under_load(
        &mut rig,
        async |rig: &mut Rig| {
            rig.signal(follower, "KILL");
            assert_eq!(rig.leader(Duration::from_secs(10)).await, (leader, term), "leadership stays");
        },
        &[killed.as_str()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_etcd_is_away_nobody_acts_and_a_leader_resumes_when_it_is_back() {
    let mut rig = Rig::start().await;
    let (_, term) = rig.leader(Duration::from_secs(30)).await;
    under_load(
        &mut rig,
        async |rig: &mut Rig| {
            rig.etcd.stop();
            let stopped = Instant::now();
            // Every replica says etcd is away and that none acts.
            for i in 0..3 {
                eventually("the status to say etcd is unreachable", Duration::from_secs(15), async || {
                    let status = rig.status(i).await?;
                    let leader =
                        status["conditions"].as_array()?.iter().find(|c| c["kind"] == "Leader")?.clone();
                    (status["cluster"]["etcd"]["reachable"] == false && leader["reason"] == "EtcdUnreachable")
                        .then_some(())
                })
                .await;
            }
            let actions_before = rig.neuron.get("/actions").await["actions"].as_array().unwrap().len();
            tokio::time::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed()) + LEASE_TTL).await;
            let actions_after = rig.neuron.get("/actions").await["actions"].as_array().unwrap().len();
            assert_eq!(actions_before, actions_after, "no lifecycle call while etcd is away");
            rig.etcd.resume().await;
            let (_, next_term) = rig.leader(Duration::from_secs(30)).await;
            assert!(next_term > term, "a leader resumed with a new term");
        },
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_loses_nothing() {
    let mut rig = Rig::start().await;
    let (_, first_term) = rig.leader(Duration::from_secs(30)).await;
    let mut stops = Vec::new();
    let seen = under_load(
        &mut rig,
        async |rig: &mut Rig| {
            // As an operator (or an orchestrator's readiness check) does: the next replica
            // stops once the restarted one is back in the balancer's rotation (nginx marks a
            // refusing replica down for `fail_timeout`).
            for i in 0..3 {
                stops.push(rig.stop(i).await);
                rig.start_replica(i).await;
                rig.leader(Duration::from_secs(30)).await;
                rig.in_rotation(i).await;
            }
        },
        // Every replica stopped with SIGTERM: nothing may fail, not even on its connections.
        &[],
    )
    .await;
    let (_, last_term) = rig.leader(Duration::from_secs(30)).await;
    assert!(last_term > first_term, "leadership moved while the leader restarted");
    for replica in &rig.replicas {
        assert!(
            seen.by_replica.get(&replica.name).copied().unwrap_or(0) > 0,
            "{} served: {seen:?}",
            replica.name
        );
    }
    eprintln!("rolling restart: {seen:?}; exits after SIGTERM took {stops:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_neuron_restarting_during_a_leader_change_keeps_its_fence() {
    let mut rig = Rig::start().await;
    let (leader, term) = rig.leader(Duration::from_secs(30)).await;
    let killed = rig.replicas[leader].name.clone();
    under_load(
        &mut rig,
        async |rig: &mut Rig| {
            rig.signal(leader, "KILL");
            rig.neuron.restart().await;
            let (_, next_term) = rig.leader(Duration::from_secs(30)).await;
            assert!(next_term > term);
            let record = rig.neuron.get("/actions").await;
            assert!(record["term"].as_u64().unwrap() >= term, "the restarted neuron kept its term: {record}");
        },
        // The neuron's restart cuts the requests it was serving (its engines stop with it).
        &[killed.as_str(), "gw-1", "gw-2", "gw-3"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_on_an_invalid_fleet_serves_the_published_one() {
    let mut rig = Rig::start().await;
    let (leader, _) = rig.leader(Duration::from_secs(30)).await;
    let joining = (leader + 1) % 3;
    rig.stop(joining).await;
    // Its own state directory is empty: only etcd has the last good fleet for it.
    let state = rig.dir.path().join(format!("{}-state", rig.replicas[joining].name));
    let _ = std::fs::remove_dir_all(&state);
    let good = std::fs::read_to_string(rig.fleet.join("fleet.toml")).unwrap();
    write_atomic(&rig.fleet.join("fleet.toml"), &format!("{good}[[model]]\nid = 5\n"));
    let seen = under_load(
        &mut rig,
        async |rig: &mut Rig| {
            rig.start_replica(joining).await;
            let status = rig.status(joining).await.unwrap();
            let fleet =
                status["conditions"].as_array().unwrap().iter().find(|c| c["kind"] == "FleetValid").cloned();
            let message = fleet.as_ref().and_then(|c| c["message"].as_str()).unwrap_or("").to_owned();
            assert!(message.contains("serving the last good fleet"), "{fleet:?}");
        },
        &[],
    )
    .await;
    let name = rig.replicas[joining].name.clone();
    assert!(seen.by_replica.get(&name).copied().unwrap_or(0) > 0, "the joined replica served: {seen:?}");
}
