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
//! - **Data**, one file per stage: [`records`] (JSONL/CSV/TSV/text rows, or built in memory)
//!   → [`tokenize`] ([`Tokenizer`], [`DataConfig`]) → [`dataset`] ([`TextDataset`]) →
//!   [`batch`] (padding) with [`sampler`] (order): readers with named
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
//! The trainer knows models only through [`TrainModel`] and tokenizers only through
//! [`Tokenizer`]: lora-models implements both for its GPT-2 (causal LM) and RoBERTa/BERT
//! (sequence classification and regression) models and its `TextTokenizer` (see its `train`
//! module for a GPT-2 run); any other model plugs in the same way (see [`TrainModel`]'s docs
//! for a classifier in a few lines).
//!
//! ```no_run
//! use lora_core::LoraConfig;
//! use lora_train::{
//!     Columns, DataConfig, TextBatch, Tokenizer, TrainModel, Trainer, TrainerConfig,
//!     load_text_datasets,
//! };
//!
//! /// Fine-tunes `model` (an adapter injected as `lora` describes) on prompt/completion data.
//! fn fine_tune<M: TrainModel<Batch = TextBatch>>(
//!     model: M,
//!     lora: &LoraConfig,
//!     tokenizer: &impl Tokenizer,
//! ) -> lora_train::Result<M> {
//!     let data = DataConfig {
//!         columns: Columns::prompt_completion("prompt", "completion"),
//!         max_length: 256,
//!         ..Default::default()
//!     };
//!     let (train, valid) = load_text_datasets("train.jsonl".as_ref(), Some("valid.jsonl".as_ref()), &data, tokenizer)?;
//!     let config = TrainerConfig { output_dir: "out".into(), num_epochs: 3, batch_size: 8, ..Default::default() };
//!     let device = burn::prelude::Device::flex();
//!     let trained = Trainer::new(config, device)?.fit(model, lora, &train, valid.as_ref())?;
//!     println!("{:#?}", trained.summary); // steps, losses, final and best metrics, wall time
//!     // out/adapter and out/best hold PEFT adapters; out/checkpoint-*/ resume with Resume::Latest.
//!     Ok(trained.model)
//! }
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod checkpoint;
pub mod dataset;
pub mod error;
pub mod interop;
pub mod loss;
pub mod malloc;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod records;
mod run;
pub mod sampler;
pub mod schedule;
pub mod textgen_metrics;
pub mod tokenize;
pub mod trainer;

pub use batch::{
    BatchTargets, ItemTarget, PaddedRows, PaddingSide, TargetKind, TextBatch, TextItem, pad_rows,
};
pub use checkpoint::TrainerState;
pub use dataset::{BatchSource, TextDataset};
pub use error::{Result, TrainError};
pub use interop::{LearnerAdapter, StepLoss};
pub use loss::{LossConfig, class_loss, mse_loss};
pub use metrics::{Metric, Metrics, format_metrics};
pub use model::{
    EvalOutput, IdLimits, LossOutput, Predictions, StepGrads, TrainModel, plain_grads,
};
pub use optim::{AdamW, OptimizerConfig};
pub use plot::plot_curves;
pub use progress::ProgressMode;
pub use records::{
    Columns, FileFormat, LabelMap, Record, Task, read_records, read_records_as, read_records_from,
};
pub use schedule::{ScheduleConfig, ScheduleKind, Warmup};
pub use textgen_metrics::{BleuScore, E2eScores, corpus_bleu, corpus_rouge_l, e2e_scores};
pub use tokenize::{DataConfig, Tokenizer, TokenizerError, load_text_datasets};
pub use trainer::{
    BestMetric, Interrupter, Resume, StopReason, TrainSummary, Trained, Trainer, TrainerConfig,
};
