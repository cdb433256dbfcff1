//! `cortex apply`: plan (or read a saved plan), show, confirm, execute with live progress.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use plans::plan::{ActionKind, FleetOrigin, Plan, PlanFile, PlanOptions};

use crate::cli::{ConfigArgs, FleetArgs, load_config, load_fleet};
use crate::control::apply::{self, Outcome, Progress};
use crate::control::execute::ExecTimeouts;
use crate::control::fleetdir::FleetSource;
use crate::control::neuron_client::error_message;
use crate::control::poller::now_unix_ms;
use crate::operator::admin::{ApplyResponse, LEADER_HEADER};

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
    /// Apply the saved plan through a running cortex's admin API (a cluster: any replica; a
    /// follower's answer names the leader, which applies it with its term)
    #[arg(long, requires = "plan_file")]
    pub url: Option<String>,
    /// The admin key for --url [default: the config's admin_key]
    #[arg(long, env = "CORTEX_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
}

/// Post the saved plan at `path` to the daemon at `url`; a follower's 409 that names the
/// leader is followed once.
async fn apply_through(url: &str, key: &str, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let http = reqwest::Client::new();
    let mut url = url.trim_end_matches('/').to_owned();
    for hop in 0..2 {
        let response = http
            .post(format!("{url}/admin/apply"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(text.clone())
            .send()
            .await
            .with_context(|| format!("cannot reach cortex at {url}"))?;
        let status = response.status();
        let leader = response.headers().get(LEADER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if status == reqwest::StatusCode::CONFLICT
            && let Some(leader) = leader.filter(|_| hop == 0)
        {
            println!("{url} does not lead the cluster; applying through the leader at {leader}");
            url = leader;
            continue;
        }
        let body = response.bytes().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("cortex at {url} answered {status}: {}", error_message(&body));
        }
        let answer: ApplyResponse =
            serde_json::from_slice(&body).context("cortex answered an unexpected apply report")?;
        for (action, outcome) in &answer.outcomes {
            println!("{action}: {outcome}");
        }
        println!("\n{}", answer.summary);
        return Ok(if answer.succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    anyhow::bail!("the cluster's leader moved while the plan was posted; run it again")
}

/// A saved plan file, read before anything else: it says which fleet to check it against.
fn read_plan_file(path: &std::path::Path) -> anyhow::Result<PlanFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    PlanFile::from_json(&text).with_context(|| format!("{} is not a cortex plan file", path.display()))
}

pub async fn apply(args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    if let (Some(url), Some(path)) = (&args.url, &args.plan_file) {
        let key = args.admin_key.clone().or(config.admin_key.clone()).context(
            "no admin key for --url: pass --admin-key, set CORTEX_ADMIN_KEY, or admin_key in cortex.toml",
        )?;
        return apply_through(url, &key, path).await;
    }
    // A clustered fleet is changed by its leader only (the neurons refuse calls without its
    // term): go through the admin API.
    if config.cluster.is_some() {
        anyhow::bail!(
            "cortex.toml has [cluster]: the cluster's leader applies plans. Save one with `cortex plan --out plan.json` and run `cortex apply plan.json --url http://REPLICA:PORT` (any replica; a follower names the leader)"
        );
    }
    let saved = args.plan_file.as_deref().map(read_plan_file).transpose()?;
    // `--fleet` wins; else the fleet the saved plan was made from; else ./fleet or the default.
    let source = match (&args.fleet.fleet, saved.as_ref().and_then(|f| f.fleet.clone())) {
        (Some(dir), _) => FleetSource::Dir(dir.clone()),
        (None, Some(FleetOrigin::Dir(dir))) => FleetSource::Dir(PathBuf::from(dir)),
        (None, Some(FleetOrigin::Embedded)) => FleetSource::Embedded,
        (None, None) => FleetSource::choose(None),
    };
    let fleet = load_fleet(&source)?;
    let token = config.neuron_token()?;
    let observed = crate::control::poller::observe(&fleet, token.as_deref(), &config.poll).await;
    let plan: Plan = match (&args.plan_file, saved) {
        (Some(path), Some(file)) => {
            let stale = file.staleness(&fleet.digest, &observed.topology);
            if !stale.is_empty() {
                anyhow::bail!(
                    "the saved plan {} is stale, refusing to apply it (checked against the fleet in {}):\n  {}\nRun `cortex plan --out FILE` again.",
                    path.display(),
                    source.describe(),
                    stale.join("\n  ")
                );
            }
            file.plan
        }
        _ => {
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
    let view = Arc::new(ProgressView::new(plan.actions.len(), std::io::stdout().is_terminal()));
    let events = view.clone();
    let progress: Arc<dyn Fn(Progress) + Send + Sync> = Arc::new(move |event| events.event(&event));
    let ticking = view.clone();
    let ticker = tokio::spawn(async move {
        // A live bar on a terminal; a plain line now and then otherwise (logs, CI).
        let every = if ticking.terminal { Duration::from_millis(250) } else { Duration::from_secs(10) };
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticks.tick().await;
            ticking.tick();
        }
    });
    println!();
    let report = apply::apply(&plan, &observed.clients, args.parallelism, timeouts, None, progress).await;
    ticker.abort();
    view.clear();
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

/// What `cortex apply` shows while it works: a line per action event, and either a live bar
/// (terminal) or a periodic "still applying" line naming what runs.
struct ProgressView {
    terminal: bool,
    total: usize,
    started: Instant,
    state: Mutex<Tally>,
}

/// Actions finished, and those running (by id) with what they do and since when.
type Tally = (usize, BTreeMap<String, (String, Instant)>);

impl ProgressView {
    fn new(total: usize, terminal: bool) -> Self {
        ProgressView { terminal, total, started: Instant::now(), state: Mutex::new((0, BTreeMap::new())) }
    }

    fn event(&self, event: &Progress) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (bold, reset) = if self.terminal { ("\x1b[1m", "\x1b[0m") } else { ("", "") };
        let line = match event {
            Progress::Started(action) => {
                let verb = match action.kind {
                    ActionKind::Load => "Loading",
                    ActionKind::Unload => "Unloading",
                    ActionKind::Reload => "Reloading",
                };
                let what = format!("{} {} on {}", verb.to_lowercase(), action.model, action.neuron);
                state.1.insert(action.id.clone(), (what, Instant::now()));
                format!("{bold}{}{reset}: {verb} {} on {}...", action.id, action.model, action.neuron)
            }
            Progress::Finished(action, outcome) => {
                state.0 += 1;
                state.1.remove(&action.id);
                let what = format!("{} {} on {}", action.kind.as_str(), action.model, action.neuron);
                match outcome {
                    Outcome::Done { elapsed } => {
                        format!(
                            "{bold}{}{reset}: {what} complete after {:.1}s",
                            action.id,
                            elapsed.as_secs_f64()
                        )
                    }
                    Outcome::Failed { error } => {
                        format!("{bold}{}{reset}: {what} FAILED: {error}", action.id)
                    }
                    Outcome::Skipped { because } => {
                        format!("{bold}{}{reset}: {what} skipped: {because}", action.id)
                    }
                }
            }
        };
        if self.terminal {
            println!("\r\x1b[K{line}");
            self.draw(&state);
        } else {
            println!("{line}");
        }
    }

    fn tick(&self) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if self.terminal {
            self.draw(&state);
        } else if let Some((what, since)) = state.1.values().next() {
            println!(
                "Still applying... [{}s elapsed; {what} for {}s]",
                self.started.elapsed().as_secs(),
                since.elapsed().as_secs()
            );
        }
    }

    /// The live bar: `[######----] 3/5 · 12s · loading m on n (4s)`.
    fn draw(&self, state: &Tally) {
        const WIDTH: usize = 20;
        let filled = (state.0 * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let running = state
            .1
            .values()
            .map(|(what, since)| format!("{what} ({}s)", since.elapsed().as_secs()))
            .collect::<Vec<_>>()
            .join(", ");
        print!(
            "\r\x1b[K[{}{}] {}/{} · {}s · {running}",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            state.0,
            self.total,
            self.started.elapsed().as_secs()
        );
        let _ = std::io::stdout().flush();
    }

    /// Remove the live bar before the summary.
    fn clear(&self) {
        if self.terminal {
            print!("\r\x1b[K");
            let _ = std::io::stdout().flush();
        }
    }
}
