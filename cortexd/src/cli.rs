//! The `cortex` command line: argument parsing and the offline/online commands that do not run
//! the daemon (`validate`, `topology`, `plan`). Exit codes follow Terraform: 0 ok (no changes),
//! 1 error, 2 changes (with `--detailed-exitcode`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use plans::fleet::Fleet;
use plans::plan::{PlanFile, PlanOptions};
use plans::topology::Topology;

use crate::config::Config;
use crate::fleetdir::FleetSource;
use crate::poller::now_unix_ms;

#[derive(Debug, Parser)]
#[command(
    name = "cortex",
    version,
    about = "Plan, apply and serve a self-hosted LLM fleet declared in fleet/"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and check the fleet; exit 1 with path:line:col diagnostics if it is invalid
    Validate(FleetArgs),
    /// Fetch the observed state from the fleet's neurons; print it or save a snapshot
    Topology(TopologyArgs),
    /// Show what it would take to make the fleet match fleet/
    Plan(PlanArgs),
    /// Make the fleet match fleet/: plan, show, ask, apply (or apply a saved plan file)
    Apply(crate::cli_apply::ApplyArgs),
    /// Run the daemon: the inference gateway and the reconciler
    Serve(ServeArgs),
    /// Show the daemon's view: neurons, models, sync state, conditions, recent runs
    Status(crate::cli_apply::StatusArgs),
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The fleet directory [default: ./fleet, else the embedded default fleet]
    #[arg(long, env = "CORTEX_FLEET")]
    pub fleet: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Daemon settings (listen addresses, keys, neuron token, timings)
    #[arg(long, env = "CORTEX_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Write the snapshot (JSON, format_version 1) to FILE instead of stdout
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Plan against a saved topology snapshot instead of the live neurons
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Save the plan to FILE for `cortex apply FILE`
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the plan as JSON (format_version 1)
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Also unload models loaded through cortex that no fleet file declares any more
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Load the daemon settings: the given file, or the defaults.
pub fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    }
}

/// Read and validate the fleet, printing every diagnostic to stderr. Errors if it is invalid.
pub fn load_fleet(source: &FleetSource) -> anyhow::Result<Fleet> {
    let files = source.read()?;
    let load = plans::fleet::load(&files);
    for diagnostic in &load.diagnostics {
        eprintln!("{diagnostic}");
    }
    load.fleet.ok_or_else(|| {
        let errors = load.diagnostics.iter().filter(|d| d.is_error()).count();
        anyhow::anyhow!("the fleet in {} has {errors} error(s)", source.describe())
    })
}

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
    let observed = crate::poller::observe(&fleet, config.neuron_token()?.as_deref(), &config.poll).await;
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
                crate::poller::observe(fleet, config.neuron_token()?.as_deref(), &config.poll).await;
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
