//! The desired state while the daemon runs: loads the fleet directory (the saved files, or in
//! `source = "commit"` mode what is committed at HEAD), watches it with a debounced notify
//! watcher, and publishes each new valid fleet. An invalid fleet is never published: the last
//! good one stays in force and the status carries the diagnostics. Nor is a destructive one (it
//! would drop every neuron or every model, or the directory vanished) unless the operator
//! allows it. It never writes a file.
//!
//! The watcher reacts to edits only (create, data change, rename, remove of non-hidden entries,
//! and new commits), never to opens, reads or metadata: reading the fleet must not wake it.
//! Reading (files and git) runs on the blocking pool, off the async workers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::event::ModifyKind;
use notify_debouncer_full::notify::{EventKind, RecursiveMode};
use plans::diagnostic::Diagnostic;
use plans::fleet::{Fleet, SourceMode};
use plans::plan::Revision;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::fleetdir::FleetSource;
use crate::control::lastgood::{LastGood, SavedFleet};
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
    /// Why the last read was not applied although it parsed (or could not be read at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
    /// How many times the watcher has read the fleet since the daemon started.
    #[serde(default)]
    pub reloads: u64,
    /// Set when the fleet in force is not the fleet directory's own: it was invalid when the
    /// daemon started, and this says which saved fleet is served instead (the last good one,
    /// from the state directory or the cluster), or that none was left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A fleet read that was not applied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RefusalReason {
    /// It would drop every neuron or every model of the fleet in force.
    DestructiveChange,
    /// The directory (or a file in it) cannot be read, e.g. it was deleted.
    Unreadable,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::DestructiveChange => "DestructiveChange",
            RefusalReason::Unreadable => "Unreadable",
        }
    }
}

/// Why `next` would destroy what `current` declares: every neuron or every model dropped.
/// `None` when it keeps some of each (or `current` had none to lose).
pub fn destructive(current: &Fleet, next: &Fleet) -> Option<String> {
    let names = |items: Vec<&str>| -> String {
        let shown: Vec<&str> = items.iter().take(5).copied().collect();
        let more = items.len().saturating_sub(shown.len());
        if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
    };
    if !current.neurons.is_empty() && next.neurons.is_empty() {
        let dropped = names(current.neurons.iter().map(|n| n.name.as_str()).collect());
        return Some(format!(
            "the fleet declares no neurons; it would drop all {} of the fleet in force ({dropped})",
            current.neurons.len()
        ));
    }
    if !current.models.is_empty() && next.models.is_empty() {
        let dropped = names(current.models.iter().map(|m| m.id.as_str()).collect());
        return Some(format!(
            "the fleet declares no models; it would drop all {} of the fleet in force ({dropped})",
            current.models.len()
        ));
    }
    None
}

/// One attempt to read the fleet.
pub struct Loaded {
    pub fleet: Option<Fleet>,
    pub status: FleetStatus,
    /// The `(path, text)` files the fleet was loaded from (what is saved as the last good one).
    pub files: Vec<(String, String)>,
}

/// Read the fleet. The saved files decide the mode: with `source = "commit"` the fleet is read
/// again from HEAD, and saved edits only show as pending.
pub fn load(source: &FleetSource) -> anyhow::Result<Loaded> {
    let files = source.read()?;
    load_from(source, files, true)
}

fn load_from(source: &FleetSource, files: Vec<(String, String)>, git: bool) -> anyhow::Result<Loaded> {
    let worktree = plans::fleet::load(&files);
    let revision = if git { source.revision() } else { Revision::default() };
    let commit_mode = worktree.fleet.as_ref().is_some_and(|f| f.policy.source == SourceMode::Commit);
    let (load, pending, files) = match (source, commit_mode) {
        (FleetSource::Dir(dir), true) => {
            let committed = committed_files(dir)?;
            (plans::fleet::load(&committed), revision.dirty, committed)
        }
        _ => (worktree, false, files),
    };
    let status = FleetStatus {
        revision,
        digest: load.fleet.as_ref().map(|f| f.digest.clone()).unwrap_or_default(),
        source: if commit_mode { SourceMode::Commit } else { SourceMode::Worktree },
        valid: load.fleet.is_some(),
        diagnostics: load.diagnostics,
        pending,
        loaded_at_unix_ms: now_unix_ms(),
        refused: None,
        reloads: 0,
        fallback: None,
    };
    Ok(Loaded { fleet: load.fleet, status, files })
}

/// A read that failed altogether (the directory cannot be read): no fleet, and why.
pub fn unreadable(error: &anyhow::Error) -> Loaded {
    let status = FleetStatus {
        valid: false,
        refused: Some(Refusal { reason: RefusalReason::Unreadable, message: format!("{error:#}") }),
        loaded_at_unix_ms: now_unix_ms(),
        ..FleetStatus::default()
    };
    Loaded { fleet: None, status, files: Vec::new() }
}

/// The `*.toml` files under `dir` as committed at HEAD, with the same paths as on disk.
fn committed_files(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
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
    /// The fleet in force with its files, once one came from the fleet directory (not a
    /// fallback): what a cluster leader publishes as the last good fleet.
    pub saved: watch::Receiver<Option<Arc<SavedFleet>>>,
}

/// Where each fleet that comes into force is kept: on disk (a fleet directory's) and for the
/// cluster.
pub struct Keeper {
    disk: Option<LastGood>,
    source: String,
    saved: watch::Sender<Option<Arc<SavedFleet>>>,
}

/// How long file events are collected before one reload: editors save in bursts (write to a
/// temporary file, rename over the original), and one reload per burst is enough.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// How often a vanished fleet directory is looked for again.
const VANISHED_RETRY: Duration = Duration::from_secs(2);

/// Whether a destructive fleet (see [`destructive`]) may be applied.
#[derive(Clone, Copy, Debug, Default)]
pub struct Guard {
    /// `cortex serve --allow-destroy-all` / `[reconcile] allow_destroy_all = true`.
    pub allow_destroy_all: bool,
}

/// Watch `source` (a directory) and publish each new valid fleet until `shutdown`.
pub fn spawn(
    source: FleetSource,
    initial: Loaded,
    guard: Guard,
    keep: Option<LastGood>,
    shutdown: CancellationToken,
) -> anyhow::Result<FleetHandle> {
    let fleet = initial.fleet.ok_or_else(|| anyhow::anyhow!("the fleet is invalid; nothing to serve"))?;
    let (saved_sender, saved) = watch::channel(None);
    let keep = Keeper { disk: keep, source: source.describe(), saved: saved_sender };
    if initial.status.fallback.is_none() {
        save(&keep, &fleet, &initial.status, initial.files);
    }
    let (fleet_sender, fleet_receiver) = watch::channel(Arc::new(fleet));
    let (status_sender, status_receiver) = watch::channel(Arc::new(initial.status));
    let handle = FleetHandle { fleet: fleet_receiver, status: status_receiver, saved };
    let FleetSource::Dir(dir) = source.clone() else {
        // The embedded fleet never changes.
        return Ok(handle);
    };
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let git = git_dir(&dir);
    let (events, mut triggers) = tokio::sync::mpsc::unbounded_channel::<()>();
    let filter = EditFilter { dir: dir.clone(), git: git.clone() };
    let mut debouncer = notify_debouncer_full::new_debouncer(
        DEBOUNCE,
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            if result.is_ok_and(|batch| batch.iter().any(|e| filter.is_edit(&e.event))) {
                let _ = events.send(());
            }
        },
    )?;
    debouncer.watch(&dir, RecursiveMode::Recursive)?;
    // New commits change files under the git directory, not the fleet directory.
    if let Some(git_dir) = &git {
        for watched in [git_dir.join("HEAD"), git_dir.join("refs")] {
            if watched.exists() {
                debouncer.watch(&watched, RecursiveMode::Recursive)?;
            }
        }
    }
    tokio::spawn(async move {
        let mut debouncer = debouncer; // watching stops when this task ends
        loop {
            // A vanished directory sends no more events: look for it again now and then.
            let vanished = !dir.is_dir();
            let retry = async {
                if vanished { tokio::time::sleep(VANISHED_RETRY).await } else { std::future::pending().await }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                trigger = triggers.recv() => if trigger.is_none() { return },
                () = retry => {
                    if !dir.is_dir() { continue; }
                    // It is back (a restored checkout): watch the new directory.
                    if let Err(error) = debouncer.watch(&dir, RecursiveMode::Recursive) {
                        tracing::warn!(%error, dir = %dir.display(), "cannot watch the fleet directory again");
                    }
                }
            }
            // Collapse triggers that queued up while we were busy.
            while triggers.try_recv().is_ok() {}
            let reading = source.clone();
            let loaded = tokio::task::spawn_blocking(move || read(&reading, guard)).await;
            let loaded = loaded.unwrap_or_else(|e| Err(anyhow::anyhow!("the fleet reader stopped: {e}")));
            reload(loaded, guard, &keep, &fleet_sender, &status_sender);
        }
    });
    Ok(handle)
}

/// Which notify events are edits of the fleet.
struct EditFilter {
    dir: PathBuf,
    git: Option<PathBuf>,
}

impl EditFilter {
    fn is_edit(&self, event: &notify_debouncer_full::notify::Event) -> bool {
        let edit = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_))
        );
        edit && event.paths.iter().any(|path| self.relevant(path))
    }

    /// A non-hidden entry of the fleet directory (the reader skips hidden ones, and `.git`
    /// inside it changes whenever git looks), or the git HEAD and refs.
    fn relevant(&self, path: &Path) -> bool {
        if let Some(git) = &self.git
            && (path.starts_with(git.join("HEAD")) || path.starts_with(git.join("refs")))
        {
            return true;
        }
        path.strip_prefix(&self.dir)
            .is_ok_and(|rest| !rest.components().any(|c| c.as_os_str().to_string_lossy().starts_with('.')))
    }
}

/// Read the fleet for the watcher: like [`load`], except that a vanished directory reads as
/// an empty fleet when destroying everything is allowed.
pub fn read(source: &FleetSource, guard: Guard) -> anyhow::Result<Loaded> {
    if let FleetSource::Dir(dir) = source
        && guard.allow_destroy_all
        && !dir.exists()
    {
        let mut loaded = load_from(source, Vec::new(), false)?;
        loaded.status.revision = Revision::default();
        return Ok(loaded);
    }
    load(source)
}

/// Reload once from `loaded`; publish the fleet only when it is valid, not a refused
/// destructive change, and differs from the one in force.
pub fn reload(
    loaded: anyhow::Result<Loaded>,
    guard: Guard,
    keep: &Keeper,
    fleet: &watch::Sender<Arc<Fleet>>,
    status: &watch::Sender<Arc<FleetStatus>>,
) {
    metrics::counter!("cortex_fleet_reloads_total").increment(1);
    let current = status.borrow().clone();
    let mut next = match loaded {
        Ok(loaded) => accept(loaded, guard, keep, fleet, &current),
        Err(error) => {
            tracing::warn!(%error, "cannot read the fleet; keeping the one in force");
            FleetStatus {
                valid: false,
                refused: Some(Refusal { reason: RefusalReason::Unreadable, message: format!("{error:#}") }),
                loaded_at_unix_ms: now_unix_ms(),
                ..current.as_ref().clone()
            }
        }
    };
    next.reloads = current.reloads + 1;
    status.send_if_modified(|old| {
        let changed = old.digest != next.digest
            || old.revision != next.revision
            || old.valid != next.valid
            || old.diagnostics != next.diagnostics
            || old.pending != next.pending
            || old.refused != next.refused
            || old.fallback != next.fallback;
        *old = Arc::new(next);
        changed
    });
}

/// The status after a read that produced `loaded`, publishing its fleet when acceptable.
fn accept(
    loaded: Loaded,
    guard: Guard,
    keep: &Keeper,
    fleet: &watch::Sender<Arc<Fleet>>,
    current: &FleetStatus,
) -> FleetStatus {
    let mut next = loaded.status;
    let keep_current = |next: &mut FleetStatus| {
        // The fleet in force keeps its own digest and revision (and, if it is a saved one
        // served since start, says so still).
        next.digest = current.digest.clone();
        next.revision = current.revision.clone();
        next.fallback = current.fallback.clone();
    };
    match loaded.fleet {
        Some(new) => {
            let in_force = fleet.borrow().clone();
            if let Some(why) = destructive(&in_force, &new).filter(|_| !guard.allow_destroy_all) {
                tracing::warn!(
                    "refusing the edited fleet as a destructive change: {why} (allow it with `cortex serve --allow-destroy-all`)"
                );
                next.valid = false;
                next.refused = Some(Refusal { reason: RefusalReason::DestructiveChange, message: why });
                keep_current(&mut next);
            } else if in_force.digest != new.digest || current.fallback.is_some() {
                tracing::info!(digest = %new.digest, revision = ?next.revision.commit, "fleet changed");
                save(keep, &new, &next, loaded.files);
                fleet.send_replace(Arc::new(new));
            }
        }
        None => {
            let errors = next.diagnostics.iter().filter(|d| d.is_error()).count();
            tracing::warn!(errors, "the edited fleet is invalid; keeping the last good one");
            for diagnostic in &next.diagnostics {
                tracing::warn!("{diagnostic}");
            }
            keep_current(&mut next);
        }
    }
    next
}

/// Keep `fleet`, now in force, as the last good one (a failure to write is logged: serving
/// goes on).
fn save(keep: &Keeper, fleet: &Fleet, status: &FleetStatus, files: Vec<(String, String)>) {
    let saved = SavedFleet::new(&keep.source, status.revision.clone(), fleet.digest.clone(), files);
    if let Some(disk) = &keep.disk
        && let Err(error) = disk.save(&saved)
    {
        tracing::warn!(%error, path = %disk.path().display(), "cannot keep a copy of the fleet in force");
    }
    keep.saved.send_replace(Some(Arc::new(saved)));
}

fn git_dir(dir: &Path) -> Option<PathBuf> {
    let output =
        Command::new("git").arg("-C").arg(dir).args(["rev-parse", "--absolute-git-dir"]).output().ok()?;
    output.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

#[cfg(test)]
mod tests {
    use notify_debouncer_full::notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, MetadataKind,
    };
    use notify_debouncer_full::notify::{Event, EventKind};

    use super::*;

    fn fleet(text: &str) -> Fleet {
        plans::fleet::load(&[("fleet/fleet.toml".to_owned(), text.to_owned())]).fleet.expect("valid")
    }

    #[test]
    fn a_fleet_dropping_every_neuron_or_model_is_destructive() {
        let full = fleet(
            "[[neuron]]\nname = \"n1\"\nendpoint = \"http://n1:13131\"\n\n[[model]]\nid = \"m\"\nharness = \"sim\"\nsource = \"m\"\npinned_on = [\"n1\"]\n",
        );
        let no_models = fleet("[[neuron]]\nname = \"n1\"\nendpoint = \"http://n1:13131\"\n");
        let empty = fleet("");
        assert_eq!(
            destructive(&full, &empty).as_deref(),
            Some("the fleet declares no neurons; it would drop all 1 of the fleet in force (n1)")
        );
        assert_eq!(
            destructive(&full, &no_models).as_deref(),
            Some("the fleet declares no models; it would drop all 1 of the fleet in force (m)")
        );
        assert_eq!(destructive(&full, &full), None);
        assert_eq!(destructive(&empty, &empty), None, "nothing to lose");
    }

    #[test]
    fn only_edits_of_visible_entries_and_commits_count() {
        let filter = EditFilter { dir: PathBuf::from("/f"), git: Some(PathBuf::from("/f/.git")) };
        let event = |kind: EventKind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        assert!(filter.is_edit(&event(data, "/f/fleet.toml")));
        assert!(filter.is_edit(&event(EventKind::Create(CreateKind::File), "/f/sub/x.toml")));
        assert!(filter.is_edit(&event(data, "/f/.git/refs/heads/main")), "a commit");
        assert!(
            !filter.is_edit(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/f/fleet.toml"))
        );
        assert!(
            !filter.is_edit(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)), "/f/fleet.toml"))
        );
        assert!(
            !filter
                .is_edit(&event(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)), "/f/fleet.toml"))
        );
        assert!(!filter.is_edit(&event(data, "/f/.git/index")), "git looking is not an edit");
        assert!(!filter.is_edit(&event(data, "/f/.fleet.toml.swp")));
    }
}
