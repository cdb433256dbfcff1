//! Reading the fleet directory from disk: its `*.toml` files (recursively, sorted by path) as
//! `(path, text)` pairs for `plans::fleet::load`, and its git revision.

use std::path::{Path, PathBuf};
use std::process::Command;

use plans::plan::Revision;

/// The default fleet compiled into the binary, used when no fleet directory exists.
const EMBEDDED: &[(&str, &str)] = &[("fleet/fleet.toml", include_str!("../../../fleet/fleet.toml"))];

/// Where a fleet comes from.
#[derive(Clone, Debug)]
pub enum FleetSource {
    Dir(PathBuf),
    Embedded,
}

impl FleetSource {
    /// `--fleet DIR` if given; else `./fleet` if it exists; else the embedded default.
    pub fn choose(flag: Option<PathBuf>) -> FleetSource {
        match flag {
            Some(dir) => FleetSource::Dir(dir),
            None if Path::new("fleet").is_dir() => FleetSource::Dir(PathBuf::from("fleet")),
            None => FleetSource::Embedded,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            FleetSource::Dir(dir) => dir.display().to_string(),
            FleetSource::Embedded => "the embedded default fleet".to_owned(),
        }
    }

    /// The files, as `(path, text)`, sorted by path.
    pub fn read(&self) -> anyhow::Result<Vec<(String, String)>> {
        match self {
            FleetSource::Dir(dir) => read_dir(dir),
            FleetSource::Embedded => {
                Ok(EMBEDDED.iter().map(|(p, t)| ((*p).to_owned(), (*t).to_owned())).collect())
            }
        }
    }

    /// The git revision of the directory (`commit: None` outside git or for the embedded fleet).
    pub fn revision(&self) -> Revision {
        match self {
            FleetSource::Dir(dir) => git_revision(dir),
            FleetSource::Embedded => Revision { commit: None, dirty: false },
        }
    }
}

/// Every `*.toml` under `dir`, recursively, sorted by path. Hidden entries are skipped.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut paths = Vec::new();
    collect(dir, &mut paths)
        .map_err(|e| anyhow::anyhow!("cannot read fleet directory {}: {e}", dir.display()))?;
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            Ok((path.display().to_string(), text))
        })
        .collect()
}

fn collect(dir: &Path, paths: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect(&path, paths)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    Ok(())
}

/// The commit at HEAD of the repository holding `dir`, and whether `dir` has uncommitted changes.
fn git_revision(dir: &Path) -> Revision {
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return Revision { commit: None, dirty: false };
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=all", "--", "."]).is_some_and(|s| !s.is_empty());
    Revision { commit: Some(commit), dirty }
}
