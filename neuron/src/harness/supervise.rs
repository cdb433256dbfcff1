//! Engine process supervision, independent of any engine's flags: loopback port leases, spawning
//! with stdout/stderr captured to a per-model log, readiness polling with backoff and a deadline,
//! exit (crash) watching, and stopping with SIGTERM then SIGKILL after a grace period.
//!
//! Engines never outlive their neuron: each is started through util-linux `setpriv --pdeathsig
//! KILL` when it is installed (the kernel kills the engine when the neuron dies, even by
//! SIGKILL), in its own process group (a terminal's Ctrl-C reaches the neuron, which stops
//! its engines in order), and marked with `CORTEX_ENGINE_OF=<neuron>:<port range>` in its
//! environment, so that a restarted neuron finds and stops the orphans of its predecessor
//! ([`reclaim_orphans`]) and never touches any other process.
//! Harnesses (llama.cpp, command templates, a mistral.rs the neuron starts) build an argv and
//! reuse this module for everything else.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::harness::{Engine, EngineError, Readiness};

/// Loopback ports in the configured range, each leased to at most one engine at a time.
pub struct PortPool {
    range: (u16, u16),
    /// The marker given to engines on these ports (`<neuron>:<low>-<high>`), if any.
    owner: Option<String>,
    /// Leased ports and the next port to try (rotating, so a just-freed port is reused last).
    /// Held only for the scan; never across `.await`.
    taken: Mutex<(BTreeSet<u16>, u16)>,
}

impl PortPool {
    pub fn new(range: (u16, u16)) -> Arc<PortPool> {
        Arc::new(PortPool { range, owner: None, taken: Mutex::new((BTreeSet::new(), range.0)) })
    }

    /// A pool whose engines carry the [`ENGINE_MARKER`] of neuron `name`.
    pub fn owned_by(name: &str, range: (u16, u16)) -> Arc<PortPool> {
        let owner = Some(engine_marker(name, range));
        Arc::new(PortPool { range, owner, taken: Mutex::new((BTreeSet::new(), range.0)) })
    }

    /// A port in the range that nothing listens on; `None` when the range is exhausted.
    pub fn lease(self: &Arc<Self>) -> Option<PortLease> {
        let mut guard = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        let (taken, cursor) = &mut *guard;
        let (low, high) = self.range;
        let span = u32::from(high - low) + 1;
        for step in 0..span {
            let offset = (u32::from(cursor.saturating_sub(low)) + step) % span;
            let port = low + u16::try_from(offset).unwrap_or(0);
            if taken.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            taken.insert(port);
            *cursor = if port == high { low } else { port + 1 };
            return Some(PortLease { port, pool: Arc::clone(self) });
        }
        None
    }
}

/// A leased port; returned to the pool when dropped (after the engine on it has stopped).
pub struct PortLease {
    pub port: u16,
    pool: Arc<PortPool>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut guard = self.pool.taken.lock().unwrap_or_else(PoisonError::into_inner);
        guard.0.remove(&self.port);
    }
}

/// What to run: the program (from neuron.toml only), its arguments and extra environment.
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log_path: PathBuf,
    pub port: PortLease,
    /// How the engine says it is ready.
    pub ready: HttpReady,
}

/// Readiness by one HTTP GET: ready when `path` answers `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReady {
    pub path: String,
    pub status: u16,
}

impl Default for HttpReady {
    /// `GET /health` answering 200 (llama.cpp, vLLM, SGLang, the simulator).
    fn default() -> Self {
        HttpReady { path: "/health".to_owned(), status: 200 }
    }
}

impl HttpReady {
    /// One look: `Ready` on the expected status, `NotYet` on anything else (including a refused
    /// connection: engines may listen only once loaded).
    pub async fn probe(&self, http: &reqwest::Client, base_url: &str) -> Readiness {
        let url = format!("{base_url}{}", self.path);
        match http.get(&url).timeout(Duration::from_secs(2)).send().await {
            Ok(response) if response.status().as_u16() == self.status => Readiness::Ready,
            _ => Readiness::NotYet,
        }
    }
}

/// A supervised engine process. The child is owned by a watcher task that reaps it and
/// publishes how it ended; `kill_on_drop` is a last-resort safety net if that task is dropped.
pub struct ProcessEngine {
    pid: u32,
    port: PortLease,
    log_path: PathBuf,
    ready: HttpReady,
    exited: watch::Receiver<Option<String>>,
}

impl ProcessEngine {
    pub fn spawn(spec: ProcessSpec) -> Result<ProcessEngine, EngineError> {
        let program = spec.program.display().to_string();
        if let Some(dir) = spec.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|err| {
                EngineError::Spawn(format!("cannot create log dir {}: {err}", dir.display()))
            })?;
        }
        let log = std::fs::File::create(&spec.log_path).map_err(|err| {
            EngineError::Spawn(format!("cannot create log {}: {err}", spec.log_path.display()))
        })?;
        let log_err = log.try_clone().map_err(|err| EngineError::Spawn(format!("log file: {err}")))?;
        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut command = tokio::process::Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", "--"]).arg(&spec.program);
                command
            }
            None => tokio::process::Command::new(&spec.program),
        };
        if let Some(owner) = &spec.port.pool.owner {
            command.env(ENGINE_MARKER, owner);
        }
        command
            .process_group(0)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        let mut child =
            command.spawn().map_err(|err| EngineError::Spawn(format!("cannot start {program}: {err}")))?;
        let pid = child.id().ok_or_else(|| EngineError::Spawn(format!("{program} exited at once")))?;
        tracing::info!(pid, port = spec.port.port, log = %spec.log_path.display(), "started {program} {}", spec.args.join(" "));
        let (exit_tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(err) => format!("could not be waited for: {err}"),
            };
            tracing::info!(pid, "engine process {how}");
            exit_tx.send_replace(Some(how));
        });
        Ok(ProcessEngine { pid, port: spec.port, log_path: spec.log_path, ready: spec.ready, exited })
    }

    fn signal(&self, signal: Signal) {
        // Only signal a child that has not been reaped yet, so the pid cannot have been reused.
        if self.exited.borrow().is_some() {
            return;
        }
        let Ok(raw) = i32::try_from(self.pid) else { return };
        if let Err(err) = kill(Pid::from_raw(raw), signal) {
            tracing::debug!(pid = self.pid, "{signal}: {err}");
        }
    }
}

impl Engine for ProcessEngine {
    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.port)
    }

    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }

    fn probe_ready<'a>(&'a self, http: &'a reqwest::Client) -> BoxFuture<'a, Readiness> {
        Box::pin(async move { self.ready.probe(http, &self.base_url()).await })
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut exited = self.exited.clone();
            self.signal(Signal::SIGTERM);
            if tokio::time::timeout(grace, exited.wait_for(Option::is_some)).await.is_err() {
                tracing::warn!(pid = self.pid, "engine ignored SIGTERM for {grace:?}: sending SIGKILL");
                self.signal(Signal::SIGKILL);
                // SIGKILL cannot be ignored; the bound only guards against a wedged reaper.
                let _ = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(Option::is_some)).await;
            }
        })
    }

    fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

/// The environment variable that marks an engine as started by one neuron.
const ENGINE_MARKER: &str = "CORTEX_ENGINE_OF";

/// The marker value of neuron `name` leasing `range`.
pub fn engine_marker(name: &str, range: (u16, u16)) -> String {
    format!("{name}:{}-{}", range.0, range.1)
}

/// util-linux `setpriv`, if installed (looked up once).
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let found = ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file());
            if found.is_none() {
                tracing::warn!(
                    "setpriv (util-linux) not found: engines are not killed by the kernel if the neuron dies; \
                     a restarted neuron stops them instead"
                );
            }
            found
        })
        .as_deref()
}

/// Stop every process carrying `marker` as its [`ENGINE_MARKER`] whose parent is not alive
/// (orphans of an earlier neuron with this name and port range): SIGTERM, then SIGKILL after
/// `grace`. Returns the pids found. Only processes this user may read are seen, and only an
/// exact marker match is touched.
pub async fn reclaim_orphans(marker: &str, grace: Duration) -> Vec<u32> {
    let orphans = find_marked(marker);
    for &pid in &orphans {
        tracing::warn!(pid, "stopping an engine left behind by an earlier neuron ({ENGINE_MARKER}={marker})");
        signal_pid(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while orphans.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &pid in orphans.iter().filter(|&&pid| alive(pid)) {
        signal_pid(pid, Signal::SIGKILL);
    }
    orphans
}

/// Pids whose environment holds exactly `ENGINE_MARKER=marker` and whose parent is not a
/// running neuron (pid 1 or a subreaper adopted them).
fn find_marked(marker: &str) -> Vec<u32> {
    let wanted = format!("{ENGINE_MARKER}={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ.split(|b| *b == 0).any(|var| var == wanted.as_bytes())
        })
        .filter(|&pid| parent(pid).is_none_or(|ppid| !is_neuron(ppid)))
        .collect()
}

/// The parent pid, from `/proc/<pid>/stat` (the field after the parenthesised name).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn is_neuron(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Path::new(&*String::from_utf8_lossy(program)).file_name().is_some_and(|name| name == "neuron")
}

fn alive(pid: u32) -> bool {
    // A zombie has no cmdline and holds no port: it counts as gone.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn signal_pid(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if let Err(err) = kill(Pid::from_raw(raw), signal) {
        tracing::debug!(pid, "{signal}: {err}");
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "exited".to_owned(),
    }
}

/// The last `lines` lines of a log file (reading at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(length.saturating_sub(WINDOW))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Why an engine did not become ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The engine ended while loading; how it ended.
    Exited(String),
    /// The engine said it cannot become ready; its words.
    Failed(String),
    /// The deadline passed.
    Timeout,
}

/// Ask `engine` whether it is ready with exponential backoff (25 ms → 100 ms), until `deadline`
/// or until the engine exits (noticed at once through `Engine::exited`, not at the next look).
/// The cap is low on purpose: every millisecond between "ready" and "noticed" is added to a cold
/// start, and a loopback health probe ten times a second costs nothing next to a model load.
pub async fn wait_ready(
    engine: &dyn Engine,
    http: &reqwest::Client,
    deadline: Instant,
) -> Result<(), NotReady> {
    let mut exited = engine.exited();
    let mut delay = Duration::from_millis(25);
    loop {
        if let Some(how) = exited.borrow().clone() {
            return Err(NotReady::Exited(how));
        }
        match tokio::time::timeout_at(deadline, engine.probe_ready(http)).await {
            Ok(Readiness::Ready) => return Ok(()),
            Ok(Readiness::Failed(why)) => return Err(NotReady::Failed(why)),
            Ok(Readiness::NotYet) | Err(_) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(NotReady::Timeout);
        }
        let wake = (now + delay).min(deadline);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            _ = exited.changed() => {}
        }
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_leased_once_and_returned_on_drop() {
        // A port below the kernel's ephemeral range, so that no test binding port 0 beside this
        // one can take it between the drop and the lease; where the search starts depends on the
        // process, so that two runs of this test at once do not race for the same port.
        let start = 20_000 + u16::try_from(std::process::id() % 8_000).expect("below 8,000");
        let listener = (start..30_000)
            .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
            .expect("a free port below the ephemeral range");
        let busy = listener.local_addr().expect("addr").port();
        let pool = PortPool::new((busy, busy));
        assert!(pool.lease().is_none(), "a port something listens on is not leased");
        drop(listener);
        let lease = pool.lease().expect("free now");
        assert_eq!(lease.port, busy);
        assert!(pool.lease().is_none(), "leased ports are not leased twice");
        drop(lease);
        assert!(pool.lease().is_some());
    }

    #[tokio::test]
    async fn orphans_with_the_exact_marker_are_stopped_and_nothing_else() {
        let marker = format!("reclaim-test-{}:1-2", std::process::id());
        let spawn = |value: &str| {
            std::process::Command::new("sleep").arg("30").env(ENGINE_MARKER, value).spawn().expect("sleep")
        };
        let mut orphan = spawn(&marker);
        let mut other = spawn(&format!("{marker}0"));
        let found = reclaim_orphans(&marker, Duration::from_secs(2)).await;
        assert_eq!(found, [orphan.id()]);
        assert!(orphan.wait().expect("reaped").code().is_none(), "stopped by a signal");
        assert!(other.try_wait().expect("alive").is_none(), "a different marker is left alone");
        other.kill().expect("kill");
        other.wait().expect("reaped");
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        let tail = log_tail(&path, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
        assert_eq!(log_tail(&dir.path().join("missing.log"), 3), "");
    }
}
