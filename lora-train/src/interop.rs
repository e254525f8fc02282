//! Driving a [`TrainModel`] with burn's own `Learner` (and its TUI) instead of [`Trainer`].
//!
//! [`LearnerAdapter`] wraps any [`TrainModel`] and implements burn's [`TrainStep`] and
//! [`InferenceStep`]; [`TextDataset`] is a burn `Dataset` and [`TextDataset::batcher`] a burn
//! `Batcher`, so burn's data loaders work on our data. burn's `Learner` then trains with its
//! own optimizer, checkpoints (whole-model `.bpk` files, not adapters) and dashboard; use
//! [`Trainer`] for adapter-only checkpoints, exact resume and PEFT output.
//!
//! lora-models' `train` module shows a GPT-2 run under burn's `Learner`.

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
