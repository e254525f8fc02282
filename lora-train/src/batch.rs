//! Tokenized examples and their padded batches: [`TextItem`], [`TextBatch`], and the one
//! padding routine ([`pad_rows`]) that [`collate`] and lora-models' encoder batches share.

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;

use crate::error::{Result, TrainError};
use crate::loss::IGNORE_INDEX;

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

/// Where padding goes in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// After the tokens (transformers' default for encoders, and what training batches use).
    #[default]
    Right,
    /// Before the tokens.
    Left,
}

/// Token rows padded to the longest one (at least 1), on the host: row-major `[batch, seq]`
/// ids, attention mask (1 for tokens) and token types (0 on padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedRows {
    /// Token ids, the pad id on padding.
    pub ids: Vec<i64>,
    /// 1 for tokens, 0 for padding.
    pub mask: Vec<i64>,
    /// Segment ids, 0 on padding (and where a row's types are shorter than its ids).
    pub types: Vec<i64>,
    /// `[batch, seq]`.
    pub dims: [usize; 2],
}

impl PaddedRows {
    /// The ids, mask and types as `[batch, seq]` tensors on `device`.
    pub fn tensors(self, device: &Device) -> [Tensor<2, Int>; 3] {
        let tensor = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, self.dims), device);
        [tensor(self.ids), tensor(self.mask), tensor(self.types)]
    }
}

/// Pads `(ids, token types)` rows with `pad_id` on `side`: the one padding routine of
/// training batches ([`collate`]) and lora-models' encoder batches.
pub fn pad_rows(rows: &[(&[u32], &[u32])], pad_id: u32, side: PaddingSide) -> PaddedRows {
    let b = rows.len();
    let t = rows
        .iter()
        .map(|(ids, _)| ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut ids = vec![pad_id as i64; b * t];
    let mut mask = vec![0i64; b * t];
    let mut types = vec![0i64; b * t];
    for (row, (row_ids, row_types)) in rows.iter().enumerate() {
        let start = match side {
            PaddingSide::Right => row * t,
            PaddingSide::Left => row * t + t - row_ids.len(),
        };
        for (j, &id) in row_ids.iter().enumerate() {
            ids[start + j] = id as i64;
            mask[start + j] = 1;
            types[start + j] = row_types.get(j).copied().unwrap_or(0) as i64;
        }
    }
    PaddedRows {
        ids,
        mask,
        types,
        dims: [b, t],
    }
}

/// Right-pads `items` into a batch on `device`. Every item should have the target kind `kind`
/// (as in a [`TextDataset`](crate::TextDataset)); one that does not is treated as having no
/// target.
pub fn collate(items: &[&TextItem], pad_id: u32, kind: TargetKind, device: &Device) -> TextBatch {
    let rows: Vec<(&[u32], &[u32])> = (items.iter())
        .map(|i| (i.input_ids.as_slice(), i.token_type_ids.as_slice()))
        .collect();
    let padded = pad_rows(&rows, pad_id, PaddingSide::Right);
    let [b, t] = padded.dims;
    let mut labels = vec![IGNORE_INDEX; b * t];
    let mut num_tokens = 0;
    let mut num_lm_targets = 0;
    for (row, item) in items.iter().enumerate() {
        let n = item.input_ids.len();
        num_tokens += n;
        if let ItemTarget::Tokens { loss_from } = item.target {
            for j in loss_from..n {
                labels[row * t + j] = item.input_ids[j] as i64;
            }
            // Position 0 predicts nothing (the loss shifts by one).
            num_lm_targets += n.saturating_sub(loss_from.max(1));
        }
    }
    let [input_ids, attention_mask, token_type_ids] = padded.tensors(device);
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
        input_ids,
        attention_mask,
        token_type_ids,
        targets,
        num_targets,
        num_tokens,
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
