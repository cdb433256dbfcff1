//! `cortex cordon`, `drain`, `uncordon`, `pin` and `unpin`: commands that edit desired state,
//! never runtime state. Each changes the one fleet file that declares the neuron or model,
//! format-preserving (`control::fleetedit`), refuses to write a fleet with errors, prints the
//! diff and the plan it leads to, and with `--commit` (or a hint, under `source = "commit"`)
//! commits it. The daemon does the rest, as for any other edit; `drain --wait` follows it until
//! the neuron holds nothing cortex manages.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use plans::fleet::{Fleet, NeuronState, ReconcileMode, SourceMode};
use plans::maintenance::maintenance;
use plans::plan::PlanOptions;

use crate::cli::{ConfigArgs, FleetArgs, load_config};
use crate::config::Config;
use crate::control::fleetdir::FleetSource;
use crate::control::fleetedit::{self, EditError, FleetEditor};
use crate::control::poller::now_unix_ms;

/// What every edit command takes besides its names.
#[derive(Debug, Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Plan against a saved topology snapshot instead of the live neurons
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Commit the change in the fleet directory's git repository
    #[arg(long, conflicts_with = "dry_run")]
    pub commit: bool,
    /// Show the change and the plan it leads to without writing anything
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct NeuronArgs {
    /// The neuron's name, as its [[neuron]] table declares it
    pub neuron: String,
    #[command(flatten)]
    pub edit: EditArgs,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The neuron's name, as its [[neuron]] table declares it
    pub neuron: String,
    /// Follow the drain until the neuron holds nothing cortex manages ("ready for maintenance")
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// With --wait: give up after this long (exit 1), e.g. "10m" [default: wait as long as it takes]
    #[arg(long, requires = "wait")]
    pub timeout: Option<String>,
    #[command(flatten)]
    pub edit: EditArgs,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// The model's id or an alias
    pub model: String,
    /// The neuron's name
    pub neuron: String,
    #[command(flatten)]
    pub edit: EditArgs,
}

/// One change of desired state.
enum Change<'a> {
    State { neuron: &'a str, to: NeuronState },
    Pin { model: &'a str, neuron: &'a str },
    Unpin { model: &'a str, neuron: &'a str },
}

impl Change<'_> {
    /// The commit message, in the fleet repository's words.
    fn message(&self) -> String {
        match self {
            Change::State { neuron, to: NeuronState::Active } => format!("fleet: uncordon {neuron}"),
            Change::State { neuron, to: NeuronState::Cordoned } => format!("fleet: cordon {neuron}"),
            Change::State { neuron, to: NeuronState::Draining } => format!("fleet: drain {neuron}"),
            Change::Pin { model, neuron } => format!("fleet: pin {model} on {neuron}"),
            Change::Unpin { model, neuron } => format!("fleet: unpin {model} from {neuron}"),
        }
    }
}

pub async fn cordon(args: &NeuronArgs) -> anyhow::Result<ExitCode> {
    let change = Change::State { neuron: &args.neuron, to: NeuronState::Cordoned };
    edit(&args.edit, &change).await.map(|_| ExitCode::SUCCESS)
}

pub async fn uncordon(args: &NeuronArgs) -> anyhow::Result<ExitCode> {
    let change = Change::State { neuron: &args.neuron, to: NeuronState::Active };
    edit(&args.edit, &change).await.map(|_| ExitCode::SUCCESS)
}

pub async fn drain(args: &DrainArgs) -> anyhow::Result<ExitCode> {
    let timeout = match &args.timeout {
        Some(text) => Some(Duration::from_millis(plans::duration::parse_ms(text).with_context(|| {
            format!("--timeout must be a duration like \"90s\", \"10m\" or \"1h\", found {text:?}")
        })?)),
        None => None,
    };
    let change = Change::State { neuron: &args.neuron, to: NeuronState::Draining };
    let fleet = edit(&args.edit, &change).await?;
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    if fleet.policy.source == SourceMode::Commit && !args.edit.commit {
        println!("\nNote: nothing moves until the change is committed (policy.source = \"commit\").");
    }
    let config = load_config(&args.edit.config)?;
    follow(&fleet, &args.neuron, &config, timeout).await
}

pub async fn pin(args: &PinArgs) -> anyhow::Result<ExitCode> {
    let change = Change::Pin { model: &args.model, neuron: &args.neuron };
    edit(&args.edit, &change).await.map(|_| ExitCode::SUCCESS)
}

pub async fn unpin(args: &PinArgs) -> anyhow::Result<ExitCode> {
    let change = Change::Unpin { model: &args.model, neuron: &args.neuron };
    edit(&args.edit, &change).await.map(|_| ExitCode::SUCCESS)
}

/// Make `change` in the fleet directory, show it and the plan it leads to. Returns the fleet
/// as edited (or as it was, when there was nothing to change).
async fn edit(args: &EditArgs, change: &Change<'_>) -> anyhow::Result<Fleet> {
    let (dir, mut editor) = open_editor(&args.fleet)?;
    if let Some(unchanged) = apply(&mut editor, change)? {
        println!("{unchanged}; nothing to change.");
        return Ok(editor.fleet().clone());
    }
    let load = editor.validate();
    let Some(fleet) = load.fleet.clone() else {
        for diagnostic in load.diagnostics.iter().filter(|d| d.is_error()) {
            eprintln!("{diagnostic}");
        }
        anyhow::bail!("this change would make the fleet invalid; nothing was written");
    };
    print!("{}", editor.diff());
    let paths: Vec<String> = editor.changed().iter().map(|(path, _, _)| (*path).to_owned()).collect();
    if args.dry_run {
        println!("\nDry run: nothing was written.");
    } else {
        editor.write()?;
        println!("\nWrote {}.", paths.join(", "));
        if args.commit {
            commit(&dir, &paths, &change.message())?;
        }
    }
    show_plan(args, &dir, &fleet).await?;
    say_what_applies_it(&fleet, args, &dir, &paths, &change.message());
    Ok(fleet)
}

/// The fleet directory `fleet` names, open for editing; a fleet with errors is refused, its
/// diagnostics printed.
pub(crate) fn open_editor(fleet: &FleetArgs) -> anyhow::Result<(PathBuf, FleetEditor)> {
    let dir = match FleetSource::choose(fleet.fleet.clone()) {
        FleetSource::Dir(dir) => dir,
        FleetSource::Embedded => anyhow::bail!(
            "there is no fleet directory to edit (no ./fleet): pass --fleet DIR or set CORTEX_FLEET"
        ),
    };
    match FleetEditor::open(&dir) {
        Err(EditError::Invalid { load, .. }) => {
            for diagnostic in &load.diagnostics {
                eprintln!("{diagnostic}");
            }
            let errors = load.diagnostics.iter().filter(|d| d.is_error()).count();
            anyhow::bail!(
                "the fleet in {} has {errors} error(s); fix them first (nothing was changed)",
                dir.display()
            )
        }
        other => Ok((dir, other?)),
    }
}

/// Make `change` in `editor`; `Some(sentence)` when the fleet already says so.
fn apply(editor: &mut FleetEditor, change: &Change<'_>) -> anyhow::Result<Option<String>> {
    let fleet = editor.fleet().clone();
    let known_neuron = |name: &str| {
        fleet.neuron(name).map(|_| ()).with_context(|| {
            let names: Vec<String> = fleet.neurons.iter().map(|n| format!("{:?}", n.name)).collect();
            format!("unknown neuron {name:?}; known neurons: {}", names.join(", "))
        })
    };
    match *change {
        Change::State { neuron, to } => {
            known_neuron(neuron)?;
            if fleet.neuron_state(neuron) == to {
                return Ok(Some(format!("{neuron} is already {}", to.as_str())));
            }
            let mut declaration =
                editor.declaration("neuron", "name", neuron).context("the neuron's table was not found")?;
            // Active is the default: uncordon takes the key out, leaving the file as it was.
            if to == NeuronState::Active {
                declaration.remove("state");
            } else {
                declaration.set_string("state", to.as_str());
            }
        }
        Change::Pin { model, neuron } | Change::Unpin { model, neuron } => {
            known_neuron(neuron)?;
            let spec = fleet.model(model).with_context(|| format!("unknown model {model:?}"))?;
            let pinned = spec.pinned_on.iter().any(|n| n == neuron);
            let pin = matches!(change, Change::Pin { .. });
            if pinned == pin {
                let is = if pin { "is already pinned on" } else { "is not pinned on" };
                return Ok(Some(format!("{} {is} {neuron}", spec.id)));
            }
            let mut declaration =
                editor.declaration("model", "id", &spec.id).context("the model's table was not found")?;
            let array = declaration.string_array_mut("pinned_on").context("pinned_on is not an array")?;
            if pin {
                fleetedit::push_string(array, neuron);
            } else {
                fleetedit::remove_string(array, neuron);
                // Pinned nowhere: the key goes, as if it had never been written.
                if array.is_empty() {
                    declaration.remove("pinned_on");
                }
            }
        }
    }
    Ok(None)
}

/// `git add` and `git commit` the changed files in the fleet directory's repository.
pub(crate) fn commit(dir: &std::path::Path, paths: &[String], message: &str) -> anyhow::Result<()> {
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let output = Command::new("git").arg("-C").arg(dir).args(args).output().context("cannot run git")?;
        let text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        anyhow::ensure!(output.status.success(), "git {} failed: {text}", args.first().unwrap_or(&""));
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let absolute: Vec<String> = paths.iter().map(|p| absolute(p)).collect();
    let mut add = vec!["add", "--"];
    add.extend(absolute.iter().map(String::as_str));
    git(&add)?;
    let mut commit_args = vec!["commit", "--quiet", "-m", message, "--"];
    commit_args.extend(absolute.iter().map(String::as_str));
    git(&commit_args)?;
    let head = git(&["rev-parse", "--short", "HEAD"])?;
    println!("Committed {head}: {message}");
    Ok(())
}

fn absolute(path: &str) -> String {
    std::path::absolute(path).map_or_else(|_| path.to_owned(), |p| p.display().to_string())
}

/// Print the plan the edited fleet leads to against the live neurons (or `--topology`).
async fn show_plan(args: &EditArgs, dir: &std::path::Path, fleet: &Fleet) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    let topology = crate::cli::plan::topology_for(fleet, args.topology.as_ref(), &config).await?;
    let now = now_unix_ms();
    let plan = plans::plan::plan(fleet, &topology, &PlanOptions { now_unix_ms: now, prune: false });
    let revision = FleetSource::Dir(dir.to_path_buf()).revision();
    println!("\nThe plan this leads to:\n");
    print!("{}", plans::plan::render_text(&plan, &topology, fleet, &revision, now));
    Ok(())
}

/// One line on who acts on the change now.
fn say_what_applies_it(
    fleet: &Fleet,
    args: &EditArgs,
    dir: &std::path::Path,
    paths: &[String],
    message: &str,
) {
    if args.dry_run {
        return;
    }
    let committed = args.commit;
    let line = match (fleet.policy.source, fleet.policy.reconcile) {
        (SourceMode::Commit, _) if !committed => format!(
            "\npolicy.source = \"commit\": cortex serve applies only what is committed. Commit it:\n  git -C {} commit -m {:?} -- {}\n(or run the command with --commit)",
            dir.display(),
            message,
            paths.iter().map(|p| absolute(p)).collect::<Vec<_>>().join(" ")
        ),
        (_, ReconcileMode::Off) => {
            "\nreconcile = \"off\": cortex serve reports this plan; run `cortex apply` to perform it."
                .to_owned()
        }
        _ => "\ncortex serve applies it (reconcile = \"auto\"); follow it with `cortex status`.".to_owned(),
    };
    println!("{line}");
}

/// Follow a drain until `neuron` holds nothing cortex manages, printing each change of its
/// progress; exit 1 after `timeout`.
async fn follow(
    fleet: &Fleet,
    neuron: &str,
    config: &Config,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let token = config.neuron_token()?;
    let every = config.poll.interval.clamp(Duration::from_millis(200), Duration::from_secs(2));
    let started = Instant::now();
    let mut shown = String::new();
    println!("\nWaiting for {neuron} to drain…");
    loop {
        let observed = crate::control::poller::observe(fleet, token.as_deref(), &config.poll).await;
        let plan = plans::plan::plan(
            fleet,
            &observed.topology,
            &PlanOptions { now_unix_ms: now_unix_ms(), prune: false },
        );
        let progress = maintenance(fleet, &observed.topology, &plan).into_iter().find(|m| m.neuron == neuron);
        let Some(progress) = progress else {
            anyhow::bail!("{neuron} is no longer draining in the fleet");
        };
        let line = progress.summary();
        if line != shown {
            println!("  {line}");
            shown = line;
        }
        if progress.safe_to_stop {
            println!(
                "{neuron} is ready for maintenance. Stop it now; bring it back with `cortex uncordon {neuron}`."
            );
            return Ok(ExitCode::SUCCESS);
        }
        if timeout.is_some_and(|limit| started.elapsed() >= limit) {
            eprintln!("error: {neuron} is not drained after {:?}: {shown}", started.elapsed());
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(every).await;
    }
}
