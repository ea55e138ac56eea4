//! Choosing the burn device to run on.
//!
//! burn's `Device::default()` prefers wgpu whenever it is compiled in, so a
//! machine without a GPU would silently train on a software driver; the
//! device is therefore always chosen explicitly here. wgpu is compiled in
//! only with the `wgpu` cargo feature (it adds most of a cold build).

use std::str::FromStr;

use burn::tensor::Device;

use crate::{Error, Result};

/// Where to train: `--device` and a build file's `device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// wgpu when a hardware adapter exists, else the CPU.
    Auto,
    /// burn's pure-Rust `flex` CPU backend.
    #[serde(alias = "flex")]
    #[value(alias = "flex")]
    Cpu,
    /// burn's wgpu backend on wgpu's preferred adapter, which may be a
    /// software one (Mesa's lavapipe) when the machine has no GPU.
    Wgpu,
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" => Ok(Self::Wgpu),
            other => Err(Error::Device(format!(
                "unknown device {other:?}; expected `auto`, `cpu` or `wgpu`"
            ))),
        }
    }
}

/// A device chosen for a job: the burn device and what it is, in words.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The burn device (with autodiff when asked for).
    pub device: Device,
    /// The backend and adapter, as printed and recorded in reports.
    pub description: String,
}

/// The burn device for `choice`, with autodiff when `autodiff` (for training).
pub fn select_device(choice: DeviceChoice, autodiff: bool) -> Result<Device> {
    Ok(select(choice, autodiff)?.device)
}

/// The device `choice` resolves to and its description.
pub fn select(choice: DeviceChoice, autodiff: bool) -> Result<Selected> {
    let (device, description) = match choice {
        DeviceChoice::Cpu => cpu(),
        DeviceChoice::Auto => gpu::device(true)?.unwrap_or_else(cpu),
        DeviceChoice::Wgpu => gpu::device(false)?.ok_or_else(|| {
            Error::Device(
                "wgpu found no adapter: install a GPU driver with Vulkan support \
                 (on a machine without a GPU, Mesa's software driver: Debian's \
                 `mesa-vulkan-drivers libvulkan1`), or use `--device cpu`"
                    .to_string(),
            )
        })?,
    };
    Ok(Selected {
        device: if autodiff { device.autodiff() } else { device },
        description,
    })
}

/// The device `choice` resolves to, in words (printed and recorded).
pub fn describe(choice: DeviceChoice) -> Result<String> {
    Ok(select(choice, false)?.description)
}

fn cpu() -> (Device, String) {
    (
        Device::flex(),
        format!(
            "cpu (burn flex, {} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    )
}

#[cfg(feature = "wgpu")]
mod gpu {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use burn::backend::wgpu::wgpu::{
        Adapter, AdapterInfo, Backends, DeviceType, Instance, InstanceDescriptor,
    };
    use burn::tensor::{Device, DeviceKind};

    use crate::Result;

    /// wgpu's native futures are ready when first polled; this waits for
    /// one without an async runtime.
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::yield_now();
        }
    }

    /// Preference among adapter types: GPUs first; `None` for the rest.
    fn gpu_rank(t: DeviceType) -> Option<u8> {
        match t {
            DeviceType::DiscreteGpu => Some(0),
            DeviceType::IntegratedGpu => Some(1),
            DeviceType::VirtualGpu => Some(2),
            DeviceType::Cpu | DeviceType::Other => None,
        }
    }

    /// The wgpu device on the best GPU, or, unless `gpu_only`, on the first
    /// adapter of any type (a software Vulkan driver on a machine without a
    /// GPU); `None` when there is no such adapter.
    pub(super) fn device(gpu_only: bool) -> Result<Option<(Device, String)>> {
        let instance = Instance::new(InstanceDescriptor::new_without_display_handle_from_env());
        let all: Vec<AdapterInfo> = block_on(instance.enumerate_adapters(Backends::PRIMARY))
            .iter()
            .map(Adapter::get_info)
            .collect();
        let best_gpu = all
            .iter()
            .filter_map(|a| gpu_rank(a.device_type).map(|r| (r, a)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, a)| a);
        let Some(info) = best_gpu.or(if gpu_only { None } else { all.first() }) else {
            return Ok(None);
        };
        // burn numbers adapters within their type, in wgpu's enumeration order.
        let index = all
            .iter()
            .filter(|a| a.device_type == info.device_type)
            .position(|a| a == info)
            .unwrap_or(0);
        let (kind, what) = match info.device_type {
            DeviceType::DiscreteGpu => (DeviceKind::DiscreteGpu(index), "discrete GPU"),
            DeviceType::IntegratedGpu => (DeviceKind::IntegratedGpu(index), "integrated GPU"),
            DeviceType::VirtualGpu => (DeviceKind::VirtualGpu(index), "virtual GPU"),
            DeviceType::Cpu => (DeviceKind::Cpu, "software adapter on the CPU"),
            DeviceType::Other => (DeviceKind::Cpu, "adapter"),
        };
        Ok(Some((
            Device::wgpu(kind),
            format!("wgpu ({}, {:?}, {what})", info.name, info.backend),
        )))
    }
}

#[cfg(not(feature = "wgpu"))]
mod gpu {
    use burn::tensor::Device;

    use crate::{Error, Result};

    /// No GPU can be used without wgpu compiled in: `auto` falls back to the
    /// CPU, and asking for wgpu says how to get it.
    pub(super) fn device(gpu_only: bool) -> Result<Option<(Device, String)>> {
        if gpu_only {
            return Ok(None);
        }
        Err(Error::Device(
            "wgpu is not compiled into this build of charter (only the `cpu` backend, \
             burn's flex, is): rebuild with `--features wgpu`, or use `--device cpu`"
                .to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_cpu_selects() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("wgpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Wgpu);
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!(select_device(DeviceChoice::Cpu, false).is_ok());
        assert!(
            describe(DeviceChoice::Cpu)
                .unwrap()
                .starts_with("cpu (burn flex")
        );
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn without_wgpu_auto_is_the_cpu_and_wgpu_says_how_to_get_it() {
        assert!(describe(DeviceChoice::Auto).unwrap().starts_with("cpu"));
        let err = select_device(DeviceChoice::Wgpu, false).unwrap_err();
        assert!(err.to_string().contains("--features wgpu"), "{err}");
    }
}
