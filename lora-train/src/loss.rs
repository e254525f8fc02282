//! Losses and their settings: [`LossConfig`], which the trainer passes to every training
//! step; cross-entropy with ignored positions and label smoothing (as
//! `torch.nn.functional.cross_entropy` computes it), causal-LM, class and regression losses.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How the training loss is computed; [`TrainerConfig::loss`](crate::TrainerConfig::loss)
/// passes it to every [`TrainModel::train_step`](crate::TrainModel::train_step). Evaluation
/// always uses the plain loss.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LossConfig {
    /// Label smoothing ε of cross-entropy losses (0 = none; the LoRA paper's E2E setup uses
    /// 0.1), as Hugging Face's `label_smoothing_factor`. Default 0.
    pub label_smoothing: f64,
}

impl LossConfig {
    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(TrainError::config("label_smoothing", "must be in [0, 1)"));
        }
        Ok(())
    }
}

/// Mean cross-entropy of class logits (PyTorch's `cross_entropy`).
///
/// # Shapes
/// - `logits`: `[batch, num_classes]`, `labels`: `[batch]` → `[1]`
pub fn class_loss(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    cross_entropy(logits, labels, 0.0)
}

/// Mean squared error (PyTorch's `mse_loss`, as Hugging Face uses for one-label regression).
///
/// # Shapes
/// - `scores`, `targets`: `[batch]` → `[1]`
pub fn mse_loss(scores: Tensor<1>, targets: Tensor<1>) -> Tensor<1> {
    (scores - targets).powf_scalar(2.0).mean()
}

/// Label value that marks a position as ignored (padding, or the prompt of prompt/completion data).
pub const IGNORE_INDEX: i64 = -100;

/// Mean cross-entropy over the non-ignored targets.
///
/// `smoothing` ε mixes in the uniform distribution: per target
/// `(1 − ε)·(−log p[y]) + ε·mean_v(−log p[v])`, exactly PyTorch's `label_smoothing`.
///
/// # Shapes
/// - `logits`: `[n, vocab]`
/// - `targets`: `[n]`, [`IGNORE_INDEX`] where ignored
/// - output: `[1]` (NaN when every target is ignored, as in PyTorch)
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>, smoothing: f64) -> Tensor<1> {
    let valid = targets.clone().not_equal_elem(IGNORE_INDEX).float().sum();
    cross_entropy_sum(logits, targets, smoothing) / valid
}

/// The sum of [`cross_entropy`]'s per-target losses (not divided by their count): what a loss
/// computed in chunks adds up.
///
/// # Shapes
/// - `logits`: `[n, vocab]`
/// - `targets`: `[n]`, [`IGNORE_INDEX`] where ignored
/// - output: `[1]`
pub fn cross_entropy_sum(logits: Tensor<2>, targets: Tensor<1, Int>, smoothing: f64) -> Tensor<1> {
    let [n, _] = logits.dims();
    let ignored = targets.clone().equal_elem(IGNORE_INDEX);
    let valid = ignored.clone().bool_not().float();
    let safe = targets.mask_fill(ignored, 0).reshape([n, 1]);
    // −log p[y] = logsumexp(z) − z[y], without materialising log-probabilities: over a GPT-2
    // vocabulary these are the largest tensors of a step, and each elementwise pass over them
    // (and its backward) costs as much as a layer. The max is a constant for the gradient.
    let max = logits.clone().detach().max_dim(1);
    let lse = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
    let picked = logits.clone().gather(1, safe);
    let per: Tensor<2> = if smoothing > 0.0 {
        // mean_v(−log p[v]) = logsumexp(z) − mean_v(z).
        lse - picked.mul_scalar(1.0 - smoothing) - logits.mean_dim(1).mul_scalar(smoothing)
    } else {
        lse - picked
    };
    (per.reshape([n]) * valid).sum()
}

/// Causal-LM loss: position `t` predicts token `t + 1`; labels equal to [`IGNORE_INDEX`] are
/// skipped (build them from the ids with padding and prompt positions set to it).
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]`
/// - `labels`: `[batch, seq]`
/// - output: `[1]`
pub fn causal_lm_loss(logits: Tensor<3>, labels: Tensor<2, Int>, smoothing: f64) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    let shifted_logits = logits.narrow(1, 0, t - 1).reshape([b * (t - 1), v]);
    let shifted_labels = labels.narrow(1, 1, t - 1).reshape([b * (t - 1)]);
    cross_entropy(shifted_logits, shifted_labels, smoothing)
}

/// Labels for causal-LM training: the ids, with padding (`attention_mask == 0`) ignored.
///
/// # Shapes
/// - `ids`, `attention_mask`: `[batch, seq]` → `[batch, seq]`
pub fn labels_from_mask(ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<2, Int> {
    ids.mask_fill(attention_mask.equal_elem(0), IGNORE_INDEX)
}
