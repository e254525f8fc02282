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
        let mut push = |arch, device: &str, what: &str, num: f64, den: f64, target| {
            if num.is_finite() && den.is_finite() && den > 0.0 {
                out.push(Ratio {
                    arch,
                    device: device.to_string(),
                    what: what.to_string(),
                    value: num / den,
                    target,
                });
            }
        };
        let peak = |r: &TrainRun| r.peak_rss_bytes.map(|b| b as f64).unwrap_or(f64::NAN);
        let added = |r: &TrainRun| training_memory(r).map(|b| b as f64).unwrap_or(f64::NAN);
        let mut devices: Vec<(Arch, String)> = self
            .train
            .iter()
            .map(|r| (r.arch, r.device.clone()))
            .chain(self.infer.iter().map(|r| (r.arch, r.device.clone())))
            .collect();
        devices.sort_by(|a, b| (a.0 as u8, &a.1).cmp(&(b.0 as u8, &b.1)));
        devices.dedup();
        for (arch, device) in &devices {
            let full = find(&self.train, *arch, device, "full");
            let lora = find(&self.train, *arch, device, "lora");
            let burn = find(&self.train, *arch, device, "burn-lora");
            let weight = find(&self.train, *arch, device, "weight-lora");
            let torch_lora = (self.train.iter())
                .find(|r| r.arch == *arch && is_torch(&r.device) && r.mode == "lora");
            if let (Some(l), Some(f)) = (lora, full) {
                push(
                    *arch,
                    device,
                    "lora/full step time",
                    l.median_s,
                    f.median_s,
                    Some(0.5),
                );
                push(
                    *arch,
                    device,
                    "lora/full peak memory",
                    peak(l),
                    peak(f),
                    None,
                );
            }
            if let (Some(l), Some(b)) = (lora, burn) {
                push(
                    *arch,
                    device,
                    "lora/apply_lora step time",
                    l.median_s,
                    b.median_s,
                    Some(0.8),
                );
                push(
                    *arch,
                    device,
                    "lora/apply_lora peak memory",
                    peak(l),
                    peak(b),
                    Some(0.7),
                );
                push(
                    *arch,
                    device,
                    "lora/apply_lora training memory (peak − model)",
                    added(l),
                    added(b),
                    None,
                );
            }
            if let (Some(w), Some(l), Some(b)) = (weight, lora, burn) {
                push(
                    *arch,
                    device,
                    "weight-lora/lora step time",
                    w.median_s,
                    l.median_s,
                    None,
                );
                push(
                    *arch,
                    device,
                    "weight-lora/lora peak memory",
                    peak(w),
                    peak(l),
                    None,
                );
                push(
                    *arch,
                    device,
                    "weight-lora/apply_lora step time",
                    w.median_s,
                    b.median_s,
                    None,
                );
                push(
                    *arch,
                    device,
                    "weight-lora/apply_lora peak memory",
                    peak(w),
                    peak(b),
                    None,
                );
            }
            if !is_torch(device)
                && let (Some(l), Some(t)) = (lora, torch_lora)
            {
                push(
                    *arch,
                    device,
                    "lora/torch+peft step time",
                    l.median_s,
                    t.median_s,
                    Some(1.0),
                );
                push(
                    *arch,
                    device,
                    "lora/torch+peft peak memory",
                    peak(l),
                    peak(t),
                    Some(1.0),
                );
            }
            if let Some(i) = self
                .infer
                .iter()
                .find(|i| i.arch == *arch && &i.device == device)
            {
                push(
                    *arch,
                    device,
                    "merged/base inference",
                    i.merged_s,
                    i.base_s,
                    Some(1.02),
                );
                push(
                    *arch,
                    device,
                    "unmerged/base inference",
                    i.unmerged_s,
                    i.base_s,
                    Some(1.10),
                );
            }
        }
        self.ratios = out;
    }

    /// The report as text tables (absolute figures, then ratios).
    pub fn table(&self) -> String {
        let mb = |b: Option<u64>| match b {
            Some(b) => format!("{:.0}", b as f64 / (1024.0 * 1024.0)),
            None => "-".into(),
        };
        let s = &self.setup;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "batch {} × {} tokens · LoRA r={} α={} on {} layers · median of {} steps after {} warm-up · {} CPUs{}{}",
            s.batch,
            s.seq,
            s.lora.map_or(0, |l| l.r),
            s.lora.map_or(0.0, |l| l.alpha),
            s.targets.unwrap_or_default().name(),
            s.steps,
            s.warmup,
            s.cpus,
            s.cpu
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default(),
            s.commit
                .as_deref()
                .map(|c| format!(" · commit {c}"))
                .unwrap_or_default(),
        );
        for arch in [Arch::Gpt2, Arch::Roberta] {
            let runs: Vec<&TrainRun> = self.train.iter().filter(|r| r.arch == arch).collect();
            let infers: Vec<&InferRun> = self.infer.iter().filter(|r| r.arch == arch).collect();
            if runs.is_empty() && infers.is_empty() {
                continue;
            }
            if !runs.is_empty() {
                let _ = writeln!(t, "\n{} — training step", arch.label());
                let _ = writeln!(
                    t,
                    "| device | mode | step s (median) | forward s | backward s | optimizer s | peak RSS MiB | peak − model MiB | device reserved MiB | trainable params | loss first → last |"
                );
                let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
                let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.3}"));
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
                        mb(r.peak_rss_bytes),
                        mb(training_memory(r)),
                        mb(r.device_reserved_bytes),
                        r.trainable_params,
                        r.loss_first,
                        r.loss_last
                    );
                }
            }
            if !infers.is_empty() {
                let _ = writeln!(t, "\n{} — inference forward", arch.label());
                let _ = writeln!(
                    t,
                    "| device | base s | LoRA unmerged s | LoRA merged s | max abs(merged − unmerged) |"
                );
                let _ = writeln!(t, "|---|---:|---:|---:|---:|");
                for i in infers {
                    let _ = writeln!(
                        t,
                        "| {} | {:.4} | {:.4} | {:.4} | {:.1e} |",
                        i.device, i.base_s, i.unmerged_s, i.merged_s, i.merged_max_abs_diff
                    );
                }
            }
            let ratios: Vec<&Ratio> = self.ratios.iter().filter(|r| r.arch == arch).collect();
            if !ratios.is_empty() {
                let _ = writeln!(t, "\n{} — ratios", arch.label());
                let _ = writeln!(t, "| device | ratio | value | target | met |");
                let _ = writeln!(t, "|---|---|---:|---:|---|");
                for r in ratios {
                    let _ = writeln!(
                        t,
                        "| {} | {} | {:.3} | {} | {} |",
                        r.device,
                        r.what,
                        r.value,
                        r.target
                            .map(|x| format!("≤ {x}"))
                            .unwrap_or_else(|| "-".into()),
                        match r.met() {
                            Some(true) => "yes",
                            Some(false) => "NO",
                            None => "-",
                        }
                    );
                }
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(t, "\nNot measured:");
            for f in &self.failures {
                let _ = writeln!(t, "- {f}");
            }
        }
        t
    }
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
