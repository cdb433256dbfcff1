//! Golden tests of fleet loading: each case is a fixture of one or more files and the exact
//! diagnostics (or, for a valid fleet, a summary of what was loaded). `UPDATE_EXPECT=1` rewrites
//! the expectations after a deliberate change of output.

use expect_test::{Expect, expect};

use crate::fleet::load::load;
use crate::fleet::{Fleet, LoadFactor, ModelSpec, Routing};

/// Splits a fixture into files: a line `#- path` starts a file; text before any marker belongs
/// to `fleet.toml`.
pub(super) fn files(fixture: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in fixture.strip_prefix('\n').unwrap_or(fixture).split_inclusive('\n') {
        if let Some(path) = line.strip_prefix("#- ") {
            files.push((path.trim().to_owned(), String::new()));
        } else {
            if files.is_empty() {
                files.push(("fleet.toml".to_owned(), String::new()));
            }
            files.last_mut().expect("a file was pushed").1.push_str(line);
        }
    }
    files
}

pub(super) fn check(fixture: &str, expect: Expect) {
    let loaded = load(&files(fixture));
    let mut out = String::new();
    for diagnostic in &loaded.diagnostics {
        out.push_str(&format!("{diagnostic}\n"));
    }
    assert_eq!(loaded.fleet.is_some(), !loaded.has_errors());
    if let Some(fleet) = &loaded.fleet {
        out.push_str(&summary(fleet));
    }
    expect.assert_eq(&out);
}

/// A compact, stable rendering of a loaded fleet.
fn summary(fleet: &Fleet) -> String {
    let policy = &fleet.policy;
    let mut out = format!(
        "policy eviction={:?} reconcile={:?} prune={} idle_unload_after_ms={:?} source={:?}\n",
        policy.eviction, policy.reconcile, policy.prune, policy.idle_unload_after_ms, policy.source
    );
    for neuron in &fleet.neurons {
        let origin = &neuron.origin;
        let state = match neuron.state {
            crate::fleet::NeuronState::Active => String::new(),
            other => format!(" state={}", other.as_str()),
        };
        out.push_str(&format!(
            "neuron {} {} labels={:?}{state} at {}:{}:{}\n",
            neuron.name, neuron.endpoint, neuron.labels, origin.path, origin.line, origin.column
        ));
    }
    for model in &fleet.models {
        out.push_str(&model_summary(model));
    }
    for key in &fleet.keys {
        out.push_str(&key_summary(key));
    }
    out
}

fn key_summary(key: &crate::fleet::KeySpec) -> String {
    let origin = &key.origin;
    format!(
        "key {} sha256={}… models={:?} {:?} priority={} expires={:?} revoked={} operator={} at {}:{}:{}\n",
        key.name,
        &key.sha256[..8],
        key.models,
        key.limits,
        key.priority.describe(),
        key.expires_unix_ms,
        key.revoked,
        key.operator.as_str(),
        origin.path,
        origin.line,
        origin.column,
    )
}

fn model_summary(model: &ModelSpec) -> String {
    let origin = &model.origin;
    let fields: Vec<String> =
        model.profile.fields().into_iter().map(|(key, value)| format!("{key}={value}")).collect();
    format!(
        "model {} aliases={:?} at {}:{}:{}\n  {}\n  vram_mb={} min_devices={} ram_mb={} min_device_vram_mb={} \
         pinned_on={:?} replicas={} priority={} require_labels={:?}\n",
        model.id,
        model.aliases,
        origin.path,
        origin.line,
        origin.column,
        fields.join(" "),
        model.vram_mb,
        model.min_devices,
        model.ram_mb,
        model.min_device_vram_mb,
        model.pinned_on,
        model.replicas,
        model.priority,
        model.require_labels,
    )
}

#[test]
fn a_full_fleet_loads_with_every_key() {
    check(
        r#"
[policy]
eviction = "priority"
reconcile = "off"
prune = true
idle_unload_after = "1h30m"
source = "commit"

[[neuron]]
name = "small"
endpoint = "http://small.internal:13131"

[[neuron]]
name = "beast"
endpoint = "https://beast.internal:13131"
labels = { tier = "large" }

[[model]]
id = "Qwen/Qwen3-Coder-30B-A3B-Instruct"
aliases = ["coder"]
harness = "llamacpp"
source = "qwen3-coder-30b-a3b-q4_k_m.gguf"
quant = "Q4_K_M"
vram_mb = 19000
min_devices = 2
ram_mb = 0
min_device_vram_mb = 9000
ctx_size = 32768
args = ["--jinja"]
pinned_on = ["beast"]
replicas = 1
priority = 80
require_labels = { tier = "large" }
"#,
        expect![[r#"
            policy eviction=Priority reconcile=Off prune=true idle_unload_after_ms=Some(5400000) source=Commit
            neuron beast https://beast.internal:13131 labels={"tier": "large"} at fleet.toml:12:1
            neuron small http://small.internal:13131 labels={} at fleet.toml:8:1
            model Qwen/Qwen3-Coder-30B-A3B-Instruct aliases=["coder"] at fleet.toml:17:1
              harness="llamacpp" source="qwen3-coder-30b-a3b-q4_k_m.gguf" quant="Q4_K_M" ctx_size=32768 args=["--jinja"]
              vram_mb=19000 min_devices=2 ram_mb=0 min_device_vram_mb=9000 pinned_on=["beast"] replicas=1 priority=80 require_labels={"tier": "large"}
        "#]],
    );
}

#[test]
fn defaults_fill_what_is_left_out() {
    check(
        r#"
[[model]]
id = "gpu"
harness = "llamacpp"
source = "gpu.gguf"
vram_mb = 4000

[[model]]
id = "cpu"
harness = "llamacpp"
source = "models/cpu.gguf"
ram_mb = 600
"#,
        expect![[r#"
            policy eviction=Lru reconcile=Auto prune=false idle_unload_after_ms=None source=Worktree
            model gpu aliases=[] at fleet.toml:1:1
              harness="llamacpp" source="gpu.gguf" quant=(unset) ctx_size=(unset) args=[]
              vram_mb=4000 min_devices=1 ram_mb=0 min_device_vram_mb=0 pinned_on=[] replicas=0 priority=50 require_labels={}
            model cpu aliases=[] at fleet.toml:7:1
              harness="llamacpp" source="models/cpu.gguf" quant=(unset) ctx_size=(unset) args=[]
              vram_mb=0 min_devices=0 ram_mb=600 min_device_vram_mb=0 pinned_on=[] replicas=0 priority=50 require_labels={}
        "#]],
    );
}

#[test]
fn files_merge_in_path_order_whatever_order_they_come_in() {
    check(
        r#"
#- models/b.toml
[[model]]
id = "b"
harness = "llamacpp"
source = "b.gguf"
pinned_on = ["zeta"]
#- models/a.toml
[[model]]
id = "a"
harness = "llamacpp"
source = "a.gguf"
#- neurons.toml
[[neuron]]
name = "zeta"
endpoint = "http://zeta:13131"

[[neuron]]
name = "alpha"
endpoint = "http://alpha:13131"
#- policy.toml
[policy]
prune = true
"#,
        expect![[r#"
            policy eviction=Lru reconcile=Auto prune=true idle_unload_after_ms=None source=Worktree
            neuron alpha http://alpha:13131 labels={} at neurons.toml:5:1
            neuron zeta http://zeta:13131 labels={} at neurons.toml:1:1
            model a aliases=[] at models/a.toml:1:1
              harness="llamacpp" source="a.gguf" quant=(unset) ctx_size=(unset) args=[]
              vram_mb=0 min_devices=0 ram_mb=0 min_device_vram_mb=0 pinned_on=[] replicas=0 priority=50 require_labels={}
            model b aliases=[] at models/b.toml:1:1
              harness="llamacpp" source="b.gguf" quant=(unset) ctx_size=(unset) args=[]
              vram_mb=0 min_devices=0 ram_mb=0 min_device_vram_mb=0 pinned_on=["zeta"] replicas=0 priority=50 require_labels={}
        "#]],
    );
}

#[test]
fn inline_tables_mean_the_same_as_headers() {
    check(
        r#"
policy = { eviction = "lru" }
neuron = [{ name = "a", endpoint = "http://a:1" }]
model = [{ id = "m", harness = "h", source = "m.gguf" }, 3]
"#,
        expect![[r#"
            fleet.toml:3:58: error: model[1] must be a table, found integer
        "#]],
    );
}

#[test]
fn syntax_errors_are_reported_for_each_file_and_other_files_still_checked() {
    check(
        r#"
#- a.toml
[[model]
id = "a"
#- b.toml
[[neuron]]
name = "x"
name = "y"
#- c.toml
[[neuron]]
nam = "x"
endpoint = "http://x:1"
"#,
        expect![[r#"
            a.toml:1:9: error: invalid TOML: unclosed array table, expected `]`
            b.toml:3:1: error: invalid TOML: duplicate key
            c.toml:1:1: error: missing required key "name" in [[neuron]]
            c.toml:2:1: error: unknown key "nam" in [[neuron]]; expected one of: name, endpoint, labels, state
        "#]],
    );
}

#[test]
fn unknown_tables_and_keys_anywhere() {
    check(
        r#"
version = 2

[models]
id = "x"

[policy]
evict = "lru"

[[neuron]]
name = "a"
endpoint = "http://a:1"
tags = { x = "y" }

[[model]]
id = "m"
harness = "llamacpp"
source = "m.gguf"
vram = 1000
"#,
        expect![[r#"
            fleet.toml:1:1: error: unknown top-level key "version"; expected one of: [policy], [[neuron]], [[model]], [[key]]
            fleet.toml:3:2: error: unknown top-level table "models"; expected one of: [policy], [[neuron]], [[model]], [[key]]
            fleet.toml:7:1: error: unknown key "evict" in [policy]; expected one of: eviction, reconcile, prune, idle_unload_after, source, min_residency, max_wait, max_concurrency, queue_length, queue_timeout, routing, affinity_load_factor
            fleet.toml:12:1: error: unknown key "tags" in [[neuron]]; expected one of: name, endpoint, labels, state
            fleet.toml:18:1: error: unknown key "vram" in [[model]]; expected one of: id, aliases, harness, source, quant, vram_mb, min_devices, ram_mb, min_device_vram_mb, ctx_size, args, pinned_on, replicas, priority, require_labels, min_residency, max_wait, max_concurrency, queue_length, queue_timeout, routing, max_output_tokens
        "#]],
    );
}

#[test]
fn tables_written_the_wrong_way() {
    check(
        r#"
neuron = "a"

[[policy]]
prune = true

[model]
id = "m"
"#,
        expect![[r#"
            fleet.toml:1:1: error: neuron must be an array of tables written [[neuron]], found string
            fleet.toml:3:3: error: policy must be a single table written [policy], found array of tables
            fleet.toml:6:2: error: model must be an array of tables written [[model]], found table
        "#]],
    );
}

#[test]
fn policy_values_must_be_among_the_choices() {
    check(
        r#"
[policy]
eviction = "fifo"
reconcile = true
prune = "yes"
idle_unload_after = "1.5h"
source = "head"
"#,
        expect![[r#"
            fleet.toml:2:12: error: eviction must be "lru" or "priority", found "fifo"
            fleet.toml:3:13: error: reconcile must be "auto" or "off", found boolean
            fleet.toml:4:9: error: prune must be true or false, found string
            fleet.toml:5:21: error: idle_unload_after must be a duration like "90s", "30m" or "1h30m" (units ms, s, m, h, d), found "1.5h"
            fleet.toml:6:10: error: source must be "worktree" or "commit", found "head"
        "#]],
    );
}

#[test]
fn routing_settings_are_read_and_resolved() {
    let fixture = r#"
[policy]
routing = "least_busy"
affinity_load_factor = 1.5

[[model]]
id = "a"
harness = "sim"
source = "a"
routing = "affinity"

[[model]]
id = "b"
harness = "sim"
source = "b"
"#;
    let fleet = load(&files(fixture)).fleet.expect("valid");
    assert_eq!(fleet.policy.affinity_load_factor, LoadFactor(1500));
    let routing: Vec<Routing> = fleet.models.iter().map(|m| m.contention(&fleet.policy).routing()).collect();
    assert_eq!(routing, [Routing::Affinity, Routing::LeastBusy]);
    let defaults = load(&files("[policy]\nprune = true\n")).fleet.expect("valid");
    assert_eq!(defaults.policy.affinity_load_factor, LoadFactor(1250));
    assert_eq!(defaults.policy.contention.routing(), Routing::Affinity);
    let integer = load(&files("[policy]\naffinity_load_factor = 2\n")).fleet.expect("valid");
    assert_eq!(integer.policy.affinity_load_factor.as_f64(), 2.0);
}

#[test]
fn routing_settings_must_be_valid() {
    check(
        r#"
[policy]
routing = "round_robin"
affinity_load_factor = 0.5

[[model]]
id = "m"
harness = "sim"
source = "m"
routing = 1
"#,
        expect![[r#"
            fleet.toml:2:11: error: routing must be "affinity" or "least_busy", found "round_robin"
            fleet.toml:3:24: error: affinity_load_factor must be a number from 1 to 100, like 1.25, found 0.5
            fleet.toml:9:11: error: routing must be "affinity" or "least_busy", found integer
        "#]],
    );
    for (value, found) in
        [("\"1.25\"", "string"), ("nan", "NaN"), ("inf", "inf"), ("101", "101"), ("-2", "-2")]
    {
        let loaded = load(&files(&format!("[policy]\naffinity_load_factor = {value}\n")));
        let message = loaded.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        assert_eq!(
            message,
            format!(
                "fleet.toml:2:24: error: affinity_load_factor must be a number from 1 to 100, like 1.25, found {found}"
            ),
            "{value}"
        );
        assert!(loaded.fleet.is_none(), "{value}");
    }
}

#[test]
fn durations_must_be_positive_strings() {
    check(
        r#"
#- a.toml
[policy]
idle_unload_after = "0s"
#- b.toml
[policy]
idle_unload_after = 30
"#,
        expect![[r#"
            a.toml:2:21: error: idle_unload_after must be longer than 0; leave it out to keep idle models loaded
            b.toml:1:1: error: [policy] is already defined at a.toml:1:1; define it in one file only
            b.toml:2:21: error: idle_unload_after must be a string, found integer
        "#]],
    );
}

#[test]
fn neuron_state_is_active_cordoned_or_draining() {
    check(
        r#"
[[neuron]]
name = "beast"
endpoint = "http://beast:13131"
state = "draining"

[[neuron]]
name = "quad"
endpoint = "http://quad:13131"
state = "cordoned"
"#,
        expect![[r#"
            policy eviction=Lru reconcile=Auto prune=false idle_unload_after_ms=None source=Worktree
            neuron beast http://beast:13131 labels={} state=draining at fleet.toml:1:1
            neuron quad http://quad:13131 labels={} state=cordoned at fleet.toml:6:1
        "#]],
    );
    check(
        r#"
[[neuron]]
name = "tiny"
endpoint = "http://tiny:13131"
state = "maintenance"

[[neuron]]
name = "old"
endpoint = "http://old:13131"
state = true
"#,
        expect![[r#"
            fleet.toml:4:9: error: state must be "active", "cordoned" or "draining", found "maintenance"
            fleet.toml:9:9: error: state must be "active", "cordoned" or "draining", found boolean
        "#]],
    );
}

#[test]
fn policy_in_two_files_is_an_error_at_the_second() {
    check(
        r#"
#- z.toml
[policy]
prune = true
#- a.toml
# the policy of this fleet
[policy]
prune = false
"#,
        expect![[r#"
            z.toml:1:1: error: [policy] is already defined at a.toml:2:1; define it in one file only
        "#]],
    );
}

#[test]
fn required_keys_and_empty_names() {
    check(
        r#"
[[neuron]]
endpoint = "http://a:1"

[[neuron]]
name = ""
endpoint = "http://b:1"

[[model]]
aliases = ["a b", ""]

[[model]]
id = "m"
harness = ""
source = "m.gguf"
quant = ""
"#,
        expect![[r#"
            fleet.toml:1:1: error: missing required key "name" in [[neuron]]
            fleet.toml:5:8: error: neuron name must not be empty
            fleet.toml:8:1: error: missing required key "harness" in [[model]]
            fleet.toml:8:1: error: missing required key "id" in [[model]]
            fleet.toml:8:1: error: missing required key "source" in [[model]]
            fleet.toml:9:12: error: alias must not contain whitespace or control characters, found "a b"
            fleet.toml:9:19: error: alias must not be empty
            fleet.toml:13:11: error: harness must not be empty
            fleet.toml:15:9: error: quant must not be empty
        "#]],
    );
}

#[test]
fn wrong_types_say_what_was_expected_and_found() {
    check(
        r#"
[[neuron]]
name = 7
endpoint = "http://a:1"
labels = ["tier"]

[[model]]
id = "m"
harness = "llamacpp"
source = "m.gguf"
vram_mb = "19000"
min_devices = 1.5
ram_mb = -1
ctx_size = 0
args = "--jinja"
replicas = 5000000000
priority = "high"
require_labels = { tier = 1 }
pinned_on = ["a", 2]
aliases = "coder"
"#,
        expect![[r#"
            fleet.toml:2:8: error: name must be a string, found integer
            fleet.toml:4:10: error: labels must be a table of strings like { tier = "large" }, found array
            fleet.toml:10:11: error: vram_mb must be a non-negative integer, found string
            fleet.toml:11:15: error: min_devices must be a non-negative integer, found float
            fleet.toml:12:10: error: ram_mb must be a non-negative integer, found -1
            fleet.toml:13:12: error: ctx_size must be a positive integer, found 0; leave it out for the engine's default
            fleet.toml:14:8: error: args must be an array of strings, found string
            fleet.toml:15:12: error: replicas must be at most 4294967295, found 5000000000
            fleet.toml:16:12: error: priority must be an integer, found string
            fleet.toml:17:27: error: require_labels.tier must be a string, found integer
            fleet.toml:18:19: error: pinned_on[1] must be a string, found integer
            fleet.toml:19:11: error: aliases must be an array of strings, found string
        "#]],
    );
}

#[test]
fn endpoints_must_be_http_urls_with_a_host() {
    check(
        r#"
[[neuron]]
name = "a"
endpoint = "beast:13131"

[[neuron]]
name = "b"
endpoint = "http://"

[[neuron]]
name = "c"
endpoint = "ftp://c:1"

[[neuron]]
name = "d"
endpoint = "http://d:1/ x"
"#,
        expect![[r#"
            fleet.toml:3:12: error: endpoint must be an http:// or https:// URL with a host, like "http://beast.internal:13131", found "beast:13131"
            fleet.toml:7:12: error: endpoint must be an http:// or https:// URL with a host, like "http://beast.internal:13131", found "http://"
            fleet.toml:11:12: error: endpoint must be an http:// or https:// URL with a host, like "http://beast.internal:13131", found "ftp://c:1"
            fleet.toml:15:12: error: endpoint must be an http:// or https:// URL with a host, like "http://beast.internal:13131", found "http://d:1/ x"
        "#]],
    );
}

#[test]
fn duplicate_neuron_names_across_files() {
    check(
        r#"
#- a.toml
[[neuron]]
name = "beast"
endpoint = "http://beast:13131"
#- b.toml
[[neuron]]
name = "beast"
endpoint = "http://beast2:13131"
"#,
        expect![[r#"
            b.toml:2:8: error: duplicate neuron name "beast"; first declared at a.toml:2:8
        "#]],
    );
}

#[test]
fn ids_and_aliases_are_all_unique() {
    check(
        r#"
#- a.toml
[[model]]
id = "qwen"
aliases = ["coder", "coder", "qwen"]
harness = "llamacpp"
source = "q.gguf"
#- b.toml
[[model]]
id = "qwen"
harness = "llamacpp"
source = "q2.gguf"

[[model]]
id = "coder"
aliases = ["q"]
harness = "llamacpp"
source = "c.gguf"

[[model]]
id = "other"
aliases = ["q"]
harness = "llamacpp"
source = "o.gguf"
"#,
        expect![[r#"
            a.toml:3:21: error: alias "coder" is listed twice
            a.toml:3:30: error: alias "qwen" is the model's own id
            b.toml:2:6: error: duplicate model id "qwen"; first declared at a.toml:2:6
            b.toml:7:6: error: model id "coder" is already an alias of model "qwen" at a.toml:3:12; ids and aliases must all be unique
            b.toml:14:12: error: alias "q" is already an alias of model "coder" at b.toml:8:12; ids and aliases must all be unique
        "#]],
    );
}

#[test]
fn pins_must_name_declared_neurons_once() {
    check(
        r#"
[[neuron]]
name = "beast"
endpoint = "http://beast:13131"

[[neuron]]
name = "small"
endpoint = "http://small:13131"

[[model]]
id = "m"
harness = "llamacpp"
source = "m.gguf"
pinned_on = ["beast", "bast", "beast"]
"#,
        expect![[r#"
            fleet.toml:13:23: error: unknown neuron "bast" in pinned_on; known neurons: "beast", "small"
            fleet.toml:13:31: error: pinned_on names neuron "beast" twice
        "#]],
    );
}

#[test]
fn pins_without_any_neuron() {
    check(
        r#"
[[model]]
id = "m"
harness = "llamacpp"
source = "m.gguf"
pinned_on = ["local"]
"#,
        expect![[r#"
            fleet.toml:5:14: error: unknown neuron "local" in pinned_on; no neurons are declared
        "#]],
    );
}

#[test]
fn sources_stay_inside_the_models_dir() {
    check(
        r#"
[[model]]
id = "a"
harness = "llamacpp"
source = "/models/a.gguf"

[[model]]
id = "b"
harness = "llamacpp"
source = "models/../../b.gguf"

[[model]]
id = "c"
harness = "llamacpp"
source = "C:\\models\\c.gguf"

[[model]]
id = "d"
harness = "llamacpp"
source = ""

[[model]]
id = "e"
harness = "llamacpp"
source = "..hidden/e.gguf"
"#,
        expect![[r#"
            fleet.toml:4:10: error: source must be a path relative to the neuron's models_dir, found absolute path "/models/a.gguf"
            fleet.toml:9:10: error: source must stay inside the neuron's models_dir, found ".." in "models/../../b.gguf"
            fleet.toml:14:10: error: source must be a path relative to the neuron's models_dir, found absolute path "C:\\models\\c.gguf"
            fleet.toml:19:10: error: source must not be empty
        "#]],
    );
}

#[test]
fn memory_and_devices_must_agree() {
    check(
        r#"
[[model]]
id = "gpu-without-vram"
harness = "llamacpp"
source = "a.gguf"
min_devices = 2

[[model]]
id = "cpu-with-vram"
harness = "llamacpp"
source = "b.gguf"
vram_mb = 1000
min_devices = 0

[[model]]
id = "cpu-with-floor"
harness = "llamacpp"
source = "c.gguf"
min_device_vram_mb = 1000

[[model]]
id = "floor-over-total"
harness = "llamacpp"
source = "d.gguf"
vram_mb = 19000
min_devices = 2
min_device_vram_mb = 10000
"#,
        expect![[r#"
            fleet.toml:5:15: error: min_devices = 2 needs vram_mb > 0, the accelerator memory the model needs; set vram_mb, or min_devices = 0 for a CPU model
            fleet.toml:11:11: error: vram_mb must be 0 for a CPU model (min_devices = 0), found 1000
            fleet.toml:18:22: error: min_device_vram_mb must be 0 for a CPU model (min_devices = 0), found 1000
            fleet.toml:26:22: error: min_device_vram_mb = 10000 on each of min_devices = 2 needs 20000 MB, more than vram_mb = 19000
        "#]],
    );
}

#[test]
fn replicas_and_labels() {
    check(
        r#"
[[neuron]]
name = "a"
endpoint = "http://a:1"
labels = { tier = "large" }

[[neuron]]
name = "b"
endpoint = "http://b:1"

[[model]]
id = "too-many"
harness = "llamacpp"
source = "m.gguf"
replicas = 3

[[model]]
id = "nowhere"
harness = "llamacpp"
source = "m.gguf"
require_labels = { tier = "huge" }

[[model]]
id = "short"
harness = "llamacpp"
source = "m.gguf"
replicas = 2
require_labels = { tier = "large" }

[[model]]
id = "pinned-elsewhere"
harness = "llamacpp"
source = "m.gguf"
pinned_on = ["b"]
require_labels = { tier = "large" }
"#,
        expect![[r#"
            fleet.toml:14:12: error: replicas = 3 but only 2 neurons are declared
            fleet.toml:20:18: warning: no declared neuron has require_labels tier = "huge", so model "nowhere" cannot be loaded anywhere
            fleet.toml:26:12: warning: replicas = 2 but only 1 declared neuron has require_labels tier = "large"
            fleet.toml:33:14: error: model "pinned-elsewhere" is pinned on neuron "b", which lacks require_labels tier = "large"
        "#]],
    );
}

#[test]
fn warnings_alone_keep_the_fleet() {
    check(
        r#"
#- empty.toml
# nothing here yet
#- fleet.toml
[[model]]
id = "m"
harness = "llamacpp"
source = "m.gguf"
require_labels = { gpu = "ada" }
"#,
        expect![[r#"
            empty.toml:1:1: warning: this file declares nothing; expected any of: [policy], [[neuron]], [[model]], [[key]]
            fleet.toml:5:18: warning: no declared neuron has require_labels gpu = "ada", so model "m" cannot be loaded anywhere
            policy eviction=Lru reconcile=Auto prune=false idle_unload_after_ms=None source=Worktree
            model m aliases=[] at fleet.toml:1:1
              harness="llamacpp" source="m.gguf" quant=(unset) ctx_size=(unset) args=[]
              vram_mb=0 min_devices=0 ram_mb=0 min_device_vram_mb=0 pinned_on=[] replicas=0 priority=50 require_labels={"gpu": "ada"}
        "#]],
    );
}

#[test]
fn no_files_is_an_empty_fleet() {
    check(
        "",
        expect![[r#"
            policy eviction=Lru reconcile=Auto prune=false idle_unload_after_ms=None source=Worktree
        "#]],
    );
}

#[test]
fn the_digest_covers_paths_and_texts_in_path_order() {
    let a = ("a.toml".to_owned(), "[policy]\n".to_owned());
    let b = ("b.toml".to_owned(), "".to_owned());
    let digest = |files: &[(String, String)]| load(files).fleet.expect("valid fleet").digest;
    let forward = digest(&[a.clone(), b.clone()]);
    assert_eq!(forward, digest(&[b.clone(), a.clone()]));
    // sha256 of "a.toml\0[policy]\n\0b.toml\0\0", computed independently.
    expect!["sha256:9663b72ad4f5663ac06110f6e48eab2d53ef54ae0345ad6e2a04a6b59a4f62de"].assert_eq(&forward);
    let renamed = ("c.toml".to_owned(), "".to_owned());
    assert_ne!(forward, digest(&[a.clone(), renamed]));
    // However the directory is named, the same files have the same digest.
    let under =
        |dir: &str| digest(&[(format!("{dir}a.toml"), a.1.clone()), (format!("{dir}b.toml"), b.1.clone())]);
    assert_eq!(under("fleet/"), forward);
    assert_eq!(under("/srv/cortex/fleet/"), forward);
    let nested = |dir: &str| {
        digest(&[(format!("{dir}a.toml"), a.1.clone()), (format!("{dir}sub/b.toml"), String::new())])
    };
    assert_eq!(nested("fleet/"), nested("/abs/fleet/"));
    assert_ne!(nested("fleet/"), forward, "a file moved into a subfolder is a change");
}

#[test]
fn the_embedded_default_fleet_loads_without_any_diagnostic() {
    let files = [("fleet/fleet.toml".to_owned(), include_str!("../../../../fleet/fleet.toml").to_owned())];
    let loaded = load(&files);
    let rendered: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(rendered, Vec::<String>::new());
    let fleet = loaded.fleet.expect("the default fleet is valid");
    let model = fleet.model("gemma").expect("gemma is declared with alias gemma");
    assert_eq!(model.id, "gemma-3-270m");
    assert!(model.is_cpu());
    assert_eq!(model.pinned_on, ["local"]);
    assert_eq!(fleet.neuron("local").map(|neuron| neuron.endpoint.as_str()), Some("http://127.0.0.1:13131"));
}

#[test]
fn contention_keys_default_in_policy_and_override_per_model() {
    let fixture = r#"
[policy]
min_residency = "30s"
max_wait = "20s"
queue_length = 64
queue_timeout = "2m"

[[model]]
id = "a"
harness = "sim"
source = "a"
max_concurrency = 4
max_wait = "0s"

[[model]]
id = "b"
harness = "sim"
source = "b"
"#;
    let loaded = load(&files(fixture));
    let fleet = loaded.fleet.expect("valid");
    let resolved: Vec<String> =
        fleet.models.iter().map(|m| format!("{} {:?}", m.id, m.contention(&fleet.policy))).collect();
    expect![[r#"
        a Contention { min_residency_ms: Some(30000), max_wait_ms: Some(0), max_concurrency: Some(4), queue_length: Some(64), queue_timeout_ms: Some(120000), routing: None }
        b Contention { min_residency_ms: Some(30000), max_wait_ms: Some(20000), max_concurrency: None, queue_length: Some(64), queue_timeout_ms: Some(120000), routing: None }"#]].assert_eq(&resolved.join("\n"));
    check(
        r#"
[policy]
min_residency = "soon"
queue_length = 0

[[model]]
id = "a"
harness = "sim"
source = "a"
max_concurrency = -1
queue_timeout = "0s"
"#,
        expect![[r#"
            fleet.toml:2:17: error: min_residency must be a duration like "500ms", "10s" or "5m" (units ms, s, m, h, d), found "soon"
            fleet.toml:3:16: error: queue_length must be at least 1; leave it out for the default
            fleet.toml:9:19: error: max_concurrency must be a non-negative integer, found -1
            fleet.toml:10:17: error: queue_timeout must be longer than 0
        "#]],
    );
}

#[test]
fn max_output_tokens_is_an_optional_positive_cap() {
    let loaded = load(&files(
        r#"
[[neuron]]
name = "a"
endpoint = "http://a:13131"

[[model]]
id = "capped"
harness = "llamacpp"
source = "a.gguf"
max_output_tokens = 512

[[model]]
id = "free"
harness = "llamacpp"
source = "b.gguf"
"#,
    ));
    let fleet = loaded.fleet.expect("valid fleet");
    let caps: Vec<_> = fleet.models.iter().map(|m| (m.id.as_str(), m.max_output_tokens)).collect();
    assert_eq!(caps, [("capped", Some(512)), ("free", None)]);
    check(
        r#"
[[neuron]]
name = "a"
endpoint = "http://a:13131"

[[model]]
id = "m"
harness = "llamacpp"
source = "a.gguf"
max_output_tokens = 0

[[model]]
id = "n"
harness = "llamacpp"
source = "b.gguf"
max_output_tokens = "lots"
"#,
        expect![[r#"
            fleet.toml:9:21: error: max_output_tokens must be a positive integer, found 0; leave it out for no cap
            fleet.toml:15:21: error: max_output_tokens must be a non-negative integer, found string
        "#]],
    );
}
