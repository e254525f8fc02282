//! BERT / RoBERTa as burn modules whose LoRA sites sit at Hugging Face's module paths
//! (`roberta.encoder.layer.0.attention.self.query`, ...). Every linear layer is a [`LoraLinear`]
//! and the word embeddings a [`LoraEmbedding`], so any of them can carry an adapter.
//!
//! Two Hugging Face names cannot be Rust field names: `attention.self` (a keyword) is the field
//! `self_attn`, and `LayerNorm` is the field `layer_norm`. The top-level models translate burn
//! paths to Hugging Face's in [`LoraSites::hf_param_path`] (see [`hf_param_path`]), so
//! checkpoints, adapter files and parameter reports all see Hugging Face's names.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Embedding, Initializer, LayerNorm, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::activation::tanh;
use lora_core::dropout;
use lora_core::gelu;

use lora_core::sites::join_path;
use lora_core::{LoraEmbedding, LoraLayer, LoraLinear, LoraSites, lora_sites};

use super::config::{BertConfig, EncoderFamily};
use crate::activation::Activation;
use crate::error::{ModelError, Result};
use crate::init::{hf_embedding, hf_linear, hf_table};

/// The Hugging Face name of a burn parameter path of these models: `self_attn` → `self`,
/// `layer_norm` → `LayerNorm` (except RoBERTa's `lm_head.layer_norm`, which Hugging Face spells
/// that way).
pub fn hf_param_path(burn_path: &str) -> String {
    let in_lm_head = burn_path.starts_with("lm_head.");
    burn_path
        .split('.')
        .map(|s| match s {
            "self_attn" => "self",
            "layer_norm" if !in_lm_head => "LayerNorm",
            s => s,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Implements [`LoraSites`] for a top-level model: the listed fields, and Hugging Face names
/// for parameters through [`hf_param_path`].
macro_rules! top_level_sites {
    ($ty:ty { $($field:ident),* }) => {
        impl LoraSites for $ty {
            fn visit_lora_sites(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn LoraLayer)) {
                $( self.$field.visit_lora_sites(&join_path(prefix, stringify!($field)), f); )*
            }
            fn visit_lora_sites_mut(
                &mut self,
                prefix: &str,
                f: &mut dyn FnMut(&str, &mut dyn LoraLayer) -> lora_core::Result<()>,
            ) -> lora_core::Result<()> {
                $( self.$field.visit_lora_sites_mut(&join_path(prefix, stringify!($field)), f)?; )*
                Ok(())
            }
            fn hf_param_path(&self, burn_path: &str) -> String {
                hf_param_path(burn_path)
            }
        }
    };
}

fn layer_norm(config: &BertConfig, device: &Device) -> LayerNorm {
    LayerNormConfig::new(config.hidden_size)
        .with_epsilon(config.layer_norm_eps)
        .init(device)
}

/// Word, position and token-type embeddings, summed, then LayerNorm and dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// `[vocab, hidden]`, LoRA-capable.
    pub word_embeddings: LoraEmbedding,
    /// `[max_position_embeddings, hidden]`.
    pub position_embeddings: Embedding,
    /// `[type_vocab_size, hidden]`.
    pub token_type_embeddings: Embedding,
    /// Hugging Face's `LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Dropout on the result.
    pub dropout: Dropout,
    /// Decides how position ids are counted.
    #[module(skip)]
    pub family: EncoderFamily,
    /// Padding id (RoBERTa's positions start after it).
    #[module(skip)]
    pub pad_token_id: usize,
}

impl BertEmbeddings {
    /// Position ids as transformers computes them when none are given: BERT `0..seq` for every
    /// row; RoBERTa `pad + 1, pad + 2, ...` counted over the non-padding tokens only, and `pad`
    /// at padding tokens, so left and right padding give each real token the same position.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]` → `[batch, seq]`
    pub fn position_ids(&self, input_ids: &Tensor<2, Int>) -> Tensor<2, Int> {
        let [b, t] = input_ids.dims();
        match self.family {
            EncoderFamily::Bert => Tensor::<1, Int>::arange(0..t as i64, &input_ids.device())
                .reshape([1, t])
                .expand([b, t]),
            EncoderFamily::Roberta => {
                let pad = self.pad_token_id as i64;
                let real = input_ids.clone().not_equal_elem(pad).int();
                (real.clone().cumsum(1) * real).add_scalar(pad)
            }
        }
    }

    /// # Shapes
    /// - `input_ids`, `token_type_ids`: `[batch, seq]`
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, token_type_ids: Tensor<2, Int>) -> Tensor<3> {
        let positions = self.position_ids(&input_ids);
        let x = self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(token_type_ids)
            + self.position_embeddings.forward(positions);
        dropout(&self.dropout, lora_core::layer_norm(&self.layer_norm, x))
    }
}

/// Multi-head self-attention: separate `query`, `key`, `value` projections.
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    /// `[hidden, hidden]`.
    pub query: LoraLinear,
    /// `[hidden, hidden]`.
    pub key: LoraLinear,
    /// `[hidden, hidden]`.
    pub value: LoraLinear,
    /// Dropout on attention probabilities.
    pub dropout: Dropout,
    /// Number of heads.
    #[module(skip)]
    pub num_heads: usize,
}

impl BertSelfAttention {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`
    /// - `mask`: `[batch, 1, 1, seq]`, `true` = padding key (never attended to)
    /// - output: `[batch, seq, hidden]` (the heads concatenated, before the output projection)
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4, Bool>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let h = self.num_heads;
        let dh = d / h;
        let heads = |y: Tensor<3>| y.reshape([b, t, h, dh]).swap_dims(1, 2);
        let q = heads(self.query.forward(x.clone()));
        let k = heads(self.key.forward(x.clone()));
        let v = heads(self.value.forward(x));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (dh as f64).sqrt());
        // Only keys are masked; a large finite negative keeps every row finite.
        let scores = scores.mask_fill(mask.expand([b, h, t, t]), -1e9);
        let probs = dropout(&self.dropout, lora_core::softmax(scores, 3));
        probs.matmul(v).swap_dims(1, 2).reshape([b, t, d])
    }
}

/// Output projection of the attention, dropout, residual, LayerNorm (post-norm).
#[derive(Module, Debug)]
pub struct BertSelfOutput {
    /// `[hidden, hidden]`.
    pub dense: LoraLinear,
    /// Hugging Face's `LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Dropout before the residual.
    pub dropout: Dropout,
}

impl BertSelfOutput {
    /// # Shapes
    /// - `hidden`, `input`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward(&self, hidden: Tensor<3>, input: Tensor<3>) -> Tensor<3> {
        let x = dropout(&self.dropout, self.dense.forward(hidden)) + input;
        lora_core::layer_norm(&self.layer_norm, x)
    }
}

/// `attention.self` + `attention.output`.
#[derive(Module, Debug)]
pub struct BertAttention {
    /// Hugging Face's `attention.self`.
    pub self_attn: BertSelfAttention,
    /// Hugging Face's `attention.output`.
    pub output: BertSelfOutput,
}

impl BertAttention {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`, `mask`: `[batch, 1, 1, seq]` → `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4, Bool>) -> Tensor<3> {
        let a = self.self_attn.forward(x.clone(), mask);
        self.output.forward(a, x)
    }
}

/// First half of the feed-forward block: `act(dense(x))`.
#[derive(Module, Debug)]
pub struct BertIntermediate {
    /// `[hidden, intermediate]`.
    pub dense: LoraLinear,
    /// The activation (`hidden_act`).
    #[module(skip)]
    pub activation: Activation,
}

impl BertIntermediate {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → `[batch, seq, intermediate]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.activation.forward(self.dense.forward(x))
    }
}

/// Second half of the feed-forward block: projection, dropout, residual, LayerNorm.
#[derive(Module, Debug)]
pub struct BertOutput {
    /// `[intermediate, hidden]`.
    pub dense: LoraLinear,
    /// Hugging Face's `LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Dropout before the residual.
    pub dropout: Dropout,
}

impl BertOutput {
    /// # Shapes
    /// - `hidden`: `[batch, seq, intermediate]`, `input`: `[batch, seq, hidden]`
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, hidden: Tensor<3>, input: Tensor<3>) -> Tensor<3> {
        let x = dropout(&self.dropout, self.dense.forward(hidden)) + input;
        lora_core::layer_norm(&self.layer_norm, x)
    }
}

/// One post-LayerNorm encoder layer.
#[derive(Module, Debug)]
pub struct BertLayer {
    /// Self-attention with its output block.
    pub attention: BertAttention,
    /// Feed-forward, first half.
    pub intermediate: BertIntermediate,
    /// Feed-forward, second half.
    pub output: BertOutput,
}

impl BertLayer {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`, `mask`: `[batch, 1, 1, seq]` → `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4, Bool>) -> Tensor<3> {
        let a = self.attention.forward(x, mask);
        let i = self.intermediate.forward(a.clone());
        self.output.forward(i, a)
    }
}

/// The stack of layers (`encoder.layer.N`).
#[derive(Module, Debug)]
pub struct BertEncoder {
    /// The layers.
    pub layer: Vec<BertLayer>,
}

/// `tanh(dense(h[:, 0]))`: BERT's sentence vector, the input of its classifier.
#[derive(Module, Debug)]
pub struct BertPooler {
    /// `[hidden, hidden]`.
    pub dense: LoraLinear,
}

impl BertPooler {
    /// # Shapes
    /// - `hidden`: `[batch, seq, hidden]` → `[batch, hidden]`
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<2> {
        tanh(self.dense.forward(first_token(hidden)))
    }
}

/// `h[:, 0, :]`.
///
/// # Shapes
/// - `hidden`: `[batch, seq, hidden]` → `[batch, hidden]`
pub fn first_token(hidden: Tensor<3>) -> Tensor<2> {
    let [b, _, d] = hidden.dims();
    hidden.narrow(1, 0, 1).reshape([b, d])
}

lora_sites!(BertEmbeddings { word_embeddings });
lora_sites!(BertSelfAttention { query, key, value });
lora_sites!(BertSelfOutput { dense });
lora_sites!(BertAttention { self_attn => "self", output });
lora_sites!(BertIntermediate { dense });
lora_sites!(BertOutput { dense });
lora_sites!(BertLayer {
    attention,
    intermediate,
    output
});
lora_sites!(BertEncoder { layer });
lora_sites!(BertPooler { dense });

/// The encoder body: Hugging Face's `BertModel` / `RobertaModel` (`embeddings`, `encoder`,
/// optional `pooler`). As a top-level model its paths carry no prefix, like a checkpoint of
/// `AutoModel` (e.g. all-MiniLM-L6-v2).
#[derive(Module, Debug)]
pub struct BertModel {
    /// Embeddings.
    pub embeddings: BertEmbeddings,
    /// The layers.
    pub encoder: BertEncoder,
    /// The pooler (BERT's sequence classifier uses it; RoBERTa's heads do not).
    pub pooler: Option<BertPooler>,
    /// Longest input the position table allows.
    #[module(skip)]
    pub max_tokens: usize,
    /// Activation checkpointing per layer in the classifiers' training step (see
    /// [`checkpointed_step`](super::checkpointed_step)); off by default, ignored by `forward`.
    #[module(skip)]
    pub checkpoint_layers: bool,
}

top_level_sites!(BertModel {
    embeddings,
    encoder,
    pooler
});

impl BertModel {
    /// A new body with transformers' initialisation (lazy; loading weights right after
    /// allocates no random init).
    pub fn new(config: &BertConfig, add_pooling_layer: bool, device: &Device) -> Self {
        let (d, std) = (config.hidden_size, config.initializer_range);
        let dropout = || DropoutConfig::new(config.hidden_dropout_prob).init();
        let layer = (0..config.num_hidden_layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    self_attn: BertSelfAttention {
                        query: hf_linear(d, d, std, device),
                        key: hf_linear(d, d, std, device),
                        value: hf_linear(d, d, std, device),
                        dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
                        num_heads: config.num_attention_heads,
                    },
                    output: BertSelfOutput {
                        dense: hf_linear(d, d, std, device),
                        layer_norm: layer_norm(config, device),
                        dropout: dropout(),
                    },
                },
                intermediate: BertIntermediate {
                    dense: hf_linear(d, config.intermediate_size, std, device),
                    activation: config.hidden_act,
                },
                output: BertOutput {
                    dense: hf_linear(config.intermediate_size, d, std, device),
                    layer_norm: layer_norm(config, device),
                    dropout: dropout(),
                },
            })
            .collect();
        Self {
            embeddings: BertEmbeddings {
                word_embeddings: hf_table(config.vocab_size, d, std, device),
                position_embeddings: hf_embedding(config.max_position_embeddings, d, std, device),
                token_type_embeddings: hf_embedding(config.type_vocab_size, d, std, device),
                layer_norm: layer_norm(config, device),
                dropout: dropout(),
                family: config.family(),
                pad_token_id: config.pad_token_id,
            },
            encoder: BertEncoder { layer },
            pooler: add_pooling_layer.then(|| BertPooler {
                dense: hf_linear(d, d, std, device),
            }),
            max_tokens: config.max_tokens(),
            checkpoint_layers: false,
        }
    }

    /// The last hidden state.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`
    /// - `attention_mask`: `[batch, seq]`, 1 = token, 0 = padding (`None`: all tokens)
    /// - `token_type_ids`: `[batch, seq]` (`None`: all 0)
    /// - output: `[batch, seq, hidden]`
    ///
    /// Errors when `seq` exceeds the position table ([`ModelError::SequenceTooLong`]; truncate
    /// with the tokenizer) or when the shapes disagree. Ids must be below the vocabulary size
    /// ([`EncoderTokenizer`](super::EncoderTokenizer) checks this when it builds a batch).
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        token_type_ids: Option<Tensor<2, Int>>,
    ) -> Result<Tensor<3>> {
        let (types, mask) = self.inputs(&input_ids, attention_mask, token_type_ids)?;
        let mut x = self.embeddings.forward(input_ids, types);
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask.clone());
        }
        Ok(x)
    }

    /// Checks a forward's inputs and returns the token types and the 4-D padding mask.
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`, `token_type_ids`: `[batch, seq]`
    /// - output: types `[batch, seq]`, mask `[batch, 1, 1, seq]` (`true` = padding)
    pub fn inputs(
        &self,
        input_ids: &Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        token_type_ids: Option<Tensor<2, Int>>,
    ) -> Result<(Tensor<2, Int>, Tensor<4, Bool>)> {
        let [b, t] = input_ids.dims();
        if b == 0 || t == 0 {
            return Err(ModelError::InvalidInput("empty batch or sequence".into()));
        }
        if t > self.max_tokens {
            return Err(ModelError::SequenceTooLong {
                len: t,
                max: self.max_tokens,
            });
        }
        for (name, m) in [
            ("attention_mask", &attention_mask),
            ("token_type_ids", &token_type_ids),
        ] {
            if let Some(m) = m
                && m.dims() != [b, t]
            {
                return Err(ModelError::InvalidInput(format!(
                    "{name} is {:?}, expected [{b}, {t}] like input_ids",
                    m.dims()
                )));
            }
        }
        let device = input_ids.device();
        if let Some(layer) = self.encoder.layer.first() {
            let heads = layer.attention.self_attn.num_heads;
            crate::check_scores_fit(&device, [b, heads, t, t])?;
        }
        let types = token_type_ids.unwrap_or_else(|| Tensor::zeros([b, t], &device));
        let mask: Tensor<4, Bool> = match attention_mask {
            Some(m) => m.equal_elem(0).reshape([b, 1, 1, t]),
            None => Tensor::<4, Int>::zeros([b, 1, 1, t], &device).equal_elem(1),
        };
        Ok((types, mask))
    }

    /// The pooler's output for a last hidden state, if the model has a pooler.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, hidden]` → `[batch, hidden]`
    pub fn pooled_output(&self, hidden: Tensor<3>) -> Option<Tensor<2>> {
        self.pooler.as_ref().map(|p| p.forward(hidden))
    }
}

/// RoBERTa's classification head on `<s>`: dropout, `dense`, tanh, dropout, `out_proj`.
#[derive(Module, Debug)]
pub struct RobertaClassificationHead {
    /// `[hidden, hidden]`.
    pub dense: LoraLinear,
    /// Dropout (`classifier_dropout`, else `hidden_dropout_prob`).
    pub dropout: Dropout,
    /// `[hidden, num_labels]`.
    pub out_proj: LoraLinear,
}

lora_sites!(RobertaClassificationHead { dense, out_proj });

impl RobertaClassificationHead {
    /// # Shapes
    /// - `hidden`: `[batch, seq, hidden]` → `[batch, num_labels]`
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<2> {
        let x = dropout(&self.dropout, first_token(hidden));
        let x = dropout(&self.dropout, tanh(self.dense.forward(x)));
        self.out_proj.forward(x)
    }
}

/// Hugging Face's `RobertaForSequenceClassification`: the body under `roberta.` (no pooler)
/// and `classifier.dense` + `classifier.out_proj`. `num_labels = 1` is regression.
#[derive(Module, Debug)]
pub struct RobertaForSequenceClassification {
    /// The body.
    pub roberta: BertModel,
    /// The head.
    pub classifier: RobertaClassificationHead,
}

top_level_sites!(RobertaForSequenceClassification {
    roberta,
    classifier
});

impl RobertaForSequenceClassification {
    /// A new model (fresh head) with transformers' initialisation, lazily.
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        let (d, std) = (config.hidden_size, config.initializer_range);
        Self {
            roberta: BertModel::new(config, false, device),
            classifier: RobertaClassificationHead {
                dense: hf_linear(d, d, std, device),
                dropout: DropoutConfig::new(config.classifier_dropout_prob()).init(),
                out_proj: hf_linear(d, config.num_labels(), std, device),
            },
        }
    }

    /// Logits (or regression scores).
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`, `token_type_ids`: `[batch, seq]` (see [`BertModel::forward`])
    /// - output: `[batch, num_labels]`
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        token_type_ids: Option<Tensor<2, Int>>,
    ) -> Result<Tensor<2>> {
        let hidden = self
            .roberta
            .forward(input_ids, attention_mask, token_type_ids)?;
        Ok(self.classifier.forward(hidden))
    }

    /// Number of labels of the head.
    pub fn num_labels(&self) -> usize {
        self.classifier.out_proj.shape().1
    }
}

/// Hugging Face's `BertForSequenceClassification`: the body under `bert.` with its pooler,
/// dropout, and `classifier`. `num_labels = 1` is regression (STS-B).
#[derive(Module, Debug)]
pub struct BertForSequenceClassification {
    /// The body (with pooler).
    pub bert: BertModel,
    /// Dropout on the pooled output.
    pub dropout: Dropout,
    /// `[hidden, num_labels]`.
    pub classifier: LoraLinear,
}

top_level_sites!(BertForSequenceClassification { bert, classifier });

impl BertForSequenceClassification {
    /// A new model (fresh head) with transformers' initialisation, lazily.
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        Self {
            bert: BertModel::new(config, true, device),
            dropout: DropoutConfig::new(config.classifier_dropout_prob()).init(),
            classifier: hf_linear(
                config.hidden_size,
                config.num_labels(),
                config.initializer_range,
                device,
            ),
        }
    }

    /// Logits (or regression scores).
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`, `token_type_ids`: `[batch, seq]` (see [`BertModel::forward`])
    /// - output: `[batch, num_labels]`
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        token_type_ids: Option<Tensor<2, Int>>,
    ) -> Result<Tensor<2>> {
        let hidden = self
            .bert
            .forward(input_ids, attention_mask, token_type_ids)?;
        let pooled = self
            .bert
            .pooled_output(hidden)
            .ok_or_else(|| ModelError::InvalidInput("the BERT body has no pooler".into()))?;
        Ok(self.classifier.forward(dropout(&self.dropout, pooled)))
    }

    /// Number of labels of the head.
    pub fn num_labels(&self) -> usize {
        self.classifier.shape().1
    }
}

/// RoBERTa's masked-LM head: `dense`, GELU, `layer_norm`, then the word embeddings (tied) plus
/// `bias`.
#[derive(Module, Debug)]
pub struct RobertaLMHead {
    /// `[hidden, hidden]`.
    pub dense: LoraLinear,
    /// Hugging Face's `lm_head.layer_norm`.
    pub layer_norm: LayerNorm,
    /// Output bias `[vocab]`.
    pub bias: Param<Tensor<1>>,
}

lora_sites!(RobertaLMHead { dense });

impl RobertaLMHead {
    /// # Shapes
    /// - `hidden`: `[batch, seq, hidden]` → `[batch, seq, vocab]`
    pub fn forward(&self, hidden: Tensor<3>, word_embeddings: &LoraEmbedding) -> Tensor<3> {
        let x = lora_core::layer_norm(&self.layer_norm, gelu(self.dense.forward(hidden)));
        // Tied decoder: the stored input table, transposed. As in PEFT 0.21.2, an unmerged LoRA
        // on the word embeddings changes the lookup only; merged, the decoder sees it too.
        word_embeddings.tied_logits(x, Some(self.bias.val()))
    }
}

/// Hugging Face's `RobertaForMaskedLM`: the body under `roberta.` and `lm_head`.
#[derive(Module, Debug)]
pub struct RobertaForMaskedLM {
    /// The body (no pooler).
    pub roberta: BertModel,
    /// The LM head.
    pub lm_head: RobertaLMHead,
}

top_level_sites!(RobertaForMaskedLM { roberta, lm_head });

impl RobertaForMaskedLM {
    /// A new model with transformers' initialisation, lazily.
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        let (d, std) = (config.hidden_size, config.initializer_range);
        Self {
            roberta: BertModel::new(config, false, device),
            lm_head: RobertaLMHead {
                dense: hf_linear(d, d, std, device),
                layer_norm: layer_norm(config, device),
                bias: Initializer::Zeros.init([config.vocab_size], device),
            },
        }
    }

    /// Token logits.
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`, `token_type_ids`: `[batch, seq]` (see [`BertModel::forward`])
    /// - output: `[batch, seq, vocab]`
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        token_type_ids: Option<Tensor<2, Int>>,
    ) -> Result<Tensor<3>> {
        let [b, t] = input_ids.dims();
        let vocab = self.lm_head.bias.lazy_shape()[0];
        crate::check_logits_fit(&input_ids.device(), [b, t, vocab])?;
        let hidden = self
            .roberta
            .forward(input_ids, attention_mask, token_type_ids)?;
        Ok(self
            .lm_head
            .forward(hidden, &self.roberta.embeddings.word_embeddings))
    }
}

impl BertConfig {
    /// The encoder body with a pooler, as transformers' `AutoModel` builds it (lazily
    /// initialised).
    pub fn init(&self, device: &Device) -> BertModel {
        BertModel::new(self, true, device)
    }
}
