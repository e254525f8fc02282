//! transformers' initialisation of a model built from scratch, shared by the architectures.

use burn::nn::{Embedding, Initializer, Linear};
use burn::prelude::*;
use lora_core::{LoraEmbedding, LoraLinear, rows_per_block};

/// A linear layer initialised as transformers does: weight N(0, std), bias 0 (lazily, so a
/// checkpoint loaded right after costs no random init).
pub(crate) fn hf_linear(d_in: usize, d_out: usize, std: f64, device: &Device) -> LoraLinear {
    LoraLinear::from_linear(Linear {
        weight: Initializer::Normal { mean: 0.0, std }.init([d_in, d_out], device),
        bias: Some(Initializer::Zeros.init([d_out], device)),
    })
}

/// An embedding table initialised as transformers does: N(0, std), lazily.
pub(crate) fn hf_embedding(n: usize, d: usize, std: f64, device: &Device) -> Embedding {
    Embedding {
        weight: Initializer::Normal { mean: 0.0, std }.init([n, d], device),
    }
}

/// A token-embedding table initialised as [`hf_embedding`], stored in row blocks when the
/// whole table would exceed the device's per-tensor limit (see [`LoraEmbedding`]).
pub(crate) fn hf_table(n: usize, d: usize, std: f64, device: &Device) -> LoraEmbedding {
    let limit = lora_core::device::max_tensor_bytes(device);
    let Some(rows) = limit.and_then(|l| rows_per_block(n, d, l)) else {
        return LoraEmbedding::from_embedding(hf_embedding(n, d, std, device));
    };
    let blocks = (0..n)
        .step_by(rows)
        .map(|start| Initializer::Normal { mean: 0.0, std }.init([rows.min(n - start), d], device))
        .collect();
    // `rows_per_block` gives at least one row, so there is at least one block of width `d`.
    LoraEmbedding::from_row_blocks(blocks)
        .unwrap_or_else(|_| LoraEmbedding::from_embedding(hf_embedding(n, d, std, device)))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::Distribution;

    use crate::gpt2::Gpt2Config;
    use lora_train::loss::causal_lm_loss;

    fn std_of(t: burn::prelude::Tensor<2>) -> f64 {
        let v: Vec<f32> = t.into_data().try_to_vec().unwrap_or_default();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        (v.iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt()
    }

    /// A GPT-2 built from scratch is initialised as transformers does: N(0, 0.02), residual
    /// projections N(0, 0.02/√(2·n_layer)). Its untrained loss is then ln(vocab) + d·0.02²/2:
    /// the final LayerNorm gives unit-variance features, so logits have variance d·0.02²
    /// (burn's default N(0, 1) embedding gave losses in the hundreds).
    #[test]
    fn fresh_gpt2_has_transformers_init() {
        let device = burn::prelude::Device::flex();
        device.seed(3);
        let config = Gpt2Config {
            vocab_size: 2000,
            n_embd: 128,
            n_layer: 8,
            n_head: 4,
            ..Gpt2Config::default()
        };
        let model = config.init(&device);
        let block = &model.transformer.h[0];
        let attn = std_of(block.attn.c_attn.weight.val());
        let proj = std_of(block.mlp.c_proj.weight.val());
        let wte = std_of(model.transformer.wte.weight.val());
        assert!((attn - 0.02).abs() < 0.002, "c_attn std {attn}");
        assert!((wte - 0.02).abs() < 0.002, "wte std {wte}");
        assert!(
            (proj - 0.005).abs() < 0.0005,
            "c_proj std {proj} (0.02/√16)"
        );
        let ids = burn::prelude::Tensor::<2, burn::prelude::Int>::random(
            [8, 64],
            Distribution::Uniform(0.0, 2000.0),
            &device,
        );
        let logits = model.forward(ids.clone(), None).unwrap();
        let loss: f32 = causal_lm_loss(logits, ids, 0.0).into_scalar();
        let expected = (2000f64).ln() + 128.0 * 0.02f64.powi(2) / 2.0;
        assert!(
            (f64::from(loss) - expected).abs() < 0.05,
            "loss {loss} vs {expected}"
        );
    }
}
