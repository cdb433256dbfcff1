//! A fake mistral.rs server (in-process axum on a free loopback port) that follows the
//! lifecycle protocol of mistral.rs 0.8.1 as its source defines it (mistralrs-server-core
//! `handlers.rs`): `POST /v1/models/{reload,unload,status}` with `{"model_id"}` answer HTTP 200
//! with `{"model_id","status","error"?}`; reload blocks until the model is loaded; `GET /v1/models`
//! lists a synthetic `default` first, then each model with its `status`; `/health` is 200 as soon
//! as it listens. Chat completions need the `model_id` of a loaded model. It also has 0.8.1's
//! bug: a reload of a loaded model answers `not_found` and leaves it `reloading` for good.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
struct Models {
    /// model_id → `loaded` | `unloaded` | `reloading`.
    status: BTreeMap<String, String>,
    /// model_id → the error its reload fails with.
    broken: BTreeMap<String, String>,
    /// The `model` of every chat request, in order.
    chats: Vec<String>,
}

/// A running fake; stops when dropped.
pub struct FakeMistralrs {
    pub url: String,
    models: Arc<Mutex<Models>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeMistralrs {
    /// Serve `models` (`loaded` when listed in `loaded`, else `unloaded`) and `broken` models
    /// whose reload fails with the given error.
    pub async fn start(models: &[&str], loaded: &[&str], broken: &[(&str, &str)]) -> FakeMistralrs {
        let mut state = Models::default();
        for id in models {
            let status = if loaded.contains(id) { "loaded" } else { "unloaded" };
            state.status.insert((*id).to_owned(), status.to_owned());
        }
        for (id, error) in broken {
            state.status.insert((*id).to_owned(), "unloaded".to_owned());
            state.broken.insert((*id).to_owned(), (*error).to_owned());
        }
        let models = Arc::new(Mutex::new(state));
        let app = axum::Router::new()
            .route("/health", get(|| async { "OK" }))
            .route("/v1/models", get(list))
            .route("/v1/models/reload", post(reload))
            .route("/v1/models/unload", post(unload))
            .route("/v1/models/status", post(status))
            .route("/v1/chat/completions", post(chat))
            .with_state(Arc::clone(&models));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeMistralrs { url, models, task }
    }

    /// The status mistral.rs would report for `model_id`.
    pub fn status(&self, model_id: &str) -> Option<String> {
        self.models.lock().unwrap().status.get(model_id).cloned()
    }

    /// Change a model's status behind the neuron's back.
    pub fn set_status(&self, model_id: &str, status: &str) {
        self.models.lock().unwrap().status.insert(model_id.to_owned(), status.to_owned());
    }

    /// The `model` of every chat request so far.
    pub fn chats(&self) -> Vec<String> {
        self.models.lock().unwrap().chats.clone()
    }
}

impl Drop for FakeMistralrs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = State<Arc<Mutex<Models>>>;

fn answer(model_id: &str, status: &str, error: Option<&str>) -> Json<Value> {
    let mut body = json!({"model_id": model_id, "status": status});
    if let Some(error) = error {
        body["error"] = error.into();
    }
    Json(body)
}

fn model_id(body: &Value) -> String {
    body["model_id"].as_str().unwrap_or_default().to_owned()
}

async fn list(State(models): Shared) -> Json<Value> {
    let models = models.lock().unwrap();
    let mut data = vec![json!({"id": "default", "object": "model", "created": 0, "owned_by": "local"})];
    data.extend(models.status.iter().map(|(id, status)| {
        json!({"id": id, "object": "model", "created": 0, "owned_by": "local", "status": status})
    }));
    Json(json!({"object": "list", "data": data}))
}

async fn reload(State(models): Shared, Json(body): Json<Value>) -> Json<Value> {
    let id = model_id(&body);
    {
        let mut state = models.lock().unwrap();
        match state.status.get(&id).map(String::as_str) {
            None => return answer(&id, "not_found", None),
            // As 0.8.1 does (mistralrs-core `reload_model`): it marks the model reloading, finds
            // no unloaded state, answers not_found and never clears the mark.
            Some("loaded") => {
                state.status.insert(id.clone(), "reloading".to_owned());
                return answer(&id, "not_found", None);
            }
            Some("reloading") => return answer(&id, "reloading", None),
            Some(_) => {}
        }
        if let Some(error) = state.broken.get(&id).cloned() {
            return answer(&id, "internal_error", Some(&error));
        }
        state.status.insert(id.clone(), "reloading".to_owned());
    }
    // Loading takes a moment; the real server blocks the call the same way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    models.lock().unwrap().status.insert(id.clone(), "loaded".to_owned());
    answer(&id, "loaded", None)
}

async fn unload(State(models): Shared, Json(body): Json<Value>) -> Json<Value> {
    let id = model_id(&body);
    let mut state = models.lock().unwrap();
    match state.status.get_mut(&id) {
        None => answer(&id, "not_found", None),
        Some(status) => {
            *status = "unloaded".to_owned();
            answer(&id, "unloaded", None)
        }
    }
}

async fn status(State(models): Shared, Json(body): Json<Value>) -> Json<Value> {
    let id = model_id(&body);
    let state = models.lock().unwrap();
    match state.status.get(&id) {
        Some(status) => answer(&id, status, None),
        None => answer(&id, "not_found", None),
    }
}

async fn chat(State(models): Shared, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let loaded = {
        let mut state = models.lock().unwrap();
        state.chats.push(model.clone());
        state.status.get(&model).is_some_and(|s| s == "loaded")
    };
    if !loaded {
        let error = json!({"message": format!("Model {model} not found"), "type": "invalid_request_error"});
        return (axum::http::StatusCode::NOT_FOUND, Json(json!({ "error": error }))).into_response();
    }
    let text = "Hello from the fake mistral.rs.";
    if body["stream"] == true {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let events = format!(
            "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
            chunk(json!({"role": "assistant", "content": text}), Value::Null),
            chunk(json!({}), json!("stop"))
        );
        return ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], events).into_response();
    }
    Json(json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    }))
    .into_response()
}
