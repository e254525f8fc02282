//! Initialisations that take the adapter out of the base weight and leave the rest there
//! (PiSSA, OLoRA), as PEFT 0.21.2 computes them, on the host in f64.

use burn::prelude::*;

use crate::config::{AdapterSpec, InitLoraWeights};
use crate::error::{LoraError, Result};
use crate::linalg::{Mat, svd, thin_qr, to_mat, to_tensor};

/// For a linear base weight `w` (`[d_in, d_out]`, burn's orientation): the initial
/// `(a [d_in, r], b [r, d_out], residual [d_in, d_out])` with `residual + scale·a·b = w`.
///
/// PEFT works on the `[out, in]` weight `P`:
/// - PiSSA: `P = U·S·Vᵀ`; `lora_B = U_r·√(S_r/scale)`, `lora_A = √(S_r/scale)·V_rᵀ`.
/// - OLoRA: `P = Q·R`; `lora_B = Q_r`, `lora_A = R_r` (the first `r` rows).
///
/// Signs of singular vectors (and of Q's columns) may differ from PyTorch's; the update
/// `lora_B·lora_A` and the residual do not.
pub(crate) fn base_factors(
    w: Tensor<2>,
    spec: &AdapterSpec,
    key: &str,
) -> Result<(Tensor<2>, Tensor<2>, Tensor<2>)> {
    let device = w.device();
    let p = to_mat(w, key)?.transpose();
    let (out, d_in, r) = (p.rows, p.cols, spec.r);
    if r > out.min(d_in) {
        return Err(LoraError::config(
            "r",
            format!(
                "{r} exceeds min(out, in) = {} of `{key}` for PiSSA/OLoRA",
                out.min(d_in)
            ),
        ));
    }
    if spec.scale == 0.0 || !spec.scale.is_finite() {
        return Err(LoraError::config(
            "lora_alpha",
            format!(
                "PiSSA/OLoRA divide by the scale, which is {} for `{key}`",
                spec.scale
            ),
        ));
    }
    let (lora_a, lora_b) = match spec.init {
        InitLoraWeights::Pissa => pissa(&p, r, spec.scale),
        InitLoraWeights::Olora => olora(&p, r),
        other => {
            return Err(LoraError::Unsupported(format!(
                "{other:?} does not take the adapter from the base weight"
            )));
        }
    };
    let mut residual = p.clone();
    let update = lora_b.matmul(&lora_a);
    residual
        .data
        .iter_mut()
        .zip(&update.data)
        .for_each(|(x, u)| *x -= spec.scale * u);
    Ok((
        to_tensor(&lora_a.transpose(), &device, key)?,
        to_tensor(&lora_b.transpose(), &device, key)?,
        to_tensor(&residual.transpose(), &device, key)?,
    ))
}

/// `(lora_A [r, in], lora_B [out, r])` of PiSSA.
fn pissa(p: &Mat, r: usize, scale: f64) -> (Mat, Mat) {
    let (u, s, v) = svd(p);
    let (mut a, mut b) = (Mat::zeros(r, p.cols), Mat::zeros(p.rows, r));
    for (j, sigma) in s.iter().enumerate().take(r) {
        let root = (sigma / scale).sqrt();
        for i in 0..p.cols {
            a.set(j, i, root * v.at(i, j));
        }
        for i in 0..p.rows {
            b.set(i, j, u.at(i, j) * root);
        }
    }
    (a, b)
}

/// `(lora_A [r, in], lora_B [out, r])` of OLoRA.
fn olora(p: &Mat, r: usize) -> (Mat, Mat) {
    let (q, rr) = thin_qr(p);
    let (mut a, mut b) = (Mat::zeros(r, p.cols), Mat::zeros(p.rows, r));
    for j in 0..r {
        for i in 0..p.cols {
            a.set(j, i, rr.at(j, i));
        }
        for i in 0..p.rows {
            b.set(i, j, q.at(i, j));
        }
    }
    (a, b)
}
