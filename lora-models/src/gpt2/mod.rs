//! GPT-2 (Radford et al. 2019) with Hugging Face checkpoints, tokenizer and generation.
//!
//! ```no_run
//! # fn main() -> Result<(), lora_models::ModelError> {
//! use burn::prelude::*;
//! use lora_core::LoraConfig;
//! use lora_models::gpt2::{CAttnMode, Gpt2LmHeadModel, inject_gpt2_lora};
//!
//! let device = Device::flex();
//! let (model, _config) = Gpt2LmHeadModel::from_pretrained("gpt2-dir", &device)?;
//! let lora = LoraConfig::new(4, 32.0, &["c_attn"]).with_dropout(0.1);
//! let (model, lora) = inject_gpt2_lora(model, &lora, "default", CAttnMode::QueryValue)?;
//! # let _ = (model, lora);
//! # Ok(())
//! # }
//! ```

mod config;
mod generate;
mod loader;
mod lora;
mod model;
mod segmented;

pub use crate::activation::Activation;
pub use config::Gpt2Config;
pub use generate::{Decoding, Generation, GenerationConfig};
pub use loader::normalize_keys;
pub use lora::{CAttnMode, default_targets, inject_gpt2_lora};
pub use model::{
    Gpt2Attention, Gpt2Block, Gpt2LmHeadModel, Gpt2Mlp, Gpt2Model, KvCache, LayerCache,
    attention_mask_4d,
};
pub use segmented::{MemoryOptions, SegmentedStep};
