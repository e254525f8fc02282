//! The one error type of lora-core.

use std::path::PathBuf;

/// Everything that can go wrong in lora-core. Every variant names what the user supplied
/// (a config field, a module path, a file, a tensor key) so the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A config field holds a value PEFT would also reject (or one we cannot honour).
    #[error("invalid LoRA config: `{field}` {reason}")]
    InvalidConfig {
        /// The PEFT field name, e.g. `r` or `lora_dropout`.
        field: String,
        /// Why the value is rejected.
        reason: String,
    },
    /// The config asks for a feature lora-burn does not implement (e.g. DoRA).
    #[error("unsupported LoRA feature: {0}")]
    Unsupported(String),
    /// `target_modules` (or a regex in the config) matched no module of the model.
    #[error("target_modules {targets} matched no module; adaptable modules are: {available}")]
    NoTargetMatched {
        /// The targets as written in the config.
        targets: String,
        /// The module paths that could have been targeted.
        available: String,
    },
    /// A regular expression in the config does not compile.
    #[error("invalid regex `{pattern}` in `{field}`: {reason}")]
    Regex {
        /// The config field holding it.
        field: String,
        /// The pattern as written.
        pattern: String,
        /// Why it was refused (a syntax error, or a construct Python reads differently).
        reason: String,
    },
    /// A `LoraLinear`/`LoraEmbedding` of the model is not reachable through its `LoraSites`
    /// (usually a field missing from `lora_sites!`), so targets would silently skip it.
    #[error(
        "`{module}` is a LoRA layer that the model's LoraSites does not list (a field missing \
         from lora_sites!?); listed sites: {listed}"
    )]
    UnlistedSite {
        /// The module path the visitor found.
        module: String,
        /// The sites LoraSites lists.
        listed: String,
    },
    /// An operation named an adapter that the module does not have.
    #[error("module `{module}` has no adapter named `{adapter}`")]
    UnknownAdapter {
        /// Module path.
        module: String,
        /// Adapter name.
        adapter: String,
    },
    /// An adapter of this name already exists on the module.
    #[error("module `{module}` already has an adapter named `{adapter}`")]
    DuplicateAdapter {
        /// Module path.
        module: String,
        /// Adapter name.
        adapter: String,
    },
    /// A tensor has the wrong shape for where it should go.
    #[error("tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor key (file key or module path).
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape that was supplied.
        found: Vec<usize>,
    },
    /// A tensor the model needs is not in the file.
    #[error("tensor `{key}` is missing from {file}")]
    MissingTensor {
        /// The key that was looked for.
        key: String,
        /// The file that was read.
        file: PathBuf,
    },
    /// The file holds a tensor that belongs to nothing in the model (or to an unsupported feature).
    #[error("tensor `{key}` in {file} does not belong to any module of the model: {reason}")]
    UnexpectedTensor {
        /// The key found in the file.
        key: String,
        /// The file that was read.
        file: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A tensor of a dtype we cannot read (e.g. integer weights).
    #[error("tensor `{key}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The tensor key.
        key: String,
        /// The dtype as safetensors names it.
        dtype: String,
    },
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file does not parse or has values of the wrong type.
    #[error("cannot parse {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's reason (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file is truncated or corrupt.
    #[error("cannot read safetensors file {path}: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The safetensors crate's reason.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A PyTorch pickle file (`*.bin`) is malformed or holds what cannot be read.
    #[error("cannot read PyTorch file {path}: {reason}")]
    Pickle {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A tensor holds NaN or infinity: an adapter file's tensor, or a weight a merge would
    /// produce (`safe_merge`).
    #[error("`{key}` holds NaN or infinite values ({context})")]
    NonFinite {
        /// The tensor or parameter path.
        key: String,
        /// Where it came from.
        context: String,
    },
    /// The requested device does not exist in this build or on this machine.
    #[error("{0}")]
    Device(String),
    /// A tensor would exceed what the device can hand to one kernel (wgpu's storage-buffer
    /// binding limit: 128 MiB on lavapipe and under WebGPU's defaults).
    #[error(
        "`{tensor}` {shape:?} needs {} MiB, above this device's {} MiB per-tensor limit ({hint})",
        mib(*bytes),
        mib(*limit)
    )]
    TooLarge {
        /// What the tensor is.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Its size in bytes.
        bytes: u64,
        /// The device's limit in bytes.
        limit: u64,
        /// What to change so it fits.
        hint: String,
    },
    /// Tensor data could not be converted (this indicates a backend problem, not user input).
    #[error("tensor data of `{key}` could not be read back: {reason}")]
    Data {
        /// The tensor concerned.
        key: String,
        /// Why.
        reason: String,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 20) as f64)
}

/// `Result` with [`LoraError`].
pub type Result<T, E = LoraError> = std::result::Result<T, E>;

impl LoraError {
    pub(crate) fn config(field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}
