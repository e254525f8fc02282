//! [`BertConfig`]: the hyper-parameters of BERT and RoBERTa checkpoints as Hugging Face's
//! `config.json` states them (one struct: the two share the architecture).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::error::{ModelError, Result};
use crate::hf::read_config_json;

/// Which member of the family a checkpoint is; decides position ids, the key prefix and the
/// classification head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderFamily {
    /// BERT (and MiniLM, which is a BERT): absolute positions `0..seq`, token types, a pooler.
    Bert,
    /// RoBERTa (also XLM-R and CamemBERT): positions counted from `pad_token_id + 1` over
    /// non-padding tokens, keys under `roberta.`.
    Roberta,
}

impl EncoderFamily {
    /// The key prefix of the encoder body inside task models (`bert` / `roberta`).
    pub fn prefix(self) -> &'static str {
        match self {
            EncoderFamily::Bert => "bert",
            EncoderFamily::Roberta => "roberta",
        }
    }

    /// The family of a `model_type`, if it is one of ours.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "bert" => Some(EncoderFamily::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Some(EncoderFamily::Roberta),
            _ => None,
        }
    }
}

/// What a sequence-classification head predicts, and so which loss it trains with
/// (Hugging Face's `problem_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// One real value per label, mean squared error (`num_labels = 1`: STS-B-style scores).
    Regression,
    /// One class per example, cross-entropy.
    SingleLabelClassification,
    /// Independent yes/no per label, binary cross-entropy with logits.
    MultiLabelClassification,
}

/// BERT / RoBERTa configuration with Hugging Face's field names and defaults (those of
/// `bert-base-uncased`); unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// `bert`, `roberta`, `xlm-roberta` or `camembert`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Class names the checkpoint was saved from, e.g. `RobertaForSequenceClassification`.
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// Vocabulary size (30522).
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Hidden width (768).
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// Number of encoder layers (12).
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads (12).
    #[serde(default = "d_layers")]
    pub num_attention_heads: usize,
    /// Feed-forward width (3072).
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    /// Feed-forward activation (`gelu`, exact).
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    /// Dropout on embeddings and sub-layer outputs (0.1).
    #[serde(default = "d_drop")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (0.1).
    #[serde(default = "d_drop")]
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classifier; `None` means `hidden_dropout_prob`.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Rows of the position table (512; RoBERTa: 514, two of them unused by the offset).
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    /// Rows of the token-type table (2; RoBERTa: 1).
    #[serde(default = "d_types")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (1e-12; RoBERTa: 1e-5).
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Std of the normal initialisation of new weights, e.g. a fresh head (0.02).
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// Padding token id (0; RoBERTa: 1). `null` in a config reads as 0.
    #[serde(default, deserialize_with = "null_as_zero")]
    pub pad_token_id: usize,
    /// Beginning-of-sequence id (RoBERTa: 0).
    #[serde(default)]
    pub bos_token_id: Option<usize>,
    /// End-of-sequence id (RoBERTa: 2).
    #[serde(default)]
    pub eos_token_id: Option<usize>,
    /// Only `absolute` is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// Must be `false`: this is an encoder.
    #[serde(default)]
    pub is_decoder: bool,
    /// Must be `false` (no cross-attention).
    #[serde(default)]
    pub add_cross_attention: bool,
    /// The masked-LM decoder is the word-embedding table (true). `false` is accepted only when
    /// the checkpoint's decoder weight equals that table (an untied decoder is not implemented).
    #[serde(default = "d_tied")]
    pub tie_word_embeddings: bool,
    /// Label names by id (keys are the ids as strings, as in JSON).
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    /// Label ids by name.
    #[serde(default)]
    pub label2id: Option<BTreeMap<String, usize>>,
    /// Explicit label count; otherwise the size of `id2label`, otherwise 2 (as transformers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    /// What the classification head predicts; `None` resolves as in
    /// [`BertConfig::problem_type`].
    #[serde(default)]
    pub problem_type: Option<ProblemType>,
}

fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    Ok(Option::<usize>::deserialize(d)?.unwrap_or(0))
}

fn d_vocab() -> usize {
    30522
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_inter() -> usize {
    3072
}
fn d_act() -> Activation {
    Activation::Gelu
}
fn d_drop() -> f64 {
    0.1
}
fn d_positions() -> usize {
    512
}
fn d_types() -> usize {
    2
}
fn d_eps() -> f64 {
    1e-12
}
fn d_init() -> f64 {
    0.02
}

impl Default for BertConfig {
    /// `bert-base-uncased`.
    fn default() -> Self {
        let mut c: Self =
            serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all fields have defaults"));
        c.model_type = Some("bert".into());
        c
    }
}

impl BertConfig {
    /// `roberta-base`'s shape (vocabulary 50265, 514 positions, one token type, pad 1, eps 1e-5).
    pub fn roberta_base() -> Self {
        Self {
            model_type: Some("roberta".into()),
            vocab_size: 50265,
            max_position_embeddings: 514,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
            bos_token_id: Some(0),
            eos_token_id: Some(2),
            ..Self::default()
        }
    }

    /// Reads and validates `config.json` (a file or a model directory). A `model_type` (or, when
    /// absent, an architecture) outside the BERT/RoBERTa family is
    /// [`ModelError::WrongArchitecture`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let (file, value) = read_config_json(path.as_ref())?;
        // serde's message for an unknown enum value does not name the field: check those first.
        let field_err = |field: &str, e: serde_json::Error| ModelError::Config {
            path: file.clone(),
            reason: format!("`{field}`: {e}"),
        };
        if let Some(v) = value.get("hidden_act") {
            serde_json::from_value::<Activation>(v.clone())
                .map_err(|e| field_err("hidden_act", e))?;
        }
        if let Some(v) = value.get("problem_type") {
            serde_json::from_value::<Option<ProblemType>>(v.clone())
                .map_err(|e| field_err("problem_type", e))?;
        }
        let config: Self = serde_json::from_value(value).map_err(|e| ModelError::Config {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        config.family_or_err(&file)?;
        config
            .validate()
            .map_err(|reason| ModelError::Config { path: file, reason })?;
        Ok(config)
    }

    fn family_or_err(&self, file: &Path) -> Result<EncoderFamily> {
        let wrong = |found: String| ModelError::WrongArchitecture {
            path: file.to_path_buf(),
            expected:
                "a BERT or RoBERTa encoder (model_type bert, roberta, xlm-roberta, camembert)"
                    .into(),
            found,
        };
        if let Some(t) = &self.model_type {
            return EncoderFamily::from_model_type(t).ok_or_else(|| wrong(t.clone()));
        }
        match self.architectures.as_deref().and_then(|a| a.first()) {
            Some(a) if a.starts_with("Roberta") || a.starts_with("XLMRoberta") => {
                Ok(EncoderFamily::Roberta)
            }
            Some(a) if a.starts_with("Bert") => Ok(EncoderFamily::Bert),
            Some(a) => Err(wrong(a.clone())),
            None => Err(ModelError::Config {
                path: file.to_path_buf(),
                reason: "neither `model_type` nor `architectures` says which model this is".into(),
            }),
        }
    }

    /// The family (BERT unless `model_type`/`architectures` say RoBERTa).
    pub fn family(&self) -> EncoderFamily {
        self.family_or_err(Path::new("config.json"))
            .unwrap_or(EncoderFamily::Bert)
    }

    /// Checks sizes, probabilities and unsupported options; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` ({}) must be divisible by `num_attention_heads` ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Some(self.attention_probs_dropout_prob),
            ),
            ("classifier_dropout", self.classifier_dropout),
        ] {
            if let Some(p) = p
                && !(0.0..1.0).contains(&p)
            {
                return Err(format!("`{name}` must be in [0, 1), got {p}"));
            }
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err("`layer_norm_eps` must be positive".into());
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(format!(
                "`pad_token_id` ({}) must be below `vocab_size` ({})",
                self.pad_token_id, self.vocab_size
            ));
        }
        if self.max_tokens() == 0 {
            return Err(format!(
                "`max_position_embeddings` ({}) leaves no position after RoBERTa's offset of {}",
                self.max_position_embeddings,
                self.position_offset()
            ));
        }
        if let Some(t) = &self.position_embedding_type
            && t != "absolute"
        {
            return Err(format!(
                "`position_embedding_type` \"{t}\" is not supported (only \"absolute\")"
            ));
        }
        if self.is_decoder || self.add_cross_attention {
            return Err("`is_decoder`/`add_cross_attention`: only encoders are supported".into());
        }
        if self.num_labels() == 0 {
            return Err("`num_labels` must be positive".into());
        }
        if self.problem_type == Some(ProblemType::SingleLabelClassification)
            && self.num_labels() < 2
        {
            return Err("`problem_type` single_label_classification needs `num_labels` ≥ 2".into());
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Number of labels of a classification head: `num_labels`, else the size of `id2label`,
    /// else 2 (transformers' default).
    pub fn num_labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2)
    }

    /// Label names in id order (`LABEL_i` where `id2label` has none).
    pub fn labels(&self) -> Vec<String> {
        (0..self.num_labels())
            .map(|i| {
                self.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }

    /// Sets the number of labels (for a fresh head), naming them `LABEL_i` as transformers does.
    pub fn with_num_labels(mut self, n: usize) -> Self {
        let names: BTreeMap<String, String> = (0..n)
            .map(|i| (i.to_string(), format!("LABEL_{i}")))
            .collect();
        self.label2id = Some((0..n).map(|i| (format!("LABEL_{i}"), i)).collect());
        self.id2label = Some(names);
        self.num_labels = None;
        if n == 1 && self.problem_type == Some(ProblemType::SingleLabelClassification) {
            self.problem_type = None;
        }
        self
    }

    /// The resolved problem type: the config's, else regression for one label and single-label
    /// classification otherwise (transformers decides the latter from the label dtype; integer
    /// class labels are the common case).
    pub fn problem_type(&self) -> ProblemType {
        self.problem_type.unwrap_or(if self.num_labels() == 1 {
            ProblemType::Regression
        } else {
            ProblemType::SingleLabelClassification
        })
    }

    /// Dropout before the classifier.
    pub fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// First position id: `pad_token_id + 1` for RoBERTa, 0 for BERT.
    pub fn position_offset(&self) -> usize {
        match self.family() {
            EncoderFamily::Bert => 0,
            EncoderFamily::Roberta => self.pad_token_id + 1,
        }
    }

    /// The longest input (special tokens included) the position table allows: 512 for both
    /// `bert-base` and `roberta-base`.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }
}

fn d_tied() -> bool {
    true
}
