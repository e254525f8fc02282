//! Datasets the trainer draws batches from: the [`BatchSource`] trait and [`TextDataset`],
//! tokenized text items in memory (built by [`TextDataset::from_records`](crate::tokenize)).

use burn::data::dataset::{Dataset, DatasetError};
use burn::prelude::*;

use crate::batch::{ItemTarget, TargetKind, TextBatch, TextBatcher, TextItem, collate};
use crate::error::{Result, TrainError};
use crate::model::IdLimits;
use crate::records::LabelMap;

/// A dataset the trainer draws batches from: indexable items, each with a length (for
/// length-grouped batching and tokens/s), turned into a model batch on demand.
///
/// [`TextDataset`] implements it with [`TextBatch`].
pub trait BatchSource {
    /// The batch type it produces.
    type Batch;

    /// Number of items.
    fn len(&self) -> usize;

    /// Whether there is no item.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length of item `index` in tokens (1 if the notion does not apply).
    fn item_len(&self, index: usize) -> usize;

    /// Builds the batch of the items at `indices` (in that order) on `device`.
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Self::Batch>;

    /// A fingerprint of the contents: a checkpoint refuses to resume on different data.
    /// `0` (the default) disables the check.
    fn fingerprint(&self) -> u64 {
        0
    }

    /// Errors if an item holds a token id outside `limits` (nothing to check by default);
    /// `dataset` names the data in the error (e.g. `training data`).
    fn check_ids(&self, limits: &IdLimits, dataset: &str) -> Result<()> {
        let _ = (limits, dataset);
        Ok(())
    }
}

/// A tokenized, in-memory text dataset; a [`BatchSource`] of [`TextBatch`]es and a burn
/// [`Dataset`] of [`TextItem`]s (use [`TextDataset::batcher`] with burn's `DataLoaderBuilder`).
#[derive(Debug, Clone)]
pub struct TextDataset {
    items: Vec<TextItem>,
    pad_id: u32,
    kind: TargetKind,
    pub(crate) labels: Option<LabelMap>,
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

    /// A burn [`Batcher`](burn::data::dataloader::batcher::Batcher) for this dataset's items.
    pub fn batcher(&self) -> TextBatcher {
        TextBatcher {
            pad_id: self.pad_id,
            kind: self.kind,
        }
    }
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
        let mut h = lora_core::hash::Fnv1a::new();
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
        h.finish()
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
