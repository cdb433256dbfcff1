//! `cortex-bench tally`: how often the §10 streaming bounds held over many runs, per build. On
//! a shared VM one run's tail says little; what a build is judged by is how often its bounds hold
//! against nginx's in the same runs, and the median and range of its p99s.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::report::{CHUNK_P99_US, TTFT_P99_US, f, stream_row, top_level};

/// One run's figures at its highest stream level (µs; `None`: that path was not measured).
#[derive(Clone, Debug, Default, PartialEq)]
struct Run {
    ttft: Option<f64>,
    chunk: Option<f64>,
    anthropic_ttft: Option<f64>,
    anthropic_chunk: Option<f64>,
    nginx_ttft: Option<f64>,
    nginx_chunk: Option<f64>,
    /// cortex's CPU per forwarded event ÷ nginx's, in the same run.
    cpu_vs_nginx: Option<f64>,
    /// CPU time the host took from the VM during a cortex round (ms, median of rounds): runs
    /// with much of it say more about the host than about cortex.
    steal_ms: Option<f64>,
}

impl Run {
    fn of(report: &Value) -> Run {
        let level = top_level(report);
        let row = |path: &str| stream_row(report, path, level);
        let figure = |path: &str, key: &str| row(path).and_then(|r| f(r, key));
        let cpu = row("cortex").and_then(|r| f(r, "cortex_cpu_us_per_event"));
        let nginx_cpu = row("nginx").and_then(|r| f(r, "nginx_cpu_us_per_event")).filter(|&v| v > 0.0);
        Run {
            ttft: figure("cortex", "added_ttft_net_p99_us"),
            chunk: figure("cortex", "added_delivery_p99_us"),
            anthropic_ttft: figure("cortex-anthropic", "added_ttft_net_p99_us"),
            anthropic_chunk: figure("cortex-anthropic", "added_delivery_p99_us"),
            nginx_ttft: figure("nginx", "added_ttft_net_p99_us"),
            nginx_chunk: figure("nginx", "added_delivery_p99_us"),
            cpu_vs_nginx: cpu.zip(nginx_cpu).map(|(c, n)| c / n),
            steal_ms: figure("cortex", "steal_ms"),
        }
    }
}

/// Whether both figures were measured and are within `scale` times the bounds.
fn within(ttft: Option<f64>, chunk: Option<f64>, scale: f64) -> bool {
    ttft.zip(chunk).is_some_and(|(t, c)| t <= scale * TTFT_P99_US && c <= scale * CHUNK_P99_US)
}

/// What a report file's runs are grouped under: the name after its timestamp
/// (`20261201T203447Z-stream1000-5477b6c.json` → `stream1000-5477b6c`), else its folder's name
/// without a trailing run number (`plain-3/20261201T203447Z.json` → `plain`).
fn label(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if let Some((_, rest)) = stem.split_once('-') {
        return rest.to_owned();
    }
    let folder = path.parent().and_then(Path::file_name).and_then(|s| s.to_str()).unwrap_or("");
    match folder.rsplit_once('-') {
        Some((name, number)) if !name.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) => {
            name.to_owned()
        }
        _ => folder.to_owned(),
    }
}

/// `median (min–max)` of the measured values with `decimals` places, or `—`.
fn spread(values: impl Iterator<Item = Option<f64>>, decimals: usize) -> String {
    let mut values: Vec<f64> = values.flatten().collect();
    if values.is_empty() {
        return "—".into();
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
    format!("{median:.decimals$} ({:.decimals$}–{:.decimals$})", values[0], values[n - 1])
}

/// The table: one line per label, in the order the labels first appear.
fn table(groups: &[(String, Vec<Run>)]) -> String {
    let mut out = String::from(
        "| build | runs | added TTFT p99, µs: median (range) | ≤ 1 ms | per-chunk p99, µs | ≤ 0.5 ms | both | Anthropic within 2× | CPU/event ÷ nginx's | nginx: TTFT / per-chunk p99, µs | nginx both | host steal, ms |\n|---|---:|---|---:|---|---:|---:|---:|---|---|---:|---|\n",
    );
    for (name, runs) in groups {
        let count = |held: &dyn Fn(&Run) -> bool| runs.iter().filter(|r| held(r)).count();
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            runs.len(),
            spread(runs.iter().map(|r| r.ttft), 0),
            count(&|r| r.ttft.is_some_and(|v| v <= TTFT_P99_US)),
            spread(runs.iter().map(|r| r.chunk), 0),
            count(&|r| r.chunk.is_some_and(|v| v <= CHUNK_P99_US)),
            count(&|r| within(r.ttft, r.chunk, 1.0)),
            count(&|r| within(r.anthropic_ttft, r.anthropic_chunk, 2.0)),
            spread(runs.iter().map(|r| r.cpu_vs_nginx), 2),
            spread(runs.iter().map(|r| r.nginx_ttft), 0),
            spread(runs.iter().map(|r| r.nginx_chunk), 0),
            count(&|r| within(r.nginx_ttft, r.nginx_chunk, 1.0)),
            spread(runs.iter().map(|r| r.steal_ms), 0),
        );
    }
    out
}

/// Read every report in `paths` and print the table.
pub fn run(paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut groups: Vec<(String, Vec<Run>)> = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let report: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not a report", path.display()))?;
        anyhow::ensure!(top_level(&report) > 0.0, "{} has no streaming figures", path.display());
        let name = label(path);
        match groups.iter_mut().find(|(known, _)| *known == name) {
            Some((_, runs)) => runs.push(Run::of(&report)),
            None => groups.push((name, vec![Run::of(&report)])),
        }
    }
    anyhow::ensure!(!groups.is_empty(), "no reports given");
    print!("{}", table(&groups));
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn report(ttft: f64, chunk: f64, nginx: (f64, f64)) -> Value {
        let row = |path: &str, ttft: f64, chunk: f64, cpu: f64, nginx_cpu: f64| {
            json!({"path": path, "concurrency": 1000.0, "added_ttft_net_p99_us": ttft,
                   "added_delivery_p99_us": chunk, "cortex_cpu_us_per_event": cpu,
                   "nginx_cpu_us_per_event": nginx_cpu})
        };
        json!({"streaming": [
            row("direct", 0.0, 0.0, 0.2, 0.0),
            json!({"path": "cortex", "concurrency": 1000.0, "added_ttft_net_p99_us": ttft,
                   "added_delivery_p99_us": chunk, "cortex_cpu_us_per_event": 18.0, "steal_ms": chunk / 10.0}),
            row("cortex-anthropic", 2.0 * ttft, 2.0 * chunk, 20.0, 0.0),
            row("nginx", nginx.0, nginx.1, 0.2, 15.0),
            // A lower level must not be the one judged.
            json!({"path": "cortex", "concurrency": 100.0, "added_ttft_net_p99_us": 1.0, "added_delivery_p99_us": 1.0}),
        ]})
    }

    #[test]
    fn runs_are_read_at_their_highest_level_against_nginx_in_the_same_run() {
        let run = Run::of(&report(950.0, 520.0, (800.0, 400.0)));
        assert_eq!(run.ttft, Some(950.0));
        assert_eq!(run.chunk, Some(520.0));
        assert_eq!(run.anthropic_chunk, Some(1040.0));
        assert_eq!(run.nginx_ttft, Some(800.0));
        assert_eq!(run.cpu_vs_nginx, Some(18.0 / 15.0));
        assert_eq!(run.steal_ms, Some(52.0));
    }

    #[test]
    fn the_table_counts_the_runs_each_bound_held_in() {
        let runs = vec![
            Run::of(&report(950.0, 480.0, (800.0, 400.0))),
            Run::of(&report(1100.0, 450.0, (900.0, 420.0))),
            Run::of(&report(900.0, 600.0, (1200.0, 450.0))),
        ];
        let text = table(&[("head".into(), runs)]);
        let line = text.lines().nth(2).expect("one row");
        assert_eq!(
            line,
            "| head | 3 | 950 (900–1100) | 2 | 480 (450–600) | 2 | 1 | 1 | 1.20 (1.20–1.20) | 900 (800–1200) / 420 (400–450) | 2 | 48 (45–60) |"
        );
    }

    #[test]
    fn labels_come_from_the_name_after_the_timestamp_or_the_folder() {
        assert_eq!(label(Path::new("r/20261201T203447Z-stream1000-5477b6c.json")), "stream1000-5477b6c");
        assert_eq!(label(Path::new("/tmp/s2/plain-3/20261201T203447Z.json")), "plain");
        assert_eq!(label(Path::new("/tmp/s2/head/20261201T203447Z.json")), "head");
    }
}
