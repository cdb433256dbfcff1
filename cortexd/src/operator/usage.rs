//! Usage per fleet key, as the operator reads it: the document `GET /admin/usage` serves and
//! `cortex usage` prints (a table, or the document as JSON), and the fleet page's key rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plans::fleet::{Fleet, KeyLimits};

use crate::gateway::core::keys::limits::{civil_from_days, day_index, month_index, month_start_ms};
use crate::usage::{DayUsage, StoreError, Usage};

/// The usage document (`format_version` 1).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageReport {
    pub format_version: u32,
    /// The first day counted (days since the epoch, UTC) and its date.
    pub since_day: u32,
    pub since: String,
    /// Today (days since the epoch, UTC).
    pub today: u32,
    /// One row per key: the fleet's declared keys, then keys with usage no fleet key names now.
    pub keys: Vec<KeyUsage>,
    /// What each key used per day from `since_day` on, by key then day.
    pub days: Vec<DayUsage>,
}

/// One key's limits and what it used.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyUsage {
    pub name: String,
    /// `active`, `revoked`, `expired`, or `undeclared` (usage of a key the fleet no longer names).
    pub state: String,
    pub priority: String,
    pub limits: KeyLimits,
    pub tokens_today: u64,
    pub tokens_this_month: u64,
    /// Since `since_day`.
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The report for `key` (or every key) from day `since` (default: the first of this month).
pub fn report(
    fleet: &Fleet,
    usage: &Usage,
    key: Option<&str>,
    since: Option<u32>,
    now_ms: u64,
) -> Result<UsageReport, StoreError> {
    let today = day_index(now_ms);
    let month_start = day_index(month_start_ms(month_index(now_ms)));
    let since_day = since.unwrap_or(month_start);
    let days = usage.rows(key, since_day.min(month_start))?;
    let mut keys: Vec<KeyUsage> = Vec::new();
    let mut names: Vec<(String, String, String, KeyLimits)> = fleet
        .keys
        .iter()
        .filter(|k| key.is_none_or(|wanted| wanted == k.name))
        .map(|k| {
            let state = if k.revoked {
                "revoked"
            } else if k.expired(now_ms) {
                "expired"
            } else {
                "active"
            };
            (k.name.clone(), state.to_owned(), k.priority.describe(), k.limits)
        })
        .collect();
    let mut undeclared: BTreeMap<&str, ()> = BTreeMap::new();
    for row in &days {
        if fleet.key(&row.key).is_none() {
            undeclared.insert(&row.key, ());
        }
    }
    names.extend(
        undeclared
            .keys()
            .map(|name| ((*name).to_owned(), "undeclared".to_owned(), String::new(), KeyLimits::default())),
    );
    for (name, state, priority, limits) in names {
        let mine = days.iter().filter(|d| d.key == name);
        let (mut today_tokens, mut month_tokens) = (0, 0);
        let mut entry = KeyUsage {
            name: name.clone(),
            state,
            priority,
            limits,
            tokens_today: 0,
            tokens_this_month: 0,
            requests: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
        };
        for day in mine {
            if day.day == today {
                today_tokens += day.tokens();
            }
            if day.day >= month_start {
                month_tokens += day.tokens();
            }
            if day.day >= since_day {
                entry.requests += day.requests;
                entry.prompt_tokens += day.prompt_tokens;
                entry.completion_tokens += day.completion_tokens;
            }
        }
        entry.tokens_today = today_tokens;
        entry.tokens_this_month = month_tokens;
        keys.push(entry);
    }
    let days = days.into_iter().filter(|d| d.day >= since_day).collect();
    Ok(UsageReport { format_version: 1, since_day, since: date(since_day), today, keys, days })
}

/// `2026-12-31` for a day since the epoch.
pub fn date(day: u32) -> String {
    let (year, month, day) = civil_from_days(i64::from(day));
    format!("{year:04}-{month:02}-{day:02}")
}

/// The report as tables: one row per key (its budgets as used / limit), then the days.
pub fn render(report: &UsageReport) -> String {
    let mut out = format!("Usage since {} (UTC)\n\n", report.since);
    let budget = |used: u64, limit: Option<u64>| match limit {
        Some(limit) => format!("{used} / {limit} ({}%)", used.saturating_mul(100) / limit.max(1)),
        None => used.to_string(),
    };
    let mut rows = vec![
        ["KEY", "STATE", "PRIORITY", "REQUESTS", "PROMPT", "COMPLETION", "TODAY", "THIS MONTH"]
            .map(str::to_owned),
    ];
    for key in &report.keys {
        rows.push([
            key.name.clone(),
            key.state.clone(),
            key.priority.clone(),
            key.requests.to_string(),
            key.prompt_tokens.to_string(),
            key.completion_tokens.to_string(),
            budget(key.tokens_today, key.limits.tokens_per_day),
            budget(key.tokens_this_month, key.limits.tokens_per_month),
        ]);
    }
    table(&mut out, &rows);
    if !report.days.is_empty() {
        out.push('\n');
        let mut rows = vec![["DAY", "KEY", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"].map(str::to_owned)];
        for day in &report.days {
            rows.push([
                date(day.day),
                day.key.clone(),
                day.requests.to_string(),
                day.prompt_tokens.to_string(),
                day.completion_tokens.to_string(),
                day.tokens().to_string(),
            ]);
        }
        table(&mut out, &rows);
    }
    out
}

/// Rows as left-aligned columns two spaces apart.
fn table<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_sums_days_per_key_and_names_undeclared_ones() {
        let text = "[[key]]\nname = \"alice\"\nsha256 = \"214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d\"\ntokens_per_day = 1000\npriority = \"batch\"\n";
        let load = plans::fleet::load(&[("keys.toml".to_owned(), text.to_owned())]);
        let fleet = load.fleet.expect("valid");
        let now = 1_798_675_200_000 + 3_600_000; // 2026-12-31T01:00:00Z
        let today = day_index(now);
        let usage = Usage::in_memory();
        usage.record("alice", today, 100, 50);
        usage.record("alice", today - 1, 10, 10);
        usage.record("gone", today - 40, 1, 1);
        let report = report(&fleet, &usage, None, Some(today - 1), now).expect("report");
        expect_test::expect![[r#"
            Usage since 2026-12-30 (UTC)

            KEY    STATE   PRIORITY  REQUESTS  PROMPT  COMPLETION  TODAY             THIS MONTH
            alice  active  batch     2         110     60          150 / 1000 (15%)  170

            DAY         KEY    REQUESTS  PROMPT  COMPLETION  TOTAL
            2026-12-30  alice  1         10      10          20
            2026-12-31  alice  1         100     50          150
        "#]]
        .assert_eq(&render(&report));
        let all = super::report(&fleet, &usage, None, Some(0), now).expect("report");
        assert_eq!(
            all.keys.iter().map(|k| (&*k.name, &*k.state)).collect::<Vec<_>>(),
            [("alice", "active"), ("gone", "undeclared")]
        );
    }
}
