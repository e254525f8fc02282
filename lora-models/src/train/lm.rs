//! GPT-2 causal-LM fine-tuning: [`TrainModel`] for [`Gpt2LmHeadModel`] on [`TextBatch`]es with
//! token targets (prompt/completion, E2E or plain text data).

use std::path::Path;

use lora_core::{LoraConfig, LoraLayer};
use lora_train::{
    EvalOutput, IdLimits, LossConfig, LossOutput, Predictions, Result, StepGrads, TextBatch,
    TrainError, TrainModel, plain_grads,
};

use crate::gpt2::Gpt2LmHeadModel;

impl TrainModel for Gpt2LmHeadModel {
    type Batch = TextBatch;

    /// `wte`'s rows; GPT-2 has no token types (every batch's are 0).
    fn id_limits(&self) -> Option<IdLimits> {
        Some(IdLimits {
            vocab_size: self.transformer.wte.dims().0,
            type_vocab_size: 1,
        })
    }

    /// Mean next-token cross-entropy over the completion tokens, with `loss`'s label
    /// smoothing.
    ///
    /// # Shapes
    /// - `batch.input_ids`, `batch.attention_mask`, token labels: `[batch, seq]`
    /// - logits (internal): `[batch, seq, vocab]`, in chunks of positions where the device's
    ///   per-tensor limit or the model's `memory.loss_chunk` asks ([`Gpt2LmHeadModel::lm_loss`])
    /// - loss: `[1]`, over `batch.num_targets` tokens
    fn train_step(&self, batch: &TextBatch, loss: &LossConfig) -> Result<LossOutput> {
        let labels = batch.token_labels()?;
        if batch.num_targets == 0 {
            return Err(TrainError::Step("the batch has no target token".into()));
        }
        let (ids, mask) = (batch.input_ids.clone(), batch.attention_mask.clone());
        let mean = self.lm_loss(ids, Some(mask), labels, loss.label_smoothing)?;
        Ok(LossOutput::new(mean, batch.num_targets))
    }

    /// [`train_step`](TrainModel::train_step) and its backward, or, with the model's
    /// [`memory`](Gpt2LmHeadModel::memory) options set, the same gradients computed in segments
    /// ([`Gpt2LmHeadModel::loss_and_grads`]).
    fn train_grads(&self, batch: &TextBatch, loss: &LossConfig) -> Result<StepGrads> {
        if self.memory.is_plain() {
            return plain_grads(self, batch, loss);
        }
        let labels = batch.token_labels()?;
        let (ids, mask) = (batch.input_ids.clone(), batch.attention_mask.clone());
        let step =
            self.loss_and_grads(ids, Some(mask), labels, loss.label_smoothing, self.memory)?;
        Ok(StepGrads {
            loss: step.loss,
            count: step.count,
            parts: step.parts,
        })
    }

    /// The plain cross-entropy (no dropout, no label smoothing); perplexity is derived from it.
    fn eval_step(&self, batch: &TextBatch) -> Result<EvalOutput> {
        let labels = batch.token_labels()?;
        if batch.num_targets == 0 {
            return Err(TrainError::Step("the batch has no target token".into()));
        }
        let (ids, mask) = (batch.input_ids.clone(), batch.attention_mask.clone());
        let loss = self.lm_loss(ids, Some(mask), labels, 0.0)?;
        let count = batch.num_targets;
        Ok(EvalOutput {
            loss,
            count,
            predictions: Predictions::LanguageModel,
        })
    }

    /// GPT-2's sites are [`LoraLinear`](lora_core::LoraLinear)s: the factored path's writer.
    fn save_adapter(&self, lora: &LoraConfig, name: &str, dir: &Path) -> lora_core::Result<()> {
        lora_core::save_adapter(self, lora, name, dir)
    }
}
