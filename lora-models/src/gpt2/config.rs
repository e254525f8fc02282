//! [`Gpt2Config`]: GPT-2's hyper-parameters as Hugging Face's `config.json` states them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::error::{ModelError, Result};
use crate::hf::read_config_json;

/// GPT-2 configuration with Hugging Face's field names and defaults; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size (50257).
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Maximum sequence length (1024).
    #[serde(default = "d_positions")]
    pub n_positions: usize,
    /// Hidden width (768).
    #[serde(default = "d_embd")]
    pub n_embd: usize,
    /// Number of blocks (12).
    #[serde(default = "d_layer")]
    pub n_layer: usize,
    /// Attention heads (12).
    #[serde(default = "d_layer")]
    pub n_head: usize,
    /// MLP width; `None` means `4 · n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// MLP activation (`gelu_new`).
    #[serde(default = "d_act")]
    pub activation_function: Activation,
    /// Dropout on block outputs (0.1).
    #[serde(default = "d_drop")]
    pub resid_pdrop: f64,
    /// Dropout on embeddings (0.1).
    #[serde(default = "d_drop")]
    pub embd_pdrop: f64,
    /// Dropout on attention probabilities (0.1).
    #[serde(default = "d_drop")]
    pub attn_pdrop: f64,
    /// LayerNorm epsilon (1e-5).
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    /// Standard deviation of the normal initialisation of a model built from scratch (0.02).
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// Divide attention scores by `sqrt(head_dim)` (true).
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
    /// Also divide by `layer_idx + 1` (false).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Compute attention in f32 with the scaling reordered; a no-op here since we run in f32.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    /// The LM head is `wte` (true). `false` is accepted only when the checkpoint's
    /// `lm_head.weight` equals `wte.weight` (an untied head is not implemented).
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// Cross-attention blocks (encoder-decoder use): not implemented, must be false.
    #[serde(default)]
    pub add_cross_attention: bool,
    /// Beginning-of-sequence id (50256).
    #[serde(default = "d_eos")]
    pub bos_token_id: usize,
    /// End-of-sequence id (50256).
    #[serde(default = "d_eos")]
    pub eos_token_id: usize,
    /// `model_type` of the checkpoint (must be `gpt2`).
    #[serde(default = "d_type")]
    pub model_type: String,
}

fn d_vocab() -> usize {
    50257
}
fn d_positions() -> usize {
    1024
}
fn d_embd() -> usize {
    768
}
fn d_layer() -> usize {
    12
}
fn d_act() -> Activation {
    Activation::GeluNew
}
fn d_drop() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-5
}
fn d_init() -> f64 {
    0.02
}
fn d_true() -> bool {
    true
}
fn d_eos() -> usize {
    50256
}
fn d_type() -> String {
    "gpt2".into()
}

impl Default for Gpt2Config {
    /// GPT-2 small (124M), with Hugging Face's defaults.
    fn default() -> Self {
        Self {
            vocab_size: d_vocab(),
            n_positions: d_positions(),
            n_embd: d_embd(),
            n_layer: d_layer(),
            n_head: d_layer(),
            n_inner: None,
            activation_function: d_act(),
            resid_pdrop: d_drop(),
            embd_pdrop: d_drop(),
            attn_pdrop: d_drop(),
            layer_norm_epsilon: d_eps(),
            initializer_range: d_init(),
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            tie_word_embeddings: true,
            add_cross_attention: false,
            bos_token_id: d_eos(),
            eos_token_id: d_eos(),
            model_type: d_type(),
        }
    }
}

impl Gpt2Config {
    /// Reads and validates `config.json` (a file or a model directory).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let (file, value) = read_config_json(path.as_ref())?;
        if let Some(t) = value.get("model_type").and_then(|v| v.as_str())
            && t != "gpt2"
        {
            return Err(ModelError::WrongArchitecture {
                path: file,
                expected: "gpt2".into(),
                found: t.into(),
            });
        }
        let config: Self = serde_json::from_value(value).map_err(|e| ModelError::Config {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|reason| ModelError::Config { path: file, reason })?;
        Ok(config)
    }

    /// Checks sizes and probabilities; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ] {
            if v == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "`n_embd` ({}) must be divisible by `n_head` ({})",
                self.n_embd, self.n_head
            ));
        }
        for (name, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("`{name}` must be in [0, 1), got {p}"));
            }
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err("`layer_norm_epsilon` must be positive".into());
        }
        if self.add_cross_attention {
            return Err("`add_cross_attention` true: cross-attention is not implemented".into());
        }
        if self.eos_token_id >= self.vocab_size || self.bos_token_id >= self.vocab_size {
            return Err("`bos_token_id`/`eos_token_id` must be below `vocab_size`".into());
        }
        Ok(())
    }

    /// MLP width.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}
