//! Loading BERT / RoBERTa from a local Hugging Face directory: `config.json` plus
//! `model.safetensors` (or shards, or `pytorch_model.bin`), keys with a `roberta.` / `bert.`
//! prefix or none, PyTorch `[out, in]` linear weights transposed to burn's `[in, out]`,
//! LayerNorm `weight`/`bias` or the legacy `gamma`/`beta`. A checkpoint without the task's head
//! gets a freshly initialised head, and the load says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use lora_core::LoraSites;
use lora_core::io::HostTensor;

use super::config::{BertConfig, EncoderFamily};
use super::model::{
    BertForSequenceClassification, BertModel, RobertaForMaskedLM, RobertaForSequenceClassification,
};
use crate::error::{ModelError, Result};
use crate::hf::{check_untied_head, read_weights, unread_tensor};

/// What a load did besides filling the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The weights file (the first one when sharded).
    pub weights: PathBuf,
    /// Parameters (Hugging Face names) the checkpoint did not have, freshly initialised: a
    /// task head (or BERT's pooler) that the checkpoint was not trained with.
    pub newly_initialized: Vec<String>,
    /// Checkpoint keys the model did not use (e.g. another task's head).
    pub unused: Vec<String>,
}

impl LoadReport {
    /// transformers' warning when something was freshly initialised, else `None`.
    pub fn warning(&self, class: &str) -> Option<String> {
        if self.newly_initialized.is_empty() {
            return None;
        }
        Some(format!(
            "Some weights of {class} were not initialized from the checkpoint at {} and are newly \
             initialized: [{}]. You should probably TRAIN this model on a down-stream task to be \
             able to use it for predictions and inference.",
            self.weights.display(),
            self.newly_initialized.join(", ")
        ))
    }
}

/// Options of [`EncoderCheckpoint::load_pretrained`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Overrides the config's label count (e.g. to fine-tune a base checkpoint on a task).
    pub num_labels: Option<usize>,
    /// A head whose label count differs from the config's is dropped and freshly initialised
    /// instead of being an error (transformers' `ignore_mismatched_sizes`).
    pub ignore_mismatched_head: bool,
}

/// A loaded model with its config and what the load did.
#[derive(Debug)]
pub struct Pretrained<M> {
    /// The model.
    pub model: M,
    /// Its config (with `num_labels` as overridden).
    pub config: BertConfig,
    /// Fresh and unused parameters.
    pub report: LoadReport,
}

/// The models that load from Hugging Face checkpoints, and what PEFT assumes about them.
pub trait EncoderCheckpoint: Module + LoraSites + Sized {
    /// transformers' class name, e.g. `RobertaForSequenceClassification`.
    const CLASS: &'static str;
    /// The family the class belongs to (`None`: either).
    const FAMILY: Option<EncoderFamily>;
    /// Modules that may be missing from a checkpoint and are then freshly initialised.
    const HEAD_MODULES: &'static [&'static str];
    /// The head tensor whose first PyTorch dimension is the label count, if any.
    const LABEL_KEY: Option<&'static str>;
    /// PEFT's `task_type` for this class.
    const PEFT_TASK_TYPE: &'static str;
    /// What PEFT puts in `modules_to_save` for this task (the classifier for `SEQ_CLS`).
    const PEFT_MODULES_TO_SAVE: &'static [&'static str];

    /// A freshly (lazily) initialised model.
    fn build(config: &BertConfig, device: &Device) -> Self;

    /// Prefix of the encoder body's keys in this class's checkpoints (`roberta`, `bert`, or
    /// none for the bare body).
    fn body_prefix(config: &BertConfig) -> Option<&'static str> {
        Some(config.family().prefix())
    }

    /// Loads config and weights from a Hugging Face directory, reporting fresh and unused
    /// parameters instead of printing them.
    fn load_pretrained(
        dir: impl AsRef<Path>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<Pretrained<Self>> {
        load::<Self>(dir.as_ref(), device, options)
    }

    /// Loads config and weights from a Hugging Face directory. A head the checkpoint lacks is
    /// freshly initialised, with transformers' warning on stderr.
    fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<(Self, BertConfig)> {
        let p = Self::load_pretrained(dir, device, &LoadOptions::default())?;
        if let Some(w) = p.report.warning(Self::CLASS) {
            eprintln!("warning: {w}");
        }
        Ok((p.model, p.config))
    }
}

impl EncoderCheckpoint for BertModel {
    const CLASS: &'static str = "BertModel";
    const FAMILY: Option<EncoderFamily> = None;
    const HEAD_MODULES: &'static [&'static str] = &["pooler"];
    const LABEL_KEY: Option<&'static str> = None;
    const PEFT_TASK_TYPE: &'static str = "FEATURE_EXTRACTION";
    const PEFT_MODULES_TO_SAVE: &'static [&'static str] = &[];
    fn build(config: &BertConfig, device: &Device) -> Self {
        BertModel::new(config, true, device)
    }
    fn body_prefix(_: &BertConfig) -> Option<&'static str> {
        None
    }
}

impl EncoderCheckpoint for RobertaForSequenceClassification {
    const CLASS: &'static str = "RobertaForSequenceClassification";
    const FAMILY: Option<EncoderFamily> = Some(EncoderFamily::Roberta);
    const HEAD_MODULES: &'static [&'static str] = &["classifier"];
    const LABEL_KEY: Option<&'static str> = Some("classifier.out_proj.weight");
    const PEFT_TASK_TYPE: &'static str = "SEQ_CLS";
    const PEFT_MODULES_TO_SAVE: &'static [&'static str] = &["classifier", "score"];
    fn build(config: &BertConfig, device: &Device) -> Self {
        Self::new(config, device)
    }
}

impl EncoderCheckpoint for BertForSequenceClassification {
    const CLASS: &'static str = "BertForSequenceClassification";
    const FAMILY: Option<EncoderFamily> = Some(EncoderFamily::Bert);
    const HEAD_MODULES: &'static [&'static str] = &["classifier", "bert.pooler"];
    const LABEL_KEY: Option<&'static str> = Some("classifier.weight");
    const PEFT_TASK_TYPE: &'static str = "SEQ_CLS";
    const PEFT_MODULES_TO_SAVE: &'static [&'static str] = &["classifier", "score"];
    fn build(config: &BertConfig, device: &Device) -> Self {
        Self::new(config, device)
    }
}

impl EncoderCheckpoint for RobertaForMaskedLM {
    const CLASS: &'static str = "RobertaForMaskedLM";
    const FAMILY: Option<EncoderFamily> = Some(EncoderFamily::Roberta);
    const HEAD_MODULES: &'static [&'static str] = &["lm_head"];
    const LABEL_KEY: Option<&'static str> = None;
    // PEFT has no masked-LM task type; FEATURE_EXTRACTION wraps the model without a head rule.
    const PEFT_TASK_TYPE: &'static str = "FEATURE_EXTRACTION";
    const PEFT_MODULES_TO_SAVE: &'static [&'static str] = &[];
    fn build(config: &BertConfig, device: &Device) -> Self {
        Self::new(config, device)
    }
}

fn is_body_key(key: &str) -> bool {
    ["embeddings.", "encoder.", "pooler."]
        .iter()
        .any(|p| key.starts_with(p))
}

/// Puts checkpoint keys into the form the model expects: buffers and tied copies dropped,
/// legacy `gamma`/`beta` renamed to `weight`/`bias`, the body under `body_prefix` (whatever
/// prefix, `bert.` / `roberta.` or none, the file used), `lm_head.decoder.bias` folded into
/// `lm_head.bias`. Errors when the keys are not a BERT/RoBERTa encoder's.
pub fn normalize_keys(
    state: HashMap<String, HostTensor>,
    body_prefix: Option<&str>,
    path: &Path,
) -> Result<HashMap<String, HostTensor>> {
    let mut out = HashMap::with_capacity(state.len());
    let mut decoder_bias = None;
    for (key, value) in state {
        // Buffers (position ids, token-type ids) and the tied decoder weight are not parameters.
        if key.ends_with("position_ids")
            || key.ends_with("embeddings.token_type_ids")
            || key == "lm_head.decoder.weight"
        {
            continue;
        }
        let mut key = match key.rsplit_once('.') {
            Some((module, "gamma")) => format!("{module}.weight"),
            Some((module, "beta")) => format!("{module}.bias"),
            _ => key,
        };
        for p in ["bert.", "roberta."] {
            if let Some(rest) = key.strip_prefix(p)
                && is_body_key(rest)
            {
                key = rest.to_string();
            }
        }
        if key == "lm_head.decoder.bias" {
            decoder_bias = Some(value);
            continue;
        }
        let key = match body_prefix {
            Some(p) if is_body_key(&key) => format!("{p}.{key}"),
            _ => key,
        };
        out.insert(key, value);
    }
    if let Some(b) = decoder_bias {
        out.entry("lm_head.bias".to_string()).or_insert(b);
    }
    let word = match body_prefix {
        Some(p) => format!("{p}.embeddings.word_embeddings.weight"),
        None => "embeddings.word_embeddings.weight".into(),
    };
    if !out.contains_key(&word) {
        let foreign = [
            "transformer.",
            "wte.",
            "h.0.",
            "model.layers",
            "gpt_neox.",
            "deberta.",
        ];
        let hint = out
            .keys()
            .find_map(|k| foreign.iter().find(|f| k.starts_with(*f) || k.contains(*f)))
            .map(|f| f.trim_end_matches('.').to_string());
        return Err(match hint {
            Some(found) => ModelError::WrongArchitecture {
                path: path.to_path_buf(),
                expected: "a BERT or RoBERTa encoder".into(),
                found,
            },
            None => ModelError::MissingTensor {
                path: path.to_path_buf(),
                key: word,
            },
        });
    }
    Ok(out)
}

fn in_modules(key: &str, modules: &[&str]) -> bool {
    modules
        .iter()
        .any(|m| key == *m || key.starts_with(&format!("{m}.")))
}

/// `config.json` for class `M`, with `options.num_labels` applied; another family's config is
/// an error.
fn class_config<M: EncoderCheckpoint>(dir: &Path, options: &LoadOptions) -> Result<BertConfig> {
    let mut config = BertConfig::load(dir)?;
    if let Some(n) = options.num_labels
        && n != config.num_labels()
    {
        config = config.with_num_labels(n);
        config.validate().map_err(|reason| ModelError::Config {
            path: dir.join("config.json"),
            reason,
        })?;
    }
    if let Some(family) = M::FAMILY
        && config.family() != family
    {
        return Err(ModelError::WrongArchitecture {
            path: dir.join("config.json"),
            expected: M::CLASS.into(),
            found: config
                .model_type
                .clone()
                .unwrap_or_else(|| format!("{:?}", config.family())),
        });
    }
    Ok(config)
}

fn load<M: EncoderCheckpoint>(
    dir: &Path,
    device: &Device,
    options: &LoadOptions,
) -> Result<Pretrained<M>> {
    let config = class_config::<M>(dir, options)?;
    let (path, state) = read_weights(dir)?;
    if M::HEAD_MODULES.contains(&"lm_head") {
        let is_table = |k: &str| k.ends_with("embeddings.word_embeddings.weight");
        let tied = config.tie_word_embeddings;
        check_untied_head(tied, &state, "lm_head.decoder.weight", is_table, &path)?;
    }
    let mut state = normalize_keys(state, M::body_prefix(&config), &path)?;
    if let Some(key) = M::LABEL_KEY
        && let Some(t) = state.get(key)
    {
        let found = t.shape.first().copied().unwrap_or(0);
        let expected = config.num_labels();
        if found != expected {
            if !options.ignore_mismatched_head {
                return Err(ModelError::LabelCountMismatch {
                    path,
                    key: key.into(),
                    expected,
                    found,
                });
            }
            if let Some(head) = M::HEAD_MODULES.first() {
                state.retain(|k, _| !in_modules(k, &[head]));
            }
        }
    }
    // The model is built from the config before the weights arrive: a layer count the
    // checkpoint does not back would allocate for nothing (or abort, for a corrupt count).
    let last = format!(
        "encoder.layer.{}.output.dense.weight",
        config.num_hidden_layers - 1
    );
    if !state.keys().any(|k| k.ends_with(&last)) {
        return Err(ModelError::MissingTensor { path, key: last });
    }
    // Parameters are lazy: only what the checkpoint lacks is ever randomly initialised.
    let model = M::build(&config, device);
    let (model, report) = lora_core::load_state_dict(model, state, false)?;
    let (fresh, missing): (Vec<String>, Vec<String>) = report
        .missing
        .into_iter()
        .partition(|k| in_modules(k, M::HEAD_MODULES));
    if let Some(key) = missing.into_iter().next() {
        return Err(ModelError::MissingTensor { path, key });
    }
    // transformers reads every embeddings/encoder tensor and this class's head: one nothing
    // here reads is an architecture option that is not implemented. Other classes' heads
    // (RoBERTa's pooler, an MLM head under a classifier) are skipped, as transformers does.
    let unread = report.unused.iter().find(|k| {
        let body = k
            .strip_prefix("roberta.")
            .or_else(|| k.strip_prefix("bert."))
            .unwrap_or(k);
        body.starts_with("embeddings.")
            || body.starts_with("encoder.")
            || in_modules(k, M::HEAD_MODULES)
    });
    if let Some(key) = unread {
        return Err(unread_tensor(path, key));
    }
    Ok(Pretrained {
        model,
        config,
        report: LoadReport {
            weights: path,
            newly_initialized: fresh,
            unused: report.unused,
        },
    })
}
