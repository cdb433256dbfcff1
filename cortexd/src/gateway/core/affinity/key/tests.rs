//! Session keys of every dialect's requests, shaped as the real agents send them
//! (docs of their observed requests: Claude Code's Messages, Codex's Responses, qwen-code's and
//! opencode's Chat Completions), and of hostile bodies.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::*;

/// The envelope's affinity fields, parsed as the pipeline parses them.
#[derive(serde::Deserialize)]
struct Body {
    metadata: Option<Metadata>,
    prompt_cache_key: Option<SessionId>,
    system: Option<Digest>,
    instructions: Option<Digest>,
    tools: Option<Digest>,
    messages: Option<FirstTurn>,
    input: Option<FirstTurn>,
}

fn key_of(headers: &[(&str, &str)], body: &str) -> Option<Key> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("name");
        map.insert(name, HeaderValue::from_str(value).expect("value"));
    }
    let body: Body = serde_json::from_str(body).expect("parses");
    let prefix = [
        body.system.map(|d| d.0),
        body.instructions.map(|d| d.0),
        body.tools.map(|d| d.0),
        body.messages.map(|t| t.0),
        body.input.map(|t| t.0),
    ];
    key(&map, body.metadata.as_ref(), body.prompt_cache_key.as_ref(), &prefix)
}

fn user_id(session: &str) -> String {
    json!({"device_id": "d3v1ce", "account_uuid": "", "session_id": session}).to_string()
}

/// A Claude Code turn: three system blocks, tools, a user turn then a system-role message,
/// `metadata.user_id` naming the session; `history` more turns after them.
fn claude_code(session: &str, first: &str, history: usize) -> String {
    let mut messages = vec![
        json!({"role": "user", "content": [{"type": "text", "text": "<system-reminder>env</system-reminder>"}, {"type": "text", "text": first}]}),
        json!({"role": "system", "content": [{"type": "text", "text": "cwd: /tmp"}]}),
    ];
    for turn in 0..history {
        messages.push(
            json!({"role": "assistant", "content": [{"type": "text", "text": format!("answer {turn}")}]}),
        );
        messages.push(json!({"role": "user", "content": format!("more {turn}")}));
    }
    json!({
        "model": "claude-sonnet", "stream": true, "max_tokens": 32000,
        "system": [{"type": "text", "text": "You are Claude Code."}, {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "Bash", "description": "run", "input_schema": {"$schema": "x", "type": "object"}}],
        "metadata": {"user_id": user_id(session)},
        "thinking": {"type": "adaptive"},
        "messages": messages,
    })
    .to_string()
}

/// A Codex turn: Responses with two developer messages, the user's, tools, and
/// `prompt_cache_key` (its session id, also sent as the `session-id` header).
fn codex(session: &str, first: &str, history: usize) -> String {
    let mut input = vec![
        json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox"}]}),
        json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "agents.md"}]}),
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": first}]}),
    ];
    for turn in 0..history {
        input.push(json!({"type": "function_call", "name": "shell", "arguments": "{}", "call_id": format!("c{turn}")}));
        input.push(json!({"type": "function_call_output", "call_id": format!("c{turn}"), "output": "ok"}));
    }
    json!({
        "model": "gpt-codex", "stream": true, "store": false, "input": input,
        "tools": [{"type": "function", "name": "shell", "strict": false, "parameters": {}}, {"type": "web_search"}],
        "prompt_cache_key": session, "client_metadata": {"x": "y"},
    })
    .to_string()
}

/// A qwen-code or opencode turn: Chat Completions with a system message, tools, the user's
/// first message and `history` more turns. No session id.
fn chat(system: &str, first: &str, history: usize) -> String {
    let mut messages =
        vec![json!({"role": "system", "content": system}), json!({"role": "user", "content": first})];
    for turn in 0..history {
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("t{turn}"), "type": "function", "function": {"name": "read", "arguments": "{}"}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": format!("t{turn}"), "content": "file"}));
    }
    json!({
        "model": "qwen", "stream": true, "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}],
        "messages": messages,
    })
    .to_string()
}

/// Request headers as name and value.
type Headers = Vec<(&'static str, &'static str)>;

/// One request: its headers and body.
type Turn = (Headers, String);

#[test]
fn every_turn_of_a_session_has_its_key_and_sessions_differ() {
    // (case, turn 1, turn 4 of the same session, turn 1 of another session)
    let cases: [(&str, Turn, Turn, Turn); 6] = [
        (
            "Claude Code: metadata.user_id's session_id",
            (vec![], claude_code("s-1", "fix it", 0)),
            (vec![], claude_code("s-1", "fix it", 3)),
            (vec![], claude_code("s-2", "fix it", 0)),
        ),
        (
            "Codex: session-id and prompt_cache_key",
            (vec![("session-id", "c-1")], codex("c-1", "fix it", 0)),
            (vec![("session-id", "c-1")], codex("c-1", "fix it", 3)),
            (vec![("session-id", "c-2")], codex("c-2", "fix it", 0)),
        ),
        (
            "Responses: prompt_cache_key alone",
            (vec![], codex("c-1", "fix it", 0)),
            (vec![], codex("c-1", "other words", 3)),
            (vec![], codex("c-2", "fix it", 0)),
        ),
        (
            "Chat: x-session-id",
            (vec![("x-session-id", "x-1")], chat("sys", "hi", 0)),
            (vec![("x-session-id", "x-1")], chat("other", "bye", 3)),
            (vec![("x-session-id", "x-2")], chat("sys", "hi", 0)),
        ),
        (
            "qwen-code/opencode Chat: the prefix digest",
            (vec![], chat("You are Qwen Code.", "fix the tests", 0)),
            (vec![], chat("You are Qwen Code.", "fix the tests", 3)),
            (vec![], chat("You are Qwen Code.", "write docs", 0)),
        ),
        (
            "Codex without ids: the prefix digest",
            (vec![], codex("", "fix it", 0)),
            (vec![], codex("", "fix it", 3)),
            (vec![], codex("", "other task", 0)),
        ),
    ];
    for (case, first, later, other) in cases {
        let first = key_of(&first.0, &first.1).expect(case);
        assert_eq!(Some(first), key_of(&later.0, &later.1), "{case}: a later turn");
        assert_ne!(Some(first), key_of(&other.0, &other.1), "{case}: another session");
    }
}

#[test]
fn explicit_ids_come_in_order_and_agree_across_sources() {
    let body = |extra: Value| {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body.to_string()
    };
    let id = |id: &str| key_of(&[("x-session-id", id)], &body(json!({})));
    // (case, headers, extra body fields, the id the key must be)
    let cases: [(&str, Headers, Value, &str); 8] = [
        (
            "metadata before the headers",
            vec![("session-id", "h")],
            json!({"metadata": {"user_id": user_id("m")}}),
            "m",
        ),
        (
            "session-id before prompt_cache_key",
            vec![("session-id", "h")],
            json!({"prompt_cache_key": "p"}),
            "h",
        ),
        ("session_id as Codex once sent it", vec![("session_id", "u")], json!({}), "u"),
        (
            "prompt_cache_key before x-session-id",
            vec![("x-session-id", "x")],
            json!({"prompt_cache_key": "p"}),
            "p",
        ),
        (
            "the legacy user_id",
            vec![],
            json!({"metadata": {"user_id": "user_ab12_account__session_old-7"}}),
            "old-7",
        ),
        (
            "a user_id naming no session",
            vec![("x-session-id", "x")],
            json!({"metadata": {"user_id": "alice"}}),
            "x",
        ),
        ("an empty header", vec![("session-id", ""), ("x-session-id", "x")], json!({}), "x"),
        (
            "a prompt_cache_key that is no string",
            vec![("x-session-id", "x")],
            json!({"prompt_cache_key": 7}),
            "x",
        ),
    ];
    for (case, headers, extra, expected) in cases {
        assert_eq!(key_of(&headers, &body(extra)), id(expected), "{case}");
    }
}

#[test]
fn the_prefix_is_the_system_tools_and_first_user_turn() {
    let messages = |system: &str, user: &str, rest: usize| {
        let mut body = json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"content": user, "role": "user"},
        ]});
        for turn in 0..rest {
            if let Some(messages) = body["messages"].as_array_mut() {
                messages.push(json!({"role": "user", "content": format!("{turn}")}));
            }
        }
        body.to_string()
    };
    let base = key_of(&[], &messages("s", "u", 0));
    assert!(base.is_some());
    assert_eq!(base, key_of(&[], &messages("s", "u", 5)), "later turns do not count");
    assert_ne!(base, key_of(&[], &messages("s2", "u", 0)), "the system prompt counts");
    assert_ne!(base, key_of(&[], &messages("s", "u2", 0)), "the first user turn counts");
    let tools =
        json!({"model": "m", "tools": [{"name": "t"}], "messages": [{"role": "user", "content": "u"}]});
    let no_tools = json!({"model": "m", "messages": [{"role": "user", "content": "u"}]});
    assert_ne!(key_of(&[], &tools.to_string()), key_of(&[], &no_tools.to_string()), "tools count");
    // Responses: input as a string is the first user turn; instructions are the system prompt.
    let responses = |instructions: &str, input: &str| {
        json!({"model": "m", "instructions": instructions, "input": input}).to_string()
    };
    assert_eq!(key_of(&[], &responses("i", "x")), key_of(&[], &responses("i", "x")));
    assert_ne!(key_of(&[], &responses("i", "x")), key_of(&[], &responses("j", "x")));
    // The same text in another field is another prefix.
    let as_system = json!({"model": "m", "system": "a"}).to_string();
    let as_instructions = json!({"model": "m", "instructions": "a"}).to_string();
    assert_ne!(key_of(&[], &as_system), key_of(&[], &as_instructions));
}

#[test]
fn bodies_without_a_prefix_or_of_odd_shapes_are_accepted() {
    // (case, body, whether it has a key)
    let cases: [(&str, &str, bool); 8] = [
        ("nothing but the model", r#"{"model":"m"}"#, false),
        ("null fields", r#"{"model":"m","system":null,"messages":null,"metadata":null}"#, false),
        ("messages as a string", r#"{"model":"m","messages":"hi"}"#, true),
        ("messages as an object", r#"{"model":"m","messages":{"role":"user"}}"#, true),
        ("metadata as an array", r#"{"model":"m","metadata":[1,{"user_id":"x"}],"input":1.5}"#, true),
        ("metadata as a string", r#"{"model":"m","metadata":"s","prompt_cache_key":{"a":[1]}}"#, false),
        (
            "user_id as JSON without a session",
            r#"{"model":"m","metadata":{"user_id":"{\"device_id\":\"d\"}"}}"#,
            false,
        ),
        (
            "escaped strings and numbers",
            r#"{"model":"m","messages":[{"role":"us\u0065r","content":[-1,2e3,true]}]}"#,
            true,
        ),
    ];
    for (case, body, has_key) in cases {
        assert_eq!(key_of(&[], body).is_some(), has_key, "{case}");
    }
}

#[test]
fn the_digest_reads_a_bounded_prefix_of_huge_parts() {
    let huge = |tail: &str| {
        let system = format!("{}{tail}", "x".repeat(DIGEST_BYTES));
        json!({"model": "m", "system": system, "messages": [{"role": "user", "content": "u"}]}).to_string()
    };
    assert_eq!(key_of(&[], &huge("a")), key_of(&[], &huge("b")), "past the bound is not hashed");
    let short = |tail: &str| json!({"model": "m", "system": format!("x{tail}")}).to_string();
    assert_ne!(key_of(&[], &short("a")), key_of(&[], &short("b")));
}

#[test]
fn nesting_past_the_parsers_depth_limit_is_refused_by_the_parser() {
    let deep = format!(r#"{{"model":"m","system":{}{}}}"#, "[".repeat(200), "]".repeat(200));
    let error = serde_json::from_str::<Body>(&deep).err().expect("too deep");
    assert!(error.to_string().contains("recursion limit"), "{error}");
    let fine = format!(r#"{{"model":"m","system":{}{}}}"#, "[".repeat(100), "]".repeat(100));
    assert!(serde_json::from_str::<Body>(&fine).is_ok());
}

#[test]
fn keys_are_stable_across_processes() {
    // The same input gives the same key in every process (no random seed): pinned values.
    let key = key_of(&[("x-session-id", "session-1")], r#"{"model":"m"}"#).expect("a key");
    assert_eq!(key, key_of(&[("x-session-id", "session-1")], r#"{"model":"m"}"#).expect("a key"));
    expect_test::expect!["Key(1484339382604766751)"].assert_eq(&format!("{key:?}"));
}
