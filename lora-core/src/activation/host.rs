//! GELU and its derivative on host slices: branch-free so the compiler vectorises them, compiled
//! for AVX-512 and AVX2 beside the baseline and chosen at run time, split across rayon's threads.
//!
//! burn-flex 0.22.1 computes GELU one element at a time on one thread with a scalar software
//! `erf`; that was a sixth of the README main job's CPU time (docs/benchmarks.md).

use std::marker::PhantomData;

use rayon::prelude::*;

use crate::kernel::{CHUNK, Vectorised, exp, flush, vectorised};

/// One element-wise function of `x`.
pub(crate) trait Pointwise {
    /// The value at `x`.
    fn at(x: f32) -> f32;
}

/// `(Φ(x), φ(x))`: the standard normal CDF and density.
///
/// `Φ` comes from Abramowitz & Stegun 7.1.26, `erfc(z) ≈ t·P(t)·e^(−z²)` with `t = 1/(1 + p·z)`,
/// whose error is below 1.5e-7; it is taken on `|x|` and reflected, so no branch remains.
#[inline(always)]
fn normal(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let mut poly = A[4];
    for a in [A[3], A[2], A[1], A[0]] {
        poly = poly * t + a;
    }
    let e = exp(-0.5 * x * x);
    // Half of erfc(|x|/√2): Φ(x) for negative x, 1 − Φ(x) for positive.
    let tail = 0.5 * t * poly * e;
    let cdf = if x < 0.0 { tail } else { 1.0 - tail };
    // 1/√(2π)
    (cdf, 0.398_942_3 * e)
}

/// Exact GELU, `x·Φ(x)` (BERT's `gelu`).
pub(crate) struct GeluErf;
impl Pointwise for GeluErf {
    #[inline(always)]
    fn at(x: f32) -> f32 {
        x * normal(x).0
    }
}

/// The derivative of exact GELU, `Φ(x) + x·φ(x)`.
pub(crate) struct GeluErfGrad;
impl Pointwise for GeluErfGrad {
    #[inline(always)]
    fn at(x: f32) -> f32 {
        let (cdf, pdf) = normal(x);
        cdf + x * pdf
    }
}

/// `2·√(2/π)`, `0.044715`: GPT-2's `gelu_new` is `x·σ(C·x·(1 + K·x²))`, its tanh form rewritten
/// with `0.5·(1 + tanh u) = σ(2u)`.
const TANH_C: f32 = 1.595_769_2;
const TANH_K: f32 = 0.044_715;

/// `(σ(v), 1 − σ(v))` with `σ(v) = 1 / (1 + e^(−v))`; `1 − σ` as `e^(−v)·σ`, since `1 − σ`
/// subtracted would lose its low bits wherever `σ` is near 1.
#[inline(always)]
fn sigmoid(v: f32) -> (f32, f32) {
    let e = exp(-v);
    let s = 1.0 / (1.0 + e);
    (s, e * s)
}

/// `C·x·(1 + K·x²)`, with `x` clamped to ±20 where `σ` of it is already 0 or 1 in f32, so
/// `x³` never overflows.
#[inline(always)]
fn tanh_arg(x: f32) -> f32 {
    let x = x.clamp(-20.0, 20.0);
    TANH_C * x * (1.0 + TANH_K * x * x)
}

/// GPT-2's tanh approximation of GELU (`gelu_new`).
pub(crate) struct GeluTanh;
impl Pointwise for GeluTanh {
    #[inline(always)]
    fn at(x: f32) -> f32 {
        x * sigmoid(tanh_arg(x)).0
    }
}

/// The derivative of `gelu_new`: `σ + x·σ·(1 − σ)·C·(1 + 3K·x²)`.
pub(crate) struct GeluTanhGrad;
impl Pointwise for GeluTanhGrad {
    #[inline(always)]
    fn at(x: f32) -> f32 {
        let (s, rest) = sigmoid(tanh_arg(x));
        // Past |x| = 20 the second term is below f32's resolution; the clamp keeps `x²` and
        // `x·0·∞` out of it for huge inputs.
        let x = x.clamp(-20.0, 20.0);
        s + x * s * rest * TANH_C * (1.0 + 3.0 * TANH_K * x * x)
    }
}

/// `K(x)` for each element, or `g·K(x)` when `g` is given (a backward pass).
///
/// # Panics
/// If `g`'s length differs from `x`'s (callers pass tensors of one shape).
pub(crate) fn map<K: Pointwise>(x: &[f32], g: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    let chunks = out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK));
    match g {
        Some(g) => {
            assert_eq!(g.len(), x.len(), "gradient and input differ in length");
            chunks.zip(g.par_chunks(CHUNK)).for_each(|((out, x), g)| {
                vectorised(Lanes::<K> {
                    x,
                    g: Some(g),
                    out,
                    kind: PhantomData,
                })
            });
        }
        None => chunks.for_each(|(out, x)| {
            vectorised(Lanes::<K> {
                x,
                g: None,
                out,
                kind: PhantomData,
            })
        }),
    }
    out
}

/// The element loop over one chunk.
struct Lanes<'a, K> {
    x: &'a [f32],
    g: Option<&'a [f32]>,
    out: &'a mut [f32],
    kind: PhantomData<K>,
}

impl<K: Pointwise> Vectorised for Lanes<'_, K> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        match self.g {
            Some(g) => {
                for ((o, &x), &g) in self.out.iter_mut().zip(self.x).zip(g) {
                    *o = flush(g * K::at(x));
                }
            }
            None => {
                for (o, &x) in self.out.iter_mut().zip(self.x) {
                    *o = flush(K::at(x));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Φ(x) in f64 from burn-flex's full-precision `erf`.
    fn cdf64(x: f64) -> f64 {
        0.5 * (1.0 + burn::backend::flex::ops::unary::erf_f64(x / std::f64::consts::SQRT_2))
    }

    /// 20 001 points over [−10, 10] plus values at the edges of `exp`'s clamp and beyond.
    fn grid() -> Vec<f32> {
        let mut x: Vec<f32> = (-10_000..=10_000).map(|i| i as f32 * 1e-3).collect();
        x.extend([
            -1e30, -200.0, -87.5, -40.0, 40.0, 88.5, 200.0, 1e30, 1e-30, -1e-30,
        ]);
        x
    }

    fn worst(ours: &[f32], reference: impl Fn(f64) -> f64, x: &[f32]) -> f64 {
        ours.iter()
            .zip(x)
            .map(|(&o, &x)| {
                let r = reference(x as f64);
                (o as f64 - r).abs() / r.abs().max(1.0)
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn exact_gelu_and_its_derivative_match_f64() {
        let x = grid();
        let gelu = map::<GeluErf>(&x, None);
        assert!(worst(&gelu, |x| x * cdf64(x), &x) < 3e-7);
        let ones = vec![1.0; x.len()];
        let grad = map::<GeluErfGrad>(&x, Some(&ones));
        let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        assert!(worst(&grad, |x| cdf64(x) + x * pdf(x), &x) < 3e-7);
    }

    #[test]
    fn tanh_gelu_and_its_derivative_match_f64() {
        let (c, k) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044_715);
        let x = grid();
        let gelu = map::<GeluTanh>(&x, None);
        let f = |x: f64| 0.5 * x * (1.0 + (c * (x + k * x * x * x)).tanh());
        assert!(worst(&gelu, f, &x) < 3e-7);
        let ones = vec![1.0; x.len()];
        let grad = map::<GeluTanhGrad>(&x, Some(&ones));
        let df = |x: f64| {
            let t = (c * (x + k * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * k * x * x)
        };
        assert!(worst(&grad, df, &x) < 3e-7);
    }

    #[test]
    fn the_gradient_is_scaled_and_every_vector_path_agrees() {
        let x = grid();
        let g: Vec<f32> = (0..x.len()).map(|i| (i % 7) as f32 - 3.0).collect();
        let scaled = map::<GeluErfGrad>(&x, Some(&g));
        let mut plain = vec![0.0; x.len()];
        let baseline = Lanes::<GeluErfGrad> {
            x: &x,
            g: Some(&g),
            out: &mut plain,
            kind: PhantomData,
        };
        baseline.run();
        // The dispatched (AVX-512 / AVX2 where present) and baseline copies give the same bits.
        assert_eq!(scaled, plain);
        for ((s, &x), &g) in scaled.iter().zip(&x).zip(&g) {
            assert_eq!(*s, flush(g * GeluErfGrad::at(x)));
        }
        // Far in the negative tail the true values are 0 to f32: never subnormal.
        let tail = map::<GeluErf>(&[-13.0, -14.0, -20.0, -1e30], None);
        assert!(tail.iter().all(|v| *v == 0.0 || v.is_normal()), "{tail:?}");
        assert!(map::<GeluErf>(&[f32::NAN], None)[0].is_nan());
    }
}
