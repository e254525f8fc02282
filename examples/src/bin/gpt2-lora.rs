//! `gpt2-lora`: LoRA for GPT-2 from the command line.
//!
//! ```text
//! gpt2-lora info     --model DIR [--r 4 --alpha 32 --mode qv]
//! gpt2-lora generate --model DIR [--adapter DIR] --prompt TEXT [--beams 10 ...] [--json]
//! gpt2-lora merge    --model DIR --adapter DIR --out DIR
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lora_core::{LoraConfig, LoraModelExt, ParamReport, load_adapter};
use lora_examples::{CliError, Result, device, model_dir, print_json};
use lora_models::TextTokenizer;
use lora_models::gpt2::{CAttnMode, Decoding, GenerationConfig, Gpt2LmHeadModel, inject_gpt2_lora};

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
    /// Print the trainable-parameter report of a LoRA config on a model.
    Info(InfoArgs),
    /// Continue a prompt (greedy, sampling or beam search).
    Generate(GenerateArgs),
    /// Fold an adapter into the weights and write a plain Hugging Face checkpoint.
    Merge(MergeArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// Local Hugging Face model directory (config.json, model.safetensors or pytorch_model.bin).
    #[arg(long)]
    model: String,
    /// flex, ndarray, wgpu, vulkan or metal.
    #[arg(long, default_value = "flex")]
    device: String,
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

fn load(
    args: &ModelArgs,
) -> Result<(
    Gpt2LmHeadModel,
    lora_models::gpt2::Gpt2Config,
    PathBuf,
    burn::prelude::Device,
)> {
    let dir = model_dir(&args.model)?;
    let device = device(&args.device)?;
    let (model, config) = Gpt2LmHeadModel::from_pretrained(&dir, &device)?;
    Ok((model, config, dir, device))
}

fn info(a: InfoArgs) -> Result<()> {
    let (model, _, _, _) = load(&a.model)?;
    let targets: Vec<&str> = a.targets.split(',').map(str::trim).collect();
    let lora = LoraConfig::new(a.r, a.alpha, &targets);
    let mode = match a.mode {
        Mode::Qv => CAttnMode::QueryValue,
        Mode::Fused => CAttnMode::Fused,
    };
    let (model, lora) = inject_gpt2_lora(model, &lora, "default", mode)?;
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
    let (mut model, config, dir, device) = load(&a.model)?;
    if let Some(adapter) = &a.adapter {
        model = load_adapter(&model, adapter, "default")?.0;
        model.merge_active()?;
    }
    let tokenizer = TextTokenizer::from_dir(a.tokenizer.as_deref().unwrap_or(&dir))?;
    let prompt = tokenizer.encode(&a.prompt)?;
    if prompt.is_empty() {
        return Err(CliError::Message("--prompt is empty".into()));
    }
    let decoding = match (a.temperature, a.beams) {
        (Some(temperature), _) => Decoding::Sample {
            temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        (None, b) if b > 1 => Decoding::Beam {
            num_beams: b,
            length_penalty: a.length_penalty,
            early_stopping: true,
        },
        _ => Decoding::Greedy,
    };
    let gen_config = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        decoding,
        no_repeat_ngram_size: a.no_repeat_ngram_size,
        eos_token_id: Some(config.eos_token_id as u32),
        pad_token_id: config.eos_token_id as u32,
    };
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info(a),
        Command::Generate(a) => generate(a),
        Command::Merge(a) => merge(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
