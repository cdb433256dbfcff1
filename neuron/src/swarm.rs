//! A swarm: many SIMULATED neurons in one process, for scale tests and benchmarks of cortex
//! (hundreds of neurons, thousands of simulated GPUs, on one small machine). Each member is a
//! complete `Neuron` (the same state, API and sim harness as the `neuron` binary) served on its
//! own loopback port from one shared tokio runtime; only the process around them is shared.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Capacity, Config, HarnessConfig, SimDevice};
use crate::state::{Neuron, StartError};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SwarmSpec {
    /// How many neurons.
    pub count: usize,
    /// Neuron names are `<prefix>-<index>`, index from 0, zero-padded to the width of `count`.
    pub prefix: String,
    pub devices_per_neuron: usize,
    pub device_vram_mb: u64,
    /// Host RAM each neuron reports.
    pub ram_mb: u64,
    /// Neuron `i` listens on `base_port + i`; `None`: any free port.
    pub base_port: Option<u16>,
    /// Engine ports, split evenly between the neurons (each needs one per loaded model).
    pub engine_ports: (u16, u16),
    /// The sim engine's settings.
    pub load_ms: u64,
    pub ttft_ms: u64,
    pub tokens_per_second: f64,
    /// Prompt cache slots per engine and the time to first token per uncached prompt token.
    pub slots: usize,
    pub prefill_ms_per_token: f64,
    /// Holds each neuron's (empty) models_dir and log_dir.
    pub dir: PathBuf,
    pub token: String,
}

/// Why a swarm could not start.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot create {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// One started member: its name and API address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
}

/// The members' `[[neuron]]` tables, ready to paste into a fleet file.
pub fn fleet_tables(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("[[neuron]]\nname = \"{}\"\nendpoint = \"http://{}\"\n\n", m.name, m.addr))
        .collect()
}

fn config_for(spec: &SwarmSpec, index: usize, ports: (u16, u16)) -> Result<Config, SwarmError> {
    let width = spec.count.saturating_sub(1).to_string().len();
    let name = format!("{}-{index:0width$}", spec.prefix);
    let root = spec.dir.join(&name);
    let models_dir = root.join("models");
    std::fs::create_dir_all(&models_dir)
        .map_err(|source| SwarmError::Dir { path: models_dir.display().to_string(), source })?;
    let models_dir = std::fs::canonicalize(&models_dir)
        .map_err(|source| SwarmError::Dir { path: models_dir.display().to_string(), source })?;
    let device = SimDevice { name: "SimGPU".to_owned(), vram_mb: spec.device_vram_mb };
    let sim = HarnessConfig::Sim {
        load_ms: spec.load_ms,
        ttft_ms: spec.ttft_ms,
        tokens_per_second: spec.tokens_per_second,
        devices: vec![device; spec.devices_per_neuron],
        allow_args: false,
        slots: spec.slots,
        prefill_ms_per_token: spec.prefill_ms_per_token,
    };
    Ok(Config {
        name,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        models_dir,
        token_file: None,
        port_range: ports,
        drain_timeout: Duration::from_secs(5),
        listener: cortex_listener::Limits::default(),
        stop_grace: Duration::from_secs(2),
        load_timeout: Duration::from_secs(600),
        log_dir: root.join("logs"),
        state_dir: root.join("state"),
        capacity: Capacity { ram_mb: Some(spec.ram_mb), device_vram_mb: Vec::new() },
        harnesses: BTreeMap::from([("sim".to_owned(), sim)]),
    })
}

/// Bind and serve `spec.count` simulated neurons until `shutdown`; returns the members once every
/// one listens, and a task that ends after shutdown, once every member has stopped its engines.
pub async fn start(
    spec: &SwarmSpec,
    shutdown: CancellationToken,
) -> Result<(Vec<Member>, tokio::task::JoinHandle<()>), SwarmError> {
    if spec.count == 0 {
        return Err(SwarmError::Invalid("--count must be at least 1".to_owned()));
    }
    if spec.slots == 0 || !spec.prefill_ms_per_token.is_finite() || spec.prefill_ms_per_token < 0.0 {
        return Err(SwarmError::Invalid(
            "--slots must be at least 1 and --prefill-ms-per-token at least 0".to_owned(),
        ));
    }
    let (low, high) = spec.engine_ports;
    let per_neuron = (usize::from(high).saturating_sub(usize::from(low)) + 1) / spec.count;
    if high < low || per_neuron == 0 {
        return Err(SwarmError::Invalid(format!(
            "engine ports {low}-{high} cannot give each of {} neurons one port",
            spec.count
        )));
    }
    let mut members = Vec::with_capacity(spec.count);
    let mut servers = tokio::task::JoinSet::new();
    for index in 0..spec.count {
        let first = usize::from(low) + index * per_neuron;
        let ports = (
            u16::try_from(first).unwrap_or(u16::MAX),
            u16::try_from(first + per_neuron - 1).unwrap_or(u16::MAX),
        );
        let config = config_for(spec, index, ports)?;
        let port = match spec.base_port {
            Some(base) => u16::try_from(usize::from(base) + index)
                .map_err(|_| SwarmError::Invalid(format!("--base-port {base} + {index} is not a port")))?,
            None => 0,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SwarmError::Listen { addr, source })?;
        let addr = listener.local_addr().map_err(|source| SwarmError::Listen { addr, source })?;
        let name = config.name.clone();
        let neuron = Neuron::from_config(config, spec.token.clone())?;
        let shutdown = shutdown.clone();
        servers.spawn(async move {
            if let Err(err) = crate::api::serve(listener, neuron, shutdown).await {
                tracing::warn!("a swarm member stopped: {err}");
            }
        });
        members.push(Member { name, addr });
    }
    let task = tokio::spawn(async move { while servers.join_next().await.is_some() {} });
    Ok((members, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn members_serve_their_own_simulated_devices_and_stop_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = SwarmSpec {
            count: 12,
            prefix: "sim".to_owned(),
            devices_per_neuron: 8,
            device_vram_mb: 24_000,
            ram_mb: 64_000,
            base_port: None,
            engine_ports: (42_100, 42_219),
            load_ms: 10,
            ttft_ms: 1,
            tokens_per_second: 1000.0,
            slots: 4,
            prefill_ms_per_token: 0.0,
            dir: dir.path().to_owned(),
            token: "t".to_owned(),
        };
        let shutdown = CancellationToken::new();
        let (members, task) = start(&spec, shutdown.clone()).await.expect("swarm");
        assert_eq!(members.len(), 12);
        assert_eq!(members[0].name, "sim-00");
        assert_eq!(members[11].name, "sim-11");
        let tables = fleet_tables(&members);
        assert_eq!(tables.matches("[[neuron]]").count(), 12);
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        let discovery: plans::wire::Discovery = client
            .get(format!("http://{}/discovery", members[11].addr))
            .bearer_auth("t")
            .send()
            .await
            .expect("discovery")
            .json()
            .await
            .expect("json");
        assert_eq!(discovery.name, "sim-11");
        assert!(discovery.simulated);
        assert_eq!(discovery.devices.len(), 8);
        assert_eq!(discovery.ram_total_mb, 64_000);
        shutdown.cancel();
        task.await.expect("members stop");
        let too_few = SwarmSpec { engine_ports: (42_100, 42_105), ..spec };
        assert!(matches!(start(&too_few, CancellationToken::new()).await, Err(SwarmError::Invalid(_))));
    }
}
