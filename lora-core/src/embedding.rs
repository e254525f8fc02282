//! [`LoraEmbedding`]: a frozen embedding table plus named low-rank adapters.

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::module::embedding;

use crate::config::AdapterSpec;
use crate::error::{LoraError, Result};
use crate::layer::{
    AdapterState, Factors, LayerKind, LoraLayer, check_names, check_shape, init_embedding_factors,
};
use crate::linear::{linear_rows, replace};

/// Configuration of a [`LoraEmbedding`] created from scratch (no adapters yet).
#[derive(Config, Debug)]
pub struct LoraEmbeddingConfig {
    /// Number of rows of the table (vocabulary size).
    pub n_embedding: usize,
    /// Width of each row.
    pub d_model: usize,
}

impl LoraEmbeddingConfig {
    /// Creates the layer with burn's default `Embedding` initialisation (N(0, 1)), lazily.
    pub fn init(&self, device: &Device) -> LoraEmbedding {
        LoraEmbedding::from_embedding(
            EmbeddingConfig::new(self.n_embedding, self.d_model).init(device),
        )
    }
}

/// Name, scale and merge state of one embedding adapter.
#[derive(Debug, Clone)]
pub struct EmbeddingAdapterMeta {
    /// Adapter name.
    pub name: String,
    /// Rank.
    pub r: usize,
    /// Multiplier of the update.
    pub scale: f64,
    /// Whether the update is folded into the table.
    pub merged: bool,
    /// The config's `bias` setting.
    pub bias: crate::config::BiasMode,
}

/// One embedding adapter: `ΔE = scale · A · B`, A `[num_embeddings, r]`, B `[r, dim]`.
/// PEFT stores the transposes: `lora_embedding_A` `[r, num_embeddings]`, `lora_embedding_B` `[dim, r]`.
#[derive(Module, Debug)]
pub struct EmbeddingAdapter {
    /// `[num_embeddings, r]`.
    pub lora_embedding_a: Param<Tensor<2>>,
    /// `[r, dim]`.
    pub lora_embedding_b: Param<Tensor<2>>,
    /// Name, scale, merge state.
    #[module(skip)]
    pub meta: EmbeddingAdapterMeta,
}

/// An embedding table with LoRA adapters: `E[ids] + Σ scale · A[ids] · B` over the active,
/// unmerged adapters. No dropout, as in PEFT (dropping token ids would mean nothing).
#[derive(Module, Debug)]
pub struct LoraEmbedding {
    /// Base table `[num_embeddings, dim]`.
    pub weight: Param<Tensor<2>>,
    /// The adapters, in insertion order.
    pub adapters: Vec<EmbeddingAdapter>,
    /// Active set and disable switch.
    #[module(skip)]
    pub state: AdapterState,
}

impl LoraEmbedding {
    /// Wraps a burn [`Embedding`].
    pub fn from_embedding(e: Embedding) -> Self {
        Self {
            weight: e.weight,
            adapters: Vec::new(),
            state: AdapterState::default(),
        }
    }

    /// `(num_embeddings, dim)`, without initialising lazy parameters.
    pub fn shape(&self) -> (usize, usize) {
        let s = self.weight.lazy_shape();
        (s[0], s[1])
    }

    /// Looks up rows.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]`
    /// - output: `[batch, seq, dim]`
    ///
    /// # Panics
    /// Ids must be below `num_embeddings`: the lookup is burn's `embedding` gather, which panics
    /// on flex and reads garbage on wgpu otherwise. Checking would cost a device read per call,
    /// so it is done once where ids come from files: lora-train's `Trainer` checks each dataset
    /// against the model's `IdLimits`, and GPT-2's `generate` checks its prompts.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let base = embedding(self.weight.val(), ids.clone());
        if self.state.disabled {
            return base;
        }
        self.adapters
            .iter()
            .filter(|a| !a.meta.merged && self.state.active.contains(&a.meta.name))
            .fold(base, |y, a| {
                let h = embedding(a.lora_embedding_a.val(), ids.clone()).mul_scalar(a.meta.scale);
                y + linear_rows(h, a.lora_embedding_b.val(), None)
            })
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.adapters
            .iter()
            .position(|a| a.meta.name == name)
            .ok_or_else(|| LoraError::UnknownAdapter {
                module: String::new(),
                adapter: name.to_string(),
            })
    }

    fn delta(&self, i: usize) -> Tensor<2> {
        let a = &self.adapters[i];
        a.lora_embedding_a
            .val()
            .matmul(a.lora_embedding_b.val())
            .mul_scalar(a.meta.scale)
            .detach()
    }

    fn shift(&mut self, delta: Tensor<2>, sign: f64) {
        let w = self.weight.val().detach();
        self.weight = replace(&self.weight, w + delta.mul_scalar(sign));
    }
}

impl LoraLayer for LoraEmbedding {
    fn kind(&self) -> LayerKind {
        LayerKind::Embedding
    }

    fn dims(&self) -> (usize, usize) {
        self.shape()
    }

    fn adapter_names(&self) -> Vec<String> {
        self.adapters.iter().map(|a| a.meta.name.clone()).collect()
    }

    fn merged_adapters(&self) -> Vec<String> {
        self.adapters
            .iter()
            .filter(|a| a.meta.merged)
            .map(|a| a.meta.name.clone())
            .collect()
    }

    fn add_adapter(&mut self, name: &str, spec: &AdapterSpec) -> Result<()> {
        if self.adapters.iter().any(|a| a.meta.name == name) {
            return Err(LoraError::DuplicateAdapter {
                module: String::new(),
                adapter: name.to_string(),
            });
        }
        let (n, dim) = self.shape();
        let (a, b) = init_embedding_factors(n, dim, spec, &self.weight.lazy_device());
        self.adapters.push(EmbeddingAdapter {
            lora_embedding_a: Param::from_tensor(a),
            lora_embedding_b: Param::from_tensor(b),
            meta: EmbeddingAdapterMeta {
                name: name.to_string(),
                r: spec.r,
                scale: spec.scale,
                merged: false,
                bias: spec.bias,
            },
        });
        self.state.active.push(name.to_string());
        Ok(())
    }

    fn add_sliced_adapter(&mut self, _: &str, _: &AdapterSpec, _: &[(usize, usize)]) -> Result<()> {
        Err(LoraError::Unsupported(
            "output slices on an embedding".into(),
        ))
    }

    fn remove_adapter(&mut self, name: &str) -> Result<()> {
        self.unmerge(name)?;
        let i = self.index(name)?;
        self.adapters.remove(i);
        self.state.active.retain(|n| n != name);
        Ok(())
    }

    fn set_active(&mut self, names: &[String]) -> Result<()> {
        check_names("", &self.adapter_names(), names)?;
        for merged in self.merged_adapters() {
            if !names.contains(&merged) {
                self.unmerge(&merged)?;
            }
        }
        self.state.active = names.to_vec();
        Ok(())
    }

    fn active(&self) -> Vec<String> {
        self.state.active.clone()
    }

    fn disabled(&self) -> bool {
        self.state.disabled
    }

    fn set_disabled(&mut self, disabled: bool) -> Result<()> {
        if disabled {
            for merged in self.merged_adapters() {
                self.unmerge(&merged)?;
            }
        }
        self.state.disabled = disabled;
        Ok(())
    }

    fn merge(&mut self, name: &str) -> Result<()> {
        let i = self.index(name)?;
        if !self.adapters[i].meta.merged {
            let d = self.delta(i);
            self.shift(d, 1.0);
            self.adapters[i].meta.merged = true;
        }
        Ok(())
    }

    fn unmerge(&mut self, name: &str) -> Result<()> {
        let i = self.index(name)?;
        if self.adapters[i].meta.merged {
            let d = self.delta(i);
            self.shift(d, -1.0);
            self.adapters[i].meta.merged = false;
        }
        Ok(())
    }

    fn factors(&self, name: &str) -> Result<Factors> {
        let a = &self.adapters[self.index(name)?];
        Ok(Factors {
            a: a.lora_embedding_a.val(),
            b: a.lora_embedding_b.val(),
            scale: a.meta.scale,
        })
    }

    fn set_factors(&mut self, name: &str, factors: Factors, key: &str) -> Result<()> {
        let (n, dim) = self.shape();
        let i = self.index(name)?;
        self.unmerge(name)?;
        let ad = &mut self.adapters[i];
        let r = ad.meta.r;
        check_shape(&format!("{key} (lora_embedding_A)"), &factors.a, [n, r])?;
        check_shape(&format!("{key} (lora_embedding_B)"), &factors.b, [r, dim])?;
        ad.lora_embedding_a = replace(&ad.lora_embedding_a, factors.a);
        ad.lora_embedding_b = replace(&ad.lora_embedding_b, factors.b);
        ad.meta.scale = factors.scale;
        Ok(())
    }

    fn device(&self) -> Device {
        self.weight.lazy_device()
    }

    fn base_id(&self) -> burn::module::ParamId {
        self.weight.id
    }

    fn base_weight(&self) -> Tensor<2> {
        self.weight.base()
    }

    fn adapter_bias(&self, name: &str) -> Result<crate::config::BiasMode> {
        Ok(self.adapters[self.index(name)?].meta.bias)
    }

    fn has_bias(&self) -> bool {
        false
    }
}
