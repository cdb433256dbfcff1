//! Saved plan files: round trip, version check, and the staleness check naming what changed.
#![allow(clippy::unwrap_used)]

mod support;

use expect_test::expect;
use plans::plan::{PlanFile, PlanOptions, Revision, plan};
use plans::topology::{DeviceStatus, NeuronStatus, Topology};
use support::NOW;

fn topology(generation: u64, boot_id: &str) -> Topology {
    let beast = NeuronStatus {
        name: "beast".to_owned(),
        reachable: true,
        generation,
        boot_id: boot_id.to_owned(),
        devices: vec![DeviceStatus {
            index: 0,
            name: "RTX 4090".to_owned(),
            vram_total_mb: 24000,
            vram_free_mb: 24000,
            ..DeviceStatus::default()
        }],
        ram_total_mb: 64000,
        ram_free_mb: 60000,
        harnesses: vec!["llamacpp".to_owned()],
        ..NeuronStatus::default()
    };
    Topology::new(NOW - 1000, vec![beast])
}

#[test]
fn saved_plans_round_trip_and_say_what_went_stale() {
    let fleet = support::fleet(
        r#"
[[neuron]]
name = "beast"
endpoint = "http://beast:13131"

[[model]]
id = "m"
harness = "llamacpp"
source = "m.gguf"
vram_mb = 4000
min_devices = 1
pinned_on = ["beast"]
"#,
    );
    let options = PlanOptions { now_unix_ms: NOW, prune: false };
    let observed = topology(7, "boot-a");
    let planned = plan(&fleet, &observed, &options);
    assert_eq!(planned.actions.len(), 1);
    let file = PlanFile::new(planned, &observed, Revision::default(), options, NOW);
    let again = PlanFile::from_json(&file.to_json()).unwrap();
    assert_eq!(again, file);
    assert!(file.staleness(&fleet.digest, &observed).is_empty());

    let changed = file.staleness("sha256:ffffffffffffffff", &topology(8, "boot-a"));
    let restarted = file.staleness(&fleet.digest, &topology(1, "boot-b"));
    expect![[r#"
        the fleet changed: digest c16edc7118be is now ffffffffffff
        neuron beast changed: generation 7 is now 8 (models were loaded or unloaded)
        neuron beast restarted (boot id "boot-a" is now "boot-b")"#]]
    .assert_eq(&format!("{}\n{}", changed.join("\n"), restarted.join("\n")));

    let newer = file.to_json().replacen("\"format_version\": 1", "\"format_version\": 2", 1);
    expect!["plan file has format_version 2; this cortex reads format_version 1"]
        .assert_eq(&PlanFile::from_json(&newer).unwrap_err().to_string());
}
