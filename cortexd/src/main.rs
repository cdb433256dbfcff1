//! The `cortex` binary: parses the command line and hands over to `cortexd`.

use std::process::ExitCode;

use clap::Parser;
use cortexd::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Validate(args) => cli::validate(args),
            Command::Topology(args) => cli::topology(args).await,
            Command::Plan(args) => cli::plan(args).await,
            Command::Apply(args) => cortexd::cli_apply::apply(args).await,
            Command::Serve(args) => cortexd::serve::run(args).await,
            Command::Status(args) => cortexd::cli_apply::status(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
