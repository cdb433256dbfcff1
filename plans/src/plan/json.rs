//! The machine-readable plan (`cortex plan --json`): `format_version` 1, keys in a fixed
//! order (struct field order), reasons as stable codes with their sentence alongside.

use crate::fleet::Profile;
use crate::plan::{
    Action, ActionKind, Counts, Drift, FORMAT_VERSION, Infeasible, Move, Plan, Reason, Revision, SuspendedPin,
};

#[derive(serde::Serialize)]
struct JsonPlan<'p> {
    format_version: u32,
    fleet_digest: &'p str,
    revision: &'p Revision,
    summary: Counts,
    actions: Vec<JsonAction<'p>>,
    infeasible: &'p [Infeasible],
    drift: &'p [Drift],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    moves: Vec<Move>,
    #[serde(skip_serializing_if = "<[SuspendedPin]>::is_empty")]
    suspended_pins: &'p [SuspendedPin],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    errors: &'p [String],
}

#[derive(serde::Serialize)]
struct JsonAction<'p> {
    id: &'p str,
    kind: ActionKind,
    model: &'p str,
    neuron: &'p str,
    devices: &'p [u32],
    vram_mb: u64,
    ram_mb: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'p Profile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_profile: Option<&'p Profile>,
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    from_devices: &'p [u32],
    reason: &'p Reason,
    because: String,
    after: &'p [String],
    if_generation: u64,
}

impl<'p> JsonAction<'p> {
    fn of(action: &'p Action) -> Self {
        JsonAction {
            id: &action.id,
            kind: action.kind,
            model: &action.model,
            neuron: &action.neuron,
            devices: &action.devices,
            vram_mb: action.vram_mb,
            ram_mb: action.ram_mb,
            profile: action.profile.as_ref(),
            from_profile: action.from_profile.as_ref(),
            from_devices: &action.from_devices,
            reason: &action.reason,
            because: action.reason.text(),
            after: &action.after,
            if_generation: action.if_generation,
        }
    }
}

/// The plan as pretty JSON with a trailing newline; byte-identical for identical input.
pub fn render_json(plan: &Plan, revision: &Revision) -> String {
    let json = JsonPlan {
        format_version: FORMAT_VERSION,
        fleet_digest: &plan.fleet_digest,
        revision,
        summary: plan.counts(),
        actions: plan.actions.iter().map(JsonAction::of).collect(),
        infeasible: &plan.infeasible,
        drift: &plan.drift,
        moves: plan.moves(),
        suspended_pins: &plan.suspended_pins,
        errors: &plan.errors,
    };
    // Serialising plain structs of strings and numbers cannot fail.
    let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
    text.push('\n');
    text
}
