//! Losses shared by the models: causal-LM cross-entropy with ignored positions and label
//! smoothing (as `torch.nn.functional.cross_entropy` computes them).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

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
    let [n, _] = logits.dims();
    let ignored = targets.clone().equal_elem(IGNORE_INDEX);
    let valid = ignored.clone().bool_not().float();
    let safe = targets.mask_fill(ignored, 0).reshape([n, 1]);
    let logp = log_softmax(logits, 1);
    let nll: Tensor<1> = logp.clone().gather(1, safe).neg().reshape([n]);
    let per = if smoothing > 0.0 {
        let uniform: Tensor<1> = logp.mean_dim(1).neg().reshape([n]);
        nll.mul_scalar(1.0 - smoothing) + uniform.mul_scalar(smoothing)
    } else {
        nll
    };
    (per * valid.clone()).sum() / valid.sum()
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
