//! The `mistralrs` harness: a mistral.rs server that hosts several models in one process, driven
//! through its lifecycle API (`POST /v1/models/{reload,unload,status}` with `{"model_id"}`,
//! always HTTP 200: the `status` field says what happened; `GET /v1/models` lists each model's
//! status). Loading a model is a reload, unloading it an unload; readiness is the model's status
//! in `/v1/models` (its `/health` is 200 as soon as it listens). Optionally the neuron starts
//! the server itself from a configured command (`mistralrs serve …` or `mistralrs from-config -f
//! FILE`), supervised by `crate::harness::supervise` like any engine process, and stops it at shutdown.
//!
//! A model's fleet id is mapped to the id mistral.rs knows it by (`profile.source`, or its
//! entry in `model_ids`); the proxy puts that id in the requests it forwards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use plans::wire::HarnessInfo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{MistralrsSettings, port_of};
use crate::harness::supervise::{HttpReady, NotReady, PortPool, ProcessEngine, ProcessSpec, wait_ready};
use crate::harness::{Engine, EngineError, Harness, Launch, Readiness};

/// How often a loaded model's status is checked (crash and behind-the-back unload detection).
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Consecutive failed status calls after which the server counts as gone.
const WATCH_FAILURES: u32 = 3;
/// How long one lifecycle call may take, except reload (which lasts as long as the load).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A lifecycle answer: `{"model_id", "status", "error"?}`.
#[derive(Debug, serde::Deserialize)]
struct StatusAnswer {
    status: String,
    #[serde(default)]
    error: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, serde::Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Debug, serde::Deserialize)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    status: Option<String>,
}

pub struct MistralRs {
    settings: MistralrsSettings,
    /// The configured server's base URL, without a trailing slash.
    url: String,
    http: reqwest::Client,
    /// The server process when the neuron starts it (`command`); started at the first load,
    /// restarted at a load after it ended. Held across the start (a tokio mutex), so two loads
    /// never start two servers.
    server: tokio::sync::Mutex<Option<Arc<ProcessEngine>>>,
    /// mistral.rs ids of the models this harness holds loaded; the others are unloaded when the
    /// neuron starts the server (from-config loads every model it lists). Short sections only.
    held: Arc<Mutex<BTreeMap<String, u32>>>,
    log_path: std::path::PathBuf,
    load_timeout: Duration,
}

impl MistralRs {
    /// `name` is the harness's table name; the server's log is `<log_dir>/mistralrs-<name>.log`.
    pub fn new(
        name: &str,
        settings: MistralrsSettings,
        log_dir: &std::path::Path,
        load_timeout: Duration,
    ) -> MistralRs {
        let url = settings.url.trim_end_matches('/').to_owned();
        // Building a client only fails when TLS or the resolver cannot be set up; fall back to
        // the default client rather than refusing to start.
        let http = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
        MistralRs {
            url,
            http,
            server: tokio::sync::Mutex::new(None),
            held: Arc::new(Mutex::new(BTreeMap::new())),
            log_path: log_dir.join(crate::harness::log_file_name(&format!("mistralrs-{name}"))),
            load_timeout,
            settings,
        }
    }

    /// The id mistral.rs knows the model by: its `model_ids` entry, else the profile's source.
    fn engine_model_id(&self, source: &str) -> String {
        self.settings.model_ids.get(source).cloned().unwrap_or_else(|| source.to_owned())
    }

    /// Start the server when the neuron owns it and it is not running; returns it (if owned).
    async fn ensure_server(&self) -> Result<Option<Arc<ProcessEngine>>, EngineError> {
        if self.settings.command.is_empty() {
            return Ok(None);
        }
        let mut server = self.server.lock().await;
        if let Some(running) = server.as_ref().filter(|s| s.exited().borrow().is_none()) {
            return Ok(Some(Arc::clone(running)));
        }
        let port = port_of(&self.url)
            .ok_or_else(|| EngineError::Spawn(format!("mistralrs url {} has no port", self.url)))?;
        let lease = PortPool::new((port, port)).lease().ok_or_else(|| {
            EngineError::Spawn(format!("cannot start mistral.rs: something already listens on port {port}"))
        })?;
        let fill = |text: &String| text.replace("{port}", &port.to_string());
        let program = self.settings.command.first().cloned().unwrap_or_default();
        let spec = ProcessSpec {
            program: program.into(),
            args: self.settings.command.iter().skip(1).map(fill).collect(),
            env: self.settings.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect(),
            log_path: self.log_path.clone(),
            port: lease,
            ready: HttpReady::default(),
        };
        let started = Arc::new(ProcessEngine::spawn(spec)?);
        // from-config listens only once every model it lists is loaded; then /health is 200.
        let deadline = tokio::time::Instant::now() + self.load_timeout;
        match wait_ready(started.as_ref(), &self.http, deadline).await {
            Ok(()) => {}
            Err(NotReady::Exited(how)) => {
                return Err(EngineError::Spawn(format!(
                    "mistral.rs server {how} while starting; last log lines:\n{}",
                    started.log_tail(20)
                )));
            }
            Err(NotReady::Failed(why)) => return Err(EngineError::Spawn(why)),
            Err(NotReady::Timeout) => {
                started.stop(Duration::from_secs(10)).await;
                return Err(EngineError::Spawn(format!(
                    "mistral.rs server not up after {:?}; last log lines:\n{}",
                    self.load_timeout,
                    started.log_tail(20)
                )));
            }
        }
        self.unload_unheld().await;
        *server = Some(Arc::clone(&started));
        Ok(Some(started))
    }

    /// Unload what the server loaded on its own and this neuron does not hold, so that what it
    /// reports loaded is all the server holds.
    async fn unload_unheld(&self) {
        let Ok(list) = list_models(&self.http, &self.url).await else { return };
        for entry in list.data {
            let held = self.held.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&entry.id);
            if entry.id == "default" || held || entry.status.as_deref() != Some("loaded") {
                continue;
            }
            tracing::info!(model_id = %entry.id, "unloading a model mistral.rs loaded at start");
            if let Err(err) = lifecycle(&self.http, &self.url, "unload", &entry.id, CALL_TIMEOUT).await {
                tracing::warn!(model_id = %entry.id, "cannot unload: {err}");
            }
        }
    }

    fn hold(&self, model_id: &str, change: i64) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(model_id.to_owned()).or_insert(0);
        *count = if change > 0 { count.saturating_add(1) } else { count.saturating_sub(1) };
        if *count == 0 {
            held.remove(model_id);
        }
    }
}

impl Harness for MistralRs {
    fn info(&self, name: &str) -> HarnessInfo {
        HarnessInfo {
            name: name.to_owned(),
            kind: "mistralrs".to_owned(),
            // 0.8.1 answers 404 on /v1/messages: the gateway translates Anthropic requests.
            anthropic_messages: false,
            count_tokens: false,
            embeddings: self.settings.embeddings,
            // 0.8.1 serves /v1/responses (and GET/cancel by id) itself.
            responses: self.settings.responses.unwrap_or(true),
        }
    }

    fn check_args(&self, name: &str, args: &[String]) -> Result<(), String> {
        if args.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "harness {name:?} (mistralrs) takes no per-model arguments: models are configured in mistral.rs's own file"
            ))
        }
    }

    fn needs_source_file(&self) -> bool {
        // The source names a model the mistral.rs server is configured with, not a file.
        false
    }

    fn start(&self, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Engine>, EngineError>> {
        Box::pin(async move {
            let model_id = self.engine_model_id(&launch.profile.source);
            // The leased port is not used: the server has its own. Returned at once.
            drop(launch.port);
            self.hold(&model_id, 1);
            let server = match self.ensure_server().await {
                Ok(server) => server,
                Err(err) => {
                    self.hold(&model_id, -1);
                    return Err(err);
                }
            };
            Ok(Box::new(ModelEngine::start(self, model_id, server)) as Box<dyn Engine>)
        })
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(server) = self.server.lock().await.take() {
                server.stop(grace).await;
            }
        })
    }
}

/// One model on the mistral.rs server, seen as an engine.
struct ModelEngine {
    url: String,
    model_id: String,
    http: reqwest::Client,
    server: Option<Arc<ProcessEngine>>,
    held: Arc<Mutex<BTreeMap<String, u32>>>,
    /// What the reload said when it failed (`not_found`, or `internal_error` with the engine's words).
    reload_error: Arc<Mutex<Option<String>>>,
    exited: watch::Receiver<Option<String>>,
    /// Ends the reload and watch tasks.
    cancel: CancellationToken,
}

impl ModelEngine {
    fn start(harness: &MistralRs, model_id: String, server: Option<Arc<ProcessEngine>>) -> ModelEngine {
        let (exit_tx, exited) = watch::channel(None);
        let engine = ModelEngine {
            url: harness.url.clone(),
            model_id,
            http: harness.http.clone(),
            server,
            held: Arc::clone(&harness.held),
            reload_error: Arc::new(Mutex::new(None)),
            exited,
            cancel: CancellationToken::new(),
        };
        // The reload blocks until the model is loaded; readiness is read from /v1/models meanwhile.
        let (http, url, model_id) = (engine.http.clone(), engine.url.clone(), engine.model_id.clone());
        let (reload_error, cancel) = (Arc::clone(&engine.reload_error), engine.cancel.clone());
        let load_timeout = harness.load_timeout;
        let server_exit = engine.server.as_ref().map(|s| s.exited());
        tokio::spawn(async move {
            let work = async {
                if let Err(error) = bring_up(&http, &url, &model_id, load_timeout).await {
                    *reload_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                    // The failure is reported through readiness; `exit_tx` lives until the
                    // engine is stopped, so that it is not mistaken for an exit.
                    std::future::pending::<()>().await;
                }
                watch_model(&http, &url, &model_id, server_exit, &exit_tx).await;
            };
            tokio::select! {
                () = work => {}
                () = cancel.cancelled() => {}
            }
        });
        engine
    }
}

/// Make mistral.rs load `model_id`: a reload, unless it is loaded (or loading) already. Asking
/// first matters: 0.8.1 answers `not_found` to a reload of a loaded model and then reports it
/// `reloading` for good.
async fn bring_up(
    http: &reqwest::Client,
    url: &str,
    model_id: &str,
    load_timeout: Duration,
) -> Result<(), String> {
    let refused = |answer: StatusAnswer| {
        let why = answer.error.map(|e| format!(": {}", engine_error(&e))).unwrap_or_default();
        format!("mistral.rs could not load {model_id:?}: {}{why}", answer.status)
    };
    let status = lifecycle(http, url, "status", model_id, CALL_TIMEOUT)
        .await
        .map_err(|err| format!("mistral.rs did not answer a status call for {model_id:?}: {err}"))?;
    match status.status.as_str() {
        "loaded" | "reloading" => return Ok(()),
        "unloaded" => {}
        _ => return Err(refused(status)),
    }
    let answer = lifecycle(http, url, "reload", model_id, load_timeout)
        .await
        .map_err(|err| format!("mistral.rs reload of {model_id:?} failed: {err}"))?;
    match answer.status.as_str() {
        "loaded" | "reloading" => Ok(()),
        _ => Err(refused(answer)),
    }
}

/// Until the model stops being loaded (or the server goes away), then publish how.
async fn watch_model(
    http: &reqwest::Client,
    url: &str,
    model_id: &str,
    server_exit: Option<watch::Receiver<Option<String>>>,
    exit_tx: &watch::Sender<Option<String>>,
) {
    let server_gone = async {
        match server_exit {
            Some(mut exited) => match exited.wait_for(Option::is_some).await {
                Ok(how) => format!("mistral.rs server {}", how.clone().unwrap_or_default()),
                Err(_) => "mistral.rs server gone".to_owned(),
            },
            None => std::future::pending().await,
        }
    };
    let model_gone = async {
        let mut failures = 0;
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            match lifecycle(http, url, "status", model_id, CALL_TIMEOUT).await {
                Ok(answer) if answer.status == "loaded" || answer.status == "reloading" => failures = 0,
                Ok(answer) => return format!("mistral.rs reports {model_id:?} {}", answer.status),
                Err(err) => {
                    failures += 1;
                    if failures >= WATCH_FAILURES {
                        return format!("mistral.rs server stopped answering: {err}");
                    }
                }
            }
        }
    };
    let how = tokio::select! {
        how = server_gone => how,
        how = model_gone => how,
    };
    exit_tx.send_replace(Some(how));
}

impl Engine for ModelEngine {
    fn base_url(&self) -> String {
        self.url.clone()
    }

    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }

    fn probe_ready<'a>(&'a self, http: &'a reqwest::Client) -> BoxFuture<'a, Readiness> {
        Box::pin(async move {
            if let Some(error) = self.reload_error.lock().unwrap_or_else(PoisonError::into_inner).clone() {
                return Readiness::Failed(error);
            }
            let Ok(list) = list_models(http, &self.url).await else { return Readiness::NotYet };
            match list.data.iter().find(|m| m.id == self.model_id).and_then(|m| m.status.as_deref()) {
                Some("loaded") => Readiness::Ready,
                Some(_) => Readiness::NotYet,
                // Not listed: the reload's answer (not_found) says so in a moment.
                None => Readiness::NotYet,
            }
        })
    }

    fn stop(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.cancel.cancel();
            let server_up = self.server.as_ref().is_none_or(|s| s.exited().borrow().is_none());
            if server_up {
                match lifecycle(&self.http, &self.url, "unload", &self.model_id, CALL_TIMEOUT).await {
                    Ok(answer) if matches!(answer.status.as_str(), "unloaded" | "not_found") => {}
                    // mistral.rs 0.8.1 answers this for models started by `from-config`: it has
                    // dropped the model and cannot load it again until it restarts.
                    Ok(answer) if answer.status == "no_loader_config" => tracing::warn!(
                        model_id = %self.model_id,
                        "mistral.rs cannot unload this model (no_loader_config: it was started by \
                         from-config); it is gone from the server until the server restarts"
                    ),
                    Ok(answer) => tracing::warn!(
                        model_id = %self.model_id,
                        "mistral.rs unload answered {}: {}",
                        answer.status,
                        answer.error.unwrap_or_default()
                    ),
                    Err(err) => tracing::warn!(model_id = %self.model_id, "mistral.rs unload failed: {err}"),
                }
            }
        })
    }

    fn log_tail(&self, lines: usize) -> String {
        match &self.server {
            Some(server) => server.log_tail(lines),
            None => format!("(mistral.rs at {} runs outside the neuron: its log is its own)", self.url),
        }
    }

    fn served_model(&self) -> Option<String> {
        Some(self.model_id.clone())
    }
}

impl Drop for ModelEngine {
    fn drop(&mut self) {
        self.cancel.cancel();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.model_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.model_id);
            }
        }
    }
}

/// The engine's error without the backtraces mistral.rs appends (`   0: candle_core::…`), at
/// most 2,000 characters.
fn engine_error(error: &str) -> String {
    let is_frame = |line: &str| {
        let trimmed = line.trim_start();
        let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && line.len() > trimmed.len() && trimmed[digits..].starts_with(": ")
    };
    let kept: Vec<&str> = error.lines().take_while(|line| !is_frame(line)).collect();
    let text = kept.join(" ").trim().to_owned();
    match text.char_indices().nth(2000) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// `POST /v1/models/<operation>` with `{"model_id"}`; the answer's `status` field says what
/// happened (the HTTP status is 200 either way).
async fn lifecycle(
    http: &reqwest::Client,
    url: &str,
    operation: &str,
    model_id: &str,
    timeout: Duration,
) -> Result<StatusAnswer, reqwest::Error> {
    http.post(format!("{url}/v1/models/{operation}"))
        .timeout(timeout)
        .json(&serde_json::json!({ "model_id": model_id }))
        .send()
        .await?
        .json()
        .await
}

async fn list_models(http: &reqwest::Client, url: &str) -> Result<ModelList, reqwest::Error> {
    http.get(format!("{url}/v1/models")).timeout(Duration::from_secs(5)).send().await?.json().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate_mistralrs as validate;

    fn settings(url: &str) -> MistralrsSettings {
        MistralrsSettings {
            url: url.to_owned(),
            command: vec![],
            env: BTreeMap::new(),
            model_ids: BTreeMap::from([("tiny".to_owned(), "/models/tiny-llama".to_owned())]),
            embeddings: false,
            responses: None,
        }
    }

    #[test]
    fn urls_must_be_loopback_with_a_port() {
        assert!(validate(&settings("http://127.0.0.1:1234")).is_ok());
        assert!(validate(&settings("http://localhost:1234/")).is_ok());
        assert!(validate(&settings("http://10.0.0.5:1234")).is_err());
        assert!(validate(&settings("http://127.0.0.1")).is_err());
        assert_eq!(port_of("http://127.0.0.1:1234/v1"), Some(1234));
        let mut bad = settings("http://127.0.0.1:1234");
        bad.command = vec!["{port}".to_owned()];
        assert!(validate(&bad).is_err());
    }

    #[test]
    fn engine_errors_lose_their_backtraces() {
        let error = "Failed to load model: Critical failure loading model part 0!\nCheck whether your \
                     current quantization format is supported: gguf: unsupported magic\n   0: candle_core::error::Error::bt\n   \
                     1: candle_core::quantized::gguf_file::Content::read\n";
        assert_eq!(
            engine_error(error),
            "Failed to load model: Critical failure loading model part 0! Check whether your current \
             quantization format is supported: gguf: unsupported magic"
        );
        assert_eq!(engine_error(&"x".repeat(3000)).chars().count(), 2001);
    }

    #[test]
    fn model_ids_map_sources_and_default_to_the_source() {
        let harness = MistralRs::new(
            "mrs",
            settings("http://127.0.0.1:1"),
            std::path::Path::new("/tmp"),
            Duration::from_secs(1),
        );
        assert_eq!(harness.engine_model_id("tiny"), "/models/tiny-llama");
        assert_eq!(harness.engine_model_id("org/other"), "org/other");
        let info = harness.info("mrs");
        assert_eq!(
            (info.kind.as_str(), info.anthropic_messages, info.count_tokens),
            ("mistralrs", false, false)
        );
        assert!(harness.check_args("mrs", &["--x".to_owned()]).is_err());
    }
}
