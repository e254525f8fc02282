//! The activations of the supported checkpoints; both GELUs are lora-core's fused ones.

use burn::prelude::*;
use burn::tensor::activation::{relu, silu};
use lora_core::{gelu, gelu_tanh};

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

impl Activation {
    /// Applies the activation.
    ///
    /// # Shapes
    /// - `x`: any → same
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::GeluNew => gelu_tanh(x),
            Activation::Gelu => gelu(x),
            Activation::Relu => relu(x),
            Activation::Silu => silu(x),
        }
    }
}
