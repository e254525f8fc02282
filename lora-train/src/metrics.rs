//! Evaluation metrics: accuracy, F1, Matthews correlation (classification), Pearson and
//! Spearman correlation (regression), perplexity (language modelling).
//!
//! Definitions follow scikit-learn and SciPy: binary F1 is of the positive class 1, multi-class
//! F1 is the macro average; MCC is the multi-class generalisation (Gorodkin's R_K); Spearman uses
//! average ranks for ties. Undefined cases (no variance, no predicted positives) give 0, as
//! scikit-learn does for F1 and MCC.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::model::Predictions;

/// An evaluation metric, by its key in [`Metrics`]; names may carry Hugging Face's `eval_`
/// prefix when parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Mean evaluation loss.
    #[default]
    #[serde(alias = "eval_loss")]
    Loss,
    /// `exp(loss)` (language models).
    #[serde(alias = "eval_perplexity")]
    Perplexity,
    /// Fraction of correct classes.
    #[serde(alias = "eval_accuracy")]
    Accuracy,
    /// F1 (binary: of class 1; else macro).
    #[serde(alias = "eval_f1")]
    F1,
    /// Matthews correlation.
    #[serde(alias = "eval_mcc")]
    Mcc,
    /// Pearson correlation (regression).
    #[serde(alias = "eval_pearson")]
    Pearson,
    /// Spearman correlation (regression).
    #[serde(alias = "eval_spearman")]
    Spearman,
}

impl Metric {
    /// Every metric, in the order above.
    pub const ALL: [Metric; 7] = [
        Metric::Loss,
        Metric::Perplexity,
        Metric::Accuracy,
        Metric::F1,
        Metric::Mcc,
        Metric::Pearson,
        Metric::Spearman,
    ];

    /// Its key in [`Metrics`] (`loss`, `f1`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::Perplexity => "perplexity",
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Mcc => "mcc",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
        }
    }

    /// Whether larger values are better (all but loss and perplexity).
    pub fn greater_is_better(self) -> bool {
        !matches!(self, Metric::Loss | Metric::Perplexity)
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Metric {
    type Err = TrainError;

    /// A metric name, with or without an `eval_` prefix.
    fn from_str(s: &str) -> Result<Self, TrainError> {
        let key = s.strip_prefix("eval_").unwrap_or(s);
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == key)
            .ok_or_else(|| {
                let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                TrainError::config(
                    "metric_for_best",
                    format!("`{s}` is not a metric (one of {})", names.join(", ")),
                )
            })
    }
}

/// Evaluation results by name: `loss` always; `perplexity`, `accuracy`/`f1`/`mcc` or
/// `pearson`/`spearman` depending on the task (see [`Predictions`]).
pub type Metrics = BTreeMap<String, f64>;

/// The metrics of an evaluation: its mean `loss` and what `predictions` allow.
pub fn of_predictions(loss: f64, predictions: Predictions) -> Metrics {
    let mut m = Metrics::new();
    m.insert("loss".into(), loss);
    match predictions {
        Predictions::None => {}
        Predictions::LanguageModel => {
            m.insert("perplexity".into(), perplexity(loss));
        }
        Predictions::Classes {
            predicted,
            gold,
            num_classes,
        } => {
            m.insert("accuracy".into(), accuracy(&predicted, &gold));
            m.insert("f1".into(), f1(&predicted, &gold, num_classes));
            m.insert("mcc".into(), mcc(&predicted, &gold, num_classes));
        }
        Predictions::Values { predicted, gold } => {
            m.insert("pearson".into(), pearson(&predicted, &gold));
            m.insert("spearman".into(), spearman(&predicted, &gold));
        }
    }
    m
}

/// `name value` pairs with 4 decimals, comma-separated (progress lines, the programs' output).
pub fn format_metrics(m: &Metrics) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fraction of predictions equal to the labels (0 for empty input).
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

fn confusion(pred: &[usize], gold: &[usize], classes: usize) -> Vec<Vec<f64>> {
    let mut m = vec![vec![0.0; classes]; classes];
    for (&p, &g) in pred.iter().zip(gold) {
        if p < classes && g < classes {
            m[g][p] += 1.0;
        }
    }
    m
}

fn f1_of(m: &[Vec<f64>], c: usize) -> f64 {
    let tp = m[c][c];
    let fp: f64 = (0..m.len()).filter(|&g| g != c).map(|g| m[g][c]).sum();
    let fn_: f64 = (0..m.len()).filter(|&p| p != c).map(|p| m[c][p]).sum();
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// F1: of class 1 when `classes == 2`, else the unweighted mean over classes (macro F1).
pub fn f1(pred: &[usize], gold: &[usize], classes: usize) -> f64 {
    let m = confusion(pred, gold, classes.max(2));
    if classes <= 2 {
        f1_of(&m, 1)
    } else {
        (0..classes).map(|c| f1_of(&m, c)).sum::<f64>() / classes as f64
    }
}

/// Matthews correlation coefficient (multi-class form; equals the binary formula for 2 classes).
pub fn mcc(pred: &[usize], gold: &[usize], classes: usize) -> f64 {
    let k = classes.max(2);
    let m = confusion(pred, gold, k);
    let s: f64 = m.iter().flatten().sum();
    let c: f64 = (0..k).map(|i| m[i][i]).sum();
    let t: Vec<f64> = (0..k).map(|i| m[i].iter().sum()).collect(); // true counts
    let p: Vec<f64> = (0..k).map(|j| (0..k).map(|i| m[i][j]).sum()).collect(); // predicted
    let num = c * s - t.iter().zip(&p).map(|(a, b)| a * b).sum::<f64>();
    let den = ((s * s - p.iter().map(|x| x * x).sum::<f64>())
        * (s * s - t.iter().map(|x| x * x).sum::<f64>()))
    .sqrt();
    if den == 0.0 { 0.0 } else { num / den }
}

/// Pearson correlation (0 when either side has no variance or fewer than 2 points).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return 0.0;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks starting at 1, ties sharing their average rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation: Pearson on average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Perplexity from a mean per-token cross-entropy (natural log).
pub fn perplexity(mean_loss: f64) -> f64 {
    mean_loss.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed by hand (and agreeing with scikit-learn / SciPy).
    const PRED: [usize; 8] = [1, 0, 1, 1, 0, 1, 0, 0];
    const GOLD: [usize; 8] = [1, 0, 0, 1, 0, 1, 1, 0];

    #[test]
    fn binary_classification() {
        // tp=3 fp=1 fn=1 tn=3
        assert_eq!(accuracy(&PRED, &GOLD), 0.75);
        assert!((f1(&PRED, &GOLD, 2) - 0.75).abs() < 1e-12); // 2·3/(6+1+1)
        // (3·3 − 1·1)/sqrt(4·4·4·4) = 8/16
        assert!((mcc(&PRED, &GOLD, 2) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn multiclass_macro_f1_and_mcc() {
        let gold = [0, 1, 2, 2, 1, 0];
        let pred = [0, 2, 2, 2, 1, 1];
        // class 0: tp1 fp0 fn1 → 2/3; class 1: tp1 fp1 fn1 → 1/2; class 2: tp2 fp1 fn0 → 4/5
        let want = (2.0 / 3.0 + 0.5 + 0.8) / 3.0;
        assert!((f1(&pred, &gold, 3) - want).abs() < 1e-12);
        // c=4 s=6, t=(2,2,2) p=(1,2,3): (24 − 12)/sqrt((36 − 14)(36 − 12)) = 12/sqrt(528)
        assert!((mcc(&pred, &gold, 3) - 12.0 / 528f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn correlations() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 1.0, 4.0, 3.0, 5.0];
        // Σdxdy = 8, Σdx² = Σdy² = 10
        assert!((pearson(&x, &y) - 0.8).abs() < 1e-12);
        // no ties: 1 − 6Σd²/(n(n²−1)) = 1 − 6·4/120
        assert!((spearman(&x, &y) - 0.8).abs() < 1e-12);
        assert_eq!(ranks(&[10.0, 20.0, 20.0, 5.0]), vec![2.0, 3.5, 3.5, 1.0]);
        // Ties: ranks x=(1,2.5,2.5,4), y=(1,2,3,4): Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5.
        let s = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((s - 4.5 / (4.5f64 * 5.0).sqrt()).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[2.0, 3.0]), 0.0);
    }

    #[test]
    fn perplexity_is_exp_loss() {
        assert!((perplexity(2f64.ln()) - 2.0).abs() < 1e-12);
    }
}
