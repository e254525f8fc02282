//! GFLOP/s of `gemm::gemm` (f32, all threads) at GPT-2 small shapes, with either operand stored
//! transposed as in a backward pass (`lhs_t`/`rhs_t`), as burn-flex calls it.
use std::time::Instant;
fn bench(m: usize, k: usize, n: usize, lhs_t: bool, rhs_t: bool) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    // Row-major [m,k]: cs 1, rs k; transposed storage [k,m]: cs m, rs 1.
    let (a_cs, a_rs) = if lhs_t { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if rhs_t { (k as isize, 1) } else { (1, n as isize) };
    let run = |c: &mut [f32]| unsafe {
        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), a_cs, a_rs, b.as_ptr(), b_cs, b_rs, 0.0, 1.0, false, false, false, gemm::Parallelism::Rayon(0));
    };
    run(&mut c);
    let reps = if n * m * k > 1 << 30 { 3 } else { 15 };
    let t = Instant::now();
    for _ in 0..reps { run(&mut c); }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    2.0 * (m * k * n) as f64 / s / 1e9
}
fn main() {
    for (m, k, n) in [(512, 768, 2304), (512, 768, 50257), (512, 50257, 768), (768, 512, 2304), (128, 64, 128)] {
        for (lt, rt) in [(false, false), (false, true), (true, false)] {
            println!("{m}x{k}x{n} lhs_t={lt} rhs_t={rt}: {:.1} GFLOP/s", bench(m, k, n, lt, rt));
        }
    }
}
