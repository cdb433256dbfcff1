//! `cortex requests`: asks a running daemon for its recent requests' timelines
//! (`GET /admin/requests`, or one by id) and prints them as a table, one timeline, or JSON.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use crate::cli::status::{AdminArgs, admin_get};
use crate::cli::{ConfigArgs, load_config};

#[derive(Debug, Args)]
pub struct RequestsArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// One request's timeline, by the x-request-id its answer carried
    pub id: Option<String>,
    /// Only requests for this model (as asked, or the fleet id that served it)
    #[arg(long)]
    pub model: Option<String>,
    /// Only this declared key's requests ("-": those without a declared key)
    #[arg(long)]
    pub key: Option<String>,
    /// Only requests that ended so: a status (503), a class (5xx) or an outcome (ok, error,
    /// upstream_error, client_closed)
    #[arg(long)]
    pub status: Option<String>,
    /// At most this many, newest first
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print the daemon's JSON document
    #[arg(long)]
    pub json: bool,
}

pub async fn requests(args: &RequestsArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let (url, key) = args.admin.resolve(&config)?;
    let document: Value = match &args.id {
        Some(id) => admin_get(&url, &key, &format!("/admin/requests/{id}"), &[], "request timeline").await?,
        None => {
            let mut query = vec![("limit", args.limit.to_string())];
            let filters = [("model", &args.model), ("key", &args.key), ("status", &args.status)];
            query.extend(filters.into_iter().filter_map(|(name, value)| Some((name, value.clone()?))));
            admin_get(&url, &key, "/admin/requests", &query, "request list").await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else if args.id.is_some() {
        print!("{}", render_one(&document));
    } else {
        print!("{}", render_list(&document));
    }
    Ok(ExitCode::SUCCESS)
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().filter(|s| !s.is_empty()).unwrap_or("-")
}

fn millis(value: &Value) -> String {
    match value.as_f64() {
        None => "-".to_owned(),
        Some(ms) if ms.abs() < 1_000.0 => format!("{ms:.1} ms"),
        Some(ms) => format!("{:.1} s", ms / 1_000.0),
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock(unix_ms: u64) -> String {
    let (seconds, ms) = (unix_ms / 1_000, unix_ms % 1_000);
    format!("{:02}:{:02}:{:02}.{ms:03}", seconds / 3_600 % 24, seconds / 60 % 60, seconds % 60)
}

fn outcome(request: &Value) -> String {
    let status = request["status"].as_u64().map_or_else(|| "-".to_owned(), |s| s.to_string());
    format!("{status} {}", text(request, "outcome"))
}

fn copy(request: &Value) -> String {
    let copy = &request["copy"];
    if copy.is_null() {
        return "-".to_owned();
    }
    let how = if copy["native"].as_bool() == Some(true) { "native" } else { "translated" };
    format!("{} {how}", text(copy, "neuron"))
}

/// The list as a table, newest first.
fn render_list(document: &Value) -> String {
    let empty = Vec::new();
    let requests = document["requests"].as_array().unwrap_or(&empty);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:<12}  {:<18}  {:<20}  {:<10}  {:<20}  {:>9}  {:>14}  COPY",
        "ID", "AT (UTC)", "ROUTE", "MODEL", "KEY", "STATUS", "TOOK", "WAITED"
    );
    for request in requests {
        let swap = if request["load"]["swap"].as_bool() == Some(true) { " swap" } else { "" };
        let _ = writeln!(
            out,
            "{:<16}  {:<12}  {:<18}  {:<20}  {:<10}  {:<20}  {:>9}  {:>14}  {}",
            text(request, "id"),
            clock(request["received_unix_ms"].as_u64().unwrap_or(0)),
            text(request, "route"),
            text(request, "model"),
            text(request, "key"),
            outcome(request),
            millis(&request["duration_ms"]),
            format!("{}{swap}", millis(&request["queue_wait_ms"])),
            copy(request)
        );
    }
    let capacity = document["capacity"].as_u64().unwrap_or(0);
    let _ = writeln!(out, "{} shown; the daemon keeps the last {capacity} requests", requests.len());
    out
}

/// One timeline: what it was, where it went, and its stages with the time between them.
fn render_one(request: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "request {} ({})", text(request, "id"), text(request, "route"));
    let _ = writeln!(
        out,
        "  model {}  key {}  {}  took {}",
        text(request, "model"),
        text(request, "key"),
        outcome(request),
        millis(&request["duration_ms"])
    );
    let served = &request["copy"];
    if !served.is_null() {
        let how = if served["native"].as_bool() == Some(true) { "native" } else { "translated" };
        let _ = writeln!(
            out,
            "  copy  {} on {} ({}, {}), {how} {}",
            text(served, "model"),
            text(served, "neuron"),
            text(served, "address"),
            text(served, "harness"),
            text(served, "path")
        );
    }
    let load = &request["load"];
    if !load.is_null() {
        let evicted: Vec<&str> =
            load["evicted"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let what = if evicted.is_empty() {
            "a load".to_owned()
        } else {
            format!("a swap (evicted {})", evicted.join(", "))
        };
        let _ = writeln!(
            out,
            "  waited {} behind {what} on {}, which took {}",
            millis(&request["queue_wait_ms"]),
            text(load, "neuron"),
            millis(&load["took_ms"])
        );
    }
    let tokens = &request["tokens"];
    if !tokens.is_null() {
        let cached = tokens["cached"].as_u64().map(|c| format!(" ({c} cached)")).unwrap_or_default();
        let _ = writeln!(out, "  tokens {} in{cached}, {} out", tokens["in"], tokens["out"]);
    }
    if let Some(error) = request["error"].as_str() {
        let _ = writeln!(out, "  error {error}");
    }
    for stage in request["stages"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:>10}  {:<12}  +{}",
            millis(&stage["at_ms"]),
            text(stage, "stage"),
            millis(&stage["after_ms"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swapped() -> Value {
        serde_json::json!({
            "id": "2516aa2400000002", "route": "chat_completions", "received_unix_ms": 1765157939123u64,
            "model": "od-b", "key": "", "status": 200, "outcome": "ok", "error": null,
            "duration_ms": 5210.4, "queue_wait_ms": 5104.0,
            "load": {"neuron": "atlas", "swap": true, "evicted": ["od-a"], "started_ms": 2003.1,
                     "ready_ms": 5101.9, "took_ms": 3098.8},
            "copy": {"model": "od-b", "neuron": "atlas", "address": "http://127.0.0.1:48457",
                     "harness": "sim", "path": "/v1/chat/completions", "native": true},
            "tokens": {"in": 2, "cached": null, "out": 8},
            "stages": [
                {"stage": "received", "at_ms": 0.0, "after_ms": 0.0},
                {"stage": "queued", "at_ms": 0.9, "after_ms": 0.9},
                {"stage": "load_started", "at_ms": 2003.1, "after_ms": 2002.2},
                {"stage": "load_ready", "at_ms": 5101.9, "after_ms": 3098.8},
                {"stage": "placed", "at_ms": 5104.9, "after_ms": 3.0},
                {"stage": "done", "at_ms": 5210.4, "after_ms": 105.5}
            ]
        })
    }

    #[test]
    fn one_timeline_reads_as_its_story() {
        expect_test::expect![[r#"
            request 2516aa2400000002 (chat_completions)
              model od-b  key -  200 ok  took 5.2 s
              copy  od-b on atlas (http://127.0.0.1:48457, sim), native /v1/chat/completions
              waited 5.1 s behind a swap (evicted od-a) on atlas, which took 3.1 s
              tokens 2 in, 8 out
                  0.0 ms  received      +0.0 ms
                  0.9 ms  queued        +0.9 ms
                   2.0 s  load_started  +2.0 s
                   5.1 s  load_ready    +3.1 s
                   5.1 s  placed        +3.0 ms
                   5.2 s  done          +105.5 ms
        "#]]
        .assert_eq(&render_one(&swapped()));
    }

    #[test]
    fn the_list_is_a_table_newest_first() {
        let document = serde_json::json!({"capacity": 2000, "requests": [swapped()]});
        expect_test::expect![[r#"
            ID                AT (UTC)      ROUTE               MODEL                 KEY         STATUS                     TOOK          WAITED  COPY
            2516aa2400000002  01:38:59.123  chat_completions    od-b                  -           200 ok                    5.2 s      5.1 s swap  atlas native
            1 shown; the daemon keeps the last 2000 requests
        "#]]
        .assert_eq(&render_list(&document));
    }
}
