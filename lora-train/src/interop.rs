//! Driving a [`TrainModel`] with burn's own `Learner` (and its TUI) instead of [`Trainer`].
//!
//! [`LearnerAdapter`] wraps any [`TrainModel`] and implements burn's [`TrainStep`] and
//! [`InferenceStep`]; [`TextDataset`] is a burn `Dataset` and [`TextDataset::batcher`] a burn
//! `Batcher`, so burn's data loaders work on our data. burn's `Learner` then trains with its
//! own optimizer, checkpoints (whole-model `.bpk` files, not adapters) and dashboard; use
//! [`Trainer`] for adapter-only checkpoints, exact resume and PEFT output.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::data::dataloader::DataLoaderBuilder;
//! use burn::optim::AdamWConfig;
//! use burn::prelude::*;
//! use burn::train::metric::LossMetric;
//! use burn::train::{Learner, SupervisedTraining};
//! use lora_core::LoraConfig;
//! use lora_models::{TextTokenizer, gpt2::{CAttnMode, Gpt2LmHeadModel, inject_gpt2_lora}};
//! use lora_train::{DataConfig, LearnerAdapter, Columns, load_text_datasets};
//!
//! let device = Device::flex();
//! let (model, _) = Gpt2LmHeadModel::from_pretrained("gpt2", &device)?;
//! let (model, _lora) = inject_gpt2_lora(model, &LoraConfig::new(8, 16.0, &["c_attn"]), "default", CAttnMode::Fused)?;
//! let tokenizer = TextTokenizer::from_dir("gpt2")?;
//! let data = DataConfig { columns: Columns::text("text"), max_length: 64, ..Default::default() };
//! let (train, valid) = load_text_datasets("train.jsonl".as_ref(), None, &data, &tokenizer)?;
//! let valid = valid.ok_or("no validation split")?;
//!
//! let loader = |ds: lora_train::TextDataset| {
//!     DataLoaderBuilder::new(ds.batcher()).batch_size(8).shuffle(42).build(ds)
//! };
//! let learner = Learner::new(LearnerAdapter::new(model), AdamWConfig::new().init(), 2e-4);
//! let result = SupervisedTraining::new("burn-run", loader(train), loader(valid))
//!     .metric_train_numeric(LossMetric::new())
//!     .metric_valid_numeric(LossMetric::new())
//!     .num_epochs(2)
//!     .launch(learner);
//! let trained: Gpt2LmHeadModel = result.model.inner;
//! # let _ = trained;
//! # Ok(())
//! # }
//! ```

use burn::module::{Module, ModuleDisplay};
use burn::prelude::*;
use burn::tensor::ExecutionError;
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use crate::model::TrainModel;
#[allow(unused_imports)] // named in the docs
use crate::{Trainer, dataset::TextDataset};

/// A [`TrainModel`] as a burn `Learner` model: `TrainStep` runs
/// [`TrainModel::train_step`] and backward, `InferenceStep` runs [`TrainModel::eval_step`].
///
/// burn's step traits cannot fail, so an error from the model (for instance a sequence longer
/// than the model accepts) panics with its message there; [`Trainer`] returns it instead.
#[derive(Module, Debug)]
pub struct LearnerAdapter<M: Module> {
    /// The wrapped model.
    pub inner: M,
}

impl<M: Module> LearnerAdapter<M> {
    /// Wraps `inner`, in training mode (autodiff on its device, trainable parameters tracked),
    /// which burn's `Learner` expects.
    pub fn new(inner: M) -> Self {
        Self {
            inner: inner.train(),
        }
    }
}

/// The output of a [`LearnerAdapter`] step: the mean loss, for burn's `LossMetric`.
#[derive(Debug, Clone)]
pub struct StepLoss {
    /// Mean loss `[1]`.
    pub loss: Tensor<1>,
}

impl ItemLazy for StepLoss {
    fn sync(self) -> Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        Ok(Self {
            loss: self.loss.without_autodiff(),
        })
    }
}

impl Adaptor<LossInput> for StepLoss {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl<M> TrainStep for LearnerAdapter<M>
where
    M: TrainModel + ModuleDisplay,
    M::Batch: Send + 'static,
{
    type Input = M::Batch;
    type Output = StepLoss;

    fn step(&self, batch: M::Batch) -> TrainOutput<StepLoss> {
        let out = match self.inner.train_step(&batch) {
            Ok(out) => out,
            Err(e) => panic!("train step failed: {e}"),
        };
        let grads = out.loss.backward();
        TrainOutput::new(self, grads, StepLoss { loss: out.loss })
    }
}

impl<M> InferenceStep for LearnerAdapter<M>
where
    M: TrainModel + ModuleDisplay,
    M::Batch: Send + 'static,
{
    type Input = M::Batch;
    type Output = StepLoss;

    fn step(&self, batch: M::Batch) -> StepLoss {
        match self.inner.eval_step(&batch) {
            Ok(out) => StepLoss { loss: out.loss },
            Err(e) => panic!("evaluation step failed: {e}"),
        }
    }
}
