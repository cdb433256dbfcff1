//! `cortex key new` and `cortex key revoke`: client keys as desired state. `new` makes a secret,
//! prints it once and appends a `[[key]]` table with its digest to a fleet file; `revoke` sets
//! `revoked = true` on the key's table. Both edit format-preserving (`control::fleetedit`),
//! refuse to write a fleet with errors, print the diff and commit with `--commit`; the daemon
//! applies the edit with its next reload, like any other.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use plans::fleet::Fleet;
use sha2::{Digest, Sha256};
use toml_edit::{Array, Table, Value};

use crate::cli::FleetArgs;
use crate::cli::maintain::open_editor;
use crate::control::fleetedit::FleetEditor;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key: print its secret once and add its [[key]] table (with the digest) to the fleet
    New(NewArgs),
    /// Revoke a key: set revoked = true on its [[key]] table (refused from the next reload)
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The key's name (in usage, metrics and logs)
    pub name: String,
    /// Models it may use: ids, aliases or globs, comma-separated [default: every model]
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Requests per minute
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests in flight at once
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// Tokens (prompt + completion) per UTC day
    #[arg(long)]
    pub tokens_per_day: Option<u64>,
    /// Tokens (prompt + completion) per UTC month
    #[arg(long)]
    pub tokens_per_month: Option<u64>,
    /// interactive, batch or a number (higher goes first) [default: interactive]
    #[arg(long)]
    pub priority: Option<String>,
    /// When it stops working: a date (2026-12-31) or a date-time (2026-12-31T18:00:00Z)
    #[arg(long)]
    pub expires: Option<String>,
    /// What it opens besides the inference API: read_only or admin
    #[arg(long)]
    pub operator: Option<String>,
    /// The fleet file to add it to [default: the file that declares keys, else keys.toml]
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub edit: KeyEditArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The key's name
    pub name: String,
    #[command(flatten)]
    pub edit: KeyEditArgs,
}

#[derive(Debug, Args)]
pub struct KeyEditArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Commit the change in the fleet directory's git repository
    #[arg(long, conflicts_with = "dry_run")]
    pub commit: bool,
    /// Show the change without writing anything (`new` prints no secret then)
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(command: &KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::New(args) => new(args),
        KeyCommand::Revoke(args) => revoke(args),
    }
}

fn new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    let (dir, mut editor) = open_editor(&args.edit.fleet)?;
    if editor.fleet().key(&args.name).is_some() {
        anyhow::bail!("a key named {:?} is declared already; revoke it or choose another name", args.name);
    }
    let secret = secret()?;
    let path = match &args.file {
        Some(file) => absolute_in(&dir, file),
        None => editor
            .file_declaring("key")
            .map_or_else(|| dir.join("keys.toml").display().to_string(), str::to_owned),
    };
    let table = table(args, &hex(&Sha256::digest(secret.as_bytes())))?;
    let comment = format!("{}: made by `cortex key new` on {}", args.name, today());
    editor.append(&path, "key", table, &comment)?;
    let message = format!("fleet: add key {}", args.name);
    write(&editor, &dir, &args.edit, &message)?;
    if !args.edit.dry_run {
        println!("\nThe key's secret, shown this once (the fleet keeps only its digest):\n\n  {secret}\n");
        println!("Clients send it as `Authorization: Bearer …` or `x-api-key: …`.");
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(args: &RevokeArgs) -> anyhow::Result<ExitCode> {
    let (dir, mut editor) = open_editor(&args.edit.fleet)?;
    let Some(key) = editor.fleet().key(&args.name) else {
        let names: Vec<String> = editor.fleet().keys.iter().map(|k| format!("{:?}", k.name)).collect();
        anyhow::bail!(
            "unknown key {:?}; declared keys: {}",
            args.name,
            if names.is_empty() { "none".into() } else { names.join(", ") }
        );
    };
    if key.revoked {
        println!("{} is revoked already; nothing to change.", args.name);
        return Ok(ExitCode::SUCCESS);
    }
    let mut declaration =
        editor.declaration("key", "name", &args.name).context("the key's table was not found")?;
    declaration.set_value("revoked", Value::from(true));
    write(&editor, &dir, &args.edit, &format!("fleet: revoke key {}", args.name))?;
    Ok(ExitCode::SUCCESS)
}

/// Check the edited fleet, print the diff, write (unless a dry run) and commit (if asked).
fn write(editor: &FleetEditor, dir: &Path, args: &KeyEditArgs, message: &str) -> anyhow::Result<Fleet> {
    let load = editor.validate();
    let Some(fleet) = load.fleet.clone() else {
        for diagnostic in load.diagnostics.iter().filter(|d| d.is_error()) {
            eprintln!("{diagnostic}");
        }
        anyhow::bail!("this change would make the fleet invalid; nothing was written");
    };
    print!("{}", editor.diff());
    if args.dry_run {
        println!("\nDry run: nothing was written.");
        return Ok(fleet);
    }
    let paths = editor.write()?;
    println!("\nWrote {}.", paths.join(", "));
    if args.commit {
        crate::cli::maintain::commit(dir, &paths, message)?;
    } else if fleet.policy.source == plans::fleet::SourceMode::Commit {
        println!("policy.source = \"commit\": cortex serve applies it once committed (or pass --commit).");
    } else {
        println!("cortex serve applies it with its next reload of the fleet.");
    }
    Ok(fleet)
}

/// The `[[key]]` table `args` describe, with the secret's digest.
fn table(args: &NewArgs, digest: &str) -> anyhow::Result<Table> {
    let mut table = Table::new();
    table.insert("name", toml_edit::value(args.name.as_str()));
    table.insert("sha256", toml_edit::value(digest));
    if let Some(models) = &args.models {
        let array: Array = models.iter().map(|m| m.trim()).filter(|m| !m.is_empty()).collect();
        table.insert("models", toml_edit::value(array));
    }
    let numbers = [
        ("rpm", args.rpm),
        ("tpm", args.tpm),
        ("max_concurrency", args.max_concurrency.map(u64::from)),
        ("tokens_per_day", args.tokens_per_day),
        ("tokens_per_month", args.tokens_per_month),
    ];
    for (key, number) in numbers {
        if let Some(number) = number {
            let number =
                i64::try_from(number).with_context(|| format!("--{} is too large", key.replace('_', "-")))?;
            table.insert(key, toml_edit::value(number));
        }
    }
    if let Some(priority) = &args.priority {
        let value = match priority.parse::<i64>() {
            Ok(number) => toml_edit::value(number),
            Err(_) => toml_edit::value(priority.as_str()),
        };
        table.insert("priority", value);
    }
    if let Some(expires) = &args.expires {
        let moment: toml_edit::Datetime = expires.parse().map_err(|_| {
            anyhow::anyhow!("--expires must be a date like 2026-12-31 or a date-time like 2026-12-31T18:00:00Z, found {expires:?}")
        })?;
        table.insert("expires", toml_edit::value(moment));
    }
    if let Some(operator) = &args.operator {
        table.insert("operator", toml_edit::value(operator.as_str()));
    }
    Ok(table)
}

/// A new secret: `ck-` and 48 hex digits of the system's randomness (192 bits).
fn secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for a new secret")?;
    Ok(format!("ck-{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `file` as given, or inside the fleet directory when relative and not found from here.
fn absolute_in(dir: &Path, file: &Path) -> String {
    let inside =
        if file.is_absolute() || file.starts_with(dir) { file.to_path_buf() } else { dir.join(file) };
    inside.display().to_string()
}

/// Today's date (UTC), for the table's comment.
fn today() -> String {
    let days = i64::try_from(crate::control::poller::now_unix_ms() / 86_400_000).unwrap_or(0);
    let (year, month, day) = crate::gateway::core::keys::limits::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}
