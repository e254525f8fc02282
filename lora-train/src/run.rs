//! One [`Trainer::fit`](crate::Trainer::fit) in progress: [`Fit`] holds the run's inputs, its
//! position and its outputs, so each part of the loop is a method with one idea: starting or
//! resuming, one optimizer step, evaluation with best-adapter tracking, a checkpoint, the
//! final summary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use lora_core::LoraConfig;

use crate::checkpoint::{
    FORMAT_VERSION, OPTIMIZER_FILE, TRAINABLE_FILE, TrainerState, latest_checkpoint,
    list_checkpoints, prune_checkpoints, remove_stale, save_checkpoint, write_dir_atomic,
};
use crate::dataset::BatchSource;
use crate::error::{Result, TrainError};
use crate::metrics::{Metrics, format_metrics};
use crate::model::{TrainModel, scalar};
use crate::optim::{
    AdamW, GradAccumulator, TrainableParam, global_norm, set_trainable_values, trainable_params,
    trainable_values,
};
use crate::plot::plot_curves;
use crate::progress::{MetricsLog, Progress, step_record};
use crate::sampler::{derive_seed, epoch_order, make_batches};
use crate::trainer::{BestMetric, Resume, StopReason, TrainSummary, Trained, Trainer};

/// What `fit` trains on: the adapter being trained and the data.
pub(crate) struct Inputs<'a, D> {
    /// The adapter's settings (for the saved adapters).
    pub lora: &'a LoraConfig,
    /// Training data.
    pub train: &'a D,
    /// Validation data, if any.
    pub valid: Option<&'a D>,
}

/// The run's length, from the config and the size of the training data.
struct Plan {
    micro_per_epoch: usize,
    total_steps: usize,
    /// Where this call stops: `stop_after_steps` (within the run) or the end.
    stop_at: usize,
}

impl Plan {
    fn new(c: &crate::TrainerConfig, train_len: usize) -> Self {
        let micro_per_epoch = train_len.div_ceil(c.batch_size);
        let steps_per_epoch = micro_per_epoch.div_ceil(c.gradient_accumulation_steps);
        let total_steps = c.max_steps.unwrap_or(c.num_epochs * steps_per_epoch);
        let stop_at = c
            .stop_after_steps
            .map(|s| s.min(total_steps))
            .unwrap_or(total_steps);
        Self {
            micro_per_epoch,
            total_steps,
            stop_at,
        }
    }

    /// Epochs done at `state`, fractional.
    fn epoch_at(&self, state: &TrainerState) -> f64 {
        state.epoch as f64 + state.batch_in_epoch as f64 / self.micro_per_epoch as f64
    }
}

/// The run's mutable position, saved in each checkpoint.
struct Run {
    state: TrainerState,
    last_eval: Option<Metrics>,
    last_eval_step: Option<usize>,
    last_saved: Option<usize>,
    stop: Option<StopReason>,
}

/// One optimizer step's gradients and what its micro-batches held.
struct Accumulated {
    grads: std::collections::BTreeMap<String, Tensor<1>>,
    /// Count-weighted mean loss over the micro-batches.
    loss: f64,
    samples: u64,
    tokens: u64,
}

/// A `fit` call in progress.
pub(crate) struct Fit<'a, D> {
    trainer: &'a Trainer,
    inputs: Inputs<'a, D>,
    train_device: Device,
    plan: Plan,
    optim: AdamW,
    run: Run,
    log: MetricsLog,
    progress: Progress,
    wall: Instant,
    /// Training time of earlier runs (resumed).
    elapsed_before: f64,
    resumed_from: Option<usize>,
    losses: Vec<f64>,
    tokens_run: u64,
}

impl<'a, D: BatchSource> Fit<'a, D> {
    /// Sets the run up: output directory, fresh state or the resumed checkpoint (model
    /// values, optimizer state, position), metrics log and progress. `model` is in training
    /// mode and has trainable parameters.
    pub fn start<M>(
        trainer: &'a Trainer,
        inputs: Inputs<'a, D>,
        model: M,
        wall: Instant,
    ) -> Result<(Self, M)>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        let c = &trainer.config;
        let params = trainable_params(&model);
        if params.is_empty() {
            return Err(TrainError::config(
                "model",
                "it has no trainable parameter (inject an adapter first, on this device)",
            ));
        }
        let plan = Plan::new(c, inputs.train.len());
        let schedule = c.schedule.build(plan.total_steps)?;
        let mut optim = AdamW::new(c.optimizer).with_schedule(schedule);
        let out = &c.output_dir;
        std::fs::create_dir_all(out).map_err(TrainError::io("cannot create", out))?;
        remove_stale(out)?;
        let fresh = trainer.fresh_state(inputs.train, plan.total_steps);
        let resume_dir = match &c.resume {
            Resume::No => None,
            Resume::Latest => latest_checkpoint(out)?,
            Resume::From(p) => Some(p.clone()),
        };
        let mut run = Run {
            state: fresh.clone(),
            last_eval: None,
            last_eval_step: None,
            last_saved: None,
            stop: None,
        };
        let model = match &resume_dir {
            None => {
                trainer.clear_previous_run()?;
                model
            }
            Some(dir) => {
                let (model, state) =
                    resume(dir, model, &params, &mut optim, &fresh, &trainer.device)?;
                run.state = state;
                run.last_saved = Some(run.state.global_step);
                model
            }
        };
        let resumed_from = resume_dir.as_ref().map(|_| run.state.global_step);
        let log = MetricsLog::open(&out.join("metrics.jsonl"), resumed_from)?;
        let progress = Progress::new(
            c.progress,
            plan.total_steps,
            run.state.global_step,
            c.logging_steps,
        );
        if let (Some(dir), Some(step)) = (&resume_dir, resumed_from) {
            progress.message(&format!("resuming from {} (step {step})", dir.display()));
        }
        let fit = Self {
            trainer,
            inputs,
            train_device: trainer.device.clone().autodiff(),
            plan,
            optim,
            elapsed_before: run.state.elapsed_secs,
            run,
            log,
            progress,
            wall,
            resumed_from,
            losses: Vec::new(),
            tokens_run: 0,
        };
        Ok((fit, model))
    }

    fn config(&self) -> &'a crate::TrainerConfig {
        &self.trainer.config
    }

    /// The evaluation before the first step of a fresh run, if asked for.
    pub fn initial_eval<M>(&mut self, model: &M) -> Result<Option<Metrics>>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        match self.inputs.valid {
            Some(v) if self.config().eval_on_start && self.resumed_from.is_none() => {
                let step = self.run.state.global_step;
                self.log_eval(model, v, step, 0.0).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Trains until the end of the run, `stop_after_steps`, an interruption or early stopping.
    pub fn run_epochs<M>(&mut self, mut model: M) -> Result<M>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        let c = self.config();
        let train = self.inputs.train;
        let lengths = |i: usize| train.item_len(i);
        let len_fn: &dyn Fn(usize) -> usize = &lengths;
        while self.run.state.global_step < self.plan.stop_at {
            let order = epoch_order(train.len(), c.seed, self.run.state.epoch, c.shuffle);
            let batches = make_batches(&order, c.batch_size, c.group_by_length.then_some(len_fn));
            let accumulation = c.gradient_accumulation_steps;
            let start_group = self.run.state.batch_in_epoch.div_ceil(accumulation);
            for group in batches.chunks(accumulation).skip(start_group) {
                if self.run.state.global_step >= self.plan.stop_at {
                    return Ok(model);
                }
                model = self.optimizer_step(model, group)?;
                self.after_step(&model)?;
                if self.run.stop.is_some() {
                    return Ok(model);
                }
            }
            if self.run.state.batch_in_epoch >= self.plan.micro_per_epoch {
                self.end_epoch(&model)?;
                if self.run.stop.is_some() {
                    break;
                }
            }
        }
        Ok(model)
    }

    /// One optimizer step over the micro-batches `group`: accumulated gradients, the
    /// non-finite guard, the update, and its record in the log.
    fn optimizer_step<M>(&mut self, model: M, group: &[Vec<usize>]) -> Result<M>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        let step_index = self.run.state.global_step;
        let Accumulated {
            grads,
            loss,
            samples,
            tokens,
        } = self.accumulate(&model, group, step_index)?;
        let norm = global_norm(&grads)?;
        if !norm.is_finite() {
            return Err(self.non_finite("gradient norm", norm, step_index + 1));
        }
        let lr = self.optim.learning_rate(step_index);
        let model = self.optim.step(model, grads, step_index, Some(norm))?;

        self.losses.push(loss);
        self.tokens_run += tokens;
        let st = &mut self.run.state;
        st.global_step += 1;
        st.batch_in_epoch += group.len();
        st.samples_seen += samples;
        st.tokens_seen += tokens;
        st.last_learning_rate = lr;
        st.last_loss = Some(loss);
        let (step, epoch) = (st.global_step, self.plan.epoch_at(st));
        let tps = self.tokens_run as f64 / self.wall.elapsed().as_secs_f64().max(1e-9);
        self.log
            .write(step_record(step, epoch, loss, lr, norm, tps))?;
        self.progress.step(step, epoch, loss, lr, tps);
        Ok(model)
    }

    /// The gradients of one optimizer step: each micro-batch's, with the device RNG reseeded
    /// from `(seed, step, micro-batch)`, weighted by its loss count. A non-finite loss stops
    /// the run before any update.
    fn accumulate<M>(&mut self, model: &M, group: &[Vec<usize>], step: usize) -> Result<Accumulated>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        let seed = self.config().seed;
        let mut acc = GradAccumulator::new();
        let (mut loss_sum, mut count_sum, mut samples, mut tokens) = (0.0, 0usize, 0u64, 0u64);
        for (micro, indices) in group.iter().enumerate() {
            let batch = self.inputs.train.batch(indices, &self.train_device)?;
            self.train_device
                .seed(derive_seed(seed, &[step as u64, micro as u64]));
            let output = model.train_grads(&batch, &self.config().loss)?;
            if output.count == 0 {
                return Err(TrainError::Step(
                    "train_step returned a loss over 0 items".into(),
                ));
            }
            let value = scalar(output.loss.clone())?;
            if !value.is_finite() {
                return Err(self.non_finite("loss", value, step + 1));
            }
            acc.add_parts(model, output.parts, output.count);
            loss_sum += value * output.count as f64;
            count_sum += output.count;
            samples += indices.len() as u64;
            tokens += (indices.iter())
                .map(|&i| self.inputs.train.item_len(i) as u64)
                .sum::<u64>();
        }
        Ok(Accumulated {
            grads: acc.finish(),
            loss: loss_sum / count_sum as f64,
            samples,
            tokens,
        })
    }

    /// Evaluation every `eval_steps`, the stop request, a checkpoint every `save_steps` and
    /// when stopping.
    fn after_step<M>(&mut self, model: &M) -> Result<()>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        let c = self.config();
        let step = self.run.state.global_step;
        if c.eval_steps.is_some_and(|n| step.is_multiple_of(n)) {
            self.evaluate_and_track(model)?;
        }
        let Plan {
            stop_at,
            total_steps,
            ..
        } = self.plan;
        if self.trainer.interrupter.is_stopped() || step == stop_at && stop_at < total_steps {
            self.run.stop = Some(StopReason::Interrupted);
        }
        if c.save_steps.is_some_and(|n| step.is_multiple_of(n)) || self.run.stop.is_some() {
            self.checkpoint(model)?;
        }
        Ok(())
    }

    /// The end of an epoch: its evaluation and checkpoint, as configured.
    fn end_epoch<M>(&mut self, model: &M) -> Result<()>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        self.run.state.epoch += 1;
        self.run.state.batch_in_epoch = 0;
        if self.config().eval_each_epoch {
            self.evaluate_and_track(model)?;
        }
        if self.config().save_each_epoch {
            self.checkpoint(model)?;
        }
        Ok(())
    }

    /// Evaluates, writes the `eval_*` record of `step` to the log and reports it.
    fn log_eval<M>(&mut self, model: &M, valid: &D, step: usize, epoch: f64) -> Result<Metrics>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        let m = self.trainer.evaluate(model, valid)?;
        let mut record = serde_json::Map::new();
        record.insert("step".into(), serde_json::json!(step));
        record.insert("epoch".into(), serde_json::json!(epoch));
        for (k, v) in &m {
            record.insert(format!("eval_{k}"), serde_json::json!(v));
        }
        self.log.write(serde_json::Value::Object(record))?;
        self.progress.message(&format!(
            "eval step {step} epoch {epoch:.2}: {}",
            format_metrics(&m)
        ));
        Ok(m)
    }

    /// Evaluates on the validation data (if any) and tracks the best adapter.
    fn evaluate_and_track<M>(&mut self, model: &M) -> Result<()>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        let Some(valid) = self.inputs.valid else {
            return Ok(());
        };
        let step = self.run.state.global_step;
        let epoch = self.plan.epoch_at(&self.run.state);
        let m = self.log_eval(model, valid, step, epoch)?;
        self.track_best(model, &m)?;
        self.run.last_eval = Some(m);
        self.run.last_eval_step = Some(step);
        Ok(())
    }

    /// Saves the adapter to `<output_dir>/best` when `m` improves on the best value; counts
    /// evaluations without improvement for early stopping otherwise.
    fn track_best<M: TrainModel>(&mut self, model: &M, m: &Metrics) -> Result<()> {
        let c = self.config();
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
        let t = c.early_stopping_threshold;
        let st = &mut self.run.state;
        let improved = match st.best_metric {
            None => value.is_finite(),
            Some(best) if c.greater_is_better() => value > best + t,
            Some(best) => value < best - t,
        };
        if improved {
            st.best_metric = Some(value);
            st.best_step = Some(st.global_step);
            st.evals_without_improvement = 0;
            return self.save_adapter(model, &c.output_dir.join("best"));
        }
        st.evals_without_improvement += 1;
        if (c.early_stopping_patience).is_some_and(|p| st.evals_without_improvement >= p) {
            self.progress.message(&format!(
                "early stopping: no improvement of {key} in {} evaluations (best {:.6} at step {})",
                st.evals_without_improvement,
                st.best_metric.unwrap_or(f64::NAN),
                st.best_step.unwrap_or(0)
            ));
            self.run.stop = Some(StopReason::EarlyStopping);
        }
        Ok(())
    }

    /// Writes the trained adapter to `dir` (atomically).
    fn save_adapter<M: TrainModel>(&self, model: &M, dir: &Path) -> Result<()> {
        let c = self.config();
        write_dir_atomic(dir, |d| {
            model
                .save_adapter(self.inputs.lora, &c.adapter_name, d)
                .map_err(Into::into)
        })
    }

    /// Writes checkpoint `global_step`: adapter, trainable tensors, optimizer state and
    /// [`TrainerState`] (last), then prunes to `save_total_limit`.
    fn checkpoint<M: TrainModel>(&mut self, model: &M) -> Result<()> {
        let c = self.config();
        let st = &mut self.run.state;
        st.elapsed_secs = self.elapsed_before + self.wall.elapsed().as_secs_f64();
        let step = st.global_step;
        let (lora, optim) = (self.inputs.lora, &self.optim);
        save_checkpoint(&c.output_dir, step, |dir| {
            model.save_adapter(lora, &c.adapter_name, dir)?;
            let values = trainable_values(model)?;
            let file = dir.join(TRAINABLE_FILE);
            let bytes = lora_core::io::serialize_safetensors(&values, &[("format", "pt")], &file)?;
            lora_core::io::write_atomic(&file, &bytes)?;
            optim.save(&dir.join(OPTIMIZER_FILE))?;
            st.save(dir)
        })?;
        self.run.last_saved = Some(step);
        if let Some(k) = c.save_total_limit {
            prune_checkpoints(&c.output_dir, k)?;
        }
        Ok(())
    }

    /// Stops the run on a NaN or infinite `what`: a last log record, no checkpoint.
    fn non_finite(&mut self, what: &'static str, value: f64, step: usize) -> TrainError {
        let last_checkpoint = latest_checkpoint(&self.config().output_dir).ok().flatten();
        let stopped = format!("non-finite {what}: {value}");
        let _ = self
            .log
            .write(serde_json::json!({"step": step, "stopped": stopped}));
        self.progress.finish();
        TrainError::NonFinite {
            what,
            value,
            step,
            last_checkpoint,
        }
    }

    /// Ends the run: a last evaluation and checkpoint where the last step had none, the final
    /// adapter, `curves.png`, and the summary.
    pub fn finish<M>(mut self, model: M, initial_eval: Option<Metrics>) -> Result<Trained<M>>
    where
        M: TrainModel<Batch = D::Batch>,
    {
        let stop_reason = self.run.stop.unwrap_or(StopReason::Completed);
        let step = self.run.state.global_step;
        // A final evaluation when the last step was not evaluated (e.g. max_steps mid-epoch).
        if stop_reason == StopReason::Completed && self.run.last_eval_step != Some(step) {
            self.evaluate_and_track(&model)?;
        }
        if self.run.last_saved != Some(self.run.state.global_step) {
            self.checkpoint(&model)?;
        }
        self.progress.finish();
        let c = self.config();
        self.save_adapter(&model, &c.output_dir.join("adapter"))?;
        if c.plot {
            let png = c.output_dir.join("curves.png");
            let plotted = plot_curves(self.log.path(), &png, c.best_key(), c.greater_is_better());
            if let Err(e) = plotted {
                self.progress
                    .message(&format!("warning: no curves.png: {e}"));
            }
        }
        let summary = self.summary(stop_reason, initial_eval)?;
        let line = match (&summary.final_eval, summary.losses.last()) {
            (Some(m), _) => format!(
                "done: step {} eval {}",
                summary.global_step,
                format_metrics(m)
            ),
            (None, Some(l)) => format!("done: step {} loss {l:.4}", summary.global_step),
            _ => format!("done: step {}", summary.global_step),
        };
        self.progress.message(&line);
        Ok(Trained { model, summary })
    }

    fn summary(
        &mut self,
        stop_reason: StopReason,
        initial_eval: Option<Metrics>,
    ) -> Result<TrainSummary> {
        let out = &self.config().output_dir;
        let wall_time = self.wall.elapsed();
        let best_adapter = out.join("best");
        let st = &self.run.state;
        let best = match (st.best_metric, st.best_step) {
            (Some(value), Some(step)) => Some(BestMetric {
                name: st.metric_for_best.clone(),
                value,
                step,
            }),
            _ => None,
        };
        Ok(TrainSummary {
            global_step: st.global_step,
            total_steps: self.plan.total_steps,
            epochs: self.plan.epoch_at(st),
            stop_reason,
            resumed_from: self.resumed_from,
            losses: std::mem::take(&mut self.losses),
            initial_eval,
            final_eval: self.run.last_eval.take(),
            best,
            adapter_dir: out.join("adapter"),
            best_adapter_dir: best_adapter.is_dir().then_some(best_adapter),
            last_checkpoint: latest_checkpoint(out)?,
            metrics_log: self.log.path().to_path_buf(),
            tokens: self.tokens_run,
            tokens_per_second: self.tokens_run as f64 / wall_time.as_secs_f64().max(1e-9),
            wall_time,
        })
    }
}

/// Loads checkpoint `dir` into `model` and `optim` after checking it belongs to this run
/// (`fresh` is the state a fresh start would have); returns the model and the saved state
/// with the schedule's length of now.
fn resume<M: TrainModel>(
    dir: &Path,
    model: M,
    params: &[TrainableParam],
    optim: &mut AdamW,
    fresh: &TrainerState,
    device: &Device,
) -> Result<(M, TrainerState)> {
    let state = TrainerState::load(dir)?;
    check_compatible(&state, fresh, dir)?;
    let values = lora_core::read_safetensors(dir.join(TRAINABLE_FILE))?;
    let values: HashMap<_, _> = values.into_iter().collect();
    let model = set_trainable_values(model, &values, &dir.join(TRAINABLE_FILE))?;
    optim.load(&dir.join(OPTIMIZER_FILE), params, device)?;
    let state = TrainerState {
        total_steps: fresh.total_steps,
        ..state
    };
    Ok((model, state))
}

impl Trainer {
    /// The state of a run that has not started on `train`.
    fn fresh_state<D: BatchSource>(&self, train: &D, total_steps: usize) -> TrainerState {
        let c = &self.config;
        TrainerState {
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
            data_fingerprint: format!("{:016x}", train.fingerprint()),
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
        }
    }

    /// Before a fresh run: refuses an output directory holding another run's checkpoints
    /// unless `overwrite_output_dir`, in which case they and its best adapter are removed.
    fn clear_previous_run(&self) -> Result<()> {
        let out = &self.config.output_dir;
        let old = list_checkpoints(out)?;
        if !old.is_empty() && !self.config.overwrite_output_dir {
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
        let stale: Vec<PathBuf> = old.into_iter().map(|(_, p)| p).collect();
        for dir in stale.into_iter().chain([out.join("best")]) {
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir).map_err(TrainError::io("cannot remove", &dir))?;
            }
        }
        Ok(())
    }
}

/// Errors unless checkpoint state `saved` was written by a run that `now` continues exactly
/// (same seed, batching, data and tracked metric).
fn check_compatible(saved: &TrainerState, now: &TrainerState, dir: &Path) -> Result<()> {
    let pairs = [
        ("seed", saved.seed.to_string(), now.seed.to_string()),
        (
            "batch_size",
            saved.batch_size.to_string(),
            now.batch_size.to_string(),
        ),
        (
            "gradient_accumulation_steps",
            saved.gradient_accumulation_steps.to_string(),
            now.gradient_accumulation_steps.to_string(),
        ),
        (
            "shuffle",
            saved.shuffle.to_string(),
            now.shuffle.to_string(),
        ),
        (
            "group_by_length",
            saved.group_by_length.to_string(),
            now.group_by_length.to_string(),
        ),
        (
            "training examples",
            saved.train_len.to_string(),
            now.train_len.to_string(),
        ),
        (
            "data fingerprint",
            saved.data_fingerprint.clone(),
            now.data_fingerprint.clone(),
        ),
        (
            "metric_for_best",
            saved.metric_for_best.clone(),
            now.metric_for_best.clone(),
        ),
    ];
    let diffs: Vec<String> = (pairs.iter())
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| format!("{name}: checkpoint {a}, now {b}"))
        .collect();
    if diffs.is_empty() {
        return Ok(());
    }
    Err(TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!(
            "cannot resume exactly, the run differs ({})",
            diffs.join("; ")
        ),
    })
}
