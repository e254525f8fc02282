//! [`LoraConfig`]: PEFT's `LoraConfig`, field for field, with its target-matching rules.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};

/// File name PEFT uses for the adapter config.
pub const CONFIG_FILE: &str = "adapter_config.json";

/// `target_modules` / `exclude_modules`: a list (each entry matches a module path exactly or as a
/// dotted suffix) or one string (a regular expression that must match the whole path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Exact names or dotted suffixes, e.g. `["c_attn"]` matches `transformer.h.0.attn.c_attn`.
    List(Vec<String>),
    /// A regex matched against the full module path (Python's `re.fullmatch`); the special
    /// value `all-linear` selects every linear site.
    Regex(String),
}

/// An integer or a list of integers (PEFT's `layers_to_transform`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list of values.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// How adapter factors are initialised (PEFT's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitLoraWeights {
    /// `true` (PEFT's default): A kaiming-uniform(a = √5), i.e. U(±1/√d_in); B = 0.
    /// For embeddings: A = 0, B ~ N(0, 1).
    #[default]
    Default,
    /// `"gaussian"`: A ~ N(0, (1/r)²); B = 0. Embeddings are initialised as with `true`.
    Gaussian,
    /// `false`: B is random as well, so the adapter changes the output from the start (tests).
    /// Embeddings: both factors ~ N(0, 1).
    Random,
}

impl Serialize for InitLoraWeights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            InitLoraWeights::Default => s.serialize_bool(true),
            InitLoraWeights::Random => s.serialize_bool(false),
            InitLoraWeights::Gaussian => s.serialize_str("gaussian"),
        }
    }
}

impl<'de> Deserialize<'de> for InitLoraWeights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Self::Default),
            Raw::Bool(false) => Ok(Self::Random),
            Raw::Str(s) if s == "gaussian" => Ok(Self::Gaussian),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "init_lora_weights \"{s}\" is not supported (supported: true, false, \"gaussian\")"
            ))),
        }
    }
}

/// Which biases train besides the adapters (PEFT's `bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BiasMode {
    /// No bias trains.
    #[default]
    None,
    /// Every bias of the model trains (LayerNorm biases included, as in PEFT).
    All,
    /// Only the biases of layers that carry an adapter train.
    LoraOnly,
}

impl<'de> Deserialize<'de> for BiasMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Hand-written so the message names the field (serde's would only name the variant).
        match String::deserialize(d)?.as_str() {
            "none" => Ok(Self::None),
            "all" => Ok(Self::All),
            "lora_only" => Ok(Self::LoraOnly),
            other => Err(serde::de::Error::custom(format!(
                "bias \"{other}\" is not one of \"none\", \"all\", \"lora_only\""
            ))),
        }
    }
}

/// PEFT's LoRA configuration. Field names, JSON form and defaults are PEFT's, so an
/// `adapter_config.json` written by PEFT reads here and ours reads in PEFT. Unknown keys are
/// ignored (forward compatibility); keys for features we do not implement are rejected by
/// [`LoraConfig::validate`] when they are switched on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Always `"LORA"`.
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    /// Rank of the update (default 8).
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scaling numerator: the adapter output is multiplied by `lora_alpha / r` (default 8).
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout probability on the adapter input, in `[0, 1)` (default 0).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which modules get an adapter. `None` lets the model choose its defaults.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Modules never adapted, matched like `target_modules`.
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// Only adapt modules in these layer indices (list targets only, as in PEFT).
    #[serde(default)]
    pub layers_to_transform: Option<OneOrMany<usize>>,
    /// Name of the layer list in module paths (e.g. `h` or `layer`), used with `layers_to_transform`.
    #[serde(default)]
    pub layers_pattern: Option<OneOrMany<String>>,
    /// Per-module rank overrides: key is a regex matched against the end of the module path.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides, matched like `rank_pattern`.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// rsLoRA: scale by `lora_alpha / sqrt(r)` instead of `lora_alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// How the factors are initialised.
    #[serde(default)]
    pub init_lora_weights: InitLoraWeights,
    /// Which biases train.
    #[serde(default)]
    pub bias: BiasMode,
    /// Modules trained fully and saved with the adapter (e.g. a classifier head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The model stores linear weights as `[in, out]` (GPT-2's `Conv1D`). Decides the layout of
    /// full weights saved under `modules_to_save`; LoRA factors are the same either way.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// PEFT task type, e.g. `CAUSAL_LM` or `SEQ_CLS`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Written as PEFT writes it; has no effect here.
    #[serde(default)]
    pub inference_mode: bool,
    /// DoRA: not supported, must be `false`.
    #[serde(default)]
    pub use_dora: bool,
    /// Bias on lora_B: not supported, must be `false`.
    #[serde(default)]
    pub lora_bias: bool,
    /// Layer replication: not supported, must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_replication: Option<serde_json::Value>,
    /// LoRA on raw parameters: not supported, must be absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_parameters: Option<serde_json::Value>,
    /// Trainable token indices: not supported, must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_token_indices: Option<serde_json::Value>,
    /// The PEFT version that wrote the file, if any (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft_version: Option<String>,
    /// Base-model revision (informational).
    #[serde(default)]
    pub revision: Option<String>,
}

fn default_peft_type() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            peft_type: default_peft_type(),
            r: default_r(),
            lora_alpha: default_alpha(),
            lora_dropout: 0.0,
            target_modules: None,
            exclude_modules: None,
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            use_rslora: false,
            init_lora_weights: InitLoraWeights::Default,
            bias: BiasMode::None,
            modules_to_save: None,
            fan_in_fan_out: false,
            task_type: None,
            base_model_name_or_path: None,
            inference_mode: false,
            use_dora: false,
            lora_bias: false,
            layer_replication: None,
            target_parameters: None,
            trainable_token_indices: None,
            peft_version: None,
            revision: None,
        }
    }
}

/// Rank, alpha and resulting scale of one adapted module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterSpec {
    /// Rank of the update.
    pub r: usize,
    /// The alpha used for this module.
    pub alpha: f64,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f64,
    /// Dropout on the adapter input.
    pub dropout: f64,
    /// Factor initialisation.
    pub init: InitLoraWeights,
    /// Weight-decomposed LoRA (DoRA, `use_dora`): a trained per-output magnitude.
    pub dora: bool,
}

impl LoraConfig {
    /// A config with rank `r`, `lora_alpha` and list targets; everything else at PEFT's defaults.
    pub fn new(r: usize, lora_alpha: f64, targets: &[&str]) -> Self {
        Self {
            r,
            lora_alpha,
            target_modules: Some(TargetModules::List(
                targets.iter().map(|s| s.to_string()).collect(),
            )),
            ..Self::default()
        }
    }

    /// Sets `lora_dropout`.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.lora_dropout = p;
        self
    }

    /// Sets `use_rslora`.
    pub fn with_rslora(mut self, on: bool) -> Self {
        self.use_rslora = on;
        self
    }

    /// Sets `init_lora_weights`.
    pub fn with_init(mut self, init: InitLoraWeights) -> Self {
        self.init_lora_weights = init;
        self
    }

    /// Sets `bias`.
    pub fn with_bias(mut self, bias: BiasMode) -> Self {
        self.bias = bias;
        self
    }

    /// Sets `modules_to_save`.
    pub fn with_modules_to_save(mut self, modules: &[&str]) -> Self {
        self.modules_to_save = Some(modules.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Reads `adapter_config.json` (a file, or a directory holding one) and validates it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join(CONFIG_FILE);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| LoraError::Io {
            action: "cannot read adapter config",
            path: path.clone(),
            source,
        })?;
        let config = Self::from_json(&text).map_err(|e| match e {
            LoraError::Json { source, .. } => LoraError::Json { path, source },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates the JSON text of an `adapter_config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| LoraError::Json {
                path: CONFIG_FILE.into(),
                source,
            })?;
        // PEFT's only hard requirement; a missing peft_type means this is not an adapter config.
        match value.get("peft_type").and_then(|v| v.as_str()) {
            Some("LORA") => {}
            Some(other) => {
                return Err(LoraError::Unsupported(format!(
                    "peft_type \"{other}\" (only \"LORA\" adapters are supported)"
                )));
            }
            None => {
                return Err(LoraError::config(
                    "peft_type",
                    "is missing (expected \"LORA\")",
                ));
            }
        }
        let config: Self = serde_json::from_value(value).map_err(|source| LoraError::Json {
            path: CONFIG_FILE.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The JSON text PEFT would write (sorted keys, two-space indent, `inference_mode: true`).
    pub fn to_json(&self) -> Result<String> {
        let mut c = self.clone();
        c.inference_mode = true;
        // serde_json::Value's map is sorted (BTreeMap), which gives PEFT's sort_keys=True order.
        let value = serde_json::to_value(&c).map_err(|source| LoraError::Json {
            path: CONFIG_FILE.into(),
            source,
        })?;
        serde_json::to_string_pretty(&value).map_err(|source| LoraError::Json {
            path: CONFIG_FILE.into(),
            source,
        })
    }

    /// Checks every value PEFT would reject, and rejects features lora-burn lacks.
    pub fn validate(&self) -> Result<()> {
        if self.peft_type != "LORA" {
            return Err(LoraError::config("peft_type", "must be \"LORA\""));
        }
        if self.r == 0 {
            return Err(LoraError::config("r", "must be a positive integer, got 0"));
        }
        if !self.lora_alpha.is_finite() {
            return Err(LoraError::config(
                "lora_alpha",
                format!("must be finite, got {}", self.lora_alpha),
            ));
        }
        if !(self.lora_dropout.is_finite() && (0.0..1.0).contains(&self.lora_dropout)) {
            return Err(LoraError::config(
                "lora_dropout",
                format!("must be in [0, 1), got {}", self.lora_dropout),
            ));
        }
        for (k, &r) in &self.rank_pattern {
            if r == 0 {
                return Err(LoraError::config("rank_pattern", format!("`{k}`: rank 0")));
            }
            compile("rank_pattern", &pattern_regex(k))?;
        }
        for (k, a) in &self.alpha_pattern {
            if !a.is_finite() {
                return Err(LoraError::config(
                    "alpha_pattern",
                    format!("`{k}`: alpha {a} is not finite"),
                ));
            }
            compile("alpha_pattern", &pattern_regex(k))?;
        }
        for (field, t) in [
            ("target_modules", &self.target_modules),
            ("exclude_modules", &self.exclude_modules),
        ] {
            if let Some(TargetModules::Regex(p)) = t
                && p != ALL_LINEAR
            {
                compile(field, &format!("^(?:{p})$"))?;
            }
        }
        if self.layers_to_transform.is_some()
            && matches!(self.target_modules, Some(TargetModules::Regex(_)))
        {
            return Err(LoraError::config(
                "layers_to_transform",
                "cannot be used when target_modules is a regex string (as in PEFT)",
            ));
        }
        if let Some(p) = &self.layers_pattern {
            if self.layers_to_transform.is_none() {
                return Err(LoraError::config(
                    "layers_pattern",
                    "is only meaningful together with layers_to_transform",
                ));
            }
            for pat in p.to_vec() {
                compile("layers_pattern", &format!(r"^.*\.{pat}\.(\d+)\."))?;
            }
        }
        if self.lora_bias {
            return Err(LoraError::Unsupported("lora_bias = true".into()));
        }
        if self
            .layer_replication
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err(LoraError::Unsupported("layer_replication".into()));
        }
        self.target_parameter_list()?;
        if self
            .trainable_token_indices
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err(LoraError::Unsupported("trainable_token_indices".into()));
        }
        Ok(())
    }

    /// PEFT's `target_parameters` (parameter paths, matched exactly or as a dotted suffix);
    /// empty when absent. Anything but a list of strings is an error.
    pub fn target_parameter_list(&self) -> Result<Vec<String>> {
        let bad = || LoraError::config("target_parameters", "must be a list of parameter names");
        match &self.target_parameters {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    /// Rejects what only weight-level adapters ([`weight`](crate::weight)) implement, for the
    /// factored [`LoraLinear`](crate::LoraLinear) / [`LoraEmbedding`](crate::LoraEmbedding) path.
    pub fn check_factored(&self) -> Result<()> {
        if !self.target_parameter_list()?.is_empty() {
            return Err(LoraError::Unsupported(
                "target_parameters on LoraLinear/LoraEmbedding sites (use lora_core::weight)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether the module at `path` gets an adapter, with PEFT's rules: exclusions first; a regex
    /// string must match the whole path; a list entry matches exactly or as a dotted suffix, and
    /// only suffix matches are then filtered by `layers_to_transform`.
    ///
    /// `is_linear` tells the `all-linear` shorthand which sites qualify.
    pub fn is_target(&self, path: &str, is_linear: bool) -> Result<bool> {
        if let Some(ex) = &self.exclude_modules
            && matches_targets("exclude_modules", ex, path, is_linear)?
        {
            return Ok(false);
        }
        let Some(targets) = &self.target_modules else {
            return Ok(false);
        };
        match targets {
            TargetModules::Regex(_) => matches_targets("target_modules", targets, path, is_linear),
            TargetModules::List(list) => {
                if list.iter().any(|t| t == path) {
                    return Ok(true);
                }
                if !list.iter().any(|t| path.ends_with(&format!(".{t}"))) {
                    return Ok(false);
                }
                let Some(layers) = &self.layers_to_transform else {
                    return Ok(true);
                };
                let layers = layers.to_vec();
                if layers.is_empty() {
                    return Ok(true);
                }
                let patterns = match &self.layers_pattern {
                    Some(p) if !p.to_vec().is_empty() => p
                        .to_vec()
                        .into_iter()
                        .map(|p| format!(r"^.*\.{p}\.(\d+)\."))
                        .collect(),
                    _ => vec![r"^.*\.[^.]*\.(\d+)\.".to_string()],
                };
                for pat in patterns {
                    let re = compile("layers_pattern", &pat)?;
                    if let Some(c) = re.captures(path) {
                        let idx: Option<usize> = c.get(1).and_then(|m| m.as_str().parse().ok());
                        return Ok(idx.is_some_and(|i| layers.contains(&i)));
                    }
                }
                Ok(false)
            }
        }
    }

    /// Rank, alpha and scale for the module at `path`, after `rank_pattern` / `alpha_pattern`.
    pub fn spec_for(&self, path: &str) -> Result<AdapterSpec> {
        let r = match pattern_lookup("rank_pattern", self.rank_pattern.keys(), path)? {
            Some(k) => self.rank_pattern[k],
            None => self.r,
        };
        let alpha = match pattern_lookup("alpha_pattern", self.alpha_pattern.keys(), path)? {
            Some(k) => self.alpha_pattern[k],
            None => self.lora_alpha,
        };
        Ok(AdapterSpec {
            r,
            alpha,
            scale: scale(alpha, r, self.use_rslora),
            dropout: self.lora_dropout,
            init: self.init_lora_weights,
            dora: self.use_dora,
        })
    }

    /// Whether `path` is (inside) one of the `modules_to_save` (exact or dotted-suffix match on
    /// the module, like PEFT).
    pub fn saves_module(&self, module_path: &str) -> bool {
        self.modules_to_save.as_ref().is_some_and(|mods| {
            mods.iter().any(|m| {
                module_path == m
                    || module_path.ends_with(&format!(".{m}"))
                    || module_path.starts_with(&format!("{m}."))
                    || module_path.contains(&format!(".{m}."))
            })
        })
    }
}

/// The `target_modules` shorthand for "every linear layer".
pub const ALL_LINEAR: &str = "all-linear";

/// `alpha / r`, or `alpha / sqrt(r)` for rsLoRA.
pub fn scale(alpha: f64, r: usize, rslora: bool) -> f64 {
    if rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

fn compile(field: &str, pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|source| LoraError::Regex {
        field: field.into(),
        pattern: pattern.into(),
        source,
    })
}

fn pattern_regex(key: &str) -> String {
    format!(r"^(?:.*\.)?(?:{key})$")
}

fn pattern_lookup<'a>(
    field: &str,
    keys: impl Iterator<Item = &'a String>,
    path: &str,
) -> Result<Option<&'a String>> {
    for k in keys {
        if compile(field, &pattern_regex(k))?.is_match(path) {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

fn matches_targets(field: &str, t: &TargetModules, path: &str, is_linear: bool) -> Result<bool> {
    Ok(match t {
        TargetModules::Regex(p) if p == ALL_LINEAR => is_linear,
        TargetModules::Regex(p) => compile(field, &format!("^(?:{p})$"))?.is_match(path),
        TargetModules::List(list) => list
            .iter()
            .any(|t| t == path || path.ends_with(&format!(".{t}"))),
    })
}
