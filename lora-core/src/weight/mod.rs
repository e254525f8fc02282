//! LoRA and DoRA on **any** burn module, unmodified: adapters attached to parameters through
//! burn's public `Reparameterizer` API (the mechanism behind burn's `Module::apply_lora`), with
//! PEFT's config, targets, multi-adapter switching, merging and adapter files.
//!
//! What is a site:
//! - with `target_modules`: the weight of every `burn::nn::Linear` and `burn::nn::Embedding`
//!   (found by the module visitor: no field list to keep), named by its module path, e.g.
//!   `layers.0.mha.query` in burn-nn's `TransformerEncoder`;
//! - with `target_parameters` (PEFT's, for MoE expert tensors): any 2-D or 3-D parameter,
//!   named by its parameter path.
//!
//! burn's field paths differ from the PyTorch paths PEFT uses; a [`PathMap`] rewrites them (the
//! identity when they agree). Targets, `rank_pattern`, `modules_to_save` and adapter-file keys
//! all use the rewritten (PEFT) paths.
//!
//! Compared with the factored [`LoraLinear`](crate::LoraLinear) (the fast path for models
//! written for this library), a weight-level adapter forms `W + ΔW` on every forward, so its
//! backward computes a weight-sized gradient before reaching the factors, and it cannot apply
//! dropout to the adapter's input: `lora_dropout > 0` is refused (PEFT refuses it for
//! `target_parameters` for the same reason). Both give the same numbers for the same adapter.
//!
//! Limits, each an error rather than a guess: DoRA only on `Linear` weights (PEFT also has it
//! for embeddings, and refuses it for `target_parameters`); two adapted parameters in one module
//! (PEFT keys them by the order the module registers its parameters, which burn does not
//! record). burn keeps one reparameterization per parameter and has no public way to detach
//! one, so every operation here rebuilds the adapted parameters: it strips them with
//! `Module::materialize` while [`WeightLora`] passes its base through, which would also merge
//! any *other* reparameterization (burn's own `apply_lora`) present on the model.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig, Relu};
//! use burn::prelude::*;
//! use lora_core::LoraConfig;
//! use lora_core::weight::{self, PathMap};
//!
//! // An ordinary burn model: no LoRA types, no macro.
//! #[derive(Module, Debug)]
//! struct Mlp {
//!     fc1: Linear,
//!     act: Relu,
//!     fc2: Linear,
//! }
//!
//! # fn main() -> Result<(), lora_core::LoraError> {
//! let device = Device::flex();
//! let model = Mlp {
//!     fc1: LinearConfig::new(16, 32).init(&device),
//!     act: Relu::new(),
//!     fc2: LinearConfig::new(32, 4).init(&device),
//! };
//! let config = LoraConfig::new(4, 8.0, &["fc1", "fc2"]);
//! let model = weight::inject_adapter(model, &config, "default", &PathMap::identity())?;
//! assert_eq!(weight::adapter_names(&model), ["default"]);
//!
//! // Train `model` as usual: only the adapters have gradients. Then fold them in and get an
//! // ordinary `Mlp` back (no reparameterization left, inference at base cost).
//! let merged = weight::merge_and_unload(model);
//! assert!(weight::adapter_names(&merged).is_empty());
//! # Ok(())
//! # }
//! ```

mod combine;
mod files;
pub(crate) mod ops;
mod paths;
pub(crate) mod reparam;
pub(crate) mod sites;

pub use combine::add_weighted_adapter;
pub use files::{adapter_state, load_adapter, save_adapter};
pub use ops::{
    adapter_names, delete_adapter, inject_adapter, merge_adapter, merge_and_unload, report,
    safe_merge_adapter, set_active_adapters, set_adapters_disabled, unload, unmerge_adapter,
};
pub use paths::PathMap;
pub use reparam::{AdapterFactors, AdapterMeta, Layout, SetInfo, WeightLora};
pub use sites::{BaseParam, Scan, scan};
