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
//! use burn::train::{Interrupter, Learner, SupervisedTraining};
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
//! // One interrupter for both: a failing step stops training with its message.
//! let interrupter = Interrupter::new();
//! let adapter = LearnerAdapter::new(model, &interrupter);
//! let learner = Learner::new(adapter, AdamWConfig::new().init(), 2e-4);
//! let result = SupervisedTraining::new("burn-run", loader(train), loader(valid))
//!     .metric_train_numeric(LossMetric::new())
//!     .metric_valid_numeric(LossMetric::new())
//!     .num_epochs(2)
//!     .with_interrupter(interrupter)
//!     .launch(learner);
//! if let Some(e) = result.model.error() {
//!     return Err(e.into());
//! }
//! let trained: Gpt2LmHeadModel = result.model.inner;
//! # let _ = trained;
//! # Ok(())
//! # }
//! ```

use burn::module::{Module, ModuleDisplay};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::ExecutionError;
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, Interrupter, TrainOutput, TrainStep};
use std::sync::{Arc, Mutex};

use crate::error::TrainError;
use crate::loss::LossConfig;
use crate::model::TrainModel;
#[allow(unused_imports)] // named in the docs
use crate::{Trainer, dataset::TextDataset};

/// A [`TrainModel`] as a burn `Learner` model: `TrainStep` runs
/// [`TrainModel::train_step`] and backward, `InferenceStep` runs [`TrainModel::eval_step`].
///
/// burn's step traits cannot return an error. When the model returns one (a sequence longer
/// than it accepts, say), the adapter stops training through burn's [`Interrupter`]: pass the
/// same interrupter to `SupervisedTraining::with_interrupter`. The step itself yields a NaN
/// loss and no gradient, so nothing is updated. `LearningResult::interrupted` then carries the
/// message, and [`LearnerAdapter::error`] the first error. [`Trainer`] returns the error
/// directly instead.
#[derive(Module, Debug)]
pub struct LearnerAdapter<M: Module> {
    /// The wrapped model.
    pub inner: M,
    #[module(skip)]
    failure: StepFailure,
    #[module(skip)]
    loss: LossConfig,
}

/// Where a failing step reports to: burn's interrupter, and the first error's message.
#[derive(Clone, Default)]
struct StepFailure {
    interrupter: Interrupter,
    first: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepFailure")
            .field("first", &self.message())
            .finish()
    }
}

impl StepFailure {
    fn record(&self, what: &str, e: &TrainError) {
        let message = format!("{what} step failed: {e}");
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert_with(|| message.clone());
        }
        self.interrupter.stop(Some(&message));
    }

    fn message(&self) -> Option<String> {
        self.first.lock().ok().and_then(|m| m.clone())
    }
}

impl<M: Module> LearnerAdapter<M> {
    /// Wraps `inner`, in training mode (autodiff on its device, trainable parameters tracked),
    /// which burn's `Learner` expects. A failing step stops training through `interrupter`.
    pub fn new(inner: M, interrupter: &Interrupter) -> Self {
        Self {
            inner: inner.train(),
            failure: StepFailure {
                interrupter: interrupter.clone(),
                first: Arc::default(),
            },
            loss: LossConfig::default(),
        }
    }

    /// The same adapter with training steps computing their loss as `loss` says (default:
    /// the plain loss).
    pub fn with_loss(self, loss: LossConfig) -> Self {
        Self { loss, ..self }
    }

    /// The first step error, if a step failed (training was stopped then).
    pub fn error(&self) -> Option<String> {
        self.failure.message()
    }
}

/// A step that updates nothing: NaN loss (so it shows in burn's metrics), no gradient.
fn failed_step(device: &Device) -> StepLoss {
    StepLoss {
        loss: Tensor::full([1], f32::NAN, device),
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
        match self.inner.train_step(&batch, &self.loss) {
            Ok(out) => {
                let grads = out.loss.backward();
                TrainOutput::new(self, grads, StepLoss { loss: out.loss })
            }
            Err(e) => {
                self.failure.record("train", &e);
                let device = self.inner.devices().into_iter().next().unwrap_or_default();
                TrainOutput {
                    grads: GradientsParams::new(),
                    item: failed_step(&device),
                }
            }
        }
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
            Err(e) => {
                self.failure.record("evaluation", &e);
                let device = self.inner.devices().into_iter().next().unwrap_or_default();
                failed_step(&device)
            }
        }
    }
}
