//! [`add_weighted_adapter`] on weight-level adapters: PEFT's `linear`, `cat` and `svd`
//! combinations (the same formulas as [`crate::add_weighted_adapter`]) on any burn module.

use std::collections::HashMap;

use burn::module::{Module, Param};

use crate::combine::{
    Combination, Part, SiteFactors, check_names, combine_site, combined_config, new_rank,
};
use crate::config::{LoraConfig, scale};
use crate::error::{LoraError, Result};
use crate::linalg::{to_mat, to_tensor};

use super::ops::{add_saved_copies, edit_sets};
use super::paths::PathMap;
use super::reparam::{AdapterFactors, AdapterMeta, Layout};
use super::sites::{scan, sync_adapter_grads};

/// Adds adapter `name` combining `adapters` (name and weight each) on every parameter that
/// carries one of them, as PEFT's `add_weighted_adapter` does; it starts inactive. `config` is
/// the first adapter's; the result's config (`r = lora_alpha` = the new rank, targets the
/// combined modules under `map`'s PyTorch paths) is returned for `save_adapter`.
///
/// Linear and embedding weights only: PEFT refuses `target_parameters` adapters here too.
pub fn add_weighted_adapter<M: Module>(
    model: M,
    adapters: &[(&str, f64)],
    name: &str,
    combination: Combination,
    config: &LoraConfig,
    map: &PathMap,
) -> Result<(M, LoraConfig)> {
    let found = scan(&model, map);
    check_names(&found.adapter_names(), adapters, name)?;
    crate::saved::check_combinable(&crate::saved::scan_copies(&model), adapters)?;
    let combination = if adapters.len() == 1 {
        Combination::Linear
    } else {
        combination
    };
    let mut sites = Vec::new();
    let mut modules = Vec::new();
    for (path, lora) in &found.sites {
        let parts = gather(path, lora, adapters)?;
        if parts.is_empty() {
            continue;
        }
        let device = lora.adapters[0].lora_a.lazy_device();
        modules.push(found.module_of(path));
        sites.push(SiteFactors {
            path: path.clone(),
            device,
            parts,
        });
    }
    let rank = new_rank(&sites, adapters, combination)?;
    let new_scale = scale(rank as f64, rank, config.use_rslora);
    let mut combined = HashMap::new();
    for site in &sites {
        let (a, b) = combine_site(site, combination, rank)?;
        // Back to PEFT's orientation: lora_A [r, in], lora_B [out, r].
        let factors = AdapterFactors {
            lora_a: Param::from_tensor(to_tensor(&a.transpose(), &site.device, &site.path)?),
            lora_b: Param::from_tensor(to_tensor(&b.transpose(), &site.device, &site.path)?),
            magnitude: None,
            merge_norm: None,
        };
        combined.insert(site.path.clone(), factors);
    }
    let model = edit_sets(model, None, |path, _, lora| {
        if let Some(factors) = combined.remove(path) {
            lora.adapters.push(factors);
            lora.metas.push(AdapterMeta {
                name: name.to_string(),
                r: rank,
                scale: new_scale,
                active: false,
                merged: false,
                bias: config.bias,
            });
        }
        Ok(false)
    })?;
    let after = scan(&model, map);
    let model = add_saved_copies(model, &after, config, name, false)?;
    Ok((
        sync_adapter_grads(model),
        combined_config(config, rank, modules),
    ))
}

/// The combined adapters' factors on one parameter, in [`crate::add_weighted_adapter`]'s
/// orientation (`a [in, r]`, `b [r, out]`).
fn gather(
    path: &str,
    lora: &super::reparam::WeightLora,
    adapters: &[(&str, f64)],
) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    for (a, w) in adapters {
        let Some(i) = lora.metas.iter().position(|m| m.name == *a) else {
            continue;
        };
        if !matches!(lora.layout, Layout::Linear | Layout::Embedding) {
            return Err(LoraError::Unsupported(format!(
                "add_weighted_adapter on `{path}`: only linear and embedding weights (PEFT refuses target_parameters too)"
            )));
        }
        let f = &lora.adapters[i];
        if f.magnitude.is_some() {
            return Err(LoraError::Unsupported(format!(
                "add_weighted_adapter with the DoRA adapter `{a}` (its magnitude cannot be combined)"
            )));
        }
        let key = format!("{path} ({a})");
        parts.push(Part {
            adapter: a.to_string(),
            weight: *w,
            a: to_mat(f.lora_a.val(), &key)?.transpose(),
            b: to_mat(f.lora_b.val(), &key)?.transpose(),
            scale: lora.metas[i].scale,
        });
    }
    Ok(parts)
}
