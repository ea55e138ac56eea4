//! Choosing the burn device to run on.
//!
//! burn's `Device::default()` prefers wgpu whenever it is compiled in, so a
//! machine without a GPU would silently train on a software driver; the
//! device is therefore always chosen explicitly here.

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
    /// burn's wgpu backend (not compiled into this build).
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

/// The burn device for `choice`, with autodiff when `autodiff` (for training).
pub fn select_device(choice: DeviceChoice, autodiff: bool) -> Result<Device> {
    let device = match choice {
        // No wgpu in this build, so no hardware adapter can be used.
        DeviceChoice::Auto | DeviceChoice::Cpu => Device::flex(),
        DeviceChoice::Wgpu => {
            return Err(Error::Device(
                "wgpu is not compiled into this build of charter (only the `cpu` backend, \
                 burn's flex, is); use `--device cpu`"
                    .to_string(),
            ));
        }
    };
    Ok(if autodiff { device.autodiff() } else { device })
}

/// The device `choice` resolves to, in words (printed and recorded).
pub fn describe(choice: DeviceChoice) -> String {
    match choice {
        DeviceChoice::Auto | DeviceChoice::Cpu => format!(
            "cpu (burn flex, {} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        DeviceChoice::Wgpu => "wgpu (not compiled in)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_selects_and_wgpu_says_it_is_not_compiled_in() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert!(select_device(DeviceChoice::Cpu, false).is_ok());
        assert!(select_device(DeviceChoice::Auto, true).is_ok());
        let err = select_device("wgpu".parse().unwrap(), false).unwrap_err();
        assert!(err.to_string().contains("not compiled"), "{err}");
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }
}
