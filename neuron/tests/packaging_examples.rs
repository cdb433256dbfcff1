//! The example neuron.toml files shipped in packaging/neuron (one per harness kind) are valid
//! configurations, and neuron.service gives the neuron time to drain and stop its engines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use neuron::Config;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// Parse an example as if installed, with its models_dir (which must exist) moved to `models`.
fn parse_example(path: &Path, models: &Path) -> Config {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line = "models_dir = \"/var/lib/cortex/models\"";
    assert!(text.contains(line), "{}: models_dir should be /var/lib/cortex/models", path.display());
    let text = text.replace(line, &format!("models_dir = {:?}", models.display().to_string()));
    Config::from_toml(&Path::new("/etc/cortex").join("neuron.toml"), &text)
        .unwrap_or_else(|e| panic!("{} is not a valid neuron.toml: {e}", path.display()))
}

/// `TimeoutStopSec=90s` in a unit file.
fn timeout_stop(unit: &str) -> Duration {
    let value = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("neuron.service sets TimeoutStopSec");
    let seconds = value.trim().strip_suffix('s').expect("TimeoutStopSec in seconds, like 90s");
    Duration::from_secs(seconds.parse().expect("a number of seconds"))
}

#[test]
fn every_example_parses_and_fits_the_unit_stop_timeout() {
    let models = tempfile::tempdir().expect("tempdir");
    let unit = std::fs::read_to_string(packaging().join("systemd/neuron.service")).expect("neuron.service");
    let stop_timeout = timeout_stop(&unit);
    let mut kinds = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(packaging().join("neuron"))
        .expect("packaging/neuron")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for path in &entries {
        let config = parse_example(path, models.path());
        assert_eq!(
            config.token_file.as_deref(),
            Some(Path::new("/etc/cortex/neuron.token")),
            "{}",
            path.display()
        );
        assert_eq!(config.log_dir, Path::new("/var/log/cortex/engines"), "{}", path.display());
        assert!(
            config.drain_timeout + config.stop_grace + Duration::from_secs(10) <= stop_timeout,
            "{}: drain_timeout + stop_grace + 10s must fit in neuron.service's TimeoutStopSec ({stop_timeout:?})",
            path.display()
        );
        kinds.extend(config.harnesses.values().map(|h| h.kind()));
    }
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds, ["command", "llamacpp", "mistralrs", "sim"], "one example per harness kind");
}

/// neuron-llamacpp.toml shows the `[listener]` table with the defaults docs/neuron.md states.
#[test]
fn the_llamacpp_example_states_the_listeners_defaults() {
    let models = tempfile::tempdir().expect("tempdir");
    let path = packaging().join("neuron/neuron-llamacpp.toml");
    let text = std::fs::read_to_string(&path).expect("neuron-llamacpp.toml");
    assert!(text.lines().any(|l| l == "[listener]"), "the example shows [listener]");
    let config = parse_example(&path, models.path());
    assert_eq!(config.listener, cortex_listener::Limits::default());
}
