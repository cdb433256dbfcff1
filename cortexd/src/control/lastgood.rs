//! The last good fleet, kept so that cortex is never down because of its desired state: each
//! fleet that comes into force is saved (its files, revision and digest) in the state
//! directory, and a daemon that starts while the fleet directory holds an invalid fleet (a
//! broken commit, then a reboot) serves the saved one and reports the invalid one as a
//! condition, as it does for a bad edit while running. In a cluster the leader also publishes
//! it in etcd for replicas that join (see `crate::cluster`).
//!
//! The copy is keyed by the fleet directory's path, so that daemons of different fleets on one
//! host never serve each other's.

use std::path::{Path, PathBuf};

use plans::fleet::Fleet;
use plans::plan::Revision;
use sha2::Digest as _;

use crate::control::fleetdir::FleetSource;
use crate::control::poller::now_unix_ms;

/// A fleet as saved: enough to load it again, and to say what it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedFleet {
    pub format_version: u32,
    /// The directory it was read from.
    pub source: String,
    pub revision: Revision,
    pub digest: String,
    pub saved_unix_ms: u64,
    /// `(path, text)` of every file, as `plans::fleet::load` read them.
    pub files: Vec<(String, String)>,
}

impl SavedFleet {
    pub fn new(source: &str, revision: Revision, digest: String, files: Vec<(String, String)>) -> Self {
        SavedFleet {
            format_version: 1,
            source: source.to_owned(),
            revision,
            digest,
            saved_unix_ms: now_unix_ms(),
            files,
        }
    }

    /// The fleet again, when the files still load to a valid fleet with the saved digest.
    pub fn fleet(&self) -> Option<Fleet> {
        plans::fleet::load(&self.files).fleet.filter(|fleet| fleet.digest == self.digest)
    }

    /// One line saying what is served, for conditions and logs.
    pub fn describe(&self) -> String {
        format!(
            "the last good fleet ({}, saved {} s ago)",
            self.revision.short(&self.digest),
            now_unix_ms().saturating_sub(self.saved_unix_ms) / 1000
        )
    }
}

/// Where the copy of one fleet directory's last good fleet lives.
#[derive(Clone, Debug)]
pub struct LastGood {
    path: PathBuf,
}

impl LastGood {
    /// The copy for `source` under `state_dir` (the embedded fleet needs none: it is always valid).
    pub fn for_source(state_dir: &Path, source: &FleetSource) -> Option<LastGood> {
        let FleetSource::Dir(dir) = source else { return None };
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        let hash = sha2::Sha256::digest(dir.display().to_string().as_bytes());
        let key: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let path = state_dir.join("fleets").join(format!("{key}.json"));
        Some(LastGood { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved fleet, if there is a readable one.
    pub fn read(&self) -> Option<SavedFleet> {
        let text = std::fs::read(&self.path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Save `fleet` (a temporary file renamed over the old copy). Blocking; small.
    pub fn save(&self, fleet: &SavedFleet) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(fleet).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_fleet_loads_again_only_with_its_digest_and_per_directory() {
        let state = tempfile::tempdir().expect("tempdir");
        let fleets = tempfile::tempdir().expect("tempdir");
        let (one, two) = (fleets.path().join("one"), fleets.path().join("two"));
        std::fs::create_dir_all(&one).expect("mkdir");
        std::fs::create_dir_all(&two).expect("mkdir");
        let files = vec![(
            "fleet/a.toml".to_owned(),
            "[[neuron]]\nname = \"n\"\nendpoint = \"http://n:1\"\n".to_owned(),
        )];
        let digest = plans::fleet::load(&files).fleet.expect("valid").digest;
        let source = FleetSource::Dir(one.clone());
        let keep = LastGood::for_source(state.path(), &source).expect("a directory has a copy");
        assert!(keep.read().is_none(), "nothing saved yet");
        keep.save(&SavedFleet::new(&source.describe(), Revision::default(), digest.clone(), files.clone()))
            .expect("saved");
        let saved = keep.read().expect("readable");
        assert_eq!(saved.fleet().expect("loads again").digest, digest);
        let other = LastGood::for_source(state.path(), &FleetSource::Dir(two)).expect("copy");
        assert_ne!(other.path(), keep.path(), "another fleet directory has its own copy");
        assert!(LastGood::for_source(state.path(), &FleetSource::Embedded).is_none());
        let tampered = SavedFleet { digest: "sha256:other".to_owned(), ..saved };
        assert!(tampered.fleet().is_none(), "files that do not give the saved digest are not served");
    }
}
