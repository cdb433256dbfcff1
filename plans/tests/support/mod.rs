//! Test support shared by the planner's integration tests: fleets from TOML text, fixed
//! clock and revision.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use plans::fleet::{Eviction, Fleet, ModelSpec, NeuronSpec, Origin, Policy, Profile};

/// The fixed "now" of every golden test.
pub const NOW: u64 = 1_700_000_000_000;

/// A fleet from one TOML file, through the real loader. Until `fleet/load.rs` lands, a
/// minimal reader of the same format stands in (it does no validation).
pub fn fleet(toml: &str) -> Fleet {
    let load = plans::fleet::load(&[("fleet/fleet.toml".to_owned(), toml.to_owned())]);
    if let Some(fleet) = load.fleet {
        return fleet;
    }
    let stub = load.diagnostics.iter().any(|d| d.message.contains("being written"));
    assert!(stub, "fleet fixture does not load: {:?}", load.diagnostics);
    minimal_fleet(toml)
}

fn minimal_fleet(text: &str) -> Fleet {
    use sha2::Digest as _;
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    let mut policy = Policy::default();
    if let Some(p) = doc.get("policy") {
        if let Some(e) = p.get("eviction").and_then(|v| v.as_str()) {
            policy.eviction = if e == "priority" { Eviction::Priority } else { Eviction::Lru };
        }
        policy.prune = p.get("prune").and_then(|v| v.as_bool()).unwrap_or(false);
        policy.idle_unload_after_ms = p.get("idle_unload_after").and_then(|v| v.as_str()).map(duration_ms);
    }
    let strings = |v: Option<&toml_edit::Item>| -> Vec<String> {
        v.and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let labels = |v: Option<&toml_edit::Item>| -> BTreeMap<String, String> {
        v.and_then(|v| v.as_inline_table())
            .map(|t| t.iter().map(|(k, v)| (k.to_owned(), v.as_str().unwrap().to_owned())).collect())
            .unwrap_or_default()
    };
    let int = |t: &toml_edit::Table, key: &str| t.get(key).and_then(|v| v.as_integer());
    let mut neurons: Vec<NeuronSpec> = doc
        .get("neuron")
        .and_then(|v| v.as_array_of_tables())
        .map(|a| {
            a.iter()
                .map(|t| NeuronSpec {
                    name: t["name"].as_str().unwrap().to_owned(),
                    endpoint: t.get("endpoint").and_then(|v| v.as_str()).unwrap_or("").to_owned(),
                    labels: labels(t.get("labels")),
                    origin: Origin::default(),
                })
                .collect()
        })
        .unwrap_or_default();
    neurons.sort_by(|a, b| a.name.cmp(&b.name));
    let models = doc
        .get("model")
        .and_then(|v| v.as_array_of_tables())
        .map(|a| {
            a.iter()
                .map(|t| ModelSpec {
                    id: t["id"].as_str().unwrap().to_owned(),
                    aliases: strings(t.get("aliases")),
                    profile: Profile {
                        harness: t["harness"].as_str().unwrap().to_owned(),
                        source: t["source"].as_str().unwrap().to_owned(),
                        quant: t.get("quant").and_then(|v| v.as_str()).map(str::to_owned),
                        ctx_size: int(t, "ctx_size").map(|n| n as u32),
                        args: strings(t.get("args")),
                    },
                    vram_mb: int(t, "vram_mb").unwrap_or(0) as u64,
                    min_devices: int(t, "min_devices").unwrap_or(1) as u32,
                    ram_mb: int(t, "ram_mb").unwrap_or(0) as u64,
                    min_device_vram_mb: int(t, "min_device_vram_mb").unwrap_or(0) as u64,
                    pinned_on: strings(t.get("pinned_on")),
                    replicas: int(t, "replicas").unwrap_or(0) as u32,
                    priority: int(t, "priority").unwrap_or(50),
                    require_labels: labels(t.get("require_labels")),
                    origin: Origin::default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let hash = sha2::Sha256::digest(format!("fleet/fleet.toml\0{text}"));
    let digest = format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>());
    Fleet { policy, neurons, models, digest }
}

fn duration_ms(text: &str) -> u64 {
    let (number, unit) = text.split_at(text.len() - 1);
    let n: u64 = number.parse().unwrap();
    n * match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 86_400_000,
    }
}
