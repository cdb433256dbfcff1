//! Test support shared by the planner's integration tests: fleets from TOML text through the
//! real loader, the fixed clock, and the golden tests' `check(fleet, topology, prune, text, json)`.
#![allow(dead_code, clippy::unwrap_used)]

use expect_test::Expect;
use plans::fleet::Fleet;
use plans::plan::{PlanOptions, Revision, plan, render_json, render_text};
use plans::topology::Topology;

/// The fixed "now" of every golden test.
pub const NOW: u64 = 1_700_000_000_000;

/// A fleet from one TOML file, through `plans::fleet::load` (fixtures must be valid).
pub fn fleet(toml: &str) -> Fleet {
    let load = plans::fleet::load(&[("fleet/fleet.toml".to_owned(), toml.to_owned())]);
    let errors: Vec<String> =
        load.diagnostics.iter().filter(|d| d.is_error()).map(ToString::to_string).collect();
    load.fleet.unwrap_or_else(|| panic!("fleet fixture does not load:\n{}", errors.join("\n")))
}

/// A fixed digest so that goldens do not depend on how the loader hashes files.
pub const DIGEST: &str = "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2";

pub fn revision() -> Revision {
    Revision { commit: Some("1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b".to_owned()), dirty: false }
}

/// The fleet (with the fixed digest) and the topology of a golden scenario.
pub fn inputs(fleet_toml: &str, topology_json: &str) -> (Fleet, Topology) {
    let mut fleet = fleet(fleet_toml);
    fleet.digest = DIGEST.to_owned();
    let topology = Topology::from_json(topology_json).unwrap();
    (fleet, topology)
}

/// Plan one scenario and check the text and JSON plans against their goldens.
pub fn check(fleet_toml: &str, topology_json: &str, prune: bool, expect_text: Expect, expect_json: Expect) {
    let (fleet, topology) = inputs(fleet_toml, topology_json);
    let options = PlanOptions { now_unix_ms: NOW, prune };
    let planned = plan(&fleet, &topology, &options);
    assert_eq!(planned, plan(&fleet, &topology, &options), "planning is deterministic");
    expect_text.assert_eq(&render_text(&planned, &topology, &fleet, &revision(), NOW));
    expect_json.assert_eq(&render_json(&planned, &revision()));
}
