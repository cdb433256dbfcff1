//! The `cortex` command line as a contract: exit codes (Terraform's), diagnostics with
//! `path:line:col`, and saved plans that round-trip. Offline: plans run against snapshots.

use std::path::Path;
use std::process::{Command, Output};

fn cortex(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cortex")).args(args).current_dir(cwd).output().expect("cortex runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

const FLEET: &str = r#"[[neuron]]
name = "beast"
endpoint = "http://beast.internal:13131"

[[model]]
id = "coder"
harness = "llamacpp"
source = "coder.gguf"
vram_mb = 8000
min_devices = 1
pinned_on = ["beast"]
"#;

fn snapshot(models: &str) -> String {
    format!(
        r#"{{"format_version": 1, "observed_at_unix_ms": 1700000000000, "neurons": [{{"name": "beast", "reachable": true,
  "generation": 4, "boot_id": "b1", "harnesses": ["llamacpp"], "ram_total_mb": 64000, "ram_free_mb": 60000,
  "devices": [{{"index": 0, "name": "RTX 5090", "vram_total_mb": 32000, "vram_free_mb": 32000}}],
  "models": [{models}]}}]}}"#
    )
}

const LOADED: &str = r#"{"id": "coder", "harness": "llamacpp", "status": "loaded", "devices": [0], "vram_mb": 8000,
  "profile": {"harness": "llamacpp", "source": "coder.gguf", "args": []}}"#;

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("fleet")).expect("fleet dir");
    std::fs::write(dir.path().join("fleet/fleet.toml"), FLEET).expect("fleet file");
    std::fs::write(dir.path().join("empty.json"), snapshot("")).expect("snapshot");
    std::fs::write(dir.path().join("loaded.json"), snapshot(LOADED)).expect("snapshot");
    dir
}

#[test]
fn validate_exits_1_with_every_diagnostic_located() {
    let dir = workspace();
    std::fs::write(
        dir.path().join("fleet/more.toml"),
        "[[model]]\nid = \"coder\"\nharness = \"llamacpp\"\nsource = \"x.gguf\"\nvram = 1\n",
    )
    .expect("write");
    let output = cortex(&["validate"], dir.path());
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let out = text(&output);
    assert!(out.contains("fleet/more.toml:5:1: error: unknown key \"vram\""), "{out}");
    assert!(out.contains("fleet/more.toml:2:6: error: duplicate model id \"coder\""), "{out}");

    std::fs::remove_file(dir.path().join("fleet/more.toml")).expect("remove");
    let output = cortex(&["validate"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

#[test]
fn plan_exit_codes_follow_terraform() {
    let dir = workspace();
    let changes = cortex(&["plan", "--topology", "empty.json", "--detailed-exitcode"], dir.path());
    assert_eq!(changes.status.code(), Some(2), "{}", text(&changes));
    assert!(text(&changes).contains("Plan: 1 to load, 0 to reload, 0 to unload (0 evictions)."));

    let plain = cortex(&["plan", "--topology", "empty.json"], dir.path());
    assert_eq!(plain.status.code(), Some(0), "without --detailed-exitcode changes exit 0");

    let none = cortex(&["plan", "--topology", "loaded.json", "--detailed-exitcode"], dir.path());
    assert_eq!(none.status.code(), Some(0), "{}", text(&none));
    assert!(
        String::from_utf8_lossy(&none.stdout).starts_with("No changes. The fleet matches fleet/ @ "),
        "{}",
        text(&none)
    );

    let error = cortex(&["plan", "--topology", "missing.json", "--detailed-exitcode"], dir.path());
    assert_eq!(error.status.code(), Some(1));
    assert!(text(&error).contains("cannot read missing.json"), "{}", text(&error));
}

#[test]
fn a_saved_plan_round_trips_and_json_is_versioned() {
    let dir = workspace();
    let output = cortex(&["plan", "--topology", "empty.json", "--out", "plan.json", "--json"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["actions"][0]["kind"], "load");
    assert_eq!(json["actions"][0]["if_generation"], 4);

    let saved = std::fs::read_to_string(dir.path().join("plan.json")).expect("plan file written");
    let file = plans::plan::PlanFile::from_json(&saved).expect("the plan file parses");
    assert_eq!(file.plan.actions.len(), 1);
    assert_eq!(file.generations.get("beast"), Some(&4));
    assert_eq!(file.cortex_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(file.to_json(), saved, "writing it again gives the same bytes");
}
