//! Taking a host out of service end to end, with real `neuron` and `cortex serve` processes and
//! the `cortex cordon / drain / uncordon / pin / unpin` commands: under a steady streaming load,
//! `cortex drain n1 --wait` moves the copy to n2 make-before-break (n2's load is ready before
//! n1's unload starts, in the neurons' own action records) with no failed request and a
//! one-line change to the fleet file; a pinned model's pin is suspended and shown; a model that
//! fits nowhere else keeps serving where it is; `cortex uncordon` brings the host back. Every
//! command keeps the fleet file's comments, blank lines, key order and inline tables, and a
//! fleet broken by hand is refused with `path:line:col`.

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cortex_e2e::{Daemon, Neuron, cortex, cortex_config, eventually, neuron_table, text};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const MINUTE: Duration = Duration::from_secs(60);

/// Two sim neurons (n2 with `n2_vram_mb`), a fleet declaring them and `model`, and the daemon.
struct Rig {
    dir: tempfile::TempDir,
    n1: Neuron,
    n2: Neuron,
    fleet: PathBuf,
    config: PathBuf,
    daemon: Daemon,
}

impl Rig {
    async fn start(n2_vram_mb: u64, model: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let n1 = Neuron::start_sim(dir.path(), "n1", &[24_000], 1_000).await;
        let n2 = Neuron::start_sim(dir.path(), "n2", &[n2_vram_mb], 1_000).await;
        let fleet = dir.path().join("fleet");
        std::fs::create_dir_all(&fleet).unwrap();
        let text = format!(
            "# The lab's fleet.\n\n{}{}{model}",
            neuron_table(&n1).replace("[[neuron]]\n", "# The box under the desk.\n[[neuron]]\n"),
            neuron_table(&n2)
        );
        std::fs::write(fleet.join("fleet.toml"), text).unwrap();
        let (config, port) = cortex_config(dir.path());
        let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
        Rig { dir, n1, n2, fleet, config, daemon }
    }

    fn fleet_text(&self) -> String {
        std::fs::read_to_string(self.fleet.join("fleet.toml")).unwrap()
    }

    /// `cortex ARGS --fleet <fleet> --config <config>`, off the runtime's threads.
    async fn cortex(&self, args: &[&str]) -> Output {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if args[0] != "status" {
            args.extend(["--fleet".to_owned(), self.fleet.display().to_string()]);
        }
        let (config, cwd) = (self.config.clone(), self.dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cortex(&args, &config, &cwd)
        })
        .await
        .unwrap()
    }

    /// `cortex status` as text.
    async fn status_text(&self) -> String {
        let status = self.cortex(&["status"]).await;
        assert!(status.status.success(), "{}", text(&status));
        String::from_utf8_lossy(&status.stdout).into_owned()
    }

    /// The first accepted `kind` action for `model` in `neuron`'s action record.
    async fn action(neuron: &Neuron, kind: &str, model: &str) -> Value {
        let record = neuron.get("/actions").await;
        let actions = record["actions"].as_array().unwrap();
        let found =
            actions.iter().find(|a| a["kind"] == kind && a["model"] == model && a["outcome"] == "accepted");
        found
            .unwrap_or_else(|| panic!("no accepted {kind} of {model} on {}: {record:#}", neuron.name))
            .clone()
    }

    /// The daemon's drain progress for `neuron` (its entry of `maintenance`), if any.
    async fn progress(&self, neuron: &str) -> Option<Value> {
        let status = self.daemon.status().await;
        status["maintenance"].as_array()?.iter().find(|m| m["neuron"] == neuron).cloned()
    }
}

/// A sim model with `extra` lines (`replicas = 1`, `pinned_on = ["n1"]`).
fn model(vram_mb: u64, extra: &str) -> String {
    format!(
        "[[model]]\nid = \"coder\"\nharness = \"sim\"\nsource = \"coder.bin\"\nvram_mb = {vram_mb}\nmin_devices = 1\n{extra}\n"
    )
}

/// Streaming clients in a closed loop until stopped: each request must end with `[DONE]` and
/// carry no error event.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    tasks: JoinSet<Vec<String>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let mut tasks = JoinSet::new();
        for _ in 0..clients {
            let (stop, served, url, http) = (stop.clone(), served.clone(), url.clone(), http.clone());
            tasks.spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match stream(&http, &url).await {
                        Ok(()) => _ = served.fetch_add(1, Ordering::Relaxed),
                        Err(failure) => failures.push(failure),
                    }
                }
                failures
            });
        }
        Load { stop, served, tasks }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Wait for `more` requests to be served from now.
    async fn serves(&self, more: usize, what: &str) {
        let target = self.served() + more;
        eventually(what, MINUTE, async || (self.served() >= target).then_some(())).await;
    }

    /// Stop the clients; the number served and every failure.
    async fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        while let Some(result) = self.tasks.join_next().await {
            failures.extend(result.unwrap());
        }
        (self.served(), failures)
    }
}

async fn stream(http: &reqwest::Client, url: &str) -> Result<(), String> {
    let body = json!({"model": "coder", "stream": true, "max_tokens": 60,
                      "messages": [{"role": "user", "content": "Count slowly."}]});
    let response = http.post(url).json(&body).send().await.map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| format!("body broke off: {e}"))?;
    if status == 200 && text.contains("data: [DONE]") && !text.contains("\"error\"") {
        Ok(())
    } else {
        Err(format!("{status} {text}"))
    }
}

fn assert_no_failures(served: usize, failures: &[String], rig: &Rig) {
    let log = rig.daemon.process.log_text();
    let requeued = log.matches("the copy went away under a request").count();
    eprintln!(
        "{served} streams served, {} failed, {requeued} queued again after the copy went away",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:#?}\n{}",
        failures.len(),
        served + failures.len(),
        failures.iter().take(5).collect::<Vec<_>>(),
        rig.daemon.process.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}

/// The fleet text with `line` added at the end of n1's table.
fn with_n1_line(before: &str, rig: &Rig, line: &str) -> String {
    let endpoint = format!("endpoint = \"{}\"\n", rig.n1.endpoint());
    before.replacen(&endpoint, &format!("{endpoint}{line}\n"), 1)
}

/// Drain n1 under load, wait for it, and check the move was make-before-break with nothing
/// lost; returns the drain's output and the load, still running.
async fn drain_under_load(rig: &Rig) -> (String, Load) {
    let load = Load::start(rig.daemon.port, 3);
    load.serves(10, "the load to be served before the drain").await;
    let before = rig.fleet_text();
    let drain = rig.cortex(&["drain", "n1", "--wait", "--timeout", "2m"]).await;
    let out = text(&drain);
    eprintln!("{out}");
    assert!(drain.status.success(), "{out}");
    assert!(out.contains("n1 is ready for maintenance"), "{out}");
    assert_eq!(
        rig.fleet_text(),
        with_n1_line(&before, rig, "state = \"draining\""),
        "the fleet file changes by that one line"
    );
    assert!(out.contains("+state = \"draining\""), "the diff is shown: {out}");
    assert!(out.contains("because n1 is draining"), "the plan says why: {out}");
    assert!(out.contains("coder: n1 → n2"), "the plan shows the move: {out}");
    load.serves(10, "the load to be served after the drain").await;
    let loaded = Rig::action(&rig.n2, "load", "coder").await;
    let unloaded = Rig::action(&rig.n1, "unload", "coder").await;
    let ready_at = loaded["ended_unix_ms"].as_u64().expect("n2's load ended");
    assert!(
        ready_at <= unloaded["started_unix_ms"].as_u64().unwrap(),
        "n2's copy is ready before n1's unload starts: {loaded} / {unloaded}"
    );
    assert_eq!(rig.n1.loaded().await, Vec::<String>::new());
    assert_eq!(rig.n2.loaded().await, ["coder"]);
    (out, load)
}

/// `cortex uncordon n1` gives the fleet file back as it was and the daemon shows n1 in service.
async fn uncordon(rig: &Rig, before: &str) {
    let uncordon = rig.cortex(&["uncordon", "n1"]).await;
    assert!(uncordon.status.success(), "{}", text(&uncordon));
    assert_eq!(rig.fleet_text(), before, "uncordon takes the line out again");
    eventually("n1 back in service", MINUTE, async || rig.progress("n1").await.is_none().then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_copy_is_ready_elsewhere_first_and_no_request_fails() {
    let rig = Rig::start(24_000, &model(8_000, "replicas = 1\n")).await;
    eventually("coder's copy on n1", MINUTE, async || (rig.n1.loaded().await == ["coder"]).then_some(()))
        .await;
    let before = rig.fleet_text();
    let (_, load) = drain_under_load(&rig).await;
    let progress = rig.progress("n1").await.expect("n1 is draining");
    assert_eq!((&progress["safe_to_stop"], &progress["in_flight"]), (&json!(true), &json!(0)), "{progress}");
    let status = rig.status_text().await;
    assert!(status.contains("n1 draining: ready for maintenance"), "{status}");
    assert!(status.lines().any(|l| l.starts_with("n1 ") && l.contains("drained")), "{status}");
    let (served, failures) = load.finish().await;
    assert_no_failures(served, &failures, &rig);
    uncordon(&rig, &before).await;
    assert!(rig.status_text().await.lines().any(|l| l.starts_with("n1 ") && l.contains(" up ")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pin_on_a_draining_neuron_is_suspended_shown_and_honoured_again() {
    let rig = Rig::start(24_000, &model(8_000, "pinned_on = [\"n1\"]\n")).await;
    eventually("coder pinned on n1", MINUTE, async || (rig.n1.loaded().await == ["coder"]).then_some(()))
        .await;
    let before = rig.fleet_text();
    let (out, load) = drain_under_load(&rig).await;
    assert!(out.contains("coder pinned on n1 (draining): stand-in on n2"), "the plan shows the pin: {out}");
    let progress = rig.progress("n1").await.expect("n1 is draining");
    assert_eq!(progress["suspended_pins"], json!(["coder"]), "{progress}");
    let status = rig.status_text().await;
    assert!(status.contains("pin of coder suspended (stand-in on n2)"), "{status}");
    let (served, failures) = load.finish().await;
    assert_no_failures(served, &failures, &rig);
    uncordon(&rig, &before).await;
    eventually("the pin honoured again on n1", MINUTE, async || {
        (rig.n1.loaded().await == ["coder"]).then_some(())
    })
    .await;
    // The stand-in stays as a second warm copy; the fleet is in sync with both.
    eventually("Synced with the pin back", MINUTE, async || {
        (rig.daemon.status().await["sync"] == "Synced").then_some(())
    })
    .await;
    assert_eq!(rig.n2.loaded().await, ["coder"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_fits_nowhere_else_keeps_serving_where_it_is() {
    // n2 has 4 GB: coder (8 GB) cannot move there.
    let rig = Rig::start(4_000, &model(8_000, "replicas = 1\n")).await;
    eventually("coder's copy on n1", MINUTE, async || (rig.n1.loaded().await == ["coder"]).then_some(()))
        .await;
    let before = rig.fleet_text();
    let load = Load::start(rig.daemon.port, 3);
    load.serves(10, "the load to be served before the drain").await;
    let drain = rig.cortex(&["drain", "n1", "--wait", "--timeout", "3s"]).await;
    let out = text(&drain);
    assert_eq!(drain.status.code(), Some(1), "the drain cannot finish: {out}");
    assert!(out.contains("coder: stays on n1, it fits nowhere else (see Infeasible)"), "{out}");
    assert!(out.contains("it keeps serving on n1"), "the infeasible section says why: {out}");
    assert!(out.contains("is not drained after"), "{out}");
    assert_eq!(rig.fleet_text(), with_n1_line(&before, &rig, "state = \"draining\""));
    let progress = eventually("the daemon to show the copy staying", MINUTE, async || {
        rig.progress("n1").await.filter(|p| p["copies"][0]["fate"]["kind"] == "stays")
    })
    .await;
    assert_eq!(progress["safe_to_stop"], json!(false), "{progress}");
    load.serves(20, "the load to be served on n1 while it drains").await;
    assert_eq!(rig.n1.loaded().await, ["coder"], "kept serving where it is");
    let status = rig.status_text().await;
    assert!(status.contains("n1 draining: 1 copy left") && status.contains("coder stays"), "{status}");
    let (served, failures) = load.finish().await;
    assert_no_failures(served, &failures, &rig);
    uncordon(&rig, &before).await;
}

/// A fleet written by a person: comments, blank lines, an inline table, keys in their order,
/// the models in a file of their own.
const NEURONS: &str = r#"# Our two boxes.

# The big one under the desk.
[[neuron]]
name = "n1"      # pins use this name
endpoint = "ENDPOINT1"
labels = { tier = "large", room = "lab" }

# The small one.
[[neuron]]
endpoint = "ENDPOINT2"
name = "n2"
labels = { room = "lab" }
"#;

const MODELS: &str = r#"# What we serve.

[[model]]
id = "coder"   # the one everyone uses
harness = "sim"
source = "coder.bin"
vram_mb = 8000
pinned_on = ["n1"]  # keep it hot

[[model]]
id = "chat"
harness = "sim"
source = "chat.bin"
vram_mb = 2000
require_labels = { room = "lab" }
"#;

async fn edit(dir: &Path, config: &Path, args: &[&str]) -> Output {
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.extend(["--fleet".to_owned(), "fleet".to_owned()]);
    let (config, cwd) = (config.to_path_buf(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cortex(&args, &config, &cwd)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_changes_one_line_and_keeps_the_rest_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = Neuron::start_sim(dir.path(), "n1", &[24_000], 100).await;
    let n2 = Neuron::start_sim(dir.path(), "n2", &[24_000], 100).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let neurons = NEURONS.replace("ENDPOINT1", &n1.endpoint()).replace("ENDPOINT2", &n2.endpoint());
    std::fs::write(fleet.join("neurons.toml"), &neurons).unwrap();
    std::fs::write(fleet.join("models.toml"), MODELS).unwrap();
    let (config, _) = cortex_config(dir.path());
    let read = |name: &str| std::fs::read_to_string(fleet.join(name)).unwrap();
    let n1_labels = "labels = { tier = \"large\", room = \"lab\" }\n";
    let n2_name = "labels = { room = \"lab\" }\n";
    let steps: [(&[&str], String, String); 6] = [
        (
            &["cordon", "n1"],
            neurons.replace(n1_labels, &format!("{n1_labels}state = \"cordoned\"\n")),
            MODELS.to_owned(),
        ),
        (
            &["drain", "n1"],
            neurons.replace(n1_labels, &format!("{n1_labels}state = \"draining\"\n")),
            MODELS.to_owned(),
        ),
        (&["uncordon", "n1"], neurons.clone(), MODELS.to_owned()),
        (
            &["drain", "n2"],
            neurons.replace(n2_name, &format!("{n2_name}state = \"draining\"\n")),
            MODELS.to_owned(),
        ),
        (
            &["pin", "chat", "n2"],
            neurons.replace(n2_name, &format!("{n2_name}state = \"draining\"\n")),
            MODELS.replace(
                "require_labels = { room = \"lab\" }\n",
                "require_labels = { room = \"lab\" }\npinned_on = [\"n2\"]\n",
            ),
        ),
        (
            &["unpin", "coder", "n1"],
            neurons.replace(n2_name, &format!("{n2_name}state = \"draining\"\n")),
            MODELS.replace("pinned_on = [\"n1\"]  # keep it hot\n", "").replace(
                "require_labels = { room = \"lab\" }\n",
                "require_labels = { room = \"lab\" }\npinned_on = [\"n2\"]\n",
            ),
        ),
    ];
    for (args, neurons_after, models_after) in steps {
        let output = edit(dir.path(), &config, args).await;
        let out = text(&output);
        assert!(output.status.success(), "cortex {args:?}: {out}");
        assert!(out.contains("The plan this leads to:"), "cortex {args:?} shows the plan: {out}");
        assert_eq!(read("neurons.toml"), neurons_after, "cortex {args:?}: {out}");
        assert_eq!(read("models.toml"), models_after, "cortex {args:?}: {out}");
    }
    // The same command twice changes nothing.
    let again = edit(dir.path(), &config, &["drain", "n2"]).await;
    assert!(text(&again).contains("n2 is already draining; nothing to change."), "{}", text(&again));

    // A fleet broken by hand is refused with where, and nothing is written.
    let broken = read("neurons.toml").replace("state = \"draining\"", "state = \"away\"");
    std::fs::write(fleet.join("neurons.toml"), &broken).unwrap();
    let refused = edit(dir.path(), &config, &["uncordon", "n2"]).await;
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    let line = broken.lines().position(|l| l.starts_with("state = \"away\"")).unwrap() + 1;
    assert!(out.contains(&format!("neurons.toml:{line}:9: error: state must be")), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(read("neurons.toml"), broken);
    // An unknown name is refused with the names there are.
    std::fs::write(fleet.join("neurons.toml"), &neurons).unwrap();
    let unknown = edit(dir.path(), &config, &["cordon", "n3"]).await;
    assert!(
        text(&unknown).contains("unknown neuron \"n3\"; known neurons: \"n1\", \"n2\""),
        "{}",
        text(&unknown)
    );
    assert_eq!(read("neurons.toml"), neurons);
}

#[tokio::test(flavor = "multi_thread")]
async fn under_source_commit_the_change_is_shown_to_commit_or_committed() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = Neuron::start_sim(dir.path(), "n1", &[24_000], 100).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let file = fleet.join("fleet.toml");
    std::fs::write(&file, format!("[policy]\nsource = \"commit\"\n\n{}", neuron_table(&n1))).unwrap();
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git").arg("-C").arg(&fleet).args(args).output().unwrap();
        assert!(output.status.success(), "git {args:?}: {}", text(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    git(&["init", "--quiet"]);
    git(&["config", "user.name", "ops"]);
    git(&["config", "user.email", "ops@example.com"]);
    git(&["add", "fleet.toml"]);
    git(&["commit", "--quiet", "-m", "fleet"]);
    let (config, _) = cortex_config(dir.path());

    let cordon = edit(dir.path(), &config, &["cordon", "n1"]).await;
    let out = text(&cordon);
    assert!(cordon.status.success(), "{out}");
    assert!(out.contains("policy.source = \"commit\": cortex serve applies only what is committed"), "{out}");
    assert!(out.contains("commit -m \"fleet: cordon n1\""), "the command to commit it: {out}");
    assert!(git(&["status", "--porcelain"]).contains("fleet.toml"), "written, not committed");
    git(&["checkout", "--", "fleet.toml"]);

    let committed = edit(dir.path(), &config, &["drain", "n1", "--commit"]).await;
    let out = text(&committed);
    assert!(committed.status.success(), "{out}");
    assert!(out.contains("Committed "), "{out}");
    assert_eq!(git(&["log", "-1", "--format=%s"]).trim(), "fleet: drain n1");
    assert_eq!(git(&["status", "--porcelain"]), "", "nothing left uncommitted");
    assert!(git(&["show", "HEAD", "--format="]).contains("+state = \"draining\""));
}
