//! Support for cortex's end-to-end tests: real `neuron` and `cortex` processes on free loopback
//! ports in temporary directories, and polling with deadlines (never fixed sleeps).

#![allow(clippy::unwrap_used, reason = "test support: a failed setup step should stop the test loudly")]

pub mod etcd;
pub mod fake_mistralrs;
pub mod scale;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The path of a workspace binary: `$<ENV>`, else `$CARGO_TARGET_DIR/debug/<name>`, else the
/// workspace's `target/debug/<name>`. Fails with how to build it when missing.
pub fn binary(env: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join("debug").join(name)
    });
    assert!(
        path.is_file(),
        "{name} is not built at {}: run `cargo build --workspace --bins` (or set {env})",
        path.display()
    );
    path
}

pub fn cortex_bin() -> PathBuf {
    binary("CORTEX_BIN", "cortex")
}

pub fn neuron_bin() -> PathBuf {
    binary("NEURON_BIN", "neuron")
}

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Poll `check` until it returns `Some`, or fail after `deadline` saying what was awaited.
pub async fn eventually<T>(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticks.tick().await;
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
    }
}

/// Wait until the neuron on `port` answers `/livez` (true), or it exits because the port was
/// taken (false); any other exit or 20 s of silence fails the test with its log.
async fn listens(process: &mut Process, name: &str, port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/livez");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticks.tick().await;
        if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            let log = process.log_text();
            assert!(log.contains("in use"), "neuron {name} exited ({status}):\n{log}");
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 20s waiting for neuron {name} to listen:\n{}",
            process.log_text()
        );
    }
}

/// Write `text` to `path` the way editors save: a temporary file renamed over the original.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped; its output goes to a log file.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(command: &mut Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Process { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::yield_now();
            std::thread::park_timeout(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const NEURON_TOKEN: &str = "e2e-neuron-token";
pub const ADMIN_KEY: &str = "e2e-admin-key";

/// A neuron process with a `sim` harness (simulated devices and engine) and, optionally, the
/// real llama.cpp harness.
pub struct Neuron {
    pub name: String,
    pub port: u16,
    pub process: Process,
}

impl Neuron {
    /// Start a neuron named `name` in `dir` with simulated devices of `device_vram_mb` each.
    pub async fn start_sim(dir: &Path, name: &str, device_vram_mb: &[u64], load_ms: u64) -> Neuron {
        let devices: Vec<String> =
            device_vram_mb.iter().map(|mb| format!("{{ name = \"SimGPU\", vram_mb = {mb} }}")).collect();
        let harness = format!(
            "[harness.sim]\nkind = \"sim\"\nload_ms = {load_ms}\nttft_ms = 5\ntokens_per_second = 500\ndevices = [{}]\n",
            devices.join(", ")
        );
        Neuron::start(dir, name, &harness).await
    }

    /// Start a neuron named `name` in `dir` with the given `[harness.*]` tables; its models_dir
    /// is `$CORTEX_MODELS_DIR`, else a fresh empty folder.
    pub async fn start(dir: &Path, name: &str, harnesses: &str) -> Neuron {
        let models = std::env::var_os("CORTEX_MODELS_DIR").map(PathBuf::from);
        Neuron::start_in(dir, name, harnesses, models.as_deref()).await
    }

    /// As [`Neuron::start`], with models_dir `models` when given. A port picked free can be
    /// taken before the neuron binds it (another test's process, an outgoing connection's
    /// ephemeral port): a neuron that exits saying so is started again on fresh ports.
    pub async fn start_in(dir: &Path, name: &str, harnesses: &str, models: Option<&Path>) -> Neuron {
        let root = dir.join(name);
        std::fs::create_dir_all(root.join("models")).unwrap();
        std::fs::write(root.join("token"), NEURON_TOKEN).unwrap();
        for _ in 0..3 {
            let (port, engines) = (free_port(), free_port());
            let config = format!(
                "name = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nmodels_dir = \"{models}\"\ntoken_file = \"{token}\"\n\
                 log_dir = \"{logs}\"\nport_range = \"{engines}-{end}\"\nstop_grace = \"3s\"\ndrain_timeout = \"5s\"\n\n{harnesses}",
                models = models.map_or_else(|| root.join("models"), Path::to_path_buf).display(),
                token = root.join("token").display(),
                logs = root.join("logs").display(),
                end = engines + 50,
            );
            std::fs::write(root.join("neuron.toml"), config).unwrap();
            let mut process = Process::spawn(
                Command::new(neuron_bin()).arg("--config").arg(root.join("neuron.toml")),
                root.join("neuron.log"),
            );
            if listens(&mut process, name, port).await {
                return Neuron { name: name.to_owned(), port, process };
            }
        }
        panic!("neuron {name} found no free port in three tries");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stop the neuron (SIGTERM: its engines stop with it) and start it again with the same
    /// neuron.toml, on the same port and state directory.
    pub async fn restart(&mut self) {
        let root = self.process.log.parent().unwrap().to_path_buf();
        let _ = Command::new("kill").arg("-TERM").arg(self.process.child.id().to_string()).status();
        let _ = self.process.child.wait();
        self.process = Process::spawn(
            Command::new(neuron_bin()).arg("--config").arg(root.join("neuron.toml")),
            root.join("neuron-restarted.log"),
        );
        let url = format!("{}/livez", self.endpoint());
        eventually("the neuron to listen again", Duration::from_secs(30), async || {
            reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
    }

    /// `POST path` with a JSON body on the neuron: the status and the JSON answer (null if none).
    pub async fn call(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.endpoint()))
            .bearer_auth(NEURON_TOKEN)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// `GET path` on the neuron, as JSON.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.endpoint()))
            .bearer_auth(NEURON_TOKEN)
            .send()
            .await;
        response.unwrap().json().await.unwrap()
    }

    /// `GET /models` on the neuron.
    pub async fn models(&self) -> serde_json::Value {
        self.get("/models").await
    }

    /// Ids of the models loaded (status `loaded`) on the neuron.
    pub async fn loaded(&self) -> Vec<String> {
        let models = self.models().await;
        let mut ids: Vec<String> = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["status"] == "loaded")
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }
}

/// The folder cortex's installed test dependencies live in (as `tests/env.sh` says).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CORTEX_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("cortex")))
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cortex"))
}

pub const GEMMA_GGUF: &str = "gemma-3-270m-q4_k_m.gguf";

/// `(llama-server, models_dir holding the gemma GGUF)`, or a failure saying how to install them.
pub fn installed_llama_server() -> (PathBuf, PathBuf) {
    let server = std::env::var_os("LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("llama.cpp/11434.0.0/bin/llama-server"));
    let models = std::env::var_os("CORTEX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models"));
    assert!(
        server.is_file(),
        "llama-server not found at {} (set LLAMA_SERVER): run `bash tests/install.sh` first",
        server.display()
    );
    assert!(
        models.join(GEMMA_GGUF).is_file(),
        "{GEMMA_GGUF} not found in {} (set CORTEX_MODELS_DIR): run `bash tests/install.sh` first",
        models.display()
    );
    (server, models)
}

/// The pid of a process whose argv contains `flag value` and whose program ends with `program`.
pub fn find_process(program: &str, flag: &str, value: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let has = args.windows(2).any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes());
        let is_program = args.first().is_some_and(|a| a.ends_with(program.as_bytes()));
        (has && is_program).then_some(pid)
    })
}

/// Whether process `pid` has ended (and been reaped).
pub fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// A `[[neuron]]` table for `neuron`.
pub fn neuron_table(neuron: &Neuron) -> String {
    format!("[[neuron]]\nname = \"{}\"\nendpoint = \"{}\"\n\n", neuron.name, neuron.endpoint())
}

/// A pinned sim model table.
pub fn sim_model(id: &str, vram_mb: u64, pinned_on: &[&str], source: &str) -> String {
    let pins: Vec<String> = pinned_on.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[model]]\nid = \"{id}\"\nharness = \"sim\"\nsource = \"{source}\"\nvram_mb = {vram_mb}\nmin_devices = 1\npinned_on = [{}]\n\n",
        pins.join(", ")
    )
}

/// The cortex.toml for tests: free ports, the neurons' token, the admin key, fast polling.
pub fn cortex_config(dir: &Path) -> (PathBuf, u16) {
    cortex_config_with(dir, "interval = \"200ms\"", "resync = \"5s\"\nbackoff_base = \"500ms\"")
}

/// Run the `cortex` CLI to completion.
pub fn cortex(args: &[&str], config: &Path, cwd: &Path) -> Output {
    Command::new(cortex_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `cortex serve` running on a fleet directory.
pub struct Daemon {
    pub port: u16,
    pub process: Process,
}

impl Daemon {
    pub async fn start(fleet: &Path, config: &Path, port: u16, log: PathBuf) -> Daemon {
        let process = Process::spawn(
            Command::new(cortex_bin()).arg("serve").arg("--fleet").arg(fleet).arg("--config").arg(config),
            log,
        );
        let url = format!("http://127.0.0.1:{port}/health");
        eventually("cortex serve to listen", Duration::from_secs(20), async || {
            reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        Daemon { port, process }
    }

    /// The admin status document.
    pub async fn status(&self) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/admin/status", self.port))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A `[harness.fault]` table running the `fault-engine` test binary at `engine` through the
/// command harness (what it does is read from each model's source file).
pub fn fault_harness(engine: &Path) -> String {
    format!(
        "[harness.fault]\nkind = \"command\"\ncommand = [\"{}\", \"--port\", \"{{port}}\", \"--model\", \"{{model}}\", \"--source\", \"{{source}}\", \"--host\", \"127.0.0.1\"]\nhealth_path = \"/health\"\ndevices_env = \"\"\n",
        engine.display()
    )
}

/// A CPU model table for the `fault` harness, pinned on `pinned_on` (empty: on demand).
pub fn fault_model(id: &str, source: &str, pinned_on: &[&str]) -> String {
    let pins: Vec<String> = pinned_on.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[model]]\nid = \"{id}\"\nharness = \"fault\"\nsource = \"{source}\"\nmin_devices = 0\nram_mb = 64\npinned_on = [{}]\n\n",
        pins.join(", ")
    )
}

/// As [`cortex_config`], with the `[poll]` and `[reconcile]` tables given as TOML text.
pub fn cortex_config_with(dir: &Path, poll: &str, reconcile: &str) -> (PathBuf, u16) {
    let port = free_port();
    let path = dir.join("cortex.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{}\"\nadmin_key = \"{ADMIN_KEY}\"\nneuron_token = \"{NEURON_TOKEN}\"\n\n\
             [poll]\n{poll}\n\n[reconcile]\n{reconcile}\n",
            free_port()
        ),
    )
    .unwrap();
    (path, port)
}

/// The value of `flag` in the argv of process `pid`.
pub fn process_flag(pid: u32, flag: &str) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = args.iter().position(|a| *a == flag.as_bytes())?;
    args.get(at + 1).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Whether process `pid` has ended: gone, or a zombie waiting for a reaper (it holds no
/// ports and runs no code).
pub fn process_ended(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().next());
    state.is_none_or(|s| s == "Z" || s == "X")
}

/// Whether something accepts connections on loopback `port`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

impl Daemon {
    /// `POST /v1/chat/completions` for `model`: the status and the body as text.
    pub async fn chat(&self, model: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/v1/chat/completions", self.port))
            .json(&serde_json::json!({"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }
}
