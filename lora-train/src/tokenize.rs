//! Text to tokenized datasets: the [`Tokenizer`] the pipeline needs, [`DataConfig`], and
//! [`Record`]s (read from files, or built in memory with [`Record::in_memory`]) tokenized into a
//! [`TextDataset`] with truncation and labels, as [`TextDataset::from_records`] and
//! [`load_text_datasets`] do. lora-models implements [`Tokenizer`] for its `TextTokenizer`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::batch::{ItemTarget, TargetKind, TextItem};
use crate::dataset::TextDataset;
use crate::error::{Result, TrainError};
use crate::records::{Columns, LabelMap, RawTarget, Record, Task, read_records};
use crate::sampler::split_indices;

/// A tokenizer failure, as the tokenizer phrased it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenizerError(pub String);

/// Text to token ids, as [`TextDataset::from_records`](crate::TextDataset::from_records)
/// uses it: plain encoding for causal-LM data, single texts and pairs with the model's
/// special tokens and truncation for classification data, and the ids of named tokens (end of
/// text, padding).
pub trait Tokenizer {
    /// Ids of `text` with the tokenizer's special tokens (GPT-2's: none), not truncated.
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError>;

    /// Ids and token-type (segment) ids of `text`, or of the pair `text`, `pair`, with the
    /// special tokens of a single input or a pair, truncated as
    /// [`truncating`](Self::truncating) set.
    fn encode_input(
        &self,
        text: &str,
        pair: Option<&str>,
    ) -> Result<(Vec<u32>, Vec<u32>), TokenizerError>;

    /// How many special tokens [`encode_input`](Self::encode_input) adds to a single input
    /// (`pair` false) or a pair.
    fn num_special_tokens(&self, pair: bool) -> Result<usize, TokenizerError>;

    /// A copy whose [`encode_input`](Self::encode_input) truncates to at most `max_length`
    /// tokens, special tokens included, the longer text of a pair first (transformers'
    /// `truncation=True`).
    fn truncating(&self, max_length: usize) -> Result<Self, TokenizerError>
    where
        Self: Sized;

    /// The id of `token`, if the vocabulary has it.
    fn token_id(&self, token: &str) -> Option<u32>;
}

/// How records become model inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataConfig {
    /// Which columns hold what (default: causal LM on `prompt`/`completion`).
    pub columns: Columns,
    /// What is learned (default: causal LM).
    pub task: Task,
    /// Maximum tokens per example, special tokens included (default 128). Longer inputs are
    /// truncated: text pairs longest-first; prompt/completion from the left of the prompt, so
    /// the completion survives; plain text at the end.
    pub max_length: usize,
    /// Causal LM: end every completion (or text) with the tokenizer's end-of-text token so the
    /// model learns to stop (default true).
    pub append_eos: bool,
    /// Fraction of the training file held out for validation when no validation file is given
    /// (default 0.1; 0 disables evaluation).
    pub validation_ratio: f64,
    /// Seed of that split (default 42).
    pub split_seed: u64,
    /// Padding id; `None` (default): the tokenizer's `<pad>`/`[PAD]`, else its end-of-text
    /// token, else 0. Padding is masked out, so the value matters only to models that derive
    /// positions from it (RoBERTa).
    pub pad_id: Option<u32>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            columns: Columns::prompt_completion("prompt", "completion"),
            task: Task::CausalLm,
            max_length: 128,
            append_eos: true,
            validation_ratio: 0.1,
            split_seed: 42,
            pad_id: None,
        }
    }
}

impl DataConfig {
    /// Checks that the fields fit together.
    pub fn validate(&self) -> Result<()> {
        if matches!(self.columns, Columns::Inputs { .. }) {
            return Err(TrainError::config(
                "columns",
                "unlabeled input columns have nothing to learn from; name a label or completion column",
            ));
        }
        let lm_cols = self.columns.is_lm();
        match (&self.task, lm_cols) {
            (Task::CausalLm, false) => {
                return Err(TrainError::config(
                    "columns",
                    "a causal-LM task needs prompt/completion, joined or text columns, not labeled ones",
                ));
            }
            (Task::Classification { .. } | Task::Regression, true) => {
                return Err(TrainError::config(
                    "columns",
                    "classification and regression need labeled columns (text, optional pair, label)",
                ));
            }
            _ => {}
        }
        if let Task::Classification { labels: Some(l) } = &self.task
            && l.len() < 2
        {
            return Err(TrainError::config(
                "labels",
                "at least two classes are needed",
            ));
        }
        if self.max_length < 2 {
            return Err(TrainError::config("max_length", "must be at least 2"));
        }
        if !(0.0..1.0).contains(&self.validation_ratio) {
            return Err(TrainError::config("validation_ratio", "must be in [0, 1)"));
        }
        Ok(())
    }
}

impl TextDataset {
    /// Tokenizes records per `config` (see [`DataConfig`] for truncation), from a file or built
    /// in memory. Classification labels go through `labels` (default: inferred from these
    /// records, or `config`'s names).
    ///
    /// Errors name the file and line of a record whose label is unknown or not a number, whose
    /// completion is empty, or that leaves nothing to predict.
    pub fn from_records<T: Tokenizer>(
        records: &[Record],
        config: &DataConfig,
        tokenizer: &T,
        labels: Option<&LabelMap>,
    ) -> Result<Self> {
        config.validate()?;
        if records.is_empty() {
            return Err(TrainError::EmptyDataset {
                what: "(records)".into(),
            });
        }
        let pad_id = config.pad_id.unwrap_or_else(|| default_pad_id(tokenizer));
        let label_map = match (&config.task, labels) {
            (Task::CausalLm | Task::Regression, _) => None,
            (_, Some(m)) => Some(m.clone()),
            (
                Task::Classification {
                    labels: Some(names),
                },
                None,
            ) => Some(LabelMap::new(names.clone())),
            (Task::Classification { labels: None }, None) => Some(LabelMap::infer(records)),
        };
        let (items, kind) = match &config.task {
            Task::CausalLm => (lm_items(records, config, tokenizer)?, TargetKind::Tokens),
            Task::Classification { .. } | Task::Regression => {
                let items = labeled_items(records, config, tokenizer, label_map.as_ref())?;
                (items, labeled_kind(label_map.as_ref())?)
            }
        };
        let mut ds = Self::from_items(items, pad_id, kind)?;
        ds.labels = label_map;
        Ok(ds)
    }
}

/// The error of record `r` when the tokenizer fails on it.
fn tokenizer_error(r: &Record, e: TokenizerError) -> TrainError {
    r.source.error(format!("tokenizer: {e}"))
}

/// Classification or regression items: each text (or pair) with the model's special tokens,
/// truncated longest-first to `max_length`, and its class or value.
fn labeled_items<T: Tokenizer>(
    records: &[Record],
    config: &DataConfig,
    tokenizer: &T,
    label_map: Option<&LabelMap>,
) -> Result<Vec<TextItem>> {
    let Some(first) = records.first() else {
        return Ok(Vec::new());
    };
    let specials = tokenizer
        .num_special_tokens(first.text_pair.is_some())
        .map_err(|e| tokenizer_error(first, e))?;
    if config.max_length <= specials {
        return Err(TrainError::config(
            "max_length",
            format!(
                "{} leaves no room beside {specials} special tokens",
                config.max_length
            ),
        ));
    }
    let tok = tokenizer
        .truncating(config.max_length)
        .map_err(|e| TrainError::config("max_length", e.to_string()))?;
    let mut items = Vec::with_capacity(records.len());
    for r in records {
        let target = label_target(r, label_map)?;
        let (input_ids, token_type_ids) = tok
            .encode_input(&r.text, r.text_pair.as_deref())
            .map_err(|e| tokenizer_error(r, e))?;
        if input_ids.is_empty() {
            return Err(r.source.error("the text has no tokens"));
        }
        items.push(TextItem {
            input_ids,
            token_type_ids,
            target,
        });
    }
    Ok(items)
}

/// The class of `r`'s label in `label_map`, or its value (regression: no map).
fn label_target(r: &Record, label_map: Option<&LabelMap>) -> Result<ItemTarget> {
    let RawTarget::Label(label) = &r.target else {
        return Err(r.source.error("no label"));
    };
    match label_map {
        Some(m) => Ok(ItemTarget::Class(m.index(label).ok_or_else(|| {
            r.source.error(format!(
                "label `{label}` is not one of the known classes ({})",
                m.names().join(", ")
            ))
        })?)),
        None => match label.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(ItemTarget::Value(v as f32)),
            _ => Err(r.source.error(format!(
                "label `{label}` is not a finite number (regression task)"
            ))),
        },
    }
}

/// Classes of `label_map` (at least two), or values without one.
fn labeled_kind(label_map: Option<&LabelMap>) -> Result<TargetKind> {
    let Some(m) = label_map else {
        return Ok(TargetKind::Values);
    };
    if m.num_classes() < 2 {
        return Err(TrainError::config(
            "labels",
            format!(
                "the data has only the class(es) [{}]; classification needs at least two",
                m.names().join(", ")
            ),
        ));
    }
    Ok(TargetKind::Classes {
        num_classes: m.num_classes(),
    })
}

/// Causal-LM items: prompt and completion (or plain text) ids, the completion ended by the
/// end-of-text token if `append_eos`, truncated to `max_length` from the left of the prompt.
fn lm_items<T: Tokenizer>(
    records: &[Record],
    config: &DataConfig,
    tokenizer: &T,
) -> Result<Vec<TextItem>> {
    let eos = if config.append_eos {
        Some(eos_id(tokenizer).ok_or_else(|| {
            TrainError::config(
                "append_eos",
                "the tokenizer has no end-of-text token (<|endoftext|> or </s>)",
            )
        })?)
    } else {
        None
    };
    let encode = |r: &Record, s: &str| -> Result<Vec<u32>> {
        if s.is_empty() {
            return Ok(Vec::new());
        }
        tokenizer.encode(s).map_err(|e| tokenizer_error(r, e))
    };
    let mut items = Vec::with_capacity(records.len());
    for r in records {
        let (prompt, mut completion) = match &r.target {
            RawTarget::Completion(c) => {
                if c.trim().is_empty() {
                    return Err(r.source.error("the completion is empty"));
                }
                (encode(r, &r.text)?, encode(r, c)?)
            }
            _ => (Vec::new(), encode(r, &r.text)?),
        };
        completion.extend(eos);
        items.push(lm_item(r, prompt, completion, config.max_length)?);
    }
    Ok(items)
}

/// One causal-LM item from its prompt and completion ids: at most `max` tokens (the prompt
/// loses its start first), the completion as targets.
fn lm_item(
    r: &Record,
    mut prompt: Vec<u32>,
    mut completion: Vec<u32>,
    max: usize,
) -> Result<TextItem> {
    if prompt.len() + completion.len() > max {
        if completion.len() >= max {
            prompt.clear();
            completion.truncate(max);
        } else {
            let keep = max - completion.len();
            prompt.drain(..prompt.len() - keep);
        }
    }
    let loss_from = prompt.len();
    prompt.extend(completion);
    let ids = prompt;
    if ids.len() <= loss_from.max(1) {
        return Err(r.source.error(format!(
            "nothing to predict: {} token(s) after truncation to {max} (a text needs at least 2)",
            ids.len()
        )));
    }
    Ok(TextItem {
        token_type_ids: vec![0; ids.len()],
        input_ids: ids,
        target: ItemTarget::Tokens { loss_from },
    })
}

/// The padding id a tokenizer suggests: `<pad>`, `[PAD]`, the end-of-text token, or 0.
pub fn default_pad_id<T: Tokenizer + ?Sized>(tokenizer: &T) -> u32 {
    ["<pad>", "[PAD]"]
        .iter()
        .find_map(|t| tokenizer.token_id(t))
        .or_else(|| eos_id(tokenizer))
        .unwrap_or(0)
}

/// The tokenizer's end-of-text token (`<|endoftext|>` or `</s>`).
pub fn eos_id<T: Tokenizer + ?Sized>(tokenizer: &T) -> Option<u32> {
    ["<|endoftext|>", "</s>"]
        .iter()
        .find_map(|t| tokenizer.token_id(t))
}

/// Reads and tokenizes the training file and, if given, the validation file; with no
/// validation file, holds out `config.validation_ratio` of the training file (seeded by
/// `config.split_seed`). Class labels are inferred from the training data (or the whole file
/// before a split) unless `config.task` names them, so both datasets share one label map.
pub fn load_text_datasets<T: Tokenizer>(
    train: &Path,
    valid: Option<&Path>,
    config: &DataConfig,
    tokenizer: &T,
) -> Result<(TextDataset, Option<TextDataset>)> {
    config.validate()?;
    let train_records = read_records(train, &config.columns)?;
    let labels = match &config.task {
        Task::Classification {
            labels: Some(names),
        } => Some(LabelMap::new(names.clone())),
        Task::Classification { labels: None } => Some(LabelMap::infer(&train_records)),
        _ => None,
    };
    let train_ds = TextDataset::from_records(&train_records, config, tokenizer, labels.as_ref())?;
    match valid {
        Some(path) => {
            let records = read_records(path, &config.columns)?;
            let valid_ds = TextDataset::from_records(&records, config, tokenizer, labels.as_ref())?;
            Ok((train_ds, Some(valid_ds)))
        }
        None if config.validation_ratio > 0.0 => {
            let (t, v) = split_indices(train_ds.len(), config.validation_ratio, config.split_seed);
            if t.is_empty() || v.is_empty() {
                return Err(TrainError::EmptyDataset {
                    what: format!(
                        "{} after a {:.0}% validation split ({} examples)",
                        train.display(),
                        config.validation_ratio * 100.0,
                        train_ds.len()
                    ),
                });
            }
            Ok((train_ds.subset(&t)?, Some(train_ds.subset(&v)?)))
        }
        None => Ok((train_ds, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One id per byte, `<eos>` = 256: a tokenizer that is not Hugging Face's.
    struct Bytes;

    impl Tokenizer for Bytes {
        fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn encode_input(
            &self,
            text: &str,
            pair: Option<&str>,
        ) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
            let a = self.encode(text)?;
            let b = self.encode(pair.unwrap_or(""))?;
            let types = [vec![0; a.len()], vec![1; b.len()]].concat();
            Ok(([a, b].concat(), types))
        }
        fn num_special_tokens(&self, _: bool) -> Result<usize, TokenizerError> {
            Ok(0)
        }
        fn truncating(&self, _: usize) -> Result<Self, TokenizerError> {
            Ok(Bytes)
        }
        fn token_id(&self, token: &str) -> Option<u32> {
            (token == "</s>").then_some(256)
        }
    }

    #[test]
    fn records_built_in_memory_tokenize_without_a_file() {
        let records = [("ab", "cd"), ("x", "")]
            .iter()
            .enumerate()
            .map(|(i, (p, c))| Record::in_memory(i, *p, None, RawTarget::Completion(c.to_string())))
            .collect::<Vec<_>>();
        let config = DataConfig::default();
        let err = TextDataset::from_records(&records, &config, &Bytes, None).unwrap_err();
        assert_eq!(err.to_string(), "<memory>:2: the completion is empty");
        let ds = TextDataset::from_records(&records[..1], &config, &Bytes, None).unwrap();
        let item = &ds.items()[0];
        assert_eq!(item.input_ids, [97, 98, 99, 100, 256]);
        assert_eq!(item.target, ItemTarget::Tokens { loss_from: 2 });
        assert_eq!(ds.pad_id(), 256, "no pad token: end of text");
    }
}
