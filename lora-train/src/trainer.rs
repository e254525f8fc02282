//! The training loop: [`TrainerConfig`], [`Trainer::fit`] and [`TrainSummary`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::prelude::*;
use lora_core::LoraConfig;
use serde::{Deserialize, Serialize};

use crate::dataset::BatchSource;
use crate::error::{Result, TrainError};
use crate::loss::LossConfig;
use crate::metrics::{self, Metric, Metrics};
use crate::model::{EvalOutput, Predictions, TrainModel, scalar};
use crate::optim::OptimizerConfig;
use crate::progress::ProgressMode;
use crate::run::{Fit, Inputs};
use crate::schedule::ScheduleConfig;

/// Whether and from where to resume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resume {
    /// Start fresh (default). Existing checkpoints in the output directory are replaced as
    /// the new run saves its own.
    #[default]
    No,
    /// Resume from the newest complete checkpoint in the output directory, or start fresh if
    /// there is none (convenient for jobs that may be preempted and restarted).
    Latest,
    /// Resume from this checkpoint directory (an error if it is not a complete checkpoint).
    From(PathBuf),
}

/// Everything about a training run except the model and the data. All fields have
/// documented defaults (`TrainerConfig { output_dir, ..Default::default() }`), which follow
/// Hugging Face's `TrainingArguments` where there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainerConfig {
    /// Where checkpoints, the final adapter, `metrics.jsonl` and `curves.png` go.
    /// Default `lora-output`.
    pub output_dir: PathBuf,
    /// Passes over the training data. Default 3.
    pub num_epochs: usize,
    /// If set, train exactly this many optimizer steps (overrides `num_epochs`). Default `None`.
    pub max_steps: Option<usize>,
    /// Stop (saving a checkpoint) once this many optimizer steps are done, without changing
    /// the schedule, which still spans the whole run: resume later with [`Resume::Latest`].
    /// For time-sliced jobs. Default `None`.
    pub stop_after_steps: Option<usize>,
    /// Examples per micro-batch. Default 8.
    pub batch_size: usize,
    /// Examples per evaluation batch. Default `None` (= `batch_size`).
    pub eval_batch_size: Option<usize>,
    /// Micro-batches per optimizer step. Default 1.
    pub gradient_accumulation_steps: usize,
    /// AdamW settings (PyTorch defaults, lr 2e-4, clipping at norm 1).
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule. Default: linear decay, no warmup.
    pub schedule: ScheduleConfig,
    /// How the training loss is computed (label smoothing), passed to every training step.
    /// Default: the plain loss.
    pub loss: LossConfig,
    /// Seed of data order and dropout. Default 42.
    pub seed: u64,
    /// Shuffle each epoch. Default true.
    pub shuffle: bool,
    /// Group examples of similar length into batches (less padding). Default false.
    pub group_by_length: bool,
    /// Evaluate every this many optimizer steps. Default `None`.
    pub eval_steps: Option<usize>,
    /// Evaluate at the end of each epoch. Default true.
    pub eval_each_epoch: bool,
    /// Evaluate before the first step of a fresh run (not of a resumed one), so the log and
    /// `curves.png` show where training started (Hugging Face's `eval_on_start`). The result is
    /// [`TrainSummary::initial_eval`]; it is not a candidate for the best adapter. Default false.
    pub eval_on_start: bool,
    /// Save a checkpoint every this many optimizer steps. Default `None`.
    pub save_steps: Option<usize>,
    /// Save a checkpoint at the end of each epoch. Default true. A checkpoint is always
    /// saved when training ends.
    pub save_each_epoch: bool,
    /// Keep only this many newest checkpoints. Default `Some(2)`.
    pub save_total_limit: Option<usize>,
    /// The evaluation metric that decides the best adapter (saved to `<output_dir>/best`)
    /// and early stopping (in files: `loss`, `accuracy`, ..., an `eval_` prefix accepted).
    /// Default [`Metric::Loss`].
    pub metric_for_best: Metric,
    /// Whether larger is better for that metric. Default `None`: false for `loss` and
    /// `perplexity`, true otherwise.
    pub greater_is_better: Option<bool>,
    /// Stop after this many evaluations without improvement. Default `None`.
    pub early_stopping_patience: Option<usize>,
    /// How much better than the best a value must be to count as an improvement. Default 0.
    pub early_stopping_threshold: f64,
    /// Print a progress line every this many steps (line mode). Default 10.
    pub logging_steps: usize,
    /// Bar, lines or nothing. Default `Auto`.
    pub progress: ProgressMode,
    /// Resume from a checkpoint. Default [`Resume::No`].
    pub resume: Resume,
    /// Let a fresh run (no resume) delete the checkpoints and best adapter a previous run left
    /// in `output_dir`; without it such a run is refused, so old checkpoints are never mixed
    /// with new ones. Default false.
    pub overwrite_output_dir: bool,
    /// Name of the adapter being trained. Default `default`.
    pub adapter_name: String,
    /// Draw `curves.png` at the end. Default true.
    pub plot: bool,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("lora-output"),
            num_epochs: 3,
            max_steps: None,
            stop_after_steps: None,
            batch_size: 8,
            eval_batch_size: None,
            gradient_accumulation_steps: 1,
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            loss: LossConfig::default(),
            seed: 42,
            shuffle: true,
            group_by_length: false,
            eval_steps: None,
            eval_each_epoch: true,
            eval_on_start: false,
            save_steps: None,
            save_each_epoch: true,
            save_total_limit: Some(2),
            metric_for_best: Metric::Loss,
            greater_is_better: None,
            early_stopping_patience: None,
            early_stopping_threshold: 0.0,
            logging_steps: 10,
            progress: ProgressMode::Auto,
            resume: Resume::No,
            overwrite_output_dir: false,
            adapter_name: "default".into(),
            plot: true,
        }
    }
}

impl TrainerConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let positive = |v: usize, field: &str| {
            if v == 0 {
                Err(TrainError::config(field, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive(self.batch_size, "batch_size")?;
        positive(
            self.gradient_accumulation_steps,
            "gradient_accumulation_steps",
        )?;
        positive(self.logging_steps, "logging_steps")?;
        for (v, f) in [
            (self.eval_batch_size, "eval_batch_size"),
            (self.eval_steps, "eval_steps"),
            (self.save_steps, "save_steps"),
            (self.save_total_limit, "save_total_limit"),
            (self.max_steps, "max_steps"),
            (self.stop_after_steps, "stop_after_steps"),
            (self.early_stopping_patience, "early_stopping_patience"),
        ] {
            if let Some(v) = v {
                positive(v, f)?;
            }
        }
        if self.max_steps.is_none() {
            positive(self.num_epochs, "num_epochs")?;
        }
        if !(self.early_stopping_threshold.is_finite() && self.early_stopping_threshold >= 0.0) {
            return Err(TrainError::config(
                "early_stopping_threshold",
                "must be >= 0",
            ));
        }
        if self.adapter_name.is_empty() {
            return Err(TrainError::config("adapter_name", "must not be empty"));
        }
        self.loss.validate()?;
        self.optimizer.validate()
    }

    /// The key of [`metric_for_best`](Self::metric_for_best) in [`Metrics`].
    pub(crate) fn best_key(&self) -> &'static str {
        self.metric_for_best.name()
    }

    /// [`greater_is_better`](Self::greater_is_better), or the metric's own direction.
    pub(crate) fn greater_is_better(&self) -> bool {
        self.greater_is_better
            .unwrap_or(self.metric_for_best.greater_is_better())
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All epochs or `max_steps` done.
    Completed,
    /// The tracked metric stopped improving.
    EarlyStopping,
    /// `stop_after_steps` reached, or the [`Interrupter`] fired; a checkpoint was saved.
    Interrupted,
}

/// The best evaluation so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestMetric {
    /// Metric name.
    pub name: String,
    /// Its best value.
    pub value: f64,
    /// Step at which it was reached.
    pub step: usize,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimizer steps done (all runs together).
    pub global_step: usize,
    /// Steps the schedule spans.
    pub total_steps: usize,
    /// Epochs done, fractional.
    pub epochs: f64,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// The step this run resumed from, if it resumed.
    pub resumed_from: Option<usize>,
    /// Mean training loss of each optimizer step of this run, in order.
    pub losses: Vec<f64>,
    /// The evaluation before training ([`TrainerConfig::eval_on_start`]).
    pub initial_eval: Option<Metrics>,
    /// The last evaluation's metrics.
    pub final_eval: Option<Metrics>,
    /// The best evaluation.
    pub best: Option<BestMetric>,
    /// The final adapter (PEFT format): `<output_dir>/adapter`.
    pub adapter_dir: PathBuf,
    /// The best adapter (PEFT format), `<output_dir>/best`, if there was an evaluation.
    pub best_adapter_dir: Option<PathBuf>,
    /// The newest checkpoint.
    pub last_checkpoint: Option<PathBuf>,
    /// The metrics log.
    pub metrics_log: PathBuf,
    /// Tokens processed by this run.
    pub tokens: u64,
    /// Training throughput of this run.
    pub tokens_per_second: f64,
    /// Wall time of this run.
    pub wall_time: Duration,
}

/// A trained model with its summary. The model is in training mode on the autodiff device;
/// call `.valid()` for inference.
#[derive(Debug)]
pub struct Trained<M> {
    /// The model after the last step.
    pub model: M,
    /// What happened.
    pub summary: TrainSummary,
}

/// Stops a running [`Trainer::fit`] after its current optimizer step (a checkpoint is saved).
/// Clone it into a signal handler or another thread.
#[derive(Debug, Clone, Default)]
pub struct Interrupter(Arc<AtomicBool>);

impl Interrupter {
    /// Asks the run to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Fine-tunes a [`TrainModel`] on a [`BatchSource`].
///
/// ```no_run
/// # fn run<M: lora_train::TrainModel<Batch = lora_train::TextBatch>>(
/// #     model: M, lora: &lora_core::LoraConfig, tokenizer: &impl lora_train::Tokenizer,
/// # ) -> lora_train::Result<()> {
/// use burn::prelude::*;
/// use lora_train::{Columns, DataConfig, Trainer, TrainerConfig, load_text_datasets};
///
/// let data = DataConfig { columns: Columns::e2e("text"), max_length: 128, ..Default::default() };
/// let (train, valid) = load_text_datasets("e2e/train.txt".as_ref(), None, &data, tokenizer)?;
/// let config = TrainerConfig { output_dir: "out".into(), num_epochs: 5, ..Default::default() };
/// let trained = Trainer::new(config, Device::flex())?.fit(model, lora, &train, valid.as_ref())?;
/// println!("{:?} after {} steps", trained.summary.final_eval, trained.summary.global_step);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Trainer {
    pub(crate) config: TrainerConfig,
    pub(crate) device: Device,
    pub(crate) interrupter: Interrupter,
}

impl Trainer {
    /// A trainer running on `device` (a plain device such as `Device::flex()`; training uses
    /// its autodiff counterpart). The model passed to [`fit`](Self::fit) must live on it.
    pub fn new(config: TrainerConfig, device: Device) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            device,
            interrupter: Interrupter::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// A handle that stops [`fit`](Self::fit) after the current step.
    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Trains `model`'s trainable parameters (those that require a gradient: the adapter
    /// `lora` describes, as [`lora_core::inject_adapter`] set it up) on `train`, evaluating on
    /// `valid` if given, and returns the trained model and a summary.
    ///
    /// Per optimizer step: `gradient_accumulation_steps` micro-batches of `batch_size`
    /// examples, each with the device RNG reseeded from `(seed, step, micro-batch)`; the
    /// gradient of the count-weighted mean loss; one [`AdamW`](crate::AdamW) update (clipping
    /// to `max_grad_norm`, the scheduled learning rate). Checkpoints hold the adapter (PEFT
    /// format), the trainable tensors, the optimizer state and [`TrainerState`](crate::TrainerState); resuming one
    /// continues exactly as if the run had not stopped.
    ///
    /// A NaN or infinite loss or gradient norm stops training with [`TrainError::NonFinite`]
    /// before the update; no checkpoint is written after it, so the last one stays good.
    ///
    /// Reproducibility: burn's device RNG (dropout masks) is global to the process for each
    /// backend, so a run is bit-for-bit repeatable only while nothing else in the process draws
    /// random numbers on the same backend at the same time (e.g. two concurrent `fit` calls).
    pub fn fit<M, D>(
        &self,
        model: M,
        lora: &LoraConfig,
        train: &D,
        valid: Option<&D>,
    ) -> Result<Trained<M>>
    where
        M: TrainModel,
        D: BatchSource<Batch = M::Batch>,
    {
        let wall = Instant::now();
        check_data(&model, train, valid)?;
        let inputs = Inputs { lora, train, valid };
        let (mut fit, model) = Fit::start(self, inputs, model.train(), wall)?;
        let initial_eval = fit.initial_eval(&model)?;
        let model = fit.run_epochs(model)?;
        fit.finish(model, initial_eval)
    }

    /// Evaluates `model` on `data` (in `valid()` mode, batches of `eval_batch_size` in data
    /// order) and returns the mean loss and the task's metrics.
    pub fn evaluate<M, D>(&self, model: &M, data: &D) -> Result<Metrics>
    where
        M: TrainModel,
        D: BatchSource<Batch = M::Batch>,
    {
        if data.is_empty() {
            return Err(TrainError::EmptyDataset {
                what: "(evaluation data)".into(),
            });
        }
        if let Some(limits) = model.id_limits() {
            data.check_ids(&limits, "evaluation data")?;
        }
        let model = model.valid();
        let bs = self
            .config
            .eval_batch_size
            .unwrap_or(self.config.batch_size);
        let order: Vec<usize> = (0..data.len()).collect();
        let mut loss_sum = 0.0;
        let mut count = 0usize;
        let mut all: Option<Predictions> = None;
        for chunk in order.chunks(bs) {
            let batch = data.batch(chunk, &self.device)?;
            let EvalOutput {
                loss,
                count: n,
                predictions,
            } = model.eval_step(&batch)?;
            loss_sum += scalar(loss)? * n as f64;
            count += n;
            all = Some(match all {
                None => predictions,
                Some(prev) => prev.append(predictions)?,
            });
        }
        let loss = loss_sum / count.max(1) as f64;
        Ok(metrics::of_predictions(
            loss,
            all.unwrap_or(Predictions::None),
        ))
    }
}

/// Refuses empty datasets and token ids the model's embeddings do not hold.
fn check_data<M, D>(model: &M, train: &D, valid: Option<&D>) -> Result<()>
where
    M: TrainModel,
    D: BatchSource<Batch = M::Batch>,
{
    if train.is_empty() {
        return Err(TrainError::EmptyDataset {
            what: "(training data)".into(),
        });
    }
    if valid.is_some_and(|v| v.is_empty()) {
        return Err(TrainError::EmptyDataset {
            what: "(validation data)".into(),
        });
    }
    if let Some(limits) = model.id_limits() {
        train.check_ids(&limits, "training data")?;
        valid.map_or(Ok(()), |v| v.check_ids(&limits, "validation data"))?;
    }
    Ok(())
}
