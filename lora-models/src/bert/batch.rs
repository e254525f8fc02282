//! From text to model inputs: [`EncoderTokenizer`] (the checkpoint's tokenizer, truncating to
//! what the model accepts) and [`EncoderBatch`] (padded id, mask and token-type tensors).

use std::path::Path;

use burn::prelude::*;
pub use lora_train::PaddingSide;
use lora_train::pad_rows;

use super::config::{BertConfig, EncoderFamily};
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// A padded batch of encoder inputs.
#[derive(Debug, Clone)]
pub struct EncoderBatch {
    /// Token ids `[batch, seq]`, padded with the pad id.
    pub input_ids: Tensor<2, Int>,
    /// `[batch, seq]`: 1 for tokens, 0 for padding.
    pub attention_mask: Tensor<2, Int>,
    /// `[batch, seq]`: 0 for the first sentence, 1 for the second (BERT pairs).
    pub token_type_ids: Tensor<2, Int>,
}

impl EncoderBatch {
    /// Pads `(ids, type_ids)` rows to the longest one.
    ///
    /// # Shapes
    /// - each row: `ids` and `type_ids` of equal length
    /// - output tensors: `[rows, longest]`
    pub fn new(
        rows: &[(Vec<u32>, Vec<u32>)],
        pad_id: u32,
        side: PaddingSide,
        device: &Device,
    ) -> Result<Self> {
        let t = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        if rows.is_empty() || t == 0 {
            return Err(ModelError::InvalidInput("empty batch or sequence".into()));
        }
        for (i, (row, row_types)) in rows.iter().enumerate() {
            if row_types.len() != row.len() {
                return Err(ModelError::InvalidInput(format!(
                    "row {i}: {} ids but {} token types",
                    row.len(),
                    row_types.len()
                )));
            }
        }
        let rows: Vec<(&[u32], &[u32])> = (rows.iter())
            .map(|(ids, types)| (ids.as_slice(), types.as_slice()))
            .collect();
        let [input_ids, attention_mask, token_type_ids] =
            pad_rows(&rows, pad_id, side).tensors(device);
        Ok(Self {
            input_ids,
            attention_mask,
            token_type_ids,
        })
    }

    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        self.input_ids.dims()
    }
}

/// A checkpoint's tokenizer, prepared for its model: truncation to the model's maximum (or
/// less), no padding of its own, ids checked against the model's vocabulary.
#[derive(Debug, Clone)]
pub struct EncoderTokenizer {
    tokenizer: TextTokenizer,
    pad_id: u32,
    vocab_size: usize,
    type_vocab_size: usize,
    family: EncoderFamily,
    max_tokens: usize,
    /// Where [`batch`](Self::batch) puts padding.
    pub padding_side: PaddingSide,
}

impl EncoderTokenizer {
    /// Loads the tokenizer of a model directory: `tokenizer.json`; else RoBERTa's
    /// `vocab.json` + `merges.txt` or BERT's `vocab.txt` (lower-casing unless
    /// `tokenizer_config.json` says `do_lower_case: false`).
    pub fn from_dir(dir: impl AsRef<Path>, config: &BertConfig) -> Result<Self> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        let tokenizer = if json.exists() {
            TextTokenizer::from_file(&json)?
        } else {
            match config.family() {
                EncoderFamily::Roberta => {
                    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
                    if !(vocab.exists() && merges.exists()) {
                        return Err(ModelError::MissingFile {
                            what: "tokenizer",
                            dir: dir.to_path_buf(),
                            looked_for: "tokenizer.json, or vocab.json + merges.txt".into(),
                        });
                    }
                    TextTokenizer::roberta_from_files(&vocab, &merges)?
                }
                EncoderFamily::Bert => {
                    let vocab = dir.join("vocab.txt");
                    if !vocab.exists() {
                        return Err(ModelError::MissingFile {
                            what: "tokenizer",
                            dir: dir.to_path_buf(),
                            looked_for: "tokenizer.json, or vocab.txt".into(),
                        });
                    }
                    TextTokenizer::bert_from_vocab(&vocab, lowercase_setting(dir))?
                }
            }
        };
        Self::new(tokenizer, config)
    }

    /// Prepares `tokenizer` for a model: truncation to [`BertConfig::max_tokens`], padding off.
    /// Errors if the tokenizer lacks the model's padding token or has more tokens than the
    /// model's vocabulary.
    pub fn new(tokenizer: TextTokenizer, config: &BertConfig) -> Result<Self> {
        let max_tokens = config.max_tokens();
        let tokenizer = tokenizer.with_truncation(max_tokens)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(ModelError::Tokenizer(format!(
                "the tokenizer has {} tokens but the model only {} embeddings",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let pad_token = match config.family() {
            EncoderFamily::Roberta => "<pad>",
            EncoderFamily::Bert => "[PAD]",
        };
        let pad_id = tokenizer
            .token_id(pad_token)
            .unwrap_or(config.pad_token_id as u32);
        Ok(Self {
            tokenizer,
            pad_id,
            vocab_size: config.vocab_size,
            type_vocab_size: config.type_vocab_size,
            family: config.family(),
            max_tokens,
            padding_side: PaddingSide::Right,
        })
    }

    /// Truncates to `max_length` tokens instead (at most the model's maximum; e.g.
    /// sentence-transformers' `max_seq_length`).
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self> {
        let n = max_length.min(self.max_tokens);
        self.tokenizer = self.tokenizer.with_truncation(n)?;
        Ok(self)
    }

    /// Pads batches on `side`.
    pub fn with_padding_side(mut self, side: PaddingSide) -> Self {
        self.padding_side = side;
        self
    }

    /// The wrapped tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The padding id used in batches.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The truncation length.
    pub fn max_length(&self) -> usize {
        self.tokenizer.max_length().unwrap_or(self.max_tokens)
    }

    fn check(&self, ids: Vec<u32>, mut types: Vec<u32>) -> Result<(Vec<u32>, Vec<u32>)> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.vocab_size
            )));
        }
        // RoBERTa models are never given token types (transformers drops them).
        if self.family == EncoderFamily::Roberta {
            types.iter_mut().for_each(|t| *t = 0);
        }
        if let Some(&bad) = types.iter().find(|&&t| t as usize >= self.type_vocab_size) {
            return Err(ModelError::InvalidInput(format!(
                "token type {bad} is outside the model's {} token types",
                self.type_vocab_size
            )));
        }
        Ok((ids, types))
    }

    /// Ids and token types of one text, with special tokens, truncated.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let (ids, types) = self.tokenizer.encode_with_types(text)?;
        self.check(ids, types)
    }

    /// Ids and token types of a sentence pair, with special tokens, truncated (longest first).
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let (ids, types) = self.tokenizer.encode_pair(a, b)?;
        self.check(ids, types)
    }

    /// A padded batch of single texts.
    pub fn batch(&self, texts: &[&str], device: &Device) -> Result<EncoderBatch> {
        let rows = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        EncoderBatch::new(&rows, self.pad_id, self.padding_side, device)
    }

    /// A padded batch of sentence pairs.
    pub fn batch_pairs(&self, pairs: &[(&str, &str)], device: &Device) -> Result<EncoderBatch> {
        let rows = pairs
            .iter()
            .map(|(a, b)| self.encode_pair(a, b))
            .collect::<Result<Vec<_>>>()?;
        EncoderBatch::new(&rows, self.pad_id, self.padding_side, device)
    }
}

fn lowercase_setting(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
        .unwrap_or(true)
}
