//! The fault suite: real `neuron` and `cortex` processes with a command-harness test engine
//! (`fault-engine`) that can be told to fail to load, hang or load slowly, and is crashed with
//! `kill -9`. One test per failure the control loop must heal from (or refuse); each waits for
//! the system to heal within a deadline and prints how long healing took.

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cortex_e2e::{
    Daemon, Neuron, cortex, cortex_config_with, eventually, fault_harness, fault_model, find_process,
    listening, neuron_table, process_ended, process_flag, text, write_atomic,
};
use serde_json::Value;

const ENGINE: &str = env!("CARGO_BIN_EXE_fault-engine");

/// The daemon's timings in these tests: the default poll and backoff base, a backoff capped
/// at 8 s, and a resync far beyond any deadline here, so that healing can only come from the
/// backoff expiring or the topology moving, never from the periodic resync.
const POLL: &str = "interval = \"2s\"";
const RECONCILE: &str = "resync = \"10m\"\nbackoff_base = \"2s\"\nbackoff_max = \"8s\"";

/// One neuron `n1` with the fault harness, an empty models folder, a fleet folder and a
/// cortex.toml.
struct Rig {
    dir: tempfile::TempDir,
    neuron: Neuron,
    models: PathBuf,
    fleet: PathBuf,
    config: PathBuf,
    port: u16,
}

impl Rig {
    async fn new() -> Rig {
        Rig::with_neuron_settings("").await
    }

    /// With top-level neuron.toml `settings` (e.g. `load_timeout = "3s"`).
    async fn with_neuron_settings(settings: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        let harness = format!("{settings}\n{}", fault_harness(Path::new(ENGINE)));
        let neuron = Neuron::start_in(dir.path(), "n1", &harness, Some(&models)).await;
        let fleet = dir.path().join("fleet");
        std::fs::create_dir_all(&fleet).unwrap();
        let (config, port) = cortex_config_with(dir.path(), POLL, RECONCILE);
        Rig { dir, neuron, models, fleet, config, port }
    }

    /// Write the fleet: the neuron and `models` tables.
    fn fleet(&self, models: &str) {
        write_atomic(&self.fleet.join("fleet.toml"), &format!("{}{models}", neuron_table(&self.neuron)));
    }

    fn model_file(&self, name: &str, says: &str) {
        std::fs::write(self.models.join(name), says).unwrap();
    }

    async fn serve(&self) -> Daemon {
        Daemon::start(&self.fleet, &self.config, self.port, self.dir.path().join("cortex.log")).await
    }
}

/// Status Synced with `model` loaded on the neuron.
async fn synced_with(daemon: &Daemon, neuron: &Neuron, model: &str, within: Duration) -> Value {
    eventually(&format!("Synced with {model} loaded"), within, async || {
        let status = daemon.status().await;
        (status["sync"] == "Synced" && neuron.loaded().await == [model]).then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_source_converges_once_it_exists_without_a_fleet_edit() {
    let rig = Rig::new().await;
    rig.fleet(&fault_model("m", "m.bin", &["n1"]));
    let daemon = rig.serve().await;
    let status = eventually("the failed load to back off", Duration::from_secs(60), async || {
        let status = daemon.status().await;
        status["backing_off"].as_array().is_some_and(|b| !b.is_empty()).then_some(status)
    })
    .await;
    assert!(status["backing_off"][0]["error"].to_string().contains("m.bin"), "names the cause: {status:#}");
    assert_eq!(status["sync"], "OutOfSync");

    rig.model_file("m.bin", "serve");
    let fixed = Instant::now();
    let status = synced_with(&daemon, &rig.neuron, "m", Duration::from_secs(30)).await;
    eprintln!("missing source: cause fixed -> Synced in {} ms", fixed.elapsed().as_millis());
    let healing = status["runs"].as_array().unwrap().iter().rev().find(|r| r["result"] == "applied").unwrap();
    assert_eq!(healing["trigger"], "backoff_expiry", "the backoff expiry woke the pass: {status:#}");
}

/// A pinned model whose engine first behaves as `first` (`fail`: exits while loading; `hang`:
/// never ready, failed by the neuron's load_timeout) is left `failed` on the neuron; once its
/// file is fixed, the reconciler's retry reloads it. Returns the time from fix to Synced.
async fn a_failed_pinned_copy_recovers(first: &str, neuron_settings: &str) -> Duration {
    let rig = Rig::with_neuron_settings(neuron_settings).await;
    rig.model_file("m.bin", first);
    rig.fleet(&fault_model("m", "m.bin", &["n1"]));
    let daemon = rig.serve().await;
    let status = eventually("the failed copy to back off", Duration::from_secs(60), async || {
        let status = daemon.status().await;
        let failed = status["topology"]["neurons"][0]["models"][0]["status"] == "failed";
        (failed && status["backing_off"].as_array().is_some_and(|b| !b.is_empty())).then_some(status)
    })
    .await;
    assert_eq!(status["sync"], "OutOfSync", "{status:#}");
    rig.model_file("m.bin", "serve");
    let fixed = Instant::now();
    synced_with(&daemon, &rig.neuron, "m", Duration::from_secs(60)).await;
    fixed.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_that_exits_while_loading_is_retried_once_fixed() {
    let healed = a_failed_pinned_copy_recovers("fail", "").await;
    eprintln!("engine exits while loading: cause fixed -> Synced in {} ms", healed.as_millis());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_that_hangs_while_loading_is_retried_once_fixed() {
    let healed = a_failed_pinned_copy_recovers("hang", "load_timeout = \"3s\"").await;
    eprintln!("engine hangs while loading: cause fixed -> Synced in {} ms", healed.as_millis());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_engine_is_loaded_again() {
    let rig = Rig::new().await;
    rig.model_file("m.bin", "serve");
    rig.fleet(&fault_model("m", "m.bin", &["n1"]));
    let daemon = rig.serve().await;
    synced_with(&daemon, &rig.neuron, "m", Duration::from_secs(60)).await;
    let pid = find_process("fault-engine", "--model", "m").expect("the engine process");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let crashed = Instant::now();
    eventually("the pinned copy to be back", Duration::from_secs(30), async || {
        let again = find_process("fault-engine", "--model", "m").filter(|p| *p != pid);
        (again.is_some() && rig.neuron.loaded().await == ["m"]).then_some(())
    })
    .await;
    eprintln!("engine crash: killed -> loaded again in {} ms", crashed.elapsed().as_millis());
    // Once cortex has seen it healed, it serves it.
    synced_with(&daemon, &rig.neuron, "m", Duration::from_secs(30)).await;
    let (status, body) = daemon.chat("m").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_on_demand_copy_recovers_on_the_next_request_after_the_fix() {
    let rig = Rig::new().await;
    rig.model_file("od.bin", "fail");
    rig.fleet(&fault_model("od", "od.bin", &[]));
    let daemon = rig.serve().await;
    let (status, body) = daemon.chat("od").await;
    assert_ne!(status, 200, "the engine fails to load: {body}");
    assert!(
        rig.neuron.models().await["models"][0]["status"] == "failed",
        "a failed copy stays on the neuron"
    );
    // While the failure backs off, requests are told why and when the next try is.
    let refused = eventually("a 503 naming the failed load", Duration::from_secs(30), async || {
        let (status, body) = daemon.chat("od").await;
        assert!(!body.contains("already holds a copy"), "{body}");
        (status == 503 && body.contains("the last load failed")).then_some(body)
    })
    .await;
    assert!(refused.contains("next try in"), "{refused}");
    assert!(refused.contains("status 3"), "names the real cause: {refused}");

    rig.model_file("od.bin", "serve");
    let fixed = Instant::now();
    eventually("a request to succeed after the fix", Duration::from_secs(30), async || {
        let (status, body) = daemon.chat("od").await;
        assert!(!body.contains("already holds a copy"), "{body}");
        (status == 200).then_some(())
    })
    .await;
    eprintln!("failed on-demand copy: cause fixed -> request served in {} ms", fixed.elapsed().as_millis());
    assert_eq!(rig.neuron.loaded().await, ["od"]);
}

/// `fleet.reloads` from the status document.
async fn reloads(daemon: &Daemon) -> u64 {
    daemon.status().await["fleet"]["reloads"].as_u64().unwrap()
}

/// Fail if `reloads` moves from `expected` during `window` (the thing under test is a
/// duration: nothing may happen within it).
async fn reloads_stay(daemon: &Daemon, expected: u64, window: Duration) {
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    while start.elapsed() < window {
        ticks.tick().await;
        let now = reloads(daemon).await;
        assert_eq!(
            now,
            expected,
            "the fleet was reloaded {} time(s) after {:?}",
            now - expected,
            start.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_fleet_is_never_reloaded_and_one_save_is_one_reload() {
    let rig = Rig::new().await;
    rig.model_file("m.bin", "serve");
    let models = fault_model("m", "m.bin", &["n1"]);
    rig.fleet(&models);
    let daemon = rig.serve().await;
    synced_with(&daemon, &rig.neuron, "m", Duration::from_secs(60)).await;
    let before = reloads(&daemon).await;
    assert_eq!(before, 0, "nothing was edited since the start");
    reloads_stay(&daemon, before, Duration::from_secs(10)).await;

    rig.fleet(&format!("# a comment\n{models}"));
    eventually("the save to be read", Duration::from_secs(10), async || {
        (reloads(&daemon).await > before).then_some(())
    })
    .await;
    reloads_stay(&daemon, before + 1, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_fleet_is_refused_and_the_models_are_still_served() {
    let rig = Rig::new().await;
    rig.model_file("m.bin", "serve");
    rig.fleet(&fault_model("m", "m.bin", &["n1"]));
    let daemon = rig.serve().await;
    synced_with(&daemon, &rig.neuron, "m", Duration::from_secs(60)).await;

    std::fs::remove_file(rig.fleet.join("fleet.toml")).unwrap();
    let status = eventually("the empty fleet to be refused", Duration::from_secs(20), async || {
        let status = daemon.status().await;
        (status["fleet"]["refused"]["reason"] == "DestructiveChange").then_some(status)
    })
    .await;
    let condition =
        status["conditions"].as_array().unwrap().iter().find(|c| c["kind"] == "FleetValid").unwrap();
    assert_eq!(condition["ok"], false, "{status:#}");
    assert!(condition["message"].as_str().unwrap().contains("no neurons"), "{condition}");
    let shown = cortex(&["status"], &rig.config, rig.dir.path());
    assert!(text(&shown).contains("DestructiveChange"), "cortex status shows it: {}", text(&shown));
    assert_eq!(rig.neuron.loaded().await, ["m"], "the last good fleet stays in force");
    assert_eq!(daemon.chat("m").await.0, 200, "and is served");
    let plan = cortex(&["plan", "--fleet", "fleet"], &rig.config, rig.dir.path());
    assert!(
        text(&plan).contains("Warning: destructive change: this fleet declares no neurons"),
        "{}",
        text(&plan)
    );

    // A fleet that keeps its neuron but drops every model is refused too, and `cortex plan`
    // names what it would drop.
    rig.fleet("");
    eventually("the model-less fleet to be refused", Duration::from_secs(20), async || {
        let message = daemon.status().await["fleet"]["refused"]["message"].to_string();
        message.contains("no models").then_some(())
    })
    .await;
    let plan = cortex(&["plan", "--fleet", "fleet"], &rig.config, rig.dir.path());
    assert!(text(&plan).contains("it would drop m on n1"), "{}", text(&plan));

    // The whole directory vanishing is refused too.
    std::fs::remove_dir_all(&rig.fleet).unwrap();
    eventually("the vanished directory to be refused", Duration::from_secs(20), async || {
        (daemon.status().await["fleet"]["refused"]["reason"] == "Unreadable").then_some(())
    })
    .await;
    assert_eq!(daemon.chat("m").await.0, 200, "still served");

    // Restoring it (as a checkout would) is picked up again.
    std::fs::create_dir_all(&rig.fleet).unwrap();
    rig.fleet(&fault_model("m", "m.bin", &["n1"]));
    eventually("the restored fleet to be in force", Duration::from_secs(20), async || {
        let status = daemon.status().await;
        (status["fleet"]["valid"] == true && status["fleet"]["refused"].is_null()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_neuron_is_never_synced() {
    let mut rig = Rig::new().await;
    rig.model_file("m.bin", "serve");
    rig.fleet(&fault_model("m", "m.bin", &["n1"]));
    let daemon = rig.serve().await;
    synced_with(&daemon, &rig.neuron, "m", Duration::from_secs(60)).await;
    let ok = cortex(&["status", "--detailed-exitcode"], &rig.config, rig.dir.path());
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));

    rig.neuron.process.child.kill().unwrap();
    let status = eventually("the neuron to be unreachable", Duration::from_secs(30), async || {
        let status = daemon.status().await;
        (status["sync"] == "OutOfSync").then_some(status)
    })
    .await;
    let condition =
        status["conditions"].as_array().unwrap().iter().find(|c| c["kind"] == "NeuronsReachable").unwrap();
    assert_eq!(condition["ok"], false, "{status:#}");
    assert!(
        condition["message"].as_str().unwrap().contains("n1 (pins m)"),
        "names it and its pins: {condition}"
    );
    assert_eq!(status["health"], "Degraded");
    let failing = cortex(&["status", "--detailed-exitcode"], &rig.config, rig.dir.path());
    assert_eq!(failing.status.code(), Some(2), "{}", text(&failing));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_neuron_leaves_no_engine_listening() {
    let mut rig = Rig::new().await;
    rig.model_file("m.bin", "serve");
    let apply =
        |rig: &Rig| cortex(&["apply", "--fleet", "fleet", "--auto-approve"], &rig.config, rig.dir.path());
    rig.fleet(&fault_model("m", "m.bin", &["n1"]));
    let applied = apply(&rig);
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    let pid = find_process("fault-engine", "--model", "m").expect("the engine process");
    let port: u16 = process_flag(pid, "--port").unwrap().parse().unwrap();
    assert!(listening(port));

    rig.neuron.process.child.kill().unwrap();
    let killed = Instant::now();
    eventually("the engine to die with its neuron", Duration::from_secs(10), async || {
        (process_ended(pid) && !listening(port)).then_some(())
    })
    .await;
    eprintln!("kill -9 neuron -> engine gone in {} ms", killed.elapsed().as_millis());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_by_another_actor_inside_a_chain_is_a_409_not_absorbed() {
    let rig = Rig::new().await;
    rig.model_file("a.bin", "slow 1500");
    rig.model_file("b.bin", "serve");
    rig.model_file("intruder.bin", "serve");
    rig.fleet(&format!("{}{}", fault_model("a", "a.bin", &["n1"]), fault_model("b", "b.bin", &["n1"])));
    let apply = std::process::Command::new(cortex_e2e::cortex_bin())
        .args(["apply", "--fleet", "fleet", "--auto-approve", "--config"])
        .arg(&rig.config)
        .current_dir(rig.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("a to be loading", Duration::from_secs(20), async || {
        (rig.neuron.models().await["models"][0]["status"] == "loading").then_some(())
    })
    .await;
    // Another actor loads something while the chain waits for a.
    let (code, body) = rig
        .neuron
        .call(
            "/models/load",
            &serde_json::json!({"model": "intruder", "profile": {"harness": "fault", "source": "intruder.bin", "args": []}, "ram_mb": 64}),
        )
        .await;
    assert!(code < 300, "{body}");
    let output = tokio::task::spawn_blocking(move || apply.wait_with_output()).await.unwrap().unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("changed since it was observed"), "b was refused with a 409: {out}");
    let loaded = eventually("a and the intruder loaded", Duration::from_secs(20), async || {
        let loaded = rig.neuron.loaded().await;
        (loaded.len() == 2).then_some(loaded)
    })
    .await;
    assert_eq!(loaded, ["a", "intruder"], "b was not loaded on a state the plan never saw");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_actors_applying_the_same_plan_load_once() {
    let rig = Rig::new().await;
    rig.model_file("a.bin", "slow 1000");
    rig.fleet(&fault_model("a", "a.bin", &["n1"]));
    let plan = cortex(&["plan", "--fleet", "fleet", "--out", "plan.json"], &rig.config, rig.dir.path());
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let start = || {
        std::process::Command::new(cortex_e2e::cortex_bin())
            .args(["apply", "plan.json", "--config"])
            .arg(&rig.config)
            .current_dir(rig.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start(), start());
    let outputs = tokio::task::spawn_blocking(move || {
        [first.wait_with_output().unwrap(), second.wait_with_output().unwrap()]
    })
    .await
    .unwrap();
    let codes: Vec<Option<i32>> = outputs.iter().map(|o| o.status.code()).collect();
    let all = outputs.iter().map(text).collect::<Vec<_>>().join("\n----\n");
    assert!(codes.contains(&Some(0)) && codes.contains(&Some(1)), "one applies, one is refused: {all}");
    assert!(all.contains("changed since it was observed") || all.contains("is stale"), "{all}");
    assert_eq!(rig.neuron.loaded().await, ["a"]);
    let log = rig.neuron.process.log_text();
    assert_eq!(log.matches("fault-engine --port").count(), 1, "one engine was started: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_saved_plan_hint_works_from_another_directory() {
    let rig = Rig::new().await;
    rig.model_file("m.bin", "serve");
    rig.fleet(&fault_model("m", "m.bin", &["n1"]));
    let plan = std::process::Command::new(cortex_e2e::cortex_bin())
        .args(["plan", "--fleet", "fleet", "--out", "p.json", "--config", "cortex.toml"])
        .current_dir(rig.dir.path())
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let out = text(&plan);
    let hint = out.lines().find_map(|l| l.split_once("run: ").map(|(_, c)| c.to_owned())).expect("a hint");
    let elsewhere = rig.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[0], "cortex", "{hint}");
    let apply = std::process::Command::new(cortex_e2e::cortex_bin())
        .args(&words[1..])
        .current_dir(&elsewhere)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(apply.status.code(), Some(0), "`{hint}` from {}: {}", elsewhere.display(), text(&apply));
    assert!(text(&apply).contains("Apply complete! Loaded 1"), "{}", text(&apply));
    assert_eq!(rig.neuron.loaded().await, ["m"]);
}

/// A pinned model whose load has failed twice in a row (so it is backing off), then fixed.
async fn backing_off_then_fixed() -> (Rig, Daemon) {
    let rig = Rig::new().await;
    rig.fleet(&fault_model("m", "m.bin", &["n1"]));
    let daemon = rig.serve().await;
    eventually("a second failure in a row", Duration::from_secs(60), async || {
        let status = daemon.status().await;
        (status["backing_off"][0]["failures"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    rig.model_file("m.bin", "serve");
    (rig, daemon)
}

/// The fleet reaches Synced, and the pass that healed it was an admin request.
async fn healed_by_an_admin_request(rig: &Rig, daemon: &Daemon) {
    let status = synced_with(daemon, &rig.neuron, "m", Duration::from_secs(30)).await;
    let healing = status["runs"].as_array().unwrap().iter().rev().find(|r| r["result"] == "applied").unwrap();
    assert_eq!(healing["trigger"], "admin_request", "{status:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_retries_at_once_whatever_the_backoff() {
    let (rig, daemon) = backing_off_then_fixed().await;
    let pid = daemon.process.child.id().to_string();
    std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    healed_by_an_admin_request(&rig, &daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn post_admin_reconcile_retries_at_once_whatever_the_backoff() {
    let (rig, daemon) = backing_off_then_fixed().await;
    let url = format!("http://127.0.0.1:{}/admin/reconcile", daemon.port);
    let client = reqwest::Client::new();
    let refused = client.post(&url).bearer_auth("not-the-key").send().await.unwrap();
    assert_eq!(refused.status(), 401, "the admin key is required");
    let answer = client.post(&url).bearer_auth(cortex_e2e::ADMIN_KEY).send().await.unwrap();
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.unwrap();
    assert_eq!((body["requested"].as_bool(), body["trigger"].as_str()), (Some(true), Some("admin_request")));
    healed_by_an_admin_request(&rig, &daemon).await;
}
