//! GFLOP/s of `gemm::gemm` (f32, all threads) at GPT-2 small's shapes of a 4 × 128 step, with
//! random operands, as burn-flex calls it for a 2-D matmul (row-major, or the right-hand side a
//! transposed view as in a backward pass).
use std::time::Instant;

/// `len` uniform values in [0, 1) from a 64-bit LCG (no dependency beyond `gemm`).
fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn bench(m: usize, k: usize, n: usize, rhs_t: bool) -> f64 {
    let a = random(m * k, 1);
    let b = random(k * n, 2);
    let mut c = vec![0f32; m * n];
    // Row-major [k, n]: column stride 1, row stride n; stored transposed ([n, k]): k and 1.
    let (b_cs, b_rs) = if rhs_t { (k as isize, 1) } else { (1, n as isize) };
    let mut run = || unsafe {
        gemm::gemm(
            m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize,
            b.as_ptr(), b_cs, b_rs, 0.0, 1.0, false, false, false, gemm::Parallelism::Rayon(0),
        );
    };
    run();
    let reps = if m * k * n > 1 << 30 { 3 } else { 16 };
    let t = Instant::now();
    for _ in 0..reps {
        run();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    2.0 * (m * k * n) as f64 / s / 1e9
}

fn main() {
    for (m, k, n) in [(512, 768, 2304), (512, 768, 3072), (512, 3072, 768), (512, 768, 768), (512, 768, 50257)] {
        for rhs_t in [false, true] {
            println!("{m}x{k}x{n} rhs_t={rhs_t}: {:.1} GFLOP/s", bench(m, k, n, rhs_t));
        }
    }
}
