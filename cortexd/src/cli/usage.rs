//! `cortex usage`: asks a running daemon for its fleet keys' usage (`GET /admin/usage`) and
//! prints it as tables or JSON.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::status::{AdminArgs, admin_get};
use crate::cli::{ConfigArgs, load_config};
use crate::control::poller::now_unix_ms;
use crate::gateway::core::keys::limits::day_index;
use crate::operator::usage::{UsageReport, render};

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only this key
    #[arg(long)]
    pub key: Option<String>,
    /// From this UTC date (2026-12-01) or this long ago (7d, 36h) [default: the first of this month]
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print the usage document as JSON (format_version 1)
    #[arg(long)]
    pub json: bool,
}

pub async fn usage(args: &UsageArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let (url, key) = args.admin.resolve(&config)?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(name) = &args.key {
        query.push(("key", name.clone()));
    }
    if let Some(since) = &args.since {
        query.push(("since", since_day(since, now_unix_ms())?.to_string()));
    }
    let report: UsageReport = admin_get(&url, &key, "/admin/usage", &query, "usage document").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The first day (since the epoch) `since` means: a date, or a duration ago.
fn since_day(since: &str, now_ms: u64) -> anyhow::Result<u32> {
    if let Some(ago) = plans::duration::parse_ms(since) {
        return Ok(day_index(now_ms.saturating_sub(ago)));
    }
    let date: toml_edit::Datetime = since
        .parse()
        .ok()
        .filter(|d: &toml_edit::Datetime| d.date.is_some() && d.time.is_none())
        .with_context(|| {
            format!("--since must be a date like 2026-12-01 or a duration like 7d, found {since:?}")
        })?;
    let day = date.date.context("a date")?;
    let ms = plans::fleet::keys::unix_ms(i64::from(day.year), u32::from(day.month), u32::from(day.day), 0, 0);
    Ok(day_index(u64::try_from(ms).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_date_or_a_duration_ago() {
        let now = 1_798_675_200_000 + 3_600_000; // 2026-12-31T01:00:00Z
        assert_eq!(since_day("2026-12-01", now).expect("date"), day_index(now) - 30);
        assert_eq!(since_day("7d", now).expect("duration"), day_index(now) - 7);
        assert_eq!(since_day("2h", now).expect("duration"), day_index(now) - 1);
        assert!(since_day("last week", now).is_err());
    }
}
