//! Property tests of fleet loading: whatever the text, `load` returns diagnostics and never
//! panics, and a fleet comes back exactly when no diagnostic is an error.

use proptest::prelude::*;

use crate::fleet::load::load;

/// A valid fleet file that mutations start from, using every table and most keys.
const VALID: &str = r#"[policy]
eviction = "priority"
idle_unload_after = "1h30m"

[[neuron]]
name = "beast"
endpoint = "http://beast:13131"
labels = { tier = "large" }

[[model]]
id = "m"
aliases = ["alias"]
harness = "llamacpp"
source = "m.gguf"
vram_mb = 19000
min_devices = 2
min_device_vram_mb = 9000
ctx_size = 4096
args = ["--jinja"]
pinned_on = ["beast"]
replicas = 1
require_labels = { tier = "large" }
"#;

/// Loads `files` and checks the invariants every load keeps.
fn load_and_check(files: &[(String, String)]) {
    let loaded = load(files);
    assert_eq!(loaded.fleet.is_some(), !loaded.has_errors());
    let mut sorted = loaded.diagnostics.clone();
    sorted.sort();
    assert_eq!(sorted, loaded.diagnostics);
    for diagnostic in &loaded.diagnostics {
        assert!(diagnostic.line >= 1 && diagnostic.column >= 1);
        assert!(files.iter().any(|(path, _)| *path == diagnostic.path));
    }
}

/// Text made of fleet-like pieces, so that random input reaches past the TOML parser.
fn fleet_like_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[policy]\n".to_owned()),
        Just("[[neuron]]\n".to_owned()),
        Just("[[model]]\n".to_owned()),
        Just("[model.x]\n".to_owned()),
        Just("[[key]]\n".to_owned()),
        Just("expires = 2026-02-30T25:61:00Z\n".to_owned()),
        "(id|name|endpoint|source|harness|aliases|vram_mb|min_devices|pinned_on|replicas|labels|eviction|sha256|models|priority|expires|rpm) = "
            .prop_map(|key| key.to_owned()),
        "\"[a-z:/.]{0,12}\"\n".prop_map(|value| value.to_owned()),
        "-?[0-9]{1,20}\n".prop_map(|value| value.to_owned()),
        Just("[\"beast\", 1]\n".to_owned()),
        Just("{ tier = \"large\" }\n".to_owned()),
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// `VALID` with a byte range replaced by `insert` (cut at character boundaries).
fn mutate(start: usize, len: usize, insert: &str) -> String {
    let mut start = start % (VALID.len() + 1);
    while !VALID.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + len).min(VALID.len());
    while !VALID.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{insert}{}", &VALID[..start], &VALID[end..])
}

#[test]
fn the_mutation_base_is_valid() {
    let loaded = load(&[("fleet.toml".to_owned(), VALID.to_owned())]);
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        load_and_check(&[("fleet.toml".to_owned(), text)]);
    }

    #[test]
    fn fleet_like_text_never_panics(a in fleet_like_text(), b in fleet_like_text()) {
        load_and_check(&[("b.toml".to_owned(), b), ("a.toml".to_owned(), a)]);
    }

    #[test]
    fn mutations_of_a_valid_file_never_panic(
        start in 0..VALID.len(),
        len in 0usize..16,
        insert in prop_oneof![Just(String::new()), "[\\[\\]{}=\",.#\\n a-z0-9-]{0,8}".prop_map(|s| s.to_owned()), any::<String>()],
    ) {
        let mutated = mutate(start, len, &insert);
        load_and_check(&[("fleet.toml".to_owned(), mutated.clone()), ("other.toml".to_owned(), mutated)]);
    }
}
