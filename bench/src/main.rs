//! `cortex-bench`: the benchmark suite of spec §10. `cortex-bench all` starts a mock engine, a
//! sim neuron, `cortex serve` and (when installed) LiteLLM's proxy, sends the same requests
//! three ways in one run, alternating (direct to the mock = the physical limit, through cortex,
//! through LiteLLM), prints a table and writes JSON. `cortex-bench mock` is the mock engine;
//! `cortex-bench tally` counts how often the streaming bounds held over many reports.
//! `bench/run.sh` is the documented way to run it; docs/benchmarks.md explains the method.

mod contention;
mod load;
mod mock;
mod procs;
mod report;
mod scenarios;
mod sessions;
mod stream_client;
mod tally;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "cortex's benchmark suite (spec §10)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every scenario and write the report.
    All(Box<scenarios::Args>),
    /// Serve the mock engine (models named m-<ttft_ms>-<itl_ms>).
    Mock {
        #[arg(long)]
        port: u16,
        /// The neuron name it reports on /discovery.
        #[arg(long, default_value = "mock")]
        name: String,
        /// Comma-separated model names it lists as loaded.
        #[arg(long, value_delimiter = ',', default_value = "m-5-0")]
        models: Vec<String>,
    },
    /// How often the streaming bounds held over many reports, per build (bench/alternate.sh).
    Tally {
        /// Report files; a build is named by the text after a file's timestamp, else its folder.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Mock { port, name, models } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(mock::run(port, name, models))
        }
        Command::Tally { reports } => tally::run(&reports),
        Command::All(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let report = runtime.block_on(scenarios::all(&args))?;
            let out: PathBuf = args.out.clone();
            report::write(&report, &out)?;
            let problems = report::problems(&report);
            for problem in &problems {
                eprintln!("problem: {problem}");
            }
            // A smoke run checks that the suite works: any failed request fails it.
            anyhow::ensure!(
                !args.smoke || problems.is_empty(),
                "the smoke run had {} problems",
                problems.len()
            );
            Ok(())
        }
    }
}
