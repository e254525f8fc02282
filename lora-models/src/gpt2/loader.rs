//! Loading GPT-2 from a local Hugging Face directory.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::*;
use lora_core::io::HostTensor;

use super::config::Gpt2Config;
use super::model::Gpt2LmHeadModel;
use crate::error::{ModelError, Result};
use crate::hf::{check_untied_head, read_weights, unread_tensor};

/// Keys that are buffers or tied copies, not parameters: skipped when loading.
fn is_ignored(key: &str) -> bool {
    key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias") || key == "lm_head.weight"
}

/// Puts every key under `transformer.` (checkpoints of `GPT2Model` have no prefix, those of
/// `GPT2LMHeadModel` do) and drops buffers. Errors when the keys are another architecture's.
pub fn normalize_keys(
    state: HashMap<String, HostTensor>,
    path: &Path,
) -> Result<HashMap<String, HostTensor>> {
    let mut out = HashMap::with_capacity(state.len());
    for (k, v) in state {
        if is_ignored(&k) {
            continue;
        }
        // The body's keys go under `transformer.`; other heads' keep their names.
        let body = k.strip_prefix("transformer.").unwrap_or(&k);
        let is_body = ["wte.", "wpe.", "h.", "ln_f."]
            .iter()
            .any(|p| body.starts_with(p));
        let key = if is_body || k.starts_with("transformer.") {
            format!("transformer.{body}")
        } else {
            k.clone()
        };
        out.insert(key, v);
    }
    if !out.contains_key("transformer.wte.weight") {
        let foreign = [
            "bert.",
            "roberta.",
            "encoder.layer",
            "model.layers",
            "gpt_neox.",
        ];
        let hint = out
            .keys()
            .find_map(|k| foreign.iter().find(|f| k.contains(*f)))
            .map(|f| f.trim_end_matches('.').to_string());
        return Err(match hint {
            Some(found) => ModelError::WrongArchitecture {
                path: path.to_path_buf(),
                expected: "gpt2".into(),
                found,
            },
            None => ModelError::MissingTensor {
                path: path.to_path_buf(),
                key: "wte.weight".into(),
            },
        });
    }
    Ok(out)
}

impl Gpt2LmHeadModel {
    /// Loads `config.json` and the weights (`model.safetensors`, sharded safetensors or
    /// `pytorch_model.bin`; f16/bf16 cast to f32; with or without the `transformer.` prefix;
    /// `Conv1D` weights kept `[in, out]`). A missing or mis-shaped tensor is an error naming it.
    /// Tensors of other classes' heads (e.g. `score`) are ignored; an unread tensor of the body,
    /// or an untied LM head, is an error naming it.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<(Self, Gpt2Config)> {
        let dir = dir.as_ref();
        let config = Gpt2Config::load(dir)?;
        let (path, state) = read_weights(dir)?;
        let is_wte = |k: &str| k == "wte.weight" || k == "transformer.wte.weight";
        check_untied_head(
            config.tie_word_embeddings,
            &state,
            "lm_head.weight",
            is_wte,
            &path,
        )?;
        let state = normalize_keys(state, &path)?;
        // The model is built from the config before the weights arrive: a layer count the
        // checkpoint does not back would allocate for nothing (or abort, for a corrupt count).
        let last = format!("transformer.h.{}.ln_1.weight", config.n_layer - 1);
        if !state.contains_key(&last) {
            return Err(ModelError::MissingTensor { path, key: last });
        }
        // Parameters are lazy: this allocates nothing until the weights replace them.
        let model = config.init(device);
        // GPT-2's Conv1D stores [in, out], burn's layout: no transpose (fan_in_fan_out).
        let (model, report) = lora_core::load_state_dict(model, state, true)?;
        if let Some(key) = report.missing.first() {
            return Err(ModelError::MissingTensor {
                path,
                key: key.clone(),
            });
        }
        // A body tensor nothing reads is an architecture option this model lacks (heads of
        // other classes, e.g. `score`, sit outside `transformer.` and are fine to skip).
        if let Some(key) = report.unused.iter().find(|k| k.starts_with("transformer.")) {
            return Err(unread_tensor(path, key));
        }
        Ok((model, config))
    }
}
