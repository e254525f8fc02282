//! # lora-train: the training loop for LoRA fine-tuning on burn
//!
//! Fine-tunes any model that implements [`TrainModel`] (batch → mean loss; evaluation step →
//! loss and predictions) on any burn `Device` with autodiff (flex, ndarray, wgpu), keeping
//! only what trains in its checkpoints and resuming exactly where it stopped.
//!
//! - **Optimizer** ([`optim`]): AdamW with PyTorch's defaults over the trainable parameters
//!   only (no decay on biases and norms), LoRA+ (a larger learning rate for B), clipping by
//!   global norm, exact gradient accumulation.
//! - **Schedules** ([`schedule`]): linear warmup (steps or ratio), then linear, cosine or
//!   constant.
//! - **Data** ([`data`], [`dataset`], [`sampler`]): JSONL/CSV/TSV/text readers with named
//!   columns (text, pair, label; prompt/completion; E2E `context||completion`), tokenization
//!   with truncation, dynamic padding, length-grouped batches, seeded shuffling, a validation
//!   split; malformed rows are errors naming file and line.
//! - **Evaluation** ([`metrics`]): loss; accuracy, F1, MCC; Pearson, Spearman; perplexity;
//!   best-adapter tracking and early stopping. Text generation ([`textgen_metrics`]): corpus
//!   BLEU and ROUGE-L as the E2E NLG challenge's scripts compute them.
//! - **Checkpoints** ([`checkpoint`]): the adapter in PEFT's format plus the trainable tensors,
//!   optimizer state and [`TrainerState`], written atomically with last-k retention.
//! - **Output** ([`progress`], [`plot`]): a progress bar (plain lines when not a terminal), a
//!   JSONL metrics log and `curves.png` (loss, evaluation metric with the best step, learning
//!   rate; titled panels with labelled axes).
//! - **Interop** ([`interop`]): burn's own `Learner` can drive the same models.
//!
//! Built in: GPT-2 causal-LM training ([`lm`]) and RoBERTa/BERT sequence classification and
//! regression ([`classify`]); any other model plugs in by implementing [`TrainModel`] (see its
//! docs for a classifier in a few lines).
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

#![warn(missing_docs)]

pub mod checkpoint;
pub mod classify;
pub mod data;
pub mod dataset;
pub mod error;
pub mod interop;
pub mod lm;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod progress;
mod run;
pub mod sampler;
pub mod schedule;
pub mod textgen_metrics;
pub mod trainer;

pub use checkpoint::TrainerState;
pub use data::{
    Columns, FileFormat, LabelMap, Record, Task, read_records, read_records_as, read_records_from,
};
pub use dataset::{
    BatchTargets, DataConfig, ItemTarget, TargetKind, TextBatch, TextDataset, TextItem,
    load_text_datasets,
};
pub use error::{Result, TrainError};
pub use interop::{LearnerAdapter, StepLoss};
pub use loss::{LossConfig, class_loss, mse_loss};
pub use metrics::{Metrics, format_metrics};
pub use model::{
    BatchSource, EvalOutput, IdLimits, LossOutput, Predictions, StepGrads, TrainModel, plain_grads,
};
pub use optim::{AdamW, OptimizerConfig};
pub use plot::plot_curves;
pub use progress::ProgressMode;
pub use schedule::{ScheduleConfig, ScheduleKind, Warmup};
pub use textgen_metrics::{BleuScore, E2eScores, corpus_bleu, corpus_rouge_l, e2e_scores};
pub use trainer::{
    BestMetric, Interrupter, Resume, StopReason, TrainSummary, Trained, Trainer, TrainerConfig,
};
