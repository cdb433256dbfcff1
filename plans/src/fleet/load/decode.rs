//! One fleet file's TOML into declarations: finds the `[policy]`, `[[neuron]]`, `[[model]]` and
//! `[[key]]` tables, reads their keys, and checks what each declaration can check on its own.

use toml_edit::{Document, Item, TableLike, Value};

use crate::duration;
use crate::fleet::load::decode_contention;
use crate::fleet::load::decode_key::{self, KeyDeclaration};
use crate::fleet::load::decode_model::{self, ModelDeclaration};
use crate::fleet::load::fields::{Fields, check_name};
use crate::fleet::load::{Located, Sink, Site};
use crate::fleet::{Eviction, LoadFactor, NeuronSpec, NeuronState, Policy, ReconcileMode, SourceMode};

/// The tables a fleet file may contain, as written in messages.
const TOP_LEVEL: &str = "[policy], [[neuron]], [[model]], [[key]]";
const POLICY_KEYS: [&str; 12] = [
    "eviction",
    "reconcile",
    "prune",
    "idle_unload_after",
    "source",
    // The contention keys (decode_contention::KEYS): fleet-wide defaults.
    "min_residency",
    "max_wait",
    "max_concurrency",
    "queue_length",
    "queue_timeout",
    "routing",
    "affinity_load_factor",
];
const NEURON_KEYS: [&str; 4] = ["name", "endpoint", "labels", "state"];

/// Everything declared in every file, in file (path) order, not yet checked against each other.
#[derive(Default)]
pub(super) struct Declarations<'a> {
    pub(super) policies: Vec<Located<'a, Policy>>,
    pub(super) neurons: Vec<NeuronDeclaration<'a>>,
    pub(super) models: Vec<ModelDeclaration<'a>>,
    pub(super) keys: Vec<KeyDeclaration<'a>>,
}

/// A `[[neuron]]` and the place of its name, for duplicate-name messages.
pub(super) struct NeuronDeclaration<'a> {
    pub(super) spec: NeuronSpec,
    /// `None` when the name is missing or unusable (already reported).
    pub(super) name_at: Option<Site<'a>>,
}

/// Parses `text` (the content of `path`) and adds its declarations.
pub(super) fn file<'a>(path: &'a str, text: &'a str, declarations: &mut Declarations<'a>, sink: &mut Sink) {
    let start = Site::new(path, text, 0);
    let document = match Document::parse(text) {
        Ok(document) => document,
        Err(error) => {
            // toml_edit stops at the first syntax error of a file; the other files are still read.
            let offset = error.span().map_or(0, |span| span.start);
            sink.error(start.at(offset), format!("invalid TOML: {}", error.message().trim_end()));
            return;
        }
    };
    let root = document.as_table();
    if root.is_empty() {
        sink.warning(start, format!("this file declares nothing; expected any of: {TOP_LEVEL}"));
    }
    for (key, item) in root.iter() {
        let key_at = root.key(key).and_then(|k| k.span()).map_or(start, |span| start.at(span.start));
        match key {
            "policy" => {
                if let Some((table, at)) = single_table(item, key_at, sink) {
                    let policy = policy(table, at, sink);
                    declarations.policies.push(Located { value: policy, at });
                }
            }
            "neuron" => {
                for (table, at) in array_of_tables(item, "neuron", key_at, sink) {
                    declarations.neurons.push(neuron(table, at, sink));
                }
            }
            "model" => {
                for (table, at) in array_of_tables(item, "model", key_at, sink) {
                    declarations.models.push(decode_model::model(table, at, sink));
                }
            }
            "key" => {
                for (table, at) in array_of_tables(item, "key", key_at, sink) {
                    declarations.keys.push(decode_key::key(table, at, sink));
                }
            }
            _ => {
                let what = if item.is_table_like() || item.is_array_of_tables() { "table" } else { "key" };
                sink.error(key_at, format!("unknown top-level {what} {key:?}; expected one of: {TOP_LEVEL}"));
            }
        }
    }
}

/// Where a table starts: its `[header]` or the `{` of an inline table.
fn table_site<'a>(item: &Item, fallback: Site<'a>) -> Site<'a> {
    // toml_edit gives implicit tables (only known through `[policy.x]`) an empty span at 0.
    match item.span() {
        Some(span) if !span.is_empty() => fallback.at(span.start),
        _ => fallback,
    }
}

/// `[policy]` or `policy = { ... }`.
fn single_table<'d, 'a>(
    item: &'d Item,
    key_at: Site<'a>,
    sink: &mut Sink,
) -> Option<(&'d dyn TableLike, Site<'a>)> {
    match item.as_table_like() {
        Some(table) => Some((table, table_site(item, key_at))),
        None => {
            let found = item.type_name();
            sink.error(key_at, format!("policy must be a single table written [policy], found {found}"));
            None
        }
    }
}

/// `[[name]]` tables, or `name = [{ ... }, ...]`, which TOML treats the same.
fn array_of_tables<'d, 'a>(
    item: &'d Item,
    name: &str,
    key_at: Site<'a>,
    sink: &mut Sink,
) -> Vec<(&'d dyn TableLike, Site<'a>)> {
    match item {
        Item::ArrayOfTables(tables) => tables
            .iter()
            .map(|table| {
                let at = table.span().filter(|span| !span.is_empty()).map_or(key_at, |s| key_at.at(s.start));
                (table as &dyn TableLike, at)
            })
            .collect(),
        Item::Value(Value::Array(array)) => {
            let mut tables = Vec::new();
            for (index, value) in array.iter().enumerate() {
                let at = value.span().map_or(key_at, |span| key_at.at(span.start));
                match value.as_inline_table() {
                    Some(table) => tables.push((table as &dyn TableLike, at)),
                    None => {
                        let found = value.type_name();
                        sink.error(at, format!("{name}[{index}] must be a table, found {found}"));
                    }
                }
            }
            tables
        }
        _ => {
            let found = item.type_name();
            sink.error(
                key_at,
                format!("{name} must be an array of tables written [[{name}]], found {found}"),
            );
            Vec::new()
        }
    }
}

fn policy(table: &dyn TableLike, at: Site<'_>, sink: &mut Sink) -> Policy {
    let mut fields = Fields::new(table, "[policy]", at, &POLICY_KEYS, sink);
    let defaults = Policy::default();
    let eviction = fields.choice("eviction", &[("lru", Eviction::Lru), ("priority", Eviction::Priority)]);
    let reconcile = fields.choice("reconcile", &[("auto", ReconcileMode::Auto), ("off", ReconcileMode::Off)]);
    let source =
        fields.choice("source", &[("worktree", SourceMode::Worktree), ("commit", SourceMode::Commit)]);
    let prune = fields.bool("prune");
    let contention = decode_contention::read(&mut fields);
    let affinity_load_factor = load_factor(&mut fields);
    let idle_unload_after_ms =
        fields.string("idle_unload_after").and_then(|text| idle_unload_after(text, sink));
    Policy {
        contention,
        eviction: eviction.unwrap_or(defaults.eviction),
        reconcile: reconcile.unwrap_or(defaults.reconcile),
        prune: prune.unwrap_or(defaults.prune),
        idle_unload_after_ms,
        source: source.unwrap_or(defaults.source),
        affinity_load_factor: affinity_load_factor.unwrap_or(defaults.affinity_load_factor),
    }
}

/// `affinity_load_factor`: a number from 1 to 100 (`1.25`; an integer is accepted too).
fn load_factor(fields: &mut Fields<'_, '_, '_>) -> Option<LoadFactor> {
    let (item, at) = fields.item("affinity_load_factor")?;
    let number = item.as_float().or_else(|| item.as_integer().map(|n| n as f64));
    let found = number.map_or_else(|| item.type_name().to_owned(), |n| n.to_string());
    let factor = number.and_then(LoadFactor::from_f64);
    if factor.is_none() {
        let (min, max) = (LoadFactor::MIN, LoadFactor::MAX);
        fields.sink().error(
            at,
            format!("affinity_load_factor must be a number from {min} to {max}, like 1.25, found {found}"),
        );
    }
    factor
}

fn idle_unload_after(text: Located<'_, String>, sink: &mut Sink) -> Option<u64> {
    match duration::parse_ms(&text.value) {
        Some(0) => {
            let message = "idle_unload_after must be longer than 0; leave it out to keep idle models loaded";
            sink.error(text.at, message);
            None
        }
        Some(ms) => Some(ms),
        None => {
            let found = &text.value;
            sink.error(
                text.at,
                format!(
                    "idle_unload_after must be a duration like \"90s\", \"30m\" or \"1h30m\" \
                     (units ms, s, m, h, d), found {found:?}"
                ),
            );
            None
        }
    }
}

fn neuron<'a>(table: &dyn TableLike, at: Site<'a>, sink: &mut Sink) -> NeuronDeclaration<'a> {
    let mut fields = Fields::new(table, "[[neuron]]", at, &NEURON_KEYS, sink);
    let name = fields.required_string("name");
    let endpoint = fields.required_string("endpoint");
    let labels = fields.string_map("labels");
    let state = fields.choice(
        "state",
        &[
            ("active", NeuronState::Active),
            ("cordoned", NeuronState::Cordoned),
            ("draining", NeuronState::Draining),
        ],
    );
    let name_ok = name.as_ref().is_some_and(|name| check_name(name, "neuron name", sink));
    if let Some(endpoint) = &endpoint {
        check_endpoint(endpoint, sink);
    }
    NeuronDeclaration {
        name_at: name.as_ref().filter(|_| name_ok).map(|name| name.at),
        spec: NeuronSpec {
            name: name.map(|name| name.value).unwrap_or_default(),
            endpoint: endpoint.map(|endpoint| endpoint.value).unwrap_or_default(),
            labels: labels.map(|labels| labels.value).unwrap_or_default(),
            state: state.unwrap_or_default(),
            origin: at.origin(),
        },
    }
}

fn check_endpoint(endpoint: &Located<'_, String>, sink: &mut Sink) {
    let url = &endpoint.value;
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let has_host =
        rest.is_some_and(|rest| rest.split(['/', '?', '#']).next().is_some_and(|host| !host.is_empty()));
    let clean = !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if !(has_host && clean) {
        sink.error(
            endpoint.at,
            format!(
                "endpoint must be an http:// or https:// URL with a host, like \
                 \"http://beast.internal:13131\", found {url:?}"
            ),
        );
    }
}
