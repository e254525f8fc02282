//! # lora-examples: command-line LoRA fine-tuning
//!
//! Shared pieces of the programs `gpt2-lora` (GPT-2, causal LM / E2E data-to-text) and the
//! encoder program: device selection, model-directory and data-file resolution (local paths,
//! or Hugging Face hub ids with the `hub` feature, see [`hub`]), Ctrl-C handling, one-line
//! errors.
#![warn(missing_docs)]

pub mod hub;

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

impl ModelArgs {
    /// What an adapter's `base_model_name_or_path` says: `--model` as given, the hub id for a
    /// hub model, else the local path (as transformers records `name_or_path`), so that PEFT's
    /// `AutoPeftModel*.from_pretrained(adapter_dir)` finds the base model.
    pub fn base_model_name_or_path(&self) -> String {
        self.model.clone()
    }
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
    /// The trainer settings both programs take the same way: output directory, length, batch,
    /// learning rate with a linear schedule after `warmup`, seed, resume and overwrite. Each
    /// program adds its own (weight decay, loss, metric) on top.
    pub fn trainer_config(
        &self,
        num_epochs: usize,
        batch_size: usize,
        learning_rate: f64,
        warmup: lora_train::Warmup,
    ) -> lora_train::TrainerConfig {
        lora_train::TrainerConfig {
            output_dir: self.out.clone(),
            num_epochs,
            max_steps: self.max_steps,
            batch_size,
            optimizer: lora_train::OptimizerConfig {
                learning_rate,
                ..lora_train::OptimizerConfig::default()
            },
            schedule: lora_train::ScheduleConfig {
                kind: lora_train::ScheduleKind::Linear,
                warmup,
            },
            seed: self.seed,
            resume: self.resume_mode(),
            overwrite_output_dir: self.overwrite,
            ..lora_train::TrainerConfig::default()
        }
    }

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
    /// Training was stopped by Ctrl-C after saving a checkpoint; the message says where.
    /// The programs print it as is and exit with status 130 (the shell's code for SIGINT).
    #[error("{0}")]
    Interrupted(String),
}

/// `Result` with [`CliError`].
pub type Result<T> = std::result::Result<T, CliError>;

/// The device named on the command line (`flex`, `ndarray`, `wgpu`, `vulkan`, `metal`).
pub fn device(name: &str) -> Result<Device> {
    Ok(lora_core::device::parse_device(name)?)
}

/// The model directory `--model` names: a local directory, or (with the `hub` feature) a hub
/// id such as `gpt2` or `FacebookAI/roberta-base`, downloaded into the Hugging Face cache.
/// Without the feature a hub id is refused with a line that says how to pass a directory.
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
    if hub::is_repo_id(arg) {
        return hub_model(arg);
    }
    Err(CliError::Message(format!(
        "--model {arg}: no such directory"
    )))
}

#[cfg(feature = "hub")]
fn hub_model(id: &str) -> Result<PathBuf> {
    eprintln!("--model {id}: fetching from the Hugging Face hub");
    hub::download_model(id).map_err(|e| CliError::Message(format!("--model {id}: {e}")))
}

#[cfg(not(feature = "hub"))]
fn hub_model(id: &str) -> Result<PathBuf> {
    Err(CliError::Message(format!(
        "--model {id}: no such directory, and this build cannot download `{id}` from the \
         Hugging Face hub (rebuild with `--features hub`); or download it elsewhere and pass \
         its local directory"
    )))
}

/// The data file a data flag (`flag`, e.g. `--data`) names: a local file as it is; a hub
/// dataset id (`owner/name`, or `owner/name:split`; `default_split` otherwise) downloaded with
/// the `hub` feature, refused with one line without it. A missing local file is returned
/// unchanged so that reading it reports the error.
pub fn data_file(arg: &Path, flag: &str, default_split: &str) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    match arg
        .to_str()
        .and_then(|s| hub::parse_dataset(s, default_split))
    {
        Some(d) => hub_dataset(&d, flag),
        None => Ok(arg.to_path_buf()),
    }
}

#[cfg(feature = "hub")]
fn hub_dataset(d: &hub::DatasetRef, flag: &str) -> Result<PathBuf> {
    eprintln!(
        "{flag} {}: fetching split `{}` from the Hugging Face hub",
        d.repo, d.split
    );
    hub::download_dataset(d)
        .map_err(|e| CliError::Message(format!("{flag} {}:{}: {e}", d.repo, d.split)))
}

#[cfg(not(feature = "hub"))]
fn hub_dataset(d: &hub::DatasetRef, flag: &str) -> Result<PathBuf> {
    Err(CliError::Message(format!(
        "{flag} {}: no such file, and this build cannot download hub datasets (rebuild with \
         `--features hub`); pass a local .jsonl, .csv, .tsv or .txt file",
        d.repo
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

/// Makes Ctrl-C stop a training run cleanly: the first press asks `interrupter` to stop after
/// the current optimizer step (the trainer then saves a checkpoint and returns); a second
/// press exits at once with status 130.
pub fn stop_on_ctrl_c(interrupter: lora_train::Interrupter) -> Result<()> {
    ctrlc::set_handler(move || {
        if interrupter.is_stopped() {
            // Second press: the user does not want to wait for the step to finish.
            eprintln!("\ninterrupted again: exiting without waiting");
            std::process::exit(130);
        }
        interrupter.stop();
        eprintln!(
            "\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)"
        );
    })
    .map_err(|e| CliError::Message(format!("cannot install the Ctrl-C handler: {e}")))
}

/// The one-line [`CliError::Interrupted`] for a run that Ctrl-C stopped, or `None` when it ran
/// to its end.
pub fn interruption(
    interrupter: &lora_train::Interrupter,
    summary: &lora_train::TrainSummary,
) -> Option<CliError> {
    if !interrupter.is_stopped() || summary.stop_reason != lora_train::StopReason::Interrupted {
        return None;
    }
    let saved = summary
        .last_checkpoint
        .as_ref()
        .map_or_else(|| "no checkpoint".to_string(), |p| p.display().to_string());
    Some(CliError::Interrupted(format!(
        "interrupted after step {}: checkpoint {saved} saved; continue with --resume",
        summary.global_step
    )))
}

/// The process exit status of a program's result: 0; 130 after Ctrl-C (message printed as
/// is); 1 otherwise, after printing `error: <one line>`.
pub fn exit_code(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(CliError::Interrupted(msg)) => {
            eprintln!("{msg}");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes JSON (pretty) to stdout.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
