//! The error type of lora-models.

use std::path::PathBuf;

use lora_core::LoraError;

/// Everything that can go wrong loading or running a model. Messages name the file, key or
/// field concerned.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A LoRA operation failed (adapter files, targeting, tensor files).
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// A required file is not in the model directory.
    #[error("{what} not found in {dir} (looked for {looked_for})")]
    MissingFile {
        /// What was looked for ("weights", "config.json", "tokenizer").
        what: &'static str,
        /// The directory searched.
        dir: PathBuf,
        /// The file names tried.
        looked_for: String,
    },
    /// `config.json` is unreadable or has invalid values.
    #[error("invalid model config {path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint is for another architecture than the one being loaded.
    #[error("{path} is a `{found}` checkpoint, not {expected}")]
    WrongArchitecture {
        /// The config or weights file.
        path: PathBuf,
        /// The architecture requested.
        expected: String,
        /// The architecture found.
        found: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("checkpoint {path} has no tensor `{key}` (needed by the model)")]
    MissingTensor {
        /// Weights file.
        path: PathBuf,
        /// The Hugging Face key.
        key: String,
    },
    /// Reading a PyTorch pickle failed.
    #[error("cannot read PyTorch checkpoint {path}: {reason}")]
    Pickle {
        /// The `.bin` file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The tokenizer files could not be loaded or used.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// An input is longer than the model accepts.
    #[error("sequence of {len} tokens exceeds the model's maximum of {max} positions")]
    SequenceTooLong {
        /// Tokens given.
        len: usize,
        /// Positions the model has.
        max: usize,
    },
    /// A classification head in the checkpoint has another number of labels than the config.
    #[error(
        "{path}: head tensor `{key}` has {found} labels but the config asks for {expected} \
         (load with `ignore_mismatched_head` to start a fresh head instead)"
    )]
    LabelCountMismatch {
        /// Weights file.
        path: PathBuf,
        /// The head tensor.
        key: String,
        /// Labels in the config (or requested).
        expected: usize,
        /// Labels in the checkpoint.
        found: usize,
    },
    /// An argument is invalid (empty batch, mismatched shapes, bad generation settings).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
