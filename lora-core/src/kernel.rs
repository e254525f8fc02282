//! What this crate's host kernels share: a vectorisable `exp`, lane-wise sums, one loop compiled
//! for each x86 vector width and chosen at run time, and the flex tensor plumbing around them.
//!
//! The kernels themselves (GELU, softmax, layer norm) live beside the ops they implement; they
//! exist because burn-flex 0.22.1 runs these ops on one thread, element by element, and under
//! autodiff decomposes softmax and layer norm into many passes (docs/benchmarks.md).

/// Elements per rayon task: small enough to share a `[16·64, 1536]` activation between two
/// cores, large enough that scheduling costs nothing next to the arithmetic.
pub(crate) const CHUNK: usize = 1 << 14;

/// Elements per rayon task for a row kernel: [`CHUNK`] rounded down to whole rows of `row`
/// elements, at least one row.
pub(crate) fn row_task_len(row: usize) -> usize {
    (CHUNK / row.max(1)).max(1) * row
}

/// Independent accumulators in [`sum_lanes`]: one AVX-512 register of f32.
const LANES: usize = 16;

/// `exp(x)` to ~2 ulp, vectorisable: `2ⁿ·p(r)` with `r = x − n·ln 2`, `|r| ≤ ln 2 / 2`, and `p` the
/// degree-7 Taylor polynomial. Inputs are clamped to `[−87, 88]`, where `2ⁿ` is a normal float:
/// below it the true value is under 2⁻¹²⁵, which every caller here treats as 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to the nearest integer without a rounding instruction (SSE2 has none).
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that `n·LN2_HI` is exact for |n| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let k = x * std::f32::consts::LOG2_E + ROUND;
    let n = k - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // `k`'s low mantissa bits hold `n` (its exponent is ROUND's), so 2ⁿ is built with integer
    // ops, which vectorise; a float-to-int `as` saturates and stays scalar.
    let biased = k.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// `v`, or 0 where it is subnormal. A subnormal operand sends every later multiply on x86 down a
/// slow microcode path: subnormal attention probabilities once made the README main job's GEMMs
/// 9× slower. [`exp`]'s clamp makes such values where the true ones are 0 or nearly, so the
/// kernels flush what they return; the change is below 1.2e-38.
#[inline(always)]
pub(crate) fn flush(v: f32) -> f32 {
    if v.abs() < f32::MIN_POSITIVE { 0.0 } else { v }
}

/// `Σ f(a[i], b[i])`, summed in [`LANES`] independent accumulators so the compiler can vectorise
/// it (a single running sum fixes the order of the additions and stays scalar).
///
/// # Panics
/// If `a` and `b` differ in length.
#[inline(always)]
pub(crate) fn sum_lanes(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    assert_eq!(a.len(), b.len(), "summed slices differ in length");
    let mut acc = [0.0f32; LANES];
    let (a_body, b_body) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_body
        .remainder()
        .iter()
        .zip(b_body.remainder())
        .map(|(&a, &b)| f(a, b))
        .sum();
    for (a, b) in a_body.zip(b_body) {
        for i in 0..LANES {
            acc[i] += f(a[i], b[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest element, in [`LANES`] independent maxima; NaN if any element is NaN.
#[inline(always)]
pub(crate) fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut nan = false;
    let body = x.chunks_exact(LANES);
    let tail = body.remainder();
    for c in body {
        for i in 0..LANES {
            // `f32::max` ignores NaN; softmax must not, so NaNs are tracked on the side.
            nan |= c[i].is_nan();
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(tail) {
        nan |= v.is_nan();
        m = m.max(v);
    }
    if nan { f32::NAN } else { m }
}

/// A loop to compile once per vector width: [`vectorised`] runs it in the widest copy this CPU
/// supports. Implementations mark `run` `#[inline(always)]` so each copy is vectorised for its
/// target, and they never fuse multiplies into FMAs, so every copy gives the same bits.
pub(crate) trait Vectorised {
    /// What the loop returns.
    type Output;
    /// The loop.
    fn run(self) -> Self::Output;
}

/// Runs `v` compiled for AVX-512 or AVX2 where the CPU has them (checked at run time, so the
/// binary still runs on any x86-64), else for the baseline.
pub(crate) fn vectorised<V: Vectorised>(v: V) -> V::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { avx512(v) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2(v) };
        }
    }
    v.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512<V: Vectorised>(v: V) -> V::Output {
    v.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<V: Vectorised>(v: V) -> V::Output {
    v.run()
}

/// flex tensors in and out of the kernels, which take contiguous f32 slices.
#[cfg(feature = "flex")]
pub(crate) mod flex {
    use burn::backend::flex::FlexTensor;
    use burn::backend::ops::FloatTensorOps;
    use burn::backend::{DType, Flex, FloatDType};
    use burn::tensor::{Shape, TensorData};

    /// `t` as a contiguous f32 tensor: a copy only when it is strided or of another dtype.
    pub(crate) fn contiguous_f32(t: FlexTensor) -> FlexTensor {
        let t = if t.dtype() == DType::F32 {
            t
        } else {
            Flex::float_cast(t, FloatDType::F32)
        };
        if t.as_slice::<f32>().is_some() {
            t
        } else {
            t.to_contiguous()
        }
    }

    /// The elements of a tensor [`contiguous_f32`] returned.
    pub(crate) fn values(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>()
            .expect("contiguous_f32 returns a contiguous f32 tensor")
    }

    /// A kernel's output as a tensor of `shape` in `dtype` (cast from f32 when it differs).
    pub(crate) fn tensor(values: Vec<f32>, shape: Shape, dtype: DType) -> FlexTensor {
        let out = FlexTensor::from_data(TensorData::new(values, shape));
        if dtype == DType::F32 {
            out
        } else {
            Flex::float_cast(out, FloatDType::from(dtype))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_clamped() {
        for i in -8_700..=8_800 {
            let x = i as f32 * 1e-2;
            let rel = ((exp(x) as f64) - (x as f64).exp()).abs() / (x as f64).exp();
            assert!(rel < 3e-7, "exp({x}): {rel}");
        }
        assert_eq!(exp(-1e4), exp(-87.0));
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn flush_zeroes_subnormals_only() {
        assert_eq!(flush(1e-39), 0.0);
        assert_eq!(flush(-1e-39), 0.0);
        assert_eq!(flush(f32::MIN_POSITIVE), f32::MIN_POSITIVE);
        assert_eq!(flush(-2.5), -2.5);
        assert!(flush(f32::NAN).is_nan());
    }

    #[test]
    fn lane_sums_and_maxima_cover_every_element() {
        for n in [0, 1, 15, 16, 17, 100, 1000] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
            let ones = vec![1.0; n];
            let exact: f64 = x.iter().map(|&v| v as f64 * 2.0).sum();
            assert_eq!(sum_lanes(&x, &ones, |a, b| a * b * 2.0) as f64, exact);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_lanes(&x), max);
        }
        let mut x = vec![1.0; 40];
        x[33] = f32::NAN;
        assert!(max_lanes(&x).is_nan());
        x[33] = 1.0;
        x[3] = f32::NAN;
        assert!(max_lanes(&x).is_nan());
    }
}
