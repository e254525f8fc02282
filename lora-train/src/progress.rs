//! Progress output (a bar on a terminal, plain lines otherwise), the JSONL metrics log and the
//! loss/metric curve PNG.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{Result, TrainError};

/// How progress is shown (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise (default).
    #[default]
    Auto,
    /// Always a bar.
    Bar,
    /// Always plain lines (one every `logging_steps` steps).
    Lines,
    /// Nothing (the metrics log is still written).
    Off,
}

/// Live progress of a run.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    logging_steps: usize,
    total_steps: usize,
    start: Instant,
    start_step: usize,
    window_loss: f64,
    window_steps: usize,
}

impl Progress {
    pub fn new(
        mode: ProgressMode,
        total_steps: usize,
        start_step: usize,
        logging_steps: usize,
    ) -> Self {
        let bar_wanted = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            ProgressMode::Lines | ProgressMode::Off => false,
        };
        let bar = bar_wanted.then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total_steps as u64),
                ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_position(start_step as u64);
            bar
        });
        Self {
            bar,
            lines: mode == ProgressMode::Lines || (mode == ProgressMode::Auto && !bar_wanted),
            logging_steps: logging_steps.max(1),
            total_steps,
            start: Instant::now(),
            start_step,
            window_loss: 0.0,
            window_steps: 0,
        }
    }

    /// Reports optimizer step `step` (1-based).
    pub fn step(&mut self, step: usize, epoch: f64, loss: f64, lr: f64, tokens_per_s: f64) {
        self.window_loss += loss;
        self.window_steps += 1;
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "epoch {epoch:.2} loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s"
            ));
        }
        if self.lines && (step.is_multiple_of(self.logging_steps) || step == self.total_steps) {
            let mean = self.window_loss / self.window_steps.max(1) as f64;
            let done = (step - self.start_step).max(1) as f64;
            let per_step = self.start.elapsed().as_secs_f64() / done;
            let eta =
                Duration::from_secs_f64(per_step * self.total_steps.saturating_sub(step) as f64);
            eprintln!(
                "step {step}/{} epoch {epoch:.2} loss {mean:.4} lr {lr:.3e} {tokens_per_s:.0} tok/s eta {}",
                self.total_steps,
                hms(eta)
            );
            self.window_loss = 0.0;
            self.window_steps = 0;
        }
    }

    /// Prints a line above the bar (or plainly), unless progress is off.
    pub fn message(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.lines => eprintln!("{text}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// The JSONL metrics log: one object per training step (`step`, `epoch`, `loss`,
/// `learning_rate`, `grad_norm`, `tokens_per_second`) and per evaluation (`step`, `epoch`,
/// `eval_<metric>`...).
pub(crate) struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path`. A fresh run starts it empty; a resumed run keeps the records up to the
    /// step it resumes from and drops later ones (written after that checkpoint, then lost).
    pub fn open(path: &Path, resume_step: Option<usize>) -> Result<Self> {
        let kept = match resume_step {
            Some(step) if path.exists() => read_log(path)?
                .into_iter()
                .filter(|r| {
                    r.get("step")
                        .and_then(Value::as_u64)
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|r| Value::Object(r).to_string() + "\n")
                .collect::<String>(),
            _ => String::new(),
        };
        lora_core::io::write_atomic(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(TrainError::io("cannot open", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, record: Value) -> Result<()> {
        writeln!(self.file, "{record}").map_err(TrainError::io("cannot write", &self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a metrics log back (lines that do not parse as objects are skipped).
pub fn read_log(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let f = std::fs::File::open(path).map_err(TrainError::io("cannot read", path))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(TrainError::io("cannot read", path))?;
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&line) {
            out.push(m);
        }
    }
    Ok(out)
}

/// A step record for the log.
pub(crate) fn step_record(
    step: usize,
    epoch: f64,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens_per_s: f64,
) -> Value {
    json!({
        "step": step,
        "epoch": epoch,
        "loss": loss,
        "learning_rate": lr,
        "grad_norm": grad_norm,
        "tokens_per_second": tokens_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keeps_records_up_to_the_resume_step_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, None).unwrap();
        for step in 1..=30 {
            let loss = 10.0 / (1.0 + step as f64 * 0.2);
            log.write(step_record(
                step,
                step as f64 / 10.0,
                loss,
                1e-3,
                1.0,
                100.0,
            ))
            .unwrap();
            if step % 10 == 0 {
                log.write(json!({"step": step, "epoch": step / 10, "eval_loss": loss + 0.5, "eval_accuracy": 0.5 + step as f64 / 100.0}))
                    .unwrap();
            }
        }
        drop(log);
        let png = dir.path().join("curves.png");
        crate::plot::plot_curves(&path, &png, "accuracy", true).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG");
        if let Ok(keep) = std::env::var("LORA_TRAIN_KEEP_PLOT") {
            std::fs::copy(&png, keep).unwrap();
        }
        // Resuming at step 20 drops what was logged after it.
        let _log = MetricsLog::open(&path, Some(20)).unwrap();
        let records = read_log(&path).unwrap();
        assert_eq!(records.len(), 20 + 2);
        assert!(records.iter().all(|r| r["step"].as_u64().unwrap() <= 20));
        // A fresh run starts empty.
        let _log = MetricsLog::open(&path, None).unwrap();
        assert!(read_log(&path).unwrap().is_empty());
    }
}
