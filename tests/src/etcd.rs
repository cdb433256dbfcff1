//! A real etcd (Debian's `etcd-server`) for the cluster tests: one member on free loopback ports,
//! its data directory in `/dev/shm` (etcd 3.4 has no switch to skip fsync; memory makes it
//! cheap), stopped and started again on the same ports and data to test a store that goes away.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Process, eventually, free_port};

/// One etcd member. Dropping it stops the process and removes its data.
pub struct Etcd {
    pub client_port: u16,
    peer_port: u16,
    /// Holds the data directory (in `/dev/shm` when there is one) and the log.
    dir: tempfile::TempDir,
    process: Option<Process>,
    starts: u32,
}

/// The `etcd` binary: `$ETCD_BIN`, else the one on `PATH`; fails saying how to install it.
pub fn etcd_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!("etcd is not installed: run `bash tests/install.sh cluster` (Debian's etcd-server)")
    })
}

impl Etcd {
    /// Start a fresh member and wait until it answers `/health`.
    pub async fn start() -> Etcd {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
        let mut etcd = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            dir: dir.expect("a temporary directory for etcd"),
            process: None,
            starts: 0,
        };
        etcd.resume().await;
        etcd
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Stop the member (SIGTERM, then SIGKILL): clients see the store go away.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// `kill -9` the member.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    /// Start it again on the same ports with the same data, and wait until it is healthy.
    pub async fn resume(&mut self) {
        assert!(self.process.is_none(), "etcd is already running");
        self.starts += 1;
        let (client, peer) = (
            format!("http://127.0.0.1:{}", self.client_port),
            format!("http://127.0.0.1:{}", self.peer_port),
        );
        let mut command = Command::new(etcd_bin());
        command
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}"), "--log-level", "warn"]);
        let log = self.dir.path().join(format!("etcd-{}.log", self.starts));
        self.process = Some(Process::spawn(&mut command, log));
        let url = format!("{}/health", self.endpoint());
        let process = self.process.as_mut().expect("just started");
        eventually("etcd to be healthy", Duration::from_secs(20), async || {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("etcd exited ({status}):\n{}", process.log_text());
            }
            let response = reqwest::get(&url).await.ok()?;
            let body: serde_json::Value = response.json().await.ok()?;
            (body["health"] == "true").then_some(())
        })
        .await;
    }

    /// The log of the current (or last) run.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("etcd-{}.log", self.starts))).unwrap_or_default()
    }
}
