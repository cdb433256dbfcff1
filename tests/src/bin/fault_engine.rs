//! `fault-engine`: an OpenAI-compatible test engine for the command harness that can be told to
//! fail. It reads its model file (`--source`) once at start; the first word says what to do:
//! `serve` (or an empty file) answers `/health` and chat completions at once; `fail` prints why
//! and exits 3 while loading; `hang` listens but never becomes ready; `slow MS` becomes ready
//! after MS milliseconds. A crash is a `kill -9` from the test. Usage:
//! `fault-engine --port PORT --model ID --source FILE`.

#![allow(clippy::unwrap_used, reason = "a test engine: a bad start should stop it loudly")]

use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};

fn flag(args: &[String], name: &str) -> String {
    let at = args.iter().position(|a| a == name).unwrap_or_else(|| panic!("missing {name}"));
    args[at + 1].clone()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (port, model, source) = (flag(&args, "--port"), flag(&args, "--model"), flag(&args, "--source"));
    let text = std::fs::read_to_string(&source).unwrap_or_default();
    let mut words = text.split_whitespace();
    let ready_after = match words.next().unwrap_or("serve") {
        "fail" => {
            eprintln!("fault-engine: cannot load {source}: the file says fail");
            std::process::exit(3);
        }
        "hang" => None,
        "slow" => Some(Duration::from_millis(words.next().and_then(|w| w.parse().ok()).unwrap_or(1000))),
        _ => Some(Duration::ZERO),
    };
    let started = Instant::now();
    let health = move || async move {
        match ready_after {
            Some(after) if started.elapsed() >= after => (axum::http::StatusCode::OK, "ok"),
            _ => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "loading"),
        }
    };
    let served = model.clone();
    let chat = move |Json(request): Json<Value>| async move {
        Json(json!({
            "id": "chatcmpl-fault", "object": "chat.completion", "created": 0, "model": served,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": format!("{} says hi", request["model"])}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
        }))
    };
    let app = axum::Router::new().route("/health", get(health)).route("/v1/chat/completions", post(chat));
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await.unwrap();
    eprintln!("fault-engine: {model} from {source} on port {port}");
    axum::serve(listener, app).await.unwrap();
}
