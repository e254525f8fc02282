//! [`PathMap`]: from burn parameter paths to the PyTorch paths PEFT uses.

use regex::Regex;

use crate::error::{LoraError, Result};

/// Rewrites burn parameter paths (`layers.0.mha.query.weight`) into the PyTorch/Hugging Face
/// paths that PEFT files and targets use (`encoder.layer.0.attention.self.query.weight`).
///
/// Rules are `(regex, replacement)` pairs applied in order, each once, to the whole path
/// (replacements may use `$1`-style groups), in the spirit of burn-store's `KeyRemapper`. The
/// path a rule sees has burn's LayerNorm names already turned into PyTorch's (`gamma` →
/// `weight`, `beta` → `bias`). With no rule, paths stay as they are (identity), which is right
/// when the Rust field names equal the PyTorch module names.
///
/// ```
/// use lora_core::weight::PathMap;
///
/// let map = PathMap::new(&[(r"^hidden\.", "mlp.fc_in."), (r"^mix$", "mixer.weight")])?;
/// assert_eq!(map.to_peft("hidden.weight"), "mlp.fc_in.weight");
/// assert_eq!(map.to_peft("mix"), "mixer.weight");
/// assert_eq!(map.to_peft("out.bias"), "out.bias");
/// # Ok::<(), lora_core::LoraError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct PathMap {
    rules: Vec<(Regex, String)>,
}

impl PathMap {
    /// No rewriting.
    pub fn identity() -> Self {
        Self::default()
    }

    /// Rules applied in order; an invalid regex is an error naming it.
    pub fn new(rules: &[(&str, &str)]) -> Result<Self> {
        let rules = rules
            .iter()
            .map(|(pattern, to)| {
                Regex::new(pattern)
                    .map(|re| (re, to.to_string()))
                    .map_err(|e| LoraError::Regex {
                        field: "PathMap".into(),
                        pattern: pattern.to_string(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Self { rules })
    }

    /// The PyTorch path of a burn parameter path.
    pub fn to_peft(&self, burn_path: &str) -> String {
        self.rules
            .iter()
            .fold(burn_path.to_string(), |path, (re, to)| {
                re.replace(&path, to.as_str()).into_owned()
            })
    }
}
