//! What the trainer needs from a model and from a dataset: the [`TrainModel`] and
//! [`BatchSource`](crate::BatchSource) traits and the outputs of a step.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Gradients;
use lora_core::LoraConfig;
use lora_core::weight::PathMap;

use crate::error::{Result, TrainError};
use crate::loss::LossConfig;

/// A model the [`Trainer`](crate::Trainer) can fine-tune: any burn [`Module`] that turns a
/// batch into a loss.
///
/// Implement it for your model, unchanged: adapters attached with
/// [`lora_core::weight::inject_adapter`] are found and saved by the default
/// [`save_adapter`](Self::save_adapter) (override [`peft_paths`](Self::peft_paths) when your field
/// names differ from the PyTorch module names). Models written with
/// [`LoraLinear`](lora_core::LoraLinear) (the factored fast path) override `save_adapter` with
/// [`lora_core::save_adapter`]; lora-models' GPT-2 does so. A sequence
/// classifier takes a few lines with [`class_loss`](crate::class_loss) and [`Predictions::from_logits`]:
///
/// ```no_run
/// use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
/// use burn::prelude::*;
/// use lora_train::{
///     EvalOutput, LossConfig, LossOutput, Predictions, TextBatch, TrainModel, class_loss,
/// };
///
/// /// Mean of the token embeddings, then a linear head: plain burn-nn.
/// #[derive(Module, Debug)]
/// struct BagOfWords {
///     emb: Embedding,
///     head: Linear,
/// }
///
/// impl BagOfWords {
///     /// `[batch, seq]` ids → `[batch, classes]` logits.
///     fn forward(&self, ids: Tensor<2, Int>) -> Tensor<2> {
///         let pooled: Tensor<2> = self.emb.forward(ids).mean_dim(1).squeeze_dim(1);
///         self.head.forward(pooled)
///     }
/// }
///
/// impl TrainModel for BagOfWords {
///     type Batch = TextBatch;
///
///     fn train_step(&self, batch: &TextBatch, _: &LossConfig) -> lora_train::Result<LossOutput> {
///         let logits = self.forward(batch.input_ids.clone());
///         Ok(LossOutput::new(class_loss(logits, batch.class_labels()?), batch.len()))
///     }
///
///     fn eval_step(&self, batch: &TextBatch) -> lora_train::Result<EvalOutput> {
///         let logits = self.forward(batch.input_ids.clone());
///         let loss = class_loss(logits.clone(), batch.class_labels()?);
///         let predictions = Predictions::from_logits(logits, batch.gold_classes()?.to_vec())?;
///         Ok(EvalOutput { loss, count: batch.len(), predictions })
///     }
/// }
/// # let device = Device::flex();
/// # let _ = BagOfWords { emb: EmbeddingConfig::new(10, 4).init(&device), head: LinearConfig::new(4, 2).init(&device) };
/// ```
pub trait TrainModel: Module {
    /// The batch type the model consumes (e.g. [`TextBatch`](crate::TextBatch)).
    type Batch;

    /// Training forward pass (dropout active), with the loss computed as `loss` says (a model
    /// whose loss has no such setting ignores it). The model's tensors are on an autodiff
    /// device.
    ///
    /// Returns the **mean** loss over [`LossOutput::count`] items (tokens for a language model,
    /// examples for a classifier); the trainer weights micro-batches by that count, so
    /// gradient accumulation gives exactly the gradient of the whole batch.
    fn train_step(&self, batch: &Self::Batch, loss: &LossConfig) -> Result<LossOutput>;

    /// The training step's loss and gradients. The default runs [`train_step`](Self::train_step)
    /// and one backward; a model that computes its gradients in segments (activation
    /// checkpointing, a chunked loss) overrides it.
    fn train_grads(&self, batch: &Self::Batch, loss: &LossConfig) -> Result<StepGrads>
    where
        Self: Sized,
    {
        plain_grads(self, batch, loss)
    }

    /// Evaluation forward pass, on the model's `valid()` copy (no autodiff, no dropout):
    /// the mean loss, its count, and what the metrics need.
    fn eval_step(&self, batch: &Self::Batch) -> Result<EvalOutput>;

    /// The token-id ranges the model's embeddings accept, if it reads token ids. The trainer
    /// checks every dataset against them before the first step ([`BatchSource::check_ids`](crate::BatchSource::check_ids)):
    /// an id outside would make the embedding gather panic (flex) or read garbage (wgpu).
    fn id_limits(&self) -> Option<IdLimits> {
        None
    }

    /// The PyTorch paths of the model's parameters, for PEFT files (identity by default).
    fn peft_paths(&self) -> PathMap {
        PathMap::identity()
    }

    /// Writes adapter `name` to `dir` in PEFT's format (the trainer calls it for the final,
    /// best and checkpointed adapters).
    ///
    /// The default writes the weight-level adapters of
    /// [`lora_core::weight`] under [`peft_paths`](Self::peft_paths). A model built on
    /// [`LoraSites`](lora_core::LoraSites) overrides it with [`lora_core::save_adapter`].
    fn save_adapter(&self, lora: &LoraConfig, name: &str, dir: &Path) -> lora_core::Result<()> {
        lora_core::weight::save_adapter(self, lora, name, dir, &self.peft_paths())
    }
}

/// The loss of one training step.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Mean loss, shape `[1]`.
    pub loss: Tensor<1>,
    /// How many items the mean is over (target tokens, or examples). Must be > 0.
    pub count: usize,
}

impl LossOutput {
    /// A mean loss `[1]` over `count` items.
    pub fn new(loss: Tensor<1>, count: usize) -> Self {
        Self { loss, count }
    }
}

/// [`TrainModel::train_step`] and one backward: the default
/// [`train_grads`](TrainModel::train_grads).
pub fn plain_grads<M: TrainModel>(
    model: &M,
    batch: &M::Batch,
    loss: &LossConfig,
) -> Result<StepGrads> {
    let output = model.train_step(batch, loss)?;
    let grads = output.loss.backward();
    Ok(StepGrads {
        loss: output.loss.detach(),
        count: output.count,
        parts: vec![grads],
    })
}

/// The loss and gradients of one training step (see [`TrainModel::train_grads`]).
pub struct StepGrads {
    /// Mean loss `[1]`, detached.
    pub loss: Tensor<1>,
    /// How many items the mean is over. Must be > 0.
    pub count: usize,
    /// The gradients of the mean loss, one `Gradients` per backward pass; a parameter's
    /// gradient is the sum over the parts it appears in.
    pub parts: Vec<Gradients>,
}

/// The result of one evaluation step.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// Mean loss, shape `[1]`.
    pub loss: Tensor<1>,
    /// How many items the mean is over (target tokens, or examples).
    pub count: usize,
    /// Predictions with their gold values, for the task's metrics.
    pub predictions: Predictions,
}

/// What an evaluation step predicted, which decides the metrics reported:
///
/// | variant | metrics (besides `loss`) |
/// |---|---|
/// | [`LanguageModel`](Self::LanguageModel) | `perplexity` |
/// | [`Classes`](Self::Classes) | `accuracy`, `f1` (binary: of class 1; else macro), `mcc` |
/// | [`Values`](Self::Values) | `pearson`, `spearman` |
/// | [`None`](Self::None) | — |
#[derive(Debug, Clone, PartialEq)]
pub enum Predictions {
    /// Only the loss is meaningful.
    None,
    /// A language model: the loss is a per-token cross-entropy, so perplexity applies.
    LanguageModel,
    /// Class predictions and gold labels.
    Classes {
        /// Predicted class per example.
        predicted: Vec<usize>,
        /// Gold class per example.
        gold: Vec<usize>,
        /// Number of classes.
        num_classes: usize,
    },
    /// Regression outputs and gold values.
    Values {
        /// Predicted value per example.
        predicted: Vec<f64>,
        /// Gold value per example.
        gold: Vec<f64>,
    },
}

impl Predictions {
    /// Arg-max class predictions from logits.
    ///
    /// # Shapes
    /// - `logits`: `[batch, num_classes]`; `gold`: `batch` labels
    pub fn from_logits(logits: Tensor<2>, gold: Vec<usize>) -> Result<Self> {
        let [b, num_classes] = logits.dims();
        if b != gold.len() {
            return Err(TrainError::Step(format!(
                "{b} rows of logits for {} gold labels",
                gold.len()
            )));
        }
        let predicted: Tensor<1, Int> = logits.argmax(1).reshape([b]);
        let predicted = int_values(predicted, "predictions")?
            .into_iter()
            .map(|v| v.max(0) as usize)
            .collect();
        Ok(Self::Classes {
            predicted,
            gold,
            num_classes,
        })
    }

    /// Regression predictions from scores.
    ///
    /// # Shapes
    /// - `scores`: `[batch]`; `gold`: `batch` values
    pub fn from_scores(scores: Tensor<1>, gold: Vec<f64>) -> Result<Self> {
        let predicted = float_values(scores, "scores")?;
        if predicted.len() != gold.len() {
            return Err(TrainError::Step(format!(
                "{} scores for {} gold values",
                predicted.len(),
                gold.len()
            )));
        }
        Ok(Self::Values { predicted, gold })
    }

    /// These predictions followed by `next`'s (the next evaluation batch); an error when
    /// the kinds differ.
    pub fn append(self, next: Predictions) -> Result<Self> {
        Ok(match (self, next) {
            (Self::None, Self::None) => Self::None,
            (Self::LanguageModel, Self::LanguageModel) => Self::LanguageModel,
            (
                Self::Classes {
                    mut predicted,
                    mut gold,
                    num_classes,
                },
                Self::Classes {
                    predicted: p2,
                    gold: g2,
                    num_classes: n2,
                },
            ) => {
                predicted.extend(p2);
                gold.extend(g2);
                Self::Classes {
                    predicted,
                    gold,
                    num_classes: num_classes.max(n2),
                }
            }
            (
                Self::Values {
                    mut predicted,
                    mut gold,
                },
                Self::Values {
                    predicted: p2,
                    gold: g2,
                },
            ) => {
                predicted.extend(p2);
                gold.extend(g2);
                Self::Values { predicted, gold }
            }
            _ => {
                return Err(TrainError::Step(
                    "eval_step returned different kinds of predictions across batches".into(),
                ));
            }
        })
    }
}

/// The value of a one-element tensor (a loss), read back to the host.
pub(crate) fn scalar(t: Tensor<1>) -> Result<f64> {
    float_values(t, "loss")?
        .first()
        .copied()
        .ok_or_else(|| TrainError::Step("the loss tensor is empty".into()))
}

/// Reads a float tensor back to the host.
pub(crate) fn float_values<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f64>> {
    t.into_data()
        .try_into_vec_as::<f64>()
        .map_err(|e| TrainError::Data {
            what: what.to_string(),
            reason: format!("{e:?}"),
        })
}

/// Reads an int tensor back to the host.
pub(crate) fn int_values<const D: usize>(t: Tensor<D, Int>, what: &str) -> Result<Vec<i64>> {
    t.into_data()
        .try_into_vec_as::<i64>()
        .map_err(|e| TrainError::Data {
            what: what.to_string(),
            reason: format!("{e:?}"),
        })
}

/// The token-id ranges a model's embeddings accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdLimits {
    /// Token ids must be below this (the vocabulary size).
    pub vocab_size: usize,
    /// Token-type (segment) ids must be below this (`type_vocab_size`; 1 for RoBERTa).
    pub type_vocab_size: usize,
}
