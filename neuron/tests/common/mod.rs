//! Test harness shared by the integration tests: a neuron served in-process on port 0 with a
//! temporary models_dir and log_dir, and an authenticated client for it.

#![allow(dead_code, reason = "each test binary uses a different part of this module")]

use std::sync::Arc;
use std::time::Duration;

use neuron::GpuProbe;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token";

pub struct TestNeuron {
    pub url: String,
    pub neuron: neuron::Neuron,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// `[harness...]` tables and other keys are appended to a header naming the temp dirs. The drain
/// timeout is generous: a drain ends when the last request does, and on a loaded 2-core machine
/// a long stream may take far longer than in production.
pub fn config_text(
    dir: &std::path::Path,
    models_dir: &std::path::Path,
    ports: (u16, u16),
    rest: &str,
) -> String {
    format!(
        "name = \"test\"\nmodels_dir = {:?}\nlog_dir = {:?}\nport_range = \"{}-{}\"\nstop_grace = \"5s\"\ndrain_timeout = \"120s\"\nload_timeout = \"2m\"\n{rest}",
        models_dir.display().to_string(),
        dir.join("logs").display().to_string(),
        ports.0,
        ports.1
    )
}

impl TestNeuron {
    /// A neuron with `models_dir` = `<tmp>/models` (or `models_dir` when given).
    pub async fn start(
        ports: (u16, u16),
        rest: &str,
        models_dir: Option<&std::path::Path>,
        probe: Option<Arc<dyn GpuProbe>>,
    ) -> TestNeuron {
        let dir = tempfile::tempdir().expect("tempdir");
        let own_models = dir.path().join("models");
        std::fs::create_dir_all(&own_models).expect("models dir");
        let models_dir = models_dir.unwrap_or(&own_models);
        let text = config_text(dir.path(), models_dir, ports, rest);
        let path = dir.path().join("neuron.toml");
        let config = neuron::Config::from_toml(&path, &text).expect("valid test config");
        let neuron = match probe {
            Some(probe) => neuron::Neuron::new(config, TOKEN.to_owned(), probe),
            None => neuron::Neuron::from_config(config, TOKEN.to_owned()),
        }
        .expect("neuron");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(neuron::serve(listener, neuron.clone(), shutdown.clone()));
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        TestNeuron { url, neuron, client, dir, shutdown, task }
    }

    pub fn models_dir(&self) -> std::path::PathBuf {
        self.neuron.config().models_dir.clone()
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.url)).bearer_auth(TOKEN)
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.url)).bearer_auth(TOKEN).json(body)
    }

    /// POST and decode: (status, JSON body).
    pub async fn call(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.post(path, body).send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).send().await.expect("request");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.expect("json")
    }

    pub async fn generation(&self) -> u64 {
        self.get_json("/models").await["generation"].as_u64().expect("generation")
    }

    /// Long-poll until the model is no longer loading (the API's own wait, no polling here).
    pub async fn wait_ready(&self, model: &str, timeout: Duration) -> Value {
        let response = self
            .get("/models/wait")
            .query(&[("model", model), ("timeout_ms", &timeout.as_millis().to_string())])
            .send()
            .await
            .expect("wait");
        assert_eq!(response.status(), 200, "wait for {model}");
        response.json().await.expect("json")
    }

    /// Poll GET /models (with backoff) until `check` holds for the model's entry, or fail at the deadline.
    pub async fn poll_model(&self, model: &str, deadline: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + deadline;
        let mut delay = Duration::from_millis(10);
        loop {
            let models = self.get_json("/models").await;
            let entry =
                models["models"].as_array().and_then(|m| m.iter().find(|m| m["id"] == model)).cloned();
            let entry = entry.unwrap_or(Value::Null);
            if check(&entry) {
                return entry;
            }
            assert!(Instant::now() < end, "model {model} never reached the expected state; last: {entry}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("serve task").expect("serve");
    }
}

/// A load request body.
pub fn load_body(model: &str, harness: &str, source: &str) -> Value {
    serde_json::json!({"model": model, "profile": {"harness": harness, "source": source}})
}
