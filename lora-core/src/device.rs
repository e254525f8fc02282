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

/// The largest tensor, in bytes, that `device` can hand to one kernel, or `None` where no limit
/// applies (the CPU backends). On wgpu this is the adapter's storage-buffer binding limit
/// (capped by its buffer-size limit): 128 MiB on Mesa's lavapipe and WebGPU's defaults, so a
/// 50257 × 768 f32 table (147 MiB) must be split across buffers there. Opens the device.
pub fn max_tensor_bytes(device: &Device) -> Option<u64> {
    #[cfg(feature = "wgpu")]
    {
        use burn::backend::DispatchDevice;
        // Autodiff wraps the device that owns the buffers.
        let inner = device.clone().inner();
        if let DispatchDevice::Cube(cube) = inner.as_dispatch() {
            return Some(cube.client().properties().memory.max_page_size);
        }
    }
    let _ = device;
    None
}

/// Whether `device` computes on the host CPU (flex, ndarray), as opposed to a GPU through cubecl.
pub fn is_host(device: &Device) -> bool {
    #[cfg(feature = "wgpu")]
    if backend_is(device, |d| {
        matches!(d, burn::backend::DispatchDevice::Cube(_))
    }) {
        return false;
    }
    let _ = device;
    true
}

/// Whether `device` is flex (plain or autodiff), where lora-core has its own fused CPU kernels
/// ([`gelu`](crate::gelu), [`gelu_tanh`](crate::gelu_tanh)).
pub fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if backend_is(device, |d| {
        matches!(d, burn::backend::DispatchDevice::Flex(_))
    }) {
        return true;
    }
    let _ = device;
    false
}

/// `test` of the backend device under `device`'s autodiff wrapper, if any.
#[cfg(any(feature = "flex", feature = "wgpu"))]
fn backend_is(device: &Device, test: impl Fn(&burn::backend::DispatchDevice) -> bool) -> bool {
    test(device.clone().inner().as_dispatch())
}

/// `n` seeds drawn from `device`'s generator, so a run seeded with `Device::seed` stays
/// reproducible wherever seeds are handed out (dropout masks, recomputed segments). Each is an
/// integer below 2³¹.
pub fn draw_seeds(device: &Device, n: usize) -> Result<Vec<u64>> {
    let draws = Tensor::<1>::random(
        [n],
        burn::tensor::Distribution::Uniform(0.0, 2f64.powi(31)),
        device,
    );
    let values = draws
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_err(|e| LoraError::Device(format!("reading seeds: {e:?}")))?;
    Ok(values.into_iter().map(|v| v as u64).collect())
}

/// Errors with [`LoraError::TooLarge`] when an f32 tensor of `shape` would exceed `device`'s
/// per-tensor limit ([`max_tensor_bytes`]); `tensor` names it and `hint` says what to change.
pub fn check_fits(device: &Device, tensor: &str, shape: &[usize], hint: &str) -> Result<()> {
    let Some(limit) = max_tensor_bytes(device) else {
        return Ok(());
    };
    let bytes = shape.iter().map(|&d| d as u64).product::<u64>() * 4;
    if bytes <= limit {
        return Ok(());
    }
    Err(LoraError::TooLarge {
        tensor: tensor.to_string(),
        shape: shape.to_vec(),
        bytes,
        limit,
        hint: hint.to_string(),
    })
}
