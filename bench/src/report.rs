//! The whole benchmark's results: absolute figures, the ratios the project's targets are
//! stated in, a text table and JSON.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::arch::{Arch, LoraShape, Size, Targets};
use crate::measure::{InferRun, TrainRun};

/// The device name under which the PyTorch + PEFT reference appears when its script names none
/// (`scripts/bench_torch.py` writes `torch-cpu` or `torch-cuda`).
pub const TORCH_DEVICE: &str = "torch-cpu";

/// Whether a device name is the PyTorch + PEFT reference's (`torch-cpu`, `torch-cuda`).
pub fn is_torch(device: &str) -> bool {
    device.starts_with("torch-")
}

/// Where and how the benchmark ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// CPU model (from `/proc/cpuinfo`), if known.
    pub cpu: Option<String>,
    /// Logical CPUs available to the process.
    pub cpus: usize,
    /// The git commit benchmarked, if known.
    pub commit: Option<String>,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Timed steps (medians reported).
    pub steps: usize,
    /// LoRA rank / alpha.
    pub lora: Option<LoraShape>,
    /// Which layers got adapters.
    pub targets: Option<Targets>,
    /// Vocabulary size, when overridden.
    pub vocab: Option<usize>,
    /// Real or tiny shapes.
    pub size: Option<Size>,
    /// The PyTorch reference's versions and threads, when it ran.
    pub torch: Option<serde_json::Value>,
}

/// All results of one benchmark invocation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Machine and settings.
    pub setup: Setup,
    /// Training runs (ours on each device, and PyTorch's under a [`is_torch`] device name).
    pub train: Vec<TrainRun>,
    /// Inference comparisons.
    pub infer: Vec<InferRun>,
    /// Runs that failed, with the reason (a device without an adapter, out of memory…).
    pub failures: Vec<String>,
    /// The ratios, computed from the above.
    pub ratios: Vec<Ratio>,
}

/// One ratio the targets are stated in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Architecture.
    pub arch: Arch,
    /// Device the numerator ran on.
    pub device: String,
    /// What is compared, e.g. `lora/full step time`.
    pub what: String,
    /// numerator / denominator.
    pub value: f64,
    /// The project's target for it (`value ≤ target`), if any.
    pub target: Option<f64>,
}

impl Ratio {
    /// `Some(true)` when a target exists and is met.
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| self.value <= t)
    }
}

/// One ratio between two training runs of a device, reported when both ran.
struct TrainRatio {
    what: &'static str,
    /// The numerator run's mode.
    num: &'static str,
    /// The denominator run's mode, or [`TORCH`] for PyTorch + PEFT's LoRA row.
    den: &'static str,
    measure: fn(&TrainRun) -> f64,
    target: Option<f64>,
}

/// [`TrainRatio::den`] for PyTorch + PEFT's LoRA run (on its own device label).
const TORCH: &str = "torch";

fn step_time(r: &TrainRun) -> f64 {
    r.median_s
}

fn peak(r: &TrainRun) -> f64 {
    r.peak_rss_bytes.map_or(f64::NAN, |b| b as f64)
}

fn added(r: &TrainRun) -> f64 {
    training_memory(r).map_or(f64::NAN, |b| b as f64)
}

/// The training ratios, in report order, with their targets.
const TRAIN_RATIOS: [TrainRatio; 11] = [
    ratio("lora/full step time", "lora", "full", step_time, Some(0.5)),
    ratio("lora/full peak memory", "lora", "full", peak, None),
    ratio(
        "lora/apply_lora step time",
        "lora",
        "burn-lora",
        step_time,
        Some(0.8),
    ),
    ratio(
        "lora/apply_lora peak memory",
        "lora",
        "burn-lora",
        peak,
        Some(0.7),
    ),
    ratio(
        "lora/apply_lora training memory (peak − model)",
        "lora",
        "burn-lora",
        added,
        None,
    ),
    ratio(
        "weight-lora/lora step time",
        "weight-lora",
        "lora",
        step_time,
        None,
    ),
    ratio(
        "weight-lora/lora peak memory",
        "weight-lora",
        "lora",
        peak,
        None,
    ),
    ratio(
        "weight-lora/apply_lora step time",
        "weight-lora",
        "burn-lora",
        step_time,
        None,
    ),
    ratio(
        "weight-lora/apply_lora peak memory",
        "weight-lora",
        "burn-lora",
        peak,
        None,
    ),
    ratio(
        "lora/torch+peft step time",
        "lora",
        TORCH,
        step_time,
        Some(1.0),
    ),
    ratio(
        "lora/torch+peft peak memory",
        "lora",
        TORCH,
        peak,
        Some(1.0),
    ),
];

const fn ratio(
    what: &'static str,
    num: &'static str,
    den: &'static str,
    measure: fn(&TrainRun) -> f64,
    target: Option<f64>,
) -> TrainRatio {
    TrainRatio {
        what,
        num,
        den,
        measure,
        target,
    }
}

/// Adds `num / den` when both are finite and `den` is positive.
fn push_ratio(
    out: &mut Vec<Ratio>,
    arch: Arch,
    device: &str,
    what: &str,
    num: f64,
    den: f64,
    target: Option<f64>,
) {
    if num.is_finite() && den.is_finite() && den > 0.0 {
        out.push(Ratio {
            arch,
            device: device.to_string(),
            what: what.to_string(),
            value: num / den,
            target,
        });
    }
}

fn find<'a>(runs: &'a [TrainRun], arch: Arch, device: &str, mode: &str) -> Option<&'a TrainRun> {
    runs.iter()
        .find(|r| r.arch == arch && r.device == device && r.mode == mode)
}

/// Memory a training run adds on top of the model it starts from: peak − resident before the
/// first step. Falls back to the peak when the before-figure is missing.
pub fn training_memory(run: &TrainRun) -> Option<u64> {
    let peak = run.peak_rss_bytes?;
    Some(match run.rss_before_bytes {
        Some(before) => peak.saturating_sub(before),
        None => peak,
    })
}

impl Report {
    /// Recomputes [`ratios`](Self::ratios) from the runs.
    pub fn compute_ratios(&mut self) {
        let mut out = Vec::new();
        for (arch, device) in self.devices() {
            let run = |mode: &str| find(&self.train, arch, &device, mode);
            // PyTorch's row, for our rows only (its device label is its own).
            let torch = (self.train.iter())
                .find(|r| r.arch == arch && is_torch(&r.device) && r.mode == "lora")
                .filter(|_| !is_torch(&device));
            for rule in &TRAIN_RATIOS {
                let den = match rule.den {
                    TORCH => torch,
                    mode => run(mode),
                };
                if let (Some(n), Some(d)) = (run(rule.num), den) {
                    let (num, den) = ((rule.measure)(n), (rule.measure)(d));
                    push_ratio(&mut out, arch, &device, rule.what, num, den, rule.target);
                }
            }
            let infer = (self.infer.iter()).find(|i| i.arch == arch && i.device == device);
            if let Some(i) = infer {
                let what = "merged/base inference";
                push_ratio(
                    &mut out,
                    arch,
                    &device,
                    what,
                    i.merged_s,
                    i.base_s,
                    Some(1.02),
                );
                let what = "unmerged/base inference";
                push_ratio(
                    &mut out,
                    arch,
                    &device,
                    what,
                    i.unmerged_s,
                    i.base_s,
                    Some(1.10),
                );
            }
        }
        self.ratios = out;
    }

    /// Every (architecture, device) with a run, in a stable order.
    fn devices(&self) -> Vec<(Arch, String)> {
        let train = self.train.iter().map(|r| (r.arch, r.device.clone()));
        let infer = self.infer.iter().map(|r| (r.arch, r.device.clone()));
        let mut devices: Vec<(Arch, String)> = train.chain(infer).collect();
        devices.sort_by(|a, b| (a.0 as u8, &a.1).cmp(&(b.0 as u8, &b.1)));
        devices.dedup();
        devices
    }

    /// The report as text tables (absolute figures, then ratios).
    pub fn table(&self) -> String {
        let mut t = self.heading();
        for arch in [Arch::Gpt2, Arch::Roberta] {
            let runs: Vec<&TrainRun> = self.train.iter().filter(|r| r.arch == arch).collect();
            let infers: Vec<&InferRun> = self.infer.iter().filter(|r| r.arch == arch).collect();
            let ratios: Vec<&Ratio> = self.ratios.iter().filter(|r| r.arch == arch).collect();
            if !runs.is_empty() {
                t += &train_table(arch, &runs);
            }
            if !infers.is_empty() {
                t += &infer_table(arch, &infers);
            }
            if !ratios.is_empty() {
                t += &ratio_table(arch, &ratios);
            }
        }
        if !self.failures.is_empty() {
            t += "\nNot measured:\n";
            for f in &self.failures {
                let _ = writeln!(t, "- {f}");
            }
        }
        t
    }

    /// The line that says what was measured: shapes, adapter, samples, machine, commit.
    fn heading(&self) -> String {
        let s = &self.setup;
        let cpu = s
            .cpu
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        let commit = s
            .commit
            .as_deref()
            .map(|c| format!(" · commit {c}"))
            .unwrap_or_default();
        format!(
            "batch {} × {} tokens · LoRA r={} α={} on {} layers · median of {} steps after {} warm-up · {} CPUs{cpu}{commit}\n",
            s.batch,
            s.seq,
            s.lora.map_or(0, |l| l.r),
            s.lora.map_or(0.0, |l| l.alpha),
            s.targets.unwrap_or_default().name(),
            s.steps,
            s.warmup,
            s.cpus,
        )
    }
}

/// Mebibytes with no decimals, or `-` when not measured.
fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| {
        format!("{:.0}", b as f64 / (1024.0 * 1024.0))
    })
}

/// One architecture's training-step table.
fn train_table(arch: Arch, runs: &[&TrainRun]) -> String {
    let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.3}"));
    let mut t = format!("\n{} — training step\n", arch.label());
    t += "| device | mode | step s (median) | forward s | backward s | optimizer s | peak RSS MiB | peak − model MiB | device reserved MiB | trainable params | loss first → last |\n";
    t += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for r in runs {
        let _ = writeln!(
            t,
            "| {} | {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {:.4} → {:.4} |",
            r.device,
            r.mode,
            r.median_s,
            secs(r.forward_s),
            secs(r.backward_s),
            secs(r.optimizer_s),
            mib(r.peak_rss_bytes),
            mib(training_memory(r)),
            mib(r.device_reserved_bytes),
            r.trainable_params,
            r.loss_first,
            r.loss_last
        );
    }
    t
}

/// One architecture's inference table: base, unmerged and merged forward passes.
fn infer_table(arch: Arch, infers: &[&InferRun]) -> String {
    let mut t = format!("\n{} — inference forward\n", arch.label());
    t += "| device | base s | LoRA unmerged s | LoRA merged s | max abs(merged − unmerged) |\n";
    t += "|---|---:|---:|---:|---:|\n";
    for i in infers {
        let _ = writeln!(
            t,
            "| {} | {:.4} | {:.4} | {:.4} | {:.1e} |",
            i.device, i.base_s, i.unmerged_s, i.merged_s, i.merged_max_abs_diff
        );
    }
    t
}

/// One architecture's ratios, each against its target where it has one.
fn ratio_table(arch: Arch, ratios: &[&Ratio]) -> String {
    let mut t = format!("\n{} — ratios\n", arch.label());
    t += "| device | ratio | value | target | met |\n|---|---|---:|---:|---|\n";
    for r in ratios {
        let target = r.target.map_or("-".into(), |x| format!("≤ {x}"));
        let met = match r.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.3} | {target} | {met} |",
            r.device, r.what, r.value
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(device: &str, mode: &str, s: f64, peak: u64) -> TrainRun {
        TrainRun {
            arch: Arch::Gpt2,
            device: device.into(),
            mode: mode.into(),
            trainable_params: 1,
            step_seconds: vec![s],
            median_s: s,
            forward_s: None,
            backward_s: None,
            optimizer_s: None,
            loss_first: 1.0,
            loss_last: 0.5,
            rss_before_bytes: Some(100),
            peak_rss_bytes: Some(peak),
            device_reserved_bytes: None,
        }
    }

    #[test]
    fn ratios_pair_runs_of_the_same_device() {
        let mut r = Report {
            train: vec![
                run("flex", "full", 10.0, 1000),
                run("flex", "lora", 4.0, 600),
                run("flex", "burn-lora", 5.0, 700),
                run(TORCH_DEVICE, "lora", 8.0, 800),
            ],
            ..Report::default()
        };
        r.compute_ratios();
        let get = |what: &str| {
            r.ratios
                .iter()
                .find(|x| x.device == "flex" && x.what == what)
                .map(|x| x.value)
        };
        assert_eq!(get("lora/full step time"), Some(0.4));
        assert_eq!(get("lora/apply_lora step time"), Some(0.8));
        assert_eq!(
            get("lora/apply_lora training memory (peak − model)"),
            Some(500.0 / 600.0)
        );
        assert_eq!(get("lora/torch+peft step time"), Some(0.5));
        assert_eq!(get("lora/torch+peft peak memory"), Some(0.75));
        assert!(
            r.ratios
                .iter()
                .all(|x| x.device != TORCH_DEVICE || x.what != "lora/torch+peft step time")
        );
        assert!(
            r.table()
                .contains("| flex | lora/full step time | 0.400 | ≤ 0.5 | yes |")
        );
    }
}
