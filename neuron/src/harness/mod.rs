//! Harnesses (engine kinds) behind one trait, and the running-engine handle the lifecycle
//! supervises. Each harness only knows how to start its engine and how to tell that it is ready;
//! the readiness loop, crash watching, draining and stopping are the same for all (see
//! `crate::harness::supervise` and `crate::lifecycle`).

pub(crate) mod command;
pub(crate) mod llamacpp;
pub(crate) mod mistralrs;
pub(crate) mod sim;
pub(crate) mod sim_cache;
pub(crate) mod sim_server;
pub(crate) mod supervise;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use plans::fleet::Profile;
use plans::wire::HarnessInfo;
use tokio::sync::watch;

use crate::config::{Config, HarnessConfig};
use crate::harness::supervise::PortLease;

/// Why an engine could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Spawn(String),
}

/// Everything a harness needs to start one engine for one model.
pub struct Launch {
    /// The fleet id; the engine serves it under this name.
    pub model: String,
    /// The model source, resolved inside models_dir (symlinks resolved).
    pub source: PathBuf,
    pub profile: Profile,
    /// Device indices; empty for CPU.
    pub devices: Vec<u32>,
    /// The loopback port the engine must listen on; released when the engine is dropped.
    pub port: PortLease,
    /// Where the engine's stdout/stderr go.
    pub log_path: PathBuf,
}

/// An engine kind configured in neuron.toml.
pub trait Harness: Send + Sync {
    /// What it is and what its engine can do, for discovery.
    fn info(&self, name: &str) -> HarnessInfo;
    /// Refuse extra engine arguments this harness does not allow; the message is shown to the caller.
    fn check_args(&self, name: &str, args: &[String]) -> Result<(), String>;
    /// Whether the model source must exist as a file or folder (a simulator reads nothing).
    fn needs_source_file(&self) -> bool {
        true
    }
    /// Start the engine (not waiting for readiness). Async, because some harnesses start an
    /// engine by asking a running server (mistral.rs) rather than by spawning a process.
    fn start(&self, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Engine>, EngineError>>;
    /// Stop what the harness itself runs (a shared server), after every engine has stopped.
    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// One look at whether an engine is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not yet (still loading, not listening yet): look again later.
    NotYet,
    /// It never will be; the engine's own words.
    Failed(String),
}

/// A started engine, process or in-process. Dropping it releases its port.
pub trait Engine: Send + Sync {
    /// `http://127.0.0.1:PORT`: engines listen on loopback only.
    fn base_url(&self) -> String;
    /// `Some(how it ended)` once the engine has stopped, for whatever reason.
    fn exited(&self) -> watch::Receiver<Option<String>>;
    /// One readiness check (an HTTP call with a short timeout); `crate::harness::supervise::wait_ready`
    /// repeats it with backoff.
    fn probe_ready<'a>(&'a self, http: &'a reqwest::Client) -> BoxFuture<'a, Readiness>;
    /// Stop gracefully, forcefully after `grace`; returns once it has ended.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, ()>;
    /// The engine's last log lines, for failure reports.
    fn log_tail(&self, lines: usize) -> String;
    /// The name requests must use for this model when the engine does not serve it under its
    /// fleet id (mistral.rs's `model_id`); the proxy puts it in the forwarded body.
    fn served_model(&self) -> Option<String> {
        None
    }
}

/// The harnesses defined in neuron.toml, by name.
pub fn from_config(config: &Config) -> BTreeMap<String, Arc<dyn Harness>> {
    config
        .harnesses
        .iter()
        .map(|(name, harness)| {
            let harness: Arc<dyn Harness> = match harness {
                HarnessConfig::Llamacpp {
                    binary,
                    allow_args,
                    default_args,
                    anthropic_messages,
                    responses,
                } => {
                    let native = llamacpp::Native {
                        anthropic_messages: anthropic_messages.unwrap_or(true),
                        responses: responses.unwrap_or(true),
                    };
                    Arc::new(llamacpp::LlamaCpp::new(
                        binary.clone(),
                        *allow_args,
                        default_args.clone(),
                        native,
                    ))
                }
                HarnessConfig::Command(settings) => Arc::new(command::CommandHarness::new(settings.clone())),
                HarnessConfig::Mistralrs(settings) => Arc::new(mistralrs::MistralRs::new(
                    name,
                    settings.clone(),
                    &config.log_dir,
                    config.load_timeout,
                )),
                HarnessConfig::Sim {
                    load_ms,
                    ttft_ms,
                    tokens_per_second,
                    allow_args,
                    slots,
                    prefill_ms_per_token,
                    ..
                } => Arc::new(sim::Sim {
                    load: Duration::from_millis(*load_ms),
                    ttft: Duration::from_millis(*ttft_ms),
                    tokens_per_second: *tokens_per_second,
                    allow_args: *allow_args,
                    slots: *slots,
                    prefill_per_token: Duration::try_from_secs_f64(prefill_ms_per_token / 1000.0)
                        .unwrap_or(Duration::ZERO),
                }),
            };
            (name.clone(), harness)
        })
        .collect()
}

/// A file name for a model's log: the id with anything unusual replaced.
pub fn log_file_name(model: &str) -> String {
    let safe: String = model
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    format!("{}.log", safe.trim_start_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway picks pass-through or translation from these flags, so each kind must report
    /// what its engine really serves.
    #[test]
    fn every_harness_reports_what_its_engine_serves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            r#"
name = "n"
models_dir = {:?}
[harness.llama]
kind = "llamacpp"
binary = "/bin/llama-server"
[harness.llama_embed]
kind = "llamacpp"
binary = "/bin/llama-server"
default_args = ["--embeddings"]
[harness.vllm]
kind = "command"
command = ["vllm", "serve", "{{source}}", "--port", "{{port}}"]
embeddings = true
[harness.mrs]
kind = "mistralrs"
url = "http://127.0.0.1:1234"
[harness.sim]
kind = "sim"
"#,
            dir.path().display().to_string()
        );
        let config = Config::from_toml(&dir.path().join("neuron.toml"), &text).expect("config");
        let flags: BTreeMap<String, (String, bool, bool, bool)> = from_config(&config)
            .iter()
            .map(|(name, harness)| {
                let info = harness.info(name);
                (name.clone(), (info.kind, info.anthropic_messages, info.count_tokens, info.embeddings))
            })
            .collect();
        let expect = |kind: &str, messages, count, embed| (kind.to_owned(), messages, count, embed);
        assert_eq!(flags["llama"], expect("llamacpp", true, true, false));
        assert_eq!(flags["llama_embed"], expect("llamacpp", true, true, true));
        assert_eq!(flags["vllm"], expect("command", false, false, true));
        assert_eq!(flags["sim"], expect("sim", false, false, true));
        // mistral.rs 0.8.1 answers 404 on /v1/messages (docs: shared engine facts).
        assert_eq!(flags["mrs"], expect("mistralrs", false, false, false));
    }
}
