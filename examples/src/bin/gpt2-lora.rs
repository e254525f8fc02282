//! `gpt2-lora`: LoRA for GPT-2 from the command line.
//!
//! ```text
//! gpt2-lora train    --model DIR --data train.jsonl [--valid valid.jsonl] --out DIR
//! gpt2-lora eval     --model DIR [--adapter DIR] --data valid.jsonl [--json]
//! gpt2-lora info     --model DIR [--r 4 --alpha 32 --mode qv]
//! gpt2-lora generate --model DIR [--adapter DIR] --prompt TEXT [--beams 10 ...] [--json]
//! gpt2-lora merge    --model DIR --adapter DIR --out DIR
//! gpt2-lora e2e-eval --model DIR [--adapter DIR] --data test.txt [--out DIR] [--json]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lora_core::{LoraConfig, LoraModelExt, ParamReport, load_adapter};
use lora_examples::{
    CliError, ModelArgs, Result, RunArgs, data_file, device, exit_code, interruption, model_dir,
    print_json, stop_on_ctrl_c, train_error,
};
use lora_models::TextTokenizer;
use lora_models::gpt2::{
    CAttnMode, Decoding, GenerationConfig, Gpt2LmHeadModel, MemoryOptions, inject_gpt2_lora,
};
use lora_train::{
    Columns, DataConfig, LossConfig, OptimizerConfig, TrainSummary, Trainer, TrainerConfig, Warmup,
    load_text_datasets,
};

#[derive(Parser)]
#[command(
    name = "gpt2-lora",
    version,
    about = "LoRA fine-tuning for GPT-2 (burn)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a LoRA adapter (defaults: the LoRA paper's GPT-2 / E2E setup).
    Train(TrainArgs),
    /// Loss and perplexity on a data file, with or without an adapter.
    Eval(EvalArgs),
    /// Print the trainable-parameter report of a LoRA config on a model.
    Info(InfoArgs),
    /// Continue a prompt (greedy, sampling or beam search).
    Generate(GenerateArgs),
    /// Fold an adapter into the weights and write a plain Hugging Face checkpoint.
    Merge(MergeArgs),
    /// Generate one output per meaning representation of E2E data and score BLEU and ROUGE-L
    /// as the E2E challenge's scripts do (the LoRA paper's decoding by default).
    E2eEval(E2eEvalArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// q and v slices of c_attn (the LoRA paper).
    Qv,
    /// one adapter over all of c_attn (PEFT).
    Fused,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// LoRA rank (paper, E2E: 4).
    #[arg(long, default_value_t = 4)]
    r: usize,
    /// LoRA alpha (paper, E2E: 32).
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    /// Target modules, comma separated.
    #[arg(long, default_value = "c_attn")]
    targets: String,
    /// How c_attn is adapted.
    #[arg(long, value_enum, default_value_t = Mode::Qv)]
    mode: Mode,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// PEFT adapter directory to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Tokenizer directory (tokenizer.json, or vocab.json + merges.txt); default: the model's.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Beam search with this many beams (paper, E2E: 10); 1 = greedy unless sampling.
    #[arg(long, default_value_t = 1)]
    beams: usize,
    /// Beam-search length penalty (paper: 0.9).
    #[arg(long, default_value_t = 0.9)]
    length_penalty: f64,
    /// Forbid repeated n-grams of this size (paper: 4; 0 = off).
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram_size: usize,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    temperature: Option<f64>,
    /// Sampling: keep the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sampling: nucleus probability.
    #[arg(long)]
    top_p: Option<f64>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print token ids, text and per-token log-probabilities as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DataArgs {
    /// Tokenizer directory (tokenizer.json, or vocab.json + merges.txt); default: the model's.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Column with the prompt (JSONL/CSV/TSV); the loss is on the completion only.
    #[arg(long, default_value = "prompt")]
    prompt_column: String,
    /// Column with the completion.
    #[arg(long, default_value = "completion")]
    completion_column: String,
    /// The data is E2E-style `context||completion` in this column (`.txt`: any name).
    #[arg(long)]
    e2e_column: Option<String>,
    /// Plain language modelling on this column (`.txt`: any name).
    #[arg(long, conflicts_with = "e2e_column")]
    text_column: Option<String>,
    /// Maximum tokens per example (prompts are cut from the left).
    #[arg(long, default_value_t = 128)]
    max_length: usize,
}

impl DataArgs {
    fn config(&self, validation_ratio: f64) -> DataConfig {
        let columns = match (&self.e2e_column, &self.text_column) {
            (Some(c), _) => Columns::e2e(c),
            (_, Some(c)) => Columns::text(c),
            _ => Columns::prompt_completion(&self.prompt_column, &self.completion_column),
        };
        DataConfig {
            columns,
            max_length: self.max_length,
            validation_ratio,
            ..DataConfig::default()
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
    /// Training data (.jsonl, .csv, .tsv or .txt).
    #[arg(long)]
    data: PathBuf,
    /// Validation data; default: 10% of --data held out.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long, default_value_t = 4)]
    r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    /// Dropout on the adapter input.
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// Target modules, comma separated.
    #[arg(long, default_value = "c_attn")]
    targets: String,
    /// How c_attn is adapted.
    #[arg(long, value_enum, default_value_t = Mode::Qv)]
    mode: Mode,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Label smoothing of the training loss (the paper's E2E setup: 0.1).
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f64,
    /// Activation checkpointing per block: keep only each block's input and run the block
    /// again in backward (less memory, about one more forward per step).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Compute the LM head and loss this many target tokens at a time (forward and backward
    /// per chunk), so the [tokens, 50257] logits never exist whole.
    #[arg(long, value_name = "TOKENS")]
    loss_chunk: Option<usize>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Linear-warmup steps.
    #[arg(long, default_value_t = 500)]
    warmup_steps: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data_args: DataArgs,
    /// PEFT adapter directory to apply.
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
struct MergeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// PEFT adapter directory.
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory for the merged checkpoint.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct E2eEvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// PEFT adapter directory to apply (merged before decoding).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Tokenizer directory (tokenizer.json, or vocab.json + merges.txt); default: the model's.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// E2E data: rows `context||reference`; rows with the same context are one MR with
    /// several references.
    #[arg(long)]
    data: PathBuf,
    /// Column holding `context||reference` (JSONL/CSV/TSV; `.txt`: the whole line).
    #[arg(long, default_value = "text")]
    e2e_column: String,
    /// Directory for hypotheses.txt (one output per MR), references.txt (the official
    /// scripts' multi-reference format) and scores.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Score only the first N MRs.
    #[arg(long)]
    limit: Option<usize>,
    /// Tokens to generate per MR at most.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Beam width (paper: 10; 1 = greedy).
    #[arg(long, default_value_t = 10)]
    beams: usize,
    /// Beam-search length penalty (paper: 0.9).
    #[arg(long, default_value_t = 0.9)]
    length_penalty: f64,
    /// Forbid repeated n-grams of this size (paper: 4; 0 = off).
    #[arg(long, default_value_t = 4)]
    no_repeat_ngram_size: usize,
    /// MRs decoded together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print the scores as JSON.
    #[arg(long)]
    json: bool,
}

/// A loaded checkpoint: the model, its config, its directory and the device.
type Loaded = (
    Gpt2LmHeadModel,
    lora_models::gpt2::Gpt2Config,
    PathBuf,
    burn::prelude::Device,
);

fn load(args: &ModelArgs) -> Result<Loaded> {
    let dir = model_dir(&args.model)?;
    let device = device(&args.device)?;
    let (model, config) = Gpt2LmHeadModel::from_pretrained(&dir, &device)?;
    Ok((model, config, dir, device))
}

/// [`load`], with `adapter` (if any) merged so decoding runs at the base model's cost.
fn load_merged(args: &ModelArgs, adapter: Option<&Path>) -> Result<Loaded> {
    let (mut model, config, dir, device) = load(args)?;
    if let Some(adapter) = adapter {
        model = load_adapter(&model, adapter, "default")?.0;
        model.merge_active()?;
    }
    Ok((model, config, dir, device))
}

/// Beam search for `beams > 1`, greedy otherwise.
fn beam_or_greedy(beams: usize, length_penalty: f64) -> Decoding {
    if beams > 1 {
        Decoding::Beam {
            num_beams: beams,
            length_penalty,
            early_stopping: true,
        }
    } else {
        Decoding::Greedy
    }
}

/// Generation settings with the checkpoint's end-of-text token (also used as padding).
fn generation_config(
    config: &lora_models::gpt2::Gpt2Config,
    max_new_tokens: usize,
    decoding: Decoding,
    no_repeat_ngram_size: usize,
) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        decoding,
        no_repeat_ngram_size,
        eos_token_id: Some(config.eos_token_id as u32),
        pad_token_id: config.eos_token_id as u32,
    }
}

fn mode(m: Mode) -> CAttnMode {
    match m {
        Mode::Qv => CAttnMode::QueryValue,
        Mode::Fused => CAttnMode::Fused,
    }
}

/// The trainer's settings from the command line.
fn trainer_config(a: &TrainArgs) -> TrainerConfig {
    let base = a
        .run
        .trainer_config(a.epochs, a.batch_size, a.lr, Warmup::Steps(a.warmup_steps));
    TrainerConfig {
        optimizer: OptimizerConfig {
            weight_decay: a.weight_decay,
            ..base.optimizer
        },
        loss: LossConfig {
            label_smoothing: a.label_smoothing,
        },
        ..base
    }
}

/// The closing lines of a finished run: steps, time, losses, where the adapter is.
fn report_done(s: &TrainSummary) {
    eprintln!(
        "done: {} steps in {:.1?}, first loss {:.4}, last loss {:.4}, adapter in {}",
        s.global_step,
        s.wall_time,
        s.losses.first().copied().unwrap_or(f64::NAN),
        s.losses.last().copied().unwrap_or(f64::NAN),
        s.adapter_dir.display()
    );
    if let Some(m) = &s.final_eval {
        eprintln!("validation: {m:?}");
    }
}

fn train(mut a: TrainArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.label_smoothing) {
        return Err(CliError::Message(format!(
            "--label-smoothing {} must be in [0, 1)",
            a.label_smoothing
        )));
    }
    if a.loss_chunk == Some(0) {
        return Err(CliError::Message("--loss-chunk must be at least 1".into()));
    }
    a.data = data_file(&a.data, "--data", "train")?;
    a.valid = match a.valid.take() {
        Some(v) => Some(data_file(&v, "--valid", "validation")?),
        None => None,
    };
    let (model, _, dir, device) = load(&a.model)?;
    let tokenizer = TextTokenizer::from_dir(a.data_args.tokenizer.as_deref().unwrap_or(&dir))?;
    let data = a
        .data_args
        .config(if a.valid.is_some() { 0.0 } else { 0.1 });
    let (train_set, valid_set) =
        load_text_datasets(&a.data, a.valid.as_deref(), &data, &tokenizer)?;
    device.seed(a.run.seed); // adapter initialisation
    let targets: Vec<&str> = a.targets.split(',').map(str::trim).collect();
    let lora = LoraConfig {
        base_model_name_or_path: Some(a.model.base_model_name_or_path()),
        ..LoraConfig::new(a.r, a.alpha, &targets).with_dropout(a.dropout)
    };
    let (model, lora) = inject_gpt2_lora(model, &lora, "default", mode(a.mode))?;
    let model = model.with_memory(MemoryOptions {
        checkpoint_blocks: a.gradient_checkpointing,
        loss_chunk: a.loss_chunk,
    });
    eprintln!("{}", ParamReport::new(&model, &lora).summary());
    let config = trainer_config(&a);
    let run = serde_json::json!({
        "model": dir, "data": a.data, "valid": a.valid, "lora": lora,
        "trainer": config, "data_config": data, "c_attn_mode": format!("{:?}", mode(a.mode)),
    });
    std::fs::create_dir_all(&a.run.out)
        .map_err(|e| CliError::Message(format!("--out {}: {e}", a.run.out.display())))?;
    lora_core::io::write_atomic(&a.run.out.join("run.json"), run.to_string().as_bytes())?;
    let trainer = Trainer::new(config, device)?;
    let interrupter = trainer.interrupter();
    stop_on_ctrl_c(interrupter.clone())?;
    let trained = trainer
        .fit(model, &lora, &train_set, valid_set.as_ref())
        .map_err(|e| train_error(e, &a.run.out))?;
    let s = &trained.summary;
    if let Some(stopped) = interruption(&interrupter, s) {
        return Err(stopped);
    }
    report_done(s);
    Ok(())
}

fn eval(mut a: EvalArgs) -> Result<()> {
    a.data = data_file(&a.data, "--data", "validation")?;
    let (mut model, _, dir, device) = load(&a.model)?;
    if let Some(adapter) = &a.adapter {
        model = load_adapter(&model, adapter, "default")?.0;
    }
    let tokenizer = TextTokenizer::from_dir(a.data_args.tokenizer.as_deref().unwrap_or(&dir))?;
    let (data, _) = load_text_datasets(&a.data, None, &a.data_args.config(0.0), &tokenizer)?;
    let trainer = Trainer::new(
        TrainerConfig {
            progress: lora_train::ProgressMode::Off,
            ..TrainerConfig::default()
        },
        device,
    )?;
    let metrics = trainer.evaluate(&model, &data)?;
    if a.json {
        print_json(&serde_json::json!(metrics));
    } else {
        for (k, v) in &metrics {
            println!("{k}: {v:.6}");
        }
    }
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let (model, _, _, _) = load(&a.model)?;
    let targets: Vec<&str> = a.targets.split(',').map(str::trim).collect();
    let lora = LoraConfig::new(a.r, a.alpha, &targets);
    let (model, lora) = inject_gpt2_lora(model, &lora, "default", mode(a.mode))?;
    let report = ParamReport::new(&model, &lora);
    if a.json {
        print_json(&serde_json::json!({
            "trainable": report.trainable,
            "total": report.total,
            "lora": report.lora_params(),
            "trainable_percent": report.trainable_percent(),
        }));
    } else {
        print!("{report}");
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let (model, config, dir, device) = load_merged(&a.model, a.adapter.as_deref())?;
    let tokenizer = TextTokenizer::from_dir(a.tokenizer.as_deref().unwrap_or(&dir))?;
    let prompt = tokenizer.encode(&a.prompt)?;
    if prompt.is_empty() {
        return Err(CliError::Message("--prompt is empty".into()));
    }
    let decoding = match a.temperature {
        Some(temperature) => Decoding::Sample {
            temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        None => beam_or_greedy(a.beams, a.length_penalty),
    };
    let gen_config = generation_config(&config, a.max_new_tokens, decoding, a.no_repeat_ngram_size);
    let out = model.generate(&[prompt], &gen_config, &device)?;
    let tokens = &out.tokens[0];
    let text = tokenizer.decode(tokens, true)?;
    if a.json {
        print_json(&serde_json::json!({
            "prompt": a.prompt,
            "token_ids": tokens,
            "text": text,
            "logprobs": out.logprobs[0],
            "score": out.scores[0],
        }));
    } else {
        println!("{}{}", a.prompt, text);
    }
    Ok(())
}

fn merge(a: MergeArgs) -> Result<()> {
    let (model, _, dir, _) = load(&a.model)?;
    let (mut model, _) = load_adapter(&model, &a.adapter, "default")?;
    model.merge_active()?;
    let state = lora_core::export_state_dict(&model, true)?;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| CliError::Message(format!("--out {}: {e}", a.out.display())))?;
    lora_core::save_safetensors(a.out.join("model.safetensors"), &state)?;
    for f in [
        "config.json",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "generation_config.json",
    ] {
        let src = dir.join(f);
        if src.exists() {
            std::fs::copy(&src, a.out.join(f))
                .map_err(|e| CliError::Message(format!("copying {}: {e}", src.display())))?;
        }
    }
    eprintln!("merged checkpoint written to {}", a.out.display());
    Ok(())
}

/// One meaning representation with its references, in file order.
struct Mr {
    /// The context as written before `||` (the prompt, tokenized as in training).
    context: String,
    references: Vec<String>,
}

/// Groups E2E rows by context (trimmed), keeping the order of first appearance.
fn group_mrs(records: Vec<lora_train::Record>) -> Vec<Mr> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut mrs: Vec<Mr> = Vec::new();
    for r in records {
        let lora_train::records::RawTarget::Completion(reference) = r.target else {
            continue;
        };
        let key = r.text.trim().to_string();
        let i = *index.entry(key).or_insert_with(|| {
            mrs.push(Mr {
                context: r.text.clone(),
                references: Vec::new(),
            });
            mrs.len() - 1
        });
        mrs[i].references.push(reference.trim().to_string());
    }
    mrs
}

fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    lora_core::io::write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn e2e_eval(mut a: E2eEvalArgs) -> Result<()> {
    a.data = data_file(&a.data, "--data", "test")?;
    if a.batch_size == 0 {
        return Err(CliError::Message("--batch-size must be at least 1".into()));
    }
    let records = lora_train::read_records(&a.data, &Columns::e2e(&a.e2e_column))?;
    let mut mrs = group_mrs(records);
    if let Some(n) = a.limit {
        mrs.truncate(n);
    }
    if mrs.is_empty() {
        return Err(CliError::Message(format!(
            "--data {}: no meaning representation to score",
            a.data.display()
        )));
    }
    let (model, config, dir, device) = load_merged(&a.model, a.adapter.as_deref())?;
    let tokenizer = TextTokenizer::from_dir(a.tokenizer.as_deref().unwrap_or(&dir))?;
    let Some(room) = config
        .n_positions
        .checked_sub(a.max_new_tokens)
        .filter(|&r| r > 0)
    else {
        return Err(CliError::Message(format!(
            "--max-new-tokens {} leaves no room for the context in {} positions",
            a.max_new_tokens, config.n_positions
        )));
    };
    let gen_config = generation_config(
        &config,
        a.max_new_tokens,
        beam_or_greedy(a.beams, a.length_penalty),
        a.no_repeat_ngram_size,
    );
    let start = std::time::Instant::now();
    let hypotheses = generate_all(&model, &tokenizer, &mrs, &gen_config, room, &a, &device)?;
    let references: Vec<Vec<String>> = mrs.iter().map(|m| m.references.clone()).collect();
    let scores = lora_train::e2e_scores(&hypotheses, &references)?;
    let n_references: usize = references.iter().map(Vec::len).sum();
    let mut report = serde_json::json!({
        "bleu": scores.bleu.bleu,
        "rouge_l": scores.rouge_l,
        "n_mrs": mrs.len(),
        "n_references": n_references,
        "bleu_details": scores.bleu,
        "decoding": {
            "beams": a.beams,
            "length_penalty": a.length_penalty,
            "no_repeat_ngram_size": a.no_repeat_ngram_size,
            "max_new_tokens": a.max_new_tokens,
        },
        "model": dir,
        "adapter": a.adapter,
        "data": a.data,
        "generation_seconds": start.elapsed().as_secs_f64(),
    });
    if let Some(out) = &a.out {
        write_e2e_outputs(out, &hypotheses, &references, &mut report)?;
    }
    if a.json {
        print_json(&report);
    } else {
        println!(
            "BLEU {:.4}  ROUGE-L {:.4}  ({} MRs, {} references)",
            scores.bleu.bleu,
            scores.rouge_l,
            mrs.len(),
            n_references
        );
    }
    Ok(())
}

/// One hypothesis per MR (whitespace-normalised, one line each, as the official scripts read
/// them), generated `a.batch_size` contexts at a time, each cut from the left to `room` tokens.
fn generate_all(
    model: &Gpt2LmHeadModel,
    tokenizer: &TextTokenizer,
    mrs: &[Mr],
    gen_config: &GenerationConfig,
    room: usize,
    a: &E2eEvalArgs,
    device: &burn::prelude::Device,
) -> Result<Vec<String>> {
    let mut hypotheses: Vec<String> = Vec::with_capacity(mrs.len());
    for chunk in mrs.chunks(a.batch_size) {
        let mut prompts = Vec::with_capacity(chunk.len());
        for mr in chunk {
            let mut ids = tokenizer.encode(&mr.context)?;
            if ids.is_empty() {
                return Err(CliError::Message(format!(
                    "--data {}: an MR has an empty context",
                    a.data.display()
                )));
            }
            // Cut from the left, as training truncates prompts.
            if ids.len() > room {
                ids.drain(..ids.len() - room);
            }
            prompts.push(ids);
        }
        let out = model.generate(&prompts, gen_config, device)?;
        for tokens in &out.tokens {
            let text = tokenizer.decode(tokens, true)?;
            hypotheses.push(text.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        if !a.json {
            eprintln!("generated {}/{}", hypotheses.len(), mrs.len());
        }
    }
    Ok(hypotheses)
}

/// Writes `hypotheses.txt`, `references.txt` (e2e-metrics' multi-reference format: references
/// one per line, MRs separated by a blank line, so `measure_scores.py references.txt
/// hypotheses.txt` runs on these files) and `scores.json` under `out`.
fn write_e2e_outputs(
    out: &Path,
    hypotheses: &[String],
    references: &[Vec<String>],
    report: &mut serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(out)
        .map_err(|e| CliError::Message(format!("--out {}: {e}", out.display())))?;
    let mut hyp_text = hypotheses.join("\n");
    hyp_text.push('\n');
    write_file(&out.join("hypotheses.txt"), &hyp_text)?;
    let ref_text: String = references
        .iter()
        .map(|rs| rs.join("\n") + "\n")
        .collect::<Vec<_>>()
        .join("\n");
    write_file(&out.join("references.txt"), &ref_text)?;
    report["hypotheses_file"] = serde_json::json!(out.join("hypotheses.txt"));
    write_file(&out.join("scores.json"), &report.to_string())
}

fn main() -> ExitCode {
    lora_train::malloc::reuse_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train(a),
        Command::Eval(a) => eval(a),
        Command::Info(a) => info(a),
        Command::Generate(a) => generate(a),
        Command::Merge(a) => merge(a),
        Command::E2eEval(a) => e2e_eval(a),
    };
    exit_code(result)
}
