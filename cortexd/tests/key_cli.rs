//! `cortex key new` and `cortex key revoke` on a real fleet directory: the secret is printed
//! once and only its digest is written, a commented fleet file changes by the added table
//! alone, and a revocation is one added line.

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn cortex(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cortex")).args(args).current_dir(cwd).output().expect("cortex runs")
}

fn ok(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    text
}

/// A fleet file the way people write them: comments above, beside and after the tables.
const COMMENTED: &str = r#"# The lab's fleet.
# Reviewed in git; see docs/fleet-format.md.

[[model]]   # the coder everyone uses
id = "coder"
harness = "llamacpp"
source = "coder.gguf"   # Q4_K_M

# Alice's laptop.
[[key]]
name = "alice"
sha256 = "214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d"  # rotated in May
models = [
    "coder",   # only this
]

# --- end of keys ---
"#;

#[test]
fn key_new_adds_its_table_alone_and_prints_the_secret_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = dir.path().join("fleet");
    std::fs::create_dir(&fleet).expect("fleet dir");
    std::fs::write(fleet.join("fleet.toml"), COMMENTED).expect("written");
    let out = ok(&cortex(
        &[
            "key",
            "new",
            "nightly",
            "--fleet",
            "fleet",
            "--models",
            "coder",
            "--tokens-per-day",
            "2000000",
            "--priority",
            "batch",
            "--expires",
            "2027-06-30",
        ],
        dir.path(),
    ));
    let secret =
        out.lines().map(str::trim).find(|l| l.starts_with("ck-")).expect("the secret is printed").to_owned();
    assert_eq!(secret.len(), 3 + 48);
    let after = std::fs::read_to_string(fleet.join("fleet.toml")).expect("read");
    assert!(!after.contains(&secret), "the secret is never written");
    let digest: String = Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let added = after.strip_prefix(COMMENTED).expect("everything that was there is kept byte for byte");
    let comment = added.lines().nth(1).expect("a comment line").to_owned();
    assert!(comment.starts_with("# nightly: made by `cortex key new` on "), "{comment}");
    assert_eq!(
        added,
        format!(
            "\n{comment}\n[[key]]\nname = \"nightly\"\nsha256 = \"{digest}\"\nmodels = [\"coder\"]\ntokens_per_day = 2000000\npriority = \"batch\"\nexpires = 2027-06-30\n"
        )
    );
    let check = cortex(&["validate", "--fleet", "fleet"], dir.path());
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    // The same name again is refused; a dry run writes nothing and shows no secret.
    assert!(!cortex(&["key", "new", "nightly", "--fleet", "fleet"], dir.path()).status.success());
    let dry = ok(&cortex(&["key", "new", "other", "--fleet", "fleet", "--dry-run"], dir.path()));
    assert!(!dry.contains("ck-") && dry.contains("Dry run"), "{dry}");
    assert_eq!(std::fs::read_to_string(fleet.join("fleet.toml")).expect("read"), after);

    let out = ok(&cortex(&["key", "revoke", "alice", "--fleet", "fleet"], dir.path()));
    assert!(out.contains("+revoked = true"), "{out}");
    let revoked = std::fs::read_to_string(fleet.join("fleet.toml")).expect("read");
    assert_eq!(
        revoked,
        after.replace(
            "    \"coder\",   # only this\n]\n",
            "    \"coder\",   # only this\n]\nrevoked = true\n"
        )
    );
    let again = ok(&cortex(&["key", "revoke", "alice", "--fleet", "fleet"], dir.path()));
    assert!(again.contains("revoked already"), "{again}");
}

#[test]
fn a_fleet_without_keys_gets_a_keys_file_and_bad_flags_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = dir.path().join("fleet");
    std::fs::create_dir(&fleet).expect("fleet dir");
    std::fs::write(fleet.join("fleet.toml"), "[[model]]\nid = \"m\"\nharness = \"sim\"\nsource = \"m\"\n")
        .expect("written");
    let refused = cortex(&["key", "new", "x", "--fleet", "fleet", "--models", "nope"], dir.path());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown model \"nope\""), "{refused:?}");
    assert!(!fleet.join("keys.toml").exists(), "nothing written");
    ok(&cortex(&["key", "new", "x", "--fleet", "fleet", "--operator", "read_only"], dir.path()));
    let keys = std::fs::read_to_string(fleet.join("keys.toml")).expect("keys.toml created");
    assert!(keys.contains("name = \"x\"") && keys.contains("operator = \"read_only\""), "{keys}");
}
