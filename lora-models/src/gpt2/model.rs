//! GPT-2 as burn modules whose parameter paths equal Hugging Face's (`transformer.h.0.attn.c_attn.weight`, ...).
//! Every linear layer is a [`LoraLinear`] and `wte` a [`LoraEmbedding`], so any of them can carry
//! an adapter; the LM head is tied to `wte`.

use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig};
use burn::prelude::*;
use lora_core::{LoraEmbedding, LoraLayer, LoraLinear, dropout, layer_norm, lora_sites};

use super::config::Gpt2Config;
use crate::activation::Activation;
use crate::error::{ModelError, Result};
use crate::init::{hf_embedding, hf_linear, hf_table};

/// Keys and values of one block for the tokens seen so far: each `[batch, heads, past, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Keys.
    pub k: Tensor<4>,
    /// Values.
    pub v: Tensor<4>,
}

/// The key/value cache of every block (empty before the first step).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// One entry per block once filled.
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    /// Tokens already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows (sequences) cached; `None` when nothing is cached yet.
    pub fn batch(&self) -> Option<usize> {
        self.layers.first().map(|l| l.k.dims()[0])
    }

    /// Keeps only the given batch rows, in the given order (beam search reorders beams).
    pub fn select(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| LayerCache {
                    k: l.k.clone().select(0, rows.clone()),
                    v: l.v.clone().select(0, rows.clone()),
                })
                .collect(),
        }
    }
}

/// Causal self-attention with the fused `c_attn` projection (`[d, 3d]`: q, k, v).
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// q, k, v projection `[n_embd, 3·n_embd]`.
    pub c_attn: LoraLinear,
    /// Output projection `[n_embd, n_embd]`.
    pub c_proj: LoraLinear,
    /// Dropout on attention probabilities.
    pub attn_dropout: Dropout,
    /// Dropout on the output.
    pub resid_dropout: Dropout,
    /// Number of heads.
    #[module(skip)]
    pub n_head: usize,
    /// Multiplier of `q·kᵀ` (1/√head_dim, and 1/(layer+1) when configured).
    #[module(skip)]
    pub score_scale: f64,
}

impl Gpt2Attention {
    /// Attends over the cached and new tokens.
    ///
    /// # Shapes
    /// - `x`: `[batch, new, n_embd]`
    /// - `mask`: `[batch, 1, new, past + new]`, `true` = may not attend
    /// - `cache`: keys/values `[batch, heads, past, head_dim]`
    /// - output: `[batch, new, n_embd]`, and the cache extended to `past + new`
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Tensor<4, Bool>,
        cache: Option<LayerCache>,
    ) -> (Tensor<3>, LayerCache) {
        let [b, t, d] = x.dims();
        let h = self.n_head;
        let dh = d / h;
        let qkv = self.c_attn.forward(x);
        let heads = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([b, t, h, dh])
                .swap_dims(1, 2)
        };
        let (q, mut k, mut v) = (heads(0), heads(1), heads(2));
        if let Some(c) = cache {
            k = Tensor::cat(vec![c.k, k], 2);
            v = Tensor::cat(vec![c.v, v], 2);
        }
        let scores = q
            .matmul(k.clone().swap_dims(2, 3))
            .mul_scalar(self.score_scale);
        // A large finite negative keeps fully masked rows (left padding) free of NaN.
        let scores = scores.mask_fill(mask, -1e9);
        let probs = dropout(&self.attn_dropout, lora_core::softmax(scores, 3));
        let out = probs.matmul(v.clone()).swap_dims(1, 2).reshape([b, t, d]);
        let out = dropout(&self.resid_dropout, self.c_proj.forward(out));
        (out, LayerCache { k, v })
    }
}

/// The feed-forward block: `c_proj(act(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// `[n_embd, inner]`.
    pub c_fc: LoraLinear,
    /// `[inner, n_embd]`.
    pub c_proj: LoraLinear,
    /// Dropout on the output.
    pub dropout: Dropout,
    /// The activation.
    #[module(skip)]
    pub activation: Activation,
}

impl Gpt2Mlp {
    /// # Shapes
    /// - `x`: `[batch, seq, n_embd]` → `[batch, seq, n_embd]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.c_fc.forward(x);
        let h = self.activation.forward(h);
        dropout(&self.dropout, self.c_proj.forward(h))
    }
}

/// One pre-LayerNorm transformer block.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm,
    /// Self-attention.
    pub attn: Gpt2Attention,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm,
    /// Feed-forward.
    pub mlp: Gpt2Mlp,
}

impl Gpt2Block {
    /// # Shapes
    /// - `x`: `[batch, new, n_embd]`, `mask`: `[batch, 1, new, past + new]` → `[batch, new, n_embd]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Tensor<4, Bool>,
        cache: Option<LayerCache>,
    ) -> (Tensor<3>, LayerCache) {
        let (a, cache) = self
            .attn
            .forward(layer_norm(&self.ln_1, x.clone()), mask, cache);
        let x = x + a;
        let x = x.clone() + self.mlp.forward(layer_norm(&self.ln_2, x));
        (x, cache)
    }
}

/// GPT-2's body (`transformer.*`).
#[derive(Module, Debug)]
pub struct Gpt2Model {
    /// Token embeddings `[vocab, n_embd]` (also the LM head).
    pub wte: LoraEmbedding,
    /// Position embeddings `[n_positions, n_embd]`.
    pub wpe: Embedding,
    /// Dropout on the embeddings.
    pub drop: Dropout,
    /// The blocks.
    pub h: Vec<Gpt2Block>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm,
    /// Maximum positions.
    #[module(skip)]
    pub n_positions: usize,
}

lora_sites!(Gpt2Attention { c_attn, c_proj });
lora_sites!(Gpt2Mlp { c_fc, c_proj });
lora_sites!(Gpt2Block { attn, mlp });
lora_sites!(Gpt2Model { wte, h });

/// GPT-2 with its language-model head (tied to `transformer.wte`).
#[derive(Module, Debug)]
pub struct Gpt2LmHeadModel {
    /// The body, under Hugging Face's `transformer.` prefix.
    pub transformer: Gpt2Model,
    /// How the training step trades compute for memory (activation checkpointing, a chunked
    /// loss; see [`MemoryOptions`](super::MemoryOptions)). Off by default; inference ignores it.
    #[module(skip)]
    pub memory: super::MemoryOptions,
}

lora_sites!(Gpt2LmHeadModel { transformer });

impl Gpt2Config {
    /// Creates the model with transformers' initialisation of a fresh GPT-2: weights and
    /// embeddings N(0, `initializer_range`), the residual projections (`c_proj`) scaled down by
    /// `1/sqrt(2·n_layer)`, biases 0, LayerNorm 1/0. Parameters are lazy, so loading weights right
    /// after allocates no random init.
    pub fn init(&self, device: &Device) -> Gpt2LmHeadModel {
        let d = self.n_embd;
        let std = self.initializer_range;
        // GPT-2 scales the init of projections that add into the residual stream, so its
        // variance does not grow with depth.
        let proj_std = std / (2.0 * self.n_layer.max(1) as f64).sqrt();
        let linear = |d_in: usize, d_out: usize, std: f64| hf_linear(d_in, d_out, std, device);
        let embedding = |n: usize| hf_embedding(n, d, std, device);
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_epsilon)
                .init(device)
        };
        let h = (0..self.n_layer)
            .map(|i| {
                let mut score_scale = 1.0;
                if self.scale_attn_weights {
                    score_scale /= (self.head_dim() as f64).sqrt();
                }
                if self.scale_attn_by_inverse_layer_idx {
                    score_scale /= (i + 1) as f64;
                }
                Gpt2Block {
                    ln_1: ln(),
                    attn: Gpt2Attention {
                        c_attn: linear(d, 3 * d, std),
                        c_proj: linear(d, d, proj_std),
                        attn_dropout: DropoutConfig::new(self.attn_pdrop).init(),
                        resid_dropout: DropoutConfig::new(self.resid_pdrop).init(),
                        n_head: self.n_head,
                        score_scale,
                    },
                    ln_2: ln(),
                    mlp: Gpt2Mlp {
                        c_fc: linear(d, self.inner(), std),
                        c_proj: linear(self.inner(), d, proj_std),
                        dropout: DropoutConfig::new(self.resid_pdrop).init(),
                        activation: self.activation_function,
                    },
                }
            })
            .collect();
        Gpt2LmHeadModel {
            memory: super::MemoryOptions::default(),
            transformer: Gpt2Model {
                wte: hf_table(self.vocab_size, d, std, device),
                wpe: embedding(self.n_positions),
                drop: DropoutConfig::new(self.embd_pdrop).init(),
                h,
                ln_f: ln(),
                n_positions: self.n_positions,
            },
        }
    }
}

/// `[batch, 1, new, past + new]` mask: `true` where a query may not look (future tokens, and
/// keys whose `attention_mask` is 0).
pub fn attention_mask_4d(
    attention_mask: Option<&Tensor<2, Int>>,
    batch: usize,
    new: usize,
    past: usize,
    device: &Device,
) -> Tensor<4, Bool> {
    let total = past + new;
    let causal: Tensor<4, Bool> = Tensor::<2, Bool>::tril_mask([new, total], past as i64, device)
        .reshape([1, 1, new, total])
        .expand([batch, 1, new, total]);
    match attention_mask {
        Some(m) => {
            let pad: Tensor<4, Bool> = m
                .clone()
                .equal_elem(0)
                .reshape([batch, 1, 1, total])
                .expand([batch, 1, new, total]);
            causal.bool_or(pad)
        }
        None => causal,
    }
}

impl Gpt2Model {
    /// Runs the body.
    ///
    /// # Shapes
    /// - `ids`: `[batch, new]`
    /// - `attention_mask`: `[batch, past + new]`, 1 = real token, 0 = padding (`None`: all real)
    /// - `position_ids`: `[batch, new]` (`None`: `past..past + new`, as Hugging Face's forward)
    /// - output: hidden states `[batch, new, n_embd]` and the extended cache
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
        cache: Option<KvCache>,
    ) -> Result<(Tensor<3>, KvCache)> {
        let past = cache.as_ref().map_or(0, KvCache::len);
        let cached_batch = cache.as_ref().and_then(KvCache::batch);
        let (positions, mask) = self.inputs(
            &ids,
            attention_mask.as_ref(),
            position_ids,
            past,
            cached_batch,
        )?;
        let mut x = self.embed(ids, positions);
        let mut old = cache.map(|c| c.layers).unwrap_or_default().into_iter();
        let mut layers = Vec::with_capacity(self.h.len());
        for block in &self.h {
            let (y, c) = block.forward(x, mask.clone(), old.next());
            x = y;
            layers.push(c);
        }
        Ok((layer_norm(&self.ln_f, x), KvCache { layers }))
    }

    /// The tied LM head over the stored `wte` table. As in PEFT 0.21.2, an unmerged LoRA on
    /// `wte` changes the input lookup only; merged, it is in the table and so in the head too.
    ///
    /// # Shapes
    /// - `hidden`: `[..., n_embd]` → `[..., vocab]`
    pub fn lm_head<const D: usize>(&self, hidden: Tensor<D>) -> Tensor<D> {
        self.wte.tied_logits(hidden, None)
    }

    /// Token plus position embeddings, after dropout.
    ///
    /// # Shapes
    /// - `ids`, `positions`: `[batch, new]` → `[batch, new, n_embd]`
    pub fn embed(&self, ids: Tensor<2, Int>, positions: Tensor<2, Int>) -> Tensor<3> {
        dropout(
            &self.drop,
            self.wte.forward(ids) + self.wpe.forward(positions),
        )
    }

    /// Checks a forward's inputs and returns the position ids and the 4-D attention mask.
    ///
    /// # Shapes
    /// - `ids`: `[batch, new]`, `attention_mask`: `[batch, past + new]`
    /// - output: positions `[batch, new]`, mask `[batch, 1, new, past + new]`
    pub fn inputs(
        &self,
        ids: &Tensor<2, Int>,
        attention_mask: Option<&Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
        past: usize,
        cached_batch: Option<usize>,
    ) -> Result<(Tensor<2, Int>, Tensor<4, Bool>)> {
        let [b, t] = ids.dims();
        let device = ids.device();
        if past + t > self.n_positions {
            return Err(ModelError::SequenceTooLong {
                len: past + t,
                max: self.n_positions,
            });
        }
        if t == 0 || b == 0 {
            return Err(ModelError::InvalidInput("empty batch or sequence".into()));
        }
        if let Some(m) = attention_mask
            && m.dims() != [b, past + t]
        {
            return Err(ModelError::InvalidInput(format!(
                "attention_mask is {:?}, expected [{b}, {}]",
                m.dims(),
                past + t
            )));
        }
        if let Some(cb) = cached_batch
            && cb != b
        {
            return Err(ModelError::InvalidInput(format!(
                "the KV cache holds {cb} sequences but the batch has {b}"
            )));
        }
        if let Some(block) = self.h.first() {
            crate::check_scores_fit(&device, [b, block.attn.n_head, t, past + t])?;
        }
        if let Some(p) = &position_ids {
            check_positions(p, [b, t], self.n_positions)?;
        }
        let positions = match position_ids {
            Some(p) => p,
            None => Tensor::<1, Int>::arange(past as i64..(past + t) as i64, &device)
                .reshape([1, t])
                .expand([b, t]),
        };
        let mask = attention_mask_4d(attention_mask, b, t, past, &device);
        Ok((positions, mask))
    }
}

impl Gpt2LmHeadModel {
    /// Sets how the training step trades compute for memory (see [`memory`](Self::memory)).
    pub fn with_memory(mut self, options: super::MemoryOptions) -> Self {
        self.memory = options;
        self
    }

    /// Next-token logits.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]`, `attention_mask`: `[batch, seq]` (1 = token, 0 = padding)
    /// - output: `[batch, seq, vocab]`
    ///
    /// Positions are `0..seq` as in Hugging Face's forward; pass them explicitly through
    /// [`forward_cached`](Self::forward_cached) for left-padded generation.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Result<Tensor<3>> {
        Ok(self.forward_cached(ids, attention_mask, None, None)?.0)
    }

    /// Logits for new tokens given a cache of earlier ones.
    ///
    /// # Shapes
    /// - `ids`: `[batch, new]`, `attention_mask`: `[batch, past + new]`, `position_ids`: `[batch, new]`
    /// - output: `[batch, new, vocab]` and the cache extended to `past + new`
    pub fn forward_cached(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
        cache: Option<KvCache>,
    ) -> Result<(Tensor<3>, KvCache)> {
        let [b, t] = ids.dims();
        let vocab = self.transformer.wte.dims().0;
        crate::check_logits_fit(&ids.device(), [b, t, vocab])?;
        let (hidden, cache) = self
            .transformer
            .forward(ids, attention_mask, position_ids, cache)?;
        Ok((self.transformer.lm_head(hidden), cache))
    }
}

/// Explicit position ids must be `[batch, new]` and index the position table: an id past
/// `n_positions` would make the embedding gather panic (flex) or read garbage (wgpu).
fn check_positions(p: &Tensor<2, Int>, dims: [usize; 2], n_positions: usize) -> Result<()> {
    if p.dims() != dims {
        return Err(ModelError::InvalidInput(format!(
            "position_ids is {:?}, expected {dims:?}",
            p.dims()
        )));
    }
    // Minimum and maximum in one read back: one device sync per forward, not two.
    let bounds = Tensor::cat(vec![p.clone().min(), p.clone().max()], 0)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| ModelError::InvalidInput(format!("position_ids: {e:?}")))?;
    let (lo, hi) = match bounds[..] {
        [lo, hi] => (lo, hi),
        _ => {
            return Err(ModelError::InvalidInput(
                "position_ids could not be read".into(),
            ));
        }
    };
    if lo < 0 || hi >= n_positions as i64 {
        return Err(ModelError::InvalidInput(format!(
            "position_ids range over {lo}..={hi}, but the model has {n_positions} positions"
        )));
    }
    Ok(())
}
