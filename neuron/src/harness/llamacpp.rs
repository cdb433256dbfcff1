//! The `llamacpp` harness: llama.cpp's `llama-server`, one process per loaded model. This file
//! only builds the argv and environment; `crate::harness::supervise` runs the process.

use std::path::PathBuf;

use futures_util::future::BoxFuture;
use plans::wire::HarnessInfo;

use crate::harness::supervise::{HttpReady, ProcessEngine, ProcessSpec};
use crate::harness::{Engine, EngineError, Harness, Launch};

/// Flags a load request may never pass: they would move the engine off loopback, swap its model
/// or name, or make it fetch files, all of which the neuron alone decides.
const RESERVED_FLAGS: &[&str] = &[
    "--host",
    "--port",
    "-m",
    "--model",
    "-a",
    "--alias",
    "-mu",
    "--model-url",
    "-hf",
    "-hfr",
    "--hf-repo",
    "-hff",
    "--hf-file",
    "--models-dir",
    "--api-key",
    "--api-key-file",
    "--path",
    "--ssl-key-file",
    "--ssl-cert-file",
    "-lv",
    "--log-file",
];

pub struct LlamaCpp {
    binary: PathBuf,
    allow_args: bool,
    default_args: Vec<String>,
    native: Native,
}

/// The APIs beyond Chat Completions that the pinned llama-server serves itself (both by
/// default); an operator may turn them off in neuron.toml so the gateway translates instead.
#[derive(Clone, Copy, Debug)]
pub struct Native {
    pub anthropic_messages: bool,
    pub responses: bool,
}

impl Default for Native {
    fn default() -> Self {
        Native { anthropic_messages: true, responses: true }
    }
}

impl LlamaCpp {
    pub fn new(binary: PathBuf, allow_args: bool, default_args: Vec<String>, native: Native) -> LlamaCpp {
        LlamaCpp { binary, allow_args, default_args, native }
    }

    /// The full argv (without the program) and extra environment for `launch`.
    pub fn command(&self, launch: &Launch) -> (Vec<String>, Vec<(String, String)>) {
        let mut args = vec!["-m".to_owned(), launch.source.display().to_string()];
        args.extend(["--alias".to_owned(), launch.model.clone()]);
        if let Some(ctx_size) = launch.profile.ctx_size {
            args.extend(["-c".to_owned(), ctx_size.to_string()]);
        }
        let visible: Vec<String> = launch.devices.iter().map(u32::to_string).collect();
        if launch.devices.is_empty() {
            args.extend(["-ngl".to_owned(), "0".to_owned()]);
        } else {
            args.extend(["-ngl".to_owned(), "999".to_owned()]);
            if launch.devices.len() > 1 {
                // Even split: the planner accounts a model's VRAM evenly over its devices.
                let split = vec!["1"; launch.devices.len()].join(",");
                args.extend(["--tensor-split".to_owned(), split]);
            }
        }
        args.extend(self.default_args.iter().cloned());
        args.extend(launch.profile.args.iter().cloned());
        // Last, so that nothing before can override them (llama.cpp keeps the last value).
        args.extend(["--host".to_owned(), "127.0.0.1".to_owned()]);
        args.extend(["--port".to_owned(), launch.port.port.to_string()]);
        // An empty CUDA_VISIBLE_DEVICES hides every GPU from a CPU model.
        let env = vec![("CUDA_VISIBLE_DEVICES".to_owned(), visible.join(","))];
        (args, env)
    }
}

impl Harness for LlamaCpp {
    fn info(&self, name: &str) -> HarnessInfo {
        let embeddings = self.default_args.iter().any(|a| a == "--embedding" || a == "--embeddings");
        HarnessInfo {
            name: name.to_owned(),
            kind: "llamacpp".to_owned(),
            anthropic_messages: self.native.anthropic_messages,
            count_tokens: true,
            embeddings,
            responses: self.native.responses,
        }
    }

    fn check_args(&self, name: &str, args: &[String]) -> Result<(), String> {
        if args.is_empty() {
            return Ok(());
        }
        if !self.allow_args {
            return Err(format!(
                "harness {name:?} does not allow extra engine arguments (set allow_args = true in neuron.toml)"
            ));
        }
        for arg in args {
            let flag = arg.split('=').next().unwrap_or(arg);
            if RESERVED_FLAGS.contains(&flag) {
                return Err(format!("engine argument {arg:?} is reserved: the neuron sets it itself"));
            }
        }
        Ok(())
    }

    fn start(&self, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Engine>, EngineError>> {
        let (args, env) = self.command(&launch);
        let spawned = ProcessEngine::spawn(ProcessSpec {
            program: self.binary.clone(),
            args,
            env,
            log_path: launch.log_path,
            port: launch.port,
            // 503 while loading, 200 once ready.
            ready: HttpReady::default(),
        });
        Box::pin(async move { spawned.map(|engine| Box::new(engine) as Box<dyn Engine>) })
    }
}

#[cfg(test)]
mod tests {
    use plans::fleet::Profile;

    use super::*;
    use crate::harness::supervise::PortPool;

    fn launch(devices: Vec<u32>, args: Vec<String>) -> Launch {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        Launch {
            model: "org/m".to_owned(),
            source: PathBuf::from("/models/m.gguf"),
            profile: Profile {
                harness: "llamacpp".to_owned(),
                source: "m.gguf".to_owned(),
                quant: None,
                ctx_size: Some(4096),
                args,
            },
            devices,
            port: PortPool::new((port, port)).lease().expect("port"),
            log_path: PathBuf::from("/tmp/x.log"),
        }
    }

    #[test]
    fn cpu_models_get_no_gpu_layers_and_no_visible_devices() {
        let harness = LlamaCpp::new(
            PathBuf::from("llama-server"),
            false,
            vec!["--jinja".to_owned()],
            Native::default(),
        );
        let launch = launch(vec![], vec![]);
        let (args, env) = harness.command(&launch);
        let port = launch.port.port.to_string();
        assert_eq!(
            args,
            [
                "-m",
                "/models/m.gguf",
                "--alias",
                "org/m",
                "-c",
                "4096",
                "-ngl",
                "0",
                "--jinja",
                "--host",
                "127.0.0.1",
                "--port",
                port.as_str()
            ]
        );
        assert_eq!(env, [("CUDA_VISIBLE_DEVICES".to_owned(), String::new())]);
    }

    #[test]
    fn several_devices_are_made_visible_and_split_evenly() {
        let harness = LlamaCpp::new(PathBuf::from("llama-server"), true, vec![], Native::default());
        let (args, env) = harness.command(&launch(vec![1, 3], vec!["--flash-attn".to_owned()]));
        assert_eq!(env, [("CUDA_VISIBLE_DEVICES".to_owned(), "1,3".to_owned())]);
        let joined = args.join(" ");
        assert!(joined.contains("-ngl 999 --tensor-split 1,1 --flash-attn --host 127.0.0.1"), "{joined}");
    }

    #[test]
    fn args_are_refused_unless_allowed_and_reserved_flags_always() {
        let strict = LlamaCpp::new(PathBuf::from("x"), false, vec![], Native::default());
        assert!(strict.check_args("llamacpp", &[]).is_ok());
        assert!(strict.check_args("llamacpp", &["--jinja".to_owned()]).is_err());
        let open = LlamaCpp::new(PathBuf::from("x"), true, vec![], Native::default());
        assert!(open.check_args("llamacpp", &["--jinja".to_owned()]).is_ok());
        assert!(open.check_args("llamacpp", &["--host=0.0.0.0".to_owned()]).is_err());
        assert!(open.check_args("llamacpp", &["--port".to_owned(), "80".to_owned()]).is_err());
    }
}
