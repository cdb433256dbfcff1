//! The fleet-wide checks, once every file is read: one `[policy]`, unique neuron names, unique
//! model names (ids and aliases together), references and counts that need the neurons, and
//! unique key names and digests whose model patterns name declared models.

use std::collections::{BTreeMap, HashMap};

use crate::fleet::keys::{self, KeySpec};
use crate::fleet::load::decode::{Declarations, NeuronDeclaration};
use crate::fleet::load::decode_key::KeyDeclaration;
use crate::fleet::load::decode_model::ModelDeclaration;
use crate::fleet::load::{Located, Sink, Site};
use crate::fleet::{Fleet, NeuronSpec, Policy};

/// Merges every file's declarations into one fleet, reporting what conflicts. The fleet is only
/// meaningful when no error was reported; the caller decides that.
pub(super) fn merge(declarations: Declarations<'_>, digest: String, sink: &mut Sink) -> Fleet {
    let policy = merge_policies(&declarations.policies, sink);
    // A neuron whose name was unusable (already reported) could be the one a pin meant: then
    // "unknown neuron" would be noise.
    let all_named = declarations.neurons.iter().all(|neuron| neuron.name_at.is_some());
    let neurons = merge_neurons(declarations.neurons, sink);
    check_model_names(&declarations.models, sink);
    for model in &declarations.models {
        check_pins(model, &neurons, all_named, sink);
        check_replicas_and_labels(model, &neurons, sink);
    }
    let keys = merge_keys(declarations.keys, &declarations.models, sink);
    let models = declarations.models.into_iter().map(|model| model.spec).collect();
    Fleet { policy, neurons, models, keys, digest }
}

/// The keys in declaration order, reporting names and digests declared twice and model
/// patterns that name no declared model.
fn merge_keys(
    keys: Vec<KeyDeclaration<'_>>,
    models: &[ModelDeclaration<'_>],
    sink: &mut Sink,
) -> Vec<KeySpec> {
    let mut names: HashMap<&str, Site<'_>> = HashMap::new();
    let mut digests: HashMap<&str, (&str, Site<'_>)> = HashMap::new();
    // A model whose id was unusable (already reported) could be the one a pattern meant.
    let all_named = models.iter().all(|model| model.id_at.is_some());
    for key in &keys {
        if let Some(at) = key.name_at {
            match names.get(key.spec.name.as_str()) {
                Some(first) => {
                    let (name, first) = (&key.spec.name, first.describe());
                    sink.error(at, format!("duplicate key name {name:?}; first declared at {first}"));
                }
                None => {
                    names.insert(&key.spec.name, at);
                }
            }
        }
        if let Some(at) = key.sha256_at {
            match digests.get(key.spec.sha256.as_str()) {
                Some((other, first)) => sink.error(
                    at,
                    format!(
                        "key {:?} has the same sha256 as key {other:?} at {}; each key needs its own secret",
                        key.spec.name,
                        first.describe()
                    ),
                ),
                None => {
                    digests.insert(&key.spec.sha256, (&key.spec.name, at));
                }
            }
        }
        for pattern in &key.models {
            check_model_pattern(pattern, models, all_named, sink);
        }
    }
    keys.into_iter().map(|key| key.spec).collect()
}

/// A literal must be a declared model's id or alias (an error otherwise: a typo would lock the
/// key out); a glob that matches none may match a model loaded outside the fleet (a warning).
fn check_model_pattern(
    pattern: &Located<'_, String>,
    models: &[ModelDeclaration<'_>],
    all_named: bool,
    sink: &mut Sink,
) {
    let value = &pattern.value;
    if value.is_empty() {
        sink.error(pattern.at, "a model pattern must not be empty");
        return;
    }
    let matches = |model: &&ModelDeclaration<'_>| {
        std::iter::once(&model.spec.id).chain(&model.spec.aliases).any(|name| keys::glob_match(value, name))
    };
    if models.iter().any(|model| matches(&model)) || !all_named {
        return;
    }
    if keys::is_glob(value) {
        sink.warning(
            pattern.at,
            format!("{value:?} matches no declared model (it may match models loaded outside the fleet)"),
        );
    } else {
        sink.error(pattern.at, format!("unknown model {value:?} in models; {}", known_models(models)));
    }
}

/// The declared model ids, for messages about unknown ones (the first few).
fn known_models(models: &[ModelDeclaration<'_>]) -> String {
    const SHOWN: usize = 8;
    if models.is_empty() {
        return "no models are declared".to_owned();
    }
    let mut names: Vec<String> = models.iter().take(SHOWN).map(|m| format!("{:?}", m.spec.id)).collect();
    if models.len() > SHOWN {
        names.push(format!("and {} more", models.len() - SHOWN));
    }
    format!("known models: {}", names.join(", "))
}

/// The first `[policy]` (files sorted by path) counts; any other is an error, so that no reader
/// has to guess which file wins.
fn merge_policies(policies: &[Located<'_, Policy>], sink: &mut Sink) -> Policy {
    let Some((first, others)) = policies.split_first() else {
        return Policy::default();
    };
    for other in others {
        let first_at = first.at.describe();
        sink.error(
            other.at,
            format!("[policy] is already defined at {first_at}; define it in one file only"),
        );
    }
    first.value.clone()
}

/// The neurons sorted by name, reporting names declared twice.
fn merge_neurons(neurons: Vec<NeuronDeclaration<'_>>, sink: &mut Sink) -> Vec<NeuronSpec> {
    let mut first_at: HashMap<&str, Site<'_>> = HashMap::new();
    for neuron in &neurons {
        let Some(name_at) = neuron.name_at else { continue };
        if let Some(first) = first_at.get(neuron.spec.name.as_str()) {
            let (name, first) = (&neuron.spec.name, first.describe());
            sink.error(name_at, format!("duplicate neuron name {name:?}; first declared at {first}"));
        } else {
            first_at.insert(&neuron.spec.name, name_at);
        }
    }
    let mut specs: Vec<NeuronSpec> = neurons.into_iter().map(|neuron| neuron.spec).collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    specs
}

/// Who first claimed a name clients can send.
struct Claim<'a> {
    model: usize,
    is_id: bool,
    at: Site<'a>,
}

/// Clients name a model by its id or any alias, so all of them together must be unique: a name
/// that meant two models would make routing depend on declaration order.
fn check_model_names(models: &[ModelDeclaration<'_>], sink: &mut Sink) {
    let mut claims: HashMap<&str, Claim<'_>> = HashMap::new();
    for (index, model) in models.iter().enumerate() {
        let id = model.id_at.map(|at| (&model.spec.id, true, at));
        let aliases = model.aliases.iter().map(|alias| (&alias.value, false, alias.at));
        for (name, is_id, at) in id.into_iter().chain(aliases) {
            match claims.get(name.as_str()) {
                None => {
                    claims.insert(name, Claim { model: index, is_id, at });
                }
                Some(claim) => sink.error(at, name_clash(name, is_id, index, claim, models)),
            }
        }
    }
}

/// The message for `name` (an id when `is_id`, else an alias of model `index`) that `claim`
/// already holds.
fn name_clash(
    name: &str,
    is_id: bool,
    index: usize,
    claim: &Claim<'_>,
    models: &[ModelDeclaration<'_>],
) -> String {
    let first = claim.at.describe();
    let owner = models.get(claim.model).map_or("", |model| model.spec.id.as_str());
    if is_id && claim.is_id {
        return format!("duplicate model id {name:?}; first declared at {first}");
    }
    if claim.model == index {
        let how = if claim.is_id { "is the model's own id" } else { "is listed twice" };
        return format!("alias {name:?} {how}");
    }
    let what = if is_id { "model id" } else { "alias" };
    let how = if claim.is_id { "the id" } else { "an alias" };
    format!(
        "{what} {name:?} is already {how} of model {owner:?} at {first}; ids and aliases must all be unique"
    )
}

/// Every neuron a model is pinned on must be declared and must have the model's required labels.
fn check_pins(model: &ModelDeclaration<'_>, neurons: &[NeuronSpec], all_named: bool, sink: &mut Sink) {
    for pin in &model.pinned_on {
        match neurons.iter().find(|neuron| neuron.name == pin.value) {
            None if !all_named => {}
            None => {
                sink.error(pin.at, format!("unknown neuron {:?} in pinned_on; {}", pin.value, known(neurons)))
            }
            Some(neuron) if !has_labels(neuron, &model.spec.require_labels) => sink.error(
                pin.at,
                format!(
                    "model {:?} is pinned on neuron {:?}, which lacks require_labels {}",
                    model.spec.id,
                    pin.value,
                    labels(&model.spec.require_labels)
                ),
            ),
            Some(_) => {}
        }
    }
}

/// `replicas` larger than the fleet can never be met: an error. Labels that leave fewer neurons
/// than needed (perhaps none) may be met once the operator adds a neuron: a warning.
fn check_replicas_and_labels(model: &ModelDeclaration<'_>, neurons: &[NeuronSpec], sink: &mut Sink) {
    let replicas = model.spec.replicas;
    let required = &model.spec.require_labels;
    let eligible = neurons.iter().filter(|neuron| has_labels(neuron, required)).count();
    if let Some(at) = model.replicas_at.filter(|_| usize_from(replicas) > neurons.len()) {
        let declared = match neurons.len() {
            0 => "no neurons are declared".to_owned(),
            1 => "only 1 neuron is declared".to_owned(),
            count => format!("only {count} neurons are declared"),
        };
        sink.error(at, format!("replicas = {replicas} but {declared}"));
    } else if let Some(at) = model.require_labels_at.filter(|_| !required.is_empty() && eligible == 0) {
        let message = format!(
            "no declared neuron has require_labels {}, so model {:?} cannot be loaded anywhere",
            labels(required),
            model.spec.id
        );
        sink.warning(at, message);
    } else if let Some(at) = model.replicas_at.filter(|_| usize_from(replicas) > eligible) {
        let have = if eligible == 1 { "neuron has" } else { "neurons have" };
        let message = format!(
            "replicas = {replicas} but only {eligible} declared {have} require_labels {}",
            labels(required)
        );
        sink.warning(at, message);
    }
}

fn usize_from(count: u32) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX)
}

fn has_labels(neuron: &NeuronSpec, required: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(key, value)| neuron.labels.get(key) == Some(value))
}

/// `tier = "large", gpu = "ada"`, as the operator would write them.
fn labels(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(key, value)| format!("{key} = {value:?}")).collect();
    pairs.join(", ")
}

/// The declared neuron names, for messages about unknown ones.
fn known(neurons: &[NeuronSpec]) -> String {
    if neurons.is_empty() {
        return "no neurons are declared".to_owned();
    }
    let names: Vec<String> = neurons.iter().map(|neuron| format!("{:?}", neuron.name)).collect();
    format!("known neurons: {}", names.join(", "))
}
