//! Choosing the burn device to run on.
//!
//! burn's `Device::default()` prefers wgpu whenever it is compiled in, so a
//! machine without a GPU would silently train on a software driver; the
//! device is therefore always chosen explicitly here. wgpu is compiled in
//! only with the `wgpu` cargo feature (it adds most of a cold build).

use std::str::FromStr;

use burn::tensor::Device;

use crate::{Error, Result};

/// What `--device` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// wgpu when a hardware adapter exists, else the CPU.
    Auto,
    /// burn's pure-Rust `flex` CPU backend.
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
        DeviceChoice::Auto => match gpu::hardware_adapter() {
            Some(adapter) => gpu::device(&adapter),
            None => cpu(),
        },
        DeviceChoice::Wgpu => gpu::device(&gpu::preferred_adapter()?),
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

    use crate::{Error, Result};

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

    fn adapters() -> Vec<Adapter> {
        let instance = Instance::new(InstanceDescriptor::new_without_display_handle_from_env());
        block_on(instance.enumerate_adapters(Backends::PRIMARY))
    }

    fn kind_index(info: &AdapterInfo, all: &[AdapterInfo]) -> Option<DeviceKind> {
        // burn numbers adapters within their type, in wgpu's enumeration order.
        let index = all
            .iter()
            .filter(|a| a.device_type == info.device_type)
            .position(|a| a == info)?;
        Some(match info.device_type {
            DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(index),
            DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(index),
            DeviceType::VirtualGpu => DeviceKind::VirtualGpu(index),
            DeviceType::Cpu | DeviceType::Other => return None,
        })
    }

    /// The adapter `auto` trains on: a discrete, integrated or virtual GPU.
    pub(super) fn hardware_adapter() -> Option<AdapterInfo> {
        let all: Vec<AdapterInfo> = adapters().iter().map(Adapter::get_info).collect();
        let rank = |t: DeviceType| match t {
            DeviceType::DiscreteGpu => 0,
            DeviceType::IntegratedGpu => 1,
            DeviceType::VirtualGpu => 2,
            DeviceType::Cpu | DeviceType::Other => 3,
        };
        all.iter()
            .filter(|a| rank(a.device_type) < 3)
            .min_by_key(|a| rank(a.device_type))
            .cloned()
    }

    /// The adapter `--device wgpu` uses: the best GPU, else any adapter
    /// (a software Vulkan driver on a machine without a GPU).
    pub(super) fn preferred_adapter() -> Result<AdapterInfo> {
        if let Some(gpu) = hardware_adapter() {
            return Ok(gpu);
        }
        adapters().first().map(Adapter::get_info).ok_or_else(|| {
            Error::Device(
                "wgpu found no adapter: install a GPU driver with Vulkan support \
                     (on a machine without a GPU, Mesa's software driver: Debian's \
                     `mesa-vulkan-drivers libvulkan1`), or use `--device cpu`"
                    .to_string(),
            )
        })
    }

    pub(super) fn device(info: &AdapterInfo) -> (Device, String) {
        let all: Vec<AdapterInfo> = adapters().iter().map(Adapter::get_info).collect();
        let kind = kind_index(info, &all).unwrap_or(DeviceKind::Cpu);
        let what = match info.device_type {
            DeviceType::DiscreteGpu => "discrete GPU",
            DeviceType::IntegratedGpu => "integrated GPU",
            DeviceType::VirtualGpu => "virtual GPU",
            DeviceType::Cpu => "software adapter on the CPU",
            DeviceType::Other => "adapter",
        };
        (
            Device::wgpu(kind),
            format!("wgpu ({}, {:?}, {what})", info.name, info.backend),
        )
    }
}

#[cfg(not(feature = "wgpu"))]
mod gpu {
    use burn::tensor::Device;

    use crate::{Error, Result};

    /// No adapter can be used without wgpu compiled in.
    pub(super) enum AdapterInfo {}

    pub(super) fn hardware_adapter() -> Option<AdapterInfo> {
        None
    }

    pub(super) fn preferred_adapter() -> Result<AdapterInfo> {
        Err(Error::Device(
            "wgpu is not compiled into this build of charter (only the `cpu` backend, \
             burn's flex, is): rebuild with `--features wgpu`, or use `--device cpu`"
                .to_string(),
        ))
    }

    pub(super) fn device(info: &AdapterInfo) -> (Device, String) {
        match *info {}
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
