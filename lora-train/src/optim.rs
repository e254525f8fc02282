//! AdamW over the trainable parameters only, with PyTorch's defaults and update rule, no
//! weight decay on biases and normalization parameters, LoRA+ (a larger learning rate for the B
//! factors), global-norm gradient clipping and exact gradient accumulation.
//!
//! Why not burn's `ModuleOptimizer`: its `GradientClipping::Norm` clips each parameter on its
//! own (not the global norm), its defaults differ from PyTorch's (eps 1e-5, decay 1e-4), and
//! `load_record` materializes state on `Device::default()`, which is wgpu whenever wgpu is
//! compiled in (and panics on machines without an adapter). Here the state is keyed by
//! parameter path, saved as safetensors, and loaded onto the training device.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Gradients;
use lora_core::io::{
    HostTensor, parse_safetensors, read_file, serialize_safetensors, view_to_host, write_atomic,
};
use lora_core::model::PathWalk;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::model::float_values;
use crate::schedule::Schedule;

/// AdamW settings. Defaults are PyTorch's `torch.optim.AdamW` (betas 0.9/0.999, eps 1e-8,
/// weight decay 0.01), with a peak learning rate of 2e-4 (a common LoRA choice) and
/// Hugging Face's gradient clipping at global norm 1.0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerConfig {
    /// Peak learning rate (the schedule scales it, see [`AdamW::learning_rate`]). Default 2e-4.
    pub learning_rate: f64,
    /// First-moment decay. Default 0.9.
    pub beta1: f64,
    /// Second-moment decay. Default 0.999.
    pub beta2: f64,
    /// Added to the denominator. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay, not applied to biases and normalization parameters.
    /// Default 0.01.
    pub weight_decay: f64,
    /// LoRA+ (Hayou et al. 2024): the B factors learn `ratio` times faster than the rest
    /// (the paper suggests 16). Default `None` (plain LoRA).
    pub loraplus_lr_ratio: Option<f64>,
    /// Clip gradients to this global L2 norm over all trainable parameters. Default `Some(1.0)`.
    pub max_grad_norm: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            learning_rate: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            loraplus_lr_ratio: None,
            max_grad_norm: Some(1.0),
        }
    }
}

impl OptimizerConfig {
    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, field: &str, why: &str| {
            if ok {
                Ok(())
            } else {
                Err(TrainError::config(field, why))
            }
        };
        check(
            self.learning_rate.is_finite() && self.learning_rate >= 0.0,
            "learning_rate",
            "must be a finite number >= 0",
        )?;
        check(
            (0.0..1.0).contains(&self.beta1),
            "beta1",
            "must be in [0, 1)",
        )?;
        check(
            (0.0..1.0).contains(&self.beta2),
            "beta2",
            "must be in [0, 1)",
        )?;
        check(self.eps > 0.0 && self.eps.is_finite(), "eps", "must be > 0")?;
        check(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "weight_decay",
            "must be >= 0",
        )?;
        if let Some(r) = self.loraplus_lr_ratio {
            check(r.is_finite() && r > 0.0, "loraplus_lr_ratio", "must be > 0")?;
        }
        if let Some(n) = self.max_grad_norm {
            check(n.is_finite() && n > 0.0, "max_grad_norm", "must be > 0")?;
        }
        Ok(())
    }
}

/// A trainable parameter, as the optimizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainableParam {
    /// burn's dotted path, e.g. `transformer.h.0.attn.c_attn.adapters.0.lora_a`.
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// A bias or normalization parameter: no weight decay.
    pub no_decay: bool,
    /// A LoRA B factor: the LoRA+ ratio applies.
    pub lora_b: bool,
}

/// Whether the parameter `walk` is at takes no weight decay: a bias, or a normalization
/// module's parameter.
fn no_decay(walk: &PathWalk) -> bool {
    let leaf = walk.segments().last().map_or("", String::as_str);
    leaf == "bias" || walk.owner_kind().ends_with("Norm")
}

/// Whether the parameter `walk` is at is a LoRA B factor (LoRA+ applies).
fn lora_b(walk: &PathWalk) -> bool {
    (walk.segments().iter()).any(|s| s == "lora_b" || s == "lora_embedding_b")
}

/// Every parameter that requires a gradient (the model must be in training mode, on an
/// autodiff device), in traversal order.
pub fn trainable_params<M: Module>(model: &M) -> Vec<TrainableParam> {
    struct V {
        walk: PathWalk,
        out: Vec<TrainableParam>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, kind: &str) {
            self.walk.enter(name, kind);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.walk.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.out.push(TrainableParam {
                    path: self.walk.joined(),
                    shape: param.lazy_shape().to_vec(),
                    no_decay: no_decay(&self.walk),
                    lora_b: lora_b(&self.walk),
                });
            }
        }
    }
    let mut v = V {
        walk: PathWalk::default(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

/// Host copies of the trainable parameters, keyed by burn path.
pub fn trainable_values<M: Module>(model: &M) -> Result<Vec<(String, HostTensor)>> {
    struct V {
        walk: PathWalk,
        out: Vec<Result<(String, HostTensor)>>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, kind: &str) {
            self.walk.enter(name, kind);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.walk.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                let path = self.walk.joined();
                let v =
                    HostTensor::from_tensor(param.val().inner(), &path).map_err(TrainError::from);
                self.out.push(v.map(|v| (path, v)));
            }
        }
    }
    let mut v = V {
        walk: PathWalk::default(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out.into_iter().collect()
}

/// Sets the trainable parameters named in `values` (burn paths) to those values, keeping their
/// ids and gradient requirement. Every trainable parameter must be present with its shape;
/// `source` names the file in errors.
pub fn set_trainable_values<M: Module>(
    model: M,
    values: &HashMap<String, HostTensor>,
    source: &Path,
) -> Result<M> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: source.to_path_buf(),
        reason,
    };
    let params = trainable_params(&model);
    for p in &params {
        match values.get(&p.path) {
            None => {
                return Err(bad(format!(
                    "no value for trainable parameter `{}`",
                    p.path
                )));
            }
            Some(v) if v.shape != p.shape => {
                return Err(bad(format!(
                    "`{}` has shape {:?} in the checkpoint but {:?} in the model",
                    p.path, v.shape, p.shape
                )));
            }
            _ => {}
        }
    }
    if values.len() != params.len() {
        let extra: Vec<&String> = values
            .keys()
            .filter(|k| !params.iter().any(|p| &p.path == *k))
            .collect();
        return Err(bad(format!(
            "parameters {extra:?} are saved but are not trainable in this model (was it built with another LoRA config?)"
        )));
    }
    struct SetMapper<'a> {
        walk: PathWalk,
        values: &'a HashMap<String, HostTensor>,
    }
    impl ModuleMapper for SetMapper<'_> {
        fn enter_module(&mut self, name: &str, kind: &str) {
            self.walk.enter(name, kind);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.walk.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(v) = self.values.get(&self.walk.joined()) else {
                return param;
            };
            if !param.is_require_grad() || v.shape.len() != D {
                return param;
            }
            let (id, tensor, mapper) = param.consume();
            let inner_device = tensor.clone().inner().device();
            let value: Tensor<D> = Tensor::from_data(
                TensorData::new(v.data.clone(), v.shape.clone()),
                &inner_device,
            );
            Param::from_mapped_value(id, restore_like(&tensor, value), mapper)
        }
    }
    let mut mapper = SetMapper {
        walk: PathWalk::default(),
        values,
    };
    Ok(model.map(&mut mapper))
}

/// Lifts an updated inner value back to a parameter like `like`: autodiff, checkpointing
/// strategy and gradient requirement restored (as burn's optimizers do).
fn restore_like<const D: usize>(like: &Tensor<D>, updated: Tensor<D>) -> Tensor<D> {
    if !like.is_autodiff() {
        return updated;
    }
    let mut t = Tensor::from_inner(updated);
    if let Some(s) = like.gradient_checkpointing_strategy() {
        t = t.with_gradient_checkpointing_strategy(s);
    }
    if like.is_require_grad() {
        t = t.require_grad();
    }
    t
}

/// Gradients of the trainable parameters, flattened and keyed by path, accumulated over
/// micro-batches with weights: the result is `Σ countᵢ·gᵢ / Σ countᵢ`, the gradient of the
/// mean loss over the whole batch when each `gᵢ` is that of a micro-batch mean over `countᵢ`
/// items. A single micro-batch is kept as it is (no rescaling round-off).
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sums: BTreeMap<String, Tensor<1>>,
    total: usize,
    micro: usize,
    first_count: usize,
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of micro-batches added.
    pub fn micro_batches(&self) -> usize {
        self.micro
    }

    /// Takes the gradients of `model`'s trainable parameters out of `grads` (the result of a
    /// micro-batch's `loss.backward()`) and adds them with weight `count`.
    pub fn add<M: Module>(&mut self, model: &M, grads: Gradients, count: usize) {
        self.add_parts(model, vec![grads], count);
    }

    /// [`add`](Self::add) for a micro-batch whose gradients come in parts (one per backward
    /// pass of a segmented step): each parameter's parts are summed first.
    pub fn add_parts<M: Module>(&mut self, model: &M, parts: Vec<Gradients>, count: usize) {
        struct V<'a> {
            walk: PathWalk,
            parts: Vec<Gradients>,
            sums: &'a mut BTreeMap<String, Tensor<1>>,
            /// `None` for the first micro-batch (stored unweighted).
            weight: Option<f64>,
        }
        impl ModuleVisitor for V<'_> {
            fn enter_module(&mut self, name: &str, kind: &str) {
                self.walk.enter(name, kind);
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.walk.exit();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if !param.is_require_grad() {
                    return;
                }
                let value = param.val();
                let found = (self.parts.iter_mut()).filter_map(|g| value.grad_remove(g));
                let Some(g) = found.reduce(|a, b| a + b) else {
                    return;
                };
                let n: usize = g.dims().iter().product();
                let g: Tensor<1> = g.reshape([n]);
                let g = match self.weight {
                    Some(w) => g.mul_scalar(w),
                    None => g,
                };
                let path = self.walk.joined();
                let sum = match self.sums.remove(&path) {
                    Some(sum) => sum + g,
                    None => g,
                };
                self.sums.insert(path, sum);
            }
        }
        if self.micro == 0 {
            self.first_count = count;
        } else if self.micro == 1 {
            // The first micro-batch was stored unweighted (exact when it stays alone).
            let first = self.first_count as f64;
            self.sums = std::mem::take(&mut self.sums)
                .into_iter()
                .map(|(k, v)| (k, v.mul_scalar(first)))
                .collect();
        }
        let mut v = V {
            walk: PathWalk::default(),
            parts,
            sums: &mut self.sums,
            weight: (self.micro > 0).then_some(count as f64),
        };
        model.visit(&mut v);
        self.micro += 1;
        self.total += count;
    }

    /// The accumulated gradients, `Σ countᵢ·gᵢ / Σ countᵢ`, keyed by path (flattened).
    pub fn finish(self) -> BTreeMap<String, Tensor<1>> {
        if self.micro <= 1 || self.total == 0 {
            return self.sums;
        }
        let total = self.total as f64;
        self.sums
            .into_iter()
            .map(|(k, v)| (k, v.div_scalar(total)))
            .collect()
    }
}

/// The global L2 norm over all gradients, `sqrt(Σ‖g‖²)`, read back to the host.
pub fn global_norm(grads: &BTreeMap<String, Tensor<1>>) -> Result<f64> {
    let mut total: Option<Tensor<1>> = None;
    for g in grads.values() {
        let sq = g.clone().square().sum();
        total = Some(match total {
            Some(t) => t + sq,
            None => sq,
        });
    }
    match total {
        Some(t) => Ok(float_values(t, "gradient norm")?
            .first()
            .copied()
            .unwrap_or(0.0)
            .sqrt()),
        None => Ok(0.0),
    }
}

/// Per-parameter AdamW state.
#[derive(Debug, Clone)]
struct Moments {
    exp_avg: Tensor<1>,
    exp_avg_sq: Tensor<1>,
    step: u64,
}

/// AdamW (Loshchilov & Hutter 2019) exactly as PyTorch's `torch.optim.AdamW` computes it,
/// over the parameters that have gradients, with state keyed by parameter path:
///
/// ```text
/// p ← p·(1 − lr·wd)                       (not for biases / norms)
/// m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²
/// p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
/// ```
///
/// It owns its settings: the peak learning rate, scaled at each step by its [`Schedule`], and
/// the clipping norm.
#[derive(Debug, Clone)]
pub struct AdamW {
    config: OptimizerConfig,
    schedule: Schedule,
    state: BTreeMap<String, Moments>,
}

/// [`AdamW::step`]'s traversal: each parameter with a gradient gets its update.
struct StepMapper<'a> {
    walk: PathWalk,
    grads: &'a mut BTreeMap<String, Tensor<1>>,
    opt: &'a mut AdamW,
    /// The scheduled rate (before LoRA+).
    lr: f64,
    /// Gradient scale from clipping (1 for none).
    clip: f64,
}

impl ModuleMapper for StepMapper<'_> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        self.walk.enter(name, kind);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.walk.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.walk.joined();
        let Some(g) = self.grads.remove(&path) else {
            return param;
        };
        let c = self.opt.config;
        let lr = match c.loraplus_lr_ratio {
            Some(r) if lora_b(&self.walk) => self.lr * r,
            _ => self.lr,
        };
        let decay = !no_decay(&self.walk) && c.weight_decay > 0.0;
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let p: Tensor<1> = tensor.clone().inner().reshape([n]);
        let g = if self.clip != 1.0 {
            g.mul_scalar(self.clip)
        } else {
            g
        };
        let updated: Tensor<D> = self.opt.update(path, p, g, lr, decay).reshape(dims);
        Param::from_mapped_value(id, restore_like(&tensor, updated), mapper)
    }
}

/// Metadata key holding the per-parameter step counts in the optimizer file.
const STEPS_KEY: &str = "lora_burn.adamw.steps";

impl AdamW {
    /// A fresh optimizer (no state yet) at the constant rate `config.learning_rate`.
    pub fn new(config: OptimizerConfig) -> Self {
        Self {
            config,
            schedule: Schedule::constant(),
            state: BTreeMap::new(),
        }
    }

    /// The same optimizer with its learning rate following `schedule`.
    pub fn with_schedule(self, schedule: Schedule) -> Self {
        Self { schedule, ..self }
    }

    /// Its settings.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The learning rate of the update with 0-based index `step`: the peak rate
    /// ([`OptimizerConfig::learning_rate`]) scaled by the schedule.
    pub fn learning_rate(&self, step: usize) -> f64 {
        self.schedule.lr(self.config.learning_rate, step)
    }

    /// The factor that brings gradients of global norm `grad_norm` down to
    /// [`max_grad_norm`](OptimizerConfig::max_grad_norm) (PyTorch's `clip_grad_norm_`); 1 when
    /// they are within it or clipping is off.
    pub fn clip_scale(&self, grad_norm: f64) -> f64 {
        match self.config.max_grad_norm {
            Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
            _ => 1.0,
        }
    }

    /// Number of parameters that have state (two moment tensors each).
    pub fn num_states(&self) -> usize {
        self.state.len()
    }

    /// Number of state tensors (first and second moments).
    pub fn num_state_tensors(&self) -> usize {
        2 * self.state.len()
    }

    /// Number of scalars held in state tensors.
    pub fn num_state_elements(&self) -> usize {
        self.state.values().map(|m| 2 * m.exp_avg.dims()[0]).sum()
    }

    /// Paths of the parameters that have state.
    pub fn state_paths(&self) -> Vec<String> {
        self.state.keys().cloned().collect()
    }

    /// Update number `step` (0-based, the schedule's position) of every parameter of `model`
    /// that has a gradient in `grads` (flattened, by path, e.g. from
    /// [`GradAccumulator::finish`]): gradients clipped to `max_grad_norm`, the scheduled
    /// learning rate, scaled for B factors under LoRA+.
    ///
    /// `grad_norm` is the gradients' global norm ([`global_norm`]) when the caller has
    /// measured it already; with `None`, it is measured here if clipping is on.
    pub fn step<M: Module>(
        &mut self,
        model: M,
        mut grads: BTreeMap<String, Tensor<1>>,
        step: usize,
        grad_norm: Option<f64>,
    ) -> Result<M> {
        let clip = match (self.config.max_grad_norm, grad_norm) {
            (None, _) => 1.0,
            (Some(_), Some(norm)) => self.clip_scale(norm),
            (Some(_), None) => self.clip_scale(global_norm(&grads)?),
        };
        let mut mapper = StepMapper {
            walk: PathWalk::default(),
            grads: &mut grads,
            lr: self.learning_rate(step),
            clip,
            opt: self,
        };
        Ok(model.map(&mut mapper))
    }

    /// The AdamW update of the parameter at `path` (flattened `p`) with gradient `g`, at
    /// learning rate `lr`, with or without weight decay; its moments advance one step.
    fn update(
        &mut self,
        path: String,
        p: Tensor<1>,
        g: Tensor<1>,
        lr: f64,
        decay: bool,
    ) -> Tensor<1> {
        let c = self.config;
        let (b1, b2) = (c.beta1, c.beta2);
        let m = match self.state.remove(&path) {
            Some(s) => Moments {
                exp_avg: s.exp_avg.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1),
                exp_avg_sq: s.exp_avg_sq.mul_scalar(b2) + g.square().mul_scalar(1.0 - b2),
                step: s.step + 1,
            },
            None => Moments {
                exp_avg: g.clone().mul_scalar(1.0 - b1),
                exp_avg_sq: g.square().mul_scalar(1.0 - b2),
                step: 1,
            },
        };
        let t = m.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let p = if decay {
            p.mul_scalar(1.0 - lr * c.weight_decay)
        } else {
            p
        };
        let denom = m
            .exp_avg_sq
            .clone()
            .sqrt()
            .div_scalar(bc2.sqrt())
            .add_scalar(c.eps);
        let p = p - (m.exp_avg.clone() / denom).mul_scalar(lr / bc1);
        self.state.insert(path, m);
        p
    }

    /// Writes the state to a safetensors file (atomically): `<path>.exp_avg` and
    /// `<path>.exp_avg_sq` per parameter, step counts in the metadata.
    pub fn save(&self, file: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(2 * self.state.len());
        let mut steps = BTreeMap::new();
        for (path, m) in &self.state {
            tensors.push((
                format!("{path}.exp_avg"),
                HostTensor::from_tensor(m.exp_avg.clone(), path)?,
            ));
            tensors.push((
                format!("{path}.exp_avg_sq"),
                HostTensor::from_tensor(m.exp_avg_sq.clone(), path)?,
            ));
            steps.insert(path.clone(), m.step);
        }
        let steps = serde_json::to_string(&steps).map_err(|source| TrainError::Json {
            path: file.to_path_buf(),
            source,
        })?;
        let bytes =
            serialize_safetensors(&tensors, &[("format", "pt"), (STEPS_KEY, &steps)], file)?;
        write_atomic(file, &bytes)?;
        Ok(())
    }

    /// Replaces the state by the one in `file` (written by [`save`](Self::save)), on `device`.
    /// Every entry must belong to one of `params` with the same number of elements.
    pub fn load(&mut self, file: &Path, params: &[TrainableParam], device: &Device) -> Result<()> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: file.to_path_buf(),
            reason,
        };
        let bytes = read_file(file)?;
        let st = parse_safetensors(&bytes, file)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|source| {
            TrainError::Lora(lora_core::LoraError::Safetensors {
                path: file.to_path_buf(),
                source,
            })
        })?;
        let steps_json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(STEPS_KEY))
            .ok_or_else(|| bad(format!("no `{STEPS_KEY}` metadata (not an optimizer file)")))?;
        let steps: BTreeMap<String, u64> =
            serde_json::from_str(steps_json).map_err(|source| TrainError::Json {
                path: file.to_path_buf(),
                source,
            })?;
        let mut tensors: HashMap<String, HostTensor> = HashMap::new();
        for (key, view) in st.tensors() {
            tensors.insert(key.clone(), view_to_host(&key, &view)?);
        }
        let mut state = BTreeMap::new();
        for (path, step) in steps {
            let p = params.iter().find(|p| p.path == path).ok_or_else(|| {
                bad(format!(
                    "optimizer state for `{path}`, which is not trainable in this model"
                ))
            })?;
            let numel: usize = p.shape.iter().product();
            let mut take = |suffix: &str| -> Result<Tensor<1>> {
                let key = format!("{path}.{suffix}");
                let t = tensors
                    .remove(&key)
                    .ok_or_else(|| bad(format!("missing `{key}`")))?;
                if t.data.len() != numel {
                    return Err(bad(format!(
                        "`{key}` has {} elements, the parameter {numel}",
                        t.data.len()
                    )));
                }
                Ok(Tensor::from_data(TensorData::new(t.data, [numel]), device))
            };
            let exp_avg = take("exp_avg")?;
            let exp_avg_sq = take("exp_avg_sq")?;
            state.insert(
                path,
                Moments {
                    exp_avg,
                    exp_avg_sq,
                    step,
                },
            );
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(bad(format!(
                "tensor `{extra}` belongs to no parameter state"
            )));
        }
        self.state = state;
        Ok(())
    }
}
