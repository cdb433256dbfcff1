//! `cortex validate`, `cortex topology` and `cortex plan`: the commands that read the fleet and
//! the observed state and change nothing.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use plans::fleet::Fleet;
use plans::plan::{PlanFile, PlanOptions};
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
async fn topology_for(
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
    if let Some(path) = &args.out {
        let options = PlanOptions { now_unix_ms: now, prune: args.prune };
        let file = PlanFile::new(plan.clone(), &topology, revision.clone(), options, now);
        std::fs::write(path, file.to_json()).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "Saved the plan to {}. To perform exactly these actions, run: cortex apply {}",
            path.display(),
            path.display()
        );
    } else if !plan.is_empty() && !args.json {
        eprintln!(
            "Note: you didn't use --out, so cortex can't guarantee to take exactly these actions if you run `cortex apply` now."
        );
    }
    Ok(if args.detailed_exitcode && !plan.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS })
}
