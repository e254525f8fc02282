//! # lora-train: the training loop for LoRA fine-tuning on burn
//!
//! This crate will hold the training side of lora-burn, and knows models only through a small
//! trait (batch → loss and outputs):
//! - a `Trainer` running on any burn `Device` with autodiff (flex, ndarray, wgpu);
//! - AdamW with PyTorch's defaults over the trainable parameters only, LoRA+, gradient clipping
//!   and accumulation; linear-warmup, cosine and constant schedules;
//! - data readers (JSONL, CSV, TSV), tokenization, dynamic padding and seeded shuffling;
//! - evaluation metrics (accuracy, F1, MCC, Pearson/Spearman, perplexity);
//! - adapter-only checkpoints in PEFT's format with optimizer, schedule, data-order and RNG
//!   state, written atomically, resumed exactly; progress bars, a JSONL metrics log and curves.
//!
//! It is being built in the `lora-train` issue; today it only fixes the crate's place in the
//! workspace (examples → lora-train → lora-models → lora-core → burn).
