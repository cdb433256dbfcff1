//! Golden tests of the planner: one scenario each, fleet as TOML text and topology as a JSON
//! snapshot, checked against the rendered text plan and the JSON plan (expect-test; refresh
//! with `UPDATE_EXPECT=1 cargo test -p plans --test golden` and review the diff).
#![allow(clippy::unwrap_used)]

mod support;

use expect_test::expect;
use plans::plan::{PlanOptions, place_one, place_one_with, plan};
use support::{NOW, check, inputs};

const BEAST: &str = r#"
[[neuron]]
name = "beast"
endpoint = "http://beast.internal:13131"
"#;

const CODER: &str = r#"
[[model]]
id = "Qwen/Qwen3-Coder-30B"
aliases = ["coder"]
harness = "llamacpp"
source = "qwen3-coder-30b.gguf"
quant = "Q4_K_M"
ctx_size = 32768
vram_mb = 19000
min_devices = 2
min_device_vram_mb = 9000
pinned_on = ["beast"]
"#;

/// Three on-demand models sharing beast's single 24 GB GPU (2 GB free), used least recently in
/// the order chat, embed, draft, with priorities 90, 10, 50.
const CROWDED: &str = r#"
[[model]]
id = "chat"
harness = "llamacpp"
source = "chat.gguf"
vram_mb = 8000
priority = 90

[[model]]
id = "embed"
harness = "llamacpp"
source = "embed.gguf"
vram_mb = 7000
priority = 10

[[model]]
id = "draft"
harness = "llamacpp"
source = "draft.gguf"
vram_mb = 7000
priority = 50
"#;

const CROWDED_TOPOLOGY: &str = r#"{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [
  {"name": "beast", "reachable": true, "generation": 12, "boot_id": "b1",
   "devices": [{"index": 0, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": 2000}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"],
   "models": [
     {"id": "draft", "harness": "llamacpp", "status": "loaded", "devices": [0], "vram_mb": 7000,
      "last_used_unix_ms": 1699999940000, "in_flight": 1,
      "profile": {"harness": "llamacpp", "source": "draft.gguf", "args": []}},
     {"id": "embed", "harness": "llamacpp", "status": "loaded", "devices": [0], "vram_mb": 7000,
      "last_used_unix_ms": 1699999400000, "in_flight": 0,
      "profile": {"harness": "llamacpp", "source": "embed.gguf", "args": []}},
     {"id": "chat", "harness": "llamacpp", "status": "loaded", "devices": [0], "vram_mb": 8000,
      "last_used_unix_ms": 1699989200000, "in_flight": 0,
      "profile": {"harness": "llamacpp", "source": "chat.gguf", "args": []}}]}]}"#;

const PINNED_BIG: &str = r#"
[[model]]
id = "big"
harness = "llamacpp"
source = "big.gguf"
vram_mb = 9000
pinned_on = ["beast"]
"#;

#[test]
fn empty_fleet() {
    check(
        "",
        r#"{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": []}"#,
        false,
        expect![[r#"
            No changes. The fleet matches fleet/ @ 1a2b3c4.
        "#]],
        expect![[r#"
            {
              "format_version": 1,
              "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
              "revision": {
                "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "dirty": false
              },
              "summary": {
                "load": 0,
                "reload": 0,
                "unload": 0,
                "evictions": 0
              },
              "actions": [],
              "infeasible": [],
              "drift": []
            }
        "#]],
    );
}

#[test]
fn pin_loads_on_two_devices() {
    check(
        &format!("{BEAST}{CODER}"),
        r#"{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [
  {"name": "beast", "reachable": true, "generation": 7, "boot_id": "b1",
   "devices": [{"index": 0, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": 24000},
               {"index": 1, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": 20000}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"], "models": []}]}"#,
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 1 model, 1 neuron
            Topology: observed 12s ago, 1 neuron

            cortex will perform the following actions, shown with these symbols:
              + load

              # a1: Qwen/Qwen3-Coder-30B on beast will be loaded
              + load Qwen/Qwen3-Coder-30B on beast
                  # (because the fleet pins it on this neuron)
                  devices: GPU0, GPU1
                  vram:    GPU0 24000 → 14500 MB free, GPU1 20000 → 10500 MB free
                  profile: harness = "llamacpp", source = "qwen3-coder-30b.gguf", quant = "Q4_K_M", ctx_size = 32768

            Plan: 1 to load, 0 to reload, 0 to unload (0 evictions).
        "#]],
        expect![[r#"
            {
              "format_version": 1,
              "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
              "revision": {
                "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "dirty": false
              },
              "summary": {
                "load": 1,
                "reload": 0,
                "unload": 0,
                "evictions": 0
              },
              "actions": [
                {
                  "id": "a1",
                  "kind": "load",
                  "model": "Qwen/Qwen3-Coder-30B",
                  "neuron": "beast",
                  "devices": [
                    0,
                    1
                  ],
                  "vram_mb": 19000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "qwen3-coder-30b.gguf",
                    "quant": "Q4_K_M",
                    "ctx_size": 32768,
                    "args": []
                  },
                  "reason": {
                    "code": "pinned"
                  },
                  "because": "the fleet pins it on this neuron",
                  "after": [],
                  "if_generation": 7
                }
              ],
              "infeasible": [],
              "drift": []
            }
        "#]],
    );
}

#[test]
fn pin_evicts_the_least_recently_used() {
    check(
        &format!("{BEAST}{CROWDED}{PINNED_BIG}"),
        CROWDED_TOPOLOGY,
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 4 models, 1 neuron
            Topology: observed 12s ago, 1 neuron

            cortex will perform the following actions, shown with these symbols:
              + load
              - unload

              # a1: chat on beast will be unloaded
              - unload chat from beast
                  # (because making room for big; evicted as the least recently used)
                  devices: GPU0
                  vram:    GPU0 2000 → 10000 MB free

              # a2: big on beast will be loaded, after a1
              + load big on beast
                  # (because the fleet pins it on this neuron)
                  devices: GPU0
                  vram:    GPU0 10000 → 1000 MB free
                  profile: harness = "llamacpp", source = "big.gguf"

            Plan: 1 to load, 0 to reload, 1 to unload (1 evictions).
        "#]],
        expect![[r#"
            {
              "format_version": 1,
              "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
              "revision": {
                "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "dirty": false
              },
              "summary": {
                "load": 1,
                "reload": 0,
                "unload": 1,
                "evictions": 1
              },
              "actions": [
                {
                  "id": "a1",
                  "kind": "unload",
                  "model": "chat",
                  "neuron": "beast",
                  "devices": [
                    0
                  ],
                  "vram_mb": 8000,
                  "ram_mb": 0,
                  "reason": {
                    "code": "evict",
                    "for_model": "big",
                    "policy": "lru"
                  },
                  "because": "making room for big; evicted as the least recently used",
                  "after": [],
                  "if_generation": 12
                },
                {
                  "id": "a2",
                  "kind": "load",
                  "model": "big",
                  "neuron": "beast",
                  "devices": [
                    0
                  ],
                  "vram_mb": 9000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "big.gguf",
                    "args": []
                  },
                  "reason": {
                    "code": "pinned"
                  },
                  "because": "the fleet pins it on this neuron",
                  "after": [
                    "a1"
                  ],
                  "if_generation": 12
                }
              ],
              "infeasible": [],
              "drift": []
            }
        "#]],
    );
}

#[test]
fn pin_evicts_the_lowest_priority() {
    check(
        &format!("[policy]\neviction = \"priority\"\n{BEAST}{CROWDED}{PINNED_BIG}"),
        CROWDED_TOPOLOGY,
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 4 models, 1 neuron
            Topology: observed 12s ago, 1 neuron

            cortex will perform the following actions, shown with these symbols:
              + load
              - unload

              # a1: embed on beast will be unloaded
              - unload embed from beast
                  # (because making room for big; evicted as the lowest priority, then least recently used)
                  devices: GPU0
                  vram:    GPU0 2000 → 9000 MB free

              # a2: big on beast will be loaded, after a1
              + load big on beast
                  # (because the fleet pins it on this neuron)
                  devices: GPU0
                  vram:    GPU0 9000 → 0 MB free
                  profile: harness = "llamacpp", source = "big.gguf"

            Plan: 1 to load, 0 to reload, 1 to unload (1 evictions).
        "#]],
        expect![[r#"
            {
              "format_version": 1,
              "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
              "revision": {
                "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "dirty": false
              },
              "summary": {
                "load": 1,
                "reload": 0,
                "unload": 1,
                "evictions": 1
              },
              "actions": [
                {
                  "id": "a1",
                  "kind": "unload",
                  "model": "embed",
                  "neuron": "beast",
                  "devices": [
                    0
                  ],
                  "vram_mb": 7000,
                  "ram_mb": 0,
                  "reason": {
                    "code": "evict",
                    "for_model": "big",
                    "policy": "priority"
                  },
                  "because": "making room for big; evicted as the lowest priority, then least recently used",
                  "after": [],
                  "if_generation": 12
                },
                {
                  "id": "a2",
                  "kind": "load",
                  "model": "big",
                  "neuron": "beast",
                  "devices": [
                    0
                  ],
                  "vram_mb": 9000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "big.gguf",
                    "args": []
                  },
                  "reason": {
                    "code": "pinned"
                  },
                  "because": "the fleet pins it on this neuron",
                  "after": [
                    "a1"
                  ],
                  "if_generation": 12
                }
              ],
              "infeasible": [],
              "drift": []
            }
        "#]],
    );
}

#[test]
fn pins_that_cannot_fit_name_the_dimension_and_the_rest_still_plans() {
    let fleet = format!(
        r#"{BEAST}{CODER}
[[neuron]]
name = "small"
endpoint = "http://small.internal:13131"

[[model]]
id = "huge"
harness = "llamacpp"
source = "huge.gguf"
vram_mb = 40000
min_devices = 2
pinned_on = ["small"]

[[model]]
id = "wide"
harness = "llamacpp"
source = "wide.gguf"
vram_mb = 24000
min_devices = 2
min_device_vram_mb = 12000
pinned_on = ["small"]

[[model]]
id = "tiny"
harness = "llamacpp"
source = "tiny.gguf"
vram_mb = 4000
min_devices = 3
pinned_on = ["small"]
"#
    );
    check(
        &fleet,
        r#"{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [
  {"name": "beast", "reachable": true, "generation": 7, "boot_id": "b1",
   "devices": [{"index": 0, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": 24000},
               {"index": 1, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": 24000}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"], "models": []},
  {"name": "small", "reachable": true, "generation": 3, "boot_id": "s1",
   "devices": [{"index": 0, "name": "RTX 4080", "vram_total_mb": 16000, "vram_free_mb": 16000},
               {"index": 1, "name": "RTX 4080", "vram_total_mb": 16000, "vram_free_mb": 8000}],
   "ram_total_mb": 32000, "ram_free_mb": 20000, "harnesses": ["llamacpp"],
   "models": [{"id": "someones-test", "harness": "llamacpp", "status": "loaded", "devices": [1],
               "vram_mb": 8000, "last_used_unix_ms": 1699000000000, "in_flight": 0}]}]}"#,
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 4 models, 2 neurons
            Topology: observed 12s ago, 2 neurons

            cortex will perform the following actions, shown with these symbols:
              + load

              # a1: Qwen/Qwen3-Coder-30B on beast will be loaded
              + load Qwen/Qwen3-Coder-30B on beast
                  # (because the fleet pins it on this neuron)
                  devices: GPU0, GPU1
                  vram:    GPU0 24000 → 14500 MB free, GPU1 24000 → 14500 MB free
                  profile: harness = "llamacpp", source = "qwen3-coder-30b.gguf", quant = "Q4_K_M", ctx_size = 32768

            Infeasible: not placed now; the rest of the plan still applies.
              huge (pinned on small): dimension "total_vram" exhausted: needs 2 devices with 20000 MB free each (40000 MB in total); small has GPU0 16000 MB, GPU1 8000 MB free even after evicting every evictable model
              wide (pinned on small): dimension "per_device_vram" exhausted: needs 2 devices with 12000 MB free each (24000 MB in total); small has GPU0 16000 MB, GPU1 8000 MB free even after evicting every evictable model
              tiny (pinned on small): dimension "devices" exhausted: needs 3 devices; small has 2

            Plan: 1 to load, 0 to reload, 0 to unload (0 evictions).
        "#]],
        expect![[r#"
            {
              "format_version": 1,
              "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
              "revision": {
                "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "dirty": false
              },
              "summary": {
                "load": 1,
                "reload": 0,
                "unload": 0,
                "evictions": 0
              },
              "actions": [
                {
                  "id": "a1",
                  "kind": "load",
                  "model": "Qwen/Qwen3-Coder-30B",
                  "neuron": "beast",
                  "devices": [
                    0,
                    1
                  ],
                  "vram_mb": 19000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "qwen3-coder-30b.gguf",
                    "quant": "Q4_K_M",
                    "ctx_size": 32768,
                    "args": []
                  },
                  "reason": {
                    "code": "pinned"
                  },
                  "because": "the fleet pins it on this neuron",
                  "after": [],
                  "if_generation": 7
                }
              ],
              "infeasible": [
                {
                  "model": "huge",
                  "neuron": "small",
                  "want": "pin",
                  "dimension": "total_vram",
                  "detail": "needs 2 devices with 20000 MB free each (40000 MB in total); small has GPU0 16000 MB, GPU1 8000 MB free even after evicting every evictable model"
                },
                {
                  "model": "wide",
                  "neuron": "small",
                  "want": "pin",
                  "dimension": "per_device_vram",
                  "detail": "needs 2 devices with 12000 MB free each (24000 MB in total); small has GPU0 16000 MB, GPU1 8000 MB free even after evicting every evictable model"
                },
                {
                  "model": "tiny",
                  "neuron": "small",
                  "want": "pin",
                  "dimension": "devices",
                  "detail": "needs 3 devices; small has 2"
                }
              ],
              "drift": []
            }
        "#]],
    );
}

#[test]
fn pin_on_an_unreachable_neuron() {
    let fleet = format!(
        r#"{BEAST}
[[neuron]]
name = "pip"
endpoint = "http://pip.internal:13131"

[[model]]
id = "small"
harness = "llamacpp"
source = "small.gguf"
vram_mb = 4000
pinned_on = ["beast", "pip"]
"#
    );
    check(
        &fleet,
        r#"{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [
  {"name": "beast", "reachable": true, "generation": 7, "boot_id": "b1",
   "devices": [{"index": 0, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": 24000}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"], "models": []},
  {"name": "pip", "reachable": false, "error": "connection refused"}]}"#,
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 1 model, 2 neurons
            Topology: observed 12s ago, 2 neurons; unreachable: pip

            cortex will perform the following actions, shown with these symbols:
              + load

              # a1: small on beast will be loaded
              + load small on beast
                  # (because the fleet pins it on this neuron)
                  devices: GPU0
                  vram:    GPU0 24000 → 20000 MB free
                  profile: harness = "llamacpp", source = "small.gguf"

            Infeasible: not placed now; the rest of the plan still applies.
              small (pinned on pip): neuron_unreachable: pip is unreachable: connection refused

            Plan: 1 to load, 0 to reload, 0 to unload (0 evictions).
        "#]],
        expect![[r#"
            {
              "format_version": 1,
              "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
              "revision": {
                "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "dirty": false
              },
              "summary": {
                "load": 1,
                "reload": 0,
                "unload": 0,
                "evictions": 0
              },
              "actions": [
                {
                  "id": "a1",
                  "kind": "load",
                  "model": "small",
                  "neuron": "beast",
                  "devices": [
                    0
                  ],
                  "vram_mb": 4000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "small.gguf",
                    "args": []
                  },
                  "reason": {
                    "code": "pinned"
                  },
                  "because": "the fleet pins it on this neuron",
                  "after": [],
                  "if_generation": 7
                }
              ],
              "infeasible": [
                {
                  "model": "small",
                  "neuron": "pip",
                  "want": "pin",
                  "dimension": "neuron_unreachable",
                  "detail": "pip is unreachable: connection refused"
                }
              ],
              "drift": []
            }
        "#]],
    );
}

#[test]
fn replicas_spread_over_three_neurons() {
    check(
        r#"
[[neuron]]
name = "ant"
endpoint = "http://ant:13131"
[[neuron]]
name = "bee"
endpoint = "http://bee:13131"
[[neuron]]
name = "cat"
endpoint = "http://cat:13131"

[[model]]
id = "chat"
harness = "llamacpp"
source = "chat.gguf"
vram_mb = 9000
replicas = 2
"#,
        r#"{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [
  {"name": "ant", "reachable": true, "generation": 1, "boot_id": "a",
   "devices": [{"index": 0, "name": "L4", "vram_total_mb": 24000, "vram_free_mb": 20000}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"], "models": []},
  {"name": "bee", "reachable": true, "generation": 2, "boot_id": "b",
   "devices": [{"index": 0, "name": "L4", "vram_total_mb": 24000, "vram_free_mb": 10000}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"], "models": []},
  {"name": "cat", "reachable": true, "generation": 3, "boot_id": "c",
   "devices": [{"index": 0, "name": "L4", "vram_total_mb": 24000, "vram_free_mb": 15000}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"],
   "models": [{"id": "chat", "harness": "llamacpp", "status": "loaded", "devices": [0], "vram_mb": 9000,
               "last_used_unix_ms": 1699999000000, "in_flight": 0,
               "profile": {"harness": "llamacpp", "source": "chat.gguf", "args": []}}]}]}"#,
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 1 model, 3 neurons
            Topology: observed 12s ago, 3 neurons

            cortex will perform the following actions, shown with these symbols:
              + load

              # a1: chat on bee will be loaded
              + load chat on bee
                  # (because the fleet keeps 2 warm copies)
                  devices: GPU0
                  vram:    GPU0 10000 → 1000 MB free
                  profile: harness = "llamacpp", source = "chat.gguf"

            Plan: 1 to load, 0 to reload, 0 to unload (0 evictions).
        "#]],
        expect![[r#"
            {
              "format_version": 1,
              "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
              "revision": {
                "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "dirty": false
              },
              "summary": {
                "load": 1,
                "reload": 0,
                "unload": 0,
                "evictions": 0
              },
              "actions": [
                {
                  "id": "a1",
                  "kind": "load",
                  "model": "chat",
                  "neuron": "bee",
                  "devices": [
                    0
                  ],
                  "vram_mb": 9000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "chat.gguf",
                    "args": []
                  },
                  "reason": {
                    "code": "replicas",
                    "wanted": 2
                  },
                  "because": "the fleet keeps 2 warm copies",
                  "after": [],
                  "if_generation": 2
                }
              ],
              "infeasible": [],
              "drift": []
            }
        "#]],
    );
}

const CODER_LOADED: &str = r#"{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [
  {"name": "beast", "reachable": true, "generation": 7, "boot_id": "b1",
   "devices": [{"index": 0, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": 14500},
               {"index": 1, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": 10500}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"],
   "models": [
     {"id": "Qwen/Qwen3-Coder-30B", "harness": "llamacpp", "status": "loaded", "devices": [0, 1],
      "vram_mb": 19000, "last_used_unix_ms": 1699999990000, "in_flight": 0,
      "profile": {"harness": "llamacpp", "source": "qwen3-coder-30b.gguf", "quant": "Q4_K_M",
                  "ctx_size": 32768, "args": []}},
     {"id": "llama-local", "harness": "llamacpp", "status": "loaded", "devices": [1], "vram_mb": 4000,
      "last_used_unix_ms": 1699999000000, "in_flight": 0}]}]}"#;

#[test]
fn profile_change_reloads() {
    let fleet = format!("{BEAST}{}", CODER.replace("Q4_K_M", "Q8_0").replace("32768", "65536"));
    check(
        &fleet,
        CODER_LOADED,
        false,
        expect![[r#"
        Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 1 model, 1 neuron
        Topology: observed 12s ago, 1 neuron

        cortex will perform the following actions, shown with these symbols:
        -/+ reload

          # a1: Qwen/Qwen3-Coder-30B on beast will be reloaded
        -/+ reload Qwen/Qwen3-Coder-30B on beast
              # (because its serving profile changed: quant, ctx_size)
              devices: GPU0, GPU1
              vram:    GPU0 14500 → 14500 MB free, GPU1 10500 → 10500 MB free
              profile:
                - quant = "Q4_K_M"
                + quant = "Q8_0"
                - ctx_size = 32768
                + ctx_size = 65536
                (3 unchanged fields hidden)

        Plan: 0 to load, 1 to reload, 0 to unload (0 evictions).
    "#]],
        expect![[r#"
        {
          "format_version": 1,
          "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
          "revision": {
            "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
            "dirty": false
          },
          "summary": {
            "load": 0,
            "reload": 1,
            "unload": 0,
            "evictions": 0
          },
          "actions": [
            {
              "id": "a1",
              "kind": "reload",
              "model": "Qwen/Qwen3-Coder-30B",
              "neuron": "beast",
              "devices": [
                0,
                1
              ],
              "vram_mb": 19000,
              "ram_mb": 0,
              "profile": {
                "harness": "llamacpp",
                "source": "qwen3-coder-30b.gguf",
                "quant": "Q8_0",
                "ctx_size": 65536,
                "args": []
              },
              "from_profile": {
                "harness": "llamacpp",
                "source": "qwen3-coder-30b.gguf",
                "quant": "Q4_K_M",
                "ctx_size": 32768,
                "args": []
              },
              "from_devices": [
                0,
                1
              ],
              "reason": {
                "code": "profile_changed",
                "fields": [
                  "quant",
                  "ctx_size"
                ]
              },
              "because": "its serving profile changed: quant, ctx_size",
              "after": [],
              "if_generation": 7
            }
          ],
          "infeasible": [],
          "drift": []
        }
    "#]],
    );
}

#[test]
fn unmanaged_is_left_alone_and_undeclared_is_drift_until_pruned() {
    let topology = CODER_LOADED.replace(
        r#"{"id": "llama-local""#,
        r#"{"id": "retired", "harness": "llamacpp", "status": "loaded", "devices": [0], "vram_mb": 3000,
      "last_used_unix_ms": 1699999000000, "in_flight": 0,
      "profile": {"harness": "llamacpp", "source": "retired.gguf", "args": []}},
     {"id": "llama-local""#,
    );
    let fleet = format!("{BEAST}{CODER}");
    check(
        &fleet,
        &topology,
        false,
        expect![[r#"
        Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 1 model, 1 neuron
        Topology: observed 12s ago, 1 neuron

        Drift: loaded through cortex but declared by no fleet file; left loaded (prune unloads them).
          retired on beast: GPU0, 3000 MB VRAM

        Plan: 0 to load, 0 to reload, 0 to unload (0 evictions).
    "#]],
        expect![[r#"
        {
          "format_version": 1,
          "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
          "revision": {
            "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
            "dirty": false
          },
          "summary": {
            "load": 0,
            "reload": 0,
            "unload": 0,
            "evictions": 0
          },
          "actions": [],
          "infeasible": [],
          "drift": [
            {
              "model": "retired",
              "neuron": "beast",
              "devices": [
                0
              ],
              "vram_mb": 3000,
              "ram_mb": 0
            }
          ]
        }
    "#]],
    );
    check(
        &fleet,
        &topology,
        true,
        expect![[r#"
        Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 1 model, 1 neuron
        Topology: observed 12s ago, 1 neuron

        cortex will perform the following actions, shown with these symbols:
          - unload

          # a1: retired on beast will be unloaded
          - unload retired from beast
              # (because no fleet file declares it and prune is on)
              devices: GPU0
              vram:    GPU0 14500 → 17500 MB free

        Plan: 0 to load, 0 to reload, 1 to unload (0 evictions).
    "#]],
        expect![[r#"
        {
          "format_version": 1,
          "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
          "revision": {
            "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
            "dirty": false
          },
          "summary": {
            "load": 0,
            "reload": 0,
            "unload": 1,
            "evictions": 0
          },
          "actions": [
            {
              "id": "a1",
              "kind": "unload",
              "model": "retired",
              "neuron": "beast",
              "devices": [
                0
              ],
              "vram_mb": 3000,
              "ram_mb": 0,
              "reason": {
                "code": "prune"
              },
              "because": "no fleet file declares it and prune is on",
              "after": [],
              "if_generation": 7
            }
          ],
          "infeasible": [],
          "drift": []
        }
    "#]],
    );
}

#[test]
fn cpu_model_is_placed_by_ram() {
    check(
        r#"
[[neuron]]
name = "ant"
endpoint = "http://ant:13131"
[[neuron]]
name = "bee"
endpoint = "http://bee:13131"

[[model]]
id = "embed-cpu"
harness = "llamacpp"
source = "embed.gguf"
min_devices = 0
ram_mb = 6000
replicas = 1
"#,
        r#"{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [
  {"name": "ant", "reachable": true, "generation": 1, "boot_id": "a", "devices": [],
   "ram_total_mb": 16000, "ram_free_mb": 4000, "harnesses": ["llamacpp"], "models": []},
  {"name": "bee", "reachable": true, "generation": 2, "boot_id": "b", "devices": [],
   "ram_total_mb": 32000, "ram_free_mb": 30000, "harnesses": ["llamacpp"], "models": []}]}"#,
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 1 model, 2 neurons
            Topology: observed 12s ago, 2 neurons

            cortex will perform the following actions, shown with these symbols:
              + load

              # a1: embed-cpu on bee will be loaded
              + load embed-cpu on bee
                  # (because the fleet keeps 1 warm copy)
                  devices: CPU
                  ram:     30000 → 24000 MB free
                  profile: harness = "llamacpp", source = "embed.gguf"

            Plan: 1 to load, 0 to reload, 0 to unload (0 evictions).
        "#]],
        expect![[r#"
            {
              "format_version": 1,
              "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
              "revision": {
                "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "dirty": false
              },
              "summary": {
                "load": 1,
                "reload": 0,
                "unload": 0,
                "evictions": 0
              },
              "actions": [
                {
                  "id": "a1",
                  "kind": "load",
                  "model": "embed-cpu",
                  "neuron": "bee",
                  "devices": [],
                  "vram_mb": 0,
                  "ram_mb": 6000,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "embed.gguf",
                    "args": []
                  },
                  "reason": {
                    "code": "replicas",
                    "wanted": 1
                  },
                  "because": "the fleet keeps 1 warm copy",
                  "after": [],
                  "if_generation": 2
                }
              ],
              "infeasible": [],
              "drift": []
            }
        "#]],
    );
}

#[test]
fn missing_harness() {
    let fleet = format!(
        r#"{BEAST}
[[model]]
id = "vision"
harness = "vllm"
source = "vision"
vram_mb = 8000
pinned_on = ["beast"]

[[model]]
id = "mistral"
harness = "mistralrs"
source = "mistral"
vram_mb = 8000
replicas = 1
"#
    );
    check(
        &fleet,
        r#"{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [
  {"name": "beast", "reachable": true, "generation": 7, "boot_id": "b1",
   "devices": [{"index": 0, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": 24000}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"], "models": []}]}"#,
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 2 models, 1 neuron
            Topology: observed 12s ago, 1 neuron

            Infeasible: not placed now; the rest of the plan still applies.
              vision (pinned on beast): harness_missing: beast has no harness "vllm" (it has: llamacpp)
              mistral (replicas): harness_missing: 0 of 1 copies can be loaded; beast has no harness "mistralrs" (it has: llamacpp)

            Plan: 0 to load, 0 to reload, 0 to unload (0 evictions).
        "#]],
        expect![[r#"
            {
              "format_version": 1,
              "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
              "revision": {
                "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
                "dirty": false
              },
              "summary": {
                "load": 0,
                "reload": 0,
                "unload": 0,
                "evictions": 0
              },
              "actions": [],
              "infeasible": [
                {
                  "model": "vision",
                  "neuron": "beast",
                  "want": "pin",
                  "dimension": "harness_missing",
                  "detail": "beast has no harness \"vllm\" (it has: llamacpp)"
                },
                {
                  "model": "mistral",
                  "neuron": null,
                  "want": "replicas",
                  "dimension": "harness_missing",
                  "detail": "0 of 1 copies can be loaded; beast has no harness \"mistralrs\" (it has: llamacpp)"
                }
              ],
              "drift": []
            }
        "#]],
    );
}

#[test]
fn idle_on_demand_copies_are_unloaded_but_warm_replicas_stay() {
    let fleet = format!(
        "[policy]\nidle_unload_after = \"5m\"\n{BEAST}{}",
        CROWDED.replace("id = \"chat\"", "id = \"chat\"\nreplicas = 1",)
    );
    check(
        &fleet,
        CROWDED_TOPOLOGY,
        false,
        expect![[r#"
        Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 3 models, 1 neuron
        Topology: observed 12s ago, 1 neuron

        cortex will perform the following actions, shown with these symbols:
          - unload

          # a1: embed on beast will be unloaded
          - unload embed from beast
              # (because idle for 10m, longer than idle_unload_after = 5m)
              devices: GPU0
              vram:    GPU0 2000 → 9000 MB free

        Plan: 0 to load, 0 to reload, 1 to unload (0 evictions).
    "#]],
        expect![[r#"
        {
          "format_version": 1,
          "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
          "revision": {
            "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
            "dirty": false
          },
          "summary": {
            "load": 0,
            "reload": 0,
            "unload": 1,
            "evictions": 0
          },
          "actions": [
            {
              "id": "a1",
              "kind": "unload",
              "model": "embed",
              "neuron": "beast",
              "devices": [
                0
              ],
              "vram_mb": 7000,
              "ram_mb": 0,
              "reason": {
                "code": "idle",
                "idle_ms": 600000,
                "limit_ms": 300000
              },
              "because": "idle for 10m, longer than idle_unload_after = 5m",
              "after": [],
              "if_generation": 12
            }
          ],
          "infeasible": [],
          "drift": []
        }
    "#]],
    );
}

#[test]
fn no_op() {
    check(
        &format!("{BEAST}{CODER}"),
        CODER_LOADED,
        false,
        expect![[r#"
        No changes. The fleet matches fleet/ @ 1a2b3c4.
    "#]],
        expect![[r#"
        {
          "format_version": 1,
          "fleet_digest": "sha256:d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
          "revision": {
            "commit": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
            "dirty": false
          },
          "summary": {
            "load": 0,
            "reload": 0,
            "unload": 0,
            "evictions": 0
          },
          "actions": [],
          "infeasible": [],
          "drift": []
        }
    "#]],
    );
}

#[test]
fn place_one_chooses_an_eviction() {
    let (fleet, topology) = inputs(
        &format!("{BEAST}{CROWDED}{}", PINNED_BIG.replace("pinned_on = [\"beast\"]", "aliases = [\"b\"]")),
        CROWDED_TOPOLOGY,
    );
    let options = PlanOptions { now_unix_ms: NOW, prune: false };
    let placement = place_one(&fleet, &topology, "b", &options).unwrap();
    expect![[r#"
        {
          "neuron": "beast",
          "devices": [
            0
          ],
          "evictions": [
            {
              "id": "a1",
              "kind": "unload",
              "model": "chat",
              "neuron": "beast",
              "devices": [
                0
              ],
              "vram_mb": 8000,
              "ram_mb": 0,
              "profile": null,
              "reason": {
                "code": "evict",
                "for_model": "big",
                "policy": "lru"
              },
              "after": [],
              "if_generation": 12
            }
          ],
          "load": {
            "id": "a2",
            "kind": "load",
            "model": "big",
            "neuron": "beast",
            "devices": [
              0
            ],
            "vram_mb": 9000,
            "ram_mb": 0,
            "profile": {
              "harness": "llamacpp",
              "source": "big.gguf",
              "args": []
            },
            "reason": {
              "code": "requested"
            },
            "after": [
              "a1"
            ],
            "if_generation": 12
          }
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(&placement).unwrap());
    let unknown = place_one(&fleet, &topology, "nope", &options).unwrap_err();
    expect![[r#"unknown_model: no fleet file declares a model or alias "nope""#]].assert_eq(&format!(
        "{}: {}",
        unknown.dimension.as_str(),
        unknown.detail
    ));
}

/// The eviction choice weighs the gateway's activity: a model with queued requests goes after
/// idle ones, and a copy within its min_residency is held back (the placement says it waits).
#[test]
fn place_one_weighs_queues_and_residency() {
    let (fleet, topology) = inputs(
        &format!(
            "{BEAST}{CROWDED}{}",
            PINNED_BIG.replace("pinned_on = [\"beast\"]", "min_residency = \"1m\"")
        ),
        CROWDED_TOPOLOGY,
    );
    let options = PlanOptions { now_unix_ms: NOW, prune: false };
    let evicted =
        |activity: &plans::plan::Activity| match place_one_with(&fleet, &topology, "big", &options, activity)
        {
            Ok(placement) => {
                placement.evictions.iter().map(|a| a.model.clone()).collect::<Vec<_>>().join(",")
            }
            Err(infeasible) => format!("{}: {}", infeasible.dimension.as_str(), infeasible.detail),
        };
    let mut activity = plans::plan::Activity::default();
    assert_eq!(evicted(&activity), "chat", "least recently used first");
    activity.queued.insert("chat".into(), 3);
    assert_eq!(evicted(&activity), "embed", "a model with queued requests goes after idle ones");
    let recent = |id: &str| ((id.to_owned(), "beast".to_owned()), NOW - 1_000);
    activity.resident_since.extend([recent("chat"), recent("embed")]);
    assert_eq!(evicted(&activity), "draft", "copies within min_residency are held; the busy one goes");
    activity.resident_since.extend([recent("draft")]);
    expect![[r#"residency: beast has room once chat has been loaded for its min_residency (at 1700000004000 Unix ms)"#]]
        .assert_eq(&evicted(&activity));
}

#[test]
fn place_one_evicts_the_copy_fewer_live_sessions_are_bound_to() {
    let big = PINNED_BIG.replace("pinned_on = [\"beast\"]", "");
    let (fleet, topology) = inputs(&format!("{BEAST}{CROWDED}{big}"), CROWDED_TOPOLOGY);
    let options = PlanOptions { now_unix_ms: NOW, prune: false };
    let evicted = |activity: &plans::plan::Activity| {
        let placement = place_one_with(&fleet, &topology, "big", &options, activity).unwrap();
        placement.evictions.iter().map(|a| a.model.clone()).collect::<Vec<_>>().join(",")
    };
    let mut activity = plans::plan::Activity::default();
    assert_eq!(evicted(&activity), "chat", "least recently used first");
    activity.sessions.insert(("chat".into(), "beast".into()), 4);
    assert_eq!(evicted(&activity), "embed", "the idle copy without live sessions goes first");
    activity.sessions.insert(("embed".into(), "beast".into()), 9);
    assert_eq!(evicted(&activity), "chat", "then the one fewer sessions are bound to");
}

#[test]
fn of_a_models_copies_the_one_more_sessions_are_bound_to_stays_a_replica() {
    let copy = |neuron: &str| {
        format!(
            r#"{{"name": "{neuron}", "reachable": true, "generation": 1, "boot_id": "{neuron}",
   "devices": [{{"index": 0, "name": "L4", "vram_total_mb": 24000, "vram_free_mb": 15000}}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"],
   "models": [{{"id": "chat", "harness": "llamacpp", "status": "loaded", "devices": [0], "vram_mb": 9000,
      "last_used_unix_ms": 1699999000000, "in_flight": 0,
      "profile": {{"harness": "llamacpp", "source": "chat.gguf", "args": []}}}}]}}"#
        )
    };
    let topology = format!(
        r#"{{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [{}, {}]}}"#,
        copy("ant"),
        copy("bee")
    );
    let fleet = r#"
[policy]
idle_unload_after = "5m"

[[neuron]]
name = "ant"
endpoint = "http://ant:13131"
[[neuron]]
name = "bee"
endpoint = "http://bee:13131"

[[model]]
id = "chat"
harness = "llamacpp"
source = "chat.gguf"
vram_mb = 9000
replicas = 1
"#;
    let (fleet, topology) = inputs(fleet, &topology);
    let options = PlanOptions { now_unix_ms: NOW, prune: false };
    let unloaded = |activity: &plans::plan::Activity| {
        let plan = plans::plan::plan_with(&fleet, &topology, &options, activity);
        plan.actions.iter().map(|a| format!("{:?} {} on {}", a.kind, a.model, a.neuron)).collect::<Vec<_>>()
    };
    let mut activity = plans::plan::Activity::default();
    assert_eq!(unloaded(&activity), ["Unload chat on bee"], "without sessions, by neuron name");
    activity.sessions.insert(("chat".into(), "bee".into()), 3);
    assert_eq!(unloaded(&activity), ["Unload chat on ant"], "the copy with the sessions stays");
}

#[test]
fn place_one_clears_a_failed_copy_and_loads_afresh_in_its_place() {
    let failed = CROWDED_TOPOLOGY.replace(
        r#"{"id": "chat", "harness": "llamacpp", "status": "loaded""#,
        r#"{"id": "chat", "harness": "llamacpp", "status": "failed""#,
    );
    let (fleet, topology) = inputs(&format!("{BEAST}{CROWDED}"), &failed);
    let options = PlanOptions { now_unix_ms: NOW, prune: false };
    let placement = place_one(&fleet, &topology, "chat", &options).unwrap();
    let steps: Vec<String> = placement
        .evictions
        .iter()
        .chain([&placement.load])
        .map(|a| {
            format!("{} {} {} {:?} after {:?}", a.id, a.kind.as_str(), a.model, a.reason.code(), a.after)
        })
        .collect();
    expect![[r#"
        a1 unload chat "failed" after []
        a2 load chat "requested" after ["a1"]"#]]
    .assert_eq(&steps.join("\n"));
    assert_eq!(placement.neuron, "beast");
    // The plan itself leaves a failed on-demand copy alone: nobody asked for it again.
    assert!(plan(&fleet, &topology, &options).actions.is_empty());
}
