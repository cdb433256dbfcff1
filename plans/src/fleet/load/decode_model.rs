//! One `[[model]]` table into a [`ModelDeclaration`], with the checks a model can pass or fail
//! on its own: names, the source path, and the memory and device numbers agreeing.

use std::collections::BTreeSet;

use toml_edit::TableLike;

use crate::fleet::load::decode_contention;
use crate::fleet::load::fields::{Fields, check_name};
use crate::fleet::load::{Located, Sink, Site};
use crate::fleet::{ModelSpec, Profile};

const MODEL_KEYS: [&str; 22] = [
    "id",
    "aliases",
    "harness",
    "source",
    "quant",
    "vram_mb",
    "min_devices",
    "ram_mb",
    "min_device_vram_mb",
    "ctx_size",
    "args",
    "pinned_on",
    "replicas",
    "priority",
    "require_labels",
    // The contention keys (decode_contention::KEYS), overriding [policy].
    "min_residency",
    "max_wait",
    "max_concurrency",
    "queue_length",
    "queue_timeout",
    "routing",
    "max_output_tokens",
];

/// The priority of a model that does not set one: the middle of the usual 0..=100 range.
const DEFAULT_PRIORITY: i64 = 50;

/// A `[[model]]` and the places that later, fleet-wide checks point at.
pub(crate) struct ModelDeclaration<'a> {
    pub(crate) spec: ModelSpec,
    /// `None` when the id is missing or unusable (already reported).
    pub(crate) id_at: Option<Site<'a>>,
    /// The usable aliases, each where it was written.
    pub(crate) aliases: Vec<Located<'a, String>>,
    pub(crate) pinned_on: Vec<Located<'a, String>>,
    /// Where `replicas` was written, when it was.
    pub(crate) replicas_at: Option<Site<'a>>,
    /// Where `require_labels` was written, when it was.
    pub(crate) require_labels_at: Option<Site<'a>>,
}

/// The memory and device numbers as written, before defaults, so checks know what was set.
struct Resources<'a> {
    vram_mb: Option<Located<'a, u64>>,
    min_devices: Option<Located<'a, u32>>,
    min_device_vram_mb: Option<Located<'a, u64>>,
}

pub(crate) fn model<'a>(table: &dyn TableLike, at: Site<'a>, sink: &mut Sink) -> ModelDeclaration<'a> {
    let mut fields = Fields::new(table, "[[model]]", at, &MODEL_KEYS, sink);
    let id = fields.required_string("id");
    let aliases = fields.strings("aliases").unwrap_or_default();
    let harness = fields.required_string("harness");
    let source = fields.required_string("source");
    let quant = fields.string("quant");
    let resources = Resources {
        vram_mb: fields.unsigned("vram_mb"),
        min_devices: fields.unsigned32("min_devices"),
        min_device_vram_mb: fields.unsigned("min_device_vram_mb"),
    };
    let ram_mb = fields.unsigned("ram_mb");
    let ctx_size = fields.unsigned32("ctx_size");
    let args = fields.strings("args").unwrap_or_default();
    let pinned_on = fields.strings("pinned_on").unwrap_or_default();
    let replicas = fields.unsigned32("replicas");
    let priority = fields.integer("priority");
    let require_labels = fields.string_map("require_labels");
    let contention = decode_contention::read(&mut fields);
    let max_output_tokens = fields.unsigned("max_output_tokens");

    let id_ok = id.as_ref().is_some_and(|id| check_name(id, "model id", sink));
    let aliases: Vec<_> = aliases.into_iter().filter(|alias| check_name(alias, "alias", sink)).collect();
    for (value, what) in [(&harness, "harness"), (&quant, "quant")] {
        if let Some(value) = value.as_ref().filter(|value| value.value.is_empty()) {
            sink.error(value.at, format!("{what} must not be empty"));
        }
    }
    if let Some(source) = &source {
        check_source(source, sink);
    }
    if let Some(ctx_size) = ctx_size.as_ref().filter(|ctx_size| ctx_size.value == 0) {
        sink.error(
            ctx_size.at,
            "ctx_size must be a positive integer, found 0; leave it out for the engine's default",
        );
    }
    if let Some(cap) = max_output_tokens.as_ref().filter(|cap| cap.value == 0) {
        sink.error(cap.at, "max_output_tokens must be a positive integer, found 0; leave it out for no cap");
    }
    check_pinned_twice(&pinned_on, sink);
    let (vram_mb, min_devices, min_device_vram_mb) = check_resources(&resources, sink);

    ModelDeclaration {
        id_at: id.as_ref().filter(|_| id_ok).map(|id| id.at),
        replicas_at: replicas.as_ref().map(|replicas| replicas.at),
        require_labels_at: require_labels.as_ref().map(|labels| labels.at),
        spec: ModelSpec {
            id: id.map(|id| id.value).unwrap_or_default(),
            aliases: aliases.iter().map(|alias| alias.value.clone()).collect(),
            profile: Profile {
                harness: harness.map(|harness| harness.value).unwrap_or_default(),
                source: source.map(|source| source.value).unwrap_or_default(),
                quant: quant.map(|quant| quant.value),
                ctx_size: ctx_size.map(|ctx_size| ctx_size.value),
                args: args.into_iter().map(|arg| arg.value).collect(),
            },
            vram_mb,
            min_devices,
            ram_mb: ram_mb.map_or(0, |ram_mb| ram_mb.value),
            min_device_vram_mb,
            pinned_on: pinned_on.iter().map(|neuron| neuron.value.clone()).collect(),
            replicas: replicas.map_or(0, |replicas| replicas.value),
            priority: priority.map_or(DEFAULT_PRIORITY, |priority| priority.value),
            require_labels: require_labels.map(|labels| labels.value).unwrap_or_default(),
            contention,
            max_output_tokens: max_output_tokens.map(|cap| cap.value),
            origin: at.origin(),
        },
        aliases,
        pinned_on,
    }
}

/// The neuron only loads sources inside its `models_dir`; a path that leaves it would be
/// refused at load time, so it is refused here, where the operator can see where it was written.
fn check_source(source: &Located<'_, String>, sink: &mut Sink) {
    let path = &source.value;
    let bytes = path.as_bytes();
    let has_drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if path.is_empty() {
        sink.error(source.at, "source must not be empty");
    } else if path.starts_with('/') || path.starts_with('\\') || has_drive {
        sink.error(
            source.at,
            format!(
                "source must be a path relative to the neuron's models_dir, found absolute path {path:?}"
            ),
        );
    } else if path.split(['/', '\\']).any(|part| part == "..") {
        sink.error(
            source.at,
            format!("source must stay inside the neuron's models_dir, found \"..\" in {path:?}"),
        );
    }
}

fn check_pinned_twice(pinned_on: &[Located<'_, String>], sink: &mut Sink) {
    let mut seen = BTreeSet::new();
    for neuron in pinned_on {
        if !seen.insert(neuron.value.as_str()) {
            sink.error(neuron.at, format!("pinned_on names neuron {:?} twice", neuron.value));
        }
    }
}

/// The defaults and the rules that tie `vram_mb`, `min_devices` and `min_device_vram_mb`
/// together. Returns the three numbers with defaults applied.
///
/// `min_devices` defaults to 1 when `vram_mb` is set and to 0 (a CPU model) when it is not, so
/// the common cases need one number. A GPU model without a VRAM figure, or a CPU model with one,
/// is refused rather than guessed at: the planner's accounting depends on them.
fn check_resources(resources: &Resources<'_>, sink: &mut Sink) -> (u64, u32, u64) {
    let vram_mb = resources.vram_mb.as_ref().map_or(0, |vram| vram.value);
    let min_devices = resources.min_devices.as_ref().map_or(u32::from(vram_mb > 0), |min| min.value);
    let floor = resources.min_device_vram_mb.as_ref().map_or(0, |floor| floor.value);
    match (&resources.vram_mb, &resources.min_devices, &resources.min_device_vram_mb) {
        (_, Some(min), _) if min.value > 0 && vram_mb == 0 => sink.error(
            min.at,
            format!(
                "min_devices = {min_devices} needs vram_mb > 0, the accelerator memory the model needs; \
                 set vram_mb, or min_devices = 0 for a CPU model"
            ),
        ),
        (Some(vram), Some(min), _) if min.value == 0 && vram_mb > 0 => sink
            .error(vram.at, format!("vram_mb must be 0 for a CPU model (min_devices = 0), found {vram_mb}")),
        (_, _, Some(floor_at)) if floor > 0 && min_devices == 0 => sink.error(
            floor_at.at,
            format!("min_device_vram_mb must be 0 for a CPU model (min_devices = 0), found {floor}"),
        ),
        (_, _, Some(floor_at)) if floor.saturating_mul(u64::from(min_devices)) > vram_mb => sink.error(
            floor_at.at,
            format!(
                "min_device_vram_mb = {floor} on each of min_devices = {min_devices} needs {} MB, \
                 more than vram_mb = {vram_mb}",
                floor.saturating_mul(u64::from(min_devices))
            ),
        ),
        _ => {}
    }
    (vram_mb, min_devices, floor)
}
