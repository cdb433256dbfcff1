//! The desired state while the daemon runs: loads the fleet directory (the saved files, or in
//! `source = "commit"` mode what is committed at HEAD), watches it with a debounced notify
//! watcher, and publishes each new valid fleet. An invalid fleet is never published: the last
//! good one stays in force and the status carries the diagnostics. It never writes a file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use plans::diagnostic::Diagnostic;
use plans::fleet::{Fleet, SourceMode};
use plans::plan::Revision;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::fleetdir::FleetSource;
use crate::control::poller::now_unix_ms;

/// How the last load of the fleet went; shown by `cortex status`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct FleetStatus {
    /// The revision of the fleet in force (the last good one).
    pub revision: Revision,
    pub digest: String,
    pub source: SourceMode,
    /// Whether the last attempt to load produced a valid fleet.
    pub valid: bool,
    /// Diagnostics of the last attempt (errors mean the fleet in force is an older one).
    pub diagnostics: Vec<Diagnostic>,
    /// In commit mode: saved edits that are not committed, hence not applied.
    pub pending: bool,
    pub loaded_at_unix_ms: u64,
}

/// One attempt to read the fleet.
pub struct Loaded {
    pub fleet: Option<Fleet>,
    pub status: FleetStatus,
}

/// Read the fleet. The saved files decide the mode: with `source = "commit"` the fleet is read
/// again from HEAD, and saved edits only show as pending.
pub fn load(source: &FleetSource) -> anyhow::Result<Loaded> {
    let files = source.read()?;
    let worktree = plans::fleet::load(&files);
    let revision = source.revision();
    let commit_mode = worktree.fleet.as_ref().is_some_and(|f| f.policy.source == SourceMode::Commit);
    let (load, pending) = match (source, commit_mode) {
        (FleetSource::Dir(dir), true) => (plans::fleet::load(&committed_files(dir)?), revision.dirty),
        _ => (worktree, false),
    };
    let status = FleetStatus {
        revision,
        digest: load.fleet.as_ref().map(|f| f.digest.clone()).unwrap_or_default(),
        source: if commit_mode { SourceMode::Commit } else { SourceMode::Worktree },
        valid: load.fleet.is_some(),
        diagnostics: load.diagnostics,
        pending,
        loaded_at_unix_ms: now_unix_ms(),
    };
    Ok(Loaded { fleet: load.fleet, status })
}

/// The `*.toml` files under `dir` as committed at HEAD, with the same paths as on disk.
pub fn committed_files(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let git = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let output = Command::new("git").arg("-C").arg(dir).args(args).output()?;
        anyhow::ensure!(
            output.status.success(),
            "git {} failed in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(output.stdout)
    };
    let listing = git(&["ls-tree", "-r", "-z", "--name-only", "HEAD", "--", "."])?;
    let mut paths: Vec<String> = listing
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|p| p.ends_with(".toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = git(&["show", &format!("HEAD:./{path}")])?;
            Ok((dir.join(&path).display().to_string(), String::from_utf8_lossy(&text).into_owned()))
        })
        .collect()
}

/// Handles to the running fleet watcher.
#[derive(Clone)]
pub struct FleetHandle {
    /// The fleet in force. Only the watcher writes it.
    pub fleet: watch::Receiver<Arc<Fleet>>,
    pub status: watch::Receiver<Arc<FleetStatus>>,
}

/// How long file events are collected before one reload: editors save in bursts (write to a
/// temporary file, rename over the original), and one reload per burst is enough.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watch `source` (a directory) and publish each new valid fleet until `shutdown`.
pub fn spawn(
    source: FleetSource,
    initial: Loaded,
    shutdown: CancellationToken,
) -> anyhow::Result<FleetHandle> {
    let fleet = initial.fleet.ok_or_else(|| anyhow::anyhow!("the fleet is invalid; nothing to serve"))?;
    let (fleet_sender, fleet_receiver) = watch::channel(Arc::new(fleet));
    let (status_sender, status_receiver) = watch::channel(Arc::new(initial.status));
    let handle = FleetHandle { fleet: fleet_receiver, status: status_receiver };
    let FleetSource::Dir(dir) = source.clone() else {
        // The embedded fleet never changes.
        return Ok(handle);
    };
    let (events, mut triggers) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut debouncer = notify_debouncer_full::new_debouncer(
        DEBOUNCE,
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            if result.is_ok_and(|events| !events.is_empty()) {
                let _ = events.send(());
            }
        },
    )?;
    debouncer.watch(&dir, RecursiveMode::Recursive)?;
    // New commits change files under the git directory, not the fleet directory.
    if let Some(git_dir) = git_dir(&dir) {
        for watched in [git_dir.join("HEAD"), git_dir.join("refs")] {
            if watched.exists() {
                debouncer.watch(&watched, RecursiveMode::Recursive)?;
            }
        }
    }
    tokio::spawn(async move {
        let _debouncer = debouncer; // watching stops when this task ends
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                trigger = triggers.recv() => if trigger.is_none() { return },
            }
            // Collapse triggers that queued up while we were busy.
            while triggers.try_recv().is_ok() {}
            reload(&source, &fleet_sender, &status_sender);
        }
    });
    Ok(handle)
}

/// Reload once; publish the fleet only when it is valid and differs from the one in force.
pub fn reload(
    source: &FleetSource,
    fleet: &watch::Sender<Arc<Fleet>>,
    status: &watch::Sender<Arc<FleetStatus>>,
) {
    let loaded = match load(source) {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::warn!(%error, "cannot read the fleet; keeping the one in force");
            return;
        }
    };
    let mut next = loaded.status;
    match loaded.fleet {
        Some(new) => {
            if fleet.borrow().digest != new.digest {
                tracing::info!(digest = %new.digest, revision = ?next.revision.commit, "fleet changed");
                fleet.send_replace(Arc::new(new));
            }
        }
        None => {
            let errors = next.diagnostics.iter().filter(|d| d.is_error()).count();
            tracing::warn!(errors, "the edited fleet is invalid; keeping the last good one");
            for diagnostic in &next.diagnostics {
                tracing::warn!("{diagnostic}");
            }
            // The fleet in force keeps its own digest and revision.
            let current = status.borrow().clone();
            next.digest = current.digest.clone();
            next.revision = current.revision.clone();
        }
    }
    status.send_if_modified(|old| {
        let changed = old.digest != next.digest
            || old.revision != next.revision
            || old.valid != next.valid
            || old.diagnostics != next.diagnostics
            || old.pending != next.pending;
        *old = Arc::new(next);
        changed
    });
}

fn git_dir(dir: &Path) -> Option<PathBuf> {
    let output =
        Command::new("git").arg("-C").arg(dir).args(["rev-parse", "--absolute-git-dir"]).output().ok()?;
    output.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}
