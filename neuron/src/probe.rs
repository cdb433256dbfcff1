//! Hardware discovery behind the small [`GpuProbe`] trait: NVML for real GPUs, a static probe
//! for CPU-only nodes, simulated devices and tests; host RAM from `/proc/meminfo`.

use std::sync::Arc;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use plans::topology::DeviceStatus;

use crate::config::Config;

/// Driver facts reported once in discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverInfo {
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
}

/// Where device figures come from. `devices` returns live figures (free VRAM, utilisation);
/// implementations must be cheap enough to call on every `/health`.
pub trait GpuProbe: Send + Sync {
    fn driver(&self) -> DriverInfo;
    fn devices(&self) -> Vec<DeviceStatus>;
    /// True when the devices are simulated (labelled in discovery and logs).
    fn simulated(&self) -> bool;
}

/// The probe for this node: simulated devices if a sim harness declares some, else NVML, else
/// CPU-only (said once in the log).
pub fn detect(config: &Config) -> Arc<dyn GpuProbe> {
    let sim_devices = config.sim_devices();
    if !sim_devices.is_empty() {
        tracing::info!(
            devices = sim_devices.len(),
            "SIMULATED devices from neuron.toml (no real GPU is used)"
        );
        let devices = sim_devices
            .iter()
            .zip(0u32..)
            .map(|(device, index)| DeviceStatus {
                index,
                name: device.name.clone(),
                vram_total_mb: device.vram_mb,
                vram_free_mb: device.vram_mb,
                ..DeviceStatus::default()
            })
            .collect();
        return Arc::new(StaticProbe { devices, driver: DriverInfo::default(), simulated: true });
    }
    match NvmlProbe::init() {
        Ok(probe) => {
            let driver = probe.driver();
            tracing::info!(
                devices = probe.devices().len(),
                driver = driver.driver_version.as_deref().unwrap_or("?"),
                "NVIDIA driver found"
            );
            Arc::new(probe)
        }
        Err(err) => {
            tracing::info!("no NVIDIA driver ({err}): running as a CPU-only node");
            Arc::new(StaticProbe::cpu_only())
        }
    }
}

/// Fixed devices: a CPU-only node (none), simulated devices, or a fake for tests.
#[derive(Clone, Debug, Default)]
pub struct StaticProbe {
    pub devices: Vec<DeviceStatus>,
    pub driver: DriverInfo,
    pub simulated: bool,
}

impl StaticProbe {
    fn cpu_only() -> StaticProbe {
        StaticProbe::default()
    }
}

impl GpuProbe for StaticProbe {
    fn driver(&self) -> DriverInfo {
        self.driver.clone()
    }
    fn devices(&self) -> Vec<DeviceStatus> {
        self.devices.clone()
    }
    fn simulated(&self) -> bool {
        self.simulated
    }
}

/// Real NVIDIA GPUs through NVML, initialised once.
struct NvmlProbe {
    nvml: Nvml,
}

impl NvmlProbe {
    pub fn init() -> Result<NvmlProbe, nvml_wrapper::error::NvmlError> {
        Ok(NvmlProbe { nvml: Nvml::init()? })
    }
}

impl GpuProbe for NvmlProbe {
    fn driver(&self) -> DriverInfo {
        DriverInfo {
            driver_version: self.nvml.sys_driver_version().ok(),
            // NVML encodes CUDA 12.4 as 12040.
            cuda_version: self
                .nvml
                .sys_cuda_driver_version()
                .ok()
                .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
        }
    }

    fn devices(&self) -> Vec<DeviceStatus> {
        let count = self.nvml.device_count().unwrap_or(0);
        let mut devices = Vec::new();
        for index in 0..count {
            let Ok(device) = self.nvml.device_by_index(index) else {
                tracing::warn!(index, "NVML cannot open device");
                continue;
            };
            // A metric that is not supported is an absent field, not a failed device.
            let memory = device.memory_info().ok();
            devices.push(DeviceStatus {
                index,
                name: device.name().unwrap_or_else(|_| format!("GPU {index}")),
                vram_total_mb: memory.as_ref().map_or(0, |m| m.total / 1_048_576),
                vram_free_mb: memory.as_ref().map_or(0, |m| m.free / 1_048_576),
                compute_capability: device
                    .cuda_compute_capability()
                    .ok()
                    .map(|c| format!("{}.{}", c.major, c.minor)),
                utilization_pct: device.utilization_rates().ok().map(|u| u.gpu),
                temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
            });
        }
        devices
    }

    fn simulated(&self) -> bool {
        false
    }
}

/// Host memory in MiB: `(total, available)`.
pub fn host_memory_mb() -> (u64, u64) {
    std::fs::read_to_string("/proc/meminfo").map(|text| parse_meminfo(&text)).unwrap_or((0, 0))
}

fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("MemTotal"), field("MemAvailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_mib() {
        let text = "MemTotal:       16384000 kB\nMemFree:         1024 kB\nMemAvailable:    8192000 kB\n";
        assert_eq!(parse_meminfo(text), (16000, 8000));
        assert_eq!(parse_meminfo(""), (0, 0));
    }
}
