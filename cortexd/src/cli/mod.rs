//! The `cortex` command line: argument parsing, one file per command family. Exit codes follow
//! Terraform: 0 ok (no changes), 1 error, 2 changes (with `--detailed-exitcode`). The CLI sits at
//! the top of the layering: it calls `serve` and `control`, and nothing calls it.

pub(crate) mod apply;
pub(crate) mod keys;
pub(crate) mod maintain;
pub(crate) mod plan;
pub(crate) mod requests;
pub(crate) mod status;
pub(crate) mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use plans::fleet::Fleet;

use crate::config::Config;
use crate::control::fleetdir::FleetSource;

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
    Apply(crate::cli::apply::ApplyArgs),
    /// Run the daemon: the inference gateway and the reconciler
    Serve(ServeArgs),
    /// Show the daemon's view: neurons, models, sync state, conditions, recent runs
    Status(crate::cli::status::StatusArgs),
    /// Take a neuron out of placement: nothing new starts there, loaded copies keep serving
    /// (sets `state = "cordoned"` in the fleet file that declares it)
    Cordon(crate::cli::maintain::NeuronArgs),
    /// Empty a neuron make-before-break: what the fleet keeps moves elsewhere first
    /// (sets `state = "draining"`); --wait follows it until it is ready for maintenance
    Drain(crate::cli::maintain::DrainArgs),
    /// Put a cordoned or drained neuron back into service (removes its `state`)
    Uncordon(crate::cli::maintain::NeuronArgs),
    /// Pin a model on a neuron: it stays loaded there (adds the neuron to `pinned_on`)
    Pin(crate::cli::maintain::PinArgs),
    /// Unpin a model from a neuron (removes the neuron from `pinned_on`)
    Unpin(crate::cli::maintain::PinArgs),
    /// Client keys in the fleet: make one (its secret shown once) or revoke one
    Key {
        #[command(subcommand)]
        command: crate::cli::keys::KeyCommand,
    },
    /// Show the fleet keys' usage (tokens and requests per key and day) from the daemon
    Usage(crate::cli::usage::UsageArgs),
    /// Show the daemon's recent requests, or one request's timeline (by its x-request-id)
    Requests(crate::cli::requests::RequestsArgs),
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
    /// Apply a fleet that drops every neuron or every model (or a vanished fleet directory)
    /// instead of refusing it as a destructive change
    #[arg(long)]
    pub allow_destroy_all: bool,
}

/// Load the daemon settings: the given file, or the defaults.
pub fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    Config::load_or_default(args.config.as_deref())
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

/// Run one parsed command line.
pub async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Validate(args) => plan::validate(args),
        Command::Topology(args) => plan::topology(args).await,
        Command::Plan(args) => plan::plan(args).await,
        Command::Apply(args) => apply::apply(args).await,
        Command::Serve(args) => {
            let mut config = load_config(&args.config)?;
            config.reconcile.allow_destroy_all |= args.allow_destroy_all;
            crate::serve::run(args.fleet.fleet.clone(), config).await
        }
        Command::Status(args) => status::status(args).await,
        Command::Cordon(args) => maintain::cordon(args).await,
        Command::Drain(args) => maintain::drain(args).await,
        Command::Uncordon(args) => maintain::uncordon(args).await,
        Command::Pin(args) => maintain::pin(args).await,
        Command::Unpin(args) => maintain::unpin(args).await,
        Command::Key { command } => keys::run(command),
        Command::Usage(args) => usage::usage(args).await,
        Command::Requests(args) => requests::requests(args).await,
    }
}
