//! Dropout with burn's semantics whose mask is drawn on the host for CPU devices.

use burn::nn::Dropout;
use burn::prelude::*;

/// [`Dropout::forward`], with the mask drawn faster on CPU devices.
///
/// The same rule decides whether it acts (the layer's training flag, an autodiff device,
/// `prob > 0`), and kept values are scaled by `1 / (1 - prob)`. burn draws the Bernoulli mask
/// through burn-std's per-element sampler, ~12 ns an element on flex (docs/benchmarks.md): a
/// tenth of a small training step. On flex and ndarray this function draws one seed from the
/// device's generator, so `Device::seed` still decides every mask and a reseeded recomputation
/// (gradient checkpointing) repeats it, then fills the mask with SplitMix64 on the host, ~1 ns
/// an element. On GPU devices it is burn's own dropout, whose mask never leaves the device.
///
/// # Shapes
///
/// - input: `[..., any]`
/// - output: the input's shape
pub fn dropout<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !layer.training.is_enabled() || !device.is_autodiff() || layer.prob == 0.0 {
        return x;
    }
    if !crate::device::is_host(&device) {
        return layer.forward(x);
    }
    let Ok(seeds) = crate::device::draw_seeds(&device, 2) else {
        return layer.forward(x);
    };
    let seed = seeds.iter().fold(0, |acc, s| (acc << 31) | s);
    let mask = host_mask(x.shape(), 1.0 - layer.prob, seed);
    x * Tensor::from_data(mask, &device)
}

/// `1 / keep` where a uniform 32-bit draw falls below `keep · 2³²`, else 0.
fn host_mask(shape: Shape, keep: f64, seed: u64) -> TensorData {
    let n = shape.num_elements();
    let threshold = (keep * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let pick = |bits: u64| if bits < threshold { scale } else { 0.0 };
    let mut state = seed;
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        // SplitMix64: one 64-bit output gives two 32-bit draws.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        values.push(pick(z & 0xFFFF_FFFF));
        values.push(pick(z >> 32));
    }
    values.truncate(n);
    TensorData::new(values, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_keeps_the_right_share_scaled() {
        let mask = host_mask(Shape::new([1000, 100]), 0.9, 7);
        let v = mask.try_to_vec::<f32>().unwrap();
        let kept = v.iter().filter(|&&x| x != 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.9).abs() < 0.005, "{kept}");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.9).abs() < 1e-6));
        assert_ne!(
            v,
            host_mask(Shape::new([1000, 100]), 0.9, 8)
                .try_to_vec::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn acts_like_burns_dropout_and_follows_the_device_seed() {
        let layer = burn::nn::DropoutConfig::new(0.25).init();
        let run = |device: &Device, seed: u64| {
            device.seed(seed);
            let x = Tensor::<2>::ones([64, 256], device);
            dropout(&layer, x).into_data().try_to_vec::<f32>().unwrap()
        };
        let ad = Device::flex().autodiff();
        let a = run(&ad, 3);
        assert_eq!(a, run(&ad, 3), "the device seed decides the mask");
        assert_ne!(a, run(&ad, 4));
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.75).abs() < 0.02, "{kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        // Inference (no autodiff) and a frozen layer pass the input through, as burn's does.
        assert!(run(&Device::flex(), 3).iter().all(|&v| v == 1.0));
        let frozen = layer.clone().freeze();
        let y = dropout(&frozen, Tensor::<2>::ones([4, 4], &ad));
        assert!(
            y.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|&v| v == 1.0)
        );
    }
}
