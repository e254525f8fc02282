//! The one error type of lora-train.

use std::path::PathBuf;

use lora_core::LoraError;

/// Everything that can go wrong while loading data, training, evaluating or checkpointing.
/// Every variant names what the user supplied (a file and line, a config field, a checkpoint
/// directory), so the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A LoRA operation failed (adapter files, tensor files).
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// The model failed (e.g. a sequence longer than it accepts): the model crate's own error
    /// (lora-models converts its `ModelError` into this).
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
    /// A trainer or data setting is invalid.
    #[error("invalid setting `{field}`: {reason}")]
    InvalidConfig {
        /// The field, e.g. `batch_size`.
        field: String,
        /// Why the value is rejected.
        reason: String,
    },
    /// A data file has a row that cannot be used.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        /// The data file.
        path: PathBuf,
        /// 1-based line number of the row (for CSV/TSV, the line where the record starts).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A token id (or token-type id) is outside what the model's embeddings hold: a tokenizer
    /// from another checkpoint, added tokens, or a pair template on a model without segments.
    #[error(
        "example {example} of the {dataset} holds {what} id {id}, but the model has {limit} \
         (a tokenizer from another checkpoint or with added tokens?)"
    )]
    IdOutOfRange {
        /// `token` or `token-type`.
        what: &'static str,
        /// The id.
        id: u32,
        /// How many ids the model's table has.
        limit: usize,
        /// 0-based index of the example in its dataset (its row among the file's examples).
        example: usize,
        /// Which dataset (`training data`, `validation data`, `evaluation data`).
        dataset: String,
    },
    /// A data file (or the part of it selected) holds no example.
    #[error("dataset {what} is empty")]
    EmptyDataset {
        /// Which dataset (usually the file).
        what: String,
    },
    /// The tokenizer failed on an input.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A model step returned something the trainer cannot use (wrong target kind, zero count).
    #[error("model step: {0}")]
    Step(String),
    /// The loss or the gradient norm became NaN or infinite; training stopped without saving.
    #[error(
        "non-finite {what} ({value}) at step {step}; training stopped, the last good checkpoint is {}",
        last_checkpoint.as_ref().map_or("(none saved yet)".to_string(), |p| p.display().to_string())
    )]
    NonFinite {
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The value, as printed (`NaN`, `inf`).
        value: f64,
        /// The optimizer step during which it happened (1-based).
        step: usize,
        /// The newest checkpoint on disk, which is left untouched.
        last_checkpoint: Option<PathBuf>,
    },
    /// A checkpoint is missing, incomplete, or does not match the run resuming from it.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("cannot read", "cannot write", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file does not parse or has values of the wrong type.
    #[error("cannot parse {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's reason (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A metric was given input it cannot score (no hypotheses, mismatched counts, a
    /// hypothesis without references).
    #[error("cannot compute the metric: {0}")]
    Metric(String),
    /// Tensor data could not be read back from the device (a backend problem, not user input).
    #[error("tensor data of `{what}` could not be read back: {reason}")]
    Data {
        /// The tensor concerned.
        what: String,
        /// Why.
        reason: String,
    },
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    /// An [`InvalidConfig`](Self::InvalidConfig) error.
    pub fn config(field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
