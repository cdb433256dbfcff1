//! Action ordering: a petgraph DAG in which an action that frees devices (or host RAM) on a
//! neuron precedes the later loads on that neuron that use them; actions on different neurons
//! are independent, and loads sharing a device keep their planning order. Ids (`a1`, `a2`, …) follow planning order, which is a topological order.

use std::collections::{BTreeSet, HashMap};

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::plan::{Action, ActionKind};

/// An action as the passes record it, before it has an id.
#[derive(Clone, Debug)]
pub struct Draft {
    pub action: Action,
    /// Drafts this one needs (the evictions made for it).
    pub deps: Vec<usize>,
    /// Whether it gives devices or RAM back (unloads, and reloads for their old copy).
    pub frees: bool,
}

/// Number and link the drafts. A cycle cannot arise from the passes (every edge points to a
/// later draft), but it is checked, and reported as a planning error rather than a panic.
pub fn finish(drafts: Vec<Draft>) -> (Vec<Action>, Vec<String>) {
    let deps = dependencies(&drafts);
    let mut graph: DiGraph<usize, ()> = DiGraph::with_capacity(drafts.len(), deps.iter().map(Vec::len).sum());
    let nodes: Vec<NodeIndex> = (0..drafts.len()).map(|i| graph.add_node(i)).collect();
    for (i, before) in deps.iter().enumerate() {
        for &j in before {
            graph.add_edge(nodes[j], nodes[i], ());
        }
    }
    let mut errors = Vec::new();
    if let Err(cycle) = toposort(&graph, None) {
        let draft = &drafts[graph[cycle.node_id()]].action;
        errors.push(format!(
            "planning error: the actions form a cycle through {} {} on {}",
            draft.kind.as_str(),
            draft.model,
            draft.neuron
        ));
    }
    let id = |i: usize| format!("a{}", i + 1);
    let actions = drafts
        .into_iter()
        .zip(deps)
        .enumerate()
        .map(|(i, (draft, before))| {
            let mut action = draft.action;
            action.id = id(i);
            action.after = before.into_iter().map(id).collect();
            action
        })
        .collect();
    (actions, errors)
}

/// For each draft, the earlier drafts it must wait for, ascending.
fn dependencies(drafts: &[Draft]) -> Vec<Vec<usize>> {
    // Per (neuron, device): drafts so far that freed it; per neuron: drafts that freed RAM.
    let mut freed_device: HashMap<(&str, u32), Vec<usize>> = HashMap::new();
    let mut freed_ram: HashMap<&str, Vec<usize>> = HashMap::new();
    // Per (neuron, device): the last draft that loaded onto it. Loads sharing a device are
    // chained in planning order because a later one may have been placed only on what the
    // earlier one left, and an earlier one's `min_device_vram_mb` floor may need the room the
    // later one takes.
    let mut last_load: HashMap<(&str, u32), usize> = HashMap::new();
    // Per (neuron, model): the last draft that unloaded it. A neuron serves one copy per id,
    // so a model evicted from one device and placed again on another must go first.
    let mut unloaded: HashMap<(&str, &str), usize> = HashMap::new();
    let mut all = Vec::with_capacity(drafts.len());
    for (i, draft) in drafts.iter().enumerate() {
        let action = &draft.action;
        let neuron = action.neuron.as_str();
        let mut before: BTreeSet<usize> = draft.deps.iter().copied().filter(|&j| j < i).collect();
        if action.kind != ActionKind::Unload {
            for device in &action.devices {
                before.extend(freed_device.get(&(neuron, *device)).into_iter().flatten().copied());
                before.extend(last_load.insert((neuron, *device), i));
            }
            if action.ram_mb > 0 {
                before.extend(freed_ram.get(neuron).into_iter().flatten().copied());
            }
            before.extend(unloaded.get(&(neuron, action.model.as_str())).copied());
        } else {
            unloaded.insert((neuron, action.model.as_str()), i);
        }
        all.push(before.into_iter().collect());
        if draft.frees {
            let freed =
                if action.kind == ActionKind::Reload { &action.from_devices } else { &action.devices };
            for device in freed {
                freed_device.entry((neuron, *device)).or_default().push(i);
            }
            // A reload's old RAM figure is not in the action, so it conservatively counts.
            if action.kind == ActionKind::Reload || action.ram_mb > 0 {
                freed_ram.entry(neuron).or_default().push(i);
            }
        }
    }
    all
}
