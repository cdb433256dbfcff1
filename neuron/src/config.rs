//! `neuron.toml`: the node's local settings, parsed raw (`deny_unknown_fields`) then validated
//! into [`Config`]. Harness binaries, their default arguments and whether a load request may
//! add arguments come only from here (spec §8, security).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default API address: loopback, the neuron's well-known port.
const DEFAULT_LISTEN: &str = "127.0.0.1:13131";

/// Why neuron.toml could not be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub listen: SocketAddr,
    /// Canonical (symlinks resolved) models directory; every model source must resolve inside it.
    pub models_dir: PathBuf,
    pub token_file: Option<PathBuf>,
    /// Inclusive range of loopback ports engines are started on.
    pub port_range: (u16, u16),
    pub drain_timeout: Duration,
    /// The API listener's connection bound and timeouts (`[listener]`).
    pub listener: cortex_listener::Limits,
    pub stop_grace: Duration,
    pub load_timeout: Duration,
    pub log_dir: PathBuf,
    /// Where the neuron keeps what must survive a restart (the cluster fencing term).
    pub state_dir: PathBuf,
    pub capacity: Capacity,
    pub harnesses: BTreeMap<String, HarnessConfig>,
}

/// Figures the node reports instead of the measured ones (e.g. to reserve room for other work).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Host RAM offered to CPU models.
    pub ram_mb: Option<u64>,
    /// VRAM offered per device, by device index.
    #[serde(default)]
    pub device_vram_mb: Vec<u64>,
}

/// One `[harness.<name>]` table.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum HarnessConfig {
    /// llama.cpp's `llama-server`, one process per model.
    Llamacpp {
        binary: PathBuf,
        /// Whether a load request's `profile.args` may add engine arguments.
        #[serde(default)]
        allow_args: bool,
        /// Arguments passed to every engine of this harness, before the profile's.
        #[serde(default)]
        default_args: Vec<String>,
        /// `false` turns off a native API the engine has (the gateway translates instead), e.g.
        /// to run the translated path against the same model.
        #[serde(default)]
        anthropic_messages: Option<bool>,
        #[serde(default)]
        responses: Option<bool>,
    },
    /// Any OpenAI-compatible server started per model from an argv template (vLLM, SGLang, ...).
    Command(CommandSettings),
    /// A mistral.rs server hosting several models, driven through its lifecycle API.
    Mistralrs(MistralrsSettings),
    /// A simulated engine (no GPU, no model file needed), labelled as simulation everywhere.
    Sim {
        #[serde(default = "default_sim_load_ms")]
        load_ms: u64,
        #[serde(default = "default_sim_ttft_ms")]
        ttft_ms: u64,
        #[serde(default = "default_sim_tokens_per_second")]
        tokens_per_second: f64,
        /// Simulated devices; when any sim harness declares some, the node reports them
        /// instead of real GPUs.
        #[serde(default)]
        devices: Vec<SimDevice>,
        #[serde(default)]
        allow_args: bool,
        /// Prompt cache slots per engine: each keeps its last request's prompt and answer, and
        /// a request reuses the slot holding its conversation's earlier turn (else the least
        /// recently used one).
        #[serde(default = "default_sim_slots")]
        slots: usize,
        /// Time to first token added per uncached prompt token (a token is four characters).
        #[serde(default)]
        prefill_ms_per_token: f64,
    },
}

impl HarnessConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            HarnessConfig::Llamacpp { .. } => "llamacpp",
            HarnessConfig::Command(_) => "command",
            HarnessConfig::Mistralrs(_) => "mistralrs",
            HarnessConfig::Sim { .. } => "sim",
        }
    }
}

/// `kind = "command"`: one process per loaded model from `command`, an argv (never a shell) whose
/// elements may contain the placeholders `{port}`, `{source}`, `{model}`, `{devices}` and
/// `{device_count}` (see `crate::harness::command`).
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSettings {
    /// The program and its arguments; the program is looked up on `PATH` unless it has a `/`.
    pub command: Vec<String>,
    /// Extra environment for the engine; values may use the same placeholders.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Readiness: `GET <health_path>` answering `health_status`.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    #[serde(default = "default_health_status")]
    pub health_status: u16,
    /// The variable that gets `{devices}` (empty for a CPU model); `""` sets none.
    #[serde(default = "default_devices_env")]
    pub devices_env: String,
    /// Appended when the profile sets `ctx_size`; must contain `{ctx_size}`.
    #[serde(default)]
    pub ctx_size_args: Vec<String>,
    /// What the engine serves natively, reported in discovery (the gateway translates the rest).
    #[serde(default)]
    pub anthropic_messages: bool,
    #[serde(default)]
    pub count_tokens: bool,
    #[serde(default)]
    pub embeddings: bool,
    /// The server serves OpenAI `/v1/responses` and `/v1/responses/input_tokens`.
    #[serde(default)]
    pub responses: bool,
    /// Whether a load request's `profile.args` may add arguments (never the template's flags).
    #[serde(default)]
    pub allow_args: bool,
}

/// `kind = "mistralrs"`: a mistral.rs server (see `crate::harness::mistralrs`).
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MistralrsSettings {
    /// Where the server listens (loopback), e.g. `http://127.0.0.1:1234`.
    pub url: String,
    /// When set, the neuron starts the server itself (at the first load) and stops it at
    /// shutdown, e.g. `["mistralrs", "serve", "-p", "{port}", ...]`; `{port}` is the port of
    /// `url`. When empty, the server is started by someone else.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A load's `profile.source` → the `model_id` mistral.rs knows the model by; a source not
    /// listed is used as the model_id itself.
    #[serde(default)]
    pub model_ids: BTreeMap<String, String>,
    /// The server serves `/v1/embeddings` for models of this harness.
    #[serde(default)]
    pub embeddings: bool,
    /// `false` turns off native `/v1/responses` (0.8.1 serves it; the gateway translates then).
    #[serde(default)]
    pub responses: Option<bool>,
}

fn default_health_path() -> String {
    "/health".to_owned()
}
fn default_health_status() -> u16 {
    200
}
fn default_devices_env() -> String {
    "CUDA_VISIBLE_DEVICES".to_owned()
}

fn default_sim_load_ms() -> u64 {
    1000
}
fn default_sim_ttft_ms() -> u64 {
    50
}
fn default_sim_tokens_per_second() -> f64 {
    50.0
}
/// llama-server's default (`--parallel` auto).
fn default_sim_slots() -> usize {
    4
}
/// The most slots a sim engine may keep (each holds a whole prompt).
const MAX_SIM_SLOTS: usize = 1024;

#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDevice {
    pub name: String,
    pub vram_mb: u64,
}

/// The file as written; validated by [`Config::from_toml`].
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: String,
    #[serde(default)]
    listen: Option<String>,
    models_dir: PathBuf,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    port_range: Option<String>,
    #[serde(default)]
    drain_timeout: Option<String>,
    #[serde(default)]
    stop_grace: Option<String>,
    #[serde(default)]
    load_timeout: Option<String>,
    #[serde(default)]
    log_dir: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    capacity: Capacity,
    #[serde(default)]
    listener: cortex_listener::Limits,
    #[serde(default)]
    harness: BTreeMap<String, HarnessConfig>,
}

impl Config {
    /// Read and validate `path`. Relative paths inside are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::from_toml(path, &text)
    }

    /// Validate `text` as if read from `path`.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        let raw: RawConfig =
            toml::from_str(text).map_err(|err| invalid(err.to_string().trim().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let absolute = |p: &Path| expand_path(base, home.as_deref(), p);

        if raw.name.trim().is_empty() {
            return Err(invalid("`name` must not be empty".to_owned()));
        }
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse().map_err(|_| {
            invalid(format!("`listen`: {listen_text:?} is not an address like 127.0.0.1:13131"))
        })?;
        let models_dir_given = absolute(&raw.models_dir);
        let models_dir = std::fs::canonicalize(&models_dir_given)
            .map_err(|err| invalid(format!("`models_dir`: {}: {err}", models_dir_given.display())))?;
        if !models_dir.is_dir() {
            return Err(invalid(format!("`models_dir`: {} is not a directory", models_dir.display())));
        }
        let port_range = parse_port_range(raw.port_range.as_deref().unwrap_or("40000-40999"))
            .map_err(|message| invalid(format!("`port_range`: {message}")))?;
        let duration = |key: &str, value: Option<&str>, default: &str| {
            parse_duration(value.unwrap_or(default)).map_err(|message| invalid(format!("`{key}`: {message}")))
        };
        let drain_timeout = duration("drain_timeout", raw.drain_timeout.as_deref(), "30s")?;
        let stop_grace = duration("stop_grace", raw.stop_grace.as_deref(), "10s")?;
        let load_timeout = duration("load_timeout", raw.load_timeout.as_deref(), "10m")?;
        let log_dir = absolute(&raw.log_dir.unwrap_or_else(|| PathBuf::from("logs")));
        let state_dir = absolute(&raw.state_dir.unwrap_or_else(|| PathBuf::from("state")));

        let mut harnesses = BTreeMap::new();
        for (name, harness) in raw.harness {
            let harness = match harness {
                HarnessConfig::Llamacpp {
                    binary,
                    allow_args,
                    default_args,
                    anthropic_messages,
                    responses,
                } => HarnessConfig::Llamacpp {
                    binary: absolute(&binary),
                    allow_args,
                    default_args,
                    anthropic_messages,
                    responses,
                },
                HarnessConfig::Command(mut settings) => {
                    validate_command(&settings)
                        .map_err(|message| invalid(format!("`harness.{name}`: {message}")))?;
                    // A bare program name is looked up on PATH; a path is taken like other paths.
                    if let Some(program) = settings.command.first_mut() {
                        if program.contains('/') || program.starts_with('~') {
                            *program = absolute(Path::new(program.as_str())).display().to_string();
                        }
                    }
                    HarnessConfig::Command(settings)
                }
                HarnessConfig::Mistralrs(mut settings) => {
                    validate_mistralrs(&settings)
                        .map_err(|message| invalid(format!("`harness.{name}`: {message}")))?;
                    if let Some(program) = settings.command.first_mut() {
                        if program.contains('/') || program.starts_with('~') {
                            *program = absolute(Path::new(program.as_str())).display().to_string();
                        }
                    }
                    HarnessConfig::Mistralrs(settings)
                }
                HarnessConfig::Sim { tokens_per_second, .. }
                    if !tokens_per_second.is_finite() || tokens_per_second <= 0.0 =>
                {
                    return Err(invalid(format!("`harness.{name}.tokens_per_second` must be > 0")));
                }
                HarnessConfig::Sim { slots, .. } if !(1..=MAX_SIM_SLOTS).contains(&slots) => {
                    return Err(invalid(format!(
                        "`harness.{name}.slots` must be between 1 and {MAX_SIM_SLOTS}"
                    )));
                }
                HarnessConfig::Sim { prefill_ms_per_token, .. }
                    if !prefill_ms_per_token.is_finite() || prefill_ms_per_token < 0.0 =>
                {
                    return Err(invalid(format!("`harness.{name}.prefill_ms_per_token` must be ≥ 0")));
                }
                sim @ HarnessConfig::Sim { .. } => sim,
            };
            harnesses.insert(name, harness);
        }
        if harnesses.is_empty() {
            return Err(invalid("no `[harness.<name>]` table: define at least one engine".to_owned()));
        }

        Ok(Config {
            name: raw.name,
            listen,
            models_dir,
            token_file: raw.token_file.map(|p| absolute(&p)),
            port_range,
            drain_timeout,
            listener: raw.listener,
            stop_grace,
            load_timeout,
            log_dir,
            state_dir,
            capacity: raw.capacity,
            harnesses,
        })
    }

    /// The simulated devices declared by sim harnesses, in harness-name order.
    pub fn sim_devices(&self) -> Vec<SimDevice> {
        self.harnesses
            .values()
            .flat_map(|h| match h {
                HarnessConfig::Sim { devices, .. } => devices.clone(),
                HarnessConfig::Llamacpp { .. } | HarnessConfig::Command(_) | HarnessConfig::Mistralrs(_) => {
                    Vec::new()
                }
            })
            .collect()
    }

    /// Whether anything on this node is simulated.
    pub fn simulated(&self) -> bool {
        self.harnesses.values().any(|h| matches!(h, HarnessConfig::Sim { .. }))
    }
}

/// The bearer token: `env_token` (from `NEURON_TOKEN`) wins over the token file.
pub fn resolve_token(
    config: &Config,
    config_path: &Path,
    env_token: Option<String>,
) -> Result<String, ConfigError> {
    let token = match (env_token, &config.token_file) {
        (Some(token), _) => token,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Read { path: file.clone(), source })?,
        (None, None) => {
            return Err(ConfigError::Invalid {
                path: config_path.to_owned(),
                message: "no API token: set `token_file` or the NEURON_TOKEN environment variable".to_owned(),
            });
        }
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(ConfigError::Invalid {
            path: config.token_file.clone().unwrap_or_else(|| PathBuf::from("NEURON_TOKEN")),
            message: "the API token is empty".to_owned(),
        });
    }
    Ok(token)
}

/// `~/x` → `$HOME/x`; a relative path is taken relative to `base` (the config file's folder).
fn expand_path(base: &Path, home: Option<&Path>, path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ if path.is_absolute() => path.to_owned(),
        _ => base.join(path),
    }
}

/// `"40000-40999"` → `(40000, 40999)`.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} is not a range like \"40000-40999\"");
    let (low, high) = text.split_once('-').ok_or_else(bad)?;
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if low == 0 || low > high {
        return Err(bad());
    }
    Ok((low, high))
}

/// `"500ms"`, `"30s"`, `"10m"`, `"1h"` → a duration.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("{text:?} is not a duration like \"500ms\", \"30s\", \"10m\" or \"1h\"");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => number,
        "s" => number.saturating_mul(1000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => return Err(bad()),
    };
    Ok(Duration::from_millis(millis))
}

/// The placeholders `command` and `env` may use.
const PLACEHOLDERS: &[&str] = &["port", "source", "model", "devices", "device_count"];

/// The names of the `{name}` placeholders in `text` (lowercase letters and `_`); other braces,
/// such as JSON in an argument, are not placeholders.
pub fn placeholders(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let length = after.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(after.len());
        if length > 0 && after[length..].starts_with('}') {
            names.push(&after[..length]);
            rest = &after[length + 1..];
        } else {
            rest = after;
        }
    }
    names
}

/// Check a `[harness.<name>]` table of kind `command`; the message says what to fix.
pub fn validate_command(settings: &CommandSettings) -> Result<(), String> {
    let Some(program) = settings.command.first() else {
        return Err("`command` must name a program, e.g. [\"vllm\", \"serve\", \"{source}\", ...]".to_owned());
    };
    if program.trim().is_empty() || !placeholders(program).is_empty() {
        return Err("`command`'s first element must be a program, without placeholders".to_owned());
    }
    let check = |key: &str, text: &str, allowed: &[&str]| -> Result<(), String> {
        match placeholders(text).into_iter().find(|name| !allowed.contains(name)) {
            Some(name) => Err(format!(
                "`{key}`: unknown placeholder {{{name}}} in {text:?} (known: {})",
                allowed.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
            )),
            None => Ok(()),
        }
    };
    for arg in &settings.command {
        check("command", arg, PLACEHOLDERS)?;
    }
    for (key, text) in &settings.env {
        if key.is_empty() || key.contains('=') {
            return Err(format!("`env`: {key:?} is not an environment variable name"));
        }
        check("env", text, PLACEHOLDERS)?;
    }
    let with_ctx: Vec<&str> = PLACEHOLDERS.iter().copied().chain(["ctx_size"]).collect();
    for arg in &settings.ctx_size_args {
        check("ctx_size_args", arg, &with_ctx)?;
    }
    if !settings.ctx_size_args.is_empty()
        && !settings.ctx_size_args.iter().any(|a| placeholders(a).contains(&"ctx_size"))
    {
        return Err("`ctx_size_args` must contain {ctx_size}".to_owned());
    }
    let uses_port =
        settings.command.iter().chain(settings.env.values()).any(|a| placeholders(a).contains(&"port"));
    if !uses_port {
        return Err("`command` (or `env`) must pass {port}: the neuron picks each engine's port".to_owned());
    }
    if !settings.health_path.starts_with('/') {
        return Err(format!("`health_path` {:?} must start with /", settings.health_path));
    }
    if !(100..=599).contains(&settings.health_status) {
        return Err(format!("`health_status` {} is not an HTTP status", settings.health_status));
    }
    if settings.devices_env.contains('=') {
        return Err(format!("`devices_env`: {:?} is not an environment variable name", settings.devices_env));
    }
    Ok(())
}

/// The port of `http://host:port[/...]`.
pub fn port_of(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// Check a `[harness.<name>]` table of kind `mistralrs`; the message says what to fix.
pub fn validate_mistralrs(settings: &MistralrsSettings) -> Result<(), String> {
    let url = settings.url.trim_end_matches('/');
    let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"];
    if !loopback.iter().any(|prefix| url.starts_with(prefix)) || port_of(url).is_none() {
        return Err(format!(
            "`url` {:?} must be a loopback address with a port, like \"http://127.0.0.1:1234\" \
             (engines listen on loopback only; the neuron is the way in)",
            settings.url
        ));
    }
    if let Some(program) = settings.command.first() {
        if program.trim().is_empty() || program.contains('{') {
            return Err("`command`'s first element must be a program, without placeholders".to_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = text.replace("MODELS", &dir.path().display().to_string());
        Config::from_toml(&dir.path().join("neuron.toml"), &text)
    }

    #[test]
    fn a_full_config_parses_with_defaults() {
        let config = parse(
            r#"
name = "n1"
models_dir = "MODELS"
[capacity]
ram_mb = 8000
[harness.llamacpp]
kind = "llamacpp"
binary = "/usr/bin/llama-server"
default_args = ["--jinja"]
[harness.sim]
kind = "sim"
devices = [{ name = "SimGPU 24G", vram_mb = 24000 }]
"#,
        )
        .expect("valid");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.port_range, (40000, 40999));
        assert_eq!(config.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.stop_grace, Duration::from_secs(10));
        assert_eq!(config.capacity.ram_mb, Some(8000));
        assert_eq!(config.sim_devices().len(), 1);
        assert!(config.simulated());
        assert!(matches!(config.harnesses["llamacpp"], HarnessConfig::Llamacpp { allow_args: false, .. }));
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_file() {
        let err = parse("name = \"n\"\nmodels_dir = \"MODELS\"\nfoo = 1\n").expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("neuron.toml") && text.contains("foo"), "{text}");
        let err = parse(
            "name = \"n\"\nmodels_dir = \"MODELS\"\n[harness.x]\nkind = \"sim\"\nbinary = \"/bin/x\"\n",
        )
        .expect_err("binary is not a sim key");
        assert!(err.to_string().contains("binary"), "{err}");
        let err = parse("name = \"n\"\nmodels_dir = \"MODELS\"\n[harness.x]\nkind = \"vllm\"\n")
            .expect_err("unknown kind");
        assert!(err.to_string().contains("vllm"), "{err}");
    }

    #[test]
    fn a_command_harness_parses_with_defaults_and_its_template_is_checked() {
        let config = parse(
            r#"
name = "n"
models_dir = "MODELS"
[harness.vllm]
kind = "command"
command = ["vllm", "serve", "{source}", "--host", "127.0.0.1", "--port", "{port}", "--served-model-name", "{model}"]
[harness.local]
kind = "command"
command = ["bin/server", "--port", "{port}"]
env = { HIP_VISIBLE_DEVICES = "{devices}" }
devices_env = ""
embeddings = true
"#,
        )
        .expect("valid");
        let HarnessConfig::Command(vllm) = &config.harnesses["vllm"] else { panic!("command") };
        assert_eq!(vllm.command[0], "vllm", "a bare program is looked up on PATH");
        assert_eq!((vllm.health_path.as_str(), vllm.health_status), ("/health", 200));
        assert_eq!(vllm.devices_env, "CUDA_VISIBLE_DEVICES");
        assert!(!vllm.anthropic_messages && !vllm.allow_args);
        let HarnessConfig::Command(local) = &config.harnesses["local"] else { panic!("command") };
        assert!(Path::new(&local.command[0]).is_absolute(), "a path is relative to the file");
        let err = parse(
            "name = \"n\"\nmodels_dir = \"MODELS\"\n[harness.x]\nkind = \"command\"\ncommand = [\"x\", \"{gpu}\"]\n",
        )
        .expect_err("unknown placeholder");
        assert!(err.to_string().contains("harness.x") && err.to_string().contains("{gpu}"), "{err}");
    }

    #[test]
    fn the_sim_prompt_cache_has_defaults_and_its_bounds_are_checked() {
        let config =
            parse("name = \"n\"\nmodels_dir = \"MODELS\"\n[harness.s]\nkind = \"sim\"\n").expect("valid");
        assert!(matches!(
            config.harnesses["s"],
            HarnessConfig::Sim { slots: 4, prefill_ms_per_token, .. } if prefill_ms_per_token == 0.0
        ));
        let config = parse(
            "name = \"n\"\nmodels_dir = \"MODELS\"\n[harness.s]\nkind = \"sim\"\nslots = 16\nprefill_ms_per_token = 0.25\n",
        )
        .expect("valid");
        assert!(matches!(
            config.harnesses["s"],
            HarnessConfig::Sim { slots: 16, prefill_ms_per_token, .. } if prefill_ms_per_token == 0.25
        ));
        for (bad, key) in
            [("slots = 0", "slots"), ("slots = 5000", "slots"), ("prefill_ms_per_token = -1.0", "prefill")]
        {
            let err = parse(&format!(
                "name = \"n\"\nmodels_dir = \"MODELS\"\n[harness.s]\nkind = \"sim\"\n{bad}\n"
            ))
            .expect_err(bad);
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn a_missing_models_dir_is_reported() {
        let err = parse("name = \"n\"\nmodels_dir = \"/nonexistent/models\"\n[harness.s]\nkind = \"sim\"\n")
            .expect_err("missing dir");
        assert!(err.to_string().contains("models_dir"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid_with_and_without_the_sim_harness() {
        let dir = tempfile::tempdir().expect("tempdir");
        let example = include_str!("../neuron.example.toml")
            .replace("models_dir = \"~/.cache/cortex/models\"", &format!("models_dir = {:?}", dir.path()));
        let path = dir.path().join("neuron.toml");
        let config = Config::from_toml(&path, &example).expect("example parses");
        assert_eq!(config.harnesses.len(), 1);
        assert!(!config.simulated());
        let (before, after) = example.split_once("# [harness.sim]").expect("sim section");
        let uncommented: String =
            after.lines().map(|l| format!("{}\n", l.trim_start_matches("# "))).collect();
        let with_sim = format!("{before}[harness.sim]{uncommented}");
        let config = Config::from_toml(&path, &with_sim).expect("example with sim parses");
        assert_eq!(config.sim_devices().len(), 2);
    }

    #[test]
    fn paths_are_relative_to_the_file_or_home() {
        let (base, home) = (Path::new("/etc/cortex"), Some(Path::new("/home/n")));
        assert_eq!(expand_path(base, home, Path::new("logs")), PathBuf::from("/etc/cortex/logs"));
        assert_eq!(expand_path(base, home, Path::new("/var/log")), PathBuf::from("/var/log"));
        assert_eq!(expand_path(base, home, Path::new("~/models")), PathBuf::from("/home/n/models"));
        assert_eq!(expand_path(base, None, Path::new("~/models")), PathBuf::from("/etc/cortex/~/models"));
    }

    #[test]
    fn durations_and_port_ranges_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_port_range("40000-40999"), Ok((40000, 40999)));
        assert!(parse_port_range("5-1").is_err());
        assert!(parse_port_range("x").is_err());
    }
}
