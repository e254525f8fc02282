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
use burn::tensor::Distribution;
use burn::tensor::activation::{gelu, gelu_approximate, softmax};
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

/// An op on a `[512, 3072]` tensor (unless [`print_rows_at`] says otherwise): its name, how
/// many such tensors it reads and writes, and the op.
type Op<'a> = (&'static str, f64, Box<dyn Fn() -> Tensor<2> + 'a>);

/// One table row per op on `[512, 3072]` tensors.
fn print_rows(device: &Device, ops: Vec<Op>) {
    print_rows_at(device, [512, 3072], ops)
}

/// One table row per op on tensors of `shape`: median milliseconds and the bandwidth its
/// tensors imply.
fn print_rows_at(device: &Device, shape: [usize; 2], ops: Vec<Op>) {
    let bytes = (shape[0] * shape[1] * 4) as f64;
    for (name, tensors, op) in ops {
        let s = time(device, 20, op);
        println!(
            "| {name} | {shape:?} | {:.3} | {:.1} GB/s |",
            s * 1e3,
            tensors * bytes / s / 1e9
        );
    }
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
        let x = Tensor::<2>::random([m, k], Distribution::Default, &device);
        let w = Tensor::<2>::random([k, n], Distribution::Default, &device);
        let wt = Tensor::<2>::random([n, k], Distribution::Default, &device);
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
    let a = Tensor::<2>::random([512, 3072], Distribution::Default, &device);
    let b = Tensor::<2>::random([512, 3072], Distribution::Default, &device);
    // Element-wise work on a `[512, 3072]` activation (GPT-2's MLP width): GB/s counts the
    // tensors each op reads and writes once. `gelu` is BERT's exact one (an `erf` per element);
    // the Bernoulli draw is a dropout mask.
    let ops: Vec<Op> = vec![
        ("add", 3.0, Box::new(|| a.clone() + b.clone())),
        ("exp", 2.0, Box::new(|| a.clone().exp())),
        ("softmax over 3072", 2.0, Box::new(|| softmax(a.clone(), 1))),
        ("sum_dim over 3072", 1.0, Box::new(|| a.clone().sum_dim(1))),
        ("gelu (erf), burn", 2.0, Box::new(|| gelu(a.clone()))),
        (
            "gelu (erf), lora_core",
            2.0,
            Box::new(|| lora_core::gelu(a.clone())),
        ),
        (
            "random Bernoulli (dropout mask)",
            1.0,
            Box::new(|| a.random_like(Distribution::Bernoulli(0.9))),
        ),
    ];
    print_rows(&device, ops);
    // Dropout in training (an autodiff device): burn's layer against lora_core's host mask.
    let ad = device.clone().autodiff();
    let x = Tensor::<2>::random([512, 3072], Distribution::Default, &ad);
    let layer = burn::nn::DropoutConfig::new(0.1).init();
    let ops: Vec<Op> = vec![
        (
            "dropout, burn-nn",
            2.0,
            Box::new(|| layer.forward(x.clone())),
        ),
        (
            "dropout, lora_core (host mask)",
            2.0,
            Box::new(|| lora_core::dropout(&layer, x.clone())),
        ),
    ];
    print_rows(&device, ops);
    gelu_rows(&ad);
    norm_rows(&ad);
}

/// Softmax over attention scores and layer norm over activations in training, at the README main
/// job's shapes (16 × 64 tokens, 12 heads, width 384): burn's ops, which autodiff decomposes,
/// against lora_core's fused ones. GB/s counts the input, the output, the incoming gradient and
/// the input's.
fn norm_rows(ad: &Device) {
    let train = |x: Tensor<2>, f: Box<dyn Fn(Tensor<2>) -> Tensor<2>>| {
        let x = x.require_grad();
        move || {
            let grads = f(x.clone()).sum().backward();
            x.grad(&grads).unwrap_or_else(|| x.clone().inner())
        }
    };
    let scores = Tensor::<2>::random([16 * 12 * 64, 64], Distribution::Normal(0.0, 3.0), ad);
    let ops: Vec<Op> = vec![
        (
            "softmax fwd+bwd, burn",
            4.0,
            Box::new(train(
                scores.clone(),
                Box::new(|x: Tensor<2>| softmax(x, 1)),
            )),
        ),
        (
            "softmax fwd+bwd, lora_core",
            4.0,
            Box::new(train(
                scores,
                Box::new(|x: Tensor<2>| lora_core::softmax(x, 1)),
            )),
        ),
    ];
    print_rows_at(&ad.clone().inner(), [16 * 12 * 64, 64], ops);
    let x = Tensor::<2>::random([16 * 64, 384], Distribution::Normal(0.0, 3.0), ad);
    let layer = burn::nn::LayerNormConfig::new(384).init(ad).no_grad();
    let burns = layer.clone();
    let ops: Vec<Op> = vec![
        (
            "layer norm fwd+bwd, burn (frozen gamma, beta)",
            4.0,
            Box::new(train(
                x.clone(),
                Box::new(move |x: Tensor<2>| burns.forward(x)),
            )),
        ),
        (
            "layer norm fwd+bwd, lora_core (frozen gamma, beta)",
            4.0,
            Box::new(train(
                x,
                Box::new(move |x: Tensor<2>| lora_core::layer_norm(&layer, x)),
            )),
        ),
    ];
    print_rows_at(&ad.clone().inner(), [16 * 64, 384], ops);
}

/// GELU forward and backward in training (the gradient of `sum(gelu(x))`): burn's ops against
/// lora_core's fused kernels. GB/s counts `x`, the output, the incoming gradient and `x`'s.
fn gelu_rows(ad: &Device) {
    let x = Tensor::<2>::random([512, 3072], Distribution::Normal(0.0, 2.0), ad).require_grad();
    let train = |f: fn(Tensor<2>) -> Tensor<2>| {
        let x = x.clone();
        move || {
            let grads = f(x.clone()).sum().backward();
            x.grad(&grads).unwrap_or_else(|| x.clone().inner())
        }
    };
    let ops: Vec<Op> = vec![
        (
            "identity fwd+bwd (the sum and its backward alone)",
            4.0,
            Box::new(train(|x| x)),
        ),
        ("gelu (erf) fwd+bwd, burn", 4.0, Box::new(train(gelu))),
        (
            "gelu (erf) fwd+bwd, lora_core",
            4.0,
            Box::new(train(lora_core::gelu)),
        ),
        (
            "gelu_new fwd+bwd, burn gelu_approximate",
            4.0,
            Box::new(train(gelu_approximate)),
        ),
        (
            "gelu_new fwd+bwd, x·σ(…) from burn ops",
            4.0,
            Box::new(train(gelu_new_composed)),
        ),
        (
            "gelu_new fwd+bwd, lora_core",
            4.0,
            Box::new(train(lora_core::gelu_tanh)),
        ),
    ];
    print_rows(&ad.clone().inner(), ops);
}

/// `gelu_new` as `x·σ(2·√(2/π)·(x + 0.044715·x³))` from burn's ops: what lora-models computed
/// before lora_core's fused kernel.
fn gelu_new_composed(x: Tensor<2>) -> Tensor<2> {
    const C: f64 = 1.595_769_121_605_730_7;
    let z = x.clone() * (x.clone().square() * (C * 0.044_715) + C);
    x * burn::tensor::activation::sigmoid(z)
}
