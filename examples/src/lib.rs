//! # lora-examples: command-line LoRA fine-tuning
//!
//! Shared pieces of the programs `gpt2-lora` (GPT-2, causal LM / E2E data-to-text) and the
//! encoder program: device selection, model-directory resolution, one-line errors.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use clap::Args;

/// Where the model comes from and what it runs on (shared by every subcommand).
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Local Hugging Face model directory (config.json, weights, tokenizer files).
    #[arg(long)]
    pub model: String,
    /// flex, ndarray, wgpu, vulkan or metal.
    #[arg(long, default_value = "flex")]
    pub device: String,
}

/// Run-control flags of `train` (shared by the programs).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Output directory: adapter/, best/, checkpoint-*/, metrics.jsonl, curves.png, run.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this many optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Seed of adapter (and head) init, data order and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Replace a previous run's checkpoints in --out.
    #[arg(long)]
    pub overwrite: bool,
}

impl RunArgs {
    /// The trainer's resume setting.
    pub fn resume_mode(&self) -> lora_train::Resume {
        if self.resume {
            lora_train::Resume::Latest
        } else {
            lora_train::Resume::No
        }
    }
}

/// An error the programs print as one line before exiting with status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A model or adapter error.
    #[error(transparent)]
    Model(#[from] lora_models::ModelError),
    /// A LoRA error.
    #[error(transparent)]
    Lora(#[from] lora_core::LoraError),
    /// A training error (data, checkpoints, non-finite loss).
    #[error(transparent)]
    Train(#[from] lora_train::TrainError),
    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Message(String),
}

/// `Result` with [`CliError`].
pub type Result<T> = std::result::Result<T, CliError>;

/// The device named on the command line (`flex`, `ndarray`, `wgpu`, `vulkan`, `metal`).
pub fn device(name: &str) -> Result<Device> {
    Ok(lora_core::device::parse_device(name)?)
}

/// A local model directory. Hub ids (`gpt2`, `roberta-base`) need network access and are
/// refused with a message that says how to pass a directory instead.
pub fn model_dir(arg: &str) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        return Err(CliError::Message(format!(
            "--model {arg}: expected a directory holding config.json and the weights"
        )));
    }
    let looks_like_hub_id = !arg.contains(std::path::MAIN_SEPARATOR) || arg.split('/').count() == 2;
    if looks_like_hub_id {
        return Err(CliError::Message(format!(
            "--model {arg}: no such directory, and this build cannot download `{arg}` from the \
             Hugging Face hub (offline); download it elsewhere and pass its local directory"
        )));
    }
    Err(CliError::Message(format!(
        "--model {arg}: no such directory"
    )))
}

/// A training error, with the output-directory conflict phrased in the programs' flags
/// (`--resume`, `--overwrite`, `--out`) rather than the library's field names.
pub fn train_error(e: lora_train::TrainError, out: &Path) -> CliError {
    match e {
        lora_train::TrainError::InvalidConfig { field, .. } if field == "output_dir" => {
            CliError::Message(format!(
                "--out {} already holds a run's checkpoints: pass --resume to continue it, \
                 --overwrite to replace it, or another --out",
                out.display()
            ))
        }
        other => other.into(),
    }
}

/// Writes JSON (pretty) to stdout.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
