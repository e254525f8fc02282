//! Sequence classification and regression with the encoders:
//! [`TrainModel`] for [`RobertaForSequenceClassification`] and [`BertForSequenceClassification`]
//! on [`TextBatch`]es with class or value targets, plus the two helpers any classifier can use.
//!
//! The data's classes must be the head's labels, in order: name them with
//! [`Task::Classification`](lora_train::Task::Classification)`{ labels: Some(..) }` taken from the
//! checkpoint's `id2label` when the file's labels are names. A one-label head is a regression
//! head (MSE on its score, as transformers does).

use burn::prelude::*;
use lora_core::LoraLayer;
use lora_train::loss::{cross_entropy, mse_loss};
use lora_train::{
    BatchTargets, EvalOutput, IdLimits, LossConfig, LossOutput, Predictions, Result, StepGrads,
    TextBatch, TrainError, TrainModel, plain_grads,
};

use crate::bert::{
    BertForSequenceClassification, RobertaForSequenceClassification, checkpointed_step,
};

/// The loss of a classification or regression head against the batch's targets: cross-entropy
/// for class targets (with `loss`'s label smoothing), mean squared error for value targets
/// (one-label head).
///
/// # Shapes
/// - `logits`: `[batch, num_labels]` → `[1]`
pub fn head_loss(logits: Tensor<2>, batch: &TextBatch, loss: &LossConfig) -> Result<Tensor<1>> {
    let [b, n] = logits.dims();
    match &batch.targets {
        BatchTargets::Classes {
            labels,
            num_classes,
            ..
        } => {
            if n != *num_classes {
                return Err(TrainError::Step(format!(
                    "the head has {n} labels but the data has {num_classes} classes \
                     (name the labels as the checkpoint's id2label, or load with num_labels = {num_classes})"
                )));
            }
            Ok(cross_entropy(logits, labels.clone(), loss.label_smoothing))
        }
        BatchTargets::Values { values, .. } => {
            if n != 1 {
                return Err(TrainError::Step(format!(
                    "regression data needs a one-label head, this one has {n} labels"
                )));
            }
            Ok(mse_loss(logits.reshape([b]), values.clone()))
        }
        BatchTargets::Tokens { .. } => Err(TrainError::Step(
            "a sequence classifier cannot learn token targets (use causal-LM data with GPT-2)"
                .into(),
        )),
    }
}

/// Arg-max classes or regression scores of a head, with the batch's gold values.
///
/// # Shapes
/// - `logits`: `[batch, num_labels]`
pub fn head_predictions(logits: Tensor<2>, batch: &TextBatch) -> Result<Predictions> {
    let [b, _] = logits.dims();
    match &batch.targets {
        BatchTargets::Classes { gold, .. } => Predictions::from_logits(logits, gold.clone()),
        BatchTargets::Values { gold, .. } => {
            Predictions::from_scores(logits.reshape([b]), gold.clone())
        }
        BatchTargets::Tokens { .. } => Err(TrainError::Step(
            "a sequence classifier cannot predict token targets".into(),
        )),
    }
}

fn eval(logits: Tensor<2>, batch: &TextBatch) -> Result<EvalOutput> {
    let loss = head_loss(logits.clone(), batch, &LossConfig::default())?;
    Ok(EvalOutput {
        loss,
        count: batch.len(),
        predictions: head_predictions(logits, batch)?,
    })
}

/// Both sequence classifiers train the same way: the head's loss, and its predictions.
macro_rules! impl_classifier {
    ($($model:ty => $body:ident),*) => {$(
        impl TrainModel for $model {
            type Batch = TextBatch;

            /// The word and token-type tables' rows.
            fn id_limits(&self) -> Option<IdLimits> {
                let e = &self.$body.embeddings;
                Some(IdLimits {
                    vocab_size: e.word_embeddings.dims().0,
                    type_vocab_size: e.token_type_embeddings.weight.dims()[0],
                })
            }

            /// Mean head loss over the examples.
            ///
            /// # Shapes
            /// - `batch.input_ids`, `attention_mask`, `token_type_ids`: `[batch, seq]`
            /// - logits (internal): `[batch, num_labels]`; loss `[1]`
            fn train_step(&self, batch: &TextBatch, loss: &LossConfig) -> Result<LossOutput> {
                let logits = self.forward(
                    batch.input_ids.clone(),
                    Some(batch.attention_mask.clone()),
                    Some(batch.token_type_ids.clone()),
                )?;
                Ok(LossOutput::new(head_loss(logits, batch, loss)?, batch.len()))
            }

            /// [`train_step`](TrainModel::train_step) and its backward, or with the body's
            /// `checkpoint_layers` set, the same gradients with activation checkpointing
            /// ([`checkpointed_step`]).
            fn train_grads(&self, batch: &TextBatch, loss: &LossConfig) -> Result<StepGrads> {
                if !self.$body.checkpoint_layers {
                    return plain_grads(self, batch, loss);
                }
                let (loss, parts) = checkpointed_step(
                    self,
                    batch.input_ids.clone(),
                    Some(batch.attention_mask.clone()),
                    Some(batch.token_type_ids.clone()),
                    |logits| head_loss(logits, batch, loss),
                )?;
                Ok(StepGrads { loss, count: batch.len(), parts })
            }

            /// Loss and predictions (accuracy/F1/MCC, or Pearson/Spearman for regression).
            fn eval_step(&self, batch: &TextBatch) -> Result<EvalOutput> {
                let logits = self.forward(
                    batch.input_ids.clone(),
                    Some(batch.attention_mask.clone()),
                    Some(batch.token_type_ids.clone()),
                )?;
                eval(logits, batch)
            }

            /// The encoders' sites are [`LoraLinear`](lora_core::LoraLinear)s.
            fn save_adapter(
                &self,
                lora: &lora_core::LoraConfig,
                name: &str,
                dir: &std::path::Path,
            ) -> lora_core::Result<()> {
                lora_core::save_adapter(self, lora, name, dir)
            }
        }
    )*};
}

impl_classifier!(
    RobertaForSequenceClassification => roberta,
    BertForSequenceClassification => bert
);
