//! Learning-rate schedules, as Hugging Face's `get_scheduler` computes them: a linear warmup
//! from 0, then linear decay to 0, half a cosine to 0, or a constant.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The shape after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear decay to 0 at the last step (Hugging Face's default).
    #[default]
    Linear,
    /// Half a cosine from the peak to 0.
    Cosine,
    /// The peak rate throughout.
    Constant,
}

/// How long the warmup lasts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    /// A number of optimizer steps.
    Steps(usize),
    /// A fraction of all optimizer steps (rounded up, as Hugging Face's `warmup_ratio`).
    Ratio(f64),
}

impl Default for Warmup {
    fn default() -> Self {
        Self::Steps(0)
    }
}

/// Schedule settings.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleConfig {
    /// Shape after warmup (default linear).
    pub kind: ScheduleKind,
    /// Warmup (default none).
    pub warmup: Warmup,
}

impl ScheduleConfig {
    /// The schedule for `total_steps` optimizer steps.
    pub fn build(&self, total_steps: usize) -> Result<Schedule> {
        let warmup_steps = match self.warmup {
            Warmup::Steps(n) => n,
            Warmup::Ratio(r) => {
                if !(0.0..=1.0).contains(&r) {
                    return Err(TrainError::config("warmup", "a ratio must be in [0, 1]"));
                }
                (r * total_steps as f64).ceil() as usize
            }
        };
        Ok(Schedule {
            kind: self.kind,
            warmup_steps,
            total_steps,
        })
    }
}

/// The shape of the learning rate over a known number of optimizer steps; the peak rate is
/// the optimizer's ([`OptimizerConfig::learning_rate`](crate::OptimizerConfig::learning_rate)),
/// which [`AdamW`](crate::AdamW) scales by the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Shape after warmup.
    pub kind: ScheduleKind,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// All optimizer steps.
    pub total_steps: usize,
}

impl Schedule {
    /// The peak rate at every step (no warmup).
    pub fn constant() -> Self {
        Self {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
            total_steps: 0,
        }
    }

    /// The learning rate of the optimizer step with 0-based index `step` for a schedule
    /// peaking at `peak` (the first update uses step 0, whose rate is 0 when there is a
    /// warmup, as in Hugging Face).
    pub fn lr(&self, peak: f64, step: usize) -> f64 {
        let (s, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return peak * s / w.max(1.0);
        }
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = ((s - w) / (t - w).max(1.0)).min(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        };
        peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: Warmup, total: usize) -> Schedule {
        ScheduleConfig { kind, warmup }.build(total).unwrap()
    }

    #[test]
    fn linear_with_warmup_matches_hugging_face() {
        // get_linear_schedule_with_warmup(warmup=2, total=10): 0, .5, 1, 7/8, 6/8, ...
        let s = sched(ScheduleKind::Linear, Warmup::Steps(2), 10);
        let lrs: Vec<f64> = (0..11).map(|i| s.lr(1.0, i)).collect();
        let want = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
    }

    #[test]
    fn cosine_and_constant() {
        let s = sched(ScheduleKind::Cosine, Warmup::Ratio(0.1), 20);
        assert_eq!(s.warmup_steps, 2);
        assert!((s.lr(1.0, 2) - 1.0).abs() < 1e-12);
        assert!(
            (s.lr(1.0, 11) - 0.5).abs() < 1e-12,
            "half-way: {}",
            s.lr(1.0, 11)
        );
        assert!(s.lr(1.0, 20).abs() < 1e-12);
        let c = sched(ScheduleKind::Constant, Warmup::Steps(4), 10);
        assert_eq!(c.lr(1.0, 2), 0.5);
        assert_eq!(c.lr(1.0, 9), 1.0);
        let none = sched(ScheduleKind::Linear, Warmup::Steps(0), 4);
        assert_eq!(none.lr(1.0, 0), 1.0);
        assert_eq!(none.lr(1.0, 2), 0.5);
        assert!(
            ScheduleConfig {
                kind: ScheduleKind::Linear,
                warmup: Warmup::Ratio(1.5)
            }
            .build(4)
            .is_err()
        );
    }
}
