//! The two benchmarked architectures at their real shapes (random init, no download), the
//! synthetic batches they train on, and the three ways of making them trainable.

use burn::module::{Lora, Module, ParamGroup};
use burn::prelude::*;
use burn::tensor::{Distribution, Gradients};
use lora_core::weight::{self, PathMap};
use lora_core::{InitLoraWeights, LoraConfig, LoraSites, TargetModules};
use lora_models::bert::{BertConfig, RobertaForSequenceClassification, inject_encoder_lora};
use lora_models::gpt2::{CAttnMode, Gpt2Config, Gpt2LmHeadModel, MemoryOptions, inject_gpt2_lora};
use lora_train::loss::{causal_lm_loss, cross_entropy};
use serde::{Deserialize, Serialize};

use crate::{BenchError, Result};

/// Which model shapes to benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// GPT-2 small (124M): 12 layers, 768 wide, 50257-token vocabulary, tied LM head; trained
    /// with the causal-LM loss. LoRA targets `c_attn`.
    Gpt2,
    /// RoBERTa-base (125M): 12 layers, 768 wide, with a 2-class sequence-classification head
    /// (trained in every mode, as PEFT's `SEQ_CLS` does). LoRA targets `query` and `value`.
    Roberta,
}

impl Arch {
    /// Name used on the command line (and by `scripts/bench_torch.py`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Roberta => "roberta",
        }
    }

    /// Human-readable name of the real-size shapes.
    pub fn label(self) -> &'static str {
        match self {
            Arch::Gpt2 => "GPT-2 small (124M)",
            Arch::Roberta => "RoBERTa-base (125M)",
        }
    }

    /// The PEFT `target_modules` of the LoRA runs (a regex, fully matched against module paths).
    pub fn target_regex(self, targets: Targets) -> &'static str {
        match (self, targets) {
            (Arch::Gpt2, Targets::Attention) => r".*\.c_attn",
            (Arch::Roberta, Targets::Attention) => r".*\.(query|value)",
            (Arch::Gpt2, Targets::AllLinear) => r".*\.(c_attn|c_proj|c_fc)",
            // The body's linear layers; the classifier is trained fully (modules_to_save).
            (Arch::Roberta, Targets::AllLinear) => r"roberta\..*\.(query|key|value|dense)",
        }
    }

    /// The same sites as burn parameter paths, for burn's `apply_lora` parameter group.
    fn burn_weight_regex(self, targets: Targets) -> String {
        format!("^{}\\.weight$", self.target_regex(targets))
    }
}

/// Which layers get adapters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Targets {
    /// The LoRA paper's choice: GPT-2 `c_attn`, RoBERTa `query` and `value`.
    #[default]
    Attention,
    /// Every linear layer of the transformer blocks (QLoRA's recommendation).
    AllLinear,
}

impl Targets {
    /// Name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Targets::Attention => "attention",
            Targets::AllLinear => "all-linear",
        }
    }
}

/// Real shapes, or a tiny stand-in of the same structure (for tests and smoke runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// The published configurations (GPT-2 small, RoBERTa-base).
    Real,
    /// 2 layers, 64 wide, 4 heads, 1000-token vocabulary: seconds, not minutes.
    Tiny,
}

/// How the model is made trainable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TrainMode {
    /// Every parameter trained, lora-train's AdamW over all of them.
    Full,
    /// Our LoRA (`LoraLinear` adapters injected by `lora_core`), lora-train's AdamW over the
    /// adapters (and the RoBERTa classifier).
    Lora,
    /// burn's built-in `Module::apply_lora` on the same weights, with burn's own AdamW, as a burn
    /// user would train it.
    BurnLora,
    /// Our weight-level LoRA (`lora_core::weight`, the path for unmodified burn models) on the
    /// same weights, lora-train's AdamW over the adapters (and the RoBERTa classifier).
    WeightLora,
}

impl TrainMode {
    /// Name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            TrainMode::Full => "full",
            TrainMode::Lora => "lora",
            TrainMode::BurnLora => "burn-lora",
            TrainMode::WeightLora => "weight-lora",
        }
    }
}

/// LoRA hyper-parameters shared by our LoRA and burn's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraShape {
    /// Rank (default 8).
    pub r: usize,
    /// Alpha (default 16, so the scale is 2).
    pub alpha: f64,
}

impl Default for LoraShape {
    fn default() -> Self {
        Self { r: 8, alpha: 16.0 }
    }
}

/// A synthetic batch: random token ids (and class labels for the classifier).
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[batch, seq]` token ids.
    pub ids: Tensor<2, Int>,
    /// `[batch]` class labels (RoBERTa) — unused by GPT-2, whose targets are the ids shifted.
    pub labels: Tensor<1, Int>,
}

/// What the benchmark needs from a model: a training loss, an inference forward, and the two
/// LoRA flavours.
pub trait BenchModel: Module + LoraSites + Sized {
    /// The mean training loss of `batch`.
    ///
    /// # Shapes
    /// - `batch.ids`: `[batch, seq]`, `batch.labels`: `[batch]`
    /// - output: `[1]`
    fn loss(&self, batch: &Batch) -> Result<Tensor<1>>;

    /// The mean training loss (detached) and its gradients computed in segments as `memory`
    /// says; an error where the architecture has no segmented step.
    fn segmented(
        &self,
        batch: &Batch,
        memory: MemoryOptions,
    ) -> Result<(Tensor<1>, Vec<Gradients>)>;

    /// The inference forward; the output is returned so the caller decides when to sync.
    ///
    /// # Shapes
    /// - `batch.ids`: `[batch, seq]`
    /// - output: flattened logits, `[batch · seq · vocab]` (GPT-2) or `[batch · classes]`
    fn infer(&self, batch: &Batch) -> Result<Tensor<1>>;

    /// Our LoRA on `targets`.
    fn inject_ours(self, lora: LoraShape, targets: Targets, init: InitLoraWeights) -> Result<Self>;

    /// Whether `apply_lora`'s frozen parameters other than the adapted weights should be trained
    /// again (the RoBERTa classifier).
    fn burn_lora_unfreeze() -> Option<&'static str>;

    /// The architecture.
    fn arch() -> Arch;
}

fn lora_config(arch: Arch, lora: LoraShape, targets: Targets, init: InitLoraWeights) -> LoraConfig {
    LoraConfig {
        target_modules: Some(TargetModules::Regex(arch.target_regex(targets).into())),
        ..LoraConfig::new(lora.r, lora.alpha, &[]).with_init(init)
    }
}

impl BenchModel for Gpt2LmHeadModel {
    fn loss(&self, batch: &Batch) -> Result<Tensor<1>> {
        let logits = self.forward(batch.ids.clone(), None)?;
        Ok(causal_lm_loss(logits, batch.ids.clone(), 0.0))
    }

    fn segmented(
        &self,
        batch: &Batch,
        memory: MemoryOptions,
    ) -> Result<(Tensor<1>, Vec<Gradients>)> {
        let ids = batch.ids.clone();
        let step = self.loss_and_grads(ids.clone(), None, ids, 0.0, memory)?;
        Ok((step.loss, step.parts))
    }

    fn infer(&self, batch: &Batch) -> Result<Tensor<1>> {
        Ok(self.forward(batch.ids.clone(), None)?.flatten(0, 2))
    }

    fn inject_ours(self, lora: LoraShape, targets: Targets, init: InitLoraWeights) -> Result<Self> {
        let config = lora_config(Arch::Gpt2, lora, targets, init);
        Ok(inject_gpt2_lora(self, &config, "default", CAttnMode::Fused)?.0)
    }

    fn burn_lora_unfreeze() -> Option<&'static str> {
        None
    }

    fn arch() -> Arch {
        Arch::Gpt2
    }
}

impl BenchModel for RobertaForSequenceClassification {
    fn loss(&self, batch: &Batch) -> Result<Tensor<1>> {
        let logits = self.forward(batch.ids.clone(), None, None)?;
        Ok(cross_entropy(logits, batch.labels.clone(), 0.0))
    }

    fn segmented(&self, _: &Batch, _: MemoryOptions) -> Result<(Tensor<1>, Vec<Gradients>)> {
        Err(BenchError::Invalid(
            "--checkpointing and --loss-chunk are implemented for GPT-2 only".into(),
        ))
    }

    fn infer(&self, batch: &Batch) -> Result<Tensor<1>> {
        Ok(self.forward(batch.ids.clone(), None, None)?.flatten(0, 1))
    }

    fn inject_ours(self, lora: LoraShape, targets: Targets, init: InitLoraWeights) -> Result<Self> {
        let config = lora_config(Arch::Roberta, lora, targets, init);
        // PEFT's SEQ_CLS defaults: the classifier is trained too (modules_to_save).
        Ok(inject_encoder_lora(self, &config, "default")?.0)
    }

    fn burn_lora_unfreeze() -> Option<&'static str> {
        Some(r"^classifier\.")
    }

    fn arch() -> Arch {
        Arch::Roberta
    }
}

/// GPT-2 at `size` (with `vocab` tokens instead, if given), parameters lazily initialised on
/// `device`.
pub fn gpt2(size: Size, vocab: Option<usize>, device: &Device) -> Gpt2LmHeadModel {
    let mut config = match size {
        Size::Real => Gpt2Config::default(),
        Size::Tiny => Gpt2Config {
            vocab_size: 1000,
            n_positions: 256,
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            ..Gpt2Config::default()
        },
    };
    config.vocab_size = vocab_size(Arch::Gpt2, size, vocab);
    config.init(device)
}

/// RoBERTa-base (2 labels) at `size` (with `vocab` tokens instead, if given), parameters lazily
/// initialised on `device`.
pub fn roberta(
    size: Size,
    vocab: Option<usize>,
    device: &Device,
) -> RobertaForSequenceClassification {
    let base = BertConfig::roberta_base().with_num_labels(2);
    let mut config = match size {
        Size::Real => base,
        Size::Tiny => BertConfig {
            vocab_size: 1000,
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 256,
            max_position_embeddings: 258,
            ..base
        },
    };
    config.vocab_size = vocab_size(Arch::Roberta, size, vocab);
    RobertaForSequenceClassification::new(&config, device)
}

/// The vocabulary size of `arch` at `size`, unless `vocab` overrides it.
pub fn vocab_size(arch: Arch, size: Size, vocab: Option<usize>) -> usize {
    if let Some(v) = vocab {
        return v;
    }
    match (arch, size) {
        (_, Size::Tiny) => 1000,
        (Arch::Gpt2, Size::Real) => Gpt2Config::default().vocab_size,
        (Arch::Roberta, Size::Real) => BertConfig::roberta_base().vocab_size,
    }
}

/// A random batch of `batch × seq` tokens. Ids start at 3 so RoBERTa's padding id (1) never
/// occurs and every position is a real token, as in PyTorch's run.
pub fn random_batch(
    arch: Arch,
    size: Size,
    vocab: Option<usize>,
    batch: usize,
    seq: usize,
    device: &Device,
) -> Batch {
    let vocab = vocab_size(arch, size, vocab) as f64;
    Batch {
        ids: Tensor::random([batch, seq], Distribution::Uniform(3.0, vocab), device),
        labels: Tensor::random([batch], Distribution::Uniform(0.0, 2.0), device),
    }
}

/// Makes `model` trainable the `mode` way, with adapters on `targets`.
pub fn prepare<M: BenchModel>(
    model: M,
    mode: TrainMode,
    lora: LoraShape,
    targets: Targets,
) -> Result<M> {
    match mode {
        TrainMode::Full => Ok(model),
        TrainMode::Lora => model.inject_ours(lora, targets, InitLoraWeights::Default),
        TrainMode::WeightLora => {
            let mut config = lora_config(M::arch(), lora, targets, InitLoraWeights::Default);
            if M::burn_lora_unfreeze().is_some() {
                config.modules_to_save = Some(vec!["classifier".into()]);
            }
            // The LoraLinear sites without adapters are plain weights to this path, at the
            // same burn paths.
            Ok(weight::inject_adapter(
                model,
                &config,
                "default",
                &PathMap::identity(),
            )?)
        }
        TrainMode::BurnLora => {
            let group = ParamGroup::from_regex(M::arch().burn_weight_regex(targets))
                .map_err(|e| BenchError::Invalid(format!("parameter group: {e:?}")))?;
            let model = model.apply_lora(Lora::new(lora.r, lora.alpha).set_param_group(group));
            match M::burn_lora_unfreeze() {
                Some(pattern) => {
                    let head = ParamGroup::from_regex(pattern)
                        .map_err(|e| BenchError::Invalid(format!("parameter group: {e:?}")))?;
                    Ok(model.unfreeze_group(head))
                }
                None => Ok(model),
            }
        }
    }
}
