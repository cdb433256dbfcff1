//! A fake neuron: the neuron API (discovery, health, models, load, unload, wait) over a
//! scripted in-memory state, and an OpenAI-compatible engine for every loaded model. It counts
//! load calls and can break a stream midway, for fault injection.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plans::topology::{DeviceStatus, LoadedModel, ModelState};
use plans::wire::{
    Discovery, ErrorBody, ErrorDetail, HarnessInfo, Health, LifecycleResponse, LoadRequest, Models,
    UnloadRequest,
};
use tokio::sync::watch;

/// The scripted state of one fake neuron.
pub struct FakeNeuron {
    pub name: String,
    pub device_vram_mb: u64,
    pub load_delay: Duration,
    pub models: Mutex<Vec<LoadedModel>>,
    pub generation: watch::Sender<u64>,
    pub load_calls: AtomicUsize,
    pub unload_calls: Mutex<Vec<String>>,
    /// When set, streams stop after two chunks with a broken connection.
    pub break_streams: AtomicBool,
    /// Chat requests seen, as JSON.
    pub requests: Mutex<Vec<serde_json::Value>>,
    /// Whether its engine speaks the Anthropic Messages API natively (discovery says so).
    pub anthropic_native: AtomicBool,
    /// Whether its engine serves `/v1/responses` natively (discovery says so).
    pub responses_native: AtomicBool,
    /// Headers and path (with query) of every inference request, in order.
    pub seen: Mutex<Vec<(String, axum::http::HeaderMap)>>,
    /// When set, chat streams go on for a long time, one chunk every 20 ms.
    pub endless_streams: AtomicBool,
    /// Streams the engine is writing now (its "slots" in use); drops when a client goes away.
    pub active_streams: Arc<AtomicUsize>,
    /// When set, answers stop at their length limit (`length`, `max_tokens`).
    pub length_finish: AtomicBool,
    /// When set, chat streams end with `data: [DONE]` and no blank line after it.
    pub unterminated_done: AtomicBool,
    /// When set, every inference request is refused with this status and JSON body.
    pub refuse_with: Mutex<Option<(u16, serde_json::Value)>>,
}

impl FakeNeuron {
    pub fn new(name: &str, device_vram_mb: u64, load_delay: Duration) -> Arc<Self> {
        Arc::new(FakeNeuron {
            name: name.to_owned(),
            device_vram_mb,
            load_delay,
            models: Mutex::new(Vec::new()),
            generation: watch::channel(1).0,
            load_calls: AtomicUsize::new(0),
            unload_calls: Mutex::new(Vec::new()),
            break_streams: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            anthropic_native: AtomicBool::new(false),
            responses_native: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
            endless_streams: AtomicBool::new(false),
            active_streams: Arc::new(AtomicUsize::new(0)),
            refuse_with: Mutex::new(None),
            unterminated_done: AtomicBool::new(false),
            length_finish: AtomicBool::new(false),
        })
    }

    /// Pretend `id` is already loaded through cortex with `source` on device 0.
    pub fn preload(&self, id: &str, source: &str, vram_mb: u64, last_used_unix_ms: u64) {
        self.models.lock().expect("lock").push(LoadedModel {
            id: id.to_owned(),
            harness: "llamacpp".to_owned(),
            status: ModelState::Loaded,
            devices: vec![0],
            vram_mb,
            ram_mb: 0,
            last_used_unix_ms,
            in_flight: 0,
            profile: Some(plans::fleet::Profile {
                harness: "llamacpp".to_owned(),
                source: source.to_owned(),
                quant: None,
                ctx_size: None,
                args: Vec::new(),
            }),
            load_duration_ms: Some(100),
            error: None,
        });
    }

    fn bump(&self) -> u64 {
        self.generation.send_modify(|g| *g += 1);
        *self.generation.borrow()
    }

    fn devices(&self) -> Vec<DeviceStatus> {
        let used: u64 = self.models.lock().expect("lock").iter().map(|m| m.vram_mb).sum();
        vec![DeviceStatus {
            index: 0,
            name: "FakeGPU".to_owned(),
            vram_total_mb: self.device_vram_mb,
            vram_free_mb: self.device_vram_mb.saturating_sub(used),
            ..DeviceStatus::default()
        }]
    }

    /// Start serving on a free loopback port; returns the endpoint URL.
    pub async fn start(self: &Arc<Self>) -> String {
        let app = axum::Router::new()
            .route("/discovery", get(discovery))
            .route("/health", get(health))
            .route("/models", get(models))
            .route("/models/load", post(load))
            .route("/models/unload", post(unload))
            .route("/models/wait", get(wait))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/messages", post(messages))
            .route("/v1/responses", post(responses))
            .route("/v1/responses/{id}", get(stored_response))
            .route("/v1/responses/{id}/cancel", post(stored_response))
            .layer(axum::middleware::from_fn_with_state(self.clone(), record_and_refuse))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }
}

type Fake = State<Arc<FakeNeuron>>;

async fn discovery(State(fake): Fake) -> Json<Discovery> {
    Json(Discovery {
        name: fake.name.clone(),
        boot_id: "boot-1".to_owned(),
        version: "fake".to_owned(),
        simulated: true,
        driver_version: None,
        cuda_version: None,
        devices: fake.devices(),
        ram_total_mb: 64_000,
        harnesses: vec![HarnessInfo {
            name: "llamacpp".to_owned(),
            kind: "llamacpp".to_owned(),
            anthropic_messages: fake.anthropic_native.load(Ordering::SeqCst),
            count_tokens: true,
            embeddings: true,
            responses: fake.responses_native.load(Ordering::SeqCst),
        }],
        fencing: true,
    })
}

async fn health(State(fake): Fake) -> Json<Health> {
    Json(Health {
        boot_id: "boot-1".to_owned(),
        generation: *fake.generation.borrow(),
        devices: fake.devices(),
        ram_total_mb: 64_000,
        ram_free_mb: 60_000,
    })
}

async fn models(State(fake): Fake) -> Json<Models> {
    Json(Models {
        boot_id: "boot-1".to_owned(),
        generation: *fake.generation.borrow(),
        models: fake.models.lock().expect("lock").clone(),
    })
}

fn conflict(current: u64) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "generation_mismatch".into(),
            message: "stale".into(),
            generation: Some(current),
            term: None,
        },
    };
    (StatusCode::CONFLICT, Json(body)).into_response()
}

async fn load(State(fake): Fake, Json(request): Json<LoadRequest>) -> Response {
    fake.load_calls.fetch_add(1, Ordering::SeqCst);
    let current = *fake.generation.borrow();
    if request.if_generation.is_some_and(|g| g != current) {
        return conflict(current);
    }
    fake.models.lock().expect("lock").push(LoadedModel {
        id: request.model.clone(),
        harness: request.profile.harness.clone(),
        status: ModelState::Loading,
        devices: request.devices.clone(),
        vram_mb: request.vram_mb,
        ram_mb: request.ram_mb,
        last_used_unix_ms: 0,
        in_flight: 0,
        profile: Some(request.profile.clone()),
        load_duration_ms: None,
        error: None,
    });
    let generation = fake.bump();
    let delay = fake.load_delay;
    let background = fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Some(model) =
            background.models.lock().expect("lock").iter_mut().find(|m| m.id == request.model)
        {
            model.status = ModelState::Loaded;
            model.load_duration_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(0));
        }
        background.bump();
    });
    (StatusCode::ACCEPTED, Json(LifecycleResponse { generation, model: None })).into_response()
}

async fn unload(State(fake): Fake, Json(request): Json<UnloadRequest>) -> Response {
    let current = *fake.generation.borrow();
    if request.if_generation.is_some_and(|g| g != current) {
        return conflict(current);
    }
    fake.unload_calls.lock().expect("lock").push(request.model.clone());
    fake.models.lock().expect("lock").retain(|m| m.id != request.model);
    let generation = fake.bump();
    Json(LifecycleResponse { generation, model: None }).into_response()
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    model: String,
    timeout_ms: u64,
}

async fn wait(State(fake): Fake, Query(query): Query<WaitQuery>) -> Response {
    let mut generation = fake.generation.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.timeout_ms);
    loop {
        let model = fake.models.lock().expect("lock").iter().find(|m| m.id == query.model).cloned();
        match model {
            None => return StatusCode::NOT_FOUND.into_response(),
            Some(model) if model.status != ModelState::Loading => return Json(model).into_response(),
            Some(model) => {
                if tokio::time::timeout_at(deadline, generation.changed()).await.is_err() {
                    return Json(model).into_response();
                }
            }
        }
    }
}

async fn chat(State(fake): Fake, body: Bytes) -> Response {
    let request: serde_json::Value = serde_json::from_slice(&body).expect("json body");
    fake.requests.lock().expect("lock").push(request.clone());
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let loaded =
        fake.models.lock().expect("lock").iter().any(|m| m.id == model && m.status == ModelState::Loaded);
    if !loaded {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": {"message": "no such model", "code": 404}})),
        )
            .into_response();
    }
    let words = ["Hello", " from", " the", " fake", " engine", "."];
    let stop = if fake.length_finish.load(Ordering::SeqCst) { "length" } else { "stop" };
    if request["stream"].as_bool() != Some(true) {
        return Json(serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": stop}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
        }))
        .into_response();
    }
    if fake.endless_streams.load(Ordering::SeqCst) {
        return endless_stream(&fake, &model);
    }
    let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
    let broken = fake.break_streams.load(Ordering::SeqCst);
    let mut events: Vec<Result<Bytes, std::io::Error>> = words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let delta = if i == 0 {
                serde_json::json!({"role": "assistant", "content": word})
            } else {
                serde_json::json!({"content": word})
            };
            let finish = if i + 1 == words.len() { serde_json::json!(stop) } else { serde_json::Value::Null };
            let chunk = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            Ok(Bytes::from(format!("data: {chunk}\n\n")))
        })
        .collect();
    if include_usage {
        let chunk = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}});
        events.push(Ok(Bytes::from(format!("data: {chunk}\n\n"))));
    }
    let done: &'static [u8] =
        if fake.unterminated_done.load(Ordering::SeqCst) { b"data: [DONE]" } else { b"data: [DONE]\n\n" };
    events.push(Ok(Bytes::from_static(done)));
    let stream: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = if broken {
        events.truncate(2);
        // The crash comes after the first chunks went out, as a real one would.
        let crash = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(std::io::Error::other("engine crashed"))
        });
        Box::pin(futures_util::StreamExt::chain(futures_util::stream::iter(events), crash))
    } else {
        Box::pin(futures_util::stream::iter(events))
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("response")
}

/// A native Anthropic stream as llama.cpp sends it: its `tool_use` block start has no `input`.
async fn messages(State(fake): Fake, body: Bytes) -> Response {
    let request: serde_json::Value = serde_json::from_slice(&body).expect("json body");
    fake.requests.lock().expect("lock").push(request.clone());
    let model = request["model"].as_str().unwrap_or_default();
    let stop = if fake.length_finish.load(Ordering::SeqCst) { "max_tokens" } else { "tool_use" };
    let events = [
        (
            "message_start",
            serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": model, "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 7, "output_tokens": 0}}}),
        ),
        (
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather"}}),
        ),
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Paris\"}"}}),
        ),
        ("content_block_stop", serde_json::json!({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            serde_json::json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        ),
        ("message_stop", serde_json::json!({"type": "message_stop"})),
    ];
    let text: String =
        events.iter().map(|(event, data)| format!("event: {event}\ndata: {data}\n\n")).collect();
    Response::builder().header("content-type", "text/event-stream").body(Body::from(text)).expect("response")
}

/// Records each inference request's path and headers; refuses it when told to.
async fn record_and_refuse(
    State(fake): Fake,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path_and_query().map_or(String::new(), |p| p.as_str().to_owned());
    if path.starts_with("/v1/") {
        fake.seen.lock().expect("lock").push((path, request.headers().clone()));
        if let Some((status, body)) = fake.refuse_with.lock().expect("lock").clone() {
            let status = StatusCode::from_u16(status).expect("status");
            return (status, Json(body)).into_response();
        }
    }
    next.run(request).await
}

/// Counts a stream as active until the response body is dropped (the client or cortex left).
struct ActiveStream(Arc<AtomicUsize>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn endless_stream(fake: &Arc<FakeNeuron>, model: &str) -> Response {
    fake.active_streams.fetch_add(1, Ordering::SeqCst);
    let active = ActiveStream(fake.active_streams.clone());
    let model = model.to_owned();
    let stream = futures_util::stream::unfold((0u64, active), move |(n, active)| {
        let model = model.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let chunk = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {"content": format!(" w{n}")}, "finish_reason": null}]});
            Some((Ok::<_, std::io::Error>(Bytes::from(format!("data: {chunk}\n\n"))), (n + 1, active)))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("response")
}

/// A native Responses engine: a short text answer, streamed or not.
async fn responses(State(fake): Fake, body: Bytes) -> Response {
    let request: serde_json::Value = serde_json::from_slice(&body).expect("json body");
    fake.requests.lock().expect("lock").push(request.clone());
    let model = request["model"].as_str().unwrap_or_default();
    let item = serde_json::json!({"id": "msg_n1", "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": "native", "annotations": []}]});
    let usage = serde_json::json!({"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 1,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5});
    let response = serde_json::json!({"id": "resp_native1", "object": "response", "created_at": 1, "status": "completed",
        "model": model, "output": [item], "usage": usage});
    if request["stream"].as_bool() != Some(true) {
        return Json(response).into_response();
    }
    let created = serde_json::json!({"type": "response.created", "sequence_number": 0,
        "response": {"id": "resp_native1", "object": "response", "created_at": 1, "status": "in_progress", "model": model, "output": []}});
    let completed =
        serde_json::json!({"type": "response.completed", "sequence_number": 1, "response": response});
    // The last event without its blank line: the gateway must still deliver it.
    let text =
        format!("event: response.created\ndata: {created}\n\nevent: response.completed\ndata: {completed}");
    Response::builder().header("content-type", "text/event-stream").body(Body::from(text)).expect("response")
}

/// `GET /v1/responses/{id}` of a native engine that stores responses.
async fn stored_response(axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    Json(serde_json::json!({"id": id, "object": "response", "status": "completed", "output": []}))
        .into_response()
}
