//! Test support shared by the planner's integration tests: fleets from TOML text through the
//! real loader, and the fixed clock.
#![allow(dead_code, clippy::unwrap_used)]

use plans::fleet::Fleet;

/// The fixed "now" of every golden test.
pub const NOW: u64 = 1_700_000_000_000;

/// A fleet from one TOML file, through `plans::fleet::load` (fixtures must be valid).
pub fn fleet(toml: &str) -> Fleet {
    let load = plans::fleet::load(&[("fleet/fleet.toml".to_owned(), toml.to_owned())]);
    let errors: Vec<String> =
        load.diagnostics.iter().filter(|d| d.is_error()).map(ToString::to_string).collect();
    load.fleet.unwrap_or_else(|| panic!("fleet fixture does not load:\n{}", errors.join("\n")))
}
