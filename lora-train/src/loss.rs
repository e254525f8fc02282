//! Losses and their settings: [`LossConfig`], which the trainer passes to every training
//! step, and the helpers any classifier or regressor can use.

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
    lora_models::loss::cross_entropy(logits, labels, 0.0)
}

/// Mean squared error (PyTorch's `mse_loss`, as Hugging Face uses for one-label regression).
///
/// # Shapes
/// - `scores`, `targets`: `[batch]` → `[1]`
pub fn mse_loss(scores: Tensor<1>, targets: Tensor<1>) -> Tensor<1> {
    (scores - targets).powf_scalar(2.0).mean()
}
