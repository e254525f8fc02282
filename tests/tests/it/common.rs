//! Shared test helpers: fixtures, devices, a small custom model, tolerant comparisons.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;
use lora_core::io::HostTensor;
use lora_core::{LoraEmbedding, LoraEmbeddingConfig, LoraLinear, LoraLinearConfig, lora_sites};
use lora_train::{ItemTarget, TargetKind, TextDataset, TextItem};

/// `fixtures/<rel>` at the workspace root.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(rel)
}

/// All tensors of a fixture file.
pub fn load(rel: &str) -> HashMap<String, HostTensor> {
    lora_core::read_safetensors(fixture(rel)).expect("fixture present and readable")
}

/// Whether missing optional test inputs (the MiniLM weights, a wgpu adapter) must fail the
/// tests instead of skipping them: `LORA_REQUIRE_ASSETS=1`, which CI sets because it installs
/// and fetches them.
pub fn assets_required() -> bool {
    std::env::var("LORA_REQUIRE_ASSETS").is_ok_and(|v| v == "1")
}

/// The CPU devices of this build plus wgpu when an adapter exists, with their names.
fn test_devices() -> Vec<(&'static str, Device)> {
    let mut out = Vec::new();
    for name in ["flex", "ndarray"] {
        if let Ok(d) = lora_core::device::parse_device(name) {
            out.push((name, d));
        }
    }
    if let Ok(d) = lora_core::device::wgpu_device() {
        out.push(("wgpu", d));
    }
    out
}

/// Devices every backend-generic test runs on: flex and ndarray always, wgpu when an adapter
/// exists (otherwise a visible skip line, or a failure under [`assets_required`]).
pub fn devices() -> Vec<(&'static str, Device)> {
    let devices = test_devices();
    if !devices.iter().any(|(n, _)| *n == "wgpu") {
        let why = lora_core::device::wgpu_device().err().unwrap_or_default();
        assert!(
            !assets_required(),
            "no wgpu adapter, and LORA_REQUIRE_ASSETS=1: {why}"
        );
        eprintln!("SKIP wgpu: {why}");
    }
    devices
}

/// Max |a - b| between two tensors' values; panics on a shape difference.
pub fn max_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Host copy of a device tensor.
pub fn host<const D: usize>(t: Tensor<D>) -> HostTensor {
    HostTensor::from_tensor(t, "test").expect("readable tensor")
}

/// Asserts `|a - b| <= tol` everywhere, with a useful message.
#[track_caller]
pub fn assert_close(what: &str, a: &HostTensor, b: &HostTensor, tol: f32) {
    let d = max_diff(a, b);
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
}

/// One layer of the small custom model of `scripts/make_core_fixtures.py`.
#[derive(Module, Debug)]
pub struct Layer {
    pub q: LoraLinear,
    pub v: LoraLinear,
    pub fc: LoraLinear,
    pub out: LoraLinear,
    pub norm: LayerNorm,
}
lora_sites!(Layer { q, v, fc, out });

/// `encoder.layers.N`.
#[derive(Module, Debug)]
pub struct Encoder {
    pub layers: Vec<Layer>,
}
lora_sites!(Encoder { layers });

/// The script's `Tiny`: emb → encoder.layers → mean over tokens → head.
#[derive(Module, Debug)]
pub struct Tiny {
    pub emb: LoraEmbedding,
    pub encoder: Encoder,
    pub head: LoraLinear,
}
lora_sites!(Tiny { emb, encoder, head });

impl Tiny {
    /// Same shapes as the script's defaults (vocab 20, width 8, 2 layers, 3 classes).
    pub fn new(device: &Device) -> Self {
        let d = 8;
        Self {
            emb: LoraEmbeddingConfig::new(20, d).init(device),
            encoder: Encoder {
                layers: (0..2)
                    .map(|_| Layer {
                        q: LoraLinearConfig::new(d, d).init(device),
                        v: LoraLinearConfig::new(d, d).init(device),
                        fc: LoraLinearConfig::new(d, 2 * d).init(device),
                        out: LoraLinearConfig::new(2 * d, d).init(device),
                        norm: LayerNormConfig::new(d).init(device),
                    })
                    .collect(),
            },
            head: LoraLinearConfig::new(d, 3).init(device),
        }
    }

    /// The base weights of the fixture (`tiny/base_model.safetensors`, PyTorch names).
    pub fn from_fixture(device: &Device) -> Self {
        let (m, report) = lora_core::load_state_dict(
            Self::new(device),
            load("core/tiny/base_model.safetensors"),
            false,
        )
        .expect("base weights load");
        assert!(
            report.missing.is_empty() && report.unused.is_empty(),
            "{report:?}"
        );
        m
    }

    /// `[batch, seq]` ids → `[batch, 3]` logits.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        let mut h = self.emb.forward(ids);
        for l in &self.encoder.layers {
            let a = l.q.forward(h.clone()) + l.v.forward(h.clone());
            let f = l
                .out
                .forward(burn::tensor::activation::gelu(l.fc.forward(a)));
            h = l.norm.forward(h + f);
        }
        let pooled: Tensor<2> = h.mean_dim(1).squeeze_dim(1);
        self.head.forward(pooled)
    }
}

/// Int ids from a fixture tensor (stored as int64 by torch, read back as f32).
pub fn ids(t: &HostTensor, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = t.data.iter().map(|v| *v as i64).collect();
    Tensor::from_data(TensorData::new(data, t.shape.clone()), device)
}

/// 3 classes: tokens 1, 2 or 3 at even positions of a length-6 sequence (equal lengths: the
/// tiny classifier mean-pools without a mask, so padding would change its output).
pub fn toy_classes(n: usize, seed: u64) -> TextDataset {
    let mut g = lora_train::sampler::SplitMix64::new(seed);
    let items = (0..n)
        .map(|i| {
            let class = i % 3;
            let ids: Vec<u32> = (0..6)
                .map(|j| {
                    if j % 2 == 0 {
                        class as u32 + 1
                    } else {
                        4 + g.below(16) as u32
                    }
                })
                .collect();
            TextItem {
                token_type_ids: vec![0; ids.len()],
                input_ids: ids,
                target: ItemTarget::Class(class),
            }
        })
        .collect();
    TextDataset::from_items(items, 0, TargetKind::Classes { num_classes: 3 }).unwrap()
}
