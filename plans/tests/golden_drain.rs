//! Golden tests of cordoned and draining neurons: what the plan moves (make-before-break),
//! unloads, keeps serving and suspends, in text and JSON (expect-test; refresh with
//! `UPDATE_EXPECT=1 cargo test -p plans --test golden_drain` and review the diff).
#![allow(clippy::unwrap_used)]

mod support;

use expect_test::expect;
use plans::plan::{Dimension, PlanOptions, place_one, plan};
use support::{NOW, check, inputs};

/// `beast` (one 24 GB GPU) in the given state, and `quad` (one 24 GB GPU), active.
fn neurons(beast_state: &str) -> String {
    format!(
        r#"
[[neuron]]
name = "beast"
endpoint = "http://beast.internal:13131"
state = "{beast_state}"

[[neuron]]
name = "quad"
endpoint = "http://quad.internal:13131"
"#
    )
}

/// `coder` (on demand, 12 GB), `embed` (on demand, 4 GB), `chat` (pinned on beast, 6 GB).
const MODELS: &str = r#"
[[model]]
id = "coder"
harness = "llamacpp"
source = "coder.gguf"
vram_mb = 12000

[[model]]
id = "embed"
harness = "llamacpp"
source = "embed.gguf"
vram_mb = 4000

[[model]]
id = "chat"
harness = "llamacpp"
source = "chat.gguf"
vram_mb = 6000
pinned_on = ["beast"]
"#;

/// A copy in the topology: `(id, vram_mb, last used seconds before NOW, in flight)`.
fn copy(id: &str, vram_mb: u64, idle_s: u64, in_flight: u32) -> String {
    format!(
        r#"{{"id": "{id}", "harness": "llamacpp", "status": "loaded", "devices": [0], "vram_mb": {vram_mb},
          "last_used_unix_ms": {}, "in_flight": {in_flight},
          "profile": {{"harness": "llamacpp", "source": "{id}.gguf", "args": []}}}}"#,
        NOW - idle_s * 1000
    )
}

/// beast holds `beast`, quad holds `quad` (each a list of copies), both one 24 GB GPU.
fn topology(beast: &[String], quad: &[String], quad_total_mb: u64) -> String {
    let free = |copies: &[String], total: u64| {
        let used: u64 = copies
            .iter()
            .map(|c| {
                let at = c.find("\"vram_mb\": ").unwrap() + 11;
                c[at..].split(',').next().unwrap().trim().parse::<u64>().unwrap()
            })
            .sum();
        total - used
    };
    format!(
        r#"{{"format_version": 1, "observed_at_unix_ms": 1699999988000, "neurons": [
  {{"name": "beast", "reachable": true, "generation": 12, "boot_id": "b1",
   "devices": [{{"index": 0, "name": "RTX 4090", "vram_total_mb": 24000, "vram_free_mb": {}}}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"], "models": [{}]}},
  {{"name": "quad", "reachable": true, "generation": 4, "boot_id": "q1",
   "devices": [{{"index": 0, "name": "RTX 4090", "vram_total_mb": {quad_total_mb}, "vram_free_mb": {}}}],
   "ram_total_mb": 64000, "ram_free_mb": 40000, "harnesses": ["llamacpp"], "models": [{}]}}]}}"#,
        free(beast, 24000),
        beast.join(", "),
        free(quad, quad_total_mb),
        quad.join(", ")
    )
}

#[test]
fn draining_moves_what_is_in_use_and_the_pin_make_before_break() {
    // coder is streaming (2 in flight), embed has been idle for an hour, chat is pinned.
    let beast = [copy("coder", 12000, 1, 2), copy("embed", 4000, 3600, 0), copy("chat", 6000, 600, 0)];
    check(
        &format!("{}{MODELS}", neurons("draining")),
        &topology(&beast, &[], 24000),
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 3 models, 2 neurons
            Topology: observed 12s ago, 2 neurons
            Out of service: beast draining (3 copies left)

            cortex will perform the following actions, shown with these symbols:
              + load
              - unload

              # a1: chat on quad will be loaded
              + load chat on quad
                  # (because beast is draining; this copy replaces the one there and is ready before it unloads)
                  devices: GPU0
                  vram:    GPU0 24000 → 18000 MB free
                  profile: harness = "llamacpp", source = "chat.gguf"

              # a2: coder on quad will be loaded, after a1
              + load coder on quad
                  # (because beast is draining; this copy replaces the one there and is ready before it unloads)
                  devices: GPU0
                  vram:    GPU0 18000 → 6000 MB free
                  profile: harness = "llamacpp", source = "coder.gguf"

              # a3: coder on beast will be unloaded, after a2
              - unload coder from beast
                  # (because beast is draining; the copy on quad takes over, ready first)
                  devices: GPU0
                  vram:    GPU0 2000 → 14000 MB free

              # a4: embed on beast will be unloaded
              - unload embed from beast
                  # (because beast is draining; nothing needs this copy elsewhere (it loads again on demand))
                  devices: GPU0
                  vram:    GPU0 14000 → 18000 MB free

              # a5: chat on beast will be unloaded, after a1
              - unload chat from beast
                  # (because beast is draining; the copy on quad takes over, ready first)
                  devices: GPU0
                  vram:    GPU0 18000 → 24000 MB free

            Draining beast: each new copy is ready before the old one drains and unloads.
              coder: beast → quad (a2, then a3)
              embed: unloaded, not needed elsewhere (a4)
              chat: beast → quad (a1, then a5)

            Suspended pins: honoured again once their neuron is active.
              chat pinned on beast (draining): stand-in on quad

            Plan: 2 to load, 0 to reload, 3 to unload (0 evictions).
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
                "load": 2,
                "reload": 0,
                "unload": 3,
                "evictions": 0
              },
              "actions": [
                {
                  "id": "a1",
                  "kind": "load",
                  "model": "chat",
                  "neuron": "quad",
                  "devices": [
                    0
                  ],
                  "vram_mb": 6000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "chat.gguf",
                    "args": []
                  },
                  "reason": {
                    "code": "relocate",
                    "from": "beast"
                  },
                  "because": "beast is draining; this copy replaces the one there and is ready before it unloads",
                  "after": [],
                  "if_generation": 4
                },
                {
                  "id": "a2",
                  "kind": "load",
                  "model": "coder",
                  "neuron": "quad",
                  "devices": [
                    0
                  ],
                  "vram_mb": 12000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "coder.gguf",
                    "args": []
                  },
                  "reason": {
                    "code": "relocate",
                    "from": "beast"
                  },
                  "because": "beast is draining; this copy replaces the one there and is ready before it unloads",
                  "after": [
                    "a1"
                  ],
                  "if_generation": 4
                },
                {
                  "id": "a3",
                  "kind": "unload",
                  "model": "coder",
                  "neuron": "beast",
                  "devices": [
                    0
                  ],
                  "vram_mb": 12000,
                  "ram_mb": 0,
                  "reason": {
                    "code": "drain",
                    "neuron": "beast",
                    "replaced_by": "quad"
                  },
                  "because": "beast is draining; the copy on quad takes over, ready first",
                  "after": [
                    "a2"
                  ],
                  "if_generation": 12
                },
                {
                  "id": "a4",
                  "kind": "unload",
                  "model": "embed",
                  "neuron": "beast",
                  "devices": [
                    0
                  ],
                  "vram_mb": 4000,
                  "ram_mb": 0,
                  "reason": {
                    "code": "drain",
                    "neuron": "beast",
                    "replaced_by": null
                  },
                  "because": "beast is draining; nothing needs this copy elsewhere (it loads again on demand)",
                  "after": [],
                  "if_generation": 12
                },
                {
                  "id": "a5",
                  "kind": "unload",
                  "model": "chat",
                  "neuron": "beast",
                  "devices": [
                    0
                  ],
                  "vram_mb": 6000,
                  "ram_mb": 0,
                  "reason": {
                    "code": "drain",
                    "neuron": "beast",
                    "replaced_by": "quad"
                  },
                  "because": "beast is draining; the copy on quad takes over, ready first",
                  "after": [
                    "a1"
                  ],
                  "if_generation": 12
                }
              ],
              "infeasible": [],
              "drift": [],
              "moves": [
                {
                  "model": "coder",
                  "from": "beast",
                  "to": "quad",
                  "load": "a2",
                  "unload": "a3"
                },
                {
                  "model": "chat",
                  "from": "beast",
                  "to": "quad",
                  "load": "a1",
                  "unload": "a5"
                }
              ],
              "suspended_pins": [
                {
                  "model": "chat",
                  "neuron": "beast",
                  "state": "draining",
                  "stand_in": "quad"
                }
              ]
            }
        "#]],
    );
}

#[test]
fn what_fits_nowhere_else_keeps_serving_on_the_draining_neuron() {
    // quad has 8 GB: chat (6 GB) moves, coder (12 GB, in use) cannot.
    let beast = [copy("coder", 12000, 1, 2), copy("chat", 6000, 600, 0)];
    check(
        &format!("{}{MODELS}", neurons("draining")),
        &topology(&beast, &[], 8000),
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 3 models, 2 neurons
            Topology: observed 12s ago, 2 neurons
            Out of service: beast draining (2 copies left)

            cortex will perform the following actions, shown with these symbols:
              + load
              - unload

              # a1: chat on quad will be loaded
              + load chat on quad
                  # (because beast is draining; this copy replaces the one there and is ready before it unloads)
                  devices: GPU0
                  vram:    GPU0 8000 → 2000 MB free
                  profile: harness = "llamacpp", source = "chat.gguf"

              # a2: chat on beast will be unloaded, after a1
              - unload chat from beast
                  # (because beast is draining; the copy on quad takes over, ready first)
                  devices: GPU0
                  vram:    GPU0 6000 → 12000 MB free

            Draining beast: each new copy is ready before the old one drains and unloads.
              chat: beast → quad (a1, then a2)
              coder: stays on beast, it fits nowhere else (see Infeasible)

            Infeasible: not placed now; the rest of the plan still applies.
              coder (move off beast): dimension "total_vram" exhausted: needs 1 device with 12000 MB free each (12000 MB in total); quad has GPU0 2000 MB free even after evicting every evictable model; it keeps serving on beast

            Suspended pins: honoured again once their neuron is active.
              chat pinned on beast (draining): stand-in on quad

            Plan: 1 to load, 0 to reload, 1 to unload (0 evictions).
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
                "evictions": 0
              },
              "actions": [
                {
                  "id": "a1",
                  "kind": "load",
                  "model": "chat",
                  "neuron": "quad",
                  "devices": [
                    0
                  ],
                  "vram_mb": 6000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "chat.gguf",
                    "args": []
                  },
                  "reason": {
                    "code": "relocate",
                    "from": "beast"
                  },
                  "because": "beast is draining; this copy replaces the one there and is ready before it unloads",
                  "after": [],
                  "if_generation": 4
                },
                {
                  "id": "a2",
                  "kind": "unload",
                  "model": "chat",
                  "neuron": "beast",
                  "devices": [
                    0
                  ],
                  "vram_mb": 6000,
                  "ram_mb": 0,
                  "reason": {
                    "code": "drain",
                    "neuron": "beast",
                    "replaced_by": "quad"
                  },
                  "because": "beast is draining; the copy on quad takes over, ready first",
                  "after": [
                    "a1"
                  ],
                  "if_generation": 12
                }
              ],
              "infeasible": [
                {
                  "model": "coder",
                  "neuron": "beast",
                  "want": "relocate",
                  "dimension": "total_vram",
                  "detail": "needs 1 device with 12000 MB free each (12000 MB in total); quad has GPU0 2000 MB free even after evicting every evictable model; it keeps serving on beast"
                }
              ],
              "drift": [],
              "moves": [
                {
                  "model": "chat",
                  "from": "beast",
                  "to": "quad",
                  "load": "a1",
                  "unload": "a2"
                }
              ],
              "suspended_pins": [
                {
                  "model": "chat",
                  "neuron": "beast",
                  "state": "draining",
                  "stand_in": "quad"
                }
              ]
            }
        "#]],
    );
}

#[test]
fn a_drained_neuron_is_ready_for_maintenance_and_the_stand_in_stays_warm() {
    // After the drain: beast holds nothing, chat's stand-in serves on quad.
    check(
        &format!("{}{MODELS}", neurons("draining")),
        &topology(&[], &[copy("chat", 6000, 600, 0), copy("coder", 12000, 30, 0)], 24000),
        false,
        expect![[r#"
            No changes. The fleet matches fleet/ @ 1a2b3c4.
            Out of service: beast draining (ready for maintenance)
            Suspended pins: honoured again once their neuron is active.
              chat pinned on beast (draining): stand-in on quad
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
              "drift": [],
              "suspended_pins": [
                {
                  "model": "chat",
                  "neuron": "beast",
                  "state": "draining",
                  "stand_in": "quad"
                }
              ]
            }
        "#]],
    );
}

#[test]
fn cordoned_keeps_its_copies_and_places_nothing_new() {
    // beast is cordoned with coder loaded; chat's pinned copy is missing there (suspended, so a
    // stand-in goes to quad); embed with a changed profile is not reloaded on beast.
    let mut embed = copy("embed", 4000, 30, 0);
    embed = embed.replace(r#""source": "embed.gguf""#, r#""source": "embed-old.gguf""#);
    check(
        &format!("{}{MODELS}", neurons("cordoned")),
        &topology(&[copy("coder", 12000, 30, 1), embed], &[], 24000),
        false,
        expect![[r#"
            Fleet: fleet/ @ 1a2b3c4 (digest d1e2f3a4b5c6): 3 models, 2 neurons
            Topology: observed 12s ago, 2 neurons
            Out of service: beast cordoned

            cortex will perform the following actions, shown with these symbols:
              + load

              # a1: chat on quad will be loaded
              + load chat on quad
                  # (because beast is cordoned: its pin is suspended, and this copy keeps the model warm meanwhile)
                  devices: GPU0
                  vram:    GPU0 24000 → 18000 MB free
                  profile: harness = "llamacpp", source = "chat.gguf"

            Infeasible: not placed now; the rest of the plan still applies.
              embed (reload on beast): cordoned: beast is cordoned: nothing new starts there

            Suspended pins: honoured again once their neuron is active.
              chat pinned on beast (cordoned): stand-in on quad

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
                  "neuron": "quad",
                  "devices": [
                    0
                  ],
                  "vram_mb": 6000,
                  "ram_mb": 0,
                  "profile": {
                    "harness": "llamacpp",
                    "source": "chat.gguf",
                    "args": []
                  },
                  "reason": {
                    "code": "pin_suspended",
                    "neuron": "beast",
                    "state": "cordoned"
                  },
                  "because": "beast is cordoned: its pin is suspended, and this copy keeps the model warm meanwhile",
                  "after": [],
                  "if_generation": 4
                }
              ],
              "infeasible": [
                {
                  "model": "embed",
                  "neuron": "beast",
                  "want": "reload",
                  "dimension": "cordoned",
                  "detail": "beast is cordoned: nothing new starts there"
                }
              ],
              "drift": [],
              "suspended_pins": [
                {
                  "model": "chat",
                  "neuron": "beast",
                  "state": "cordoned",
                  "stand_in": "quad"
                }
              ]
            }
        "#]],
    );
}

#[test]
fn the_router_loads_nothing_on_an_out_of_service_neuron() {
    for state in ["cordoned", "draining"] {
        let (fleet, topology) = inputs(&format!("{}{MODELS}", neurons(state)), &topology(&[], &[], 24000));
        let options = PlanOptions { now_unix_ms: NOW, prune: false };
        assert_eq!(place_one(&fleet, &topology, "coder", &options).unwrap().neuron, "quad", "{state}");
        // With quad full of a busy pinned copy, nothing is left: the reason names the state.
        let quad_full = topology_with_quad_full();
        let (fleet, topology) = inputs(&format!("{}{MODELS}{QUAD_PIN}", neurons(state)), &quad_full);
        let refused = place_one(&fleet, &topology, "coder", &options).unwrap_err();
        assert!(refused.detail.contains(&format!("{state} on 1 neuron (beast)")), "{refused:?}");
        assert_ne!(refused.dimension, Dimension::Neurons);
        assert!(plan(&fleet, &topology, &options).actions.iter().all(|a| a.neuron != "beast"));
    }
}

const QUAD_PIN: &str = r#"
[[model]]
id = "big"
harness = "llamacpp"
source = "big.gguf"
vram_mb = 20000
pinned_on = ["quad"]
"#;

fn topology_with_quad_full() -> String {
    topology(&[], &[copy("big", 20000, 1, 1)], 24000)
}
