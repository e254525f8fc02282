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
