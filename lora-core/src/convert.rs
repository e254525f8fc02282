//! Saving a PiSSA or OLoRA adapter as a plain LoRA for the unmodified base (PEFT's
//! `save_pretrained(..., path_initial_model_for_weight_conversion=...)`).
//!
//! Training moved the factors from `(A₀, B₀)` to `(A, B)` on the residual base
//! `W − s·A₀·B₀`, so relative to the original `W` the update is `s·(A·B − A₀·B₀)`: a rank-`2r`
//! LoRA with `A' = [A  A₀]` and `B' = [B; −B₀]` (in PEFT's orientation `lora_A = [A; A₀]`,
//! `lora_B = [B  −B₀]`), `r` and `lora_alpha` doubled so the scale stays.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;

use crate::adapter::{ADAPTER_FILE, MAGNITUDE, adapter_state, read_adapter_dir, unexpected_tensor};
use crate::config::{CONFIG_FILE, InitLoraWeights, LoraConfig};
use crate::error::{LoraError, Result};
use crate::io::{HostTensor, serialize_safetensors, write_atomic};
use crate::sites::LoraSites;

/// Writes adapter `name` (trained from a PiSSA or OLoRA start) to `dir` as a plain LoRA that
/// works on the original base weights, anywhere (PEFT included).
///
/// `initial` is the adapter saved right after injection with `init_lora_weights: true` (e.g.
/// `save_adapter(&model, &config.clone().with_init(InitLoraWeights::Default), name, initial)`),
/// PEFT's recipe for `path_initial_model_for_weight_conversion`; its factors are `A₀`, `B₀`.
pub fn save_adapter_converted<M: Module + LoraSites>(
    model: &M,
    config: &LoraConfig,
    name: &str,
    dir: impl AsRef<Path>,
    initial: impl AsRef<Path>,
) -> Result<()> {
    let (tensors, config) = adapter_state(model, config, name)?;
    let (_, initial, source) = read_adapter_dir(initial.as_ref())?;
    let tensors = concat_initial(tensors, &initial, &source)?;
    let config = doubled(config)?;
    let dir = dir.as_ref();
    let weights = dir.join(ADAPTER_FILE);
    let bytes = serialize_safetensors(&tensors, &[("format", "pt")], &weights)?;
    write_atomic(&weights, &bytes)?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json()?.as_bytes())
}

/// `lora_A` keys get `A₀` as extra rows, `lora_B` keys `−B₀` as extra columns (embeddings:
/// `lora_embedding_A` / `_B` the same way); other tensors stay.
fn concat_initial(
    tensors: Vec<(String, HostTensor)>,
    initial: &HashMap<String, HostTensor>,
    source: &Path,
) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::with_capacity(tensors.len());
    for (key, t) in tensors {
        if key.ends_with(MAGNITUDE) {
            return Err(LoraError::Unsupported(
                "converting a DoRA adapter (its magnitude has no rank to double)".into(),
            ));
        }
        let is_a = key.ends_with("lora_A.weight") || key.ends_with("lora_embedding_A");
        let is_b = key.ends_with("lora_B.weight") || key.ends_with("lora_embedding_B");
        if !(is_a || is_b) {
            out.push((key, t));
            continue;
        }
        let t0 = initial.get(&key).ok_or_else(|| LoraError::MissingTensor {
            key: key.clone(),
            file: source.to_path_buf(),
        })?;
        if t0.shape != t.shape {
            return Err(unexpected_tensor(
                &key,
                source,
                &format!(
                    "initial factor is {:?}, the trained one {:?}",
                    t0.shape, t.shape
                ),
            ));
        }
        let joined = if is_a {
            stack_rows(&t, t0)
        } else {
            side_by_side_negated(&t, t0)
        };
        out.push((key, joined));
    }
    Ok(out)
}

/// `[t; t0]` for `[r, n]` matrices.
fn stack_rows(t: &HostTensor, t0: &HostTensor) -> HostTensor {
    let mut data = t.data.clone();
    data.extend_from_slice(&t0.data);
    HostTensor {
        shape: vec![2 * t.shape[0], t.shape[1]],
        data,
    }
}

/// `[t  −t0]` for `[n, r]` matrices.
fn side_by_side_negated(t: &HostTensor, t0: &HostTensor) -> HostTensor {
    let (n, r) = (t.shape[0], t.shape[1]);
    let mut data = Vec::with_capacity(2 * n * r);
    for i in 0..n {
        data.extend_from_slice(&t.data[i * r..(i + 1) * r]);
        data.extend(t0.data[i * r..(i + 1) * r].iter().map(|v| -v));
    }
    HostTensor {
        shape: vec![n, 2 * r],
        data,
    }
}

/// PEFT's config for the converted adapter: `r` (and `rank_pattern`) doubled, `lora_alpha`
/// (and `alpha_pattern`) doubled, or times √2 with rsLoRA, so every scale stays; plain init.
fn doubled(mut c: LoraConfig) -> Result<LoraConfig> {
    if c.use_rslora && !(c.rank_pattern.is_empty() && c.alpha_pattern.is_empty()) {
        return Err(LoraError::Unsupported(
            "converting an rsLoRA adapter with rank_pattern/alpha_pattern (PEFT refuses it too)"
                .into(),
        ));
    }
    c.r *= 2;
    c.lora_alpha *= if c.use_rslora { 2f64.sqrt() } else { 2.0 };
    let mut ranks = c.rank_pattern.clone();
    for (k, v) in c.rank_pattern.iter() {
        ranks.insert(k, 2 * v);
    }
    let mut alphas = c.alpha_pattern.clone();
    for (k, v) in c.alpha_pattern.iter() {
        alphas.insert(k, 2.0 * v);
    }
    c.rank_pattern = ranks;
    c.alpha_pattern = alphas;
    c.init_lora_weights = InitLoraWeights::Default;
    Ok(c)
}
