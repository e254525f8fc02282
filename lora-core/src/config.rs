//! [`LoraConfig`]: PEFT's `LoraConfig`, field for field, with its target-matching rules.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};
use crate::pyregex::PyRegex;
pub use crate::targeting::{ALL_LINEAR, PatternMap, is_all_linear};

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
    /// `"eva"`: PEFT's data-driven initialisation. The trained adapter is plain LoRA, so files
    /// load; a fresh adapter cannot be initialised this way here.
    Eva,
    /// `"orthogonal"`: PEFT's orthogonal factors with a zero product. Files load as plain LoRA;
    /// a fresh adapter cannot be initialised this way here.
    Orthogonal,
    /// `"pissa"`: PiSSA. A and B from the top-`r` singular triplets of the base weight, which
    /// keeps the rest (`W − scale·A·B`): the model's output is unchanged at the start. Changes
    /// the base weights (linear layers; embeddings get the default init, as in PEFT). Save with
    /// [`save_adapter_converted`](crate::save_adapter_converted) for an adapter that works on
    /// the unmodified base.
    Pissa,
    /// `"pissa_niter_N"`: PiSSA from a randomized SVD. Random, so an adapter saved with it cannot
    /// be loaded (its residual base cannot be rebuilt); convert it first. Not initialised here.
    PissaNiter(u32),
    /// `"olora"`: OLoRA. B and A from the first `r` columns of the QR decomposition of the base
    /// weight (`[out, in]`), the base keeping the rest, like [`Pissa`](Self::Pissa).
    Olora,
}

impl InitLoraWeights {
    /// Errors for initialisations that only describe how a saved adapter was started
    /// ([`Eva`](Self::Eva), [`Orthogonal`](Self::Orthogonal)): fine for loading, not for
    /// creating a fresh adapter.
    pub fn check_initialisable(self) -> Result<()> {
        match self {
            Self::Eva | Self::Orthogonal | Self::PissaNiter(_) => {
                Err(LoraError::Unsupported(format!(
                    "init_lora_weights {} for a new adapter (initialise new ones with true, false, \"gaussian\", \"pissa\" or \"olora\")",
                    serde_json::json!(self)
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether the initialisation changes the base weights (PiSSA, OLoRA).
    pub fn changes_base(self) -> bool {
        matches!(self, Self::Pissa | Self::PissaNiter(_) | Self::Olora)
    }
}

impl Serialize for InitLoraWeights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            InitLoraWeights::Default => s.serialize_bool(true),
            InitLoraWeights::Random => s.serialize_bool(false),
            InitLoraWeights::Gaussian => s.serialize_str("gaussian"),
            InitLoraWeights::Eva => s.serialize_str("eva"),
            InitLoraWeights::Orthogonal => s.serialize_str("orthogonal"),
            InitLoraWeights::Pissa => s.serialize_str("pissa"),
            InitLoraWeights::PissaNiter(n) => s.serialize_str(&format!("pissa_niter_{n}")),
            InitLoraWeights::Olora => s.serialize_str("olora"),
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
            // PEFT compares "gaussian" and "olora" case-insensitively, the others exactly.
            Raw::Str(s) if s.eq_ignore_ascii_case("gaussian") => Ok(Self::Gaussian),
            Raw::Str(s) if s == "eva" => Ok(Self::Eva),
            Raw::Str(s) if s == "orthogonal" => Ok(Self::Orthogonal),
            Raw::Str(s) if s == "pissa" => Ok(Self::Pissa),
            Raw::Str(s) if s.eq_ignore_ascii_case("olora") => Ok(Self::Olora),
            Raw::Str(s) if s.starts_with("pissa_niter_") => s["pissa_niter_".len()..]
                .parse()
                .map(Self::PissaNiter)
                .map_err(|_| serde::de::Error::custom(init_refusal(&s))),
            Raw::Str(s) => Err(serde::de::Error::custom(init_refusal(&s))),
        }
    }
}

/// Why an `init_lora_weights` string is refused. CorDA, LoftQ, LoRA-GA and MiCA subtract their
/// initial update from the base weights, computed from data or quantisation lora-burn does not
/// have: a file saved without PEFT's `path_initial_model_for_weight_conversion` only works on
/// that modified base.
fn init_refusal(s: &str) -> String {
    let base_changing = ["pissa", "corda", "mica", "loftq", "lora_ga"];
    if base_changing
        .iter()
        .any(|p| s.to_ascii_lowercase().starts_with(p))
    {
        format!(
            "init_lora_weights \"{s}\" is not supported: it changes the base weights, so the adapter only \
             works on PEFT's modified base (convert it with PEFT's \
             path_initial_model_for_weight_conversion, which saves a plain LoRA)"
        )
    } else {
        format!(
            "init_lora_weights \"{s}\" is not supported (supported: true, false, \"gaussian\", and \
             for loading \"eva\" and \"orthogonal\")"
        )
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
    pub layers_to_transform: Option<OneOrMany<i64>>,
    /// Name of the layer list in module paths (e.g. `h` or `layer`), used with `layers_to_transform`.
    #[serde(default)]
    pub layers_pattern: Option<OneOrMany<String>>,
    /// Per-module rank overrides: key is a regex matched against the end of the module path.
    #[serde(default)]
    pub rank_pattern: PatternMap<usize>,
    /// Per-module alpha overrides, matched like `rank_pattern`.
    #[serde(default)]
    pub alpha_pattern: PatternMap<f64>,
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
    /// PEFT's `ensure_weight_tying`, read and written. PEFT 0.21.2 ties adapters only for
    /// modules named `embed_tokens` / `lm_head`, which neither of our models has: for GPT-2's
    /// `wte` (and RoBERTa's word embeddings) the tied head keeps the stored table until the
    /// adapter is merged, whatever the flag, as in PEFT.
    #[serde(default)]
    pub ensure_weight_tying: bool,
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
            rank_pattern: PatternMap::new(),
            alpha_pattern: PatternMap::new(),
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
            ensure_weight_tying: false,
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
    /// The config's `bias` (PEFT allows one adapter with a value other than `none` per model).
    pub bias: BiasMode,
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

    /// This config for injecting an adapter whose factors come from a file. Plain
    /// initialisations do not matter then and become the default. PiSSA and OLoRA are kept: as
    /// in PEFT, they run again on the given (original) base, so it becomes the residual base the
    /// adapter was trained on. A randomized PiSSA (`pissa_niter_N`) cannot be rebuilt that way
    /// and is an error.
    pub fn for_loading(&self) -> Result<Self> {
        let init = match self.init_lora_weights {
            InitLoraWeights::PissaNiter(n) => {
                return Err(LoraError::Unsupported(format!(
                    "loading an adapter with init_lora_weights \"pissa_niter_{n}\": its residual base \
                     came from a randomized SVD and cannot be rebuilt (convert it with PEFT's \
                     path_initial_model_for_weight_conversion, or lora_core::save_adapter_converted)"
                )));
            }
            i @ (InitLoraWeights::Pissa | InitLoraWeights::Olora) => i,
            _ => InitLoraWeights::Default,
        };
        Ok(Self {
            init_lora_weights: init,
            ..self.clone()
        })
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
        check_variant_keys(&value)?;
        // From the text, not the parsed value: `rank_pattern`/`alpha_pattern` keep the file's
        // order, which decides which pattern wins (PEFT reads them into an ordered dict).
        let config: Self = serde_json::from_str(text).map_err(|source| LoraError::Json {
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
        c.rank_pattern.sort();
        c.alpha_pattern.sort();
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
        const TASK_TYPES: [&str; 6] = [
            "SEQ_CLS",
            "SEQ_2_SEQ_LM",
            "CAUSAL_LM",
            "TOKEN_CLS",
            "QUESTION_ANS",
            "FEATURE_EXTRACTION",
        ];
        if let Some(t) = &self.task_type
            && !TASK_TYPES.contains(&t.as_str())
        {
            return Err(LoraError::config(
                "task_type",
                format!("\"{t}\" is not one of {}", TASK_TYPES.join(", ")),
            ));
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
        self.validate_patterns()?;
        self.validate_layers()?;
        self.target_parameter_list()?;
        // The variant switches this struct holds (`from_json` checks the others in the file).
        let bias = serde_json::Value::Bool(self.lora_bias);
        for (key, value) in [
            ("lora_bias", Some(&bias)),
            ("layer_replication", self.layer_replication.as_ref()),
            (
                "trainable_token_indices",
                self.trainable_token_indices.as_ref(),
            ),
        ] {
            refuse_switched_on(key, value)?;
        }
        Ok(())
    }

    /// Every pattern compiles with Python's meaning, and pattern values are usable.
    fn validate_patterns(&self) -> Result<()> {
        for (k, &r) in self.rank_pattern.iter() {
            if r == 0 {
                return Err(LoraError::config("rank_pattern", format!("`{k}`: rank 0")));
            }
        }
        for (k, a) in self.alpha_pattern.iter() {
            if !a.is_finite() {
                return Err(LoraError::config(
                    "alpha_pattern",
                    format!("`{k}`: alpha {a} is not finite"),
                ));
            }
        }
        self.rank_pattern.check("rank_pattern")?;
        self.alpha_pattern.check("alpha_pattern")?;
        for (field, t) in [
            ("target_modules", &self.target_modules),
            ("exclude_modules", &self.exclude_modules),
        ] {
            if let Some(TargetModules::Regex(p)) = t
                && !is_all_linear(p)
            {
                PyRegex::fullmatch(field, p)?;
            }
        }
        for m in self.effective_modules_to_save() {
            PyRegex::prefix("modules_to_save", &format!(r"(^|.*\.){m}($|\..*)"))?;
        }
        Ok(())
    }

    /// PEFT's rules for `layers_to_transform` / `layers_pattern` (`LoraConfig.__post_init__`).
    fn validate_layers(&self) -> Result<()> {
        let regex_targets = matches!(self.target_modules, Some(TargetModules::Regex(_)));
        if regex_targets && self.layers_to_transform.is_some() {
            return Err(LoraError::config(
                "layers_to_transform",
                "cannot be used when target_modules is a regex string (as in PEFT)",
            ));
        }
        if regex_targets && self.layers_pattern.is_some() {
            return Err(LoraError::config(
                "layers_pattern",
                "cannot be used when target_modules is a regex string (as in PEFT)",
            ));
        }
        let pattern_given = self.layers_pattern.as_ref().is_some_and(|p| {
            !matches!(p, OneOrMany::One(s) if s.is_empty()) && !p.to_vec().is_empty()
        });
        if pattern_given && self.layers_to_transform.is_none() {
            return Err(LoraError::config(
                "layers_pattern",
                "needs layers_to_transform (as in PEFT)",
            ));
        }
        // Compiles each pattern's layer regex.
        self.layer_index("")?;
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
}

/// Keys of PEFT 0.21.2's `LoraConfig` that switch on a LoRA variant lora-burn does not implement.
/// A config with one of them set (anything but absent, `null`, `false` or empty) is refused with
/// the key's name: run as plain LoRA, it would give other outputs than in PEFT.
/// `qalora_group_size` only matters with `use_qalora`, and the `*_config` of the base-changing
/// initialisations only with their `init_lora_weights` value, which is refused on its own.
pub const UNSUPPORTED_VARIANT_KEYS: &[&str] = &[
    "alora_invocation_tokens",
    "arrow_config",
    "kasa_config",
    "layer_replication",
    "lora_bias",
    "megatron_config",
    "monteclora_config",
    "trainable_token_indices",
    "use_bdlora",
    "use_qalora",
    "velora_config",
];

/// Refuses a config JSON that switches on one of [`UNSUPPORTED_VARIANT_KEYS`].
fn check_variant_keys(value: &serde_json::Value) -> Result<()> {
    for key in UNSUPPORTED_VARIANT_KEYS {
        refuse_switched_on(key, value.get(*key))?;
    }
    Ok(())
}

/// Errors when variant key `key` holds anything but absent, `null`, `false` or empty.
fn refuse_switched_on(key: &str, value: Option<&serde_json::Value>) -> Result<()> {
    let on = match value {
        None | Some(serde_json::Value::Null | serde_json::Value::Bool(false)) => false,
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    };
    match (on, value) {
        (true, Some(v)) => Err(LoraError::Unsupported(format!(
            "the LoRA variant switched on by `{key}` ({v}): loading it as plain LoRA would give \
             other outputs than PEFT"
        ))),
        _ => Ok(()),
    }
}

/// `alpha / r`, or `alpha / sqrt(r)` for rsLoRA.
pub fn scale(alpha: f64, r: usize, rslora: bool) -> f64 {
    if rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}
