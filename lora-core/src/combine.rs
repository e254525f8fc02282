//! A new adapter from existing ones: PEFT's `add_weighted_adapter` with its `linear`, `cat` and
//! `svd` combinations, on every site that carries one of them.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::prelude::*;

use crate::config::{AdapterSpec, InitLoraWeights, LoraConfig, PatternMap, TargetModules, scale};
use crate::error::{LoraError, Result};
use crate::layer::Factors;
use crate::linalg::{Mat, svd, thin_qr, to_mat, to_tensor};
use crate::model::sync_adapter_grads;
use crate::sites::LoraSites;

/// How [`add_weighted_adapter`] combines adapters (PEFT's `combination_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    /// PEFT's `linear`: with `ws = weight·scale`, `A = Σ sign(ws)·√|ws|·Aᵢ` and
    /// `B = Σ √|ws|·Bᵢ` (a sum of factors, not of updates). All adapters must share one rank.
    Linear,
    /// PEFT's `cat`: the factors side by side, rank = the sum of the ranks; the update is
    /// exactly `Σ weight·scale·Aᵢ·Bᵢ`.
    Cat,
    /// PEFT's `svd`: `Σ weight·scale·Aᵢ·Bᵢ` truncated to `rank` (PEFT's `svd_rank`; `None`: the
    /// largest rank among the adapters) by its singular value decomposition.
    Svd {
        /// Rank of the result.
        rank: Option<usize>,
    },
}

/// One combined adapter at one site, on the host.
pub(crate) struct Part {
    pub adapter: String,
    pub weight: f64,
    /// `[d_in, r]`.
    pub a: Mat,
    /// `[r, d_out]`.
    pub b: Mat,
    pub scale: f64,
}

/// One site's factors of the adapters being combined (those present there, in call order).
pub(crate) struct SiteFactors {
    pub path: String,
    pub device: Device,
    pub parts: Vec<Part>,
}

/// Adds adapter `name`, combining `adapters` (name and weight each) as PEFT's
/// `add_weighted_adapter` does, on every site that carries one of them. Like any added adapter,
/// it starts inactive (activate it with `set_active_adapters`).
///
/// `config` is the config of the first adapter: the result takes its settings with `r` and
/// `lora_alpha` set to the new rank (so the scale is 1, or `√r` with rsLoRA), as PEFT does.
/// Returns the model and the new adapter's config (pass it to `save_adapter`).
///
/// The new adapter gets its own copy of the original of each module the first adapter's
/// `modules_to_save` names, as in PEFT (two of `adapters` with copies of one module are an
/// error there and here).
///
/// Differences from PEFT: an existing `name` is an error (PEFT silently does nothing), and DoRA
/// adapters are refused (PEFT would drop their magnitudes).
pub fn add_weighted_adapter<M: Module + LoraSites>(
    model: M,
    adapters: &[(&str, f64)],
    name: &str,
    combination: Combination,
    config: &LoraConfig,
) -> Result<(M, LoraConfig)> {
    check_inputs(&model, adapters, name)?;
    crate::saved::check_combinable(&crate::saved::scan_copies(&model), adapters)?;
    // PEFT: one adapter is always combined linearly.
    let combination = if adapters.len() == 1 {
        Combination::Linear
    } else {
        combination
    };
    let sites = gather(&model, adapters)?;
    let rank = new_rank(&sites, adapters, combination)?;
    let spec = AdapterSpec {
        r: rank,
        alpha: rank as f64,
        scale: scale(rank as f64, rank, config.use_rslora),
        dropout: config.lora_dropout,
        init: InitLoraWeights::Default,
        dora: false,
        bias: config.bias,
    };
    let mut combined = BTreeMap::new();
    for site in &sites {
        let (a, b) = combine_site(site, combination, rank)?;
        let factors = Factors {
            a: to_tensor(&a, &site.device, &site.path)?,
            b: to_tensor(&b, &site.device, &site.path)?,
            scale: spec.scale,
        };
        combined.insert(site.path.clone(), factors);
    }
    let mut model = model;
    model.visit_lora_sites_mut("", &mut |p, l| {
        let Some(factors) = combined.remove(p) else {
            return Ok(());
        };
        let before = l.active();
        l.add_adapter(name, &spec)?;
        l.set_factors(name, factors, p)?;
        l.set_active(&before)
    })?;
    let out = combined_config(config, rank, sites.into_iter().map(|s| s.path).collect());
    // PEFT gives the new adapter fresh copies of the first adapter's `modules_to_save`.
    let model = crate::model::add_saved_copies(model, config, name, false)?;
    Ok((sync_adapter_grads(model), out))
}

fn check_inputs<M: LoraSites>(model: &M, adapters: &[(&str, f64)], name: &str) -> Result<()> {
    let mut names = Vec::new();
    model.visit_lora_sites("", &mut |_, l| {
        for n in l.adapter_names() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    });
    check_names(&names, adapters, name)
}

/// The name checks of [`add_weighted_adapter`], for any path: `names` are the model's adapters.
pub(crate) fn check_names(names: &[String], adapters: &[(&str, f64)], name: &str) -> Result<()> {
    if adapters.is_empty() {
        return Err(LoraError::config(
            "adapters",
            "add_weighted_adapter needs at least one",
        ));
    }
    if names.iter().any(|n| n == name) {
        return Err(LoraError::DuplicateAdapter {
            module: "(any)".into(),
            adapter: name.to_string(),
        });
    }
    for (a, w) in adapters {
        if !names.iter().any(|n| n == a) {
            return Err(LoraError::UnknownAdapter {
                module: "(any)".into(),
                adapter: a.to_string(),
            });
        }
        if !w.is_finite() {
            return Err(LoraError::config("weights", format!("`{a}`: weight {w}")));
        }
    }
    Ok(())
}

/// The factors of the combined adapters at every site carrying one of them, in model order.
fn gather<M: LoraSites>(model: &M, adapters: &[(&str, f64)]) -> Result<Vec<SiteFactors>> {
    let mut sites = Vec::new();
    let mut failure = None;
    model.visit_lora_sites("", &mut |p, l| {
        let have = l.adapter_names();
        let mut parts = Vec::new();
        for (a, w) in adapters.iter().filter(|(a, _)| have.iter().any(|h| h == a)) {
            let read = || -> Result<Part> {
                if l.magnitude(a)?.is_some() {
                    return Err(LoraError::Unsupported(format!(
                        "add_weighted_adapter with the DoRA adapter `{a}` (its magnitude cannot be combined)"
                    )));
                }
                let f = l.factors(a)?;
                let key = format!("{p} ({a})");
                Ok(Part {
                    adapter: a.to_string(),
                    weight: *w,
                    a: to_mat(f.a, &key)?,
                    b: to_mat(f.b, &key)?,
                    scale: f.scale,
                })
            };
            match read() {
                Ok(part) => parts.push(part),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if !parts.is_empty() {
            sites.push(SiteFactors {
                path: p.to_string(),
                device: l.device(),
                parts,
            });
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(sites),
    }
}

/// PEFT's new rank: the common rank (`linear`), the sum of ranks (`cat`), or `svd_rank`
/// defaulting to the largest (`svd`). An adapter's rank is its largest over the sites.
pub(crate) fn new_rank(
    sites: &[SiteFactors],
    adapters: &[(&str, f64)],
    c: Combination,
) -> Result<usize> {
    let ranks: Vec<usize> = adapters
        .iter()
        .map(|(name, _)| {
            let at_sites = sites.iter().flat_map(|s| &s.parts);
            at_sites
                .filter(|p| p.adapter == *name)
                .map(|p| p.a.cols)
                .max()
                .unwrap_or(0)
        })
        .collect();
    match c {
        Combination::Linear => {
            if ranks.iter().any(|&r| r != ranks[0]) {
                return Err(LoraError::config(
                    "combination",
                    format!("linear needs adapters of one rank, got {ranks:?} (use cat or svd)"),
                ));
            }
            Ok(ranks[0])
        }
        Combination::Cat => Ok(ranks.iter().sum()),
        Combination::Svd { rank } => {
            // An update has at most min(d_in, d_out) singular values (PEFT fails beyond too).
            let most = sites
                .iter()
                .map(|s| s.parts[0].a.rows.min(s.parts[0].b.cols))
                .min()
                .unwrap_or(0);
            match rank {
                Some(0) => Err(LoraError::config("svd_rank", "must be positive")),
                Some(r) if r > most => Err(LoraError::config(
                    "svd_rank",
                    format!("{r} exceeds min(d_in, d_out) = {most} of a combined module"),
                )),
                Some(r) => Ok(r),
                None => Ok(ranks.iter().copied().max().unwrap_or(0)),
            }
        }
    }
}

/// The combined `(A [d_in, rank], B [rank, d_out])` of one site.
pub(crate) fn combine_site(site: &SiteFactors, c: Combination, rank: usize) -> Result<(Mat, Mat)> {
    Ok(match c {
        Combination::Linear => linear(site, rank)?,
        Combination::Cat => cat(site, rank),
        Combination::Svd { .. } => svd_combined(site, rank),
    })
}

/// PEFT's config of the combined adapter: the first adapter's, with `r = lora_alpha = rank`,
/// no patterns, and the combined sites as targets.
pub(crate) fn combined_config(config: &LoraConfig, rank: usize, sites: Vec<String>) -> LoraConfig {
    let mut out = config.clone();
    out.r = rank;
    out.lora_alpha = rank as f64;
    out.rank_pattern = PatternMap::new();
    out.alpha_pattern = PatternMap::new();
    out.target_modules = Some(TargetModules::List(sites));
    out
}

/// `linear`: `A = Σ sign(ws)·√|ws|·Aᵢ`, `B = Σ √|ws|·Bᵢ` with `ws = weight·scale`.
pub(crate) fn linear(site: &SiteFactors, rank: usize) -> Result<(Mat, Mat)> {
    let first = &site.parts[0];
    let (mut a, mut b) = (
        Mat::zeros(first.a.rows, rank),
        Mat::zeros(rank, first.b.cols),
    );
    for p in &site.parts {
        if p.a.cols != rank {
            return Err(LoraError::config(
                "combination",
                format!(
                    "linear needs one rank, but `{}` has rank {} at `{}` (use cat or svd)",
                    p.adapter, p.a.cols, site.path
                ),
            ));
        }
        let ws = p.weight * p.scale;
        let root = ws.abs().sqrt();
        let sign = if ws >= 0.0 { 1.0 } else { -1.0 };
        a.data
            .iter_mut()
            .zip(&p.a.data)
            .for_each(|(x, y)| *x += sign * root * y);
        b.data
            .iter_mut()
            .zip(&p.b.data)
            .for_each(|(x, y)| *x += root * y);
    }
    Ok((a, b))
}

/// `cat`: `A = [w₁s₁A₁ … wₖsₖAₖ 0]`, `B = [B₁; …; Bₖ; 0]` (zero-padded to the model-wide rank
/// where a site lacks some adapters).
pub(crate) fn cat(site: &SiteFactors, rank: usize) -> (Mat, Mat) {
    let first = &site.parts[0];
    let (mut a, mut b) = (
        Mat::zeros(first.a.rows, rank),
        Mat::zeros(rank, first.b.cols),
    );
    let mut offset = 0;
    for p in &site.parts {
        let ws = p.weight * p.scale;
        for i in 0..p.a.rows {
            for j in 0..p.a.cols {
                a.set(i, offset + j, ws * p.a.at(i, j));
            }
        }
        for i in 0..p.b.rows {
            for j in 0..p.b.cols {
                b.set(offset + i, j, p.b.at(i, j));
            }
        }
        offset += p.a.cols;
    }
    (a, b)
}

/// `svd`: the best rank-`rank` approximation of `ΔW = Σ wᵢsᵢAᵢBᵢ`. ΔW has rank at most
/// `R = Σ rᵢ`, so its SVD comes from two thin QRs and the SVD of an `R × R` matrix:
/// `ΔW = A꜀·B꜀ = Q₁R₁·(Q₂R₂)ᵀ = (Q₁U)·S·(Q₂V)ᵀ` with `R₁R₂ᵀ = U·S·Vᵀ`. As in PEFT, the
/// singular values go to B.
pub(crate) fn svd_combined(site: &SiteFactors, rank: usize) -> (Mat, Mat) {
    let (joined_a, joined_b) = cat(site, site.parts.iter().map(|p| p.a.cols).sum());
    let (q1, r1) = thin_qr(&joined_a);
    let (q2, r2) = thin_qr(&joined_b.transpose());
    let (u, s, v) = svd(&r1.matmul(&r2.transpose()));
    let (left, right) = (q1.matmul(&u), q2.matmul(&v));
    let (mut a, mut b) = (Mat::zeros(left.rows, rank), Mat::zeros(rank, right.rows));
    for (j, sigma) in s.iter().enumerate().take(rank) {
        for i in 0..left.rows {
            a.set(i, j, left.at(i, j));
        }
        for i in 0..right.rows {
            b.set(j, i, sigma * right.at(i, j));
        }
    }
    (a, b)
}
