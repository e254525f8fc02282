//! Sentence embeddings as sentence-transformers computes them for models such as
//! all-MiniLM-L6-v2: mean of the token vectors over the real tokens, then L2 normalisation.

use std::path::Path;

use burn::prelude::*;

use super::batch::EncoderTokenizer;
use super::loader::EncoderCheckpoint;
use super::model::BertModel;
use crate::error::{ModelError, Result};

/// Mean of the hidden states over the positions whose mask is 1.
///
/// # Shapes
/// - `hidden`: `[batch, seq, hidden]`, `attention_mask`: `[batch, seq]`
/// - output: `[batch, hidden]`
pub fn mean_pooling(hidden: Tensor<3>, attention_mask: Tensor<2, Int>) -> Tensor<2> {
    let [b, t, d] = hidden.dims();
    let m = attention_mask.float().reshape([b, t, 1]);
    let summed: Tensor<2> = (hidden * m.clone()).sum_dim(1).reshape([b, d]);
    // sentence-transformers clamps the token count at 1e-9 (an all-padding row gives zeros).
    let counts: Tensor<2> = m.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
    summed / counts
}

/// Each row divided by its L2 norm (`torch.nn.functional.normalize`, eps 1e-12).
///
/// # Shapes
/// - `x`: `[batch, dim]` → `[batch, dim]`
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

/// Cosine similarity of every row of `a` with every row of `b`.
///
/// # Shapes
/// - `a`: `[n, dim]`, `b`: `[m, dim]` → `[n, m]`
pub fn cosine_similarity(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    l2_normalize(a).matmul(l2_normalize(b).transpose())
}

/// A sentence-embedding model: an encoder body, its tokenizer, mean pooling and (optionally)
/// L2 normalisation, configured from a sentence-transformers directory.
#[derive(Debug)]
pub struct SentenceEncoder {
    /// The encoder body.
    pub model: BertModel,
    /// Its tokenizer, truncating to `max_seq_length`.
    pub tokenizer: EncoderTokenizer,
    /// Whether embeddings are L2-normalised (sentence-transformers' `Normalize` module).
    pub normalize: bool,
}

impl SentenceEncoder {
    /// Loads a sentence-transformers directory: the Hugging Face model and tokenizer,
    /// `sentence_bert_config.json`'s `max_seq_length`, and whether `modules.json` lists a
    /// `Normalize` step (normalised when there is no `modules.json`). Pooling must be mean
    /// pooling (`1_Pooling/config.json`), the only mode implemented.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let (model, config) = BertModel::from_pretrained(dir, device)?;
        let mut tokenizer = EncoderTokenizer::from_dir(dir, &config)?;
        if let Some(v) = read_json(&dir.join("sentence_bert_config.json"))?
            && let Some(n) = v.get("max_seq_length").and_then(|n| n.as_u64())
        {
            tokenizer = tokenizer.with_max_length(n as usize)?;
        }
        if let Some(v) = read_json(&dir.join("1_Pooling").join("config.json"))?
            && v.get("pooling_mode_mean_tokens").and_then(|b| b.as_bool()) == Some(false)
        {
            return Err(ModelError::Config {
                path: dir.join("1_Pooling").join("config.json"),
                reason: "only mean pooling (`pooling_mode_mean_tokens`) is supported".into(),
            });
        }
        let normalize = match read_json(&dir.join("modules.json"))? {
            Some(v) => v.as_array().is_some_and(|mods| {
                mods.iter().any(|m| {
                    m.get("type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| t.ends_with("Normalize"))
                })
            }),
            None => true,
        };
        Ok(Self {
            model,
            tokenizer,
            normalize,
        })
    }

    /// Embeddings of `texts` (one row each).
    ///
    /// # Shapes
    /// - output: `[texts.len(), hidden]`
    pub fn embed(&self, texts: &[&str], device: &Device) -> Result<Tensor<2>> {
        let batch = self.tokenizer.batch(texts, device)?;
        let hidden = self.model.forward(
            batch.input_ids,
            Some(batch.attention_mask.clone()),
            Some(batch.token_type_ids),
        )?;
        let pooled = mean_pooling(hidden, batch.attention_mask);
        Ok(if self.normalize {
            l2_normalize(pooled)
        } else {
            pooled
        })
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}
