//! Training these models with lora-train: [`TrainModel`](lora_train::TrainModel) for GPT-2's
//! causal LM ([`lm`]) and the RoBERTa/BERT sequence classifiers ([`classify`]), lora-train's
//! [`Tokenizer`](lora_train::Tokenizer) for [`TextTokenizer`](crate::TextTokenizer), and
//! [`ModelError`] as a [`TrainError`].
//!
//! ```no_run
//! # fn main() -> Result<(), lora_train::TrainError> {
//! use burn::prelude::*;
//! use lora_core::LoraConfig;
//! use lora_models::{TextTokenizer, gpt2::{CAttnMode, Gpt2LmHeadModel, inject_gpt2_lora}};
//! use lora_train::{Columns, DataConfig, Trainer, TrainerConfig, load_text_datasets};
//!
//! let device = Device::flex();
//! device.seed(42); // adapter initialisation
//! let (model, _) = Gpt2LmHeadModel::from_pretrained("gpt2", &device)?;
//! let lora = LoraConfig::new(4, 32.0, &["c_attn"]).with_dropout(0.1);
//! let (model, lora) = inject_gpt2_lora(model, &lora, "default", CAttnMode::QueryValue)?;
//!
//! let tokenizer = TextTokenizer::from_dir("gpt2")?;
//! let data = DataConfig {
//!     columns: Columns::prompt_completion("prompt", "completion"),
//!     max_length: 256,
//!     ..Default::default()
//! };
//! let (train, valid) = load_text_datasets("train.jsonl".as_ref(), Some("valid.jsonl".as_ref()), &data, &tokenizer)?;
//!
//! let config = TrainerConfig { output_dir: "out".into(), num_epochs: 3, batch_size: 8, ..Default::default() };
//! let trained = Trainer::new(config, device)?.fit(model, &lora, &train, valid.as_ref())?;
//! println!("{:#?}", trained.summary); // steps, losses, final and best metrics, wall time
//! // out/adapter and out/best hold PEFT adapters; out/checkpoint-*/ resume with Resume::Latest.
//! # Ok(())
//! # }
//! ```
//!
//! burn's own `Learner` drives the same models through
//! [`LearnerAdapter`](lora_train::LearnerAdapter):
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::data::dataloader::DataLoaderBuilder;
//! use burn::optim::AdamWConfig;
//! use burn::prelude::*;
//! use burn::train::metric::LossMetric;
//! use burn::train::{Interrupter, Learner, SupervisedTraining};
//! use lora_core::LoraConfig;
//! use lora_models::{TextTokenizer, gpt2::{CAttnMode, Gpt2LmHeadModel, inject_gpt2_lora}};
//! use lora_train::{DataConfig, LearnerAdapter, Columns, load_text_datasets};
//!
//! let device = Device::flex();
//! let (model, _) = Gpt2LmHeadModel::from_pretrained("gpt2", &device)?;
//! let (model, _lora) = inject_gpt2_lora(model, &LoraConfig::new(8, 16.0, &["c_attn"]), "default", CAttnMode::Fused)?;
//! let tokenizer = TextTokenizer::from_dir("gpt2")?;
//! let data = DataConfig { columns: Columns::text("text"), max_length: 64, ..Default::default() };
//! let (train, valid) = load_text_datasets("train.jsonl".as_ref(), None, &data, &tokenizer)?;
//! let valid = valid.ok_or("no validation split")?;
//!
//! let loader = |ds: lora_train::TextDataset| {
//!     DataLoaderBuilder::new(ds.batcher()).batch_size(8).shuffle(42).build(ds)
//! };
//! // One interrupter for both: a failing step stops training with its message.
//! let interrupter = Interrupter::new();
//! let adapter = LearnerAdapter::new(model, &interrupter);
//! let learner = Learner::new(adapter, AdamWConfig::new().init(), 2e-4);
//! let result = SupervisedTraining::new("burn-run", loader(train), loader(valid))
//!     .metric_train_numeric(LossMetric::new())
//!     .metric_valid_numeric(LossMetric::new())
//!     .num_epochs(2)
//!     .with_interrupter(interrupter)
//!     .launch(learner);
//! if let Some(e) = result.model.error() {
//!     return Err(e.into());
//! }
//! let trained: Gpt2LmHeadModel = result.model.inner;
//! # let _ = trained;
//! # Ok(())
//! # }
//! ```

pub mod classify;
pub mod lm;
mod tokenizer;

use lora_train::TrainError;

use crate::error::ModelError;

impl From<ModelError> for TrainError {
    fn from(e: ModelError) -> Self {
        TrainError::Model(Box::new(e))
    }
}
