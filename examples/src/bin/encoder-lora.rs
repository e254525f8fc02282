//! `encoder-lora`: LoRA for RoBERTa/BERT-family sequence classification from the command line.
//!
//! ```text
//! encoder-lora train   --model DIR --data train.csv [--valid valid.csv] --out DIR
//! encoder-lora eval    --model DIR --adapter DIR --data valid.csv [--json]
//! encoder-lora predict --model DIR --adapter DIR --text "..." [--pair "..."] [--json]
//! encoder-lora info    --model DIR --num-labels 2
//! ```
//!
//! Defaults follow the LoRA paper's GLUE setup for RoBERTa: r = 8, alpha = 8, targets
//! query/value, the classifier trained (PEFT's `modules_to_save`), lr 5e-4, warmup ratio 0.06,
//! batch 16, max length 512.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::prelude::*;
use clap::{Args, Parser, Subcommand};
use lora_core::{LoraConfig, ParamReport, TargetModules, load_adapter};
use lora_examples::{
    CliError, ModelArgs, Result, RunArgs, data_file, device, exit_code, interruption, model_dir,
    print_json, stop_on_ctrl_c, train_error,
};
use lora_models::TextTokenizer;
use lora_models::bert::{
    BertForSequenceClassification, EncoderCheckpoint, LoadOptions,
    RobertaForSequenceClassification, inject_encoder_lora,
};
use lora_train::{
    Columns, DataConfig, OptimizerConfig, ScheduleConfig, ScheduleKind, Task, TextDataset,
    TrainModel, Trainer, TrainerConfig, Warmup, load_text_datasets,
};

#[derive(Parser)]
#[command(
    name = "encoder-lora",
    version,
    about = "LoRA fine-tuning for RoBERTa/BERT classifiers (burn)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a LoRA adapter and the classifier head.
    Train(TrainArgs),
    /// Loss and task metrics (accuracy/F1/MCC, or Pearson/Spearman) on a data file.
    Eval(EvalArgs),
    /// Class probabilities (or the regression value) for one text or pair.
    Predict(PredictArgs),
    /// Trainable-parameter report.
    Info(InfoArgs),
}

#[derive(Args)]
struct DataArgs {
    /// Column with the text.
    #[arg(long, default_value = "sentence")]
    text_column: String,
    /// Column with the second text of a pair (e.g. GLUE MRPC, STS-B).
    #[arg(long)]
    pair_column: Option<String>,
    /// Column with the label.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Numeric labels: regression (STS-B) instead of classification.
    #[arg(long)]
    regression: bool,
    /// Maximum tokens per example (longer inputs are truncated).
    #[arg(long, default_value_t = 512)]
    max_length: usize,
}

impl DataArgs {
    fn config(&self, labels: Option<Vec<String>>, validation_ratio: f64) -> DataConfig {
        DataConfig {
            columns: Columns::labeled(
                &self.text_column,
                self.pair_column.as_deref(),
                &self.label_column,
            ),
            task: if self.regression {
                Task::Regression
            } else {
                Task::Classification { labels }
            },
            max_length: self.max_length,
            append_eos: false,
            validation_ratio,
            ..DataConfig::default()
        }
    }
}

#[derive(Args)]
struct LoraArgs {
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 8.0)]
    alpha: f64,
    /// Dropout on the adapter input.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Target modules, comma separated.
    #[arg(long, default_value = "query,value")]
    targets: String,
}

impl LoraArgs {
    fn config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            lora_alpha: self.alpha,
            lora_dropout: self.dropout,
            target_modules: Some(TargetModules::List(
                self.targets
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .collect(),
            )),
            ..LoraConfig::default()
        }
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    data_args: DataArgs,
    #[command(flatten)]
    lora: LoraArgs,
    /// Training data (.csv, .tsv or .jsonl).
    #[arg(long)]
    data: PathBuf,
    /// Validation data; default: 10% of --data held out.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Warmup as a fraction of all steps.
    #[arg(long, default_value_t = 0.06)]
    warmup_ratio: f64,
    /// Examples per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Metric that picks the best adapter (accuracy, f1, mcc, pearson, spearman, loss).
    #[arg(long)]
    metric: Option<String>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data_args: DataArgs,
    /// PEFT adapter directory (with the trained classifier).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Evaluation data.
    #[arg(long)]
    data: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// PEFT adapter directory (with the trained classifier).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The text.
    #[arg(long)]
    text: String,
    /// Second text of a pair.
    #[arg(long)]
    pair: Option<String>,
    /// Maximum tokens (longer inputs are truncated).
    #[arg(long, default_value_t = 512)]
    max_length: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    lora: LoraArgs,
    /// Number of labels of the head.
    #[arg(long)]
    num_labels: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The label names an adapter was trained with (written next to it by `train`).
const LABELS_FILE: &str = "labels.json";

fn adapter_labels(adapter: Option<&Path>) -> Result<Option<Vec<String>>> {
    let Some(adapter) = adapter else {
        return Ok(None);
    };
    let p = adapter.join(LABELS_FILE);
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p)
        .map_err(|e| CliError::Message(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| CliError::Message(format!("{}: {e}", p.display())))
}

/// Runs `$body` with `$M` bound to the classifier class of the checkpoint's family.
macro_rules! with_classifier {
    ($dir:expr, $M:ident => $body:expr) => {{
        let (_, config_json) = lora_models::hf::read_config_json($dir)?;
        let roberta = config_json
            .get("model_type")
            .and_then(|v| v.as_str())
            .is_some_and(|t| t.contains("roberta"));
        if roberta {
            type $M = RobertaForSequenceClassification;
            $body
        } else {
            type $M = BertForSequenceClassification;
            $body
        }
    }};
}

fn load<M: EncoderCheckpoint>(dir: &Path, device: &Device, num_labels: Option<usize>) -> Result<M> {
    load_quiet(dir, device, num_labels, false)
}

/// `quiet`: an adapter with the trained head follows, so a fresh head is not news.
fn load_quiet<M: EncoderCheckpoint>(
    dir: &Path,
    device: &Device,
    num_labels: Option<usize>,
    quiet: bool,
) -> Result<M> {
    let options = LoadOptions {
        num_labels,
        ignore_mismatched_head: true,
    };
    let p = M::load_pretrained(dir, device, &options)?;
    if let Some(w) = p.report.warning(M::CLASS)
        && !quiet
    {
        eprintln!("note: {w}");
    }
    Ok(p.model)
}

fn train_with<M>(
    a: &TrainArgs,
    dir: &Path,
    device: Device,
    train: TextDataset,
    valid: Option<TextDataset>,
    labels: usize,
) -> Result<()>
where
    M: EncoderCheckpoint + TrainModel<Batch = lora_train::TextBatch>,
{
    device.seed(a.run.seed); // head and adapter initialisation
    let model: M = load(dir, &device, Some(labels))?;
    let (model, lora) = inject_encoder_lora(model, &a.lora.config(), "default")?;
    eprintln!("{}", ParamReport::new(&model, &lora).summary());
    let metric = a.metric.clone().unwrap_or_else(|| {
        if a.data_args.regression {
            "pearson"
        } else {
            "accuracy"
        }
        .into()
    });
    let config = TrainerConfig {
        output_dir: a.run.out.clone(),
        num_epochs: a.epochs,
        max_steps: a.run.max_steps,
        batch_size: a.batch_size,
        optimizer: OptimizerConfig {
            learning_rate: a.lr,
            ..OptimizerConfig::default()
        },
        schedule: ScheduleConfig {
            kind: ScheduleKind::Linear,
            warmup: Warmup::Ratio(a.warmup_ratio),
        },
        seed: a.run.seed,
        metric_for_best: metric.clone(),
        resume: a.run.resume_mode(),
        overwrite_output_dir: a.run.overwrite,
        ..TrainerConfig::default()
    };
    let label_names = train.label_names().map(<[String]>::to_vec);
    let trainer = Trainer::new(config, device)?;
    // The held-out score of the starting point (fresh head, B = 0), so the run shows what LoRA
    // changed; a resumed run already recorded it.
    let before = match (&valid, a.run.resume) {
        (Some(v), false) => {
            let m = trainer
                .evaluate(&model, v)
                .map_err(|e| train_error(e, &a.run.out))?;
            let text = serde_json::to_string(&m).unwrap_or_default();
            lora_core::io::write_atomic(&a.run.out.join("eval_before.json"), text.as_bytes())?;
            eprintln!("validation before training: {}", metric_line(&m));
            Some(m)
        }
        _ => None,
    };
    let interrupter = trainer.interrupter();
    stop_on_ctrl_c(interrupter.clone())?;
    let trained = trainer
        .fit(model, &lora, &train, valid.as_ref())
        .map_err(|e| train_error(e, &a.run.out))?;
    let s = &trained.summary;
    if let Some(names) = label_names {
        for d in std::iter::once(Some(s.adapter_dir.clone()))
            .chain([s.best_adapter_dir.clone()])
            .flatten()
        {
            let text = serde_json::to_string(&names).unwrap_or_default();
            lora_core::io::write_atomic(&d.join(LABELS_FILE), text.as_bytes())?;
        }
    }
    if let Some(stopped) = interruption(&interrupter, s) {
        return Err(stopped);
    }
    eprintln!(
        "done: {} steps in {:.1?}, adapter in {}",
        s.global_step,
        s.wall_time,
        s.adapter_dir.display()
    );
    if let Some(m) = &s.final_eval {
        eprintln!("validation after training: {}", metric_line(m));
        if let Some(b) = &before {
            // The trainer accepts an `eval_` prefix; the metrics maps are keyed without it.
            let key = metric.strip_prefix("eval_").unwrap_or(&metric);
            if let (Some(x), Some(y)) = (b.get(key), m.get(key)) {
                eprintln!("held-out {key}: {x:.4} before → {y:.4} after LoRA");
            }
        }
    }
    Ok(())
}

/// `name value` pairs of a metrics map, on one line.
fn metric_line(m: &lora_train::Metrics) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn train(mut a: TrainArgs) -> Result<()> {
    a.data = data_file(&a.data, "--data", "train")?;
    a.valid = match a.valid.take() {
        Some(v) => Some(data_file(&v, "--valid", "validation")?),
        None => None,
    };
    let dir = model_dir(&a.model.model)?;
    let device = device(&a.model.device)?;
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let data = a
        .data_args
        .config(None, if a.valid.is_some() { 0.0 } else { 0.1 });
    let (train, valid) = load_text_datasets(&a.data, a.valid.as_deref(), &data, &tokenizer)?;
    let labels = if a.data_args.regression {
        1
    } else {
        train.label_names().map_or(2, <[String]>::len)
    };
    std::fs::create_dir_all(&a.run.out)
        .map_err(|e| CliError::Message(format!("--out {}: {e}", a.run.out.display())))?;
    let run = serde_json::json!({
        "model": dir, "data": a.data, "valid": a.valid, "lora": a.lora.config(),
        "data_config": data, "labels": train.label_names(),
    });
    lora_core::io::write_atomic(&a.run.out.join("run.json"), run.to_string().as_bytes())?;
    with_classifier!(&dir, M => train_with::<M>(&a, &dir, device, train, valid, labels))
}

fn with_adapter<M: EncoderCheckpoint>(
    dir: &Path,
    device: &Device,
    adapter: Option<&Path>,
    labels: Option<usize>,
) -> Result<M> {
    let model: M = load_quiet(dir, device, labels, adapter.is_some())?;
    Ok(match adapter {
        Some(a) => load_adapter(&model, a, "default")?.0,
        None => model,
    })
}

fn eval(mut a: EvalArgs) -> Result<()> {
    a.data = data_file(&a.data, "--data", "validation")?;
    let dir = model_dir(&a.model.model)?;
    let device = device(&a.model.device)?;
    let names = adapter_labels(a.adapter.as_deref())?;
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let data = a.data_args.config(names.clone(), 0.0);
    let (set, _) = load_text_datasets(&a.data, None, &data, &tokenizer)?;
    let labels = if a.data_args.regression {
        1
    } else {
        set.label_names().map_or(2, <[String]>::len)
    };
    let trainer = Trainer::new(
        TrainerConfig {
            progress: lora_train::ProgressMode::Off,
            ..TrainerConfig::default()
        },
        device.clone(),
    )?;
    let metrics = with_classifier!(&dir, M => {
        let model: M = with_adapter(&dir, &device, a.adapter.as_deref(), Some(labels))?;
        trainer.evaluate(&model, &set)?
    });
    if a.json {
        print_json(&serde_json::json!(metrics));
    } else {
        for (k, v) in &metrics {
            println!("{k}: {v:.6}");
        }
    }
    Ok(())
}

fn predict(a: PredictArgs) -> Result<()> {
    let dir = model_dir(&a.model.model)?;
    let device = device(&a.model.device)?;
    let names = adapter_labels(a.adapter.as_deref())?;
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let data = DataConfig {
        columns: Columns::labeled("text", a.pair.as_ref().map(|_| "pair"), "label"),
        task: Task::Classification {
            labels: names.clone(),
        },
        max_length: a.max_length,
        append_eos: false,
        validation_ratio: 0.0,
        ..DataConfig::default()
    };
    // One row through the same tokenization path as training.
    let tmp = tempfile_path()?;
    let first = names
        .as_ref()
        .and_then(|n| n.first())
        .cloned()
        .unwrap_or_else(|| "0".into());
    let mut row = serde_json::json!({ "text": a.text, "label": first });
    if let Some(p) = &a.pair {
        row["pair"] = serde_json::json!(p);
    }
    std::fs::write(&tmp, format!("{row}\n")).map_err(|e| CliError::Message(e.to_string()))?;
    let loaded = load_text_datasets(&tmp, None, &data, &tokenizer);
    let _ = std::fs::remove_file(&tmp);
    let (set, _) = loaded?;
    let labels = names.as_ref().map(Vec::len);
    let batch = lora_train::BatchSource::batch(&set, &[0], &device)?;
    let logits: Tensor<2> = with_classifier!(&dir, M => {
        let model: M = with_adapter(&dir, &device, a.adapter.as_deref(), labels)?;
        model.forward(batch.input_ids, Some(batch.attention_mask), Some(batch.token_type_ids))?
    });
    let [_, k] = logits.dims();
    let value = if a.regression_head(k) {
        let v = lora_core::io::HostTensor::from_tensor(logits, "logits")?.data;
        serde_json::json!({ "value": v.first() })
    } else {
        let probs = lora_core::io::HostTensor::from_tensor(
            burn::tensor::activation::softmax(logits, 1),
            "probabilities",
        )?
        .data;
        let names: Vec<String> =
            names.unwrap_or_else(|| (0..probs.len()).map(|i| i.to_string()).collect());
        let best = probs
            .iter()
            .enumerate()
            .fold(0, |b, (i, p)| if *p > probs[b] { i } else { b });
        let table: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&probs)
            .map(|(n, p)| (n.clone(), serde_json::json!(p)))
            .collect();
        serde_json::json!({ "label": names.get(best), "probabilities": table })
    };
    if a.json {
        print_json(&value);
    } else {
        println!("{value}");
    }
    Ok(())
}

impl PredictArgs {
    /// A one-output head is a regression head (STS-B style).
    fn regression_head(&self, outputs: usize) -> bool {
        outputs == 1
    }
}

fn tempfile_path() -> Result<PathBuf> {
    Ok(std::env::temp_dir().join(format!("encoder-lora-predict-{}.jsonl", std::process::id())))
}

fn info(a: InfoArgs) -> Result<()> {
    let dir = model_dir(&a.model.model)?;
    let device = device(&a.model.device)?;
    let report = with_classifier!(&dir, M => {
        let model: M = load(&dir, &device, a.num_labels)?;
        let (model, lora) = inject_encoder_lora(model, &a.lora.config(), "default")?;
        ParamReport::new(&model, &lora)
    });
    if a.json {
        print_json(&serde_json::json!({
            "trainable": report.trainable, "total": report.total, "lora": report.lora_params(),
            "trainable_percent": report.trainable_percent(),
        }));
    } else {
        print!("{report}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Train(a) => train(a),
        Command::Eval(a) => eval(a),
        Command::Predict(a) => predict(a),
        Command::Info(a) => info(a),
    };
    exit_code(result)
}
