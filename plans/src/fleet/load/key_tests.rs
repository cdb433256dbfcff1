//! Golden tests of `[[key]]` tables: what loads, and every mistake as `path:line:col`.

use expect_test::expect;

use crate::fleet::load::load;
use crate::fleet::load::tests::{check, files};

/// Two models to scope keys to.
const MODELS: &str = r#"
[[model]]
id = "Qwen/Qwen3-Coder-30B"
aliases = ["coder"]
harness = "llamacpp"
source = "coder.gguf"

[[model]]
id = "gemma-3-270m"
harness = "llamacpp"
source = "gemma.gguf"
"#;

fn with_models(keys: &str) -> String {
    format!("{MODELS}\n#- keys.toml\n{keys}")
}

#[test]
fn a_key_loads_with_every_field_and_one_with_none() {
    check(
        &with_models(
            r#"
# Alice's laptop.
[[key]]
name = "alice"
sha256 = "214A711FEA74E1C80FAA8536375C89900A4727019E7EA983C6C48CD87C69687D"
models = ["coder", "gemma-*"]
rpm = 60
tpm = 100000
max_concurrency = 4
tokens_per_day = 2000000
tokens_per_month = 40000000
priority = "interactive"
expires = 2026-12-31
operator = "read_only"

[[key]]
name = "nightly-eval"
sha256 = "sha256:f62616b17bdd474b5411c5e2973b41f103341e1e3db479fbcb738f6f76373d8f"
priority = "batch"
expires = 2026-12-31T18:00:00+02:00
revoked = true
#- ops.toml
key = [{ name = "ops", sha256 = "0000000000000000000000000000000000000000000000000000000000000000", models = [], priority = 7, operator = "admin" }]
"#,
        ),
        expect![[r#"
            policy eviction=Lru reconcile=Auto prune=false idle_unload_after_ms=None source=Worktree
            model Qwen/Qwen3-Coder-30B aliases=["coder"] at fleet.toml:1:1
              harness="llamacpp" source="coder.gguf" quant=(unset) ctx_size=(unset) args=[]
              vram_mb=0 min_devices=0 ram_mb=0 min_device_vram_mb=0 pinned_on=[] replicas=0 priority=50 require_labels={}
            model gemma-3-270m aliases=[] at fleet.toml:7:1
              harness="llamacpp" source="gemma.gguf" quant=(unset) ctx_size=(unset) args=[]
              vram_mb=0 min_devices=0 ram_mb=0 min_device_vram_mb=0 pinned_on=[] replicas=0 priority=50 require_labels={}
            key alice sha256=214a711f… models=Some(["coder", "gemma-*"]) KeyLimits { rpm: Some(60), tpm: Some(100000), max_concurrency: Some(4), tokens_per_day: Some(2000000), tokens_per_month: Some(40000000) } priority=interactive expires=Some(1798675200000) revoked=false operator=read_only at keys.toml:3:1
            key nightly-eval sha256=f62616b1… models=None KeyLimits { rpm: None, tpm: None, max_concurrency: None, tokens_per_day: None, tokens_per_month: None } priority=batch expires=Some(1798732800000) revoked=true operator=none at keys.toml:16:1
            key ops sha256=00000000… models=Some([]) KeyLimits { rpm: None, tpm: None, max_concurrency: None, tokens_per_day: None, tokens_per_month: None } priority=7 expires=None revoked=false operator=admin at ops.toml:1:8
        "#]],
    );
}

#[test]
fn digests_must_be_sha256_hex_and_secrets_are_not_echoed() {
    check(
        &with_models(
            r#"
[[key]]
name = "a"
sha256 = "abc"

[[key]]
name = "b"
sha256 = "ck-3f9a0c7e1b2d4a5c6e7f8091a2b3c4d5e6f708192a3b4c5d"

[[key]]
name = "c"
"#,
        ),
        expect![[r#"
            keys.toml:4:10: error: sha256 must be the 64 hex digits of the secret's SHA-256 digest, found "abc"; `cortex key new` writes it, or `printf %s SECRET | sha256sum`
            keys.toml:8:10: error: sha256 must be the 64 hex digits of the secret's SHA-256 digest, found "ck-3f9…" (51 characters); this looks like a secret itself: remove it from the file (and from git history), and write its digest instead (`cortex key new` does both)
            keys.toml:10:1: error: missing required key "sha256" in [[key]]
        "#]],
    );
}

#[test]
fn models_must_be_declared_and_globs_should_match_one() {
    check(
        &with_models(
            r#"
[[key]]
name = "a"
sha256 = "214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d"
models = ["coder", "codr", "llama-*", ""]
"#,
        ),
        expect![[r#"
            keys.toml:5:20: error: unknown model "codr" in models; known models: "Qwen/Qwen3-Coder-30B", "gemma-3-270m"
            keys.toml:5:28: warning: "llama-*" matches no declared model (it may match models loaded outside the fleet)
            keys.toml:5:39: error: a model pattern must not be empty
        "#]],
    );
}

#[test]
fn names_and_digests_are_unique_across_files() {
    check(
        r#"
[[key]]
name = "alice"
sha256 = "214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d"
#- more.toml
[[key]]
name = "alice"
sha256 = "f62616b17bdd474b5411c5e2973b41f103341e1e3db479fbcb738f6f76373d8f"

[[key]]
name = "bob"
sha256 = "214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d"

[[key]]
name = "has space"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#,
        expect![[r#"
            more.toml:2:8: error: duplicate key name "alice"; first declared at fleet.toml:2:8
            more.toml:7:10: error: key "bob" has the same sha256 as key "alice" at fleet.toml:3:10; each key needs its own secret
            more.toml:10:8: error: key name must not contain whitespace or control characters, found "has space"
        "#]],
    );
}

#[test]
fn limits_priorities_expiry_and_access_are_checked() {
    check(
        r#"
[[key]]
name = "a"
sha256 = "214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d"
rpm = 0
tpm = -5
tokens_per_day = "lots"
priority = "urgent"
expires = "2026-12-31"
operator = "root"
revoked = "yes"
budget = 10

[[key]]
name = "b"
sha256 = "f62616b17bdd474b5411c5e2973b41f103341e1e3db479fbcb738f6f76373d8f"
priority = 1.5
expires = 12:00:00
"#,
        expect![[r#"
            fleet.toml:4:7: error: rpm must be at least 1; leave it out for no limit
            fleet.toml:5:7: error: tpm must be a non-negative integer, found -5
            fleet.toml:6:18: error: tokens_per_day must be a non-negative integer, found string
            fleet.toml:7:12: error: priority must be "interactive", "batch" or an integer (higher goes first), found "urgent"
            fleet.toml:8:11: error: expires must be a date like 2026-12-31 or a date-time like 2026-12-31T18:00:00Z (unquoted), after 1970, found string
            fleet.toml:9:12: error: operator must be "none", "read_only" or "admin", found "root"
            fleet.toml:10:11: error: revoked must be true or false, found string
            fleet.toml:11:1: error: unknown key "budget" in [[key]]; expected one of: name, sha256, models, rpm, tpm, max_concurrency, tokens_per_day, tokens_per_month, priority, expires, revoked, operator
            fleet.toml:16:12: error: priority must be "interactive", "batch" or an integer (higher goes first), found float
            fleet.toml:17:11: error: expires must be a date like 2026-12-31 or a date-time like 2026-12-31T18:00:00Z (unquoted), after 1970, found 12:00:00
        "#]],
    );
}

#[test]
fn scope_matches_the_name_sent_the_id_and_every_alias() {
    let loaded = load(&files(&with_models(
        r#"
[[key]]
name = "coder-only"
sha256 = "214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d"
models = ["coder"]

[[key]]
name = "qwen-glob"
sha256 = "f62616b17bdd474b5411c5e2973b41f103341e1e3db479fbcb738f6f76373d8f"
models = ["Qwen/*", "outside-*"]
"#,
    )));
    let fleet = loaded.fleet.expect("valid fleet");
    let coder = fleet.model("coder");
    let gemma = fleet.model("gemma-3-270m");
    let by_alias = fleet.key("coder-only").expect("declared");
    assert!(by_alias.may_use("Qwen/Qwen3-Coder-30B", coder) && by_alias.may_use("coder", coder));
    assert!(!by_alias.may_use("gemma-3-270m", gemma));
    let by_glob = fleet.key("qwen-glob").expect("declared");
    assert!(by_glob.may_use("coder", coder), "the alias resolves to an id the glob matches");
    assert!(by_glob.may_use("outside-model", None) && !by_glob.may_use("other", None));
    assert_eq!(
        fleet
            .key_by_digest("214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d")
            .map(|k| &*k.name),
        Some("coder-only")
    );
}
