//! The processes a benchmark runs: the mock, `neuron`, `cortex serve` and LiteLLM's proxy, each
//! with its output in a log file and stopped (SIGTERM, then SIGKILL) when dropped; plus their
//! configuration files, readiness waits and memory readings.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The token the benchmark's neurons accept.
pub const NEURON_TOKEN: &str = "bench-neuron-token";

/// A child process stopped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command, dir: &Path) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        Ok(Proc { name: name.to_owned(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "last lines of {} ({}):\n{}",
            self.name,
            self.log.display(),
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib = line.split_whitespace().nth(1).context("no VmRSS value")?;
    Ok(kib.parse()?)
}

/// CPU time (user + system, in clock ticks) `pid` has used; 0 if unreadable.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state: utime is the 12th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Time the hypervisor gave this machine's CPUs to someone else (`steal` in /proc/stat, all
/// CPUs together), in µs at tick resolution; 0 where unreadable (no VM, no /proc). On a shared
/// VM it marks the runs whose latency tails the host, not the processes measured, set.
pub fn steal_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let steal =
        stat.lines().next().and_then(|cpu| cpu.split_whitespace().nth(8)).and_then(|s| s.parse().ok());
    steal.unwrap_or(0) * 1_000_000 / ticks_per_second()
}

fn ticks_per_second() -> u64 {
    static TICKS_PER_SECOND: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS_PER_SECOND.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
        text.parse().ok().filter(|&hz: &u64| hz > 0).unwrap_or(100)
    })
}

/// CPU time (user + system) `pid` has used, in µs, at the kernel's tick resolution (`CLK_TCK`,
/// 100 per second on Linux: 10 ms steps); 0 if unreadable.
pub fn cpu_us(pid: u32) -> u64 {
    cpu_ticks(pid) * 1_000_000 / ticks_per_second()
}

/// Wait until `pids` together use under a quarter of a core over 200 ms (at most `limit`), so
/// one path's leftovers (LiteLLM's logging after a saturating run) do not load the next.
/// Returns how long it waited.
pub async fn quiesce(pids: &[u32], limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        if after.saturating_sub(before) <= 5 {
            break;
        }
    }
    start.elapsed()
}

/// The lowest port a benchmark listener may take.
const LOWEST_PORT: u16 = 10_000;

/// A free loopback port, below the kernel's ephemeral range. A run opens thousands of client
/// connections, whose source ports come from that range; a port picked inside it could be taken
/// by one of them before the process meant for it binds it (the sim engine binds its port only
/// when its model loads, minutes later), and the neuron then refuses the load (`no_free_port`).
/// Each call in a process returns a different port.
pub fn free_port() -> anyhow::Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let below = ephemeral_start().unwrap_or(32_768).max(LOWEST_PORT + 1);
    let span = u32::from(below - LOWEST_PORT);
    // Spread by process, so that two benchmarks started together try different ports first.
    let offset = std::process::id() % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = LOWEST_PORT + u16::try_from((offset + step) % span).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`).
fn ephemeral_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// Poll `check` every 50 ms until it is true, or fail after `deadline` naming `what`.
pub async fn eventually<F, Fut>(
    what: &str,
    deadline: Duration,
    proc: Option<&Proc>,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(());
        }
        if start.elapsed() > deadline {
            let tail = proc.map(Proc::log_tail).unwrap_or_default();
            bail!("timed out after {deadline:?} waiting for {what}\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether GET `url` answers 2xx.
pub async fn get_ok(http: &reqwest::Client, url: String) -> bool {
    http.get(&url).send().await.is_ok_and(|r| r.status().is_success())
}

/// Whether a chat request for `model` at `base` answers 2xx.
pub async fn chat_ok(http: &reqwest::Client, base: &str, model: &str) -> bool {
    let body =
        serde_json::json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    http.post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The mock, as its own process (this binary's `mock` subcommand).
pub fn start_mock(dir: &Path, name: &str, port: u16, models: &[String]) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    Proc::spawn(
        name,
        Command::new(exe)
            .arg("mock")
            .arg("--port")
            .arg(port.to_string())
            .arg("--name")
            .arg(name)
            .arg("--models")
            .arg(models.join(",")),
        dir,
    )
}

/// A neuron with a `sim` harness whose engine listens on `engine_port` exactly.
pub fn start_sim_neuron(
    bin: &Path,
    dir: &Path,
    port: u16,
    engine_port: u16,
    ttft_ms: u64,
    tokens_per_second: f64,
) -> anyhow::Result<Proc> {
    let root = dir.join("neuron-sim");
    std::fs::create_dir_all(root.join("models"))?;
    std::fs::write(root.join("token"), NEURON_TOKEN)?;
    let config = format!(
        "name = \"simnode\"\nlisten = \"127.0.0.1:{port}\"\nmodels_dir = \"{models}\"\ntoken_file = \"{token}\"\n\
         log_dir = \"{logs}\"\nport_range = \"{engine_port}-{engine_port}\"\n\n\
         [harness.sim]\nkind = \"sim\"\nload_ms = 10\nttft_ms = {ttft_ms}\ntokens_per_second = {tokens_per_second}\n\
         devices = [{{ name = \"SimGPU\", vram_mb = 80000 }}]\n",
        models = root.join("models").display(),
        token = root.join("token").display(),
        logs = root.join("logs").display(),
    );
    std::fs::write(root.join("neuron.toml"), config)?;
    Proc::spawn("neuron-sim", Command::new(bin).arg("--config").arg(root.join("neuron.toml")), dir)
}

/// A neuron named `name` with the real llama.cpp harness (its files under `dir/name`).
pub fn start_llama_neuron(
    bin: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    llama_server: &Path,
    models: &Path,
) -> anyhow::Result<Proc> {
    let root = dir.join(name);
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("token"), NEURON_TOKEN)?;
    let engines = free_port()?;
    let config = format!(
        "name = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nmodels_dir = \"{models}\"\ntoken_file = \"{token}\"\n\
         log_dir = \"{logs}\"\nport_range = \"{engines}-{end}\"\n\n\
         [harness.llamacpp]\nkind = \"llamacpp\"\nbinary = \"{server}\"\n",
        models = models.display(),
        token = root.join("token").display(),
        logs = root.join("logs").display(),
        end = engines.saturating_add(20),
        server = llama_server.display(),
    );
    std::fs::write(root.join("neuron.toml"), config)?;
    Proc::spawn(name, Command::new(bin).arg("--config").arg(root.join("neuron.toml")), dir)
}

/// `cortex serve` on `fleet_toml`, listening on `port`.
pub fn start_cortex(bin: &Path, dir: &Path, name: &str, port: u16, fleet_toml: &str) -> anyhow::Result<Proc> {
    start_cortex_with(bin, dir, name, port, fleet_toml, "")
}

/// The same, with `extra` lines at the top of cortex.toml (e.g. `api_keys`).
pub fn start_cortex_with(
    bin: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    fleet_toml: &str,
    extra: &str,
) -> anyhow::Result<Proc> {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("fleet"))?;
    std::fs::write(root.join("fleet").join("fleet.toml"), fleet_toml)?;
    let config = format!(
        "{extra}listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{}\"\nneuron_token = \"{NEURON_TOKEN}\"\n\
         usage_store = \"{}\"\n\n[poll]\ninterval = \"1s\"\n",
        free_port()?,
        root.join("usage.redb").display()
    );
    std::fs::write(root.join("cortex.toml"), config)?;
    Proc::spawn(
        name,
        Command::new(bin)
            .arg("serve")
            .arg("--fleet")
            .arg(root.join("fleet"))
            .arg("--config")
            .arg(root.join("cortex.toml"))
            .env("RUST_LOG", "warn"),
        dir,
    )
}

/// LiteLLM's proxy, one worker, serving every mock model as an OpenAI-compatible provider.
pub fn start_litellm(
    venv: &Path,
    dir: &Path,
    port: u16,
    mock_base: &str,
    models: &[String],
) -> anyhow::Result<Proc> {
    let mut yaml = String::from("model_list:\n");
    for model in models {
        yaml.push_str(&format!(
            "  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n      api_base: {mock_base}/v1\n      api_key: sk-mock\n"
        ));
    }
    yaml.push_str("litellm_settings:\n  telemetry: false\n");
    let config = dir.join("litellm.yaml");
    std::fs::write(&config, yaml)?;
    Proc::spawn(
        "litellm",
        Command::new(venv.join("bin").join("litellm"))
            .arg("--config")
            .arg(&config)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--num_workers")
            .arg("1")
            .env("LITELLM_TELEMETRY", "False")
            // Like cortex in this benchmark, no client keys: loopback only.
            .env("LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY", "true")
            .env("NO_PROXY", "*"),
        dir,
    )
}

/// nginx as a plain streaming reverse proxy in front of the mock: the reference for what any
/// proxy adds on this machine (one read and one write per event, no HTTP/2, no buffering).
/// Two worker processes, as cortex runs two worker threads on this machine's two cores.
pub fn start_nginx(nginx: &Path, dir: &Path, port: u16, mock_port: u16) -> anyhow::Result<Proc> {
    let root = dir.join("nginx");
    std::fs::create_dir_all(&root)?;
    let root_text = root.display();
    let config = format!(
        "daemon off;\nworker_processes 2;\npid {root_text}/nginx.pid;\nerror_log {root_text}/error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {root_text}/body;\n  proxy_temp_path {root_text}/proxy;\n\
           fastcgi_temp_path {root_text}/fastcgi;\n  uwsgi_temp_path {root_text}/uwsgi;\n  scgi_temp_path {root_text}/scgi;\n\
           keepalive_requests 1000000;\n\
           upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 1024; keepalive_requests 1000000; }}\n\
           server {{\n    listen 127.0.0.1:{port} reuseport;\n    tcp_nodelay on;\n\
             location / {{\n      proxy_pass http://mock;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_buffering off;\n      proxy_request_buffering off;\n    }}\n  }}\n}}\n"
    );
    let file = root.join("nginx.conf");
    std::fs::write(&file, config)?;
    Proc::spawn("nginx", Command::new(nginx).arg("-p").arg(&root).arg("-c").arg(&file), dir)
}

/// `pid` and its child processes (nginx's workers under its master).
pub fn with_children(pid: u32) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid).chain(children.split_whitespace().filter_map(|c| c.parse().ok())).collect()
}

/// First line of `<program> <args>`'s output, or why it could not be had.
pub fn version_of(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(out) => {
            let text =
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned()
        }
        Err(e) => format!("unavailable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_outside_the_ephemeral_range() {
        let below = ephemeral_start().unwrap_or(32_768);
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("a port")).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "each call a different port: {ports:?}");
        assert!(
            ports.iter().all(|&p| (LOWEST_PORT..below).contains(&p)),
            "{ports:?} (ephemeral from {below})"
        );
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).expect("each port returned is free to bind");
        }
    }
}
