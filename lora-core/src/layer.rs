//! [`LoraLayer`]: what every LoRA-capable layer offers, so that targeting, merging and adapter
//! files work on any layer kind through one interface.

use burn::module::ParamId;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::config::{AdapterSpec, BiasMode, InitLoraWeights};
use crate::error::{LoraError, Result};

/// The kind of base layer an adapter sits on; decides key names in PEFT files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A linear layer (`lora_A.weight` / `lora_B.weight` keys).
    Linear,
    /// An embedding table (`lora_embedding_A` / `lora_embedding_B` keys).
    Embedding,
}

impl LayerKind {
    /// PEFT's key suffixes of the A and B factors on this kind of layer.
    pub fn factor_keys(self) -> (&'static str, &'static str) {
        match self {
            LayerKind::Linear => ("lora_A.weight", "lora_B.weight"),
            LayerKind::Embedding => ("lora_embedding_A", "lora_embedding_B"),
        }
    }
}

/// The equivalent plain LoRA factors of one adapter, in our orientation: `a` is `[d_in, r]`,
/// `b` is `[r, d_out]` and the weight update is `scale · a · b`.
#[derive(Debug, Clone)]
pub struct Factors {
    /// `[d_in, r]`.
    pub a: Tensor<2>,
    /// `[r, d_out]`.
    pub b: Tensor<2>,
    /// Multiplier of `a · b`.
    pub scale: f64,
}

/// Per-layer adapter bookkeeping that does not live in tensors. Not recorded by burn.
#[derive(Debug, Clone, Default)]
pub struct AdapterState {
    /// Names of the adapters used by `forward` (in order). Merged adapters are always applied.
    pub active: Vec<String>,
    /// When true `forward` is the base layer alone (merged adapters were unmerged first).
    pub disabled: bool,
}

/// The per-layer accessors of [`LoraLayer`]'s bookkeeping for a layer with `adapters` (each
/// with `meta.name` and `meta.merged`) and `state`.
macro_rules! adapter_accessors {
    () => {
        fn adapter_merge_states(&self) -> Vec<(String, bool)> {
            let adapters = self.adapters.iter();
            adapters
                .map(|a| (a.meta.name.clone(), a.meta.merged))
                .collect()
        }

        fn adapter_state(&self) -> &AdapterState {
            &self.state
        }

        fn adapter_state_mut(&mut self) -> &mut AdapterState {
            &mut self.state
        }

        fn drop_adapter(&mut self, index: usize) {
            self.adapters.remove(index);
        }
    };
}
pub(crate) use adapter_accessors;

/// Operations shared by [`LoraLinear`](crate::LoraLinear) and [`LoraEmbedding`](crate::LoraEmbedding).
///
/// Object safe, so a model can hand out `&mut dyn LoraLayer` for every site it has
/// (see [`LoraSites`](crate::LoraSites)).
pub trait LoraLayer {
    /// The base layer kind.
    fn kind(&self) -> LayerKind;
    /// `(d_in, d_out)` of the base weight (for embeddings: `(num_embeddings, dim)`).
    fn dims(&self) -> (usize, usize);
    /// Each adapter's name and whether it is merged, in insertion order. The bookkeeping
    /// methods (names, activation, disabling, removal) are written once on top of this,
    /// [`adapter_state`](Self::adapter_state) and [`drop_adapter`](Self::drop_adapter), as
    /// PEFT's `BaseTunerLayer` does.
    fn adapter_merge_states(&self) -> Vec<(String, bool)>;
    /// The active set and the disable switch.
    fn adapter_state(&self) -> &AdapterState;
    /// The active set and the disable switch, to change.
    fn adapter_state_mut(&mut self) -> &mut AdapterState;
    /// Drops the adapter at `index` of the insertion order, as it is (callers unmerge first).
    fn drop_adapter(&mut self, index: usize);
    /// Names of the adapters attached, in insertion order.
    fn adapter_names(&self) -> Vec<String> {
        self.adapter_merge_states()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }
    /// Names of the adapters currently merged into the base weight.
    fn merged_adapters(&self) -> Vec<String> {
        let states = self.adapter_merge_states().into_iter();
        states
            .filter(|(_, merged)| *merged)
            .map(|(n, _)| n)
            .collect()
    }
    /// Position of the named adapter in the insertion order.
    fn adapter_index(&self, name: &str) -> Result<usize> {
        (self
            .adapter_merge_states()
            .iter()
            .position(|(n, _)| n == name))
        .ok_or_else(|| LoraError::UnknownAdapter {
            module: String::new(),
            adapter: name.to_string(),
        })
    }
    /// Adds a freshly initialised adapter and makes it active alongside the others.
    fn add_adapter(&mut self, name: &str, spec: &AdapterSpec) -> Result<()>;
    /// Adds an adapter that only updates the given output ranges `(start, len)`, each with its own
    /// rank-`spec.r` factor pair (loralib's `MergedLinear`, e.g. q and v of a fused qkv projection).
    /// Only linear layers support it.
    fn add_sliced_adapter(
        &mut self,
        name: &str,
        spec: &AdapterSpec,
        slices: &[(usize, usize)],
    ) -> Result<()>;
    /// Removes an adapter (unmerging it first if merged).
    fn remove_adapter(&mut self, name: &str) -> Result<()> {
        self.unmerge(name)?;
        let i = self.adapter_index(name)?;
        self.drop_adapter(i);
        self.adapter_state_mut().active.retain(|n| n != name);
        Ok(())
    }
    /// Chooses which adapters `forward` applies; merged adapters that become inactive are
    /// unmerged, so the base weight never carries an inactive update.
    fn set_active(&mut self, names: &[String]) -> Result<()> {
        check_names("", &self.adapter_names(), names)?;
        for merged in self.merged_adapters() {
            if !names.contains(&merged) {
                self.unmerge(&merged)?;
            }
        }
        self.adapter_state_mut().active = names.to_vec();
        Ok(())
    }
    /// Names of the active adapters.
    fn active(&self) -> Vec<String> {
        self.adapter_state().active.clone()
    }
    /// Whether adapters are turned off ([`set_disabled`](Self::set_disabled)).
    fn disabled(&self) -> bool {
        self.adapter_state().disabled
    }
    /// Turns every adapter off (`true`; merged ones are unmerged first) or back on.
    fn set_disabled(&mut self, disabled: bool) -> Result<()> {
        if disabled {
            for merged in self.merged_adapters() {
                self.unmerge(&merged)?;
            }
        }
        self.adapter_state_mut().disabled = disabled;
        Ok(())
    }
    /// Adds `scale · A · B` of the named adapter into the base weight; a no-op if already merged.
    fn merge(&mut self, name: &str) -> Result<()>;
    /// Subtracts a merged adapter's update from the base weight; a no-op if not merged.
    fn unmerge(&mut self, name: &str) -> Result<()>;
    /// The adapter's equivalent plain factors (see [`Factors`]).
    fn factors(&self, name: &str) -> Result<Factors>;
    /// Replaces the adapter's factors: `a` `[d_in, r]`, `b` `[r, d_out]`, and its scale.
    /// Shapes are checked; `key` names the source in errors.
    fn set_factors(&mut self, name: &str, factors: Factors, key: &str) -> Result<()>;
    /// Whether the base layer has a bias (`lora_only` bias mode trains it).
    fn has_bias(&self) -> bool;
    /// The device holding the base weight.
    fn device(&self) -> Device;
    /// The id of the base weight parameter (identifies the layer inside a module tree).
    fn base_id(&self) -> ParamId;
    /// The base weight as stored, merged adapters folded in: `[d_in, d_out]` for a linear
    /// layer, `[num_embeddings, dim]` for an embedding. A reparameterization attached to it (a
    /// `modules_to_save` copy, a weight-level adapter) is not applied: tied heads read this, and
    /// in PEFT they keep the original table.
    fn base_weight(&self) -> Tensor<2>;
    /// [`base_weight`](Self::base_weight) as the row blocks it is stored in: one tensor, except
    /// for an embedding table split to fit the device (see [`crate::LoraEmbedding`]). Prefer it
    /// where a whole table in one tensor could exceed the device's per-tensor limit.
    fn base_blocks(&self) -> Vec<Tensor<2>> {
        vec![self.base_weight()]
    }
    /// The `bias` setting of the config adapter `name` was added with.
    fn adapter_bias(&self, name: &str) -> Result<BiasMode>;
    /// The DoRA magnitude `[d_out]` of the adapter, if it is a DoRA adapter.
    fn magnitude(&self, name: &str) -> Result<Option<Tensor<1>>> {
        let _ = name;
        Ok(None)
    }
    /// Replaces a DoRA adapter's magnitude (shape checked; `key` names the source in errors).
    fn set_magnitude(&mut self, name: &str, magnitude: Tensor<1>, key: &str) -> Result<()> {
        let _ = (name, magnitude);
        Err(LoraError::UnexpectedTensor {
            key: key.to_string(),
            file: Default::default(),
            reason: "DoRA magnitude for a layer kind without DoRA".into(),
        })
    }
}

/// Initial `(a [d_in, r], b [r, d_out])` for a linear adapter, following PEFT.
pub(crate) fn init_linear_factors(
    d_in: usize,
    d_out: usize,
    spec: &AdapterSpec,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let r = spec.r;
    // kaiming_uniform(a = sqrt 5) on torch's [r, d_in] lora_A: bound = 1 / sqrt(fan_in = d_in).
    let bound = 1.0 / (d_in as f64).sqrt();
    match spec.init {
        // Eva and orthogonal adapters are only loaded (their factors come from the file, and
        // injection refuses to start one); PiSSA and OLoRA factors come from the base weight
        // (`LoraLinear` replaces these values). So their values here never matter.
        InitLoraWeights::Default
        | InitLoraWeights::Eva
        | InitLoraWeights::Orthogonal
        | InitLoraWeights::Pissa
        | InitLoraWeights::PissaNiter(_)
        | InitLoraWeights::Olora => (
            Tensor::random([d_in, r], Distribution::Uniform(-bound, bound), device),
            Tensor::zeros([r, d_out], device),
        ),
        InitLoraWeights::Gaussian => (
            Tensor::random([d_in, r], Distribution::Normal(0.0, 1.0 / r as f64), device),
            Tensor::zeros([r, d_out], device),
        ),
        InitLoraWeights::Random => {
            // torch's default Linear init for lora_B (fan_in = r).
            let b_bound = 1.0 / (r as f64).sqrt();
            (
                Tensor::random([d_in, r], Distribution::Uniform(-bound, bound), device),
                Tensor::random([r, d_out], Distribution::Uniform(-b_bound, b_bound), device),
            )
        }
    }
}

/// Initial `(a [num_embeddings, r], b [r, dim])` for an embedding adapter, following PEFT
/// (`lora_embedding_A` zeros and `lora_embedding_B` normal, so the update starts at zero).
pub(crate) fn init_embedding_factors(
    n: usize,
    dim: usize,
    spec: &AdapterSpec,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let r = spec.r;
    match spec.init {
        // PEFT uses this init for `gaussian` too: the option only concerns linear layers.
        // PEFT gives embeddings the default init for PiSSA and OLoRA too.
        InitLoraWeights::Default
        | InitLoraWeights::Gaussian
        | InitLoraWeights::Eva
        | InitLoraWeights::Orthogonal
        | InitLoraWeights::Pissa
        | InitLoraWeights::PissaNiter(_)
        | InitLoraWeights::Olora => (
            Tensor::zeros([n, r], device),
            Tensor::random([r, dim], Distribution::Normal(0.0, 1.0), device),
        ),
        InitLoraWeights::Random => (
            Tensor::random([n, r], Distribution::Normal(0.0, 1.0), device),
            Tensor::random([r, dim], Distribution::Normal(0.0, 1.0), device),
        ),
    }
}

/// Whether every value of `t` is finite, with one scalar read (`x − x` is NaN exactly for
/// NaN and ±∞, and a sum with a NaN is NaN).
pub(crate) fn all_finite<const D: usize>(t: Tensor<D>) -> bool {
    let s: f32 = (t.clone() - t).sum().into_scalar();
    s.is_finite()
}

pub(crate) fn check_shape(key: &str, t: &Tensor<2>, expected: [usize; 2]) -> Result<()> {
    let found = t.dims();
    if found != expected {
        return Err(LoraError::ShapeMismatch {
            key: key.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

/// Validates a requested active set against the attached adapters.
pub(crate) fn check_names(module: &str, attached: &[String], names: &[String]) -> Result<()> {
    for n in names {
        if !attached.contains(n) {
            return Err(LoraError::UnknownAdapter {
                module: module.to_string(),
                adapter: n.clone(),
            });
        }
    }
    Ok(())
}
