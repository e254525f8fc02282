//! Choosing a burn [`Device`] by name, and probing for a GPU without panicking.

#[cfg(feature = "wgpu")]
use std::sync::OnceLock;

use burn::prelude::*;

use crate::error::{LoraError, Result};

/// Device names [`parse_device`] accepts, as compiled into this build.
pub fn device_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "vulkan") {
        names.push("vulkan");
    }
    if cfg!(feature = "metal") {
        names.push("metal");
    }
    names
}

/// The device called `name` (`flex`, `ndarray`, `wgpu`, `vulkan`, `metal`), without autodiff.
/// GPU devices are probed first, so a machine without an adapter gets an error, not a panic.
pub fn parse_device(name: &str) -> Result<Device> {
    let unknown = || {
        LoraError::Device(format!(
            "unknown device `{name}` (this build supports: {})",
            device_names().join(", ")
        ))
    };
    match name {
        #[cfg(feature = "flex")]
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        // burn deprecates ndarray in favour of flex; we still support it.
        "ndarray" => Ok(Device::ndarray()),
        #[cfg(feature = "wgpu")]
        "wgpu" => wgpu_device().map_err(LoraError::Device),
        #[cfg(feature = "vulkan")]
        "vulkan" => probe_pinned(Device::vulkan(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "metal")]
        "metal" => probe_pinned(Device::metal(burn::tensor::DeviceKind::DefaultDevice)),
        _ => Err(unknown()),
    }
}

/// The default wgpu device if an adapter exists (probed once per process; later calls return
/// the same device or the same reason).
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> std::result::Result<Device, String> {
    static PROBE: OnceLock<std::result::Result<Device, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            Device::wgpu_options()
                .init()
                .map_err(|e| format!("no wgpu adapter available: {e}"))
        })
        .clone()
}

/// Without the `wgpu` feature there is never a wgpu device.
#[cfg(not(feature = "wgpu"))]
pub fn wgpu_device() -> std::result::Result<Device, String> {
    Err("this build has no wgpu support (enable the `wgpu` feature)".into())
}

#[cfg(any(feature = "vulkan", feature = "metal"))]
fn probe_pinned(device: Device) -> Result<Device> {
    // A pinned API panics on first use when it is missing; catch that once, here.
    let d = device.clone();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _ = Tensor::<1>::zeros([1], &d).into_data();
    }))
    .map_err(|_| {
        LoraError::Device("the requested GPU API has no adapter on this machine".into())
    })?;
    Ok(device)
}
