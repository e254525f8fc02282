//! `curves.png`: a training run at a glance, drawn from its metrics log.
//!
//! Up to three panels side by side, all against the optimizer step: the loss (each step's
//! training loss, its smoothed line, the evaluation loss), the tracked evaluation metric with
//! the best evaluation marked, and the learning rate. Text is drawn with a bundled font
//! (DejaVu Sans, cut to Latin-1; licence in `assets/`), so the picture needs nothing from the
//! system.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{Map, Value};

use crate::error::{Result, TrainError};
use crate::progress::read_log;

/// DejaVu Sans, subset by `scripts/subset_font.sh`.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
/// The family name every text style below asks for.
const FAMILY: &str = "sans-serif";
const PANEL_SIZE: (u32, u32) = (560, 440);

const RAW: RGBColor = RGBColor(150, 180, 225);
const SMOOTH: RGBColor = RGBColor(20, 70, 170);
const EVAL: RGBColor = RGBColor(200, 30, 30);
const METRIC: RGBColor = RGBColor(0, 130, 60);
const LR: RGBColor = RGBColor(110, 60, 150);

/// How a series is drawn.
#[derive(Clone, Copy, PartialEq)]
enum Mark {
    /// A thin line (every step's training loss).
    Thin,
    /// A thick line.
    Line,
    /// A line through circled points (evaluations).
    Points,
}

struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    mark: Mark,
}

struct Panel {
    title: String,
    y_label: String,
    series: Vec<Series>,
    /// The best evaluation, marked and annotated.
    best: Option<(f64, f64)>,
}

/// Draws `png` from the metrics log at `log`: the loss panel, the evaluation `metric` panel
/// (when the log has it and it is not the loss) and the learning-rate panel. The best
/// evaluation of `metric` (largest if `greater_is_better`, else smallest) is marked.
pub fn plot_curves(log: &Path, png: &Path, metric: &str, greater_is_better: bool) -> Result<()> {
    let err = |e: String| TrainError::Io {
        action: "cannot draw",
        path: png.to_path_buf(),
        source: std::io::Error::other(e),
    };
    register_font().map_err(err)?;
    let records = read_log(log)?;
    let panels = panels(&records, metric, greater_is_better);
    if panels.is_empty() {
        return Err(err(format!("{} has no steps to plot", log.display())));
    }
    draw(png, &panels).map_err(err)
}

fn register_font() -> std::result::Result<(), String> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| "the bundled font does not parse".to_string())
    })
    .clone()
}

/// `(step, value)` of every record that has `key` with a finite value.
fn series(records: &[Map<String, Value>], key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| {
            let x = r.get("step")?.as_f64()?;
            let y = r.get(key)?.as_f64()?;
            y.is_finite().then_some((x, y))
        })
        .collect()
}

/// What to draw: only panels with data.
fn panels(records: &[Map<String, Value>], metric: &str, greater: bool) -> Vec<Panel> {
    let metric = metric.strip_prefix("eval_").unwrap_or(metric);
    let loss = series(records, "loss");
    let eval_loss = series(records, "eval_loss");
    let mut loss_panel = Panel {
        title: "Loss".into(),
        y_label: "loss".into(),
        series: Vec::new(),
        best: None,
    };
    if !loss.is_empty() {
        let window = (loss.len() / 20).clamp(1, 50);
        loss_panel
            .series
            .push(line("train loss (each step)", &loss, RAW, Mark::Thin));
        if window > 1 {
            let label = format!("train loss (smoothed, ~{window} steps)");
            loss_panel
                .series
                .push(line(&label, &smooth(&loss, window), SMOOTH, Mark::Line));
        }
    }
    if !eval_loss.is_empty() {
        loss_panel
            .series
            .push(line("eval loss", &eval_loss, EVAL, Mark::Points));
    }
    let mut out = Vec::new();
    if metric == "loss" {
        loss_panel.best = best(&eval_loss, greater);
    }
    if !loss_panel.series.is_empty() {
        out.push(loss_panel);
    }
    let values = series(records, &format!("eval_{metric}"));
    if metric != "loss" && !values.is_empty() {
        out.push(Panel {
            title: format!("Validation {metric}"),
            y_label: metric.into(),
            best: best(&values, greater),
            series: vec![line(
                &format!("eval {metric}"),
                &values,
                METRIC,
                Mark::Points,
            )],
        });
    }
    let lr = series(records, "learning_rate");
    if !lr.is_empty() {
        out.push(Panel {
            title: "Learning rate".into(),
            y_label: "learning rate".into(),
            best: None,
            series: vec![line("learning rate", &lr, LR, Mark::Line)],
        });
    }
    out
}

fn line(label: &str, points: &[(f64, f64)], color: RGBColor, mark: Mark) -> Series {
    Series {
        label: label.into(),
        points: points.to_vec(),
        color,
        mark,
    }
}

/// Exponential moving average over about `window` points, bias-corrected so that the start
/// is not pulled towards zero (as TensorBoard's smoothing).
fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = 1.0 - 1.0 / window as f64;
    let (mut avg, mut weight) = (0.0, 0.0);
    points
        .iter()
        .map(|&(x, y)| {
            avg = w * avg + (1.0 - w) * y;
            weight = w * weight + (1.0 - w);
            (x, avg / weight)
        })
        .collect()
}

/// The largest (or smallest) point; the earliest of equals.
fn best(points: &[(f64, f64)], greater: bool) -> Option<(f64, f64)> {
    points.iter().copied().reduce(|b, p| {
        let better = if greater { p.1 > b.1 } else { p.1 < b.1 };
        if better { p } else { b }
    })
}

fn draw(png: &Path, panels: &[Panel]) -> std::result::Result<(), String> {
    let (w, h) = PANEL_SIZE;
    let root = BitMapBackend::new(png, (w * panels.len() as u32, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    // Every panel shares the step axis.
    let steps = panels
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = steps.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        draw_panel(area, panel, x0..x1)?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    panel: &Panel,
    x: std::ops::Range<f64>,
) -> std::result::Result<(), String> {
    let ys = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let pad = ((y1 - y0) * 0.08).max(y1.abs() * 0.05).max(1e-9);
    let y = (y0 - pad)..(y1 + pad);
    let ticks = Ticks::for_range(y.start, y.end);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc(&panel.y_label)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| ticks.format(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    for s in &panel.series {
        draw_series(&mut chart, s)?;
    }
    if let Some((bx, by)) = panel.best {
        let text = format!("best {} at step {bx:.0}", ticks.finer().format(by));
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((bx, by))
                    + Circle::new((0, 0), 8, BLACK.stroke_width(2))
                    + Text::new(text, (-150, 12), (FAMILY, 14).into_font()),
            ))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())
}

type Chart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_series(chart: &mut Chart<'_>, s: &Series) -> std::result::Result<(), String> {
    let width = if s.mark == Mark::Thin { 1 } else { 2 };
    let style = s.color.stroke_width(width);
    let color = s.color;
    chart
        .draw_series(LineSeries::new(s.points.iter().copied(), style))
        .map_err(|e| e.to_string())?
        .label(&s.label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    if s.mark == Mark::Points {
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, 4, s.color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// How one axis writes its ticks: fixed-point with enough decimals to tell ticks a fifth of the
/// span apart, or scientific for axes of very small or large values (learning rates).
#[derive(Clone, Copy)]
struct Ticks {
    scientific: bool,
    decimals: usize,
}

impl Ticks {
    fn for_range(lo: f64, hi: f64) -> Self {
        let max = lo.abs().max(hi.abs());
        let step = (hi - lo) / 5.0;
        let digits = |x: f64| {
            if x > 0.0 && x.is_finite() {
                (-x.log10().floor()).clamp(0.0, 8.0) as usize
            } else {
                2
            }
        };
        if max > 0.0 && !(1e-2..1e5).contains(&max) {
            // Mantissa digits that tell the ticks apart: step relative to the magnitude.
            let exp = max.log10().floor();
            let decimals = digits(step / 10f64.powf(exp)).clamp(1, 4);
            Self {
                scientific: true,
                decimals,
            }
        } else {
            Self {
                scientific: false,
                decimals: digits(step),
            }
        }
    }

    /// One more decimal (for an annotated value).
    fn finer(self) -> Self {
        Self {
            decimals: self.decimals + 1,
            ..self
        }
    }

    fn format(self, v: f64) -> String {
        let d = self.decimals;
        if v == 0.0 {
            "0".into()
        } else if self.scientific {
            format!("{v:.d$e}")
        } else {
            format!("{v:.d$}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_starts_at_the_first_value_and_follows_a_constant() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.0)).collect();
        assert!(smooth(&pts, 5).iter().all(|p| (p.1 - 2.0).abs() < 1e-12));
        let s = smooth(&[(1.0, 4.0), (2.0, 0.0)], 2);
        assert_eq!(s[0].1, 4.0);
        // (0.25·4 + 0.5·0) / (0.25 + 0.5)
        assert!((s[1].1 - 4.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn best_is_the_earliest_extreme() {
        let pts = [(1.0, 0.5), (2.0, 0.8), (3.0, 0.8), (4.0, 0.6)];
        assert_eq!(best(&pts, true), Some((2.0, 0.8)));
        assert_eq!(best(&pts, false), Some((1.0, 0.5)));
        assert_eq!(best(&[], true), None);
    }

    #[test]
    fn ticks_tell_values_apart() {
        let loss = Ticks::for_range(0.4, 0.7);
        assert_eq!(loss.format(0.612), "0.61");
        assert_eq!(loss.finer().format(0.6123), "0.612");
        assert_eq!(Ticks::for_range(0.0, 300.0).format(274.0), "274");
        // A learning-rate axis is scientific throughout, zero aside.
        let lr = Ticks::for_range(0.0, 5e-4);
        assert_eq!(lr.format(4e-4), "4.0e-4");
        assert_eq!(lr.format(0.0), "0");
        let flat = Ticks::for_range(9.5e-4, 1.05e-3);
        assert_eq!(flat.format(1e-3), "1.00e-3");
        assert_eq!(flat.format(9.5e-4), "9.50e-4");
    }
}
