//! Never down because of desired state: a `cortex serve` that starts while its fleet directory
//! holds an invalid fleet (a broken commit, then a reboot) serves the last good fleet it kept on
//! disk and reports the invalid one as a condition; with none kept, it still starts (an empty
//! fleet) and says why. Real neuron and cortex processes.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::Path;
use std::time::Duration;

use cortex_e2e::{Daemon, Neuron, cortex_config, eventually, neuron_table, sim_model, write_atomic};

/// The test's cortex.toml with `state_dir` set (top-level keys come before the tables).
fn config_with_state(dir: &Path, state: &Path) -> (std::path::PathBuf, u16) {
    let (path, port) = cortex_config(dir);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("state_dir = {:?}\n{text}", state.display().to_string())).unwrap();
    (path, port)
}

async fn fleet_condition(daemon: &Daemon) -> serde_json::Value {
    let status = daemon.status().await;
    status["conditions"].as_array().unwrap().iter().find(|c| c["kind"] == "FleetValid").cloned().unwrap()
}

#[tokio::test]
async fn a_daemon_started_on_an_invalid_fleet_serves_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let neuron = Neuron::start_sim(dir.path(), "n1", &[24_000], 50).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let good = format!("{}{}", neuron_table(&neuron), sim_model("m", 8_000, &["n1"], "m.gguf"));
    write_atomic(&fleet.join("fleet.toml"), &good);
    let state = dir.path().join("state");
    let (config, port) = config_with_state(dir.path(), &state);

    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex-1.log")).await;
    eventually("m to be loaded", Duration::from_secs(30), async || {
        (neuron.loaded().await == ["m"]).then_some(())
    })
    .await;
    assert_eq!(daemon.chat("m").await.0, 200);
    drop(daemon);

    // A broken edit lands while cortex is down; it comes back.
    write_atomic(
        &fleet.join("fleet.toml"),
        &format!("{good}[[model]]\nid = \"broken\"\nvram_mb = \"lots\"\n"),
    );
    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex-2.log")).await;
    let (status, body) = daemon.chat("m").await;
    assert_eq!(status, 200, "the last good fleet is served: {body}");
    let condition = fleet_condition(&daemon).await;
    assert_eq!(condition["ok"], false, "{condition}");
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains("serving the last good fleet"), "{message}");
    let status = daemon.status().await;
    let diagnostics = status["fleet"]["diagnostics"].as_array().unwrap();
    assert!(
        diagnostics.iter().any(|d| d.to_string().contains("fleet.toml")),
        "the invalid fleet's diagnostics are reported: {diagnostics:?}"
    );

    // Fixed: the directory's own fleet comes into force again.
    write_atomic(&fleet.join("fleet.toml"), &good);
    eventually("the fleet directory's fleet to be in force", Duration::from_secs(20), async || {
        (fleet_condition(&daemon).await["ok"] == true).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_no_good_fleet_kept_it_starts_empty_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    write_atomic(&fleet.join("fleet.toml"), "[[model]]\nid = 7\n");
    let (config, port) = config_with_state(dir.path(), &dir.path().join("state"));
    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
    let (status, _) = daemon.chat("m").await;
    assert_eq!(status, 404, "nothing is served, but the API answers");
    let condition = fleet_condition(&daemon).await;
    assert_eq!(condition["ok"], false);
    assert!(condition["message"].as_str().unwrap().contains("an empty fleet"), "{condition}");
}
