//! # lora-bench
//!
//! Measures what LoRA is for: training-step time and peak memory of **full fine-tuning**, **our
//! LoRA** (`lora_core` adapters, lora-train's AdamW over the adapters only) and **burn's built-in
//! [`apply_lora`](burn::module::Module::apply_lora)** on the same weights; and inference latency
//! of the base model, the model with an unmerged adapter, and with the adapter merged.
//!
//! Models have the real shapes of GPT-2 small and RoBERTa-base with random weights (nothing to
//! download). The `lora-bench` program runs every measurement in its own process, so each peak
//! resident-memory figure belongs to one configuration, and optionally runs
//! `scripts/bench_torch.py` (PyTorch + PEFT) in the same invocation for a reference on the same
//! CPU. It prints a table of absolute figures and ratios and writes JSON.
//!
//! ```no_run
//! use burn::prelude::*;
//! use lora_bench::arch::{Arch, LoraShape, Size, Targets, TrainMode};
//! use lora_bench::measure::{RunSpec, run_train};
//!
//! let spec = RunSpec {
//!     arch: Arch::Gpt2,
//!     size: Size::Real,
//!     device: "flex".into(),
//!     batch: 4,
//!     seq: 128,
//!     warmup: 1,
//!     steps: 5,
//!     lora: LoraShape::default(),
//!     targets: Targets::Attention,
//!     vocab: None,
//!     // Activation checkpointing and a chunked loss (GPT-2): off.
//!     memory: Default::default(),
//! };
//! let run = run_train(&spec, TrainMode::Lora, &Device::flex())?;
//! println!("median step {:.2} s, peak RSS {:?}", run.median_s, run.peak_rss_bytes);
//! # Ok::<(), lora_bench::BenchError>(())
//! ```
#![warn(missing_docs)]

pub mod arch;
pub mod measure;
pub mod report;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// From lora-core (injection, merging).
    #[error(transparent)]
    Lora(#[from] lora_core::LoraError),
    /// From lora-models (a forward pass).
    #[error(transparent)]
    Model(#[from] lora_models::ModelError),
    /// A setting that cannot be benchmarked.
    #[error("{0}")]
    Invalid(String),
    /// The device failed (synchronisation, reading a result back).
    #[error("device: {0}")]
    Device(String),
    /// Reading or writing a file, or running a child process.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Results that are not the expected JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, BenchError>;
