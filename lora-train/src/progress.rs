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

/// Draws `curves.png` from a metrics log: training loss (blue) with evaluation loss (red) on
/// the left, the tracked evaluation metric (green) on the right when it is not the loss. The
/// x axis is the step; each panel is scaled to its data. No text is drawn (the build has no
/// font support): read the numbers in the JSONL log.
pub fn plot_curves(log: &Path, png: &Path, metric: &str) -> Result<()> {
    use plotters::prelude::*;
    let records = read_log(log)?;
    let series = |key: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| {
                let x = r.get("step")?.as_f64()?;
                let y = r.get(key)?.as_f64()?;
                y.is_finite().then_some((x, y))
            })
            .collect()
    };
    let train = series("loss");
    let eval = series("eval_loss");
    let metric = metric.strip_prefix("eval_").unwrap_or(metric);
    let extra = if metric == "loss" {
        Vec::new()
    } else {
        series(&format!("eval_{metric}"))
    };
    let plot_err = |e: String| TrainError::Io {
        action: "cannot draw",
        path: png.to_path_buf(),
        source: std::io::Error::other(e),
    };
    let width = if extra.is_empty() { 800 } else { 1400 };
    let root = BitMapBackend::new(png, (width, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
    let panels = if extra.is_empty() {
        vec![root.clone()]
    } else {
        root.split_evenly((1, 2))
    };
    // Both panels share the step axis.
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    for (x, _) in train.iter().chain(&eval).chain(&extra) {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
    }
    let draw = |area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
                lines: &[(&Vec<(f64, f64)>, RGBColor)]|
     -> Result<()> {
        let all: Vec<&(f64, f64)> = lines.iter().flat_map(|(s, _)| s.iter()).collect();
        if all.is_empty() {
            return Ok(());
        }
        let (mut x1, mut y0, mut y1) = (x1, f64::MAX, f64::MIN);
        for (_, y) in all {
            y0 = y0.min(*y);
            y1 = y1.max(*y);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        let mut chart = ChartBuilder::on(area)
            .margin(20)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| plot_err(e.to_string()))?;
        // A frame instead of labelled axes.
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (x0, y0 - pad),
                    (x1, y0 - pad),
                    (x1, y1 + pad),
                    (x0, y1 + pad),
                    (x0, y0 - pad),
                ],
                BLACK.stroke_width(1),
            )))
            .map_err(|e| plot_err(e.to_string()))?;
        for (points, color) in lines {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| plot_err(e.to_string()))?;
            if points.len() == 1 {
                chart
                    .draw_series(std::iter::once(Circle::new(points[0], 4, color.filled())))
                    .map_err(|e| plot_err(e.to_string()))?;
            }
        }
        Ok(())
    };
    draw(&panels[0], &[(&train, BLUE), (&eval, RED)])?;
    if let Some(p) = panels.get(1) {
        draw(p, &[(&extra, RGBColor(0, 150, 0))])?;
    }
    root.present().map_err(|e| plot_err(e.to_string()))?;
    Ok(())
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
        plot_curves(&path, &png, "accuracy").unwrap();
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
