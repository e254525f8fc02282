//! One measurement: a training run of one mode, or the three inference variants, of one
//! architecture on one device. Each is meant to run in its own process so that the peak
//! resident memory it reports is its own.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Gradients;
use lora_core::{InitLoraWeights, LoraModelExt};
use lora_models::gpt2::MemoryOptions;
use lora_train::optim::{AdamW, GradAccumulator, OptimizerConfig};
use serde::{Deserialize, Serialize};

use crate::arch::{
    Arch, Batch, BenchModel, LoraShape, Size, Targets, TrainMode, gpt2, prepare, random_batch,
    roberta,
};
use crate::{BenchError, Result};

/// Learning rate of the timed steps (its value does not change the cost of a step).
const LR: f64 = 1e-4;

/// What one run measures, and on what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Architecture.
    pub arch: Arch,
    /// Real or tiny shapes.
    pub size: Size,
    /// Device name (`flex`, `ndarray`, `wgpu`, …).
    pub device: String,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Untimed steps first (lazy init, kernel compilation, allocator warm-up).
    pub warmup: usize,
    /// Timed steps; the median is reported.
    pub steps: usize,
    /// LoRA rank and alpha.
    pub lora: LoraShape,
    /// Which layers get adapters.
    #[serde(default)]
    pub targets: Targets,
    /// Vocabulary size instead of the architecture's (a smaller head; tables above a GPU's
    /// per-tensor limit are split into row blocks either way).
    #[serde(default)]
    pub vocab: Option<usize>,
    /// GPT-2's memory trades in the training step (checkpointing, chunked loss).
    #[serde(default, with = "memory_serde")]
    pub memory: MemoryOptions,
}

/// [`MemoryOptions`] as `{"checkpoint_blocks": bool, "loss_chunk": n | null}`.
mod memory_serde {
    use lora_models::gpt2::MemoryOptions;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Plain {
        checkpoint_blocks: bool,
        loss_chunk: Option<usize>,
    }

    pub fn serialize<S: Serializer>(m: &MemoryOptions, s: S) -> Result<S::Ok, S::Error> {
        let plain = Plain {
            checkpoint_blocks: m.checkpoint_blocks,
            loss_chunk: m.loss_chunk,
        };
        plain.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MemoryOptions, D::Error> {
        let p = Plain::deserialize(d)?;
        Ok(MemoryOptions {
            checkpoint_blocks: p.checkpoint_blocks,
            loss_chunk: p.loss_chunk,
        })
    }
}

/// Figures of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRun {
    /// Architecture.
    pub arch: Arch,
    /// Device (or `torch-cpu` for the PyTorch reference).
    pub device: String,
    /// `full`, `lora`, `burn-lora` or `weight-lora`.
    pub mode: String,
    /// Trainable parameters.
    pub trainable_params: u64,
    /// Seconds of each timed step (forward, backward, optimizer update, synchronised).
    pub step_seconds: Vec<f64>,
    /// Median of `step_seconds`.
    pub median_s: f64,
    /// Median seconds of the forward pass and loss (read back to the host).
    #[serde(default)]
    pub forward_s: Option<f64>,
    /// Median seconds of the backward pass.
    #[serde(default)]
    pub backward_s: Option<f64>,
    /// Median seconds of the optimizer update (gradient collection included).
    #[serde(default)]
    pub optimizer_s: Option<f64>,
    /// Loss of the first and last step (a sanity check that training happened).
    pub loss_first: f64,
    /// Loss of the last step.
    pub loss_last: f64,
    /// Resident memory after building the model, before the first step (bytes; Linux only).
    pub rss_before_bytes: Option<u64>,
    /// Peak resident memory of the process (bytes; Linux only).
    pub peak_rss_bytes: Option<u64>,
    /// Bytes the device allocator had reserved after the last step (GPU backends only).
    pub device_reserved_bytes: Option<u64>,
}

/// Figures of one inference comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferRun {
    /// Architecture.
    pub arch: Arch,
    /// Device (or `torch-cpu`).
    pub device: String,
    /// Median forward seconds of the model without adapters.
    pub base_s: f64,
    /// Median forward seconds with the LoRA adapter applied as a side branch.
    pub unmerged_s: f64,
    /// Median forward seconds after merging the adapter into the weights.
    pub merged_s: f64,
    /// Largest |merged − unmerged| output difference: the two compute the same function.
    pub merged_max_abs_diff: f64,
}

/// Peak and current resident set size of this process, from `/proc/self/status`.
pub fn rss() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

fn sync(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|e| BenchError::Device(format!("{e:?}")))
}

fn scalar(t: Tensor<1>) -> Result<f64> {
    let data = t.into_data();
    let v = data
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| BenchError::Device(format!("reading a scalar: {e:?}")))?;
    v.first()
        .map(|&x| f64::from(x))
        .ok_or_else(|| BenchError::Device("empty scalar".into()))
}

/// Number of elements of the parameters that require gradients.
pub fn trainable_params<M: Module>(model: &M) -> u64 {
    lora_train::optim::trainable_params(model)
        .iter()
        .map(|p| p.shape.iter().product::<usize>() as u64)
        .sum()
}

/// The optimizer of a mode: ours (lora-train's AdamW, what our `Trainer` runs) or burn's.
enum Optimizer {
    Ours(AdamW),
    Burn(ModuleOptimizer),
}

impl Optimizer {
    fn for_mode(mode: TrainMode) -> Self {
        match mode {
            TrainMode::Full | TrainMode::Lora | TrainMode::WeightLora => {
                Optimizer::Ours(AdamW::new(OptimizerConfig {
                    learning_rate: LR,
                    max_grad_norm: None,
                    ..OptimizerConfig::default()
                }))
            }
            TrainMode::BurnLora => {
                Optimizer::Burn(AdamWConfig::new().with_weight_decay(0.01).init())
            }
        }
    }

    fn step<M: Module>(&mut self, model: M, mut parts: Vec<Gradients>) -> Result<M> {
        match self {
            Optimizer::Ours(opt) => {
                let mut acc = GradAccumulator::new();
                acc.add_parts(&model, parts, 1);
                // A constant rate (every update is step 0 of the schedule) and no clipping: the
                // step reads nothing back, so it cannot fail but on the device.
                (opt.step(model, acc.finish(), 0, None))
                    .map_err(|e| BenchError::Device(e.to_string()))
            }
            Optimizer::Burn(opt) => match (parts.pop(), parts.is_empty()) {
                (Some(grads), true) => {
                    let grads = GradientsParams::from_grads(grads, &model);
                    Ok(opt.step(LR, model, grads))
                }
                _ => Err(BenchError::Invalid(
                    "burn's optimizer takes one backward's gradients: no memory options with \
                     burn-lora"
                        .into(),
                )),
            },
        }
    }
}

fn device_reserved(device: &Device) -> Option<u64> {
    device.memory_pool_usage().map(|u| u.bytes_reserved)
}

/// One training step's loss and timings in seconds.
#[derive(Clone, Copy)]
struct Sample {
    loss: f64,
    forward: f64,
    backward: f64,
    step: f64,
}

/// One training step on `batch`, timed by phase: each phase ends with a synchronisation so the
/// split is real on asynchronous devices (the syncs cost microseconds).
fn timed_step<M: BenchModel>(
    model: M,
    batch: &Batch,
    spec: &RunSpec,
    opt: &mut Optimizer,
    ad: &Device,
) -> Result<(M, Sample)> {
    let start = Instant::now();
    let (loss, forward, grads) = match spec.memory.is_plain() {
        true => {
            let loss = model.loss(batch)?;
            let value = scalar(loss.clone().detach())?;
            let forward = start.elapsed().as_secs_f64();
            (value, forward, vec![loss.backward()])
        }
        // Forward and backward interleave: all of it counts as backward.
        false => {
            let (loss, grads) = model.segmented(batch, spec.memory)?;
            (scalar(loss)?, 0.0, grads)
        }
    };
    sync(ad)?;
    let backward = start.elapsed().as_secs_f64() - forward;
    let model = opt.step(model, grads)?;
    sync(ad)?;
    let step = start.elapsed().as_secs_f64();
    Ok((
        model,
        Sample {
            loss,
            forward,
            backward,
            step,
        },
    ))
}

fn train_loop<M: BenchModel>(
    model: M,
    spec: &RunSpec,
    mode: TrainMode,
    device: &Device,
) -> Result<TrainRun> {
    let ad = device.clone().autodiff();
    let mut model = prepare(model, mode, spec.lora, spec.targets)?;
    let trainable = trainable_params(&model);
    if trainable == 0 {
        return Err(BenchError::Invalid(format!(
            "{}: nothing trainable",
            mode.name()
        )));
    }
    let batch = random_batch(M::arch(), spec.size, spec.vocab, spec.batch, spec.seq, &ad);
    let mut opt = Optimizer::for_mode(mode);
    let rss_before = rss().1;
    let mut samples = Vec::with_capacity(spec.steps);
    for i in 0..spec.warmup + spec.steps {
        let (next, sample) = timed_step(model, &batch, spec, &mut opt, &ad)?;
        model = next;
        let Sample {
            loss,
            forward,
            backward,
            step,
        } = sample;
        if !loss.is_finite() {
            return Err(BenchError::Invalid(format!(
                "{}: loss is {loss}",
                mode.name()
            )));
        }
        if i >= spec.warmup {
            samples.push(sample);
        }
        eprintln!(
            "  {} {} {} step {}/{}: {step:.3} s (forward {forward:.3}, backward {backward:.3}), loss {loss:.4}",
            spec.arch.label(),
            spec.device,
            mode.name(),
            i + 1,
            spec.warmup + spec.steps,
        );
    }
    let times: Vec<f64> = samples.iter().map(|s| s.step).collect();
    let phase = |f: fn(&Sample) -> f64| Some(median(&samples.iter().map(f).collect::<Vec<_>>()));
    Ok(TrainRun {
        arch: M::arch(),
        device: spec.device.clone(),
        mode: mode.name().into(),
        trainable_params: trainable,
        median_s: median(&times),
        forward_s: phase(|s| s.forward),
        backward_s: phase(|s| s.backward),
        optimizer_s: phase(|s| s.step - s.forward - s.backward),
        step_seconds: times,
        loss_first: samples.first().map_or(f64::NAN, |s| s.loss),
        loss_last: samples.last().map_or(f64::NAN, |s| s.loss),
        rss_before_bytes: rss_before,
        peak_rss_bytes: rss().0,
        device_reserved_bytes: device_reserved(&ad),
    })
}

/// Times `mode`'s training steps (forward, backward, optimizer update) on `device`.
pub fn run_train(spec: &RunSpec, mode: TrainMode, device: &Device) -> Result<TrainRun> {
    if spec.steps == 0 {
        return Err(BenchError::Invalid("--steps must be at least 1".into()));
    }
    let ad = device.clone().autodiff();
    ad.seed(0);
    match spec.arch {
        Arch::Gpt2 => train_loop(gpt2(spec.size, spec.vocab, &ad), spec, mode, device),
        Arch::Roberta => train_loop(roberta(spec.size, spec.vocab, &ad), spec, mode, device),
    }
}

fn max_abs_diff(a: Tensor<1>, b: Tensor<1>) -> Result<f64> {
    scalar((a - b).abs().max().reshape([1]))
}

fn infer_loop<M: BenchModel>(base: M, spec: &RunSpec, device: &Device) -> Result<InferRun> {
    let batch = random_batch(
        M::arch(),
        spec.size,
        spec.vocab,
        spec.batch,
        spec.seq,
        device,
    );
    // One forward materialises the lazily initialised weights, so the clones below share them.
    drop(base.infer(&batch)?);
    // A random B, so the adapter really changes the output (B = 0 would cost the same).
    let unmerged = base
        .clone()
        .inject_ours(spec.lora, spec.targets, InitLoraWeights::Random)?;
    let mut merged = unmerged.clone();
    merged.merge_adapter("default")?;
    let diff = max_abs_diff(merged.infer(&batch)?, unmerged.infer(&batch)?)?;
    let variants: [(&str, &M); 3] = [
        ("base", &base),
        ("unmerged", &unmerged),
        ("merged", &merged),
    ];
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    // Interleaved, so drift (frequency, other load) hits all three alike.
    for i in 0..spec.warmup + spec.steps {
        for (k, (name, model)) in variants.iter().enumerate() {
            let start = Instant::now();
            let out = model.infer(&batch)?;
            sync(device)?;
            let elapsed = start.elapsed().as_secs_f64();
            drop(out);
            if i >= spec.warmup {
                times[k].push(elapsed);
            }
            eprintln!(
                "  {} {} inference {name} {}/{}: {:.3} s",
                spec.arch.label(),
                spec.device,
                i + 1,
                spec.warmup + spec.steps,
                elapsed
            );
        }
    }
    Ok(InferRun {
        arch: M::arch(),
        device: spec.device.clone(),
        base_s: median(&times[0]),
        unmerged_s: median(&times[1]),
        merged_s: median(&times[2]),
        merged_max_abs_diff: diff,
    })
}

/// Times inference of the base model, the model with an unmerged LoRA adapter, and the same
/// adapter merged, on `device` (no autodiff).
pub fn run_infer(spec: &RunSpec, device: &Device) -> Result<InferRun> {
    if spec.steps == 0 {
        return Err(BenchError::Invalid("--steps must be at least 1".into()));
    }
    device.seed(0);
    match spec.arch {
        Arch::Gpt2 => infer_loop(gpt2(spec.size, spec.vocab, device), spec, device),
        Arch::Roberta => infer_loop(roberta(spec.size, spec.vocab, device), spec, device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: Arch) -> RunSpec {
        RunSpec {
            arch,
            size: Size::Tiny,
            device: "flex".into(),
            batch: 2,
            seq: 16,
            warmup: 0,
            steps: 2,
            lora: LoraShape::default(),
            targets: Targets::Attention,
            vocab: None,
            memory: MemoryOptions::default(),
        }
    }

    /// GPT-2's segmented step runs in the bench's loop: the first step's loss (before any
    /// update) is the plain step's but for dropout masks, which it draws differently.
    #[test]
    fn gpt2_trains_with_checkpointing_and_a_chunked_loss() {
        let device = Device::flex();
        let plain = run_train(&spec(Arch::Gpt2), TrainMode::Lora, &device).unwrap();
        let memory = MemoryOptions {
            checkpoint_blocks: true,
            loss_chunk: Some(7),
        };
        let s = RunSpec {
            memory,
            ..spec(Arch::Gpt2)
        };
        let traded = run_train(&s, TrainMode::Lora, &device).unwrap();
        assert_eq!(traded.trainable_params, plain.trainable_params);
        assert!((traded.loss_first - plain.loss_first).abs() < 0.1);
        let roberta = RunSpec {
            memory,
            ..spec(Arch::Roberta)
        };
        assert!(run_train(&roberta, TrainMode::Lora, &device).is_err());
    }

    /// Every mode trains the parameters it should, on the sites it should, and its loss moves.
    #[test]
    fn modes_train_the_expected_parameters() {
        let device = Device::flex();
        for arch in [Arch::Gpt2, Arch::Roberta] {
            let s = spec(arch);
            let full = run_train(&s, TrainMode::Full, &device).unwrap();
            let ours = run_train(&s, TrainMode::Lora, &device).unwrap();
            let burn = run_train(&s, TrainMode::BurnLora, &device).unwrap();
            // Tiny shapes: 2 layers, width 64, r = 8.
            let (sites, classifier) = match arch {
                // c_attn: A [64, 8] + B [8, 192] per layer.
                Arch::Gpt2 => (2 * (64 * 8 + 8 * 192), 0),
                // query and value: A [64, 8] + B [8, 64] each, and the classifier head.
                Arch::Roberta => (2 * 2 * (64 * 8 + 8 * 64), 64 * 64 + 64 + 64 * 2 + 2),
            };
            assert_eq!(
                ours.trainable_params,
                (sites + classifier) as u64,
                "{arch:?}"
            );
            assert_eq!(burn.trainable_params, ours.trainable_params, "{arch:?}");
            assert!(
                full.trainable_params > 10 * ours.trainable_params,
                "{arch:?}"
            );
            for r in [&full, &ours, &burn] {
                assert_eq!(r.step_seconds.len(), 2);
                assert!(r.loss_first.is_finite() && r.loss_last.is_finite());
            }
            // Full fine-tuning at lr 1e-4 moves the loss of a repeated batch.
            assert_ne!(full.loss_first, full.loss_last, "{arch:?}");

            // All linear layers: burn's parameter group and our targeting pick the same sites.
            let all = RunSpec {
                targets: Targets::AllLinear,
                ..s
            };
            let ours_all = run_train(&all, TrainMode::Lora, &device).unwrap();
            let burn_all = run_train(&all, TrainMode::BurnLora, &device).unwrap();
            let per_layer = match arch {
                // c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj (inner 256).
                Arch::Gpt2 => (64 + 192) * 8 + (64 + 64) * 8 + (64 + 256) * 8 + (256 + 64) * 8,
                // query, key, value, attention output dense, intermediate dense, output dense.
                Arch::Roberta => 4 * (64 + 64) * 8 + (64 + 256) * 8 + (256 + 64) * 8,
            };
            assert_eq!(
                ours_all.trainable_params,
                (2 * per_layer + classifier) as u64,
                "{arch:?}"
            );
            assert_eq!(
                burn_all.trainable_params, ours_all.trainable_params,
                "{arch:?}"
            );
        }
    }

    /// Merging changes the weights but not the function.
    #[test]
    fn merged_inference_equals_unmerged() {
        let device = Device::flex();
        for arch in [Arch::Gpt2, Arch::Roberta] {
            let run = run_infer(&spec(arch), &device).unwrap();
            assert!(
                run.merged_max_abs_diff < 1e-4,
                "{arch:?}: {}",
                run.merged_max_abs_diff
            );
            assert!(run.base_s > 0.0 && run.unmerged_s > 0.0 && run.merged_s > 0.0);
        }
    }
}
