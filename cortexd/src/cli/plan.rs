//! `cortex validate`, `cortex topology` and `cortex plan`: the commands that read the fleet and
//! the observed state and change nothing.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use plans::fleet::Fleet;
use plans::plan::{FleetOrigin, Plan, PlanFile, PlanOptions};
use plans::topology::Topology;

use crate::cli::{FleetArgs, PlanArgs, TopologyArgs, load_config, load_fleet};
use crate::config::Config;
use crate::control::fleetdir::FleetSource;
use crate::control::poller::now_unix_ms;

pub fn validate(args: &FleetArgs) -> anyhow::Result<ExitCode> {
    let source = FleetSource::choose(args.fleet.clone());
    let fleet = load_fleet(&source)?;
    println!(
        "The fleet in {} is valid: {} neuron(s), {} model(s), {}.",
        source.describe(),
        fleet.neurons.len(),
        fleet.models.len(),
        fleet.digest
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn topology(args: &TopologyArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let fleet = load_fleet(&FleetSource::choose(args.fleet.fleet.clone()))?;
    let observed =
        crate::control::poller::observe(&fleet, config.neuron_token()?.as_deref(), &config.poll).await;
    for neuron in observed.topology.neurons.iter().filter(|n| !n.reachable) {
        eprintln!(
            "warning: neuron {} is unreachable: {}",
            neuron.name,
            neuron.error.as_deref().unwrap_or("no answer")
        );
    }
    let json = observed.topology.to_json();
    match &args.out {
        Some(path) => {
            std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "Saved the topology of {} neuron(s) to {}.",
                observed.topology.neurons.len(),
                path.display()
            );
        }
        None => print!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The topology to plan against: a snapshot file, or the live neurons.
pub(crate) async fn topology_for(
    fleet: &Fleet,
    snapshot: Option<&PathBuf>,
    config: &Config,
) -> anyhow::Result<Topology> {
    match snapshot {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Topology::from_json(&text).with_context(|| format!("in {}", path.display()))
        }
        None => {
            let observed =
                crate::control::poller::observe(fleet, config.neuron_token()?.as_deref(), &config.poll).await;
            Ok(observed.topology)
        }
    }
}

pub async fn plan(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let source = FleetSource::choose(args.fleet.fleet.clone());
    let fleet = load_fleet(&source)?;
    let revision = source.revision();
    let topology = topology_for(&fleet, args.topology.as_ref(), &config).await?;
    let now = now_unix_ms();
    let plan = plans::plan::plan(&fleet, &topology, &PlanOptions { now_unix_ms: now, prune: args.prune });
    if args.json {
        print!("{}", plans::plan::render_json(&plan, &revision));
    } else {
        print!("{}", plans::plan::render_text(&plan, &topology, &fleet, &revision, now));
    }
    if let Some(warning) = destructive_warning(&fleet, &topology, &plan) {
        eprintln!("{warning}");
    }
    if let Some(path) = &args.out {
        let options = PlanOptions { now_unix_ms: now, prune: args.prune };
        let mut file = PlanFile::new(plan.clone(), &topology, revision.clone(), options, now);
        file.fleet = Some(match &source {
            FleetSource::Dir(dir) => FleetOrigin::Dir(absolute(dir)),
            FleetSource::Embedded => FleetOrigin::Embedded,
        });
        std::fs::write(path, file.to_json()).with_context(|| format!("cannot write {}", path.display()))?;
        // The hint works from any directory: absolute paths, and the config if one was named.
        let mut hint = format!("cortex apply {}", shell_word(&absolute(path)));
        if let Some(config) = &args.config.config {
            hint.push_str(&format!(" --config {}", shell_word(&absolute(config))));
        }
        eprintln!("Saved the plan to {}. To perform exactly these actions, run: {hint}", path.display());
    } else if !plan.is_empty() && !args.json {
        eprintln!(
            "Note: you didn't use --out, so cortex can't guarantee to take exactly these actions if you run `cortex apply` now."
        );
    }
    Ok(if args.detailed_exitcode && !plan.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// The absolute form of `path` (relative to the current directory), as text.
fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

/// `text` as one shell word: quoted only when it needs to be.
fn shell_word(text: &str) -> String {
    let plain = text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c));
    if plain && !text.is_empty() { text.to_owned() } else { format!("'{}'", text.replace('\'', "'\\''")) }
}

/// What `cortex serve` would refuse as a destructive change: a fleet without neurons or
/// without models while the neurons hold models loaded through cortex. Says what it would drop.
fn destructive_warning(fleet: &Fleet, topology: &Topology, plan: &Plan) -> Option<String> {
    let managed: Vec<String> = topology
        .neurons
        .iter()
        .flat_map(|n| {
            n.models.iter().filter(|m| m.is_managed()).map(move |m| format!("{} on {}", m.id, n.name))
        })
        .collect();
    let what = if fleet.neurons.is_empty() {
        "declares no neurons"
    } else if fleet.models.is_empty() {
        "declares no models"
    } else {
        return None;
    };
    let dropped = if managed.is_empty() {
        "every model and neuron the fleet in force declares".to_owned()
    } else {
        managed.join(", ")
    };
    let unloads = plan.counts().unload;
    Some(format!(
        "Warning: destructive change: this fleet {what}. Applied, it would drop {dropped}{}.\n\
         `cortex serve` refuses such a fleet and keeps the last good one unless started with --allow-destroy-all.",
        if unloads > 0 { format!(" ({unloads} unload(s) in this plan)") } else { String::new() }
    ))
}
