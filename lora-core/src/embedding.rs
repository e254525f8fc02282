//! [`LoraEmbedding`]: a frozen embedding table plus named low-rank adapters.

use burn::module::{Param, ParamId};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::module::embedding;

use crate::config::AdapterSpec;
use crate::error::{LoraError, Result};
use crate::layer::{
    AdapterState, Factors, LayerKind, LoraLayer, check_shape, init_embedding_factors,
};
use crate::linear::{linear_rows, replace};

/// burn's name of [`LoraEmbedding`]'s field holding a split table's further rows.
pub const ROW_BLOCKS: &str = "row_blocks";

/// Rows per block when an `n × dim` f32 table must be split to keep each block within
/// `max_bytes`; `None` when the whole table fits.
pub fn rows_per_block(n: usize, dim: usize, max_bytes: u64) -> Option<usize> {
    let rows = rows_within(dim, max_bytes);
    (n > rows).then_some(rows)
}

/// The most rows of `width` f32 values that fit in `max_bytes` (at least one).
pub fn rows_within(width: usize, max_bytes: u64) -> usize {
    let row = (width as u64).max(1) * 4;
    usize::try_from(max_bytes / row)
        .unwrap_or(usize::MAX)
        .max(1)
}

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
///
/// A table larger than what the device can hand to one kernel (wgpu binds at most 128 MiB per
/// buffer on lavapipe and under WebGPU's defaults; GPT-2's 50257 × 768 table is 147 MiB) is
/// stored as consecutive row blocks: `weight` holds the first rows and
/// [`row_blocks`](Self::row_blocks) the rest (see [`split_rows`](Self::split_rows)). Files and
/// state dicts still see one `weight` of the whole table ([`crate::visit_params`] marks the
/// blocks).
#[derive(Module, Debug)]
pub struct LoraEmbedding {
    /// Base table `[num_embeddings, dim]`, or its first rows when the table is split.
    pub weight: Param<Tensor<2>>,
    /// The table's further rows, in order, when it is split (empty otherwise).
    pub row_blocks: Vec<Param<Tensor<2>>>,
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
            row_blocks: Vec::new(),
            adapters: Vec::new(),
            state: AdapterState::default(),
        }
    }

    /// A table stored as the given row blocks (all `[rows_i, dim]`, in row order), e.g. lazily
    /// initialised ones whose values a state dict fills. Errors if the widths differ.
    pub fn from_row_blocks(blocks: Vec<Param<Tensor<2>>>) -> Result<Self> {
        let mut blocks = blocks.into_iter();
        let weight = blocks
            .next()
            .ok_or_else(|| LoraError::Unsupported("an embedding table without rows".into()))?;
        let dim = weight.lazy_shape()[1];
        let row_blocks: Vec<_> = blocks.collect();
        for (i, b) in row_blocks.iter().enumerate() {
            let found = b.lazy_shape().to_vec();
            if found[1] != dim {
                return Err(LoraError::ShapeMismatch {
                    key: format!("{ROW_BLOCKS}.{i}"),
                    expected: vec![found[0], dim],
                    found,
                });
            }
        }
        Ok(Self {
            weight,
            row_blocks,
            adapters: Vec::new(),
            state: AdapterState::default(),
        })
    }

    /// The same table stored in blocks of at most `max_bytes` each (f32), or unchanged when it
    /// fits in one. Adapters are kept (they are `[num_embeddings, r]` and `[r, dim]`, small).
    /// Reads the table back to the host once; loaders split host data instead
    /// ([`rows_per_block`]), so the whole table never exists on the device.
    pub fn split_rows(self, max_bytes: u64) -> Result<Self> {
        let (n, dim) = self.shape();
        let Some(rows) = rows_per_block(n, dim, max_bytes) else {
            return Ok(self);
        };
        let device = self.device();
        let mut flat = Vec::with_capacity(n * dim);
        for (i, t) in self.table_blocks().into_iter().enumerate() {
            let key = format!("{ROW_BLOCKS}.{i}");
            flat.extend(crate::io::HostTensor::from_tensor(t, &key)?.data);
        }
        // Every block keeps the table's settings (trainable or frozen); the first keeps its id.
        let params = flat
            .chunks(rows * dim)
            .enumerate()
            .map(|(i, c)| {
                let t =
                    Tensor::from_data(TensorData::new(c.to_vec(), [c.len() / dim, dim]), &device);
                let id = if i == 0 {
                    self.weight.id
                } else {
                    ParamId::new()
                };
                self.weight.clone().transform_for_load(t, id)
            })
            .collect();
        let mut out = Self::from_row_blocks(params)?;
        out.adapters = self.adapters;
        out.state = self.state;
        Ok(out)
    }

    /// Whether the table is stored as several row blocks.
    pub fn is_split(&self) -> bool {
        !self.row_blocks.is_empty()
    }

    /// The stored table's blocks in row order (one tensor when not split), without any
    /// reparameterization: what a tied output head multiplies with, one block of logits each.
    ///
    /// # Shapes
    /// - output: `[rows_i, dim]` each, `Σ rows_i = num_embeddings`
    pub fn table_blocks(&self) -> Vec<Tensor<2>> {
        self.blocks().map(|p| p.base()).collect()
    }

    /// A tied output head: `x · tableᵀ + bias` over the stored table (no reparameterization;
    /// see [`table_blocks`](Self::table_blocks)), computed one block of vocabulary columns per
    /// row block so the table is never one tensor.
    ///
    /// # Shapes
    /// - `x`: `[..., dim]`, `bias`: `[num_embeddings]`
    /// - output: `[..., num_embeddings]`
    pub fn tied_logits<const D: usize>(&self, x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
        if !self.is_split() {
            return linear_rows(x, self.weight.base().transpose(), bias);
        }
        let mut start = 0;
        let parts: Vec<Tensor<D>> = self
            .table_blocks()
            .into_iter()
            .map(|t| {
                let rows = t.dims()[0];
                let b = bias.clone().map(|b| b.slice(start..start + rows));
                start += rows;
                linear_rows(x.clone(), t.transpose(), b)
            })
            .collect();
        let logits = Tensor::cat(parts, D - 1);
        // burn 0.22's wgpu fusion computes reductions over a fresh `cat` of odd-width parts
        // wrongly (a cross-entropy over [30, 43690 | 10567] logits was off by 14 %); running
        // the queued work first gives the right values. An execution error would surface at
        // the next read of these logits, so it is not handled here.
        let _ = logits.device().flush();
        logits
    }

    fn blocks(&self) -> impl Iterator<Item = &Param<Tensor<2>>> {
        std::iter::once(&self.weight).chain(&self.row_blocks)
    }

    /// `(num_embeddings, dim)`, without initialising lazy parameters.
    pub fn shape(&self) -> (usize, usize) {
        let s = self.weight.lazy_shape();
        let more: usize = self.row_blocks.iter().map(|b| b.lazy_shape()[0]).sum();
        (s[0] + more, s[1])
    }

    /// `E[ids]` over the row blocks: each block answers for its own rows, the others give 0.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]` → `[batch, seq, dim]`
    fn lookup(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        if !self.is_split() {
            return embedding(self.weight.val(), ids);
        }
        let [b, s] = ids.dims();
        let mut start = 0i64;
        let mut out: Option<Tensor<3>> = None;
        for block in self.blocks() {
            let table = block.val();
            let [rows, dim] = table.dims();
            let local = ids.clone().sub_scalar(start);
            let outside = local
                .clone()
                .lower_elem(0)
                .bool_or(local.clone().greater_equal_elem(rows as i64));
            // Clamped so the gather stays in bounds; the rows it reads there are zeroed.
            let rows_here = embedding(table, local.clamp(0, rows as i64 - 1))
                .mask_fill(outside.reshape([b, s, 1]).expand([b, s, dim]), 0.0);
            out = Some(match out {
                Some(acc) => acc + rows_here,
                None => rows_here,
            });
            start += rows as i64;
        }
        out.unwrap_or_else(|| embedding(self.weight.val(), ids))
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
        let base = self.lookup(ids.clone());
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

    /// Adds `sign · scale · A · B` of adapter `i` to the table, block by block (the whole
    /// update is as large as the table, which may not fit one device buffer).
    fn shift(&mut self, i: usize, sign: f64) {
        let ad = &self.adapters[i];
        let a = ad.lora_embedding_a.val().detach();
        let b = ad.lora_embedding_b.val().detach();
        let scale = ad.meta.scale * sign;
        let mut start = 0;
        let mut shifted: Vec<Param<Tensor<2>>> = self
            .blocks()
            .map(|p| {
                let rows = p.lazy_shape()[0];
                let delta = a.clone().slice(start..start + rows).matmul(b.clone());
                start += rows;
                replace(p, p.val().detach() + delta.mul_scalar(scale))
            })
            .collect();
        self.row_blocks = shifted.split_off(1);
        if let Some(first) = shifted.pop() {
            self.weight = first;
        }
    }
}

impl LoraLayer for LoraEmbedding {
    crate::layer::adapter_accessors!();

    fn kind(&self) -> LayerKind {
        LayerKind::Embedding
    }

    fn dims(&self) -> (usize, usize) {
        self.shape()
    }

    fn add_adapter(&mut self, name: &str, spec: &AdapterSpec) -> Result<()> {
        if self.adapter_index(name).is_ok() {
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

    fn merge(&mut self, name: &str) -> Result<()> {
        let i = self.adapter_index(name)?;
        if !self.adapters[i].meta.merged {
            self.shift(i, 1.0);
            self.adapters[i].meta.merged = true;
        }
        Ok(())
    }

    fn unmerge(&mut self, name: &str) -> Result<()> {
        let i = self.adapter_index(name)?;
        if self.adapters[i].meta.merged {
            self.shift(i, -1.0);
            self.adapters[i].meta.merged = false;
        }
        Ok(())
    }

    fn factors(&self, name: &str) -> Result<Factors> {
        let a = &self.adapters[self.adapter_index(name)?];
        Ok(Factors {
            a: a.lora_embedding_a.val(),
            b: a.lora_embedding_b.val(),
            scale: a.meta.scale,
        })
    }

    fn set_factors(&mut self, name: &str, factors: Factors, key: &str) -> Result<()> {
        let (n, dim) = self.shape();
        let i = self.adapter_index(name)?;
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
        match self.is_split() {
            false => self.weight.base(),
            true => Tensor::cat(self.table_blocks(), 0),
        }
    }

    fn base_blocks(&self) -> Vec<Tensor<2>> {
        self.table_blocks()
    }

    fn adapter_bias(&self, name: &str) -> Result<crate::config::BiasMode> {
        Ok(self.adapters[self.adapter_index(name)?].meta.bias)
    }

    fn has_bias(&self) -> bool {
        false
    }
}
