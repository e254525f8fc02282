//! Losses of the sequence-classification heads, as transformers computes them for each
//! [`ProblemType`].

use burn::prelude::*;

use super::config::ProblemType;
use crate::error::{ModelError, Result};
use lora_train::loss::cross_entropy;

/// Training targets of a sequence-classification head.
#[derive(Debug, Clone)]
pub enum ClassificationTargets {
    /// One class index per example `[batch]` (single-label classification).
    Classes(Tensor<1, Int>),
    /// Real values `[batch, num_labels]`: regression scores, or 0/1 per label for
    /// multi-label classification.
    Values(Tensor<2>),
}

/// The head's loss: mean squared error (regression), cross-entropy (single label) or binary
/// cross-entropy with logits (multi-label), each averaged over the batch like PyTorch's.
///
/// # Shapes
/// - `logits`: `[batch, num_labels]`
/// - `targets`: `[batch]` classes or `[batch, num_labels]` values
/// - output: `[1]`
pub fn sequence_classification_loss(
    problem: ProblemType,
    logits: Tensor<2>,
    targets: ClassificationTargets,
) -> Result<Tensor<1>> {
    let [b, n] = logits.dims();
    match (problem, targets) {
        (ProblemType::SingleLabelClassification, ClassificationTargets::Classes(t)) => {
            if t.dims() != [b] {
                return Err(shape_err("class targets", &t.dims(), &[b]));
            }
            Ok(cross_entropy(logits, t, 0.0))
        }
        (ProblemType::Regression, ClassificationTargets::Values(y)) => {
            if y.dims() != [b, n] {
                return Err(shape_err("regression targets", &y.dims(), &[b, n]));
            }
            Ok((logits - y).powf_scalar(2.0).mean())
        }
        (ProblemType::MultiLabelClassification, ClassificationTargets::Values(y)) => {
            if y.dims() != [b, n] {
                return Err(shape_err("multi-label targets", &y.dims(), &[b, n]));
            }
            // max(x, 0) - x·y + log(1 + exp(-|x|)): stable for large |x|.
            let x = logits;
            let loss = x.clone().clamp_min(0.0) - x.clone() * y + x.abs().neg().exp().log1p();
            Ok(loss.mean())
        }
        (p, _) => Err(ModelError::InvalidInput(format!(
            "{p:?} needs {} targets",
            match p {
                ProblemType::SingleLabelClassification => "class-index",
                _ => "real-valued",
            }
        ))),
    }
}

fn shape_err(what: &str, found: &[usize], expected: &[usize]) -> ModelError {
    ModelError::InvalidInput(format!("{what} are {found:?}, expected {expected:?}"))
}
