//! `cortex apply` and `cortex status`: the commands that act on, or report from, a live fleet.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use plans::plan::{Plan, PlanFile, PlanOptions};

use crate::apply::{self, Outcome, Progress};
use crate::cli::{ConfigArgs, FleetArgs, load_config, load_fleet};
use crate::execute::ExecTimeouts;
use crate::fleetdir::FleetSource;
use crate::poller::now_unix_ms;
use crate::status::{DaemonStatus, render};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A plan saved with `cortex plan --out`: apply exactly it, without asking
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Do not ask for confirmation
    #[arg(long)]
    pub auto_approve: bool,
    /// How many neurons to act on at once
    #[arg(long, default_value_t = 4)]
    pub parallelism: usize,
    /// Also unload models loaded through cortex that no fleet file declares any more
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The daemon's address [default: the config's listen address]
    #[arg(long, env = "CORTEX_URL")]
    pub url: Option<String>,
    /// The admin key [default: the config's admin_key]
    #[arg(long, env = "CORTEX_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Print the status as JSON
    #[arg(long)]
    pub json: bool,
}

pub async fn apply(args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let source = FleetSource::choose(args.fleet.fleet.clone());
    let fleet = load_fleet(&source)?;
    let token = config.neuron_token()?;
    let observed = crate::poller::observe(&fleet, token.as_deref(), &config.poll).await;
    let plan: Plan = match &args.plan_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let file = PlanFile::from_json(&text)
                .with_context(|| format!("{} is not a cortex plan file", path.display()))?;
            let stale = file.staleness(&fleet.digest, &observed.topology);
            if !stale.is_empty() {
                anyhow::bail!(
                    "the saved plan {} is stale, refusing to apply it:\n  {}\nRun `cortex plan --out FILE` again.",
                    path.display(),
                    stale.join("\n  ")
                );
            }
            file.plan
        }
        None => {
            let now = now_unix_ms();
            let plan = plans::plan::plan(
                &fleet,
                &observed.topology,
                &PlanOptions { now_unix_ms: now, prune: args.prune },
            );
            print!(
                "{}",
                plans::plan::render_text(&plan, &observed.topology, &fleet, &source.revision(), now)
            );
            if plan.actions.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            if !args.auto_approve && !confirm()? {
                println!("\nApply cancelled.");
                return Ok(ExitCode::FAILURE);
            }
            plan
        }
    };
    if !plan.errors.is_empty() {
        anyhow::bail!("the plan has errors and cannot be applied: {}", plan.errors.join("; "));
    }
    let timeouts = ExecTimeouts { call: config.gateway.neuron_timeout, ready: config.reconcile.load_timeout };
    let terminal = std::io::stdout().is_terminal();
    let progress: Arc<dyn Fn(Progress) + Send + Sync> =
        Arc::new(move |event| print_progress(&event, terminal));
    let ticker = tokio::spawn(async move {
        let mut elapsed = 0u64;
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            elapsed += 10;
            println!("Still applying... [{elapsed}s elapsed]");
        }
    });
    println!();
    let report = apply::apply(&plan, &observed.clients, args.parallelism, timeouts, progress).await;
    ticker.abort();
    println!("\n{}", report.summary());
    Ok(if report.succeeded() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn confirm() -> anyhow::Result<bool> {
    print!(
        "\nDo you want to perform these actions?\n  cortex will perform the actions described above.\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: "
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

fn print_progress(event: &Progress, terminal: bool) {
    let (bold, reset) = if terminal { ("\x1b[1m", "\x1b[0m") } else { ("", "") };
    match event {
        Progress::Started(action) => {
            let verb = match action.kind {
                plans::plan::ActionKind::Load => "Loading",
                plans::plan::ActionKind::Unload => "Unloading",
                plans::plan::ActionKind::Reload => "Reloading",
            };
            println!("{bold}{}{reset}: {verb} {} on {}...", action.id, action.model, action.neuron);
        }
        Progress::Finished(action, Outcome::Done { elapsed }) => {
            println!(
                "{bold}{}{reset}: {} {} on {} complete after {:.1}s",
                action.id,
                action.kind.as_str(),
                action.model,
                action.neuron,
                elapsed.as_secs_f64()
            );
        }
        Progress::Finished(action, Outcome::Failed { error }) => {
            println!(
                "{bold}{}{reset}: {} {} on {} FAILED: {error}",
                action.id,
                action.kind.as_str(),
                action.model,
                action.neuron
            );
        }
        Progress::Finished(action, Outcome::Skipped { because }) => {
            println!(
                "{bold}{}{reset}: {} {} on {} skipped: {because}",
                action.id,
                action.kind.as_str(),
                action.model,
                action.neuron
            );
        }
    }
}

pub async fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let url = args.url.clone().unwrap_or_else(|| format!("http://{}", config.listen));
    let key = args
        .admin_key
        .clone()
        .or(config.admin_key.clone())
        .context("no admin key: pass --admin-key, set CORTEX_ADMIN_KEY, or admin_key in cortex.toml")?;
    let response = reqwest::Client::new()
        .get(format!("{}/admin/status", url.trim_end_matches('/')))
        .bearer_auth(key)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("cannot reach cortex at {url}"))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!(
            "cortex at {url} answered {status}: {}",
            crate::gateway::proxy::upstream_message(body.as_bytes())
        );
    }
    let status: DaemonStatus =
        response.json().await.context("cortex answered an unexpected status document")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}
