//! The activations of the supported checkpoints, computed as cheaply as burn allows.

use burn::prelude::*;
use burn::tensor::activation::{gelu, relu, sigmoid, silu};

use serde::{Deserialize, Serialize};

/// The activations the supported checkpoints use (GPT-2's `activation_function`, BERT's
/// `hidden_act`), with Hugging Face's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `gelu_new` (tanh approximation; GPT-2's own).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    /// Exact GELU (erf).
    #[serde(rename = "gelu")]
    Gelu,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
    /// SiLU / swish.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

/// `gelu_new`, GPT-2's tanh approximation of GELU: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
///
/// Computed as `x·σ(2·√(2/π)·(x + 0.044715·x³))`, the same function (`0.5·(1 + tanh z) = σ(2z)`),
/// with a squared term instead of `powf` and burn's fused sigmoid (and its one-op backward)
/// instead of `tanh` plus the arithmetic around it: on the CPU backends forward and backward
/// run about 3× faster than burn's `gelu_approximate`, and fewer intermediates stay alive for
/// the backward pass. Matches `gelu_approximate` to ~5e-7.
///
/// # Shapes
/// - `x`: any → same
pub fn gelu_new<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    // 2·√(2/π)
    const C: f64 = 1.595_769_121_605_730_7;
    let z = x.clone() * (x.clone().square() * (C * 0.044_715) + C);
    x * sigmoid(z)
}

impl Activation {
    /// Applies the activation.
    ///
    /// # Shapes
    /// - `x`: any → same
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::GeluNew => gelu_new(x),
            Activation::Gelu => gelu(x),
            Activation::Relu => relu(x),
            Activation::Silu => silu(x),
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::activation::gelu_approximate;

    #[test]
    fn gelu_new_equals_the_tanh_form() {
        let device = Device::flex();
        let x = Tensor::<1>::random([4096], Distribution::Normal(0.0, 3.0), &device);
        let diff: f32 = (gelu_new(x.clone()) - gelu_approximate(x))
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 2e-6, "{diff}");
    }
}
