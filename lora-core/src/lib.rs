//! # lora-core: LoRA for burn
//!
//! LoRA (Hu et al. 2021, arXiv 2106.09685) freezes a pretrained weight `W0` and trains a
//! low-rank update: `h = x·W0 + (alpha/r)·(dropout(x)·A)·B`, with `A: [d_in, r]`, `B: [r, d_out]`
//! and `B = 0` at the start, so training starts exactly at the base model. After training the
//! update can be merged (`W0 + (alpha/r)·A·B`) so inference costs nothing extra.
//!
//! This crate gives you:
//! - [`weight`]: LoRA and DoRA on **any** burn module, unmodified (burn-nn `Linear` and
//!   `Embedding` weights found by the module visitor, or any 2-D/3-D parameter with
//!   `target_parameters`), through burn's public `Reparameterizer` API; PEFT files through a
//!   [`PathMap`](weight::PathMap);
//! - [`LoraLinear`] and [`LoraEmbedding`]: the factored fast path for models written for this
//!   library (no weight-sized gradient, input dropout), merge/unmerge that are exact inverses;
//! - [`LoraConfig`]: PEFT's config, field for field, read from and written to
//!   `adapter_config.json`, with PEFT 0.21.2's selection rules ([`targeting`]: suffix lists,
//!   regexes with Python's meaning, `layers_to_transform`, `rank_pattern`/`alpha_pattern`,
//!   rsLoRA, `bias`, `modules_to_save`, `all-linear`), checked against PEFT itself; LoRA variants
//!   it lacks are refused by name;
//! - [`inject_adapter`]: attaches adapters to a model that names its sites with [`LoraSites`]
//!   and freezes the rest; [`LoraModelExt`] merges (also `safe_merge`), switches and deletes
//!   them with PEFT's multi-adapter rules; [`add_weighted_adapter`] combines them;
//! - [`save_adapter`] / [`load_adapter`]: PEFT's adapter files (safetensors or `.bin`), both
//!   directions;
//! - [`saved`]: `modules_to_save` as PEFT keeps it, on both paths: the original module frozen,
//!   one trained copy per adapter, the active adapter's copy in use;
//! - [`ParamReport`]: PEFT's `trainable params: X || all params: Y || trainable%: Z`.
//!
//! Modules have no backend type parameter (burn 0.22): the same code runs on
//! `Device::flex()`, `Device::ndarray()` and wgpu; see [`device`].
//!
//! ## Your own burn model, unchanged
//!
//! ```
//! use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
//! use burn::prelude::*;
//! use lora_core::LoraConfig;
//! use lora_core::weight::{self, PathMap};
//!
//! /// Plain burn-nn: no LoRA types, no macro.
//! #[derive(Module, Debug)]
//! struct Net {
//!     emb: Embedding,
//!     fc: Linear,
//! }
//!
//! # fn main() -> Result<(), lora_core::LoraError> {
//! let device = Device::flex();
//! let net = Net {
//!     emb: EmbeddingConfig::new(100, 16).init(&device),
//!     fc: LinearConfig::new(16, 2).init(&device),
//! };
//! let ids = Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
//! let before = net.fc.forward(net.emb.forward(ids.clone()));
//!
//! // PEFT's config and target rules, on burn's module paths (`fc`), or on the PyTorch paths a
//! // PathMap gives them.
//! let config = LoraConfig::new(4, 8.0, &["fc"]);
//! let net = weight::inject_adapter(net, &config, "default", &PathMap::identity())?;
//! // B starts at zero: the output is unchanged; only the adapter trains.
//! let after = net.fc.forward(net.emb.forward(ids));
//! after.into_data().assert_approx_eq::<f32>(&before.into_data(), Default::default());
//! let report = weight::report(&net, &config, &PathMap::identity());
//! assert_eq!(report.trainable, 4 * 16 + 2 * 4);
//!
//! // After training: fold the adapter in and get a plain `Net` back.
//! let net = weight::merge_and_unload(net);
//! # let _ = net;
//! # Ok(())
//! # }
//! ```
//!
//! ## The factored fast path: models written for lora-burn
//!
//! Use [`LoraLinear`] where you would use `burn::nn::Linear`, name the fields that hold sites
//! with [`lora_sites!`], and inject:
//!
//! ```
//! use burn::prelude::*;
//! use lora_core::{LoraConfig, LoraLinear, LoraLinearConfig, ParamReport, inject_adapter, lora_sites};
//!
//! #[derive(Module, Debug)]
//! struct Mlp {
//!     fc1: LoraLinear,
//!     fc2: LoraLinear,
//! }
//! lora_sites!(Mlp { fc1, fc2 });
//!
//! impl Mlp {
//!     fn new(device: &Device) -> Self {
//!         Self {
//!             fc1: LoraLinearConfig::new(16, 32).init(device),
//!             fc2: LoraLinearConfig::new(32, 4).init(device),
//!         }
//!     }
//!     /// `[batch, 16]` → `[batch, 4]`
//!     fn forward(&self, x: Tensor<2>) -> Tensor<2> {
//!         self.fc2.forward(burn::tensor::activation::relu(self.fc1.forward(x)))
//!     }
//! }
//!
//! # fn main() -> Result<(), lora_core::LoraError> {
//! let device = Device::flex();
//! let model = Mlp::new(&device);
//! let x = Tensor::<2>::ones([2, 16], &device);
//! let before = model.forward(x.clone());
//!
//! let config = LoraConfig::new(4, 8.0, &["fc1"]);
//! let model = inject_adapter(model, &config, "default")?;
//! // B starts at zero: the output is unchanged.
//! let after = model.forward(x);
//! after.into_data().assert_approx_eq::<f32>(&before.into_data(), Default::default());
//!
//! let report = ParamReport::new(&model, &config);
//! assert_eq!(report.trainable, 4 * 16 + 4 * 32);
//! println!("{}", report.summary());
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod activation;
pub mod adapter;
mod base_init;
pub mod combine;
pub mod config;
pub mod convert;
pub mod device;
mod dropout;
pub mod embedding;
pub mod error;
pub mod hash;
pub mod io;
mod kernel;
pub mod layer;
mod linalg;
pub mod linear;
pub mod model;
mod norm;
mod pyregex;
pub mod report;
pub mod saved;
pub mod sites;
mod softmax;
pub mod targeting;
pub mod weight;

pub use activation::{gelu, gelu_tanh};
pub use adapter::{
    ADAPTER_FILE, KEY_PREFIX, MAGNITUDE, StateDictReport, adapter_state, apply_adapter_state,
    export_state_dict, load_adapter, load_state_dict, read_safetensors, save_adapter,
    save_safetensors,
};
pub use combine::{Combination, add_weighted_adapter};
pub use config::{
    AdapterSpec, BiasMode, CONFIG_FILE, InitLoraWeights, LoraConfig, OneOrMany, PatternMap,
    TargetModules,
};
pub use convert::save_adapter_converted;
pub use dropout::dropout;
pub use embedding::{
    EmbeddingAdapter, LoraEmbedding, LoraEmbeddingConfig, rows_per_block, rows_within,
};
pub use error::{LoraError, Result};
pub use layer::{Factors, LayerKind, LoraLayer};
pub use linear::{LinearAdapter, LoraLinear, LoraLinearConfig, linear_rows};
pub use model::{
    LoraModelExt, ParamInfo, RowBlock, SavedRole, TrainPolicy, adapted_paths, apply_trainability,
    check_sites_listed, inject_adapter, inject_adapter_with, select_targets, site_paths,
    visit_params,
};
pub use norm::layer_norm;
pub use report::{ModuleParams, ParamReport};
pub use sites::LoraSites;
pub use softmax::softmax;
