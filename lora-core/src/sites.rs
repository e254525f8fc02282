//! [`LoraSites`]: how a model names its LoRA-capable layers.
//!
//! Each site is reached under the dotted module path that equals the Hugging Face module path,
//! so the one name serves targeting, adapter-file keys and the parameter report.

use crate::embedding::LoraEmbedding;
use crate::error::Result;
use crate::layer::LoraLayer;
use crate::linear::LoraLinear;

/// Visitor over the LoRA-capable layers of a module tree, by dotted path.
///
/// Implemented for [`LoraLinear`], [`LoraEmbedding`], `Vec<T>` (index segments, like burn's
/// record paths), `Option<T>` and `Box<T>`. Implement it for your own modules with the
/// [`lora_sites!`](crate::lora_sites) macro.
pub trait LoraSites {
    /// Calls `f(path, layer)` for every site below `prefix`.
    fn visit_lora_sites(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn LoraLayer));

    /// Calls `f(path, layer)` for every site below `prefix`, mutably; stops at the first error.
    fn visit_lora_sites_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut dyn LoraLayer) -> Result<()>,
    ) -> Result<()>;

    /// The Hugging Face name of a burn parameter path (e.g. `classifier.dense.weight`).
    ///
    /// Identity by default, which is right when the Rust field names equal the Hugging Face
    /// module names. Override it when they differ (RoBERTa's `attention.self` cannot be a Rust
    /// field name), so `modules_to_save`, `bias` and adapter files see Hugging Face names.
    fn hf_param_path(&self, burn_path: &str) -> String {
        burn_path.to_string()
    }
}

/// `prefix.name`, or `name` at the root (for [`lora_sites!`](crate::lora_sites) and
/// hand-written [`LoraSites`] impls).
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl LoraSites for LoraLinear {
    fn visit_lora_sites(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn LoraLayer)) {
        f(prefix, self)
    }
    fn visit_lora_sites_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut dyn LoraLayer) -> Result<()>,
    ) -> Result<()> {
        f(prefix, self)
    }
}

impl LoraSites for LoraEmbedding {
    fn visit_lora_sites(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn LoraLayer)) {
        f(prefix, self)
    }
    fn visit_lora_sites_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut dyn LoraLayer) -> Result<()>,
    ) -> Result<()> {
        f(prefix, self)
    }
}

impl<T: LoraSites> LoraSites for Vec<T> {
    fn visit_lora_sites(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn LoraLayer)) {
        for (i, item) in self.iter().enumerate() {
            item.visit_lora_sites(&join_path(prefix, &i.to_string()), f);
        }
    }
    fn visit_lora_sites_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut dyn LoraLayer) -> Result<()>,
    ) -> Result<()> {
        for (i, item) in self.iter_mut().enumerate() {
            item.visit_lora_sites_mut(&join_path(prefix, &i.to_string()), f)?;
        }
        Ok(())
    }
}

impl<T: LoraSites> LoraSites for Option<T> {
    fn visit_lora_sites(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn LoraLayer)) {
        if let Some(item) = self {
            item.visit_lora_sites(prefix, f);
        }
    }
    fn visit_lora_sites_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut dyn LoraLayer) -> Result<()>,
    ) -> Result<()> {
        match self {
            Some(item) => item.visit_lora_sites_mut(prefix, f),
            None => Ok(()),
        }
    }
}

impl<T: LoraSites> LoraSites for Box<T> {
    fn visit_lora_sites(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn LoraLayer)) {
        (**self).visit_lora_sites(prefix, f)
    }
    fn visit_lora_sites_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut dyn LoraLayer) -> Result<()>,
    ) -> Result<()> {
        (**self).visit_lora_sites_mut(prefix, f)
    }
}

/// Implements [`LoraSites`] for a struct by listing the fields that hold sites (directly or
/// further down). A field is reached under its own name, or under a given path segment with
/// `field => "name"` (when the Hugging Face name differs from the Rust field name).
///
/// ```
/// use burn::prelude::*;
/// use lora_core::{LoraLinear, lora_sites};
///
/// #[derive(Module, Debug)]
/// struct Block { fc1: LoraLinear, fc2: LoraLinear }
/// lora_sites!(Block { fc1, fc2 });
///
/// #[derive(Module, Debug)]
/// struct Net { layers: Vec<Block>, head: LoraLinear }
/// lora_sites!(Net { layers, head => "classifier" });
/// // Sites: layers.0.fc1, layers.0.fc2, ..., classifier
/// ```
#[macro_export]
macro_rules! lora_sites {
    ($ty:ty { $($field:ident $(=> $name:literal)?),* $(,)? }) => {
        impl $crate::LoraSites for $ty {
            fn visit_lora_sites(
                &self,
                prefix: &str,
                f: &mut dyn FnMut(&str, &dyn $crate::LoraLayer),
            ) {
                $(
                    $crate::LoraSites::visit_lora_sites(
                        &self.$field,
                        &$crate::sites::join_path(prefix, $crate::lora_sites!(@name $field $($name)?)),
                        f,
                    );
                )*
            }
            fn visit_lora_sites_mut(
                &mut self,
                prefix: &str,
                f: &mut dyn FnMut(&str, &mut dyn $crate::LoraLayer) -> $crate::Result<()>,
            ) -> $crate::Result<()> {
                $(
                    $crate::LoraSites::visit_lora_sites_mut(
                        &mut self.$field,
                        &$crate::sites::join_path(prefix, $crate::lora_sites!(@name $field $($name)?)),
                        f,
                    )?;
                )*
                Ok(())
            }
        }
    };
    (@name $field:ident $name:literal) => { $name };
    (@name $field:ident) => { stringify!($field) };
}
