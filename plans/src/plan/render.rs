//! The text plan, Terraform-style: header, legend of the symbols used, one block per action
//! with its reason and the neuron's devices before → after, profile diffs, the infeasible and
//! drift sections, and the summary line. Format documented in docs/plan-format.md.

use std::collections::HashMap;
use std::fmt::Write as _;

use similar::{ChangeTag, TextDiff};

use crate::fleet::{Fleet, NeuronState, Profile};
use crate::plan::ledger::share;
use crate::plan::{Action, ActionKind, Dimension, Plan, Reason, Revision, Want};
use crate::topology::Topology;

/// Render `plan` for people. `now_unix_ms` only sets the topology's age in the header.
pub fn render_text(
    plan: &Plan,
    topology: &Topology,
    fleet: &Fleet,
    revision: &Revision,
    now_unix_ms: u64,
) -> String {
    let rev = revision.short(&plan.fleet_digest);
    if plan.is_empty() {
        let mut out = format!("No changes. The fleet matches fleet/ @ {rev}.\n");
        if let Some(line) = out_of_service(fleet, topology) {
            let _ = writeln!(out, "{line}");
        }
        suspended_pins(&mut out, plan, false);
        return out;
    }
    let mut out = String::new();
    header(&mut out, plan, topology, fleet, revision, now_unix_ms);
    for error in &plan.errors {
        let _ = writeln!(out, "Error: {error}\n");
    }
    legend(&mut out, plan);
    let mut capacity = Capacity::new(topology);
    for action in &plan.actions {
        action_block(&mut out, action, &mut capacity);
    }
    draining(&mut out, plan, fleet);
    infeasible(&mut out, plan);
    suspended_pins(&mut out, plan, true);
    drift(&mut out, plan);
    let counts = plan.counts();
    let _ = writeln!(
        out,
        "Plan: {} to load, {} to reload, {} to unload ({} evictions).",
        counts.load, counts.reload, counts.unload, counts.evictions
    );
    out
}

fn header(out: &mut String, plan: &Plan, topology: &Topology, fleet: &Fleet, revision: &Revision, now: u64) {
    let rev = revision.short(&plan.fleet_digest);
    let digest = crate::plan::short_digest(&plan.fleet_digest);
    let digest_note = if revision.commit.is_some() { format!(" (digest {digest})") } else { String::new() };
    let _ = writeln!(
        out,
        "Fleet: fleet/ @ {rev}{digest_note}: {}, {}",
        plural(fleet.models.len(), "model"),
        plural(fleet.neurons.len(), "neuron")
    );
    let age = if topology.observed_at_unix_ms == 0 {
        "observed at an unknown time".to_owned()
    } else {
        format!("observed {} ago", duration(now.saturating_sub(topology.observed_at_unix_ms)))
    };
    let unreachable: Vec<&str> =
        topology.neurons.iter().filter(|n| !n.reachable).map(|n| n.name.as_str()).collect();
    let simulated: Vec<&str> =
        topology.neurons.iter().filter(|n| n.simulated).map(|n| n.name.as_str()).collect();
    let mut notes = String::new();
    if !unreachable.is_empty() {
        let _ = write!(notes, "; unreachable: {}", unreachable.join(", "));
    }
    if !simulated.is_empty() {
        let _ = write!(notes, "; SIMULATED: {}", simulated.join(", "));
    }
    let _ = writeln!(out, "Topology: {age}, {}{notes}", plural(topology.neurons.len(), "neuron"));
    if let Some(line) = out_of_service(fleet, topology) {
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
}

/// `Out of service: beast draining (2 copies left), quad cordoned`, when any neuron is not
/// active. A draining neuron that is reachable and holds nothing cortex manages is ready for
/// maintenance.
fn out_of_service(fleet: &Fleet, topology: &Topology) -> Option<String> {
    let parts: Vec<String> = fleet
        .neurons
        .iter()
        .filter(|n| n.state != NeuronState::Active)
        .map(|n| {
            let observed = topology.neuron(&n.name);
            let left = observed.map_or(0, |o| o.models.iter().filter(|m| m.is_managed()).count());
            let note = match (n.state, observed.map(|o| o.reachable)) {
                (NeuronState::Draining, Some(true)) if left == 0 => " (ready for maintenance)".to_owned(),
                (NeuronState::Draining, Some(true)) => {
                    format!(" ({left} {} left)", if left == 1 { "copy" } else { "copies" })
                }
                (NeuronState::Draining, _) => " (unreachable)".to_owned(),
                _ => String::new(),
            };
            format!("{} {}{note}", n.name, n.state.as_str())
        })
        .collect();
    (!parts.is_empty()).then(|| format!("Out of service: {}", parts.join(", ")))
}

/// Per draining neuron, what happens to each copy cortex manages there: moved (new copy first),
/// unloaded, or kept serving because it fits nowhere else.
fn draining(out: &mut String, plan: &Plan, fleet: &Fleet) {
    for neuron in fleet.neurons.iter().filter(|n| n.state == NeuronState::Draining) {
        let mut lines = Vec::new();
        for action in &plan.actions {
            let Reason::Drain { neuron: from, replaced_by } = &action.reason else { continue };
            if *from != neuron.name {
                continue;
            }
            lines.push(match replaced_by {
                Some(to) => {
                    let load = action.after.iter().find(|id| {
                        plan.actions
                            .iter()
                            .any(|a| &a.id == *id && a.model == action.model && a.neuron == *to)
                    });
                    match load {
                        Some(load) => format!("{}: {from} → {to} ({load}, then {})", action.model, action.id),
                        None => {
                            format!("{}: {from} → {to} (already serving there; {})", action.model, action.id)
                        }
                    }
                }
                None => format!("{}: unloaded, not needed elsewhere ({})", action.model, action.id),
            });
        }
        for item in plan.infeasible.iter().filter(|i| i.want == Want::Relocate) {
            if item.neuron.as_deref() == Some(neuron.name.as_str()) {
                lines.push(format!(
                    "{}: stays on {}, it fits nowhere else (see Infeasible)",
                    item.model, neuron.name
                ));
            }
        }
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "Draining {}: each new copy is ready before the old one drains and unloads.",
            neuron.name
        );
        for line in lines {
            let _ = writeln!(out, "  {line}");
        }
        out.push('\n');
    }
}

/// Pins not honoured while their neuron is out of service, and their stand-ins; a blank line
/// closes the section inside a plan (`section`), none after "No changes".
fn suspended_pins(out: &mut String, plan: &Plan, section: bool) {
    if plan.suspended_pins.is_empty() {
        return;
    }
    out.push_str("Suspended pins: honoured again once their neuron is active.\n");
    for pin in &plan.suspended_pins {
        let stand_in = match &pin.stand_in {
            Some(neuron) => format!("stand-in on {neuron}"),
            None => "no stand-in".to_owned(),
        };
        let _ =
            writeln!(out, "  {} pinned on {} ({}): {stand_in}", pin.model, pin.neuron, pin.state.as_str());
    }
    if section {
        out.push('\n');
    }
}

fn legend(out: &mut String, plan: &Plan) {
    if plan.actions.is_empty() {
        return;
    }
    out.push_str("cortex will perform the following actions, shown with these symbols:\n");
    for kind in [ActionKind::Load, ActionKind::Unload, ActionKind::Reload] {
        if plan.actions.iter().any(|a| a.kind == kind) {
            let _ = writeln!(out, "{:>3} {}", kind.symbol(), kind.as_str());
        }
    }
    out.push('\n');
}

fn action_block(out: &mut String, action: &Action, capacity: &mut Capacity<'_>) {
    let verb = match action.kind {
        ActionKind::Load => "loaded",
        ActionKind::Unload => "unloaded",
        ActionKind::Reload => "reloaded",
    };
    let after =
        if action.after.is_empty() { String::new() } else { format!(", after {}", action.after.join(", ")) };
    let _ = writeln!(out, "  # {}: {} on {} will be {verb}{after}", action.id, action.model, action.neuron);
    let preposition = if action.kind == ActionKind::Unload { "from" } else { "on" };
    let _ = writeln!(
        out,
        "{:>3} {} {} {preposition} {}",
        action.kind.symbol(),
        action.kind.as_str(),
        action.model,
        action.neuron
    );
    let _ = writeln!(out, "      # (because {})", action.reason.text());
    let gpus = |devices: &[u32]| {
        if devices.is_empty() {
            "CPU".to_owned()
        } else {
            devices.iter().map(|d| format!("GPU{d}")).collect::<Vec<_>>().join(", ")
        }
    };
    if action.kind == ActionKind::Reload && action.from_devices != action.devices {
        let _ = writeln!(out, "      devices: {} → {}", gpus(&action.from_devices), gpus(&action.devices));
    } else {
        let _ = writeln!(out, "      devices: {}", gpus(&action.devices));
    }
    let (vram, ram) = capacity.apply(action);
    if !vram.is_empty() {
        let lines: Vec<String> =
            vram.iter().map(|(d, before, after)| format!("GPU{d} {before} → {after} MB free")).collect();
        let _ = writeln!(out, "      vram:    {}", lines.join(", "));
    }
    if let Some((before, after)) = ram {
        let _ = writeln!(out, "      ram:     {before} → {after} MB free");
    }
    match (&action.from_profile, &action.profile) {
        (Some(old), Some(new)) => profile_diff(out, old, new),
        (None, Some(new)) if action.kind == ActionKind::Load => {
            let fields: Vec<String> =
                shown_fields(new).into_iter().map(|(field, value)| format!("{field} = {value}")).collect();
            let _ = writeln!(out, "      profile: {}", fields.join(", "));
        }
        _ => {}
    }
    out.push('\n');
}

/// Fields worth printing for a new load: unset ones and empty args say nothing.
fn shown_fields(profile: &Profile) -> Vec<(&'static str, String)> {
    profile.fields().into_iter().filter(|(_, value)| value != "(unset)" && value != "[]").collect()
}

/// Changed profile fields as a line diff (similar), hiding the unchanged ones like Terraform.
fn profile_diff(out: &mut String, old: &Profile, new: &Profile) {
    let lines = |p: &Profile| p.fields().into_iter().map(|(f, v)| format!("{f} = {v}\n")).collect::<String>();
    let (old_text, new_text) = (lines(old), lines(new));
    let diff = TextDiff::from_lines(&old_text, &new_text);
    out.push_str("      profile:\n");
    let mut unchanged = 0;
    for op in diff.ops() {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        for change in diff.iter_changes(op) {
            match change.tag() {
                ChangeTag::Equal => unchanged += 1,
                ChangeTag::Delete => removed.push(change.value()),
                ChangeTag::Insert => added.push(change.value()),
            }
        }
        // Fields keep their order, so a replaced run pairs up line by line: show each field's
        // old value right above its new one.
        if removed.len() == added.len() {
            for (old, new) in removed.iter().zip(&added) {
                let _ = write!(out, "        - {old}        + {new}");
            }
        } else {
            removed.iter().for_each(|old| {
                let _ = write!(out, "        - {old}");
            });
            added.iter().for_each(|new| {
                let _ = write!(out, "        + {new}");
            });
        }
    }
    if unchanged > 0 {
        let _ = writeln!(
            out,
            "        ({unchanged} unchanged field{} hidden)",
            if unchanged == 1 { "" } else { "s" }
        );
    }
}

fn infeasible(out: &mut String, plan: &Plan) {
    if plan.infeasible.is_empty() {
        return;
    }
    out.push_str("Infeasible: not placed now; the rest of the plan still applies.\n");
    for item in &plan.infeasible {
        let what = match (item.want, &item.neuron) {
            (Want::Pin, Some(neuron)) => format!("pinned on {neuron}"),
            (Want::Reload, Some(neuron)) => format!("reload on {neuron}"),
            (Want::Replicas, _) => "replicas".to_owned(),
            (Want::Request, _) => "request".to_owned(),
            (Want::Relocate, Some(neuron)) => format!("move off {neuron}"),
            (_, None) => "placement".to_owned(),
        };
        let dimension = item.dimension.as_str();
        let dimension = match item.dimension {
            Dimension::Devices | Dimension::PerDeviceVram | Dimension::TotalVram | Dimension::HostRam => {
                format!("dimension {dimension:?} exhausted")
            }
            _ => dimension.to_owned(),
        };
        let _ = writeln!(out, "  {} ({what}): {dimension}: {}", item.model, item.detail);
    }
    out.push('\n');
}

fn drift(out: &mut String, plan: &Plan) {
    if plan.drift.is_empty() {
        return;
    }
    out.push_str(
        "Drift: loaded through cortex but declared by no fleet file; left loaded (prune unloads them).\n",
    );
    for item in &plan.drift {
        let devices = if item.devices.is_empty() {
            format!("{} MB RAM", item.ram_mb)
        } else {
            let gpus: Vec<String> = item.devices.iter().map(|d| format!("GPU{d}")).collect();
            format!("{}, {} MB VRAM", gpus.join(", "), item.vram_mb)
        };
        let _ = writeln!(out, "  {} on {}: {devices}", item.model, item.neuron);
    }
    out.push('\n');
}

/// Free VRAM per device and free RAM per neuron, replayed action by action with the planner's
/// accounting rule, so each block shows before → after on the devices it touches.
struct Capacity<'t> {
    topology: &'t Topology,
    vram: HashMap<(&'t str, u32), (u64, u64)>,
    ram: HashMap<&'t str, u64>,
}

/// Per device touched: (index, free before, free after); and RAM (before, after) if relevant.
type Change = (Vec<(u32, u64, u64)>, Option<(u64, u64)>);

impl<'t> Capacity<'t> {
    fn new(topology: &'t Topology) -> Self {
        let mut vram = HashMap::new();
        let mut ram = HashMap::new();
        for neuron in &topology.neurons {
            for device in &neuron.devices {
                vram.insert(
                    (neuron.name.as_str(), device.index),
                    (device.vram_free_mb, device.vram_total_mb),
                );
            }
            ram.insert(neuron.name.as_str(), neuron.ram_free_mb);
        }
        Capacity { topology, vram, ram }
    }

    fn apply(&mut self, action: &Action) -> Change {
        let Some(neuron) = self.topology.neuron(&action.neuron) else { return (Vec::new(), None) };
        let name = neuron.name.as_str();
        let mut touched: Vec<u32> = action.devices.clone();
        touched.extend(action.from_devices.iter().copied());
        touched.sort_unstable();
        touched.dedup();
        let before: Vec<u64> =
            touched.iter().map(|d| self.vram.get(&(name, *d)).map_or(0, |(free, _)| *free)).collect();
        let ram_before = self.ram.get(name).copied().unwrap_or(0);
        let observed = neuron.model(&action.model).filter(|m| m.is_managed());
        if action.kind != ActionKind::Load {
            if let Some(copy) = observed {
                let each = share(copy.vram_mb, copy.devices.len());
                for d in &copy.devices {
                    if let Some((free, total)) = self.vram.get_mut(&(name, *d)) {
                        *free = (*free + each).min(*total);
                    }
                }
                *self.ram.entry(name).or_default() += copy.ram_mb;
            }
        }
        if action.kind != ActionKind::Unload {
            let each = share(action.vram_mb, action.devices.len());
            for d in &action.devices {
                if let Some((free, _)) = self.vram.get_mut(&(name, *d)) {
                    *free = free.saturating_sub(each);
                }
            }
            let ram = self.ram.entry(name).or_default();
            *ram = ram.saturating_sub(action.ram_mb);
        }
        let vram = touched
            .iter()
            .zip(before)
            .map(|(d, before)| (*d, before, self.vram.get(&(name, *d)).map_or(0, |(free, _)| *free)))
            .collect();
        let ram_after = self.ram.get(name).copied().unwrap_or(0);
        let ram = (action.devices.is_empty() || ram_before != ram_after).then_some((ram_before, ram_after));
        (vram, ram)
    }
}

/// A duration for people: `42s`, `3m 5s`, `2h 1m`, `3d 4h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let pair = |a: u64, ua: &str, b: u64, ub: &str| {
        if b == 0 { format!("{a}{ua}") } else { format!("{a}{ua} {b}{ub}") }
    };
    if d > 0 {
        pair(d, "d", h, "h")
    } else if h > 0 {
        pair(h, "h", m, "m")
    } else if m > 0 {
        pair(m, "m", s, "s")
    } else {
        format!("{s}s")
    }
}

/// `1 model`, `2 models`.
fn plural(count: usize, noun: &str) -> String {
    if count == 1 { format!("{count} {noun}") } else { format!("{count} {noun}s") }
}
