//! # lora-core: LoRA for burn
//!
//! LoRA (Hu et al. 2021, arXiv 2106.09685) freezes a pretrained weight `W0` and trains a
//! low-rank update: `h = x·W0 + (alpha/r)·(dropout(x)·A)·B`, with `A: [d_in, r]`, `B: [r, d_out]`
//! and `B = 0` at the start, so training starts exactly at the base model. After training the
//! update can be merged (`W0 + (alpha/r)·A·B`) so inference costs nothing extra.
//!
//! This crate gives you:
//! - [`LoraLinear`] and [`LoraEmbedding`]: burn modules with named adapters, computed in factored
//!   form (no weight-sized gradient), merge/unmerge that are exact inverses;
//! - [`LoraConfig`]: PEFT's config, field for field, read from and written to
//!   `adapter_config.json`, with PEFT's target rules (suffix lists, regexes,
//!   `layers_to_transform`, `rank_pattern`/`alpha_pattern`, rsLoRA, `bias`, `modules_to_save`);
//! - [`inject_adapter`]: attaches adapters to any model that names its sites with
//!   [`LoraSites`] and freezes the rest; [`LoraModelExt`] merges, switches and deletes them;
//! - [`save_adapter`] / [`load_adapter`]: PEFT's adapter files, both directions;
//! - [`ParamReport`]: PEFT's `trainable params: X || all params: Y || trainable%: Z`.
//!
//! Modules have no backend type parameter (burn 0.22): the same code runs on
//! `Device::flex()`, `Device::ndarray()` and wgpu; see [`device`].
//!
//! ## Making your own model LoRA-capable
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

pub mod adapter;
pub mod config;
pub mod device;
pub mod embedding;
pub mod error;
pub mod io;
pub mod layer;
pub mod linear;
pub mod model;
pub mod report;
pub mod sites;

pub use adapter::{
    ADAPTER_FILE, KEY_PREFIX, StateDictReport, adapter_state, apply_adapter_state,
    export_state_dict, load_adapter, load_state_dict, read_safetensors, save_adapter,
    save_safetensors,
};
pub use config::{
    AdapterSpec, BiasMode, CONFIG_FILE, InitLoraWeights, LoraConfig, OneOrMany, TargetModules,
};
pub use embedding::{EmbeddingAdapter, LoraEmbedding, LoraEmbeddingConfig};
pub use error::{LoraError, Result};
pub use layer::{Factors, LayerKind, LoraLayer};
pub use linear::{LinearAdapter, LoraLinear, LoraLinearConfig, linear_rows};
pub use model::{
    LoraModelExt, ParamInfo, SliceFn, TrainPolicy, adapted_paths, apply_trainability,
    inject_adapter, inject_adapter_with, select_targets, site_paths, stable_id, visit_params,
};
pub use report::{ModuleParams, ParamReport};
pub use sites::{LoraSites, join_path};
