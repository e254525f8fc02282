//! Throughput of single burn ops on a device at GPT-2 small's shapes (4 × 128 tokens): the
//! micro-benchmark behind docs/benchmarks.md's kernel figures, in a form an upstream burn issue
//! can quote.
//!
//! ```sh
//! cargo run -p lora-bench --example flex_ops
//! ```
//!
//! Each figure is the median of several runs, each ended by a device sync. The workspace's dev
//! profile builds burn without debug assertions and overflow checks, as a release build would
//! (see `Cargo.toml`); with them the matmuls here ran at half the speed.
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::linear;

/// Median seconds of `f` over `reps` runs after one warm-up, each ended by a device sync.
fn time(device: &Device, reps: usize, mut f: impl FnMut() -> Tensor<2>) -> f64 {
    let mut samples = Vec::with_capacity(reps);
    for i in 0..=reps {
        let start = Instant::now();
        let out = f();
        let _ = out.slice([0..1, 0..1]).into_data();
        let _ = device.sync();
        if i > 0 {
            samples.push(start.elapsed().as_secs_f64());
        }
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let device = Device::flex();
    println!("| op | shape | ms | GFLOP/s or GB/s |\n|---|---|---:|---:|");
    for (m, k, n) in [
        (512, 768, 2304),
        (512, 768, 3072),
        (512, 3072, 768),
        (512, 768, 50257),
    ] {
        let x = Tensor::<2>::random([m, k], burn::tensor::Distribution::Default, &device);
        let w = Tensor::<2>::random([k, n], burn::tensor::Distribution::Default, &device);
        let wt = Tensor::<2>::random([n, k], burn::tensor::Distribution::Default, &device);
        let reps = if n > 10_000 { 3 } else { 10 };
        let flop = 2.0 * m as f64 * k as f64 * n as f64;
        let s = time(&device, reps, || x.clone().matmul(w.clone()));
        println!(
            "| matmul | [{m},{k}]·[{k},{n}] | {:.2} | {:.1} GFLOP/s |",
            s * 1e3,
            flop / s / 1e9
        );
        let s = time(&device, reps, || x.clone().matmul(wt.clone().transpose()));
        println!(
            "| matmul, rhs a transposed view | [{m},{k}]·[{n},{k}]ᵀ | {:.2} | {:.1} GFLOP/s |",
            s * 1e3,
            flop / s / 1e9
        );
        let s = time(&device, reps, || linear(x.clone(), w.clone(), None));
        println!(
            "| linear | [{m},{k}]·[{k},{n}] | {:.2} | {:.1} GFLOP/s |",
            s * 1e3,
            flop / s / 1e9
        );
    }
    let a = Tensor::<2>::random([512, 3072], burn::tensor::Distribution::Default, &device);
    let b = Tensor::<2>::random([512, 3072], burn::tensor::Distribution::Default, &device);
    let bytes = 512.0 * 3072.0 * 4.0;
    let s = time(&device, 20, || a.clone() + b.clone());
    println!(
        "| add | [512,3072] | {:.3} | {:.1} GB/s |",
        s * 1e3,
        3.0 * bytes / s / 1e9
    );
    let s = time(&device, 20, || a.clone().exp());
    println!(
        "| exp | [512,3072] | {:.3} | {:.1} GB/s |",
        s * 1e3,
        2.0 * bytes / s / 1e9
    );
    let s = time(&device, 20, || softmax(a.clone(), 1));
    println!(
        "| softmax | [512,3072] | {:.3} | {:.1} GB/s |",
        s * 1e3,
        2.0 * bytes / s / 1e9
    );
    let s = time(&device, 20, || a.clone().sum_dim(1));
    println!(
        "| sum_dim | [512,3072] | {:.3} | {:.1} GB/s |",
        s * 1e3,
        bytes / s / 1e9
    );
}
