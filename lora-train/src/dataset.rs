//! Tokenized text datasets and their batches: tokenization with truncation, labels, dynamic
//! padding, a validation split when only one file is given.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::prelude::*;
use lora_models::TextTokenizer;
use lora_models::loss::IGNORE_INDEX;
use serde::{Deserialize, Serialize};
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

use crate::data::{Columns, LabelMap, RawTarget, Record, Task, read_records};
use crate::error::{Result, TrainError};
use crate::model::{BatchSource, IdLimits};
use crate::sampler::split_indices;

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

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct TextItem {
    /// Token ids, special tokens included.
    pub input_ids: Vec<u32>,
    /// Segment ids (0 for the first text, 1 for the second), same length.
    pub token_type_ids: Vec<u32>,
    /// What is learned from it.
    pub target: ItemTarget,
}

/// The supervised target of a [`TextItem`].
#[derive(Debug, Clone, PartialEq)]
pub enum ItemTarget {
    /// A class index.
    Class(usize),
    /// A regression value.
    Value(f32),
    /// Causal LM: tokens from `loss_from` on are predicted (0 for plain text; the prompt
    /// length for prompt/completion).
    Tokens {
        /// Index of the first token that is a target.
        loss_from: usize,
    },
}

/// The kind of targets a dataset holds (all its items share it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Classes `0..num_classes`.
    Classes {
        /// Number of classes.
        num_classes: usize,
    },
    /// Real values.
    Values,
    /// Next-token prediction.
    Tokens,
}

/// A batch of text examples, right-padded to its longest example (dynamic padding).
#[derive(Debug, Clone)]
pub struct TextBatch {
    /// Token ids `[batch, seq]`, padded with the pad id.
    pub input_ids: Tensor<2, Int>,
    /// `[batch, seq]`: 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<2, Int>,
    /// Segment ids `[batch, seq]` (0 on padding).
    pub token_type_ids: Tensor<2, Int>,
    /// Targets.
    pub targets: BatchTargets,
    /// Number of loss terms: examples, or predicted tokens for a causal LM.
    pub num_targets: usize,
    /// Number of real (non-padding) tokens.
    pub num_tokens: usize,
}

/// The targets of a [`TextBatch`].
#[derive(Debug, Clone)]
pub enum BatchTargets {
    /// Class labels.
    Classes {
        /// `[batch]`.
        labels: Tensor<1, Int>,
        /// The same labels on the host (for metrics).
        gold: Vec<usize>,
        /// Number of classes.
        num_classes: usize,
    },
    /// Regression values.
    Values {
        /// `[batch]`.
        values: Tensor<1>,
        /// The same values on the host.
        gold: Vec<f64>,
    },
    /// Causal-LM labels `[batch, seq]`: the ids, with [`IGNORE_INDEX`] on padding and prompt
    /// positions (the loss shifts them by one).
    Tokens {
        /// `[batch, seq]`.
        labels: Tensor<2, Int>,
    },
}

impl TextBatch {
    /// Batch size.
    pub fn len(&self) -> usize {
        self.input_ids.dims()[0]
    }

    /// Whether the batch is empty (never, for batches built here).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class labels `[batch]`, or an error for other targets.
    pub fn class_labels(&self) -> Result<Tensor<1, Int>> {
        match &self.targets {
            BatchTargets::Classes { labels, .. } => Ok(labels.clone()),
            _ => Err(self.wrong("class labels")),
        }
    }

    /// Host class labels, or an error for other targets.
    pub fn gold_classes(&self) -> Result<&[usize]> {
        match &self.targets {
            BatchTargets::Classes { gold, .. } => Ok(gold),
            _ => Err(self.wrong("class labels")),
        }
    }

    /// Regression targets `[batch]` and their host copy, or an error for other targets.
    pub fn values(&self) -> Result<(Tensor<1>, &[f64])> {
        match &self.targets {
            BatchTargets::Values { values, gold } => Ok((values.clone(), gold)),
            _ => Err(self.wrong("regression values")),
        }
    }

    /// Causal-LM labels `[batch, seq]`, or an error for other targets.
    pub fn token_labels(&self) -> Result<Tensor<2, Int>> {
        match &self.targets {
            BatchTargets::Tokens { labels } => Ok(labels.clone()),
            _ => Err(self.wrong("token labels")),
        }
    }

    fn wrong(&self, wanted: &str) -> TrainError {
        let has = match self.targets {
            BatchTargets::Classes { .. } => "class labels",
            BatchTargets::Values { .. } => "regression values",
            BatchTargets::Tokens { .. } => "token labels",
        };
        TrainError::Step(format!(
            "the model needs {wanted} but the batch holds {has} (check the data task)"
        ))
    }
}

/// Right-pads `items` into a batch on `device`. Every item should have the target kind `kind`
/// (as in a [`TextDataset`]); one that does not is treated as having no target.
pub fn collate(items: &[&TextItem], pad_id: u32, kind: TargetKind, device: &Device) -> TextBatch {
    let b = items.len();
    let t = items
        .iter()
        .map(|i| i.input_ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut ids = vec![pad_id as i64; b * t];
    let mut mask = vec![0i64; b * t];
    let mut types = vec![0i64; b * t];
    let mut labels = vec![IGNORE_INDEX; b * t];
    let mut num_tokens = 0;
    let mut num_lm_targets = 0;
    for (row, item) in items.iter().enumerate() {
        let n = item.input_ids.len();
        num_tokens += n;
        for (j, &id) in item.input_ids.iter().enumerate() {
            ids[row * t + j] = id as i64;
            mask[row * t + j] = 1;
            types[row * t + j] = item.token_type_ids.get(j).copied().unwrap_or(0) as i64;
        }
        if let ItemTarget::Tokens { loss_from } = item.target {
            for j in loss_from..n {
                labels[row * t + j] = item.input_ids[j] as i64;
            }
            // Position 0 predicts nothing (the loss shifts by one).
            num_lm_targets += n.saturating_sub(loss_from.max(1));
        }
    }
    let int2 = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [b, t]), device);
    let (targets, num_targets) = match kind {
        TargetKind::Classes { num_classes } => {
            let gold: Vec<usize> = items
                .iter()
                .map(|i| match i.target {
                    ItemTarget::Class(c) => c,
                    _ => 0,
                })
                .collect();
            let data: Vec<i64> = gold.iter().map(|&c| c as i64).collect();
            (
                BatchTargets::Classes {
                    labels: Tensor::from_data(TensorData::new(data, [b]), device),
                    gold,
                    num_classes,
                },
                b,
            )
        }
        TargetKind::Values => {
            let gold: Vec<f64> = items
                .iter()
                .map(|i| match i.target {
                    ItemTarget::Value(v) => v as f64,
                    _ => 0.0,
                })
                .collect();
            let data: Vec<f32> = gold.iter().map(|&v| v as f32).collect();
            (
                BatchTargets::Values {
                    values: Tensor::from_data(TensorData::new(data, [b]), device),
                    gold,
                },
                b,
            )
        }
        TargetKind::Tokens => (
            BatchTargets::Tokens {
                labels: int2(labels),
            },
            num_lm_targets,
        ),
    };
    TextBatch {
        input_ids: int2(ids),
        attention_mask: int2(mask),
        token_type_ids: int2(types),
        targets,
        num_targets,
        num_tokens,
    }
}

/// A tokenized, in-memory text dataset; a [`BatchSource`] of [`TextBatch`]es and a burn
/// [`Dataset`] of [`TextItem`]s (use [`TextDataset::batcher`] with burn's `DataLoaderBuilder`).
#[derive(Debug, Clone)]
pub struct TextDataset {
    items: Vec<TextItem>,
    pad_id: u32,
    kind: TargetKind,
    labels: Option<LabelMap>,
}

impl TextDataset {
    /// A dataset of already tokenized items. Errors if it is empty, if the items do not all
    /// have the target kind `kind`, if a class is out of range, or if a causal-LM item has
    /// nothing to predict.
    pub fn from_items(items: Vec<TextItem>, pad_id: u32, kind: TargetKind) -> Result<Self> {
        if items.is_empty() {
            return Err(TrainError::EmptyDataset {
                what: "(items)".into(),
            });
        }
        for (i, item) in items.iter().enumerate() {
            let bad = |why: &str| TrainError::config("items", format!("item {i}: {why}"));
            if item.input_ids.is_empty() {
                return Err(bad("no tokens"));
            }
            match (&item.target, kind) {
                (ItemTarget::Class(c), TargetKind::Classes { num_classes })
                    if *c >= num_classes =>
                {
                    return Err(bad(&format!("class {c} is not below {num_classes}")));
                }
                (ItemTarget::Class(_), TargetKind::Classes { .. })
                | (ItemTarget::Value(_), TargetKind::Values) => {}
                (ItemTarget::Tokens { loss_from }, TargetKind::Tokens) => {
                    if item.input_ids.len() <= (*loss_from).max(1) {
                        return Err(bad(
                            "nothing to predict (needs a token after the prompt and after the first position)",
                        ));
                    }
                }
                (t, k) => return Err(bad(&format!("target {t:?} in a dataset of {k:?}"))),
            }
        }
        Ok(Self {
            items,
            pad_id,
            kind,
            labels: None,
        })
    }

    /// Tokenizes records per `config` (see [`DataConfig`] for truncation). Classification labels
    /// go through `labels` (default: inferred from these records, or `config`'s names).
    ///
    /// Errors name the file and line of a record whose label is unknown or not a number, whose
    /// completion is empty, or that leaves nothing to predict.
    pub fn from_records(
        records: &[Record],
        config: &DataConfig,
        tokenizer: &TextTokenizer,
        labels: Option<&LabelMap>,
    ) -> Result<Self> {
        config.validate()?;
        let first = records.first().ok_or_else(|| TrainError::EmptyDataset {
            what: "(records)".into(),
        })?;
        let pad_id = config.pad_id.unwrap_or_else(|| default_pad_id(tokenizer));
        let tok_err = |r: &Record, e: tokenizers::Error| r.source.error(format!("tokenizer: {e}"));
        match &config.task {
            Task::Classification { .. } | Task::Regression => {
                let label_map = match (&config.task, labels) {
                    (Task::Regression, _) => None,
                    (_, Some(m)) => Some(m.clone()),
                    (
                        Task::Classification {
                            labels: Some(names),
                        },
                        None,
                    ) => Some(LabelMap::new(names.clone())),
                    _ => Some(LabelMap::infer(records)),
                };
                let mut tok = tokenizer.inner().clone();
                let specials = tok
                    .encode(
                        if first.text_pair.is_some() {
                            tokenizers::EncodeInput::Dual("".into(), "".into())
                        } else {
                            tokenizers::EncodeInput::Single("".into())
                        },
                        true,
                    )
                    .map(|e| e.len())
                    .map_err(|e| tok_err(first, e))?;
                if config.max_length <= specials {
                    return Err(TrainError::config(
                        "max_length",
                        format!(
                            "{} leaves no room beside {specials} special tokens",
                            config.max_length
                        ),
                    ));
                }
                tok.with_truncation(Some(TruncationParams {
                    max_length: config.max_length,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                    direction: TruncationDirection::Right,
                }))
                .map_err(|e| TrainError::config("max_length", e.to_string()))?;
                let mut items = Vec::with_capacity(records.len());
                for r in records {
                    let RawTarget::Label(label) = &r.target else {
                        return Err(r.source.error("no label"));
                    };
                    let target = match &label_map {
                        Some(m) => ItemTarget::Class(m.index(label).ok_or_else(|| {
                            r.source.error(format!(
                                "label `{label}` is not one of the known classes ({})",
                                m.names().join(", ")
                            ))
                        })?),
                        None => match label.parse::<f64>() {
                            Ok(v) if v.is_finite() => ItemTarget::Value(v as f32),
                            _ => {
                                return Err(r.source.error(format!(
                                    "label `{label}` is not a finite number (regression task)"
                                )));
                            }
                        },
                    };
                    let enc = match &r.text_pair {
                        Some(p) => tok.encode((r.text.as_str(), p.as_str()), true),
                        None => tok.encode(r.text.as_str(), true),
                    }
                    .map_err(|e| tok_err(r, e))?;
                    if enc.get_ids().is_empty() {
                        return Err(r.source.error("the text has no tokens"));
                    }
                    items.push(TextItem {
                        input_ids: enc.get_ids().to_vec(),
                        token_type_ids: enc.get_type_ids().to_vec(),
                        target,
                    });
                }
                let kind = match &label_map {
                    Some(m) => {
                        if m.num_classes() < 2 {
                            return Err(TrainError::config(
                                "labels",
                                format!(
                                    "the data has only the class(es) [{}]; classification needs at least two",
                                    m.names().join(", ")
                                ),
                            ));
                        }
                        TargetKind::Classes {
                            num_classes: m.num_classes(),
                        }
                    }
                    None => TargetKind::Values,
                };
                let mut ds = Self::from_items(items, pad_id, kind)?;
                ds.labels = label_map;
                Ok(ds)
            }
            Task::CausalLm => {
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
                    tokenizer
                        .encode(s)
                        .map_err(|e| r.source.error(format!("tokenizer: {e}")))
                };
                let max = config.max_length;
                let mut items = Vec::with_capacity(records.len());
                for r in records {
                    let (mut prompt, mut completion) = match &r.target {
                        RawTarget::Completion(c) => {
                            if c.trim().is_empty() {
                                return Err(r.source.error("the completion is empty"));
                            }
                            (encode(r, &r.text)?, encode(r, c)?)
                        }
                        _ => (Vec::new(), encode(r, &r.text)?),
                    };
                    completion.extend(eos);
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
                    items.push(TextItem {
                        token_type_ids: vec![0; ids.len()],
                        input_ids: ids,
                        target: ItemTarget::Tokens { loss_from },
                    });
                }
                Self::from_items(items, pad_id, TargetKind::Tokens)
            }
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there is no item (never, for a dataset built here).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items.
    pub fn items(&self) -> &[TextItem] {
        &self.items
    }

    /// The padding id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The target kind shared by all items.
    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// The class names, for classification data.
    pub fn label_names(&self) -> Option<&[String]> {
        self.labels.as_ref().map(LabelMap::names)
    }

    /// The label map, for classification data.
    pub fn label_map(&self) -> Option<&LabelMap> {
        self.labels.as_ref()
    }

    /// The items at `indices` as a new dataset (same padding, kind and labels).
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        let items = indices
            .iter()
            .map(|&i| {
                self.items.get(i).cloned().ok_or_else(|| {
                    TrainError::config(
                        "indices",
                        format!("{i} is out of range ({} items)", self.len()),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut ds = Self::from_items(items, self.pad_id, self.kind)?;
        ds.labels = self.labels.clone();
        Ok(ds)
    }

    /// A burn [`Batcher`] for this dataset's items.
    pub fn batcher(&self) -> TextBatcher {
        TextBatcher {
            pad_id: self.pad_id,
            kind: self.kind,
        }
    }
}

/// The padding id a tokenizer suggests: `<pad>`, `[PAD]`, the end-of-text token, or 0.
pub fn default_pad_id(tokenizer: &TextTokenizer) -> u32 {
    ["<pad>", "[PAD]"]
        .iter()
        .find_map(|t| tokenizer.token_id(t))
        .or_else(|| eos_id(tokenizer))
        .unwrap_or(0)
}

/// The tokenizer's end-of-text token (`<|endoftext|>` or `</s>`).
pub fn eos_id(tokenizer: &TextTokenizer) -> Option<u32> {
    ["<|endoftext|>", "</s>"]
        .iter()
        .find_map(|t| tokenizer.token_id(t))
}

impl BatchSource for TextDataset {
    type Batch = TextBatch;

    fn check_ids(&self, limits: &IdLimits, dataset: &str) -> Result<()> {
        if self.pad_id as usize >= limits.vocab_size {
            return Err(TrainError::config(
                "pad_id",
                format!(
                    "{} of the {dataset} is outside the model's {} token ids",
                    self.pad_id, limits.vocab_size
                ),
            ));
        }
        for (example, item) in self.items.iter().enumerate() {
            let bad = |what, id, limit| TrainError::IdOutOfRange {
                what,
                id,
                limit,
                example,
                dataset: dataset.to_string(),
            };
            if let Some(&id) = item
                .input_ids
                .iter()
                .find(|&&t| t as usize >= limits.vocab_size)
            {
                return Err(bad("token", id, limits.vocab_size));
            }
            let types = &item.token_type_ids;
            if let Some(&id) = types
                .iter()
                .find(|&&t| t as usize >= limits.type_vocab_size)
            {
                return Err(bad("token-type", id, limits.type_vocab_size));
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn item_len(&self, index: usize) -> usize {
        self.items.get(index).map_or(0, |i| i.input_ids.len())
    }

    fn batch(&self, indices: &[usize], device: &Device) -> Result<TextBatch> {
        if indices.is_empty() {
            return Err(TrainError::config("batch", "no index given"));
        }
        let items = indices
            .iter()
            .map(|&i| {
                self.items.get(i).ok_or_else(|| {
                    TrainError::config(
                        "batch",
                        format!("index {i} out of range ({} items)", self.items.len()),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(collate(&items, self.pad_id, self.kind, device))
    }

    fn fingerprint(&self) -> u64 {
        let mut h = Fnv::default();
        h.u64(self.pad_id as u64);
        for item in &self.items {
            h.u64(item.input_ids.len() as u64);
            item.input_ids.iter().for_each(|&v| h.u64(v as u64));
            item.token_type_ids.iter().for_each(|&v| h.u64(v as u64));
            match item.target {
                ItemTarget::Class(c) => h.u64(c as u64),
                ItemTarget::Value(v) => h.u64(v.to_bits() as u64),
                ItemTarget::Tokens { loss_from } => h.u64(loss_from as u64 | 1 << 40),
            }
        }
        h.0
    }
}

/// FNV-1a, 64 bit.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn u64(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl Dataset<TextItem> for TextDataset {
    fn get(&self, index: usize) -> std::result::Result<TextItem, DatasetError> {
        self.items.get(index).cloned().ok_or_else(|| {
            DatasetError::new(TrainError::config(
                "index",
                format!("{index} out of range ({} items)", self.items.len()),
            ))
        })
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// burn's [`Batcher`] over [`TextItem`]s: [`collate`] with a dataset's padding id and kind.
#[derive(Debug, Clone, Copy)]
pub struct TextBatcher {
    /// Padding id.
    pub pad_id: u32,
    /// Target kind of the items.
    pub kind: TargetKind,
}

impl Batcher<TextItem, TextBatch> for TextBatcher {
    fn batch(&self, items: Vec<TextItem>, device: &Device) -> TextBatch {
        let refs: Vec<&TextItem> = items.iter().collect();
        collate(&refs, self.pad_id, self.kind, device)
    }
}

/// Reads and tokenizes the training file and, if given, the validation file; with no
/// validation file, holds out `config.validation_ratio` of the training file (seeded by
/// `config.split_seed`). Class labels are inferred from the training data (or the whole file
/// before a split) unless `config.task` names them, so both datasets share one label map.
pub fn load_text_datasets(
    train: &Path,
    valid: Option<&Path>,
    config: &DataConfig,
    tokenizer: &TextTokenizer,
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
