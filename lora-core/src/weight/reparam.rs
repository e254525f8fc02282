//! [`WeightLora`]: the reparameterization that puts named LoRA (and DoRA) adapters on one
//! parameter of any burn module, through burn's public `Reparameterization` API.
//!
//! burn stores one reparameterization per parameter and lets module visitors and mappers reach
//! only its inner parameters, so the adapter bookkeeping (name, scale, active, merged) travels
//! through the visitor as the container type of each adapter (see [`AdapterMeta::encode`]):
//! that is how [`read_sites`](super::sites) rebuilds the state of any model without knowing its
//! type.

use std::cell::Cell;

use burn::module::{Devices, Module, ModuleMapper, ModuleVisitor, Param, Reparameterization};
use burn::prelude::*;

use crate::config::BiasMode;

/// How the adapter's factors map onto the adapted parameter.
///
/// Factors are stored in PEFT's orientation everywhere (`lora_a`: `[r·E, in]`,
/// `lora_b`: `[out, r·E]`), so adapter files need no transposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A `burn::nn::Linear` weight `[d_in, d_out]`: `ΔW = s·Aᵀ·Bᵀ`.
    Linear,
    /// A `burn::nn::Embedding` weight `[num_embeddings, dim]`: `ΔW = s·Aᵀ·Bᵀ`, with PEFT's
    /// `lora_embedding_A` `[r, num_embeddings]` and `lora_embedding_B` `[dim, r]`.
    Embedding,
    /// A raw 2-D parameter `[P0, P1]` (PEFT `target_parameters`): `ΔW = s·B·A`.
    Param2,
    /// A raw 3-D parameter `[E, P1, P2]` (an expert stack, PEFT `target_parameters`):
    /// `ΔW[e] = s·B_e·A_e` with `A` `[r·E, P2]` read as `[E, r, P2]` and `B` `[P1, r·E]` read as
    /// `[P1, r, E]`.
    Experts,
}

impl Layout {
    fn tag(self) -> &'static str {
        match self {
            Layout::Linear => "linear",
            Layout::Embedding => "embedding",
            Layout::Param2 => "param2",
            Layout::Experts => "experts",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        Some(match tag {
            "linear" => Layout::Linear,
            "embedding" => Layout::Embedding,
            "param2" => Layout::Param2,
            "experts" => Layout::Experts,
            _ => return None,
        })
    }
}

/// Bookkeeping of one adapter on one parameter (not a tensor, so burn does not record it).
#[derive(Debug, Clone)]
pub struct AdapterMeta {
    /// Adapter name.
    pub name: String,
    /// Rank `r` (per expert for [`Layout::Experts`]).
    pub r: usize,
    /// Multiplier of the update (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA).
    pub scale: f64,
    /// Whether `forward` applies it.
    pub active: bool,
    /// Whether its update is folded into the stored base value.
    pub merged: bool,
    /// The config's `bias` setting (PEFT allows one adapter with bias per model).
    pub bias: BiasMode,
}

/// Marker that starts every encoded [`AdapterMeta`]; anything else is not ours.
const META_PREFIX: &str = "lora-burn:adapter;";

impl AdapterMeta {
    /// The container-type string under which visitors see the adapter:
    /// `lora-burn:adapter;layout=linear;experts=1;r=4;scale=2;active=1;merged=0;disabled=0;bias=none`.
    pub fn encode(&self, layout: Layout, experts: usize, disabled: bool) -> String {
        format!(
            "{META_PREFIX}layout={};experts={experts};r={};scale={:e};active={};merged={};disabled={};bias={}",
            layout.tag(),
            self.r,
            self.scale,
            self.active as u8,
            self.merged as u8,
            disabled as u8,
            bias_tag(self.bias),
        )
    }

    /// Parses [`encode`](Self::encode)'s string: `(meta, set)`; `None` if it is not ours.
    pub fn decode(name: &str, container: &str) -> Option<(Self, SetInfo)> {
        let body = container.strip_prefix(META_PREFIX)?;
        let (mut layout, mut r, mut scale, mut experts) = (None, None, None, None);
        let (mut active, mut merged, mut disabled) = (false, false, false);
        let mut bias = BiasMode::None;
        for field in body.split(';') {
            let (k, v) = field.split_once('=')?;
            match k {
                "layout" => layout = Layout::from_tag(v),
                "r" => r = v.parse().ok(),
                "experts" => experts = v.parse().ok(),
                "scale" => scale = v.parse().ok(),
                "active" => active = v == "1",
                "merged" => merged = v == "1",
                "disabled" => disabled = v == "1",
                "bias" => bias = bias_from_tag(v)?,
                _ => {}
            }
        }
        let meta = Self {
            name: name.to_string(),
            r: r?,
            scale: scale?,
            active,
            merged,
            bias,
        };
        let set = SetInfo {
            layout: layout?,
            experts: experts?,
            disabled,
        };
        Some((meta, set))
    }
}

fn bias_tag(b: BiasMode) -> &'static str {
    match b {
        BiasMode::None => "none",
        BiasMode::All => "all",
        BiasMode::LoraOnly => "lora_only",
    }
}

fn bias_from_tag(tag: &str) -> Option<BiasMode> {
    match tag {
        "none" => Some(BiasMode::None),
        "all" => Some(BiasMode::All),
        "lora_only" => Some(BiasMode::LoraOnly),
        _ => None,
    }
}

/// What an encoded [`AdapterMeta`] says about the whole [`WeightLora`] it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct SetInfo {
    /// How factors map onto the parameter.
    pub layout: Layout,
    /// Expert count (1 unless [`Layout::Experts`]).
    pub experts: usize,
    /// Whether the set is disabled.
    pub disabled: bool,
}

/// The trainable part of one adapter.
#[derive(Module, Debug)]
pub struct AdapterFactors {
    /// PEFT's `lora_A.weight`: `[r·E, in]`.
    pub lora_a: Param<Tensor<2>>,
    /// PEFT's `lora_B.weight`: `[out, r·E]`.
    pub lora_b: Param<Tensor<2>>,
    /// DoRA's magnitude `[out]` (PEFT's `lora_magnitude_vector`); `None` for plain LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Frozen: the per-output norms of `W + ΔW` a DoRA merge divided by, kept to undo it
    /// exactly (PEFT caches the same); only while a DoRA adapter is merged.
    pub merge_norm: Option<Param<Tensor<1>>>,
}

impl AdapterFactors {
    /// The update `ΔW` in the parameter's own layout, rank 2 (`Linear`, `Embedding`, `Param2`)
    /// or 3 (`Experts`, as `[E·P1, P2]` rows to be reshaped by the caller).
    fn delta(&self, layout: Layout, meta: &AdapterMeta, experts: usize) -> Tensor<3> {
        let (a, b) = (self.lora_a.val(), self.lora_b.val());
        let d = match layout {
            Layout::Linear | Layout::Embedding => a.transpose().matmul(b.transpose()),
            Layout::Param2 => b.matmul(a),
            Layout::Experts => {
                let [rows, p2] = a.dims();
                let p1 = b.dims()[0];
                let r = rows / experts;
                let a3: Tensor<3> = a.reshape([experts, r, p2]);
                let b3: Tensor<3> = b.reshape([p1, r, experts]).permute([2, 0, 1]);
                return b3.matmul(a3).mul_scalar(meta.scale);
            }
        };
        d.mul_scalar(meta.scale).unsqueeze()
    }
}

/// Every adapter on one parameter, in insertion order: burn's [`Reparameterization`] for
/// [`weight`](super) adapters.
///
/// The effective value is `W + Σ ΔW` over the active, unmerged plain adapters, plus for each
/// active DoRA adapter `(m/‖W+ΔW‖ − 1)⊙W + (m/‖W+ΔW‖)⊙ΔW` with the norm per output and
/// detached, exactly PEFT's per-adapter DoRA.
#[derive(Debug, Clone)]
pub struct WeightLora {
    /// The factors of each adapter (same order as `metas`).
    pub adapters: Vec<AdapterFactors>,
    /// Bookkeeping of each adapter.
    pub metas: Vec<AdapterMeta>,
    /// How factors map onto the parameter.
    pub layout: Layout,
    /// Expert count for [`Layout::Experts`] (1 otherwise).
    pub experts: usize,
    /// When true the parameter is its base value (merged adapters were unmerged first).
    pub disabled: bool,
}

thread_local! {
    /// While positive, every [`WeightLora`] on this thread yields its base unchanged, so
    /// `Module::materialize` strips reparameterizations without merging them. burn offers no
    /// public way to detach a reparameterization from a parameter inside a module.
    static BYPASS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` with every [`WeightLora`] (and every `modules_to_save` copy) passing its base
/// through.
pub(crate) fn bypassed<T>(f: impl FnOnce() -> T) -> T {
    BYPASS.with(|b| b.set(b.get() + 1));
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            BYPASS.with(|b| b.set(b.get() - 1));
        }
    }
    let _restore = Restore;
    f()
}

/// Whether [`bypassed`] is in force on this thread.
pub(crate) fn bypass_active() -> bool {
    BYPASS.with(|b| b.get() > 0)
}

impl WeightLora {
    /// The adapters `forward` applies.
    fn live(&self) -> impl Iterator<Item = (&AdapterFactors, &AdapterMeta)> {
        self.adapters
            .iter()
            .zip(&self.metas)
            .filter(|(_, m)| m.active && !m.merged)
    }

    /// `W` plus every live adapter's update, in the parameter's layout (rank 3: `[1, a, b]`
    /// for 2-D parameters, `[E, P1, P2]` for expert stacks).
    fn effective(&self, w: Tensor<3>) -> Tensor<3> {
        let mut out = w.clone();
        for (f, m) in self.live() {
            let delta = self.delta_of(f, m);
            out = match &f.magnitude {
                None => out + delta,
                Some(mag) => out + dora_term(w.clone(), delta, mag.val()),
            };
        }
        out
    }

    /// `ΔW` of one adapter as `[1, a, b]` or `[E, P1, P2]`.
    pub(crate) fn delta_of(&self, f: &AdapterFactors, m: &AdapterMeta) -> Tensor<3> {
        f.delta(self.layout, m, self.experts)
    }
}

/// DoRA's contribution for a Linear weight `[1, d_in, d_out]`: the weight it yields minus `W`,
/// `(m/n − 1)⊙W + (m/n)⊙ΔW` with `n` the per-output (column) norm of `W + ΔW`, detached as PEFT
/// does (the DoRA paper's section 4.3).
fn dora_term(w: Tensor<3>, delta: Tensor<3>, magnitude: Tensor<1>) -> Tensor<3> {
    let d_out = magnitude.dims()[0];
    let norm = dora_norm(w.clone(), delta.clone()).detach();
    let factor = magnitude.reshape([1, 1, d_out]) / norm;
    (factor.clone() - 1.0) * w + factor * delta
}

/// Per-output norm of `W + ΔW`: `[1, 1, d_out]`.
pub(crate) fn dora_norm(w: Tensor<3>, delta: Tensor<3>) -> Tensor<3> {
    (w + delta).powf_scalar(2.0).sum_dim(1).sqrt()
}

impl Reparameterization for WeightLora {
    const NAME: &'static str = "lora";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        if bypass_active() || self.disabled || self.live().next().is_none() {
            return base;
        }
        let shape = base.shape();
        let dims = base.dims();
        let w: Tensor<3> = match D {
            2 => base.reshape([1, dims[0], dims[1]]),
            _ => base.reshape([dims[0], dims[1], dims[2]]),
        };
        self.effective(w).reshape(shape)
    }
}

impl Module for WeightLora {
    fn collect_devices(&self, devices: Devices) -> Devices {
        self.adapters
            .iter()
            .fold(devices, |d, a| a.collect_devices(d))
    }

    fn fork(self, device: &Device) -> Self {
        self.map_adapters(|a| a.fork(device))
    }

    fn to_device(self, device: &Device) -> Self {
        self.map_adapters(|a| a.to_device(device))
    }

    fn train(self) -> Self {
        self.map_adapters(Module::train)
    }

    fn valid(&self) -> Self {
        self.clone().map_adapters(|a| a.valid())
    }

    fn materialize(self) -> Self {
        self
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        for (a, m) in self.adapters.iter().zip(&self.metas) {
            let kind = m.encode(self.layout, self.experts, self.disabled);
            visitor.enter_module(&m.name, &kind);
            a.visit(visitor);
            visitor.exit_module(&m.name, &kind);
        }
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        let (layout, experts, disabled) = (self.layout, self.experts, self.disabled);
        let metas = self.metas.clone();
        let mut i = 0;
        self.map_adapters(|a| {
            let m = &metas[i];
            i += 1;
            let kind = m.encode(layout, experts, disabled);
            mapper.enter_module(&m.name, &kind);
            let a = a.map(mapper);
            mapper.exit_module(&m.name, &kind);
            a
        })
    }
}

impl WeightLora {
    fn map_adapters(self, f: impl FnMut(AdapterFactors) -> AdapterFactors) -> Self {
        Self {
            adapters: self.adapters.into_iter().map(f).collect(),
            ..self
        }
    }
}
