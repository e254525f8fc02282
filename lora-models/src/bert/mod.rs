//! RoBERTa and BERT-family encoders (BERT, RoBERTa, MiniLM, XLM-R) with Hugging Face
//! checkpoints and tokenizers: the encoder body, sequence classification (single sentences and
//! pairs, classification or regression), RoBERTa's masked-LM head, and sentence embeddings.
//!
//! Module paths equal Hugging Face's (`roberta.encoder.layer.0.attention.self.query`), every
//! linear layer is LoRA-capable, and [`inject_encoder_lora`] applies PEFT's defaults (`query`
//! and `value`, the classifier in `modules_to_save`), so PEFT `SEQ_CLS` adapters load and save
//! both ways.
//!
//! ```no_run
//! # fn main() -> Result<(), lora_models::ModelError> {
//! use burn::prelude::*;
//! use lora_core::LoraConfig;
//! use lora_models::bert::{
//!     EncoderCheckpoint, EncoderTokenizer, RobertaForSequenceClassification, inject_encoder_lora,
//! };
//!
//! let device = Device::flex();
//! let (model, config) = RobertaForSequenceClassification::from_pretrained("roberta-dir", &device)?;
//! let tokenizer = EncoderTokenizer::from_dir("roberta-dir", &config)?;
//! let batch = tokenizer.batch_pairs(&[("A man is eating.", "Someone eats.")], &device)?;
//! let lora = LoraConfig { r: 8, lora_alpha: 16.0, ..LoraConfig::default() }; // targets: PEFT's query/value
//! let (model, lora) = inject_encoder_lora(model, &lora, "default")?;
//! let logits = model.forward(batch.input_ids, Some(batch.attention_mask), None)?;
//! # let _ = (logits, lora);
//! # Ok(())
//! # }
//! ```

mod batch;
mod config;
mod loader;
mod lora;
mod model;
mod pooling;
mod segmented;
mod task;

pub use batch::{EncoderBatch, EncoderTokenizer, PaddingSide};
pub use config::{BertConfig, EncoderFamily, ProblemType};
pub use loader::{EncoderCheckpoint, LoadOptions, LoadReport, Pretrained, normalize_keys};
pub use lora::{default_targets, inject_encoder_lora};
pub use model::{
    BertAttention, BertEmbeddings, BertEncoder, BertForSequenceClassification, BertIntermediate,
    BertLayer, BertModel, BertOutput, BertPooler, BertSelfAttention, BertSelfOutput,
    RobertaClassificationHead, RobertaForMaskedLM, RobertaForSequenceClassification, RobertaLMHead,
    first_token, hf_param_path,
};
pub use pooling::{SentenceEncoder, cosine_similarity, l2_normalize, mean_pooling};
pub use segmented::{EncoderClassifier, checkpointed_step};
pub use task::{ClassificationTargets, sequence_classification_loss};
