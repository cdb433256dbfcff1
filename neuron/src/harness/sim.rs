//! The `sim` harness: a SIMULATED engine for demos without GPUs, scale tests and benchmarks.
//! Each load starts an in-process HTTP server on a leased loopback port (see `sim_server`) that
//! answers 503 on `/health` until the configured load time has passed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use plans::wire::HarnessInfo;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::harness::sim_cache::PromptCache;
use crate::harness::sim_server::{self, SimSettings};
use crate::harness::supervise::{HttpReady, PortLease};
use crate::harness::{Engine, EngineError, Harness, Launch, Readiness};

pub struct Sim {
    pub load: Duration,
    pub ttft: Duration,
    pub tokens_per_second: f64,
    pub allow_args: bool,
    /// Prompt cache slots of each engine (`sim_cache`).
    pub slots: usize,
    /// Time to first token added per uncached prompt token.
    pub prefill_per_token: Duration,
}

impl Harness for Sim {
    fn info(&self, name: &str) -> HarnessInfo {
        HarnessInfo {
            name: name.to_owned(),
            kind: "sim".to_owned(),
            anthropic_messages: false,
            count_tokens: false,
            embeddings: true,
            responses: false,
        }
    }

    fn check_args(&self, name: &str, args: &[String]) -> Result<(), String> {
        if args.is_empty() || self.allow_args {
            Ok(())
        } else {
            Err(format!(
                "harness {name:?} does not allow extra engine arguments (set allow_args = true in neuron.toml)"
            ))
        }
    }

    fn needs_source_file(&self) -> bool {
        false
    }

    fn start(&self, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Engine>, EngineError>> {
        let started = self.start_now(launch);
        Box::pin(async move { started })
    }
}

impl Sim {
    fn start_now(&self, launch: Launch) -> Result<Box<dyn Engine>, EngineError> {
        let port = launch.port.port;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|err| {
                EngineError::Spawn(format!("simulated engine cannot listen on 127.0.0.1:{port}: {err}"))
            })?;
        let settings = Arc::new(SimSettings {
            model: launch.model.clone(),
            ready_at: Instant::now() + self.load,
            ttft: self.ttft,
            prefill_per_token: self.prefill_per_token,
            token_interval: Duration::from_secs_f64(1.0 / self.tokens_per_second),
            cache: PromptCache::new(self.slots),
        });
        tracing::info!(model = %launch.model, port, "starting SIMULATED engine (load {:?})", self.load);
        let cancel = CancellationToken::new();
        let (exit_tx, exited) = watch::channel(None);
        let server = axum::serve(listener, sim_server::router(settings))
            .with_graceful_shutdown(cancel.clone().cancelled_owned());
        tokio::spawn(async move {
            let how = match server.await {
                Ok(()) => "stopped".to_owned(),
                Err(err) => format!("failed: {err}"),
            };
            exit_tx.send_replace(Some(how));
        });
        Ok(Box::new(SimEngine { port: launch.port, cancel, exited }))
    }
}

/// A running simulated engine: a server task stopped through its cancellation token.
struct SimEngine {
    port: PortLease,
    cancel: CancellationToken,
    exited: watch::Receiver<Option<String>>,
}

impl Engine for SimEngine {
    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.port)
    }

    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }

    fn probe_ready<'a>(&'a self, http: &'a reqwest::Client) -> BoxFuture<'a, Readiness> {
        Box::pin(async move { HttpReady::default().probe(http, &self.base_url()).await })
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.cancel.cancel();
            let mut exited = self.exited.clone();
            if tokio::time::timeout(grace, exited.wait_for(Option::is_some)).await.is_err() {
                tracing::warn!(
                    port = self.port.port,
                    "simulated engine still had open connections after {grace:?}"
                );
            }
        })
    }

    fn log_tail(&self, _lines: usize) -> String {
        "(simulated engine: no log)".to_owned()
    }
}

impl Drop for SimEngine {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
