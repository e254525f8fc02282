//! The training loop: [`TrainerConfig`], [`Trainer::fit`] and [`TrainSummary`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::prelude::*;
use lora_core::LoraConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::checkpoint::{
    FORMAT_VERSION, OPTIMIZER_FILE, TRAINABLE_FILE, TrainerState, latest_checkpoint,
    list_checkpoints, prune_checkpoints, remove_stale, save_checkpoint, write_dir_atomic,
};
use crate::error::{Result, TrainError};
use crate::metrics;
use crate::model::{BatchSource, EvalOutput, Predictions, TrainModel, float_values};
use crate::optim::{
    AdamW, GradAccumulator, OptimizerConfig, global_norm, set_trainable_values, trainable_params,
    trainable_values,
};
use crate::plot::plot_curves;
use crate::progress::{MetricsLog, Progress, ProgressMode, step_record};
use crate::sampler::{derive_seed, epoch_order, make_batches};
use crate::schedule::ScheduleConfig;

/// Evaluation results by name: `loss` always; `perplexity`, `accuracy`/`f1`/`mcc` or
/// `pearson`/`spearman` depending on the task (see [`Predictions`]).
pub type Metrics = BTreeMap<String, f64>;

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
    /// and early stopping: `loss`, `perplexity`, `accuracy`, `f1`, `mcc`, `pearson`,
    /// `spearman` (an `eval_` prefix is accepted). Default `loss`.
    pub metric_for_best: String,
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
            seed: 42,
            shuffle: true,
            group_by_length: false,
            eval_steps: None,
            eval_each_epoch: true,
            eval_on_start: false,
            save_steps: None,
            save_each_epoch: true,
            save_total_limit: Some(2),
            metric_for_best: "loss".into(),
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
        self.optimizer.validate()
    }

    fn best_key(&self) -> &str {
        self.metric_for_best
            .strip_prefix("eval_")
            .unwrap_or(&self.metric_for_best)
    }

    fn greater_is_better(&self) -> bool {
        self.greater_is_better
            .unwrap_or(!matches!(self.best_key(), "loss" | "perplexity"))
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
/// # fn main() -> Result<(), lora_train::TrainError> {
/// use burn::prelude::*;
/// use lora_core::LoraConfig;
/// use lora_models::{TextTokenizer, gpt2::{CAttnMode, Gpt2LmHeadModel, inject_gpt2_lora}};
/// use lora_train::{Columns, DataConfig, Trainer, TrainerConfig, load_text_datasets};
///
/// let device = Device::flex();
/// device.seed(42);
/// let (model, _) = Gpt2LmHeadModel::from_pretrained("gpt2", &device)?;
/// let (model, lora) = inject_gpt2_lora(model, &LoraConfig::new(4, 32.0, &["c_attn"]), "default", CAttnMode::Fused)?;
/// let tokenizer = TextTokenizer::from_dir("gpt2")?;
/// let data = DataConfig { columns: Columns::e2e("text"), max_length: 128, ..Default::default() };
/// let (train, valid) = load_text_datasets("e2e/train.txt".as_ref(), None, &data, &tokenizer)?;
/// let config = TrainerConfig { output_dir: "out".into(), num_epochs: 5, ..Default::default() };
/// let trained = Trainer::new(config, device)?.fit(model, &lora, &train, valid.as_ref())?;
/// println!("{:?} after {} steps", trained.summary.final_eval, trained.summary.global_step);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Trainer {
    config: TrainerConfig,
    device: Device,
    interrupter: Interrupter,
}

/// The run's mutable position, saved in each checkpoint.
struct Run {
    state: TrainerState,
    last_eval: Option<Metrics>,
    last_eval_step: Option<usize>,
    last_saved: Option<usize>,
    stop: Option<StopReason>,
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
    /// gradient of the count-weighted mean loss; clipping to `max_grad_norm` (global norm);
    /// one AdamW update at the scheduled learning rate. Checkpoints hold the adapter (PEFT
    /// format), the trainable tensors, the optimizer state and [`TrainerState`]; resuming one
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
        let c = &self.config;
        let wall = Instant::now();
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
        let train_device = self.device.clone().autodiff();
        let mut model = model.train();
        let params = trainable_params(&model);
        if params.is_empty() {
            return Err(TrainError::config(
                "model",
                "it has no trainable parameter (inject an adapter first, on this device)",
            ));
        }
        let micro_per_epoch = train.len().div_ceil(c.batch_size);
        let steps_per_epoch = micro_per_epoch.div_ceil(c.gradient_accumulation_steps);
        let total_steps = c.max_steps.unwrap_or(c.num_epochs * steps_per_epoch);
        let schedule = c.schedule.build(c.optimizer.learning_rate, total_steps)?;
        let mut optim = AdamW::new(c.optimizer);
        let out = c.output_dir.clone();
        std::fs::create_dir_all(&out).map_err(TrainError::io("cannot create", &out))?;
        remove_stale(&out)?;

        let fingerprint = format!("{:016x}", train.fingerprint());
        let fresh = TrainerState {
            format: FORMAT_VERSION,
            global_step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            total_steps,
            seed: c.seed,
            batch_size: c.batch_size,
            gradient_accumulation_steps: c.gradient_accumulation_steps,
            shuffle: c.shuffle,
            group_by_length: c.group_by_length,
            train_len: train.len(),
            data_fingerprint: fingerprint,
            rng: "device RNG reseeded from (seed, step, micro-batch) before every forward; \
                  epoch order from (seed, epoch) (SplitMix64 + Fisher-Yates)"
                .into(),
            metric_for_best: c.best_key().to_string(),
            best_metric: None,
            best_step: None,
            evals_without_improvement: 0,
            samples_seen: 0,
            tokens_seen: 0,
            last_learning_rate: 0.0,
            last_loss: None,
            elapsed_secs: 0.0,
        };
        let resume_dir = match &c.resume {
            Resume::No => None,
            Resume::Latest => latest_checkpoint(&out)?,
            Resume::From(p) => Some(p.clone()),
        };
        if resume_dir.is_none() {
            let old = list_checkpoints(&out)?;
            if !old.is_empty() && !c.overwrite_output_dir {
                let names: Vec<String> = old
                    .iter()
                    .filter_map(|(_, p)| p.file_name().map(|n| n.to_string_lossy().to_string()))
                    .collect();
                return Err(TrainError::config(
                    "output_dir",
                    format!(
                        "{} already holds checkpoints ({}): resume with Resume::Latest, set \
                         overwrite_output_dir, or choose another directory",
                        out.display(),
                        names.join(", ")
                    ),
                ));
            }
            for dir in old.into_iter().map(|(_, p)| p).chain([out.join("best")]) {
                if dir.is_dir() {
                    std::fs::remove_dir_all(&dir).map_err(TrainError::io("cannot remove", &dir))?;
                }
            }
        }
        let mut run = Run {
            state: fresh.clone(),
            last_eval: None,
            last_eval_step: None,
            last_saved: None,
            stop: None,
        };
        if let Some(dir) = &resume_dir {
            let state = TrainerState::load(dir)?;
            check_compatible(&state, &fresh, dir)?;
            let values = lora_core::read_safetensors(dir.join(TRAINABLE_FILE))?;
            let values: HashMap<_, _> = values.into_iter().collect();
            model = set_trainable_values(model, &values, &dir.join(TRAINABLE_FILE))?;
            optim.load(&dir.join(OPTIMIZER_FILE), &params, &self.device)?;
            run.state = TrainerState {
                total_steps,
                ..state
            };
            run.last_saved = Some(run.state.global_step);
        }
        let resumed_from = resume_dir.as_ref().map(|_| run.state.global_step);
        let mut log = MetricsLog::open(&out.join("metrics.jsonl"), resumed_from)?;
        let mut progress = Progress::new(
            c.progress,
            total_steps,
            run.state.global_step,
            c.logging_steps,
        );
        if let (Some(dir), Some(step)) = (&resume_dir, resumed_from) {
            progress.message(&format!("resuming from {} (step {step})", dir.display()));
        }
        let initial_eval = match valid {
            Some(v) if c.eval_on_start && resumed_from.is_none() => {
                Some(self.log_eval(&model, v, run.state.global_step, 0.0, &mut log, &progress)?)
            }
            _ => None,
        };
        let elapsed_before = run.state.elapsed_secs;
        let mut losses = Vec::new();
        let mut tokens_run: u64 = 0;
        let lengths = |i: usize| train.item_len(i);

        let stop_at = c
            .stop_after_steps
            .map(|s| s.min(total_steps))
            .unwrap_or(total_steps);
        'epochs: while run.state.global_step < stop_at {
            let epoch = run.state.epoch;
            let order = epoch_order(train.len(), c.seed, epoch, c.shuffle);
            let len_fn: &dyn Fn(usize) -> usize = &lengths;
            let batches = make_batches(&order, c.batch_size, c.group_by_length.then_some(len_fn));
            let start_group = run
                .state
                .batch_in_epoch
                .div_ceil(c.gradient_accumulation_steps);
            for group in batches
                .chunks(c.gradient_accumulation_steps)
                .skip(start_group)
            {
                if run.state.global_step >= stop_at {
                    break 'epochs;
                }
                let step_index = run.state.global_step;
                let mut acc = GradAccumulator::new();
                let (mut loss_sum, mut count_sum, mut samples, mut tokens) =
                    (0.0, 0usize, 0u64, 0u64);
                for (micro, indices) in group.iter().enumerate() {
                    let batch = train.batch(indices, &train_device)?;
                    train_device.seed(derive_seed(c.seed, &[step_index as u64, micro as u64]));
                    let output = model.train_grads(&batch)?;
                    if output.count == 0 {
                        return Err(TrainError::Step(
                            "train_step returned a loss over 0 items".into(),
                        ));
                    }
                    let value = scalar(output.loss.clone())?;
                    if !value.is_finite() {
                        return Err(self.non_finite(
                            "loss",
                            value,
                            step_index + 1,
                            &progress,
                            &mut log,
                        ));
                    }
                    acc.add_parts(&model, output.parts, output.count);
                    loss_sum += value * output.count as f64;
                    count_sum += output.count;
                    samples += indices.len() as u64;
                    tokens += indices
                        .iter()
                        .map(|&i| train.item_len(i) as u64)
                        .sum::<u64>();
                }
                let grads = acc.finish();
                let norm = global_norm(&grads)?;
                if !norm.is_finite() {
                    return Err(self.non_finite(
                        "gradient norm",
                        norm,
                        step_index + 1,
                        &progress,
                        &mut log,
                    ));
                }
                let clip = match c.optimizer.max_grad_norm {
                    Some(max) if norm > max => max / (norm + 1e-6),
                    _ => 1.0,
                };
                let lr = schedule.lr(step_index);
                model = optim.step(model, grads, lr, clip);

                let loss = loss_sum / count_sum as f64;
                losses.push(loss);
                tokens_run += tokens;
                let st = &mut run.state;
                st.global_step += 1;
                st.batch_in_epoch += group.len();
                st.samples_seen += samples;
                st.tokens_seen += tokens;
                st.last_learning_rate = lr;
                st.last_loss = Some(loss);
                let step = st.global_step;
                let epoch_f = st.epoch as f64 + st.batch_in_epoch as f64 / micro_per_epoch as f64;
                let tps = tokens_run as f64 / wall.elapsed().as_secs_f64().max(1e-9);
                log.write(step_record(step, epoch_f, loss, lr, norm, tps))?;
                progress.step(step, epoch_f, loss, lr, tps);

                if c.eval_steps.is_some_and(|n| step.is_multiple_of(n))
                    && let Some(v) = valid
                {
                    self.evaluate_and_track(
                        &model, v, lora, &mut run, &mut log, &progress, epoch_f,
                    )?;
                }
                if self.interrupter.is_stopped() || step == stop_at && stop_at < total_steps {
                    run.stop = Some(StopReason::Interrupted);
                }
                if c.save_steps.is_some_and(|n| step.is_multiple_of(n)) || run.stop.is_some() {
                    self.checkpoint(&model, lora, &optim, &mut run, elapsed_before, wall)?;
                }
                if run.stop.is_some() {
                    break 'epochs;
                }
            }
            if run.state.batch_in_epoch >= micro_per_epoch {
                run.state.epoch += 1;
                run.state.batch_in_epoch = 0;
                let epoch_f = run.state.epoch as f64;
                if c.eval_each_epoch
                    && let Some(v) = valid
                {
                    self.evaluate_and_track(
                        &model, v, lora, &mut run, &mut log, &progress, epoch_f,
                    )?;
                }
                if c.save_each_epoch {
                    self.checkpoint(&model, lora, &optim, &mut run, elapsed_before, wall)?;
                }
                if run.stop.is_some() {
                    break;
                }
            }
        }
        let stop_reason = run.stop.unwrap_or(StopReason::Completed);
        // A final evaluation when the last step was not evaluated (e.g. max_steps mid-epoch).
        if stop_reason == StopReason::Completed
            && run.last_eval_step != Some(run.state.global_step)
            && let Some(v) = valid
        {
            let epoch_f =
                run.state.epoch as f64 + run.state.batch_in_epoch as f64 / micro_per_epoch as f64;
            self.evaluate_and_track(&model, v, lora, &mut run, &mut log, &progress, epoch_f)?;
        }
        if run.last_saved != Some(run.state.global_step) {
            self.checkpoint(&model, lora, &optim, &mut run, elapsed_before, wall)?;
        }
        progress.finish();
        let adapter_dir = out.join("adapter");
        write_dir_atomic(&adapter_dir, |d| {
            model
                .save_adapter(lora, &c.adapter_name, d)
                .map_err(Into::into)
        })?;
        if c.plot
            && let Err(e) = plot_curves(
                log.path(),
                &out.join("curves.png"),
                c.best_key(),
                c.greater_is_better(),
            )
        {
            progress.message(&format!("warning: no curves.png: {e}"));
        }
        let wall_time = wall.elapsed();
        let best_adapter = out.join("best");
        let summary = TrainSummary {
            global_step: run.state.global_step,
            total_steps,
            epochs: run.state.epoch as f64
                + run.state.batch_in_epoch as f64 / micro_per_epoch as f64,
            stop_reason,
            resumed_from,
            losses,
            initial_eval,
            final_eval: run.last_eval.clone(),
            best: match (run.state.best_metric, run.state.best_step) {
                (Some(value), Some(step)) => Some(BestMetric {
                    name: run.state.metric_for_best.clone(),
                    value,
                    step,
                }),
                _ => None,
            },
            adapter_dir,
            best_adapter_dir: best_adapter.is_dir().then_some(best_adapter),
            last_checkpoint: latest_checkpoint(&out)?,
            metrics_log: log.path().to_path_buf(),
            tokens: tokens_run,
            tokens_per_second: tokens_run as f64 / wall_time.as_secs_f64().max(1e-9),
            wall_time,
        };
        let line = match (&summary.final_eval, summary.losses.last()) {
            (Some(m), _) => format!("done: step {} eval {}", summary.global_step, fmt_metrics(m)),
            (None, Some(l)) => format!("done: step {} loss {l:.4}", summary.global_step),
            _ => format!("done: step {}", summary.global_step),
        };
        progress.message(&line);
        Ok(Trained { model, summary })
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
            let value = scalar(loss)?;
            loss_sum += value * n as f64;
            count += n;
            all = Some(match all {
                None => predictions,
                Some(prev) => merge(prev, predictions)?,
            });
        }
        let loss = loss_sum / count.max(1) as f64;
        let mut m = Metrics::new();
        m.insert("loss".into(), loss);
        match all.unwrap_or(Predictions::None) {
            Predictions::None => {}
            Predictions::LanguageModel => {
                m.insert("perplexity".into(), metrics::perplexity(loss));
            }
            Predictions::Classes {
                predicted,
                gold,
                num_classes,
            } => {
                m.insert("accuracy".into(), metrics::accuracy(&predicted, &gold));
                m.insert("f1".into(), metrics::f1(&predicted, &gold, num_classes));
                m.insert("mcc".into(), metrics::mcc(&predicted, &gold, num_classes));
            }
            Predictions::Values { predicted, gold } => {
                m.insert("pearson".into(), metrics::pearson(&predicted, &gold));
                m.insert("spearman".into(), metrics::spearman(&predicted, &gold));
            }
        }
        Ok(m)
    }

    /// Evaluates, writes the `eval_*` record of `step` to the log and reports it.
    fn log_eval<M, D>(
        &self,
        model: &M,
        valid: &D,
        step: usize,
        epoch: f64,
        log: &mut MetricsLog,
        progress: &Progress,
    ) -> Result<Metrics>
    where
        M: TrainModel,
        D: BatchSource<Batch = M::Batch>,
    {
        let m = self.evaluate(model, valid)?;
        let mut record = serde_json::Map::new();
        record.insert("step".into(), json!(step));
        record.insert("epoch".into(), json!(epoch));
        for (k, v) in &m {
            record.insert(format!("eval_{k}"), json!(v));
        }
        log.write(Value::Object(record))?;
        progress.message(&format!(
            "eval step {step} epoch {epoch:.2}: {}",
            fmt_metrics(&m)
        ));
        Ok(m)
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate_and_track<M, D>(
        &self,
        model: &M,
        valid: &D,
        lora: &LoraConfig,
        run: &mut Run,
        log: &mut MetricsLog,
        progress: &Progress,
        epoch: f64,
    ) -> Result<()>
    where
        M: TrainModel,
        D: BatchSource<Batch = M::Batch>,
    {
        let c = &self.config;
        let step = run.state.global_step;
        let m = self.log_eval(model, valid, step, epoch, log, progress)?;
        let key = c.best_key();
        let value = *m.get(key).ok_or_else(|| {
            TrainError::config(
                "metric_for_best",
                format!(
                    "`{key}` is not computed for this task (available: {})",
                    m.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let greater = c.greater_is_better();
        let t = c.early_stopping_threshold;
        let improved = match run.state.best_metric {
            None => value.is_finite(),
            Some(best) if greater => value > best + t,
            Some(best) => value < best - t,
        };
        if improved {
            run.state.best_metric = Some(value);
            run.state.best_step = Some(step);
            run.state.evals_without_improvement = 0;
            write_dir_atomic(&c.output_dir.join("best"), |d| {
                model
                    .save_adapter(lora, &c.adapter_name, d)
                    .map_err(Into::into)
            })?;
        } else {
            run.state.evals_without_improvement += 1;
            if c.early_stopping_patience
                .is_some_and(|p| run.state.evals_without_improvement >= p)
            {
                progress.message(&format!(
                    "early stopping: no improvement of {key} in {} evaluations (best {:.6} at step {})",
                    run.state.evals_without_improvement,
                    run.state.best_metric.unwrap_or(f64::NAN),
                    run.state.best_step.unwrap_or(0)
                ));
                run.stop = Some(StopReason::EarlyStopping);
            }
        }
        run.last_eval = Some(m);
        run.last_eval_step = Some(step);
        Ok(())
    }

    fn checkpoint<M: TrainModel>(
        &self,
        model: &M,
        lora: &LoraConfig,
        optim: &AdamW,
        run: &mut Run,
        elapsed_before: f64,
        wall: Instant,
    ) -> Result<()> {
        let c = &self.config;
        run.state.elapsed_secs = elapsed_before + wall.elapsed().as_secs_f64();
        let step = run.state.global_step;
        save_checkpoint(&c.output_dir, step, |dir| {
            model.save_adapter(lora, &c.adapter_name, dir)?;
            let values = trainable_values(model)?;
            let file = dir.join(TRAINABLE_FILE);
            let bytes = lora_core::io::serialize_safetensors(&values, &[("format", "pt")], &file)?;
            lora_core::io::write_atomic(&file, &bytes)?;
            optim.save(&dir.join(OPTIMIZER_FILE))?;
            run.state.save(dir)
        })?;
        run.last_saved = Some(step);
        if let Some(k) = c.save_total_limit {
            prune_checkpoints(&c.output_dir, k)?;
        }
        Ok(())
    }

    fn non_finite(
        &self,
        what: &'static str,
        value: f64,
        step: usize,
        progress: &Progress,
        log: &mut MetricsLog,
    ) -> TrainError {
        let last_checkpoint = latest_checkpoint(&self.config.output_dir).ok().flatten();
        let _ = log.write(json!({"step": step, "stopped": format!("non-finite {what}: {value}")}));
        progress.finish();
        TrainError::NonFinite {
            what,
            value,
            step,
            last_checkpoint,
        }
    }
}

fn check_compatible(saved: &TrainerState, now: &TrainerState, dir: &Path) -> Result<()> {
    let mut diffs = Vec::new();
    let mut cmp = |name: &str, a: String, b: String| {
        if a != b {
            diffs.push(format!("{name}: checkpoint {a}, now {b}"));
        }
    };
    cmp("seed", saved.seed.to_string(), now.seed.to_string());
    cmp(
        "batch_size",
        saved.batch_size.to_string(),
        now.batch_size.to_string(),
    );
    cmp(
        "gradient_accumulation_steps",
        saved.gradient_accumulation_steps.to_string(),
        now.gradient_accumulation_steps.to_string(),
    );
    cmp(
        "shuffle",
        saved.shuffle.to_string(),
        now.shuffle.to_string(),
    );
    cmp(
        "group_by_length",
        saved.group_by_length.to_string(),
        now.group_by_length.to_string(),
    );
    cmp(
        "training examples",
        saved.train_len.to_string(),
        now.train_len.to_string(),
    );
    cmp(
        "data fingerprint",
        saved.data_fingerprint.clone(),
        now.data_fingerprint.clone(),
    );
    cmp(
        "metric_for_best",
        saved.metric_for_best.clone(),
        now.metric_for_best.clone(),
    );
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!(
                "cannot resume exactly, the run differs ({})",
                diffs.join("; ")
            ),
        })
    }
}

fn merge(a: Predictions, b: Predictions) -> Result<Predictions> {
    Ok(match (a, b) {
        (Predictions::None, Predictions::None) => Predictions::None,
        (Predictions::LanguageModel, Predictions::LanguageModel) => Predictions::LanguageModel,
        (
            Predictions::Classes {
                mut predicted,
                mut gold,
                num_classes,
            },
            Predictions::Classes {
                predicted: p2,
                gold: g2,
                num_classes: n2,
            },
        ) => {
            predicted.extend(p2);
            gold.extend(g2);
            Predictions::Classes {
                predicted,
                gold,
                num_classes: num_classes.max(n2),
            }
        }
        (
            Predictions::Values {
                mut predicted,
                mut gold,
            },
            Predictions::Values {
                predicted: p2,
                gold: g2,
            },
        ) => {
            predicted.extend(p2);
            gold.extend(g2);
            Predictions::Values { predicted, gold }
        }
        _ => {
            return Err(TrainError::Step(
                "eval_step returned different kinds of predictions across batches".into(),
            ));
        }
    })
}

fn scalar(t: Tensor<1>) -> Result<f64> {
    float_values(t, "loss")?
        .first()
        .copied()
        .ok_or_else(|| TrainError::Step("the loss tensor is empty".into()))
}

fn fmt_metrics(m: &Metrics) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}
