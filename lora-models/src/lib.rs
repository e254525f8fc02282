//! # lora-models: GPT-2 and RoBERTa/BERT for burn, LoRA-capable, Hugging Face compatible
//!
//! Models load local Hugging Face directories (`config.json`, `model.safetensors` or
//! `pytorch_model.bin`, tokenizer files) and give the same numbers as transformers. Module paths
//! equal Hugging Face's (`transformer.h.0.attn.c_attn`), every linear layer is a
//! [`lora_core::LoraLinear`], so [`lora_core::inject_adapter`] and PEFT adapter files work on them
//! directly.
#![warn(missing_docs)]

pub mod activation;
pub mod bert;
mod checkpoint;
pub mod error;
pub mod gpt2;
pub mod hf;
mod init;
pub mod tokenizer;
pub mod train;

pub use error::{ModelError, Result};
pub use tokenizer::TextTokenizer;

/// Attention scores are the largest activation of a long sequence (`[batch, heads, queries,
/// keys]`): a clear error when they would exceed the device's per-tensor limit, instead of a
/// failure inside a kernel.
pub(crate) fn check_scores_fit(device: &burn::prelude::Device, shape: [usize; 4]) -> Result<()> {
    let hint = "use fewer sequences per batch or shorter sequences";
    Ok(lora_core::device::check_fits(
        device,
        "attention scores",
        &shape,
        hint,
    )?)
}

/// Whole `[batch, seq, vocab]` logits must fit the device's per-tensor limit (training losses
/// are chunked under it instead: `Gpt2LmHeadModel::lm_loss`).
pub(crate) fn check_logits_fit(device: &burn::prelude::Device, shape: [usize; 3]) -> Result<()> {
    let hint = "score fewer tokens at once; a training loss can be computed in chunks";
    Ok(lora_core::device::check_fits(
        device, "logits", &shape, hint,
    )?)
}
