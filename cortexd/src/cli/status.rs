//! `cortex status`: asks a running daemon for its status document and renders it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::cli::{ConfigArgs, load_config};
use crate::config::Config;
use crate::control::neuron_client::error_message;
use crate::control::status::{DaemonStatus, Health, Sync, render};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The daemon's address [default: the config's listen address]
    #[arg(long, env = "CORTEX_URL")]
    pub url: Option<String>,
    /// The admin key [default: the config's admin_key]
    #[arg(long, env = "CORTEX_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Print the status as JSON
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when the fleet is Synced and Healthy, 2 when it is not (OutOfSync, Degraded,
    /// Progressing, Unknown), 1 on error
    #[arg(long)]
    pub detailed_exitcode: bool,
}

/// Which daemon an operator's command asks, and with which key (`cortex usage`, `cortex requests`).
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The daemon's address [default: the config's listen address]
    #[arg(long, env = "CORTEX_URL")]
    pub url: Option<String>,
    /// The admin key, or a fleet key with operator access [default: the config's admin_key]
    #[arg(long, env = "CORTEX_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
}

impl AdminArgs {
    /// The daemon's URL and the key, each from the flag or else from `config`.
    pub fn resolve(&self, config: &Config) -> anyhow::Result<(String, String)> {
        let url = self.url.clone().unwrap_or_else(|| format!("http://{}", config.listen));
        let key = self.admin_key.clone().or(config.admin_key.clone()).context(
            "no admin key: pass --admin-key (the admin key, or a fleet key with operator access), set CORTEX_ADMIN_KEY, or admin_key in cortex.toml",
        )?;
        Ok((url, key))
    }
}

/// `GET` an admin route of the daemon at `url` with `key`, decoded as `T` (`what` names it in
/// the error when it does not decode).
pub(crate) async fn admin_get<T: serde::de::DeserializeOwned>(
    url: &str,
    key: &str,
    path: &str,
    query: &[(&str, String)],
    what: &str,
) -> anyhow::Result<T> {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", url.trim_end_matches('/')))
        .query(query)
        .bearer_auth(key)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("cannot reach cortex at {url}"))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("cortex at {url} answered {status}: {}", error_message(body.as_bytes()));
    }
    response.json().await.with_context(|| format!("cortex answered an unexpected {what}"))
}

pub async fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let url = args.url.clone().unwrap_or_else(|| format!("http://{}", config.listen));
    let key = args
        .admin_key
        .clone()
        .or(config.admin_key.clone())
        .context("no admin key: pass --admin-key, set CORTEX_ADMIN_KEY, or admin_key in cortex.toml")?;
    let status: DaemonStatus = admin_get(&url, &key, "/admin/status", &[], "status document").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    let fine = status.sync == Sync::Synced && status.health == Health::Healthy;
    Ok(if args.detailed_exitcode && !fine { ExitCode::from(2) } else { ExitCode::SUCCESS })
}
