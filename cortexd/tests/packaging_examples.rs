//! packaging/cortex.example.toml (installed as /etc/cortex/cortex.toml) parses, shows every
//! daemon setting, states the true defaults, and its commented-out settings are valid too.

use std::path::Path;

use cortexd::Config;

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/cortex.example.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The field names of `Config` and its tables, read from its Debug form (`name: value`).
fn field_names() -> Vec<String> {
    let debug = format!("{:?}", Config::default());
    let mut names = Vec::new();
    for (i, _) in debug.match_indices(": ") {
        let start = debug[..i].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |s| s + 1);
        let name = &debug[start..i];
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            names.push(name.to_owned());
        }
    }
    names
}

#[test]
fn the_example_is_the_defaults_plus_the_packaged_token_file() {
    let config = Config::parse(&example()).expect("the example parses");
    let expected = Config { neuron_token_file: Some("/etc/cortex/neuron.token".into()), ..Config::default() };
    assert_eq!(format!("{config:?}"), format!("{expected:?}"), "the example must state the defaults");
}

#[test]
fn the_example_shows_every_setting() {
    let text = example();
    let names = field_names();
    assert!(names.len() > 15, "Debug parsing found too few fields: {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            !text.lines().any(|l| {
                let l = l.trim_start_matches("# ");
                l.starts_with(&format!("{n} = ")) || l == format!("[{n}]")
            })
        })
        .collect();
    assert!(missing.is_empty(), "cortex.example.toml does not show {missing:?}");
}

#[test]
fn the_commented_settings_are_valid() {
    let uncommented: String = example()
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            // A commented-out table (`# [cluster]`) comes back with its settings.
            Some(rest) if rest.starts_with('[') && rest.ends_with(']') => format!("{rest}\n"),
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')) =>
            {
                format!("{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let config = Config::parse(&uncommented).expect("the example with every setting uncommented parses");
    assert!(config.admin_key.is_some() && config.neuron_token.is_some() && config.api_keys_file.is_some());
    assert!(config.cluster.is_some_and(|c| c.etcd.len() == 3), "the cluster table parses");
}
