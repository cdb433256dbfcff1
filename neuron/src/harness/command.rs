//! The `command` harness: any OpenAI-compatible server (vLLM, SGLang, a llama-server started
//! differently, ...) started per model from an argv template in neuron.toml. This file only
//! checks and fills the template; `crate::harness::supervise` runs, watches and stops the process.
//!
//! The template is an argv, never a shell line: placeholders are replaced inside single
//! arguments, so a model id or path can never become two arguments or a shell command.

use futures_util::future::BoxFuture;
use plans::wire::HarnessInfo;

use crate::config::CommandSettings;
use crate::harness::supervise::{HttpReady, ProcessEngine, ProcessSpec};
use crate::harness::{Engine, EngineError, Harness, Launch};

pub struct CommandHarness {
    settings: CommandSettings,
}

/// What a template expands to for one launch.
#[derive(Debug, PartialEq, Eq)]
struct Expanded {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl CommandHarness {
    pub fn new(settings: CommandSettings) -> CommandHarness {
        let mentions_loopback = settings
            .command
            .iter()
            .chain(settings.env.values())
            .any(|a| a.contains("127.0.0.1") || a.contains("localhost") || a.contains("[::1]"));
        if !mentions_loopback {
            tracing::warn!(
                "command harness {:?}: the command does not name 127.0.0.1; make sure the engine \
                 listens on loopback only (the neuron is meant to be the only way in)",
                settings.command.first().map_or("", String::as_str)
            );
        }
        CommandHarness { settings }
    }

    /// The program, argv and environment for `launch`.
    fn expand(&self, launch: &Launch) -> Expanded {
        let devices = launch.devices.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let ctx_size = launch.profile.ctx_size.map(|c| c.to_string());
        let value = |name: &str| -> Option<String> {
            match name {
                "port" => Some(launch.port.port.to_string()),
                "source" => Some(launch.source.display().to_string()),
                "model" => Some(launch.model.clone()),
                "devices" => Some(devices.clone()),
                // For tensor-parallel flags (vLLM `--tensor-parallel-size`, SGLang `--tp-size`).
                "device_count" => Some(launch.devices.len().max(1).to_string()),
                "ctx_size" => ctx_size.clone(),
                _ => None,
            }
        };
        let command = &self.settings.command;
        let program = command.first().cloned().unwrap_or_default();
        let mut args: Vec<String> = command.iter().skip(1).map(|a| substitute(a, &value)).collect();
        if ctx_size.is_some() {
            args.extend(self.settings.ctx_size_args.iter().map(|a| substitute(a, &value)));
        }
        args.extend(launch.profile.args.iter().cloned());
        let mut env = Vec::new();
        if !self.settings.devices_env.is_empty() {
            // An empty value hides every GPU from a CPU model.
            env.push((self.settings.devices_env.clone(), devices.clone()));
        }
        env.extend(self.settings.env.iter().map(|(key, text)| (key.clone(), substitute(text, &value))));
        Expanded { program, args, env }
    }

    /// Flags the template sets itself: a load request may not pass them again.
    fn reserved_flags(&self) -> impl Iterator<Item = &str> {
        self.settings
            .command
            .iter()
            .skip(1)
            .chain(&self.settings.ctx_size_args)
            .filter(|arg| arg.starts_with('-'))
            .map(|arg| arg.split('=').next().unwrap_or(arg))
    }
}

impl Harness for CommandHarness {
    fn info(&self, name: &str) -> HarnessInfo {
        HarnessInfo {
            name: name.to_owned(),
            kind: "command".to_owned(),
            anthropic_messages: self.settings.anthropic_messages,
            count_tokens: self.settings.count_tokens,
            embeddings: self.settings.embeddings,
            responses: self.settings.responses,
        }
    }

    fn check_args(&self, name: &str, args: &[String]) -> Result<(), String> {
        if args.is_empty() {
            return Ok(());
        }
        if !self.settings.allow_args {
            return Err(format!(
                "harness {name:?} does not allow extra engine arguments (set allow_args = true in neuron.toml)"
            ));
        }
        for arg in args {
            let flag = arg.split('=').next().unwrap_or(arg);
            if self.reserved_flags().any(|reserved| reserved == flag) {
                return Err(format!(
                    "engine argument {arg:?} is reserved: harness {name:?}'s command sets it itself"
                ));
            }
        }
        Ok(())
    }

    fn start(&self, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Engine>, EngineError>> {
        let expanded = self.expand(&launch);
        let spawned = ProcessEngine::spawn(ProcessSpec {
            program: expanded.program.into(),
            args: expanded.args,
            env: expanded.env,
            log_path: launch.log_path,
            port: launch.port,
            ready: HttpReady { path: self.settings.health_path.clone(), status: self.settings.health_status },
        });
        Box::pin(async move { spawned.map(|engine| Box::new(engine) as Box<dyn Engine>) })
    }
}

/// `text` with each `{name}` that `value` knows replaced; anything else is kept as written.
fn substitute(text: &str, value: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let length = after.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(after.len());
        match value(&after[..length]) {
            Some(replacement) if length > 0 && after[length..].starts_with('}') => {
                out.push_str(&replacement);
                rest = &after[length + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use plans::fleet::Profile;

    use super::*;
    use crate::config::{placeholders, validate_command as validate};
    use crate::harness::supervise::PortPool;

    fn settings(command: &[&str]) -> CommandSettings {
        CommandSettings {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            env: Default::default(),
            health_path: "/health".to_owned(),
            health_status: 200,
            devices_env: "CUDA_VISIBLE_DEVICES".to_owned(),
            ctx_size_args: vec![],
            anthropic_messages: false,
            count_tokens: false,
            embeddings: false,
            responses: false,
            allow_args: false,
        }
    }

    fn vllm() -> CommandSettings {
        settings(&[
            "vllm",
            "serve",
            "{source}",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--served-model-name",
            "{model}",
        ])
    }

    fn launch(devices: Vec<u32>, ctx_size: Option<u32>, args: Vec<String>) -> Launch {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        Launch {
            model: "org/m".to_owned(),
            source: PathBuf::from("/models/m dir"),
            profile: Profile {
                harness: "vllm".to_owned(),
                source: "m dir".to_owned(),
                quant: None,
                ctx_size,
                args,
            },
            devices,
            port: PortPool::new((port, port)).lease().expect("port"),
            log_path: PathBuf::from("/tmp/x.log"),
        }
    }

    #[test]
    fn placeholders_are_filled_inside_single_arguments() {
        let mut settings = vllm();
        settings.command.push("--url=http://127.0.0.1:{port}/v1".to_owned());
        settings.command.push(r#"{"json": {port}}"#.to_owned());
        settings.command.extend(["--tensor-parallel-size".to_owned(), "{device_count}".to_owned()]);
        settings.env.insert("SHOWN".to_owned(), "gpus {devices} for {model}".to_owned());
        settings.ctx_size_args = vec!["--max-model-len".to_owned(), "{ctx_size}".to_owned()];
        let harness = CommandHarness::new(settings);
        let launch = launch(vec![2, 5], Some(8192), vec![]);
        let port = launch.port.port;
        let expanded = harness.expand(&launch);
        assert_eq!(expanded.program, "vllm");
        let expected: Vec<String> = [
            "serve",
            "/models/m dir",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--served-model-name",
            "org/m",
            &format!("--url=http://127.0.0.1:{port}/v1"),
            &format!(r#"{{"json": {port}}}"#),
            "--tensor-parallel-size",
            "2",
            "--max-model-len",
            "8192",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(expanded.args, expected);
        assert_eq!(
            expanded.env,
            [
                ("CUDA_VISIBLE_DEVICES".to_owned(), "2,5".to_owned()),
                ("SHOWN".to_owned(), "gpus 2,5 for org/m".to_owned())
            ]
        );
    }

    #[test]
    fn cpu_models_see_no_devices_and_ctx_size_args_need_a_ctx_size() {
        let mut settings = vllm();
        settings.ctx_size_args = vec!["--max-model-len={ctx_size}".to_owned()];
        let expanded = CommandHarness::new(settings).expand(&launch(vec![], None, vec![]));
        assert_eq!(expanded.env, [("CUDA_VISIBLE_DEVICES".to_owned(), String::new())]);
        assert!(!expanded.args.iter().any(|a| a.contains("max-model-len")), "{:?}", expanded.args);
        let mut settings = vllm();
        settings.devices_env = String::new();
        assert!(CommandHarness::new(settings).expand(&launch(vec![1], None, vec![])).env.is_empty());
    }

    #[test]
    fn profile_args_come_last_and_never_repeat_the_templates_flags() {
        let strict = CommandHarness::new(vllm());
        assert!(strict.check_args("vllm", &[]).is_ok());
        assert!(strict.check_args("vllm", &["--enforce-eager".to_owned()]).is_err());
        let mut settings = vllm();
        settings.allow_args = true;
        let open = CommandHarness::new(settings);
        assert!(open.check_args("vllm", &["--enforce-eager".to_owned()]).is_ok());
        assert!(open.check_args("vllm", &["--port=1".to_owned()]).is_err());
        assert!(open.check_args("vllm", &["--host".to_owned(), "0.0.0.0".to_owned()]).is_err());
        assert!(open.check_args("vllm", &["--served-model-name".to_owned()]).is_err());
        let expanded = open.expand(&launch(vec![], None, vec!["--enforce-eager".to_owned()]));
        assert_eq!(expanded.args.last().map(String::as_str), Some("--enforce-eager"));
    }

    #[test]
    fn templates_are_checked() {
        assert!(validate(&vllm()).is_ok());
        let err = |settings: CommandSettings| validate(&settings).expect_err("invalid");
        assert!(err(settings(&[])).contains("program"));
        assert!(err(settings(&["{model}", "{port}"])).contains("program"));
        assert!(err(settings(&["x", "serve"])).contains("{port}"));
        assert!(err(settings(&["x", "{port}", "{gpus}"])).contains("unknown placeholder {gpus}"));
        let mut bad = vllm();
        bad.health_path = "health".to_owned();
        assert!(err(bad).contains("health_path"));
        let mut bad = vllm();
        bad.ctx_size_args = vec!["--max-model-len".to_owned()];
        assert!(err(bad).contains("{ctx_size}"));
        let mut port_in_env = settings(&["x"]);
        port_in_env.env.insert("PORT".to_owned(), "{port}".to_owned());
        assert!(validate(&port_in_env).is_ok());
        assert_eq!(placeholders(r#"a{port}b{"x":1}{ctx_size}{}"#), ["port", "ctx_size"]);
    }
}
