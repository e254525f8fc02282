//! `encoder-lora`: LoRA for RoBERTa/BERT-family sequence classification from the command line.
//!
//! ```text
//! encoder-lora train   --model DIR --data train.csv [--valid valid.csv] --out DIR
//! encoder-lora eval    --model DIR --adapter DIR --data valid.csv [--json]
//! encoder-lora predict --model DIR [--adapter DIR] --text "..." [--pair "..."] [--json]
//! encoder-lora predict --model DIR [--adapter DIR] --data rows.jsonl|rows.csv|-   (JSON lines)
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
    BertConfig, BertForSequenceClassification, EncoderCheckpoint, EncoderClassifier,
    EncoderTokenizer, LoadOptions, RobertaForSequenceClassification, inject_encoder_lora,
};
use lora_train::{
    Columns, DataConfig, Task, TextDataset, TrainModel, Trainer, TrainerConfig, Warmup,
    load_text_datasets,
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
    /// Class probabilities (or the regression value) for a text, a pair, or every row of a file.
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
    /// The adapter config; `base`: the adapter's `base_model_name_or_path`.
    fn config(&self, base: Option<String>) -> LoraConfig {
        LoraConfig {
            base_model_name_or_path: base,
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
    /// Activation checkpointing per layer: keep only each layer's input and run the layer again
    /// in backward (less memory, about one more forward per step).
    #[arg(long)]
    gradient_checkpointing: bool,
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
    metric: Option<lora_train::Metric>,
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
    /// PEFT adapter directory (with the trained classifier); without it the checkpoint's own
    /// head is used.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The text (or use --data).
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    text: Option<String>,
    /// Second text of a pair.
    #[arg(long, requires = "text")]
    pair: Option<String>,
    /// Texts to classify, one prediction per row as a JSON line on stdout: a .jsonl, .csv or
    /// .tsv file, or `-` for JSON lines on stdin.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Column with the text (--data).
    #[arg(long, default_value = "sentence")]
    text_column: String,
    /// Column with the second text of a pair (--data).
    #[arg(long)]
    pair_column: Option<String>,
    /// Rows per forward pass (--data).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Maximum tokens (longer inputs are truncated).
    #[arg(long, default_value_t = 512)]
    max_length: usize,
    /// Print JSON (one line per row with --data, always).
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

/// The classification head that `eval` and `predict` use: its label names, one per output.
struct Head {
    /// Label names by class index.
    names: Vec<String>,
    /// Whether the adapter file holds the head's weights (PEFT's `modules_to_save`).
    in_adapter: bool,
}

impl Head {
    /// A one-output head is a regression head (STS-B style).
    fn is_regression(&self) -> bool {
        self.names.len() == 1
    }
}

/// Rows of the head weight `key` in an adapter file, if the file has it.
fn adapter_head_rows(adapter: &Path, key: &str) -> Result<Option<usize>> {
    let path = adapter.join(lora_core::adapter::ADAPTER_FILE);
    if !path.exists() {
        return Ok(None); // load_adapter reports the missing file
    }
    let tensors = lora_core::adapter::read_safetensors(&path)?;
    let key = format!("{}{key}", lora_core::adapter::KEY_PREFIX);
    Ok(tensors.get(&key).and_then(|t| t.shape.first().copied()))
}

/// Label names and output count of the head: names from the adapter's `labels.json` (written
/// by `train`), else the checkpoint's `id2label`, else class indices; the count from
/// `labels.json`, else the adapter's head weights, else the checkpoint's config.
fn resolve_head<M: EncoderCheckpoint>(config: &BertConfig, adapter: Option<&Path>) -> Result<Head> {
    let names = adapter_labels(adapter)?;
    let rows = match (adapter, M::LABEL_KEY) {
        (Some(a), Some(key)) => adapter_head_rows(a, key)?,
        _ => None,
    };
    if let (Some(n), Some(r)) = (&names, rows)
        && n.len() != r
    {
        return Err(CliError::Message(format!(
            "{LABELS_FILE} names {} labels but the adapter's head has {r} outputs",
            n.len()
        )));
    }
    let k = names
        .as_ref()
        .map(Vec::len)
        .or(rows)
        .unwrap_or_else(|| config.num_labels());
    let names = names.unwrap_or_else(|| match &config.id2label {
        Some(m) if m.len() == k => config.labels(),
        _ => (0..k).map(|i| i.to_string()).collect(),
    });
    Ok(Head {
        names,
        in_adapter: rows.is_some(),
    })
}

/// Runs `$body` with `$M` bound to the classifier class of the checkpoint's family.
macro_rules! with_classifier {
    ($dir:expr, $M:ident => $body:expr) => {{
        let family = lora_models::bert::BertConfig::load($dir)?.family();
        if family == lora_models::bert::EncoderFamily::Roberta {
            type $M = RobertaForSequenceClassification;
            $body
        } else {
            type $M = BertForSequenceClassification;
            $body
        }
    }};
}

/// Loads a classifier for training or the report; a head the checkpoint lacks is freshly
/// initialised, with a note.
fn load<M: EncoderCheckpoint>(dir: &Path, device: &Device, num_labels: Option<usize>) -> Result<M> {
    let options = LoadOptions {
        num_labels,
        ignore_mismatched_head: true,
    };
    let p = M::load_pretrained(dir, device, &options)?;
    if let Some(w) = p.report.warning(M::CLASS) {
        eprintln!("note: {w}");
    }
    Ok(p.model)
}

/// What `train` prepared before the model class is known.
struct Sets {
    train: TextDataset,
    valid: Option<TextDataset>,
    /// Outputs of the head.
    labels: usize,
    /// `run.json` so far.
    run: serde_json::Value,
}

fn train_with<M>(a: &TrainArgs, dir: &Path, device: Device, sets: Sets) -> Result<()>
where
    M: EncoderCheckpoint + EncoderClassifier + TrainModel<Batch = lora_train::TextBatch>,
{
    let Sets {
        train,
        valid,
        labels,
        run,
    } = sets;
    device.seed(a.run.seed); // head and adapter initialisation
    let model: M = load(dir, &device, Some(labels))?;
    let base = Some(a.model.base_model_name_or_path());
    let (mut model, lora) = inject_encoder_lora(model, &a.lora.config(base), "default")?;
    model.body_mut().checkpoint_layers = a.gradient_checkpointing;
    eprintln!("{}", ParamReport::new(&model, &lora).summary());
    // run.json records the adapter config as saved (task type and base model filled in).
    let mut run = run;
    run["lora"] = serde_json::json!(lora);
    lora_core::io::write_atomic(&a.run.out.join("run.json"), run.to_string().as_bytes())?;
    let metric = a.metric.unwrap_or(if a.data_args.regression {
        lora_train::Metric::Pearson
    } else {
        lora_train::Metric::Accuracy
    });
    let config = TrainerConfig {
        // The held-out score of the starting point (fresh head, B = 0), so the run shows what
        // LoRA changed; a resumed run already recorded it.
        eval_on_start: true,
        metric_for_best: metric,
        ..a.run
            .trainer_config(a.epochs, a.batch_size, a.lr, Warmup::Ratio(a.warmup_ratio))
    };
    let label_names = train.label_names().map(<[String]>::to_vec);
    let trainer = Trainer::new(config, device)?;
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
    report_held_out(&a.run.out, s, metric)
}

/// Writes `eval_before.json` and prints the held-out `metric` before and after training.
fn report_held_out(
    out: &Path,
    s: &lora_train::TrainSummary,
    metric: lora_train::Metric,
) -> Result<()> {
    if let Some(b) = &s.initial_eval {
        let text = serde_json::to_string(b).unwrap_or_default();
        lora_core::io::write_atomic(&out.join("eval_before.json"), text.as_bytes())?;
    }
    if let Some(m) = &s.final_eval {
        eprintln!(
            "validation after training: {}",
            lora_train::format_metrics(m)
        );
        if let Some(b) = &s.initial_eval {
            let key = metric.name();
            if let (Some(x), Some(y)) = (b.get(key), m.get(key)) {
                eprintln!("held-out {key}: {x:.4} before → {y:.4} after LoRA");
            }
        }
    }
    Ok(())
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
        "model": dir, "data": a.data, "valid": a.valid,
        "data_config": data, "labels": train.label_names(),
    });
    let sets = Sets {
        train,
        valid,
        labels,
        run,
    };
    with_classifier!(&dir, M => train_with::<M>(&a, &dir, device, sets))
}

/// The classifier for `eval`/`predict`: the checkpoint with `head`'s label count, then the
/// adapter. A head that neither the checkpoint nor the adapter holds is an error: its outputs
/// would be random.
fn classifier<M: EncoderCheckpoint>(
    dir: &Path,
    device: &Device,
    adapter: Option<&Path>,
    head: &Head,
) -> Result<M> {
    let options = LoadOptions {
        num_labels: Some(head.names.len()),
        ignore_mismatched_head: true,
    };
    let p = M::load_pretrained(dir, device, &options)?;
    let fresh = &p.report.newly_initialized;
    let classifier = M::HEAD_MODULES.first().copied().unwrap_or("classifier");
    let head_fresh = fresh
        .iter()
        .any(|k| k.starts_with(&format!("{classifier}.")));
    if head_fresh && !head.in_adapter {
        return Err(CliError::Message(format!(
            "{} has no trained classification head ({} with {} outputs is missing){}; pass \
             --adapter with a head trained by `encoder-lora train` or PEFT (task_type SEQ_CLS)",
            dir.display(),
            fresh.join(", "),
            head.names.len(),
            if adapter.is_some() {
                ", and the adapter holds none"
            } else {
                ""
            }
        )));
    }
    // Anything else freshly initialised (e.g. BERT's pooler) changes the outputs: say so.
    let other: Vec<&String> = fresh
        .iter()
        .filter(|k| !k.starts_with(&format!("{classifier}.")))
        .collect();
    if !other.is_empty() {
        eprintln!(
            "warning: {} lacks {:?}; they are randomly initialised",
            dir.display(),
            other
        );
    }
    Ok(match adapter {
        Some(a) => load_adapter(&p.model, a, "default")?.0,
        None => p.model,
    })
}

fn eval(mut a: EvalArgs) -> Result<()> {
    a.data = data_file(&a.data, "--data", "validation")?;
    let dir = model_dir(&a.model.model)?;
    let device = device(&a.model.device)?;
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let trainer = Trainer::new(
        TrainerConfig {
            progress: lora_train::ProgressMode::Off,
            ..TrainerConfig::default()
        },
        device.clone(),
    )?;
    let config = BertConfig::load(&dir)?;
    let metrics = with_classifier!(&dir, M => {
        let head = resolve_head::<M>(&config, a.adapter.as_deref())?;
        let mut data = a.data_args.config(Some(head.names.clone()), 0.0);
        if head.is_regression() {
            data.task = Task::Regression;
        }
        let (set, _) = load_text_datasets(&a.data, None, &data, &tokenizer)?;
        let model: M = classifier(&dir, &device, a.adapter.as_deref(), &head)?;
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

/// The rows `predict` classifies: `--text`/`--pair`, or every row of `--data` (`-`: stdin).
fn predict_inputs(a: &PredictArgs) -> Result<Vec<(String, Option<String>)>> {
    let Some(data) = &a.data else {
        let text = a.text.clone().unwrap_or_default();
        return Ok(vec![(text, a.pair.clone())]);
    };
    let columns = lora_train::Columns::inputs(&a.text_column, a.pair_column.as_deref());
    let records = if data.as_os_str() == "-" {
        lora_train::read_records_from(
            std::io::stdin().lock(),
            lora_train::FileFormat::Jsonl,
            &columns,
            Path::new("(stdin)"),
        )?
    } else {
        lora_train::read_records(&data_file(data, "--data", "test")?, &columns)?
    };
    Ok(records.into_iter().map(|r| (r.text, r.text_pair)).collect())
}

/// One JSON line per row of `logits` `[rows, outputs]`: `{label, probabilities}` for a
/// classifier, `{value}` for a regression head.
fn predictions(head: &Head, logits: Tensor<2>) -> Result<Vec<serde_json::Value>> {
    let [_, k] = logits.dims();
    if head.is_regression() {
        let values = lora_core::io::HostTensor::from_tensor(logits, "logits")?.data;
        return Ok(values
            .iter()
            .map(|v| serde_json::json!({ "value": v }))
            .collect());
    }
    let probs = burn::tensor::activation::softmax(logits, 1);
    let probs = lora_core::io::HostTensor::from_tensor(probs, "probabilities")?.data;
    Ok(probs
        .chunks(k.max(1))
        .map(|row| {
            let best = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            let table: serde_json::Map<String, serde_json::Value> = head
                .names
                .iter()
                .zip(row)
                .map(|(n, p)| (n.clone(), serde_json::json!(p)))
                .collect();
            serde_json::json!({ "label": head.names.get(best), "probabilities": table })
        })
        .collect())
}

fn predict(a: PredictArgs) -> Result<()> {
    if a.batch_size == 0 {
        return Err(CliError::Message("--batch-size must be at least 1".into()));
    }
    let dir = model_dir(&a.model.model)?;
    let device = device(&a.model.device)?;
    let inputs = predict_inputs(&a)?;
    let config = BertConfig::load(&dir)?;
    let tokenizer = EncoderTokenizer::from_dir(&dir, &config)?.with_max_length(a.max_length)?;
    with_classifier!(&dir, M => {
        let head = resolve_head::<M>(&config, a.adapter.as_deref())?;
        let model: M = classifier(&dir, &device, a.adapter.as_deref(), &head)?;
        for chunk in inputs.chunks(a.batch_size) {
            let rows = chunk
                .iter()
                .map(|(t, p)| match p {
                    Some(p) => tokenizer.encode_pair(t, p),
                    None => tokenizer.encode(t),
                })
                .collect::<lora_models::Result<Vec<_>>>()?;
            let batch = lora_models::bert::EncoderBatch::new(
                &rows,
                tokenizer.pad_id(),
                tokenizer.padding_side,
                &device,
            )?;
            let logits = model.forward(
                batch.input_ids,
                Some(batch.attention_mask),
                Some(batch.token_type_ids),
            )?;
            for value in predictions(&head, logits)? {
                if a.json && a.data.is_none() {
                    print_json(&value);
                } else {
                    println!("{value}");
                }
            }
        }
    });
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let dir = model_dir(&a.model.model)?;
    let device = device(&a.model.device)?;
    let report = with_classifier!(&dir, M => {
        let model: M = load(&dir, &device, a.num_labels)?;
        let (model, lora) = inject_encoder_lora(model, &a.lora.config(None), "default")?;
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
    lora_train::malloc::reuse_freed_memory();
    let result = match Cli::parse().command {
        Command::Train(a) => train(a),
        Command::Eval(a) => eval(a),
        Command::Predict(a) => predict(a),
        Command::Info(a) => info(a),
    };
    exit_code(result)
}
